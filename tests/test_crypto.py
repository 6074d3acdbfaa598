"""libsodium signing and boxes, checked against known answers.

The expected hex and base64 below were computed once with libsodium (through
PyNaCl) from the fixed seeds and nonce, and are written in as constants.
"""

from __future__ import annotations

import base64
import random

import nacl.public
import nacl.signing
import pytest

from meshproto import OpenError, Push, hello_signing_payload
from meshproto_crypto import BoxSealer, Ed25519Signer, Ed25519Verifier, KeyPair

SEED_A = bytes(range(32))
SEED_B = bytes(range(32, 64))
PUBKEY_A = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
SECRET_A = (
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
    "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
)
PUBKEY_B = "29acbae141bccaf0b22e1a94d34d0bc7361e526d0bfe12c89794bc9322966dd7"
HELLO_TIMESTAMP = 1795738821320
HELLO_SIGNATURE = (
    "aac7acb4dae9c1d1ab0be9162637cad995d0173184b50e3f8e076a177cae5482"
    "b2cb4fb5b2444e2ef7c35175524f4cbbd734bb8fbd0dc80905c2c5a175d70a02"
)
FIXED_NONCE = bytes(range(100, 124))
BODY = "héllo, mesh".encode()
BOX_NONCE_B64 = "ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7"
BOX_CIPHERTEXT_B64 = "WLO0SK3Ja7KIt/dtr1uScDFa9s9a64vZev8zmg=="


def _push(sender: str, nonce: str, ciphertext: str) -> Push:
    return Push("m1", "mesh", sender, "now", nonce, ciphertext, "2026-11-27T00:00:00.000Z")


def test_key_pair_from_seed_matches_libsodium_encoding() -> None:
    keys = KeyPair.from_seed(SEED_A)
    assert keys.pubkey == PUBKEY_A
    assert keys.secret_key == SECRET_A
    assert KeyPair.from_secret_key(SECRET_A) == keys


def test_key_pair_repr_hides_the_secret_key() -> None:
    assert SECRET_A[:64] not in repr(KeyPair.from_seed(SEED_A))


def test_mismatched_key_pair_is_refused() -> None:
    with pytest.raises(ValueError, match="does not"):
        KeyPair(PUBKEY_B, SECRET_A)


def test_hello_signature_is_the_known_answer() -> None:
    signer = Ed25519Signer(KeyPair.from_seed(SEED_A))
    payload = hello_signing_payload("mesh-kat", "member-kat", PUBKEY_A, HELLO_TIMESTAMP)
    assert payload == f"mesh-kat|member-kat|{PUBKEY_A}|{HELLO_TIMESTAMP}".encode()
    assert signer.sign(payload).hex() == HELLO_SIGNATURE


def test_verifier_accepts_the_signature_and_refuses_any_tampering() -> None:
    verifier = Ed25519Verifier()
    payload = hello_signing_payload("mesh-kat", "member-kat", PUBKEY_A, HELLO_TIMESTAMP)
    assert verifier.verify(PUBKEY_A, payload, HELLO_SIGNATURE)
    assert not verifier.verify(PUBKEY_B, payload, HELLO_SIGNATURE)
    assert not verifier.verify(PUBKEY_A, payload + b"0", HELLO_SIGNATURE)
    flipped = HELLO_SIGNATURE[:-1] + ("3" if HELLO_SIGNATURE[-1] != "3" else "4")
    assert not verifier.verify(PUBKEY_A, payload, flipped)
    assert not verifier.verify(PUBKEY_A, payload, "zz" * 64)
    assert not verifier.verify("ab", payload, HELLO_SIGNATURE)


def test_direct_box_is_the_known_answer() -> None:
    sealer = BoxSealer(KeyPair.from_seed(SEED_A), nonce_source=lambda n: FIXED_NONCE[:n])
    nonce, ciphertext = sealer.seal(PUBKEY_B, BODY, random.Random(0))
    assert (nonce, ciphertext) == (BOX_NONCE_B64, BOX_CIPHERTEXT_B64)


