"""Who the command speaks as: a joined mesh plus a persistent session key.

Every socket opens with a ``session_hello`` (docs/protocol.md §3.2): the member
key attests a session key pair, kept per (mesh, session name), and the
session key signs the hello. So every reconnect of one session is the same
peer to the broker, which reattaches it silently within its grace window.
The session key also seals and opens direct messages, with the member key.

Which session each subcommand uses (:func:`command_identity`):

* ``listen`` uses session ``listen`` unless ``--session`` names another, so
  each run, and each reconnect, is the same peer to the broker;
* ``send`` and ``peers`` use a one-shot session of their own
  (:data:`~meshproto_cli._names.ONE_SHOT_SESSION`, then ``oneshot-2`` …
  when several run at once), so they never take over a running ``listen``
  and never each other; past :data:`ONE_SHOT_SLOTS` at once, a fresh key
  that is not kept;
* a session in use by another command on this machine is never shared: it is
  locked while a command runs, and ``--session NAME`` that is in use is an
  error rather than a takeover.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshproto_crypto import BoxSealer, Ed25519Signer, KeyPair

from ._files import (
    FileProblem,
    JoinedMesh,
    SessionLock,
    load_joined_meshes,
    load_or_create_session_keys,
    lock_session,
    select_mesh,
)
from ._names import ONE_SHOT_SESSION

__all__ = ["LISTEN_SESSION", "ONE_SHOT_SLOTS", "Identity", "command_identity", "load_identity"]

#: ``listen``'s session, unless ``--session`` names another.
LISTEN_SESSION = "listen"
#: How many one-shot sessions are kept on disk (``oneshot``, ``oneshot-2`` …).
ONE_SHOT_SLOTS = 8


def _new_pair() -> tuple[str, str]:
    keys = KeyPair.generate()
    return keys.pubkey, keys.secret_key


@dataclass(frozen=True, slots=True)
class Identity:
    mesh: JoinedMesh
    member: KeyPair
    session: KeyPair
    session_name: str

    def connect_kwargs(
        self, url: str | None = None, display_name: str | None = None
    ) -> dict[str, Any]:
        """Arguments for ``meshproto_anyio.connect``.

        The broker names us from its member list unless ``display_name`` is
        given (the joined-mesh record's ``name`` is the mesh's name).
        """
        return {
            "url": url or self.mesh.broker_url,
            "mesh_id": self.mesh.mesh_id,
            "member_id": self.mesh.member_id,
            "signer": Ed25519Signer(self.member),
            "session_id": f"{self.mesh.member_id}:{self.session_name}",
            "session_signer": Ed25519Signer(self.session),
            "sealer": BoxSealer(self.member, self.session),
            "display_name": display_name,
            "peer_type": "connector",
        }


def load_identity(directory: Path, mesh: str | None, session_name: str) -> Identity:
    chosen = select_mesh(load_joined_meshes(directory), mesh, directory)
    member = KeyPair.from_secret_key(chosen.secret_key)
    pubkey, secret = load_or_create_session_keys(directory, chosen.mesh_id, session_name, _new_pair)
    return Identity(chosen, member, KeyPair(pubkey, secret), session_name)


def _one_shot_names() -> Iterator[str]:
    yield ONE_SHOT_SESSION
    for slot in range(2, ONE_SHOT_SLOTS + 1):
        yield f"{ONE_SHOT_SESSION}-{slot}"


@contextmanager
def command_identity(
    directory: Path, mesh: str | None, *, command: str, session: str | None = None
) -> Iterator[Identity]:
    """The identity a subcommand speaks as, its session locked for the command's life.

    ``command`` is ``listen`` (a stable session) or anything else (a one-shot
    session); ``session`` is ``--session``, if given. See the module
    docstring. Raises :class:`FileProblem` for a session in use.
    """
    chosen = select_mesh(load_joined_meshes(directory), mesh, directory)
    member = KeyPair.from_secret_key(chosen.secret_key)
    if session is None and command != "listen":
        lock = None
        for name in _one_shot_names():
            held = lock_session(directory, chosen.mesh_id, name)
            if isinstance(held, SessionLock):
                lock = held
                break
        if lock is None:  # every slot is busy: a key of its own, not kept
            keys = KeyPair.generate()
            name = f"{ONE_SHOT_SESSION}-{secrets.token_hex(4)}"
            yield Identity(chosen, member, keys, name)
            return
    else:
        name = session or LISTEN_SESSION
        if command == "listen" and name.startswith(ONE_SHOT_SESSION):
            raise FileProblem(
                f"session names starting with {ONE_SHOT_SESSION!r} are send's and peers'; "
                "choose another --session for listen"
            )
        held = lock_session(directory, chosen.mesh_id, name)
        if not isinstance(held, SessionLock):
            raise FileProblem(
                f"session {name!r} is in use by another meshproto command on this machine "
                f"({held}); stop it, or choose another --session (two connections of one "
                "session are one peer: the broker would close the older one for good)"
            )
        lock = held
    with lock:
        pubkey, secret = load_or_create_session_keys(directory, chosen.mesh_id, name, _new_pair)
        yield Identity(chosen, member, KeyPair(pubkey, secret), name)
