"""Detached ed25519 signatures behind the core's ``Signer`` and ``Verifier`` seams."""

from __future__ import annotations

from nacl import bindings
from nacl.exceptions import BadSignatureError, CryptoError

from ._keys import KeyPair

__all__ = ["Ed25519Signer", "Ed25519Verifier"]


class Ed25519Signer:
    """Signs with one ed25519 secret key (the core's ``Signer``)."""

    __slots__ = ("_secret", "public_key")

    def __init__(self, keys: KeyPair) -> None:
        self._secret = keys.secret_bytes
        self.public_key: str = keys.pubkey

    def sign(self, message: bytes) -> bytes:
        signed = bindings.crypto_sign(message, self._secret)
        return signed[:64]

    def __repr__(self) -> str:
        return f"Ed25519Signer(public_key={self.public_key[:12]}...)"


class Ed25519Verifier:
    """Checks detached ed25519 signatures given as hex (the broker's ``Verifier``)."""

    __slots__ = ()

    def verify(self, pubkey_hex: str, message: bytes, signature_hex: str) -> bool:
        try:
            public = bytes.fromhex(pubkey_hex)
            signature = bytes.fromhex(signature_hex)
        except ValueError:
            return False
        if len(public) != 32 or len(signature) != 64:
            return False
        try:
            bindings.crypto_sign_open(signature + message, public)
        except (BadSignatureError, CryptoError, ValueError):
            return False
        return True
