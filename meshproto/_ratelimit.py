"""A token bucket: ``burst`` tokens, refilled continuously at ``per_minute / 60`` a second.

The reference broker keeps one per member (docs/protocol.md §4.1: burst 10, 60 a
minute) and charges it for every ``send`` before any other check. Time is the
caller's; a clock that steps backwards refills nothing.
"""

from __future__ import annotations

__all__ = ["TokenBucket"]


class TokenBucket:
    """See the module docstring. ``take(now)`` spends one token if there is one."""

    __slots__ = ("_per_second", "_stamp", "_tokens", "burst")

    def __init__(self, burst: int, per_minute: float, now: float) -> None:
        self.burst = burst
        self._per_second = per_minute / 60.0
        self._tokens = float(burst)
        self._stamp = now

    def tokens(self, now: float) -> float:
        """How many tokens there are at ``now`` (without spending any)."""
        elapsed = now - self._stamp
        if elapsed > 0:
            return min(float(self.burst), self._tokens + elapsed * self._per_second)
        return self._tokens

    def take(self, now: float) -> bool:
        """Spend one token; ``False`` (and nothing spent) if the bucket is empty."""
        tokens = self.tokens(now)
        self._stamp = max(self._stamp, now)
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return True
        self._tokens = tokens
        return False
