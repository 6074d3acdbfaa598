"""The reference broker: a sans-IO state machine for every socket of every mesh.

Theory of operation
===================

``Broker`` is the whole broker of docs/protocol.md, minus the sockets. The adapter
gives every socket an integer ``conn_id`` and reports what happens on it; the
broker answers with :data:`BrokerOutput` values (write text, ping, close) and
the absolute time at which it wants ``handle_timer``. It performs no I/O and
reads no clock: every input carries ``now``, the **Unix wall-clock time in
seconds** (the broker stamps ``createdAt``, checks the hello's ±60 s skew and
expires stored messages with it, and a persistent store must make sense
after a restart). Ids come from the injected ``random.Random``.

Inputs: ``connection_opened``, ``receive_text``, ``receive_binary``,
``receive_ping``, ``receive_pong``, ``connection_closed``, ``handle_timer``
(and ``shutdown``). Outputs: ``drain_outputs()`` and ``next_deadline()``.

The broker is built from parts over one state (:mod:`meshproto._broker_base`):
how a socket becomes a peer, with its hellos, presences and session keys
(:mod:`meshproto._broker_hello`); what happens to a ``send`` (routing, the
store, delivery and acknowledgements: :mod:`meshproto._broker_messages`);
and what peers learn of each other (statuses, the peer list, system pushes:
:mod:`meshproto._broker_peers`). Each module's docstring is that part of the
theory of operation. This module takes the inputs and dispatches them.

Liveness
--------

Every socket is pinged every ``ping_interval`` from the moment it opens,
on whole seconds **[reference broker]**: each ping is due ``ping_interval``
after the last, rounded down to a whole second, so that the sockets due in
the same second are pinged by one timer (a broker of thousands of idle
sockets wakes once a second, not once per socket). A socket is
closed with 1001 ``liveness timeout`` after ``liveness_timeout`` seconds in
which nothing (text, binary, ping or pong) arrived. A socket that has no
accepted hello ``hello_timeout`` seconds after it opened is closed with 1008
``hello timeout`` **[ours]**, however alive it is: answering pings, or
sending frames that are each answered ``no_hello``, does not hold it off. A
refused hello closes the socket at once; an accepted one cancels the hello
timeout. (When both are due at once, the liveness timeout wins.) A text
message over ``hard_frame_cap`` bytes closes the socket with 1009.

Invariants
----------

* No input raises for anything a peer can send; garbage gets
  ``error{malformed}`` (echoing a string ``id``) and the socket stays open.
  Misuse by the adapter (opening a ``conn_id`` twice) raises
  :class:`LocalProtocolError` before any state changes.
* Every ``send`` on an open socket is answered exactly once, by an ``ack``
  or an ``error`` with its ``id``.
* Outputs address only sockets that are open at the time they are produced;
  after :class:`CloseConnection` the socket is forgotten.
* After ``handle_timer(now)``, ``next_deadline()`` is ``None`` or ``> now``.
* Whatever must survive a restart (stored messages, dedupe records, members'
  last-seen times) is written through the store before the frame that
  depends on it is produced; presence is memory only.
"""

from __future__ import annotations

import heapq
import json
import logging
from typing import Any

from ._admission import (
    refuse_undecodable_hello,
)
from ._broker_base import (
    _T_CONN,
    _T_GRACE,
    _T_PRESENCE,
    NO_PEER_TEXT,
    SUMMARY_LIMIT,
    _BrokerBase,
    logger,
)
from ._broker_hello import _Hellos
from ._broker_messages import _Messages
from ._broker_options import BrokerOptions
from ._broker_outputs import (
    BrokerOutput,
    without_connection,
)
from ._broker_peers import _Peers
from ._brokerwire import (
    iso_ms,
)
from ._codec import decode, is_unicode_text
from ._errors import LocalProtocolError, RemoteProtocolError
from ._frames import (
    ClientAck,
    Frame,
    Hello,
    ListPeers,
    Peer,
    Send,
    SessionHello,
    SetStatus,
    SetSummary,
    UnknownFrame,
)
from ._presence import Conn

__all__ = [
    "NO_PEER_TEXT",
    "SUMMARY_LIMIT",
    "Broker",
    "BrokerOptions",
]


def _raw_object(text: str) -> dict[str, Any] | None:
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return obj if type(obj) is dict else None


