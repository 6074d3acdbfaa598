"""The client core and the broker core wired together in memory: no sockets at all.

``Wire`` plays both adapters: it carries the clients' actions to the broker
(``OpenTransport`` opens a broker connection, ``WriteFrame`` becomes
``receive_text``, ``CloseTransport`` ``connection_closed``) and the broker's
outputs back (``SendText`` becomes ``receive_text``, ``CloseConnection``
``transport_closed``), answering pings on both sides, until nothing moves.
Time (the Unix wall clock, in seconds, as the broker wants it) is moved by
hand; both machines' timers run as adapters would run them. A client's
hello is signed at ``round(now * 1000)``. Each client's application is an
eager reader (unless ``eager=False``): it takes every message from the inbox
as soon as it arrives (kept in ``taken``), so its ``client_ack`` follows.
Like a real adapter, the wire stops reading for a client whose
``reading_paused`` is true: what the broker wrote to it waits in the wire
(``backlog``) until the client has room again.
"""

from __future__ import annotations

from collections import deque
from random import Random

from meshproto import (
    Broker,
    ClientConfig,
    ClientConnection,
    CloseConnection,
    CloseTransport,
    Event,
    MessageReceived,
    OpenTransport,
    PingConnection,
    SendPing,
    SendText,
    UnreadableMessage,
    WriteFrame,
    expand_outputs,
)

Message = MessageReceived | UnreadableMessage

__all__ = ["T0", "Wire"]

#: A wall-clock time (Unix seconds) to start the tests at.
T0 = 1_800_000_000.0


class Wire:
    """One broker and the named clients connected to it."""

    def __init__(self, broker: Broker, *, now: float = T0, eager: bool = True) -> None:
        self.now = now
        self.broker = broker
        self.eager = eager
        self.clients: dict[str, ClientConnection] = {}
        self.events: dict[str, list[Event]] = {}
        self.taken: dict[str, list[Message]] = {}
        #: Frames the broker wrote to a client that is not reading (TCP's buffers).
        self.backlog: dict[str, deque[str]] = {}
        self._conn_of: dict[str, int] = {}  # client name -> broker conn_id
        self._transport_of: dict[int, tuple[str, int]] = {}  # conn_id -> (client, transport)
        self._next_conn = 100

    def connect(self, name: str, config: ClientConfig) -> ClientConnection:
        """A new client called ``name``, connected and pumped until nothing moves."""
        client = ClientConnection(config, rng=Random(name))
        self.clients[name] = client
        self.events[name] = []
        self.taken[name] = []
        self.backlog[name] = deque()
        client.connect(self.now)
        self.pump()
        return client

    def drop_link(self, name: str) -> None:
        """The network loses the link: both sides see it closed, nothing more is delivered."""
        self.backlog[name].clear()
        conn = self._conn_of.pop(name)
        _, transport = self._transport_of.pop(conn)
        self.broker.connection_closed(conn, now=self.now)
        self.clients[name].transport_closed(transport, now=self.now, code=None)
        self.pump()

    def pump(self, *, to_broker_only: str | None = None) -> None:
        """Carry frames both ways until nothing moves.

        ``to_broker_only``: that client's writes reach the broker, but nothing
        the broker writes is delivered yet (it stays queued in the broker).
        """
        moved = True
        while moved:
            moved = False
            for name, client in self.clients.items():
                if self.eager:
                    self.taken[name] += client.take_messages()
                backlog = self.backlog[name]
                while backlog and not client.reading_paused:
                    moved = True
                    client.receive_text(backlog.popleft(), now=self.now)
                for action in client.drain_actions():
                    moved = True
                    self._client_action(name, client, action)
                self.events[name] += client.drain_events()
            if to_broker_only is not None:
                return
            for out in expand_outputs(self.broker.drain_outputs()):
                moved = True
                self._broker_output(out)

    def _client_action(self, name: str, client: ClientConnection, action: object) -> None:
        broker, now = self.broker, self.now
        if isinstance(action, OpenTransport):
            conn = self._next_conn
            self._next_conn += 1
            self._conn_of[name] = conn
            self._transport_of[conn] = (name, action.transport_id)
            broker.connection_opened(conn, now=now)
            client.transport_opened(action.transport_id, now=now, wall_time_ms=round(now * 1000))
        elif isinstance(action, WriteFrame):
            broker.receive_text(self._conn_of[name], action.text, now=now)
        elif isinstance(action, SendPing):
            broker.receive_ping(self._conn_of[name], now=now)
            client.receive_pong(now=now)
        elif isinstance(action, CloseTransport) and name in self._conn_of:
            conn = self._conn_of.pop(name)
            self._transport_of.pop(conn, None)
            broker.connection_closed(conn, now=now)

    def _broker_output(self, out: object) -> None:
        now = self.now
        if isinstance(out, SendText):
            name, _ = self._transport_of[out.conn_id]
            client = self.clients[name]
            if client.reading_paused or self.backlog[name]:
                self.backlog[name].append(out.text)  # not read yet
            else:
                client.receive_text(out.text, now=now)
        elif isinstance(out, PingConnection):
            name, _ = self._transport_of[out.conn_id]
            self.clients[name].receive_ping(now=now)
            self.broker.receive_pong(out.conn_id, now=now)
        elif isinstance(out, CloseConnection):
            name, transport = self._transport_of.pop(out.conn_id)
            self._conn_of.pop(name, None)
            self.backlog[name].clear()
            self.clients[name].transport_closed(
                transport, now=now, code=out.code, reason=out.reason
            )

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while True:
            deadlines = [
                d
                for d in (
                    self.broker.next_deadline(),
                    *(c.next_deadline() for c in self.clients.values()),
                )
                if d is not None and d <= end
            ]
            if not deadlines:
                break
            self.now = max(self.now, min(deadlines))
            self.broker.handle_timer(self.now)
            for client in self.clients.values():
                client.handle_timer(self.now)
            self.pump()
        self.now = end

    def of(self, name: str, kind: type[Event]) -> list[Event]:
        return [e for e in self.events[name] if isinstance(e, kind)]
