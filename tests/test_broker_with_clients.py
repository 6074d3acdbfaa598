"""The client core and the broker core wired together in memory: no sockets at all.

``Wire`` plays both adapters: it carries the clients' actions to the broker
(``OpenTransport`` opens a broker connection, ``WriteFrame`` becomes
``receive_text``, ``CloseTransport`` ``connection_closed``) and the broker's
outputs back (``SendText`` becomes ``receive_text``, ``CloseConnection``
``transport_closed``), answering pings on both sides, until nothing moves.
Time is moved by hand; both machines' timers run as adapters would run them.
"""

from __future__ import annotations

from random import Random

from meshproto import (
    Broker,
    ClientConfig,
    ClientConnection,
    CloseConnection,
    CloseTransport,
    ConnectionState,
    Event,
    HandshakeComplete,
    Member,
    MessageReceived,
    OpenTransport,
    PingConnection,
    SendAcked,
    SendPing,
    SendText,
    StaticRegistry,
    WriteFrame,
)
from meshproto.testing import FakeSigner

MESH = "mesh-wire"
URL = "ws://broker.test:7900/ws"
T0 = 1_800_000_000.0
SIGNERS = {name: FakeSigner(f"wire-{name}") for name in ("alice", "bob", "carol")}


class FakeSignatureVerifier:
    """Checks FakeSigner signatures, so the hello really is verified."""

    def verify(self, pubkey_hex: str, message: bytes, signature_hex: str) -> bool:
        return any(
            s.public_key == pubkey_hex and s.sign(message).hex() == signature_hex
            for s in SIGNERS.values()
        )


class Wire:
    def __init__(self) -> None:
        self.now = T0
        registry = StaticRegistry(
            Member(MESH, f"id-{name}", s.public_key, name) for name, s in SIGNERS.items()
        )
        self.broker = Broker(registry, verifier=FakeSignatureVerifier(), rng=Random(5))
        self.clients: dict[str, ClientConnection] = {}
        self.events: dict[str, list[Event]] = {}
        self._conn_of: dict[str, int] = {}  # client name -> broker conn_id
        self._transport_of: dict[int, tuple[str, int]] = {}  # conn_id -> (client, transport)
        self._next_conn = 100

    def client(self, name: str) -> ClientConnection:
        config = ClientConfig(
            url=URL,
            mesh_id=MESH,
            member_id=f"id-{name}",
            signer=SIGNERS[name],
            session_id=f"session-{name}",
        )
        client = ClientConnection(config, rng=Random(name))
        self.clients[name] = client
        self.events[name] = []
        client.connect(self.now)
        self.pump()
        return client

    def drop_link(self, name: str) -> None:
        """The network loses the link: both sides see it closed, nothing more is delivered."""
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
                for action in client.drain_actions():
                    moved = True
                    self._client_action(name, client, action)
                self.events[name] += client.drain_events()
            if to_broker_only is not None:
                return
            for out in self.broker.drain_outputs():
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
            self.clients[name].receive_text(out.text, now=now)
        elif isinstance(out, PingConnection):
            name, _ = self._transport_of[out.conn_id]
            self.clients[name].receive_ping(now=now)
            self.broker.receive_pong(out.conn_id, now=now)
        elif isinstance(out, CloseConnection):
            name, transport = self._transport_of.pop(out.conn_id)
            self._conn_of.pop(name, None)
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


def test_send_push_and_ack_round_trip_between_two_clients() -> None:
    wire = Wire()
    alice, bob = wire.client("alice"), wire.client("bob")
    assert alice.state is ConnectionState.OPEN and bob.state is ConnectionState.OPEN
    assert wire.of("alice", HandshakeComplete) and wire.of("bob", HandshakeComplete)

    handle = alice.send(SIGNERS["bob"].public_key, "hello bob", "now", now=wire.now)
    wire.pump()

    (acked,) = wire.of("alice", SendAcked)
    assert isinstance(acked, SendAcked) and acked.send_id == handle.id
    (received,) = wire.of("bob", MessageReceived)
    assert isinstance(received, MessageReceived)
    assert received.body == b"hello bob"
    assert received.message_id == acked.message_id
    assert received.client_message_id == handle.client_message_id
    assert received.sender_pubkey == SIGNERS["alice"].public_key
    # Bob's client_ack reached the broker: nothing stored, nothing to re-push.
    assert wire.broker.store.count_for(MESH, SIGNERS["bob"].public_key) == 0
    assert wire.broker.claimed_count == 0
    wire.advance(120)
    assert len(wire.of("bob", MessageReceived)) == 1
    assert alice.state is ConnectionState.OPEN and bob.state is ConnectionState.OPEN


def test_broadcast_reaches_every_other_client() -> None:
    wire = Wire()
    alice, _bob, _carol = wire.client("alice"), wire.client("bob"), wire.client("carol")
    alice.send("*", "all hands", now=wire.now)
    wire.pump()
    assert len(wire.of("alice", SendAcked)) == 1
    for name in ("bob", "carol"):
        (got,) = wire.of(name, MessageReceived)
        assert isinstance(got, MessageReceived) and got.body == b"all hands"
    assert wire.of("alice", MessageReceived) == []


def test_message_to_an_offline_client_arrives_when_it_connects() -> None:
    wire = Wire()
    alice = wire.client("alice")
    alice.send(SIGNERS["carol"].public_key, "later", now=wire.now)
    wire.pump()
    assert len(wire.of("alice", SendAcked)) == 1
    wire.advance(10)
    wire.client("carol")
    (got,) = wire.of("carol", MessageReceived)
    assert isinstance(got, MessageReceived) and got.body == b"later"


def test_send_whose_ack_was_lost_is_resent_and_delivered_once() -> None:
    wire = Wire()
    alice, _bob = wire.client("alice"), wire.client("bob")
    alice.send(SIGNERS["bob"].public_key, "exactly once please", "now", now=wire.now)
    wire.pump(to_broker_only="alice")  # the broker took it; its ack is still queued
    wire.drop_link("alice")  # ... and is lost with the link
    wire.advance(60)  # the client reconnects and re-sends with the same client_message_id
    assert alice.state is ConnectionState.OPEN
    (acked,) = wire.of("alice", SendAcked)
    received = wire.of("bob", MessageReceived)
    assert len(received) == 1
    assert isinstance(acked, SendAcked) and isinstance(received[0], MessageReceived)
    assert received[0].message_id == acked.message_id
