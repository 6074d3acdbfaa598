"""The reference broker's limits and timers."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ._errors import LocalProtocolError

__all__ = ["BrokerOptions"]


@dataclass(frozen=True, slots=True)
class BrokerOptions:
    """Limits and timers (seconds). The defaults are docs/protocol.md §7's.

    ``hello_timeout`` (how long a socket may stay open without an accepted
    hello) is ours: the protocol names no such limit. So are
    ``presence_batch`` (the batch window of system pushes, which stays open
    while they keep coming, up to eight windows; see
    ``meshproto._broker_peers``), ``presence_batch_chars`` (a batch whose
    texts reach this many characters goes out at once: what one socket may
    be handed at a time, so keep it under the adapter's send buffer,
    ``meshproto_anyio.ServerOptions.max_send_buffer``, 4 MiB by default) and
    ``push_window`` (the bytes of stored
    messages pushed to one socket and not yet known to be read, above which
    the rest wait for the pong to a ping; see ``meshproto._broker_messages``).
    """

    max_connections_per_mesh: int = 1000
    ping_interval: float = 30.0
    liveness_timeout: float = 75.0
    grace: float = 90.0
    store_ttl: float = 7 * 24 * 3600.0
    store_limit_per_member: int = 1000
    rate_burst: int = 10
    rate_per_minute: float = 60.0
    max_payload: int = 65_536
    hard_frame_cap: int = 1_048_576
    skew: float = 60.0
    dedupe_ttl: float = 24 * 3600.0
    dedupe_limit_per_member: int = 10_000
    hello_timeout: float = 10.0
    presence_batch: float = 0.05
    presence_batch_chars: int = 2 * 1_048_576
    push_window: int = 1_048_576

    def __post_init__(self) -> None:
        for name in (
            "ping_interval",
            "liveness_timeout",
            "hello_timeout",
            "grace",
            "store_ttl",
            "rate_per_minute",
            "skew",
            "dedupe_ttl",
        ):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise LocalProtocolError(f"{name} must be a positive number, got {value!r}")
        for name in (
            "max_connections_per_mesh",
            "store_limit_per_member",
            "rate_burst",
            "max_payload",
            "hard_frame_cap",
            "dedupe_limit_per_member",
            "presence_batch_chars",
            "push_window",
        ):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise LocalProtocolError(f"{name} must be a positive integer, got {value!r}")
        batch = self.presence_batch
        if not (isinstance(batch, (int, float)) and math.isfinite(batch) and batch >= 0):
            raise LocalProtocolError(f"presence_batch must be >= 0 seconds, got {batch!r}")
