"""The client's delivery rule against both brokers' redelivery rules: nothing lost, nothing stalled.

The client acknowledges a message only once its application has taken it,
and while its inbox is full it stops reading (the broker's frames wait in
TCP). It never leaves a push unacknowledged on a live connection that it
read, so it never needs the broker to push anything again while connected:

* the reference broker pushes an unacknowledged message again only when the
  recipient comes back (a new hello, or a reattach);
* the real claudemesh broker pushes it again only at the recipient's next
  drain (its next hello or reattach, or a new direct message to it), never on
  a timer. That rule is played here by :class:`NextDrainBroker`, an
  in-memory double.

Under either rule a slow application gets every message exactly once, in
order, with no reconnect; and a client that dies with messages still in its
inbox gets them again from its next hello.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from random import Random
from typing import Any

from inmemory import Wire

from meshproto import (
    AcceptingVerifier,
    Broker,
    BrokerOptions,
    ClientConfig,
    ClientConnection,
    ClientOptions,
    MessageReceived,
    OpenTransport,
    StaticRegistry,
    WriteFrame,
)
from meshproto.testing import FakeSigner

MESH = "mesh-redelivery"
URL = "ws://broker.test/ws"
COUNT = 30
SLOW = ClientOptions(inbox_limit=3)


def _config(name: str) -> ClientConfig:
    return ClientConfig(
        url=URL, mesh_id=MESH, member_id=f"id-{name}", signer=FakeSigner(name), session_id=name
    )


# --- the reference broker: redelivery when the recipient comes back ------------------------


def _reference_wire() -> Wire:
    broker = Broker(
        StaticRegistry(open_mesh=MESH),
        verifier=AcceptingVerifier(),
        rng=Random(3),
        options=BrokerOptions(rate_burst=COUNT),
    )
    return Wire(broker, eager=False)


def _take_slowly(wire: Wire, name: str, *, want: int) -> list[str]:
    """The application takes one message per second until it has ``want`` (bounded)."""
    bodies: list[str] = []
    client = wire.clients[name]
    for _ in range(want * 4):
        for message in client.take_messages(1):
            assert isinstance(message, MessageReceived)
            bodies.append(message.text)
        wire.pump()  # the client_ack goes out; reading resumes when there is room
        wire.advance(1.0)
        if len(bodies) == want:
            break
    return bodies


def test_reference_broker_rule_a_slow_reader_gets_everything_once_without_a_reconnect() -> None:
    wire = _reference_wire()
    sender = wire.connect("sender", _config("sender"))
    receiver = ClientConnection(_config("receiver"), rng=Random(1), options=SLOW)
    wire.clients["receiver"] = receiver
    wire.events["receiver"], wire.taken["receiver"], wire.backlog["receiver"] = [], [], deque()
    receiver.connect(wire.now)
    wire.pump()
    for i in range(COUNT):
        sender.send(FakeSigner("receiver").public_key, f"{i:03d}", "now", now=wire.now)
    wire.pump()
    assert receiver.reading_paused  # the inbox is full: the rest waits in the wire

    bodies = _take_slowly(wire, "receiver", want=COUNT)

    assert bodies == [f"{i:03d}" for i in range(COUNT)]
    assert receiver.counters.reconnects == 0
    assert wire.broker.store.count_for(MESH, FakeSigner("receiver").public_key) == 0


def test_reference_broker_rule_a_client_that_dies_unread_gets_them_at_its_next_hello() -> None:
    wire = _reference_wire()
    sender = wire.connect("sender", _config("sender"))
    receiver = wire.connect("receiver", _config("receiver"))
    for i in range(3):
        sender.send(FakeSigner("receiver").public_key, f"{i}", "now", now=wire.now)
    wire.pump()
    assert receiver.inbox_size == 3  # pushed, not taken: not acknowledged

    wire.drop_link("receiver")  # the process dies with its inbox
    reborn = wire.connect("receiver", _config("receiver"))
    assert [m.text for m in reborn.take_messages()] == ["0", "1", "2"]  # type: ignore[union-attr]
    wire.pump()
    assert wire.broker.store.count_for(MESH, FakeSigner("receiver").public_key) == 0


# --- the real broker's rule, as an in-memory double ----------------------------------------


@dataclass
class NextDrainBroker:
    """One recipient's side of the real broker's delivery rule (docs/protocol.md §4.3).

    A new direct message is pushed once to the recipient's live connection.
    An unacknowledged one is pushed again only at the recipient's next drain:
    its next hello, or a new direct message to it; never on a timer.
    """

    unacked: dict[str, str] = field(default_factory=dict)  # messageId -> body
    wire: deque[str] = field(default_factory=deque)  # what the recipient has not read yet
    pushes: int = 0
    seq: int = 0

    def _push(self, message_id: str) -> None:
        self.pushes += 1
        self.wire.append(
            json.dumps(
                {
                    "type": "push",
                    "messageId": message_id,
                    "meshId": MESH,
                    "senderPubkey": "ab" * 32,
                    "priority": "now",
                    "nonce": "",
                    "ciphertext": self.unacked[message_id],
                    "createdAt": "2026-12-01T00:00:00.000Z",
                }
            )
        )

    def drain(self) -> None:
        for message_id in list(self.unacked):
            self._push(message_id)

    def direct_message(self, body_b64: str) -> None:
        self.drain()  # a new direct message is a drain trigger at the real broker
        self.seq += 1
        message_id = f"m{self.seq:04d}"
        self.unacked[message_id] = body_b64
        self._push(message_id)

    def client_frames(self, frames: list[dict[str, Any]]) -> None:
        for frame in frames:
            if frame["type"] == "client_ack":
                self.unacked.pop(frame.get("brokerMessageId", ""), None)


def _b64(text: str) -> str:
    import base64  # noqa: PLC0415

    return base64.b64encode(text.encode()).decode()


def _open(client: ClientConnection, broker: NextDrainBroker, now: float) -> None:
    client.connect(now)
    (opened,) = [a for a in client.drain_actions() if isinstance(a, OpenTransport)]
    client.transport_opened(opened.transport_id, now=now, wall_time_ms=1_800_000_000_000)
    client.drain_actions()
    client.receive_text('{"type": "hello_ack", "presenceId": "p"}', now=now)
    broker.drain()  # the real broker drains on hello


def _exchange(client: ClientConnection, broker: NextDrainBroker, now: float) -> None:
    """Carry frames both ways, reading only while the client is not paused."""
    for _ in range(10_000):
        written = [json.loads(a.text) for a in client.drain_actions() if isinstance(a, WriteFrame)]
        broker.client_frames(written)
        if not broker.wire or client.reading_paused:
            return
        client.receive_text(broker.wire.popleft(), now=now)
    raise AssertionError("the exchange did not settle")


def test_real_broker_rule_a_slow_reader_gets_everything_once_with_no_drain_needed() -> None:
    broker = NextDrainBroker()
    client = ClientConnection(_config("receiver"), rng=Random(2), options=SLOW)
    _open(client, broker, 0.0)
    for i in range(COUNT):  # each new one also re-pushes what is unacknowledged
        broker.direct_message(_b64(f"{i:03d}"))
    bodies: list[str] = []
    now = 0.0
    for _ in range(COUNT * 4):
        _exchange(client, broker, now)
        for message in client.take_messages(1):
            assert isinstance(message, MessageReceived)
            bodies.append(message.text)
        now += 1.0
        client.handle_timer(now)
        if len(bodies) == COUNT:
            break
    _exchange(client, broker, now)

    assert bodies == [f"{i:03d}" for i in range(COUNT)]  # each once, in order
    assert broker.unacked == {}  # every one acknowledged, with no later drain needed
    assert client.counters.duplicate_pushes == broker.pushes - COUNT
    assert client.counters.reconnects == 0


def test_real_broker_rule_a_client_that_dies_unread_gets_them_at_its_next_hello() -> None:
    broker = NextDrainBroker()
    first = ClientConnection(_config("receiver"), rng=Random(2))
    _open(first, broker, 0.0)
    for i in range(3):
        broker.direct_message(_b64(str(i)))
    _exchange(first, broker, 0.0)
    assert first.inbox_size == 3 and len(broker.unacked) == 3  # not taken: not acknowledged

    broker.wire.clear()  # the process dies; the socket with it
    reborn = ClientConnection(_config("receiver"), rng=Random(4))
    _open(reborn, broker, 10.0)  # its hello is the next drain
    _exchange(reborn, broker, 10.0)
    assert [m.text for m in reborn.take_messages()] == ["0", "1", "2"]  # type: ignore[union-attr]
    _exchange(reborn, broker, 10.0)
    assert broker.unacked == {}