class Broker(_Hellos, _Messages, _Peers, _BrokerBase):
    """The reference broker. See the module docstring."""

    @property
    def connection_count(self) -> int:
        """Open sockets, helloed or not."""
        return len(self._conns)

    @property
    def presence_count(self) -> int:
        """Presences in every mesh, live or inside their grace window."""
        return len(self._presences)

    @property
    def claimed_count(self) -> int:
        """Stored direct messages pushed to a live socket and not acknowledged yet."""
        claimed: set[str] = set()
        for conn in self._conns.values():
            claimed |= conn.claimed
        return len(claimed)

    def is_open(self, conn_id: int) -> bool:
        """Whether the broker still knows socket ``conn_id``."""
        return conn_id in self._conns

    def is_helloed(self, conn_id: int) -> bool:
        """Whether socket ``conn_id`` is open and its hello was accepted."""
        conn = self._conns.get(conn_id)
        return conn is not None and conn.presence is not None

    def presence_id(self, conn_id: int) -> str | None:
        """The ``presenceId`` socket ``conn_id`` is attached to, if any."""
        conn = self._conns.get(conn_id)
        return None if conn is None or conn.presence is None else conn.presence.presence_id

    def peers(self, mesh_id: str) -> tuple[Peer, ...]:
        """What ``list_peers`` would answer in ``mesh_id`` right now."""
        return tuple(
            Peer(
                pubkey=p.pubkey,
                member_pubkey=p.member_pubkey,
                display_name=p.display_name,
                status=p.status,
                summary=p.summary,
                groups=p.groups,
                session_id=p.session_id,
                connected_at=iso_ms(p.connected_at),
                cwd=p.cwd,
                peer_role="session",
                visible=True,
                hostname=p.hostname,
                peer_type=p.peer_type,
                online=p.conn is not None,
            )
            for p in self._presences.in_mesh(mesh_id)
        )

    def drain_outputs(self) -> list[BrokerOutput]:
        """The outputs produced so far, in order; the list is handed over."""
        outputs, self._outputs = self._outputs, []
        return outputs

    def next_deadline(self) -> float | None:
        """When ``handle_timer`` should next run, or ``None`` if nothing is timed."""
        timers = self._timers
        while timers and self._is_stale(timers[0]):
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    def connection_opened(self, conn_id: int, *, now: float) -> None:
        """A socket was accepted (and upgraded); it must say hello first."""
        if conn_id in self._conns:
            raise LocalProtocolError(f"connection {conn_id} is already open")
        options = self.options
        conn = Conn(conn_id, now, options.ping_interval, options.hello_timeout)
        self._conns[conn_id] = conn
        self._schedule_conn(conn)

    def receive_text(self, conn_id: int, text: str, *, now: float) -> None:
        """A text message arrived on socket ``conn_id``."""
        conn = self._conns.get(conn_id)
        if conn is None:
            return
        self._alive(conn, now)
        cap = self.options.hard_frame_cap
        size = len(text)
        if size * 4 > cap and (size > cap or len(text.encode("utf-8", "surrogatepass")) > cap):
            self._close(conn, 1009, f"frame too large (over {cap} bytes)", now)
            return
        try:
            frame = decode(text)
        except RemoteProtocolError as exc:
            self._on_undecodable(conn, text, exc, now)
            return
        self._dispatch(conn, frame, now)

    def receive_binary(self, conn_id: int, data: bytes, *, now: float) -> None:
        """A binary message arrived: answered with ``error{malformed}``; the socket stays open."""
        conn = self._conns.get(conn_id)
        if conn is None:
            return
        self._alive(conn, now)
        self._error(
            conn,
            "malformed",
            f"binary message of {len(data)} bytes: the protocol allows only text messages",
        )

    def receive_ping(self, conn_id: int, *, now: float) -> None:
        """A WebSocket ping arrived (the adapter answers it); it counts as life."""
        conn = self._conns.get(conn_id)
        if conn is not None:
            self._alive(conn, now)

    def receive_pong(self, conn_id: int, *, now: float) -> None:
        """A WebSocket pong arrived; it counts as life, and answers a push window's probe."""
        conn = self._conns.get(conn_id)
        if conn is not None:
            self._alive(conn, now)
            self._on_probe_answered(conn, now)

    def connection_closed(self, conn_id: int, *, now: float) -> None:
        """Socket ``conn_id`` is gone (closed by either side, or dropped)."""
        conn = self._conns.pop(conn_id, None)
        if conn is None:
            return
        if self._outputs:
            self._outputs = without_connection(self._outputs, conn_id)
        self._detach(conn, now)

    def handle_timer(self, now: float) -> None:
        """Run everything that is due at or before ``now``."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            _when, _seq, kind, key, token = heapq.heappop(timers)
            if kind == _T_CONN:
                conn = self._conns.get(key)
                if conn is not None and conn.timer_token == token:
                    self._conn_timer(conn, now)
            elif kind == _T_GRACE:
                presence = self._presences.get(key)
                if presence is not None and presence.conn is None and presence.grace_token == token:
                    self._drop_presence(presence, now)
            elif kind == _T_PRESENCE:
                batch = self._batches.get(key)
                if batch is not None and batch.timer_at == _when:
                    if batch.until <= now:
                        self._flush_batch(key, now)
                    else:  # events moved the end of the window: wait for it
                        batch.timer_at = batch.until
                        self._push_timer(batch.until, _T_PRESENCE, key, 0)
            elif self._expiry_at is not None and self._expiry_at <= now:
                self._expiry_at = None
                expired = self.store.expire(now)
                if expired and logger.isEnabledFor(logging.DEBUG):
                    logger.debug("%d stored messages expired", expired)
                self._schedule_expiry(self.store.next_expiry(), now)

    def shutdown(self, *, now: float) -> None:
        """Close every socket with 1001 (the broker is going away)."""
        for conn in list(self._conns.values()):
            self._close(conn, 1001, "broker shutting down", now)

    def _dispatch(self, conn: Conn, frame: Frame, now: float) -> None:
        kind = type(frame)
        presence = conn.presence
        if kind is Hello or kind is SessionHello:
            if presence is not None:
                self._error(
                    conn,
                    "already_helloed",
                    "this socket has already said hello; the second hello is ignored",
                )
            elif isinstance(frame, Hello):
                self._on_hello(conn, frame, now)
            else:
                assert isinstance(frame, SessionHello)
                self._on_session_hello(conn, frame, now)
            return
        if presence is None:
            self._error(conn, "no_hello", "must send hello first", _frame_id(frame))
            return
        if kind is Send:
            assert isinstance(frame, Send)
            self._on_send(conn, presence, frame, now)
        elif kind is ClientAck:
            assert isinstance(frame, ClientAck)
            self._on_client_ack(presence, frame)
        elif kind is SetStatus:
            assert isinstance(frame, SetStatus)
            self._on_set_status(conn, presence, frame.status, now)
        elif kind is SetSummary:
            assert isinstance(frame, SetSummary)
            if len(frame.summary) > SUMMARY_LIMIT:
                self._error(
                    conn,
                    "malformed",
                    f"set_summary: a summary is at most {SUMMARY_LIMIT} characters, "
                    f"got {len(frame.summary)}",
                )
            else:
                presence.summary = frame.summary
        elif kind is ListPeers:
            assert isinstance(frame, ListPeers)
            self._on_list_peers(conn, presence, frame.req_id)
        # Anything else (unknown types, frames only a broker sends) is ignored.

    def _on_undecodable(self, conn: Conn, text: str, exc: RemoteProtocolError, now: float) -> None:
        raw = _raw_object(text)
        frame_type = raw.get("type") if raw is not None else None
        if frame_type in ("hello", "session_hello") and raw is not None:
            if conn.presence is not None:
                self._error(
                    conn,
                    "already_helloed",
                    "this socket has already said hello; the second hello is ignored",
                )
            else:
                self._refuse(conn, refuse_undecodable_hello(raw), now)
            return
        frame_id = raw.get("id") if raw is not None else None
        if type(frame_id) is not str or not is_unicode_text(frame_id):
            frame_id = None  # only a clean string id is echoed
        self._error(conn, "malformed", str(exc), frame_id)


def _frame_id(frame: Frame) -> str | None:
    """The ``id`` of a frame that has one (to echo in an error)."""
    if isinstance(frame, Send):
        return frame.id
    if isinstance(frame, UnknownFrame):
        value = frame.fields.get("id")
        return value if type(value) is str else None
    return None
