"""ed25519 key pairs in the claudemesh encodings (docs/protocol.md §2)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from nacl import bindings

__all__ = ["KeyPair"]

_HEX = re.compile(r"[0-9a-f]+")


def _check_hex(name: str, text: object, length: int) -> str:
    if not isinstance(text, str) or len(text) != length or not _HEX.fullmatch(text):
        raise ValueError(f"{name} must be {length} lowercase hex characters")
    return text


@dataclass(frozen=True, slots=True)
class KeyPair:
    """An ed25519 key pair: ``pubkey`` (64 hex) and ``secret_key`` (128 hex, seed ‖ pubkey).

    ``repr`` never shows the secret key.
    """

    pubkey: str
    secret_key: str = field(repr=False)

    def __post_init__(self) -> None:
        _check_hex("pubkey", self.pubkey, 64)
        _check_hex("secretKey", self.secret_key, 128)
        if self.secret_key[64:] != self.pubkey:
            raise ValueError("secretKey does not end with its pubkey: the pair does not match")
        derived, _ = bindings.crypto_sign_seed_keypair(bytes.fromhex(self.secret_key[:64]))
        if derived.hex() != self.pubkey:
            raise ValueError(
                "secretKey's seed does not produce its pubkey: the pair does not match"
            )

    @classmethod
    def generate(cls) -> KeyPair:
        """A fresh key pair from the operating system's random source."""
        public, secret = bindings.crypto_sign_keypair()
        return cls(public.hex(), secret.hex())

    @classmethod
    def from_seed(cls, seed: bytes) -> KeyPair:
        """The key pair of a 32-byte seed (deterministic: for tests and known answers)."""
        public, secret = bindings.crypto_sign_seed_keypair(seed)
        return cls(public.hex(), secret.hex())

    @classmethod
    def from_secret_key(cls, secret_key_hex: str) -> KeyPair:
        """The key pair of a 128-hex libsodium secret key."""
        _check_hex("secretKey", secret_key_hex, 128)
        return cls(secret_key_hex[64:], secret_key_hex)

    @property
    def secret_bytes(self) -> bytes:
        return bytes.fromhex(self.secret_key)

    @property
    def public_bytes(self) -> bytes:
        return bytes.fromhex(self.pubkey)
