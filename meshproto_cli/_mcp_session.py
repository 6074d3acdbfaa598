"""Which session an MCP server speaks as: a leased slot, or a pinned name.

An AI client starts one ``meshproto mcp`` per AI session, so two servers of
one member often run side by side, and each must be a peer of its own: a
server that reused another's session key would displace it (the broker
closes the older socket with ``session_replaced``, docs/protocol.md §6).
A server must also come back as the *same* peer after a restart, because
the broker keeps a direct message addressed to a session key for that
session only (§4.6): a restarted server with a fresh key would never get the
messages its predecessor was pushed but had not yet handed to the model.

Both needs are met by *slots*: session names ``mcp-1``, ``mcp-2`` ... whose
key pairs are kept like any session's (``_identity.load_identity``), each
held by at most one running server through an advisory lock on
``<config dir>/meshproto-mcp/<name>.lock``. A new server takes the lowest
slot nobody holds, so it never displaces a running one, and a server that
restarts after its predecessor exited takes that freed slot again, with its
key, and the broker hands it what is still pending. The lock goes with the
process (crash included); there are only ever as many slots as servers ran
at once, so nothing piles up.

``--session NAME`` pins the name instead. It is locked the same way, and a
second server with the same pinned name is refused rather than allowed to
take the first one's place.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ._files import FileProblem, open_lock

__all__ = ["SessionLease", "lease_session"]

#: How many slots a server tries before giving up (each running server holds one).
MAX_SLOTS = 1000
_SLOT_PREFIX = "mcp-"
_SAFE_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass
class SessionLease:
    """A session name this process holds until :meth:`release` (or its exit)."""

    name: str
    path: Path
    pinned: bool
    _fd: int | None = field(default=None, repr=False)

    def release(self) -> None:
        """Let another server take this session (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)  # closing the descriptor drops the lock

    def __enter__(self) -> SessionLease:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


def _try_lock(fd: int) -> bool:
    """Take the exclusive advisory lock on ``fd`` without waiting; whether it was free."""
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        import msvcrt  # noqa: PLC0415

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl  # noqa: PLC0415

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # BlockingIOError: someone holds it
        return False
    return True


def _holder(path: Path) -> str:
    """Who holds a lock, as far as its file says (``pid N``), for messages."""
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return "another process"
    return f"pid {text}" if text.isdigit() else "another process"


def _acquire(path: Path) -> int | None:
    """The descriptor of ``path`` with its lock held, or ``None`` if another process has it."""
    fd = open_lock(path)  # read-only on a read-only disk: flock needs no more
    if not _try_lock(fd):
        os.close(fd)
        return None
    with contextlib.suppress(OSError):  # the pid is only ever shown in messages
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
    return fd


def lease_session(directory: Path, pinned: str | None = None) -> SessionLease:
    """Hold the session ``pinned``, or the lowest free slot (``mcp-1``, ``mcp-2`` ...).

    Raises :class:`FileProblem` if ``pinned`` is not a valid session name or
    another server holds it, or if the lock folder cannot be written.
    """
    folder = directory / "meshproto-mcp"
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise FileProblem(f"cannot create {folder}: {exc.strerror}") from None
    if pinned is not None:
        if not _SAFE_NAME.fullmatch(pinned):
            raise FileProblem(
                f"--session {pinned!r}: session names may use letters, digits, '.', '_' and "
                "'-' (1-64)"
            )
        path = folder / f"{pinned}.lock"
        fd = _acquire(path)
        if fd is None:
            raise FileProblem(
                f"session {pinned!r} is in use by another 'meshproto mcp' ({_holder(path)}); "
                "choose another --session, or leave it out to get a free one"
            )
        return SessionLease(pinned, path, True, fd)
    for number in range(1, MAX_SLOTS + 1):
        name = f"{_SLOT_PREFIX}{number}"
        path = folder / f"{name}.lock"
        fd = _acquire(path)
        if fd is not None:
            return SessionLease(name, path, False, fd)
    raise FileProblem(
        f"all {MAX_SLOTS} session slots in {folder} are held by running servers; "
        "stop some, or pass --session NAME"
    )
