"""Which refusals end a client for good (docs/protocol.md §3, §6).

A refused hello or a close with one of these reasons means the client's
identity is wrong, and reconnecting cannot help; the client core enters
CLOSED. Every other close is a reason to reconnect.
"""

from __future__ import annotations

__all__ = ["PERMANENT_REFUSALS", "is_permanent_close"]

#: Refusal codes (error frames or 1008 close reasons) that mean "our identity
#: is wrong": reconnecting cannot help (docs/protocol.md §3, §6).
PERMANENT_REFUSALS = frozenset(
    {
        "unauthorized",
        "bad_signature",
        "malformed",
        "bad_session_pubkey",
        "revoked",
        "expired",
        "ttl_too_long",
        "attestation_mismatch",
        "bad_parent_pubkey",
        "parent_member_id_mismatch",
        "session_key_claimed",  # [reference broker] the key's proven owner took it back
    }
)


def is_permanent_close(code: int | None, reason: str, refusal: str | None = None) -> bool:
    """Whether a close (with the hello refusal that preceded it) stops reconnecting.

    docs/protocol.md §6: ``1000 session_replaced``, ``1008`` with an identity
    refusal, ``4001 kicked`` and ``4002 banned`` are final; everything else
    (1000 otherwise, 1001, 1006, 1009, 1008 ``timestamp_skew``/``capacity``)
    is a reason to reconnect.
    """
    if code in (4001, 4002):
        return True
    if code == 1000:
        return reason == "session_replaced"
    if code == 1008:
        return reason in PERMANENT_REFUSALS or (not reason and refusal in PERMANENT_REFUSALS)
    return False
