"""Why a send or a request failed, and whether trying again can help.

Broker rejections arrive as free text (``ack{queued:false, error}``) or as an
``error`` frame with a code; docs/protocol.md §4.1 lists the texts the real broker
sends. :func:`classify_ack_error` and :func:`classify_error_frame` map them to
a :class:`FailureReason` with a stable ``code``; the original text is kept in
``detail``. Local reasons (``queue_full``, ``ack_timeout`` ...) are constants.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ACK_TIMEOUT",
    "BLOCKED",
    "CLOSED",
    "CONNECTION_LOST",
    "FailureReason",
    "NO_PEER",
    "PAYLOAD_TOO_LARGE",
    "QUEUE_FULL",
    "RATE_LIMITED",
    "REFUSED",
    "REJECTED",
    "STORE_FULL",
    "TIMEOUT",
    "classify_ack_error",
    "classify_error_frame",
]

QUEUE_FULL = "queue_full"
CLOSED = "closed"
REFUSED = "refused"
ACK_TIMEOUT = "ack_timeout"
TIMEOUT = "timeout"
CONNECTION_LOST = "connection_lost"
RATE_LIMITED = "rate_limited"
PAYLOAD_TOO_LARGE = "payload_too_large"
NO_PEER = "no_peer"
BLOCKED = "blocked"
STORE_FULL = "store_full"
REJECTED = "rejected"

_RETRYABLE = frozenset(
    {QUEUE_FULL, ACK_TIMEOUT, TIMEOUT, CONNECTION_LOST, RATE_LIMITED, STORE_FULL}
)


@dataclass(frozen=True, slots=True)
class FailureReason:
    """A failure: a stable ``code``, whether a retry can help, and the broker's words."""

    code: str
    retryable: bool
    detail: str = ""

    @classmethod
    def of(cls, code: str, detail: str = "") -> FailureReason:
        return cls(code, code in _RETRYABLE, detail)

    def __str__(self) -> str:
        kind = "retryable" if self.retryable else "permanent"
        return f"{self.code} ({kind}): {self.detail}" if self.detail else f"{self.code} ({kind})"


# Prefixes of the texts the real broker puts in ack.error (docs/protocol.md §4.1).
_ACK_PREFIXES = (
    ("rate_limit", RATE_LIMITED),
    ("payload too large", PAYLOAD_TOO_LARGE),
    ("no connected peer", NO_PEER),
    ("blocked by recipient", BLOCKED),
    ("store full", STORE_FULL),  # the reference broker's per-recipient bound
)


def classify_ack_error(text: str) -> FailureReason:
    """Classify the ``error`` text of an ``ack{queued:false}``."""
    lowered = text.lower()
    for prefix, code in _ACK_PREFIXES:
        if lowered.startswith(prefix):
            return FailureReason.of(code, text)
    return FailureReason.of(REJECTED, text)


def classify_error_frame(code: str, message: str) -> FailureReason:
    """Classify an ``error{code, message, id}`` that answers a send or a request."""
    detail = f"{code}: {message}" if message else code
    lowered = code.lower()
    if lowered.startswith("rate_limit"):
        return FailureReason.of(RATE_LIMITED, detail)
    if lowered in ("payload_too_large", "too_large"):
        return FailureReason.of(PAYLOAD_TOO_LARGE, detail)
    return FailureReason.of(REJECTED, detail)
