"""Reconnect backoff: capped exponential steps, with or without full jitter.

The caps are 1, 2, 4, 8, 16 and then 30 s for every further attempt
(docs/protocol.md §7). With full jitter the delay is ``uniform(0, cap)`` drawn from
the injected ``random.Random``; the "seed" policy uses the cap itself, as the
original TypeScript client did. The attempt count is the caller's: the client
resets it only after a ``hello_ack``.
"""

from __future__ import annotations

from dataclasses import dataclass
from random import Random

from ._errors import LocalProtocolError

__all__ = ["BACKOFF_CAPS", "Backoff"]

BACKOFF_CAPS: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long to wait before reconnect attempt number ``attempt`` (from 0)."""

    caps: tuple[float, ...] = BACKOFF_CAPS
    jitter: bool = True

    def __post_init__(self) -> None:
        if not self.caps or any(not (c >= 0) for c in self.caps):
            raise LocalProtocolError(
                "backoff caps must be a non-empty tuple of non-negative seconds"
            )

    @classmethod
    def seed(cls) -> Backoff:
        """The no-jitter policy: wait exactly the cap."""
        return cls(jitter=False)

    def cap(self, attempt: int) -> float:
        return self.caps[min(attempt, len(self.caps) - 1)]

    def delay(self, attempt: int, rng: Random) -> float:
        cap = self.cap(attempt)
        return rng.uniform(0.0, cap) if self.jitter else cap
