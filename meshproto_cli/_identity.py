"""Who the command speaks as: a joined mesh plus a persistent session key.

Every socket opens with a ``session_hello`` (docs/protocol.md §3.2): the member
key attests a session key pair, kept per (mesh, session name), and the
session key signs the hello. So every reconnect of one session is the same
peer to the broker, which reattaches it silently within its grace window.
The session key also seals and opens direct messages, with the member key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshproto_crypto import BoxSealer, Ed25519Signer, KeyPair

from ._files import JoinedMesh, load_joined_meshes, load_or_create_session_keys, select_mesh

__all__ = ["Identity", "load_identity"]


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
