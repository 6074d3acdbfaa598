"""Whether a hello may in: the reference broker's hello checks (docs/protocol.md §3.1, §3.2, §6).

A refused hello is answered with ``error{code, message}`` and then closed with
the :class:`Refusal`'s close code. Every text lives here, in one place. The
checks that need only the frame run first, the cheapest and least revealing
first; the registry is consulted only once every signature has been checked,
so that nobody learns who is a member of a mesh without that member's key.

Member ``hello`` (:func:`check_hello`):

1. ``timestamp_skew`` (1008): the timestamp is missing, not an integer number
   of milliseconds, or more than ``skew`` seconds away from the broker's clock
   (a timestamp in seconds is therefore refused too);
2. ``malformed`` (1008): ``pubkey`` is not 64 or ``signature`` not 128
   lowercase hex characters, a field has the wrong JSON type, or a field
   that others will see is longer than :data:`HELLO_FIELD_LIMITS` allows
   **[reference broker]** (a peer list of a thousand sockets must stay a
   size every client can read);
3. ``bad_session_pubkey`` (1008): ``sessionPubkey`` is present and not 64
   lowercase hex characters;
4. ``bad_signature`` (1008): the :class:`~meshproto.Verifier` rejects the
   member key's signature over ``hello_signing_payload(meshId, memberId,
   pubkey, timestamp)`` (so ``memberId`` is covered by the signature, though
   it is never compared with the member row, as at the real broker).

``session_hello`` (:func:`check_session_hello`), a session key vouched for by
its parent member:

1. ``timestamp_skew`` (1008): as for ``hello``;
2. ``malformed`` (1008): ``signature`` is not 128 lowercase hex characters,
   a field has the wrong JSON type (``parentAttestation`` included), or a
   field is longer than :data:`HELLO_FIELD_LIMITS` allows;
3. ``bad_parent_pubkey`` (1008): ``parentMemberPubkey`` is not 64 lowercase
   hex characters;
4. ``bad_session_pubkey`` (1008): ``sessionPubkey`` is not 64 lowercase hex;
5. ``attestation_mismatch`` (1008): the attestation's ``sessionPubkey`` or
   ``parentMemberPubkey`` is not the hello's;
6. ``malformed`` (1008): the attestation's ``signature`` is not 128 hex;
7. ``expired`` (1008): ``expiresAt`` is not after the broker's clock (in
   milliseconds, as at the real broker: an attestation expiring *now* is
   expired); ``ttl_too_long`` (1008): ``expiresAt`` is more than 24 h ahead
   (exactly 24 h is accepted);
8. ``bad_signature`` (1008): the **session** key's signature over
   ``session_hello_signing_payload(meshId, parentMemberPubkey, sessionPubkey,
   timestamp)``, then the **member** key's attestation signature over
   ``attestation_signing_payload(parentMemberPubkey, sessionPubkey,
   expiresAt)``; a verifier that raises counts as a rejection.

Then the broker asks the registry for the (parent) member and refuses with
``unauthorized`` (1008), ``revoked`` (4002 ``banned``), for a session hello
``parent_member_id_mismatch`` (1008: ``parentMemberId`` is not the member
row's id), ``bad_session_pubkey`` (the session key is the member key of
another member, or is held by another member's presence that this hello may
not displace: only a session hello, which proves the key, displaces a member
hello's unproven claim of it) or ``capacity`` (1008); those refusals are
built here as well.

The broker's clock in milliseconds is ``round(now * 1000)``; the skew bound
is inclusive (exactly ``skew`` away is accepted, one millisecond more is not).
Texts the real broker was not observed sending (the session hello's own
``timestamp_skew``/``malformed``/``bad_signature``, ``bad_parent_pubkey``,
the attestation's ``malformed``/``bad_signature``) are ours; clients act on
the code only.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._config import ATTESTATION_MAX_TTL_MS
from ._frames import Hello, SessionHello
from ._registry import Verifier
from ._seams import (
    attestation_signing_payload,
    hello_signing_payload,
    session_hello_signing_payload,
)
from ._targets import is_pubkey

__all__ = [
    "GROUPS_LIMIT",
    "HELLO_FIELD_LIMITS",
    "Refusal",
    "capacity",
    "check_hello",
    "check_session_hello",
    "parent_member_id_mismatch",
    "refuse_undecodable_hello",
    "revoked",
    "session_key_taken",
    "unauthorized",
]

logger = logging.getLogger("meshproto.broker")

_HEX128 = re.compile(r"[0-9a-f]{128}")

POLICY_VIOLATION = 1008
BANNED = 4002

#: The longest each hello field that other peers see may be, in characters
#: **[reference broker]**: these travel in every ``peers_list`` and system push.
HELLO_FIELD_LIMITS = {
    "mesh_id": 128,
    "member_id": 128,
    "parent_member_id": 128,
    "session_id": 128,
    "display_name": 64,
    "hostname": 128,
    "peer_type": 32,
    "role": 64,
    "cwd": 512,
}
#: At most this many groups in a hello, each name and role at most 32 characters.
GROUPS_LIMIT = 16
_GROUP_TEXT_LIMIT = 32


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


def _rejected(code: str, what: str = "hello") -> Refusal:
    return Refusal(code, f"{what} rejected: {code}")


TIMESTAMP_SKEW = _rejected("timestamp_skew")
MALFORMED = _rejected("malformed")
BAD_SIGNATURE = _rejected("bad_signature")
BAD_SESSION_PUBKEY = Refusal("bad_session_pubkey", "sessionPubkey must be 64 lowercase hex chars")

SESSION_TIMESTAMP_SKEW = _rejected("timestamp_skew", "session_hello")
SESSION_MALFORMED = _rejected("malformed", "session_hello")
SESSION_BAD_SIGNATURE = _rejected("bad_signature", "session_hello")
BAD_PARENT_PUBKEY = Refusal(
    "bad_parent_pubkey", "parentMemberPubkey must be 64 lowercase hex chars"
)
ATTESTATION_MISMATCH = Refusal(
    "attestation_mismatch", "parentAttestation does not bind the claimed session+parent pubkeys"
)
ATTESTATION_MALFORMED = _rejected("malformed", "attestation")
ATTESTATION_EXPIRED = _rejected("expired", "attestation")
ATTESTATION_TTL_TOO_LONG = _rejected("ttl_too_long", "attestation")
ATTESTATION_BAD_SIGNATURE = _rejected("bad_signature", "attestation")


def _skewed(timestamp: int, now: float, skew: float) -> bool:
    # Integer arithmetic: a timestamp of any size is compared without overflow.
    return abs(timestamp - round(now * 1000)) > round(skew * 1000)


def _verified(verifier: Verifier, pubkey: str, payload: bytes, signature: str) -> bool:
    try:
        good = verifier.verify(pubkey, payload, signature)
    except Exception:  # a verifier that chokes on input has not verified it
        logger.debug("verifier raised on a hello signature", exc_info=True)
        return False
    return good is True


def _oversized(hello: Hello | SessionHello) -> bool:
    """Whether a field others will see is longer than the limits allow."""
    for name, limit in HELLO_FIELD_LIMITS.items():
        value = getattr(hello, name, None)
        if value is not None and len(value) > limit:
            return True
    groups = hello.groups or ()
    if len(groups) > GROUPS_LIMIT:
        return True
    return any(
        len(g.name) > _GROUP_TEXT_LIMIT or len(g.role or "") > _GROUP_TEXT_LIMIT for g in groups
    )


def check_hello(hello: Hello, *, now: float, skew: float, verifier: Verifier) -> Refusal | None:
    """The frame-only checks of a member hello (module docstring); ``None`` if they pass."""
    timestamp = hello.timestamp
    if timestamp is None or _skewed(timestamp, now, skew):
        return TIMESTAMP_SKEW
    signature = hello.signature
    if (
        _oversized(hello)
        or not is_pubkey(hello.pubkey)
        or signature is None
        or _HEX128.fullmatch(signature) is None
    ):
        return MALFORMED
    if hello.session_pubkey is not None and not is_pubkey(hello.session_pubkey):
        return BAD_SESSION_PUBKEY
    payload = hello_signing_payload(hello.mesh_id, hello.member_id, hello.pubkey, timestamp)
    return None if _verified(verifier, hello.pubkey, payload, signature) else BAD_SIGNATURE


def check_session_hello(
    hello: SessionHello, *, now: float, skew: float, verifier: Verifier
) -> Refusal | None:
    """The frame-only checks of a session hello (module docstring); ``None`` if they pass."""
    timestamp = hello.timestamp
    if timestamp is None or _skewed(timestamp, now, skew):
        return SESSION_TIMESTAMP_SKEW
    signature = hello.signature
    if signature is None or _HEX128.fullmatch(signature) is None or _oversized(hello):
        return SESSION_MALFORMED
    parent, session = hello.parent_member_pubkey, hello.session_pubkey
    if not is_pubkey(parent):
        return BAD_PARENT_PUBKEY
    if not is_pubkey(session):
        return BAD_SESSION_PUBKEY
    attestation = hello.parent_attestation
    if attestation.session_pubkey != session or attestation.parent_member_pubkey != parent:
        return ATTESTATION_MISMATCH
    if _HEX128.fullmatch(attestation.signature) is None:
        return ATTESTATION_MALFORMED
    now_ms = round(now * 1000)
    expires_at = attestation.expires_at
    if expires_at <= now_ms:
        return ATTESTATION_EXPIRED
    if expires_at - now_ms > ATTESTATION_MAX_TTL_MS:
        return ATTESTATION_TTL_TOO_LONG
    payload = session_hello_signing_payload(hello.mesh_id, parent, session, timestamp)
    if not _verified(verifier, session, payload, signature):
        return SESSION_BAD_SIGNATURE
    vouched = attestation_signing_payload(parent, session, expires_at)
    if not _verified(verifier, parent, vouched, attestation.signature):
        return ATTESTATION_BAD_SIGNATURE
    return None


def refuse_undecodable_hello(raw: Mapping[str, Any]) -> Refusal:
    """The refusal for a hello or session hello that failed to decode.

    A timestamp that is present but not an integer is a ``timestamp_skew``
    (as the real broker treats it); anything else (a missing or mistyped
    field, a ``parentAttestation`` that is not a well-typed object) is
    ``malformed``.
    """
    session = raw.get("type") == "session_hello"
    timestamp = raw.get("timestamp")
    if timestamp is not None and (type(timestamp) is not int):
        return SESSION_TIMESTAMP_SKEW if session else TIMESTAMP_SKEW
    return SESSION_MALFORMED if session else MALFORMED


def unauthorized() -> Refusal:
    return Refusal("unauthorized", "pubkey not found in mesh")


def revoked(mesh_id: str) -> Refusal:
    return Refusal(
        "revoked",
        f'You\'ve been removed from "{mesh_id}". Contact the mesh owner to rejoin.',
        BANNED,
        "banned",
    )


def parent_member_id_mismatch() -> Refusal:
    return Refusal("parent_member_id_mismatch", "parentMemberId does not match parentMemberPubkey")


def session_key_taken() -> Refusal:
    return Refusal(
        "bad_session_pubkey", "sessionPubkey is already in use by another member of this mesh"
    )


def capacity(limit: int) -> Refusal:
    return Refusal("capacity", f"hello rejected: capacity (mesh is at its limit of {limit})")
