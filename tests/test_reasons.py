"""Broker rejection texts map to stable, classified failure reasons."""

from __future__ import annotations

import pytest

from meshproto import classify_ack_error, classify_error_frame


@pytest.mark.parametrize(
    ("text", "code", "retryable"),
    [
        ("rate_limit: max 60 msg/min (burst 10) \u2014 slow down", "rate_limited", True),
        ("payload too large: 70096 bytes > MAX_MESSAGE_BYTES=65536", "payload_too_large", False),
        ("no connected peer for target (not online, or ...)", "no_peer", False),
        ("blocked by recipient grants: nope", "blocked", False),
        ("store full: 1000 undelivered messages are already held", "store_full", True),
        ("something new the broker says", "rejected", False),
    ],
)
def test_ack_error_texts_are_classified(text: str, code: str, retryable: bool) -> None:
    reason = classify_ack_error(text)
    assert (reason.code, reason.retryable, reason.detail) == (code, retryable, text)


def test_error_frame_codes_are_classified_with_their_message() -> None:
    reason = classify_error_frame("malformed", "bad priority")
    assert (reason.code, reason.retryable) == ("rejected", False)
    assert reason.detail == "malformed: bad priority"
    assert classify_error_frame("rate_limit", "").retryable
