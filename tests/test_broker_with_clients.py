"""The client core and the broker core wired together in memory: no sockets at all.

The wiring (``inmemory.Wire``) plays both adapters; here it connects clients
signed by ``FakeSigner``s to a broker that checks those signatures.
"""

from __future__ import annotations

from random import Random

from inmemory import T0
from inmemory import Wire as InMemoryWire

from meshproto import (
    Broker,
    ClientConfig,
    ClientConnection,
    ConnectionState,
    HandshakeComplete,
    Member,
    MessageReceived,
    SendAcked,
    StaticRegistry,
)
from meshproto.testing import FakeSigner

MESH = "mesh-wire"
URL = "ws://broker.test:7900/ws"
SIGNERS = {name: FakeSigner(f"wire-{name}") for name in ("alice", "bob", "carol")}


class FakeSignatureVerifier:
    """Checks FakeSigner signatures, so the hello really is verified."""

    def verify(self, pubkey_hex: str, message: bytes, signature_hex: str) -> bool:
        return any(
            s.public_key == pubkey_hex and s.sign(message).hex() == signature_hex
            for s in SIGNERS.values()
        )


class Wire(InMemoryWire):
    """A broker whose members are the ``SIGNERS``, and their clients by name."""

    def __init__(self) -> None:
        registry = StaticRegistry(
            Member(MESH, f"id-{name}", s.public_key, name) for name, s in SIGNERS.items()
        )
        super().__init__(Broker(registry, verifier=FakeSignatureVerifier(), rng=Random(5)), now=T0)

    def client(self, name: str) -> ClientConnection:
        config = ClientConfig(
            url=URL,
            mesh_id=MESH,
            member_id=f"id-{name}",
            signer=SIGNERS[name],
            session_id=f"session-{name}",
        )
        return self.connect(name, config)


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
