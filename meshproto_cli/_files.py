"""Identity files: joined meshes, session keys and the broker's members file.

* The claudemesh joined-mesh file, ``<config dir>/config.json``, version 1
  (docs/protocol.md §2): ``{"version": 1, "meshes": [{meshId, memberId, slug,
  name, pubkey, secretKey, brokerUrl, joinedAt}]}``. The config dir is
  ``~/.claudemesh`` unless ``CLAUDEMESH_CONFIG_DIR`` or a flag says otherwise.
* Session key pairs, one per (mesh, session name), under
  ``<config dir>/meshproto-sessions/<meshId>/<name>.json``, so that every
  reconnect of one session presents the same ``sessionPubkey``.
* The reference broker's members file (``meshproto mesh init``):
  ``{"version": 1, "meshId", "name", "members": [{memberId, pubkey,
  displayName, groups, revoked}]}``. No secrets in it.

Files holding secret keys are written with mode 0600 (atomically, through a
temporary file), and every folder made to hold one is made with mode 0700.
Reading one that others can read logs a warning that says how to fix it.
Every problem with a file is a :class:`FileProblem` with a message fit to
show the user as is.

A session in use by a running command is locked (:func:`lock_session`, an
advisory ``flock`` on ``<name>.lock`` beside its key file), so that two
commands on one machine never present the same session key by accident: the
broker would close the older one for good (``session_replaced``).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshproto import is_pubkey

__all__ = [
    "FileProblem",
    "JoinedMesh",
    "MemberRow",
    "MembersFile",
    "SessionLock",
    "config_dir",
    "load_joined_meshes",
    "load_members_file",
    "load_or_create_session_keys",
    "lock_session",
    "make_private_dirs",
    "open_lock",
    "merge_joined_mesh",
    "save_joined_meshes",
    "save_members_file",
    "select_mesh",
    "write_private_json",
]

logger = logging.getLogger("meshproto.files")

_HEX128 = re.compile(r"[0-9a-f]{128}")
_SAFE_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


class FileProblem(Exception):
    """An identity or members file is missing, unreadable or malformed."""


def config_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The config dir: the flag, else ``CLAUDEMESH_CONFIG_DIR``, else ``~/.claudemesh``."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get("CLAUDEMESH_CONFIG_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".claudemesh"


def make_private_dirs(directory: Path) -> None:
    """Make ``directory`` and any missing parent, each with mode 0700.

    (``Path.mkdir(parents=True, mode=...)`` gives the mode to the last folder
    only, and the parents the default, usually 0755.) Folders that exist
    already are left as they are.
    """
    missing = []
    current = directory
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            continue
        except OSError as exc:  # a file where a folder should be, a read-only disk
            raise FileProblem(f"cannot create {folder}: {exc.strerror}") from None
        os.chmod(folder, 0o700)  # in case the umask took more than it should


def write_private_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON readable by the owner only (0600), atomically."""
    import tempfile  # noqa: PLC0415 (only a write needs it: not at start)

    make_private_dirs(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise FileProblem(f"cannot write {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
        os.replace(tmp, path)
    except OSError as exc:  # a folder at ``path``, a full disk
        Path(tmp).unlink(missing_ok=True)
        raise FileProblem(f"cannot write {path}: {exc.strerror}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


#: What a path that is not a regular file is, for messages (``stat.S_IFMT`` → words).
_KINDS = {
    stat.S_IFDIR: "a folder",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def _missing(path: Path) -> FileProblem:
    """Why ``path`` cannot be opened although something may be there: a link to nothing."""
    if path.is_symlink():  # to a missing file, or around in a loop
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        return FileProblem(f"{path} is a broken link (to {target})")
    return FileProblem(f"{path} does not exist")


def _read_bytes(path: Path) -> tuple[bytes, os.stat_result]:
    """The content of the regular file ``path``, and its status, or a :class:`FileProblem`.

    The file is opened without waiting (``O_NONBLOCK``) and checked to be a
    regular file before anything is read: a FIFO would wait for a writer for
    ever, and a device such as ``/dev/zero`` never ends.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise _missing(path) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _missing(path) from None
        raise FileProblem(f"cannot read {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = _KINDS.get(stat.S_IFMT(info.st_mode), "not a regular file")
            raise FileProblem(f"{path} is {kind}, not a file")
        try:
            return handle.read(), info
        except OSError as exc:
            raise FileProblem(f"cannot read {path}: {exc.strerror}") from None


def _read_json(path: Path, *, secret: bool) -> Any:
    data, info = _read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileProblem(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if secret:
        mode = info.st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            logger.warning(
                "%s holds secret keys but others can read it (mode %o); run: chmod 600 %s",
                path,
                stat.S_IMODE(mode),
                path,
            )
    try:
        return json.loads(text)
    except ValueError as exc:
        raise FileProblem(f"{path} is not valid JSON: {exc}") from None
    except RecursionError:  # thousands of nested brackets: no identity file looks like that
        raise FileProblem(f"{path} is not valid JSON: nested too deeply") from None


def _field(record: Mapping[str, Any], name: str, where: str) -> str:
    value = record.get(name)
    if not isinstance(value, str):
        raise FileProblem(f"{where}: field {name!r} must be a string")
    return value


@dataclass(frozen=True, slots=True)
class JoinedMesh:
    """One joined mesh (a claudemesh config record). ``repr`` hides the secret key."""

    mesh_id: str
    member_id: str
    slug: str
    name: str
    pubkey: str
    secret_key: str
    broker_url: str
    joined_at: str

    def __repr__(self) -> str:
        return f"JoinedMesh(slug={self.slug!r}, mesh_id={self.mesh_id!r}, pubkey={self.pubkey!r})"

    def to_record(self) -> dict[str, str]:
        return {
            "meshId": self.mesh_id,
            "memberId": self.member_id,
            "slug": self.slug,
            "name": self.name,
            "pubkey": self.pubkey,
            "secretKey": self.secret_key,
            "brokerUrl": self.broker_url,
            "joinedAt": self.joined_at,
        }

    @classmethod
    def from_record(cls, record: object, where: str) -> JoinedMesh:
        if not isinstance(record, dict):
            raise FileProblem(f"{where}: each mesh must be an object")
        mesh = cls(
            mesh_id=_field(record, "meshId", where),
            member_id=_field(record, "memberId", where),
            slug=_field(record, "slug", where),
            name=_field(record, "name", where),
            pubkey=_field(record, "pubkey", where),
            secret_key=_field(record, "secretKey", where),
            broker_url=_field(record, "brokerUrl", where),
            joined_at=_field(record, "joinedAt", where),
        )
        if not is_pubkey(mesh.pubkey):
            raise FileProblem(f"{where}: pubkey must be 64 lowercase hex characters")
        if not _HEX128.fullmatch(mesh.secret_key) or mesh.secret_key[64:] != mesh.pubkey:
            raise FileProblem(f"{where}: secretKey must be 128 hex ending with the pubkey")
        return mesh


def load_joined_meshes(directory: Path) -> list[JoinedMesh]:
    """The meshes in ``directory/config.json`` (an empty list if nothing is there).

    A link there that leads nowhere is not "nothing": it is a problem, so
    that a mesh on a drive not mounted yet is never taken for no mesh.
    """
    path = directory / "config.json"
    if not os.path.lexists(path):
        return []
    data = _read_json(path, secret=True)
    if not isinstance(data, dict) or data.get("version") != 1:
        raise FileProblem(f'{path}: expected {{"version": 1, "meshes": [...]}}')
    meshes = data.get("meshes")
    if not isinstance(meshes, list):
        raise FileProblem(f"{path}: 'meshes' must be a list")
    return [JoinedMesh.from_record(m, f"{path} mesh #{i + 1}") for i, m in enumerate(meshes)]


def save_joined_meshes(directory: Path, meshes: list[JoinedMesh]) -> Path:
    path = directory / "config.json"
    write_private_json(path, {"version": 1, "meshes": [m.to_record() for m in meshes]})
    return path


def merge_joined_mesh(
    directory: Path, record: JoinedMesh, *, replaces: frozenset[str] = frozenset()
) -> Path:
    """Add ``record`` to ``directory/config.json``, keeping every other mesh in it.

    A record with the same mesh id, or whose mesh id is in ``replaces``, is
    replaced. Raises :class:`FileProblem` if another mesh there has the same
    slug (``--mesh SLUG`` could no longer tell them apart), or if the file is
    malformed (it is left as it is).
    """
    kept = []
    for mesh in load_joined_meshes(directory):
        if mesh.mesh_id == record.mesh_id or mesh.mesh_id in replaces:
            continue
        if mesh.slug == record.slug:
            raise FileProblem(
                f"{directory / 'config.json'} already has a mesh called {record.slug!r} "
                f"({mesh.mesh_id}); choose another --name, or remove that record"
            )
        kept.append(mesh)
    return save_joined_meshes(directory, [*kept, record])


def select_mesh(meshes: list[JoinedMesh], wanted: str | None, directory: Path) -> JoinedMesh:
    """The mesh named by slug or id, or the only one there is."""
    if not meshes:
        raise FileProblem(
            f"no joined mesh in {directory / 'config.json'}; "
            "create one with 'meshproto mesh init' or point --config-dir at one"
        )
    if wanted is None:
        if len(meshes) == 1:
            return meshes[0]
        names = ", ".join(m.slug for m in meshes)
        raise FileProblem(f"several meshes are joined ({names}); choose one with --mesh")
    for mesh in meshes:
        if wanted in (mesh.slug, mesh.mesh_id):
            return mesh
    raise FileProblem(f"no joined mesh is called {wanted!r}")


def load_or_create_session_keys(
    directory: Path, mesh_id: str, session_name: str, generate: Any
) -> tuple[str, str]:
    """The (pubkey, secretKey) of session ``session_name`` in ``mesh_id``, made once.

    ``generate`` returns a fresh ``(pubkey, secretKey)`` pair when none is stored.
    """
    path = _session_dir(directory, mesh_id, session_name) / f"{session_name}.json"
    if os.path.lexists(path):  # a broken link is a problem, not a reason for a new key
        data = _read_json(path, secret=True)
        if isinstance(data, dict):
            pubkey, secret = data.get("pubkey"), data.get("secretKey")
            if (
                isinstance(pubkey, str)
                and isinstance(secret, str)
                and is_pubkey(pubkey)
                and _HEX128.fullmatch(secret)
                and secret[64:] == pubkey
            ):
                return pubkey, secret
        raise FileProblem(f"{path} is not a session key file; delete it to make a new one")
    pubkey, secret = generate()
    write_private_json(path, {"pubkey": pubkey, "secretKey": secret})
    return pubkey, secret


def _session_dir(directory: Path, mesh_id: str, session_name: str) -> Path:
    if not _SAFE_NAME.fullmatch(session_name) or not _SAFE_NAME.fullmatch(mesh_id):
        raise FileProblem(
            "session names and mesh ids may use letters, digits, '.', '_' and '-' (1-64)"
        )
    return directory / "meshproto-sessions" / mesh_id


class SessionLock:
    """A running command's hold on one session; released by :meth:`release` or at exit."""

    def __init__(self, path: Path, handle: Any) -> None:
        self.path = path
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the file drops the flock
            self._handle = None

    def __enter__(self) -> SessionLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_session(directory: Path, mesh_id: str, session_name: str) -> SessionLock | str:
    """Lock session ``session_name`` of ``mesh_id`` for this process.

    Returns the :class:`SessionLock`, or, if another process holds it, a
    description of that process for a message (``"pid 1234"``). Where the
    system has no ``flock`` (Windows) every lock succeeds.
    """
    folder = _session_dir(directory, mesh_id, session_name)
    make_private_dirs(folder)
    path = folder / f"{session_name}.lock"
    try:
        import fcntl  # noqa: PLC0415 (POSIX only)
    except ImportError:  # pragma: no cover - not POSIX
        return SessionLock(path, None)
    fd = open_lock(path)
    writable = _is_writable(fd)
    handle = os.fdopen(fd, "r+" if writable else "r", encoding="utf-8", errors="replace")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = handle.read().strip()
        handle.close()
        return f"pid {holder}" if holder.isdigit() else "another process"
    if writable:  # the pid is only ever shown in messages
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
    return SessionLock(path, handle)


def _is_writable(fd: int) -> bool:
    import fcntl  # noqa: PLC0415 (POSIX only, as the caller)

    return fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY


def open_lock(path: Path) -> int:
    """``path`` opened to be locked: read-write, or, on a read-only disk, read-only.

    ``flock`` needs no write access, so a config dir on a read-only file
    system (a mounted secret) still runs, as long as its files exist.
    """
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            try:
                return os.open(path, os.O_RDONLY)
            except OSError:
                pass
        raise FileProblem(f"cannot open the session lock {path}: {exc.strerror}") from None


@dataclass(frozen=True, slots=True)
class MemberRow:
    member_id: str
    pubkey: str
    display_name: str
    groups: tuple[str, ...] = ()
    revoked: bool = False


@dataclass(frozen=True, slots=True)
class MembersFile:
    mesh_id: str
    name: str
    members: tuple[MemberRow, ...]


def save_members_file(path: Path, members: MembersFile) -> None:
    data = {
        "version": 1,
        "meshId": members.mesh_id,
        "name": members.name,
        "members": [
            {
                "memberId": m.member_id,
                "pubkey": m.pubkey,
                "displayName": m.display_name,
                "groups": list(m.groups),
                "revoked": m.revoked,
            }
            for m in members.members
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def load_members_file(path: Path) -> MembersFile:
    data = _read_json(path, secret=False)
    if not isinstance(data, dict) or data.get("version") != 1:
        raise FileProblem(f'{path}: expected a members file with "version": 1')
    mesh_id = _field(data, "meshId", str(path))
    name = data.get("name") if isinstance(data.get("name"), str) else mesh_id
    rows = data.get("members")
    if not isinstance(rows, list):
        raise FileProblem(f"{path}: 'members' must be a list")
    members = []
    first_row: dict[str, int] = {}  # the row number of each pubkey
    for i, row in enumerate(rows):
        where = f"{path} member #{i + 1}"
        if not isinstance(row, dict):
            raise FileProblem(f"{where}: must be an object")
        pubkey = _field(row, "pubkey", where)
        if not is_pubkey(pubkey):
            raise FileProblem(f"{where}: pubkey must be 64 lowercase hex characters")
        if pubkey in first_row:  # which row's revoked and groups would count? neither
            raise FileProblem(
                f"{where}: pubkey {pubkey[:16]}… is member #{first_row[pubkey]}'s too; "
                "each key may be listed once"
            )
        first_row[pubkey] = i + 1
        groups = row.get("groups", [])
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise FileProblem(f"{where}: 'groups' must be a list of names")
        revoked = row.get("revoked", False)
        if not isinstance(revoked, bool):
            raise FileProblem(f"{where}: 'revoked' must be true or false")
        members.append(
            MemberRow(
                _field(row, "memberId", where),
                pubkey,
                row["displayName"] if isinstance(row.get("displayName"), str) else pubkey[:8],
                tuple(groups),
                revoked,
            )
        )
    return MembersFile(mesh_id, str(name), tuple(members))
