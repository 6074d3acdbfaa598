"""The small interfaces the core calls out through: signing and body sealing.

The core never touches a key or a cipher itself. A :class:`Signer` signs the
canonical hello string (docs/protocol.md §3.1); a :class:`Sealer` turns a body into
the ``nonce``/``ciphertext`` pair of a ``send`` and opens a ``push`` again
(§5). The libsodium implementations live outside the pure core and are
imported only when used; :class:`PlaintextSealer` is the §5 encoding for
broadcast, group and topic bodies, and the default.
"""

from __future__ import annotations

import base64
import binascii
from random import Random
from typing import Protocol, runtime_checkable

from ._frames import Push

__all__ = [
    "OpenError",
    "attestation_signing_payload",
    "session_hello_signing_payload",
    "PlaintextSealer",
    "Sealer",
    "Signer",
    "b64decode",
    "b64encode",
    "hello_signing_payload",
]


def b64encode(data: bytes) -> str:
    """Standard, padded base64 (the only alphabet the wire uses)."""
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def b64decode(text: str) -> bytes:
    """Strict standard base64; raises ``ValueError`` on anything else."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not standard base64: {exc}") from None


def hello_signing_payload(mesh_id: str, member_id: str, pubkey: str, timestamp_ms: int) -> bytes:
    """The bytes a member signs in ``hello``: ``meshId|memberId|pubkey|timestamp``."""
    return f"{mesh_id}|{member_id}|{pubkey}|{timestamp_ms}".encode()


def attestation_signing_payload(
    parent_member_pubkey: str, session_pubkey: str, expires_at_ms: int
) -> bytes:
    """What a member signs to vouch for a session key (§3.2)."""
    return (
        f"claudemesh-session-attest|{parent_member_pubkey}|{session_pubkey}|{expires_at_ms}"
    ).encode()


def session_hello_signing_payload(
    mesh_id: str, parent_member_pubkey: str, session_pubkey: str, timestamp_ms: int
) -> bytes:
    """What a session key signs in ``session_hello`` (§3.2)."""
    return (
        f"claudemesh-session-hello|{mesh_id}|{parent_member_pubkey}|{session_pubkey}|{timestamp_ms}"
    ).encode()


@runtime_checkable
class Signer(Protocol):
    """Signs hellos with an ed25519 member key."""

    @property
    def public_key(self) -> str:
        """The public key, 64 lowercase hex characters."""
        ...

    def sign(self, message: bytes) -> bytes:
        """A 64-byte detached ed25519 signature of ``message``."""
        ...


class OpenError(Exception):
    """A push body could not be opened (wrong key, tampered, not UTF-8 ...)."""


@runtime_checkable
class Sealer(Protocol):
    """Turns bodies into ``(nonce, ciphertext)`` and back (docs/protocol.md §5)."""

    def seal(self, target_spec: str, body: bytes, rng: Random) -> tuple[str, str]:
        """Return base64 ``nonce`` and ``ciphertext`` for a send to ``target_spec``."""
        ...

    def open(self, push: Push) -> bytes:
        """Return the body of ``push``, or raise :class:`OpenError`."""
        ...


class PlaintextSealer:
    """§5 bodies for broadcast, group and topic: base64 of the bytes, random nonce."""

    __slots__ = ()

    def seal(self, target_spec: str, body: bytes, rng: Random) -> tuple[str, str]:
        return b64encode(rng.randbytes(24)), b64encode(body)

    def open(self, push: Push) -> bytes:
        try:
            return b64decode(push.ciphertext)
        except ValueError as exc:
            raise OpenError(str(exc)) from None

    def __repr__(self) -> str:
        return "PlaintextSealer()"
