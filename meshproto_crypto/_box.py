"""Direct-message bodies: ``crypto_box`` over keys converted from ed25519 (§5).

Sealing, for a direct target (64 hex): convert our ed25519 secret key (the
session key if we have one, else the member key) and the target's ed25519
public key to X25519, and ``crypto_box_easy`` the body under a fresh random
24-byte nonce. The wire carries standard padded base64 of the nonce and of
``MAC ‖ ciphertext``, byte for byte what libsodium produces. Every other
target gets the plaintext encoding: base64 of the UTF-8 body and a random
placeholder nonce.

Opening a push: try the box with our session key, then with our member key,
then, only if both fail, fall back to the plaintext encoding when it decodes
to valid UTF-8. Anything else raises :class:`meshproto.OpenError`.

Nonces come from the operating system (``os.urandom`` via libsodium), not
from the core's injected ``random.Random``: a reused nonce under one key pair
would expose both plaintexts, and a replayable test rng must never be able to
cause that. ``nonce_source`` exists for known-answer tests only.

Shared keys (``crypto_box_beforenm``) are cached per peer, bounded.
"""

from __future__ import annotations

from collections.abc import Callable
from random import Random

from nacl import bindings
from nacl.exceptions import CryptoError

from meshproto import OpenError, Push, b64decode, b64encode, is_direct_target

from ._keys import KeyPair

__all__ = ["BoxSealer"]

_NONCE_BYTES = 24
_CACHE_LIMIT = 256


def _curve_public(ed_pubkey: bytes) -> bytes:
    return bindings.crypto_sign_ed25519_pk_to_curve25519(ed_pubkey)


class BoxSealer:
    """The core's ``Sealer`` with libsodium boxes for direct messages."""

    __slots__ = ("_cache", "_member_curve", "_nonce", "_send_curve", "_session_curve")

    def __init__(
        self,
        member: KeyPair,
        session: KeyPair | None = None,
        *,
        nonce_source: Callable[[int], bytes] | None = None,
    ) -> None:
        self._member_curve = bindings.crypto_sign_ed25519_sk_to_curve25519(member.secret_bytes)
        self._session_curve = (
            bindings.crypto_sign_ed25519_sk_to_curve25519(session.secret_bytes)
            if session is not None
            else None
        )
        # Pushes carry the sender's session key when it has one, so seal with it.
        self._send_curve = self._session_curve or self._member_curve
        self._nonce = nonce_source or bindings.randombytes
        self._cache: dict[tuple[bytes, str], bytes] = {}

    def _shared(self, own_curve_secret: bytes, peer_ed_pubkey_hex: str) -> bytes:
        """The box key between one of our keys and a peer's (hex) ed25519 public key."""
        key = (own_curve_secret, peer_ed_pubkey_hex)
        shared = self._cache.get(key)
        if shared is None:
            peer = bytes.fromhex(peer_ed_pubkey_hex)
            if len(peer) != 32:
                raise ValueError("not a 32-byte public key")
            shared = bindings.crypto_box_beforenm(_curve_public(peer), own_curve_secret)
            if len(self._cache) >= _CACHE_LIMIT:
                del self._cache[next(iter(self._cache))]
            self._cache[key] = shared
        return shared

    def seal(self, target_spec: str, body: bytes, rng: Random) -> tuple[str, str]:
        nonce = self._nonce(_NONCE_BYTES)
        if not is_direct_target(target_spec):
            return b64encode(nonce), b64encode(body)
        try:
            shared = self._shared(self._send_curve, target_spec)
        except (CryptoError, ValueError) as exc:
            raise ValueError(f"target {target_spec[:16]}... is not an ed25519 public key") from exc
        sealed = bindings.crypto_box_easy_afternm(body, nonce, shared)
        return b64encode(nonce), b64encode(sealed)

    def open(self, push: Push) -> bytes:
        try:
            ciphertext = b64decode(push.ciphertext)
        except ValueError as exc:
            raise OpenError(f"ciphertext is not base64: {exc}") from None
        box_error = "not a box"
        try:
            nonce = b64decode(push.nonce)
        except ValueError:
            nonce = b""
        if len(nonce) == _NONCE_BYTES and is_direct_target(push.sender_pubkey):
            for own in (self._session_curve, self._member_curve):
                if own is None:
                    continue
                try:
                    return bindings.crypto_box_open_easy_afternm(
                        ciphertext, nonce, self._shared(own, push.sender_pubkey)
                    )
                except (CryptoError, ValueError):
                    box_error = "no key of ours opens the box"
        try:
            ciphertext.decode("utf-8")
        except UnicodeDecodeError:
            raise OpenError(f"{box_error}, and the body is not UTF-8 plaintext") from None
        return ciphertext

    def __repr__(self) -> str:
        return "BoxSealer(<keys hidden>)"
