"""Test doubles with no dependencies, and the exception every oracle raises."""

from __future__ import annotations

import hashlib


class FakeSigner:
    """A deterministic stand-in for an ed25519 signer (not a signature scheme)."""

    __slots__ = ("_seed", "public_key")

    def __init__(self, seed: bytes | str = b"meshproto-test") -> None:
        self._seed = seed.encode() if isinstance(seed, str) else bytes(seed)
        self.public_key: str = hashlib.sha256(b"pk:" + self._seed).hexdigest()

    def sign(self, message: bytes) -> bytes:
        return hashlib.sha512(b"sig:" + self._seed + message).digest()

    def verify(self, message: bytes, signature: bytes) -> bool:
        return signature == self.sign(message)

    def __repr__(self) -> str:
        return f"FakeSigner(public_key={self.public_key[:12]}...)"


class ContractViolation(AssertionError):
    """The machine under test (client or broker) broke one of its contracts."""
