"""Whether a hello may in: the reference broker's hello checks (PROTOCOL.md §3.1, §6).

A refused hello is answered with ``error{code, message}`` and then closed with
the :class:`Refusal`'s close code. The checks that need only the frame run
here, in this order, the cheapest and least revealing first:

1. ``timestamp_skew`` (1008): the timestamp is missing, not an integer number
   of milliseconds, or more than ``skew`` seconds away from the broker's clock
   (a timestamp in seconds is therefore refused too);
2. ``malformed`` (1008): ``pubkey`` is not 64 or ``signature`` not 128
   lowercase hex characters, or a field has the wrong JSON type;
3. ``bad_session_pubkey`` (1008): ``sessionPubkey`` is present and not 64
   lowercase hex characters;
4. ``bad_signature`` (1008): the :class:`~meshproto.Verifier` rejects the
   signature over ``hello_signing_payload(meshId, memberId, pubkey, timestamp)``
   (a verifier that raises counts as a rejection).

The signature is checked before the registry is consulted, so that nobody can
learn who is a member of a mesh without that member's key. The broker then
refuses with ``unauthorized`` (1008), ``revoked`` (4002 ``banned``),
``bad_session_pubkey`` (a session key held by another member) or ``capacity``
(1008); those refusals are built here as well, so that every text lives in
one place.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._frames import Hello
from ._registry import Verifier
from ._seams import hello_signing_payload

__all__ = [
    "Refusal",
    "capacity",
    "check_hello",
    "refuse_undecodable_hello",
    "revoked",
    "session_key_taken",
    "unauthorized",
]

logger = logging.getLogger("meshproto.broker")

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX128 = re.compile(r"[0-9a-f]{128}")

POLICY_VIOLATION = 1008
BANNED = 4002


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a hello is refused: the error frame's code and message, then the close."""

    code: str
    message: str
    close_code: int = POLICY_VIOLATION
    close_reason: str = ""

    @property
    def reason(self) -> str:
        """The close reason: the code itself unless stated otherwise."""
        return self.close_reason or self.code


def _rejected(code: str) -> Refusal:
    return Refusal(code, f"hello rejected: {code}")


TIMESTAMP_SKEW = _rejected("timestamp_skew")
MALFORMED = _rejected("malformed")
BAD_SIGNATURE = _rejected("bad_signature")
BAD_SESSION_PUBKEY = Refusal("bad_session_pubkey", "sessionPubkey must be 64 lowercase hex chars")


def check_hello(hello: Hello, *, now: float, skew: float, verifier: Verifier) -> Refusal | None:
    """The frame-only checks (1-4 in the module docstring); ``None`` if they pass."""
    timestamp = hello.timestamp
    # Integer arithmetic: a timestamp of any size is compared without overflow.
    if timestamp is None or abs(timestamp - round(now * 1000)) > round(skew * 1000):
        return TIMESTAMP_SKEW
    signature = hello.signature
    if (
        _HEX64.fullmatch(hello.pubkey) is None
        or signature is None
        or _HEX128.fullmatch(signature) is None
    ):
        return MALFORMED
    if hello.session_pubkey is not None and _HEX64.fullmatch(hello.session_pubkey) is None:
        return BAD_SESSION_PUBKEY
    payload = hello_signing_payload(hello.mesh_id, hello.member_id, hello.pubkey, timestamp)
    try:
        good = verifier.verify(hello.pubkey, payload, signature)
    except Exception:  # a verifier that chokes on input has not verified it
        logger.debug("verifier raised on a hello signature", exc_info=True)
        good = False
    return None if good is True else BAD_SIGNATURE


def refuse_undecodable_hello(raw: Mapping[str, Any]) -> Refusal:
    """The refusal for a hello that failed to decode (a field of the wrong type).

    A timestamp that is present but not an integer is a ``timestamp_skew``
    (as the real broker treats it); anything else is ``malformed``.
    """
    timestamp = raw.get("timestamp")
    if timestamp is not None and (type(timestamp) is not int):
        return TIMESTAMP_SKEW
    return MALFORMED


def unauthorized() -> Refusal:
    return Refusal("unauthorized", "pubkey not found in mesh")


def revoked(mesh_id: str) -> Refusal:
    return Refusal(
        "revoked",
        f'You\'ve been removed from "{mesh_id}". Contact the mesh owner to rejoin.',
        BANNED,
        "banned",
    )


def session_key_taken() -> Refusal:
    return Refusal(
        "bad_session_pubkey", "sessionPubkey is already in use by another member of this mesh"
    )


def capacity(limit: int) -> Refusal:
    return Refusal("capacity", f"hello rejected: capacity (mesh is at its limit of {limit})")
