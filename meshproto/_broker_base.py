"""The reference broker's state, and the plumbing every part of it shares.

:class:`~meshproto.Broker` is built from parts, one module each, all over
this one state: the hellos and presences (:mod:`meshproto._broker_hello`),
the messages (:mod:`meshproto._broker_messages`) and what peers learn of
each other (:mod:`meshproto._broker_peers`); the inputs and the theory of
operation are in :mod:`meshproto._broker`. Here: the state itself, the
timers (one heap of ``(when, seq, kind, key, token)``, stale entries skipped),
and the small helpers that produce outputs and close sockets.
"""

from __future__ import annotations

import heapq
import logging
import math
from random import Random
from typing import Any

from ._admission import (
    Refusal,
)
from ._broker_options import BrokerOptions
from ._broker_outputs import (
    BrokerOutput,
    CloseConnection,
    PingConnection,
    SendText,
)
from ._codec import encode
from ._frames import (
    Ack,
    ErrorFrame,
)
from ._presence import Conn, Presence, PresenceTable, ping_due
from ._ratelimit import TokenBucket
from ._registry import AdmittingRegistry, MemberRegistry, Verifier
from ._store import MemoryStore, Store

__all__ = ["NO_PEER_TEXT", "SUMMARY_LIMIT"]

logger = logging.getLogger("meshproto.broker")

_PRIORITIES = frozenset({"now", "next", "low"})
_STATUSES = frozenset({"idle", "working", "dnd"})

#: The longest summary a presence may set, in characters **[reference broker]**.
SUMMARY_LIMIT = 512

#: The real broker's refusal of a direct send it cannot route (docs/protocol.md §4.1).
NO_PEER_TEXT = (
    "no connected peer for target (not online, or targetSpec is your own key "
    "without another session)"
)

# Timer kinds (heap entries are (when, seq, kind, key, token)).
_T_CONN = 0
_T_GRACE = 2
_T_EXPIRY = 3
_T_PRESENCE = 4

_Timer = tuple[float, int, int, Any, int]


class PresenceBatch:
    """A mesh's system pushes inside one batch window (see ``_broker_peers``).

    ``events`` are ``(text, the socket that caused it or None, arrival order)``,
    ``size`` the characters of their texts. The window closes at ``until``,
    which each event moves a window after it (:meth:`extend`), but never
    past ``spans`` windows after ``opened``; ``timer_at`` is when its timer
    runs (and then looks at ``until`` again).
    """

    __slots__ = ("events", "opened", "size", "spans", "timer_at", "until")

    def __init__(self, now: float, window: float, spans: int) -> None:
        self.opened = now
        self.spans = spans
        self.until = self.timer_at = now + window
        self.events: list[tuple[str, int | None, int]] = []
        self.size = 0

    def extend(self, window: float, now: float) -> None:
        """An event at ``now``, in a mesh whose window is now ``window``: wait for quiet."""
        self.until = max(self.until, min(now + window, self.opened + self.spans * window))


