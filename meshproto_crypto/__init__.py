"""meshproto_crypto: the libsodium side of meshproto (extra ``meshproto[crypto]``).

The pure core never touches a key: it signs through its ``Signer`` interface,
the reference broker verifies through ``Verifier``, and bodies are sealed and
opened through ``Sealer``. This package implements those three with PyNaCl
(libsodium), byte for byte as docs/protocol.md §2, §3 and §5 say:

* :class:`KeyPair`: an ed25519 identity, ``pubkey`` 64 hex and libsodium's
  64-byte ``secretKey`` (seed ‖ public key) as 128 hex.
* :class:`Ed25519Signer` / :class:`Ed25519Verifier`: detached signatures.
* :class:`BoxSealer`: ``crypto_box_easy`` over keys converted from ed25519
  for direct messages, base64 UTF-8 for everything else; opening tries the
  session key, then the member key, then the plaintext fallback.

Session hellos (§3.2) need nothing more: the core mints the parent
attestation and signs the session hello through two ``Signer`` objects.
"""

from __future__ import annotations

try:
    import nacl.bindings as _bindings  # noqa: F401
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise ImportError("meshproto_crypto needs PyNaCl: pip install 'meshproto[crypto]'") from _exc

from ._box import BoxSealer
from ._keys import KeyPair
from ._signing import Ed25519Signer, Ed25519Verifier

__all__ = [
    "BoxSealer",
    "Ed25519Signer",
    "Ed25519Verifier",
    "KeyPair",
]