def test_direct_box_is_byte_for_byte_pynacl_box_over_converted_keys() -> None:
    ours = nacl.signing.SigningKey(SEED_A).to_curve25519_private_key()
    theirs = nacl.signing.VerifyKey(bytes.fromhex(PUBKEY_B)).to_curve25519_public_key()
    reference = nacl.public.Box(ours, theirs).encrypt(BODY, FIXED_NONCE).ciphertext
    assert base64.b64encode(reference).decode() == BOX_CIPHERTEXT_B64


def test_recipient_opens_the_box_with_its_member_key() -> None:
    receiver = BoxSealer(KeyPair.from_seed(SEED_B))
    assert receiver.open(_push(PUBKEY_A, BOX_NONCE_B64, BOX_CIPHERTEXT_B64)) == BODY


def test_recipient_opens_with_its_session_key_first() -> None:
    member_b = KeyPair.from_seed(SEED_B)
    session_b = KeyPair.from_seed(bytes(range(64, 96)))
    sender = BoxSealer(KeyPair.from_seed(SEED_A))
    nonce, ciphertext = sender.seal(session_b.pubkey, BODY, random.Random(0))
    receiver = BoxSealer(member_b, session_b)
    assert receiver.open(_push(PUBKEY_A, nonce, ciphertext)) == BODY


def test_a_session_seals_with_its_session_key() -> None:
    member_a = KeyPair.from_seed(SEED_A)
    session_a = KeyPair.from_seed(bytes(range(96, 128)))
    nonce, ciphertext = BoxSealer(member_a, session_a).seal(PUBKEY_B, BODY, random.Random(0))
    receiver = BoxSealer(KeyPair.from_seed(SEED_B))
    assert receiver.open(_push(session_a.pubkey, nonce, ciphertext)) == BODY
    with pytest.raises(OpenError):
        receiver.open(_push(PUBKEY_A, nonce, ciphertext))


def test_box_for_someone_else_raises_open_error_not_a_crash() -> None:
    stranger = BoxSealer(KeyPair.from_seed(bytes(32)))
    with pytest.raises(OpenError, match="no key of ours"):
        stranger.open(_push(PUBKEY_A, BOX_NONCE_B64, BOX_CIPHERTEXT_B64))


def test_broadcast_bodies_are_base64_utf8_and_open_by_fallback() -> None:
    sender = BoxSealer(KeyPair.from_seed(SEED_A), nonce_source=lambda n: FIXED_NONCE[:n])
    nonce, ciphertext = sender.seal("*", BODY, random.Random(0))
    assert base64.b64decode(ciphertext) == BODY
    assert len(base64.b64decode(nonce)) == 24
    receiver = BoxSealer(KeyPair.from_seed(SEED_B))
    assert receiver.open(_push(PUBKEY_A, nonce, ciphertext)) == BODY
    assert receiver.open(_push("system", "", "")) == b""


def test_undecryptable_non_utf8_body_raises_open_error() -> None:
    receiver = BoxSealer(KeyPair.from_seed(SEED_B))
    garbage = base64.b64encode(b"\xff\xfe" * 20).decode()
    with pytest.raises(OpenError, match="not UTF-8"):
        receiver.open(_push(PUBKEY_A, BOX_NONCE_B64, garbage))
    with pytest.raises(OpenError, match="not base64"):
        receiver.open(_push(PUBKEY_A, BOX_NONCE_B64, "%%%"))


def test_nonces_are_fresh_for_every_seal() -> None:
    sealer = BoxSealer(KeyPair.from_seed(SEED_A))
    rng = random.Random(0)
    nonces = {sealer.seal(PUBKEY_B, BODY, rng)[0] for _ in range(50)}
    assert len(nonces) == 50