class _BrokerBase:
    """The broker's state and the helpers every part uses."""

    def __init__(
        self,
        registry: MemberRegistry,
        *,
        verifier: Verifier,
        store: Store | None = None,
        rng: Random,
        options: BrokerOptions | None = None,
    ) -> None:
        self.registry = registry
        # The registry last asked whether it admits unknown members, and its answer.
        self._admitting: tuple[MemberRegistry, AdmittingRegistry | None] | None = None
        self.verifier = verifier
        self.store: Store = store if store is not None else MemoryStore()
        self.options = options if options is not None else BrokerOptions()
        self._rng = rng
        self._outputs: list[BrokerOutput] = []
        self._conns: dict[int, Conn] = {}
        self._presences = PresenceTable()
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._timers: list[_Timer] = []
        self._seq = 0
        self._expiry_at: float | None = None
        # System pushes waiting for the end of their mesh's batch window.
        self._batches: dict[str, PresenceBatch] = {}
        self._attached = 0  # how many hellos were accepted (each socket's arrival order)
        self._schedule_expiry(self.store.next_expiry(), None)

    def _alive(self, conn: Conn, now: float) -> None:
        conn.last_inbound = max(conn.last_inbound, now)

    def _conn_timer(self, conn: Conn, now: float) -> None:
        options = self.options
        # Same expressions as _schedule_conn, so float rounding cannot loop.
        if now >= conn.last_inbound + options.liveness_timeout:
            self._close(conn, 1001, "liveness timeout", now)
            return
        if conn.hello_deadline is not None and now >= conn.hello_deadline:
            self._close(conn, 1008, "hello timeout", now)
            return
        if now >= conn.next_ping:
            self._outputs.append(PingConnection(conn.conn_id))
            conn.next_ping = ping_due(now, options.ping_interval)
        self._schedule_conn(conn)

    def _schedule_conn(self, conn: Conn) -> None:
        conn.timer_token += 1
        when = min(conn.next_ping, conn.last_inbound + self.options.liveness_timeout)
        if conn.hello_deadline is not None and conn.hello_deadline < when:
            when = conn.hello_deadline
        self._push_timer(when, _T_CONN, conn.conn_id, conn.timer_token)

    def _schedule_expiry(self, when: float | None, now: float | None) -> None:
        if when is None:
            return
        if now is not None and when <= now:  # a store that left an expired message behind
            when = math.nextafter(now, math.inf)
        if self._expiry_at is None or when < self._expiry_at:
            self._expiry_at = when
            self._push_timer(when, _T_EXPIRY, None, 0)

    def _push_timer(self, when: float, kind: int, key: Any, token: int) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (when, self._seq, kind, key, token))

    def _is_stale(self, timer: _Timer) -> bool:
        when, _seq, kind, key, token = timer
        if kind == _T_CONN:
            conn = self._conns.get(key)
            return conn is None or conn.timer_token != token
        if kind == _T_GRACE:
            presence = self._presences.get(key)
            return presence is None or presence.conn is not None or presence.grace_token != token
        if kind == _T_PRESENCE:
            batch = self._batches.get(key)
            return batch is None or batch.timer_at != when
        return self._expiry_at != when

    def _close(self, conn: Conn, code: int, reason: str, now: float) -> None:
        """Close ``conn`` from our side and forget it."""
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("closing connection %d: %d %s", conn.conn_id, code, reason)
        del self._conns[conn.conn_id]
        self._outputs.append(CloseConnection(conn.conn_id, code, reason))
        self._detach(conn, now)

    def _refuse(self, conn: Conn, refusal: Refusal, now: float) -> None:
        self._send(conn, encode(ErrorFrame(refusal.code, refusal.message)))
        self._close(conn, refusal.close_code, refusal.reason, now)

    def _send(self, conn: Conn, text: str) -> None:
        self._outputs.append(SendText(conn.conn_id, text))

    def _error(self, conn: Conn, code: str, message: str, frame_id: str | None = None) -> None:
        self._send(conn, encode(ErrorFrame(code, message, frame_id)))

    def _reject(self, conn: Conn, send_id: str, error: str) -> None:
        self._send(conn, encode(Ack(send_id, "", False, error)))

    # --- what the other parts provide -------------------------------------------------

    def _detach(self, conn: Conn, now: float) -> None:
        raise NotImplementedError

    def _drop_presence(self, presence: Presence, now: float) -> None:
        raise NotImplementedError

    def _drain(self, mesh_id: str, member: str, now: float, *, only: Conn | None = None) -> None:
        raise NotImplementedError

    def _system_push(
        self, mesh_id: str, event: str, data: dict[str, Any], now: float, *, skip: Conn | None
    ) -> None:
        raise NotImplementedError

    def _flush_batch(self, mesh_id: str, now: float) -> None:
        raise NotImplementedError
