"""Behaviour of ``ClientConnection``, driven by hand: every input carries ``now``.

No sockets and no sleeping: the tests play the broker by feeding text frames,
fire timers with ``handle_timer(now)`` and read what the client wants done from
``drain_actions()`` and ``drain_events()``.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshproto import (
    Action,
    Backoff,
    ClientAck,
    ClientConfig,
    ClientConnection,
    ClientOptions,
    Closed,
    CloseTransport,
    ConnectionState,
    Event,
    Frame,
    Group,
    HandshakeComplete,
    Hello,
    InternalError,
    ListPeers,
    LocalProtocolError,
    MalformedFrame,
    MessageReceived,
    OpenTransport,
    PeersListed,
    ReconnectScheduled,
    RemoteProtocolError,
    RequestFailed,
    Send,
    SendAcked,
    SendFailed,
    SendOutcomeUnknown,
    SendPing,
    SetStatus,
    SetSummary,
    StateChanged,
    SystemMessage,
    UnreadableMessage,
    WriteFrame,
    decode,
)
from meshproto.testing import FakeSigner

# --- the cast ----------------------------------------------------------------

URL = "ws://broker.test:7900/ws"
MESH_ID = "CopKJ4mA3LbRL7ojdCSZTf0LVSsxrYb9"
MEMBER_ID = "UwcrqXknnJD6dVbBAA7wHJ0jBaIO7wi0"
SESSION_ID = "meshproto-test-session"
WALL_MS = 1_795_738_827_449
PEER = "489234a372500bb45e5785cdb1264d8cd3f406e1d9eaf45e95cd3c11fa403131"
SEED_CAPS = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0)

# A hello_ack as the real broker sends it (conformance/real-broker/c_direct_ack_lease).
HELLO_ACK: dict[str, Any] = {
    "type": "hello_ack",
    "presenceId": "bhpa2oo4mFkQZCcek52omRgBXDm6DlLD",
    "memberDisplayName": "peer-a",
    "memberProfile": {"roleTag": None, "groups": [], "messageMode": "push"},
    "meshPolicy": {"selfEditable": {"groups": True, "displayName": True}},
    "restored": True,
    "lastSeenAt": "2026-11-27T00:20:27.421Z",
    "restoredStats": {"errors": 0, "toolCalls": 0, "messagesIn": 0, "messagesOut": 0},
}

RATE_LIMIT_TEXT = "rate_limit: max 60 msg/min (burst 10) \u2014 slow down"
TOO_LARGE_TEXT = "payload too large: 70096 bytes > MAX_MESSAGE_BYTES=65536"
NO_PEER_TEXT = (
    "no connected peer for target (not online, or targetSpec is your own key "
    "without another session)"
)

T = TypeVar("T")


# --- helpers -------------------------------------------------------------------


@dataclass
class Step:
    """Everything the client produced since the last drain."""

    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    def __add__(self, other: Step) -> Step:
        return Step(self.actions + other.actions, self.events + other.events)

    def of(self, cls: type[T]) -> list[T]:
        """The events, or else the actions, of type ``cls``, in order."""
        items: list[Any] = [*self.events, *self.actions]
        return [item for item in items if isinstance(item, cls)]

    def frames(self) -> list[Frame]:
        """The written frames, decoded, in order."""
        return [decode(a.text) for a in self.actions if isinstance(a, WriteFrame)]

    def frames_of(self, cls: type[T]) -> list[T]:
        return [f for f in self.frames() if isinstance(f, cls)]

    def open_transport_id(self) -> int:
        opens = self.of(OpenTransport)
        assert opens, f"expected an OpenTransport action in {self.actions}"
        return opens[-1].transport_id


def step(client: ClientConnection) -> Step:
    return Step(client.drain_actions(), client.drain_events())


def make_client(
    options: ClientOptions | None = None,
    *,
    seed: int = 0,
    rng: random.Random | None = None,
) -> ClientConnection:
    config = ClientConfig(
        url=URL,
        mesh_id=MESH_ID,
        member_id=MEMBER_ID,
        signer=FakeSigner(),
        session_id=SESSION_ID,
    )
    return ClientConnection(
        config, rng=rng if rng is not None else random.Random(seed), options=options
    )


def start(client: ClientConnection, *, now: float = 0.0) -> int:
    """``connect()`` and return the id of the transport it asks for."""
    client.connect(now)
    return step(client).open_transport_id()


def feed(client: ClientConnection, frame: dict[str, Any], *, now: float) -> None:
    client.receive_text(json.dumps(frame), now=now)


def handshake(
    client: ClientConnection, transport_id: int, *, now: float, wall_time_ms: int = WALL_MS
) -> Step:
    """The transport opens and the broker accepts the hello."""
    client.transport_opened(transport_id, now=now, wall_time_ms=wall_time_ms)
    feed(client, HELLO_ACK, now=now)
    return step(client)


def open_client(
    options: ClientOptions | None = None, *, now: float = 0.0, seed: int = 0
) -> tuple[ClientConnection, int]:
    """A client that is OPEN, with everything produced so far drained."""
    client = make_client(options, seed=seed)
    transport_id = start(client, now=now)
    handshake(client, transport_id, now=now)
    assert client.state is ConnectionState.OPEN
    return client, transport_id


def fire_reconnect(client: ClientConnection) -> tuple[float, int, Step]:
    """Fire the pending reconnect timer; return its time, the new transport and the step."""
    assert client.reconnect_pending
    at = client.next_deadline()
    assert at is not None
    client.handle_timer(at)
    s = step(client)
    return at, s.open_transport_id(), s


def reconnect(client: ClientConnection) -> tuple[float, int, Step]:
    """Fire the pending reconnect and complete the handshake on the new transport."""
    at, transport_id, first = fire_reconnect(client)
    return at, transport_id, first + handshake(client, transport_id, now=at)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def push(
    message_id: str,
    body: str | bytes = "hello",
    *,
    client_message_id: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A push as the real broker sends it (broadcast or direct)."""
    data = body.encode() if isinstance(body, str) else body
    frame: dict[str, Any] = {
        "type": "push",
        "messageId": message_id,
        "meshId": MESH_ID,
        "senderPubkey": PEER,
        "priority": "next",
        "nonce": b64(bytes(24)),
        "ciphertext": b64(data),
        "createdAt": "2026-11-27T00:20:21.345Z",
    }
    if client_message_id is not None:
        frame["client_message_id"] = client_message_id
    frame.update(extra)
    return frame


def system_push(message_id: str, event: str = "peer_joined") -> dict[str, Any]:
    return {
        "type": "push",
        "subtype": "system",
        "event": event,
        "eventData": {"name": "peer-b", "pubkey": PEER, "groups": []},
        "messageId": message_id,
        "meshId": MESH_ID,
        "senderPubkey": "system",
        "priority": "low",
        "nonce": "",
        "ciphertext": "",
        "createdAt": "2026-11-27T00:20:21.345Z",
    }


def ack(send_id: str, message_id: str = "GBGfHGIWqaX37ensr3ycd6V7SUaIrM0E") -> dict[str, Any]:
    return {"type": "ack", "id": send_id, "messageId": message_id, "queued": True}


def nack(send_id: str, error: str) -> dict[str, Any]:
    return {"type": "ack", "id": send_id, "messageId": "", "queued": False, "error": error}


def snapshot(client: ClientConnection) -> tuple[object, ...]:
    """Everything observable about a client that a rejected call must leave alone."""
    return (
        client.state,
        client.counters,
        client.pending_sends,
        client.in_flight,
        client.inbox_size,
        client.reconnect_pending,
        client.next_deadline(),
    )


def assert_misuse_changes_nothing(client: ClientConnection, call: Callable[[], object]) -> None:
    step(client)
    before = snapshot(client)
    with pytest.raises(LocalProtocolError):
        call()
    assert step(client) == Step()
    assert snapshot(client) == before


# --- handshake -----------------------------------------------------------------


def test_first_frame_on_a_new_transport_is_a_signed_hello() -> None:
    signer = FakeSigner()
    client = make_client()
    transport_id = start(client, now=0.0)

    client.transport_opened(transport_id, now=0.5, wall_time_ms=WALL_MS)
    frames = step(client).frames()

    assert len(frames) == 1
    hello = frames[0]
    assert isinstance(hello, Hello)
    assert hello.mesh_id == MESH_ID
    assert hello.member_id == MEMBER_ID
    assert hello.pubkey == signer.public_key
    assert hello.session_id == SESSION_ID
    assert hello.timestamp == WALL_MS
    payload = f"{MESH_ID}|{MEMBER_ID}|{signer.public_key}|{WALL_MS}".encode()
    assert hello.signature == signer.sign(payload).hex()
    assert hello.signature is not None and len(hello.signature) == 128


def test_nothing_but_hello_is_written_before_hello_ack() -> None:
    client = make_client()
    client.set_status("working", now=0.0)
    client.send("*", "queued while connecting", now=0.0)
    transport_id = start(client, now=0.0)
    client.list_peers(now=0.0)

    client.transport_opened(transport_id, now=1.0, wall_time_ms=WALL_MS)
    client.send("*", "queued while handshaking", now=1.5)
    client.set_status("dnd", now=1.5)
    client.list_peers(now=1.5)
    client.handle_timer(2.0)
    before_ack = step(client)

    assert [type(f) for f in before_ack.frames()] == [Hello]
    assert before_ack.of(SendPing) == []

    feed(client, HELLO_ACK, now=2.0)
    after_ack = step(client)
    assert len(after_ack.frames_of(Send)) == 2
    assert [f.status for f in after_ack.frames_of(SetStatus)] == ["dnd"]
    assert len(after_ack.frames_of(ListPeers)) == 2


def test_hello_ack_completes_the_handshake() -> None:
    client = make_client()
    transport_id = start(client, now=0.0)
    client.transport_opened(transport_id, now=0.0, wall_time_ms=WALL_MS)
    assert client.state is ConnectionState.HANDSHAKING

    feed(client, HELLO_ACK, now=0.1)
    s = step(client)

    assert client.state is ConnectionState.OPEN
    [complete] = s.of(HandshakeComplete)
    assert complete.ack.presence_id == HELLO_ACK["presenceId"]


def test_no_hello_ack_within_5s_closes_transport_and_schedules_reconnect() -> None:
    client = make_client()
    transport_id = start(client, now=0.0)
    client.transport_opened(transport_id, now=3.0, wall_time_ms=WALL_MS)
    step(client)
    assert client.next_deadline() == pytest.approx(8.0)

    client.handle_timer(7.99)
    assert step(client) == Step()
    assert client.state is ConnectionState.HANDSHAKING

    client.handle_timer(8.0)
    s = step(client)
    assert len(s.of(CloseTransport)) == 1
    assert len(s.of(ReconnectScheduled)) == 1
    assert client.state is ConnectionState.RECONNECTING
    assert client.reconnect_pending


def test_push_before_hello_ack_is_delivered_and_acked_when_taken() -> None:
    client = make_client()
    transport_id = start(client, now=0.0)
    client.transport_opened(transport_id, now=0.0, wall_time_ms=WALL_MS)
    feed(client, push("m-early", "queued for you", client_message_id="c-early"), now=0.1)
    feed(client, HELLO_ACK, now=0.2)
    s = step(client)

    [message] = s.of(MessageReceived)
    assert message.message_id == "m-early"
    assert message.body == b"queued for you"
    assert s.frames_of(ClientAck) == []
    assert client.state is ConnectionState.OPEN

    [taken] = client.take_messages()
    assert taken.message_id == "m-early"
    acks = step(client).frames_of(ClientAck)
    assert [(a.client_message_id, a.broker_message_id) for a in acks] == [("c-early", "m-early")]


def test_transport_opened_twice_writes_one_hello() -> None:
    client = make_client()
    transport_id = start(client, now=0.0)

    client.transport_opened(transport_id, now=0.1, wall_time_ms=WALL_MS)
    client.transport_opened(transport_id, now=0.2, wall_time_ms=WALL_MS + 100)

    assert [type(f) for f in step(client).frames()] == [Hello]


def test_transport_that_does_not_open_in_time_is_abandoned_and_retried() -> None:
    client = make_client()
    transport_id = start(client, now=0.0)
    deadline = client.next_deadline()
    assert deadline is not None

    client.handle_timer(deadline)
    s = step(client)

    assert len(s.of(CloseTransport)) == 1
    assert len(s.of(ReconnectScheduled)) == 1
    assert client.state is ConnectionState.RECONNECTING
    client.transport_opened(transport_id, now=deadline + 0.1, wall_time_ms=WALL_MS)
    assert step(client) == Step()  # the late open of the abandoned transport is ignored


# --- sends -----------------------------------------------------------------------


def test_send_returns_a_handle_at_once() -> None:
    client = make_client()

    handle = client.send(PEER, "hi", "now", now=0.0)

    assert handle.target_spec == PEER
    assert handle.priority == "now"
    assert handle.client_message_id == handle.id
    assert step(client) == Step()  # nothing resolved, nothing written
    assert client.pending_sends == 1


def test_send_while_open_is_written_at_once_with_its_id() -> None:
    client, _ = open_client()

    handle = client.send("@reviewers", "look at this", "low", now=1.0)
    [frame] = step(client).frames_of(Send)

    assert frame.id == handle.id
    assert frame.client_message_id == handle.id
    assert frame.target_spec == "@reviewers"
    assert frame.priority == "low"
    assert base64.b64decode(frame.ciphertext) == b"look at this"
    assert len(base64.b64decode(frame.nonce)) == 24


def test_send_queued_offline_is_written_in_order_after_hello_ack() -> None:
    client = make_client()
    handles = [client.send("*", f"message {i}", now=0.1 * i) for i in range(5)]
    transport_id = start(client, now=1.0)
    client.transport_opened(transport_id, now=1.0, wall_time_ms=WALL_MS)
    assert step(client).frames_of(Send) == []

    feed(client, HELLO_ACK, now=1.1)
    sends = step(client).frames_of(Send)

    assert [f.id for f in sends] == [h.id for h in handles]
    assert [base64.b64decode(f.ciphertext) for f in sends] == [
        f"message {i}".encode() for i in range(5)
    ]


def test_outbox_overflow_fails_the_new_send_with_queue_full_and_drops_nothing_else() -> None:
    client = make_client()
    accepted = [client.send("*", f"m{i}", now=0.0) for i in range(100)]
    assert step(client).of(SendFailed) == []

    overflow = client.send("*", "one too many", now=0.0)
    [failed] = step(client).of(SendFailed)

    assert failed.send_id == overflow.id
    assert failed.reason.code == "queue_full"
    assert failed.reason.retryable
    assert client.pending_sends == 100
    transport_id = start(client, now=1.0)
    sends = handshake(client, transport_id, now=1.0).frames_of(Send)
    assert [f.id for f in sends] == [h.id for h in accepted]


def test_outbox_limit_counts_written_unacked_sends() -> None:
    client, _ = open_client(ClientOptions(max_outbox=3))
    written = [client.send("*", f"m{i}", now=1.0) for i in range(3)]
    assert len(step(client).frames_of(Send)) == 3

    overflow = client.send("*", "no room", now=1.0)
    s = step(client)
    assert [(f.send_id, f.reason.code) for f in s.of(SendFailed)] == [(overflow.id, "queue_full")]
    assert s.frames_of(Send) == []

    feed(client, ack(written[0].id), now=2.0)
    step(client)
    room = client.send("*", "room again", now=2.0)
    s = step(client)
    assert s.of(SendFailed) == []
    assert [f.id for f in s.frames_of(Send)] == [room.id]


def test_ack_timer_starts_when_the_frame_is_written_not_at_send() -> None:
    client = make_client()
    handle = client.send("*", "patient", now=0.0)
    transport_id = start(client, now=0.0)
    client.transport_opened(transport_id, now=7.5, wall_time_ms=WALL_MS)
    feed(client, HELLO_ACK, now=8.0)
    assert len(step(client).frames_of(Send)) == 1
    assert client.next_deadline() == pytest.approx(18.0)

    client.handle_timer(12.0)
    assert step(client).of(SendFailed) == []
    client.handle_timer(17.9)
    assert step(client).of(SendFailed) == []

    client.handle_timer(18.0)
    [unknown] = step(client).of(SendOutcomeUnknown)
    assert unknown.send_id == handle.id
    assert unknown.reason.code == "ack_timeout"
    assert client.pending_sends == 0


def test_ack_queued_resolves_the_send_with_the_broker_message_id() -> None:
    client, _ = open_client()
    handle = client.send(PEER, "hi", now=1.0)
    step(client)

    feed(client, ack(handle.id, "srRza68bXalGJT9Qheafn0dXXOylK7OK"), now=1.2)

    assert step(client).of(SendAcked) == [SendAcked(handle.id, "srRza68bXalGJT9Qheafn0dXXOylK7OK")]
    assert client.pending_sends == 0


def _rejected_by_ack(error: str) -> SendFailed:
    client, _ = open_client()
    handle = client.send(PEER, "hi", now=1.0)
    step(client)
    feed(client, nack(handle.id, error), now=1.2)
    [failed] = step(client).of(SendFailed)
    assert failed.send_id == handle.id
    assert client.pending_sends == 0
    return failed


def test_ack_rate_limit_rejection_is_rate_limited_and_retryable() -> None:
    failed = _rejected_by_ack(RATE_LIMIT_TEXT)
    assert failed.reason.code == "rate_limited"
    assert failed.reason.retryable
    assert failed.reason.detail == RATE_LIMIT_TEXT


def test_ack_payload_too_large_rejection_is_permanent() -> None:
    failed = _rejected_by_ack(TOO_LARGE_TEXT)
    assert failed.reason.code == "payload_too_large"
    assert not failed.reason.retryable


def test_ack_no_connected_peer_rejection_is_no_peer_and_permanent() -> None:
    failed = _rejected_by_ack(NO_PEER_TEXT)
    assert failed.reason.code == "no_peer"
    assert not failed.reason.retryable


def test_error_frame_with_a_send_id_fails_that_send() -> None:
    client, _ = open_client()
    handle = client.send("*", "hi", now=1.0)
    other = client.send("*", "ho", now=1.0)
    step(client)

    feed(
        client,
        {"type": "error", "code": "malformed", "message": "bad send", "id": handle.id},
        now=1.1,
    )
    [failed] = step(client).of(SendFailed)

    assert failed.send_id == handle.id
    assert not failed.reason.retryable
    assert client.pending_sends == 1
    feed(client, ack(other.id), now=1.2)
    assert [e.send_id for e in step(client).of(SendAcked)] == [other.id]


def test_ack_matching_no_send_is_ignored() -> None:
    client, _ = open_client()
    handle = client.send("*", "hi", now=1.0)
    step(client)

    feed(client, ack("0123456789abcdef"), now=1.1)
    feed(client, nack("fedcba9876543210", NO_PEER_TEXT), now=1.1)
    assert step(client).events == []

    feed(client, ack(handle.id), now=1.2)
    feed(client, ack(handle.id), now=1.3)  # a second answer to a resolved send
    assert len(step(client).of(SendAcked)) == 1


# --- link drop with sends in flight -----------------------------------------------


def test_sends_in_flight_are_rewritten_after_reconnect_with_the_same_ids() -> None:
    client, transport_id = open_client()
    handles = [client.send("*", f"m{i}", now=1.0) for i in range(2)]
    first = step(client).frames_of(Send)
    resends_before = client.counters.resends

    client.transport_closed(transport_id, now=2.0, code=None)
    later = client.send("*", "sent while down", now=2.0)
    _, _, s = reconnect(client)
    again = s.frames_of(Send)

    assert [f.id for f in again] == [handles[0].id, handles[1].id, later.id]
    assert [f.client_message_id for f in again[:2]] == [f.client_message_id for f in first]
    assert again[:2] == first
    assert client.counters.resends == resends_before + 2
    assert s.of(SendFailed) == []


def test_sends_in_flight_fail_with_connection_lost_when_resend_is_disabled() -> None:
    client, transport_id = open_client(ClientOptions(resend_in_flight=False))
    handle = client.send("*", "fragile", now=1.0)
    step(client)

    client.transport_closed(transport_id, now=2.0, code=None)
    [unknown] = step(client).of(SendOutcomeUnknown)  # it was written: it may have landed

    assert unknown.send_id == handle.id
    assert unknown.client_message_id == handle.client_message_id
    assert unknown.reason.code == "connection_lost"
    _, _, s = reconnect(client)
    assert s.frames_of(Send) == []
    assert client.counters.resends == 0


def test_a_send_reported_failed_is_never_written_afterwards() -> None:
    client, transport_id = open_client(ClientOptions(max_outbox=2))
    timed_out = client.send("*", "will time out", now=0.0)
    step(client)
    client.handle_timer(10.0)
    assert [e.send_id for e in step(client).of(SendOutcomeUnknown)] == [timed_out.id]

    survivor = client.send("*", "survives", now=11.0)
    rejected = client.send("*", "rejected", now=11.0)
    overflow = client.send("*", "overflow", now=11.0)
    feed(client, nack(rejected.id, NO_PEER_TEXT), now=11.1)
    failed = {e.send_id for e in step(client).of(SendFailed)}
    assert failed == {rejected.id, overflow.id}

    client.transport_closed(transport_id, now=12.0, code=1001)
    _, _, s = reconnect(client)

    written = {f.id for f in s.frames_of(Send)}
    assert written == {survivor.id}


# --- pushes ------------------------------------------------------------------------


def test_push_is_delivered_with_its_decoded_body() -> None:
    client, _ = open_client()

    feed(client, push("m-1", "héllo wörld", client_message_id="c-1"), now=1.0)
    [message] = step(client).of(MessageReceived)

    assert message.message_id == "m-1"
    assert message.client_message_id == "c-1"
    assert message.sender_pubkey == PEER
    assert message.priority == "next"
    assert message.body == "héllo wörld".encode()
    assert message.text == "héllo wörld"
    assert message.created_at == "2026-11-27T00:20:21.345Z"


def test_duplicate_push_with_the_same_client_message_id_is_not_delivered_again() -> None:
    client, _ = open_client()
    feed(client, push("m-1", client_message_id="c-1"), now=1.0)
    assert len(step(client).of(MessageReceived)) == 1

    feed(client, push("m-2", client_message_id="c-1"), now=2.0)

    assert step(client).of(MessageReceived) == []
    assert client.counters.duplicate_pushes == 1


def test_duplicate_push_without_client_message_id_is_deduplicated_by_message_id() -> None:
    client, _ = open_client()
    feed(client, push("m-1"), now=1.0)
    feed(client, push("m-2"), now=1.0)
    assert len(step(client).of(MessageReceived)) == 2

    feed(client, push("m-1"), now=2.0)

    assert step(client).of(MessageReceived) == []
    assert client.counters.duplicate_pushes == 1


def _acks(s: Step) -> list[tuple[str | None, str | None]]:
    return [(a.client_message_id, a.broker_message_id) for a in s.frames_of(ClientAck)]


def test_a_message_is_acked_only_when_taken_from_the_inbox() -> None:
    client, _ = open_client()
    feed(client, push("m-1", client_message_id="c-1"), now=1.0)
    feed(client, push("m-2"), now=1.2)
    assert _acks(step(client)) == []

    client.take_messages(1)
    assert _acks(step(client)) == [("c-1", "m-1")]
    client.take_messages()
    assert _acks(step(client)) == [(None, "m-2")]


def test_a_system_push_is_acked_at_once() -> None:
    client, _ = open_client()
    feed(client, system_push("0a55c05e-bbdd-46fd-8af4-a2dadf49c762"), now=1.3)
    assert _acks(step(client)) == [(None, "0a55c05e-bbdd-46fd-8af4-a2dadf49c762")]


def test_without_an_inbox_the_event_is_the_hand_over_and_is_acked_at_once() -> None:
    client, _ = open_client(ClientOptions(inbox_limit=0))
    feed(client, push("m-1", client_message_id="c-1"), now=1.0)
    s = step(client)
    assert [m.message_id for m in s.of(MessageReceived)] == ["m-1"]
    assert _acks(s) == [("c-1", "m-1")]
    assert client.inbox_size == 0


def test_a_duplicate_of_a_waiting_message_is_not_acked_until_the_message_is_taken() -> None:
    client, _ = open_client()
    feed(client, push("m-1", client_message_id="c-1"), now=1.0)
    feed(client, push("m-1", client_message_id="c-1"), now=1.1)  # re-pushed, same row
    feed(client, push("m-9", client_message_id="c-1"), now=1.2)  # re-sent: a new row
    s = step(client)
    assert len(s.of(MessageReceived)) == 1
    assert _acks(s) == []

    [taken] = client.take_messages()
    assert taken.message_id == "m-1"
    assert _acks(step(client)) == [("c-1", "m-1"), ("c-1", "m-9")]


def test_a_duplicate_of_a_message_already_taken_is_acked_again_at_once() -> None:
    client, _ = open_client()
    feed(client, push("m-1", client_message_id="c-1"), now=1.0)
    client.take_messages()
    step(client)

    feed(client, push("m-1", client_message_id="c-1"), now=2.0)
    s = step(client)
    assert s.of(MessageReceived) == []
    assert _acks(s) == [("c-1", "m-1")]


def test_a_message_taken_while_offline_is_acked_after_the_next_hello_ack() -> None:
    client, transport_id = open_client()
    feed(client, push("m-1"), now=1.0)
    client.transport_closed(transport_id, now=2.0, code=None)
    client.take_messages()
    assert _acks(step(client)) == []

    _, _, s = reconnect(client)
    assert _acks(s) == [(None, "m-1")]


def test_a_full_inbox_pauses_reading_and_taking_resumes_it() -> None:
    client, _ = open_client(ClientOptions(inbox_limit=2))
    feed(client, push("m-0"), now=1.0)
    assert not client.reading_paused
    feed(client, push("m-1"), now=1.0)
    assert client.reading_paused

    client.take_messages(1)
    assert not client.reading_paused


def test_a_full_inbox_never_drops_a_message() -> None:
    client, _ = open_client(ClientOptions(inbox_limit=3))
    for i in range(5):  # what one read of the socket may already hold
        feed(client, push(f"m-{i}"), now=1.0)

    assert client.reading_paused
    assert [m.message_id for m in client.take_messages()] == [f"m-{i}" for i in range(5)]
    assert len(step(client).frames_of(ClientAck)) == 5


def test_liveness_is_suspended_while_reading_is_paused() -> None:
    client, _ = open_client(ClientOptions(inbox_limit=1))
    feed(client, push("m-0"), now=1.0)
    assert client.reading_paused
    step(client)

    for t in range(30, 300, 30):  # long past the 75 s of silence
        client.handle_timer(float(t) + 1.0)
    s = step(client)
    assert s.of(ReconnectScheduled) == []
    assert client.state is ConnectionState.OPEN
    assert len(s.of(SendPing)) >= 8  # pings still go out

    client.take_messages()
    client.handle_timer(300.0)
    assert client.state is ConnectionState.OPEN  # counts again from here
    client.handle_timer(374.9)
    assert client.state is ConnectionState.OPEN
    client.handle_timer(375.0)
    assert client.state is ConnectionState.RECONNECTING


def test_a_send_only_connection_leaves_every_message_unacknowledged() -> None:
    client, _ = open_client(ClientOptions(accept_messages=False))
    feed(client, push("m-1", client_message_id="c-1"), now=1.0)
    feed(client, push("m-1", client_message_id="c-1"), now=1.1)
    s = step(client)

    assert s.of(MessageReceived) == []
    assert _acks(s) == []
    assert client.inbox_size == 0
    assert client.counters.declined_pushes == 2


def test_dedupe_window_is_bounded() -> None:
    client, _ = open_client(ClientOptions(dedupe_window=3, inbox_limit=0))
    feed(client, push("m-old"), now=1.0)
    for i in range(2):
        feed(client, push(f"m-{i}"), now=1.0)
    step(client)
    feed(client, push("m-old"), now=2.0)
    assert step(client).of(MessageReceived) == []  # still inside the window

    for i in range(2, 4):
        feed(client, push(f"m-{i}"), now=3.0)
    step(client)
    feed(client, push("m-old"), now=4.0)

    assert [m.message_id for m in step(client).of(MessageReceived)] == ["m-old"]


def test_inbox_keeps_messages_for_pollers_in_order() -> None:
    client, _ = open_client()
    for i in range(3):
        feed(client, push(f"m-{i}"), now=1.0)
    feed(client, push("m-bad", ciphertext="%%% not base64 %%%"), now=1.0)
    assert client.inbox_size == 4

    first = client.take_messages(2)
    rest = client.take_messages()

    assert [m.message_id for m in first] == ["m-0", "m-1"]
    assert [m.message_id for m in rest] == ["m-2", "m-bad"]
    assert isinstance(rest[-1], UnreadableMessage)
    assert client.take_messages() == []
    assert client.inbox_size == 0


def test_inbox_pauses_reading_at_500_messages_by_default() -> None:
    client, _ = open_client()
    for i in range(499):
        feed(client, push(f"m-{i}"), now=1.0)
    assert not client.reading_paused

    feed(client, push("m-499"), now=1.0)
    assert client.reading_paused
    assert client.inbox_size == 500
    assert client.take_messages(1)[0].message_id == "m-0"


def test_system_push_becomes_a_system_message_not_a_message() -> None:
    client, _ = open_client()

    feed(client, system_push("0a55c05e-bbdd-46fd-8af4-a2dadf49c762", "peer_left"), now=1.0)
    s = step(client)

    [system] = s.of(SystemMessage)
    assert system.event == "peer_left"
    assert system.data["pubkey"] == PEER
    assert system.message_id == "0a55c05e-bbdd-46fd-8af4-a2dadf49c762"
    assert s.of(MessageReceived) == []
    assert s.of(UnreadableMessage) == []
    assert client.inbox_size == 0


def test_push_whose_ciphertext_is_not_base64_becomes_unreadable_message() -> None:
    client, _ = open_client()

    feed(client, push("m-bad", ciphertext="this is not base64!"), now=1.0)
    s = step(client)

    [unreadable] = s.of(UnreadableMessage)
    assert unreadable.message_id == "m-bad"
    assert unreadable.sender_pubkey == PEER
    assert unreadable.reason
    assert s.of(MessageReceived) == []
    assert client.take_messages() == [unreadable]
    assert [a.broker_message_id for a in step(client).frames_of(ClientAck)] == ["m-bad"]
    assert client.state is ConnectionState.OPEN


# --- presence and peers ---------------------------------------------------------------


def test_set_status_while_open_is_written_at_once() -> None:
    client, _ = open_client()

    client.set_status("dnd", now=1.0)

    assert step(client).frames_of(SetStatus) == [SetStatus("dnd")]


def test_last_status_is_written_again_after_every_reconnect() -> None:
    client, transport_id = open_client()
    client.set_status("working", now=1.0)
    client.set_status("dnd", now=1.0)
    step(client)

    for i in range(3):
        client.transport_closed(transport_id, now=10.0 + 100 * i, code=1001)
        _, transport_id, s = reconnect(client)
        assert s.frames_of(SetStatus) == [SetStatus("dnd")]


def test_last_summary_is_written_again_after_a_reconnect() -> None:
    client, transport_id = open_client()
    client.set_summary("reviewing", now=1.0)
    assert [f.summary for f in step(client).frames_of(SetSummary)] == ["reviewing"]

    client.transport_closed(transport_id, now=2.0, code=None)
    _, _, s = reconnect(client)

    assert [f.summary for f in s.frames_of(SetSummary)] == ["reviewing"]


def test_list_peers_sends_a_req_id_and_peers_list_answers_it() -> None:
    client, _ = open_client()

    request_id = client.list_peers(now=1.0)
    [request] = step(client).frames_of(ListPeers)
    assert request.req_id == request_id

    peer = {"pubkey": PEER, "displayName": "peer-b", "status": "idle", "summary": None}
    feed(client, {"type": "peers_list", "_reqId": "someone-else", "peers": []}, now=1.1)
    assert step(client).events == []
    feed(client, {"type": "peers_list", "_reqId": request_id, "peers": [peer]}, now=1.2)
    [listed] = step(client).of(PeersListed)

    assert listed.request_id == request_id
    assert [(p.pubkey, p.display_name, p.status) for p in listed.peers] == [
        (PEER, "peer-b", "idle")
    ]


def test_list_peers_without_an_answer_fails_with_timeout() -> None:
    client, _ = open_client()
    request_id = client.list_peers(now=1.0)
    step(client)

    client.handle_timer(10.9)
    assert step(client).of(RequestFailed) == []
    client.handle_timer(11.0)
    [failed] = step(client).of(RequestFailed)

    assert failed.request_id == request_id
    assert failed.reason.code == "timeout"
    feed(client, {"type": "peers_list", "_reqId": request_id, "peers": []}, now=12.0)
    assert step(client).of(PeersListed) == []


def test_unanswered_request_is_written_again_after_a_reconnect() -> None:
    client, transport_id = open_client()
    request_id = client.list_peers(now=1.0)
    step(client)

    client.transport_closed(transport_id, now=2.0, code=None)
    at, _, s = reconnect(client)
    assert at < 11.0
    assert [f.req_id for f in s.frames_of(ListPeers)] == [request_id]

    feed(client, {"type": "peers_list", "_reqId": request_id, "peers": []}, now=at)
    assert [e.request_id for e in step(client).of(PeersListed)] == [request_id]


def test_error_frame_with_a_req_id_fails_that_request() -> None:
    client, _ = open_client()
    request_id = client.list_peers(now=1.0)
    step(client)

    feed(
        client,
        {"type": "error", "code": "internal", "message": "try later", "_reqId": request_id},
        now=1.1,
    )
    [failed] = step(client).of(RequestFailed)

    assert failed.request_id == request_id
    assert "internal" in failed.reason.detail


# --- liveness --------------------------------------------------------------------------


def test_ping_is_sent_every_30s_after_hello_ack() -> None:
    client, _ = open_client(now=100.0)
    pings: list[float] = []
    for _ in range(10):  # bounded walk through the deadlines
        at = client.next_deadline()
        assert at is not None
        if at > 200.0:
            break
        client.handle_timer(at)
        if step(client).of(SendPing):
            pings.append(at)
        client.receive_pong(now=at)

    assert pings == pytest.approx([130.0, 160.0, 190.0])


@pytest.mark.parametrize("life", ["frame", "ping", "pong"])
def test_anything_inbound_counts_as_life(life: str) -> None:
    client, _ = open_client()
    if life == "frame":
        feed(client, {"type": "something_new"}, now=50.0)
    elif life == "ping":
        client.receive_ping(now=50.0)
    else:
        client.receive_pong(now=50.0)

    client.handle_timer(75.0)
    assert step(client).of(CloseTransport) == []
    assert client.state is ConnectionState.OPEN

    client.handle_timer(125.0)
    assert len(step(client).of(CloseTransport)) == 1
    assert client.state is ConnectionState.RECONNECTING


def test_silence_for_75s_closes_the_transport_and_schedules_a_reconnect() -> None:
    client, _ = open_client()
    for at in (30.0, 60.0, 74.9):
        client.handle_timer(at)
        assert step(client).of(CloseTransport) == []
    assert client.state is ConnectionState.OPEN

    client.handle_timer(75.0)
    s = step(client)

    assert len(s.of(CloseTransport)) == 1
    assert len(s.of(ReconnectScheduled)) == 1
    assert client.state is ConnectionState.RECONNECTING


# --- reconnect --------------------------------------------------------------------------


def test_transport_closed_reported_twice_schedules_one_reconnect() -> None:
    client, transport_id = open_client()

    client.transport_closed(transport_id, now=1.0, code=None)
    client.transport_closed(transport_id, now=1.5, code=1001)
    s = step(client)

    assert len(s.of(ReconnectScheduled)) == 1
    assert client.reconnect_pending


def test_close_of_a_transport_the_client_already_dropped_is_ignored() -> None:
    client = make_client()
    transport_id = start(client, now=0.0)
    client.transport_opened(transport_id, now=0.0, wall_time_ms=WALL_MS)
    client.handle_timer(5.0)  # no hello_ack: the client closes it itself
    assert len(step(client).of(ReconnectScheduled)) == 1

    client.transport_closed(transport_id, now=5.1, code=1000)  # the adapter reports it

    assert step(client) == Step()
    assert client.reconnect_pending


def test_reports_about_a_stale_transport_are_ignored() -> None:
    client, old = open_client()
    client.transport_closed(old, now=1.0, code=None)
    _, new, _ = reconnect(client)
    assert new != old

    client.transport_closed(old, now=10.0, code=None)
    client.transport_opened(old, now=10.0, wall_time_ms=WALL_MS)

    assert step(client) == Step()
    assert client.state is ConnectionState.OPEN
    assert not client.reconnect_pending


def _failed_attempt_delays(client: ClientConnection, attempts: int) -> list[float]:
    """Fail the opening of ``attempts`` transports in a row; return the delays chosen."""
    transport_id = start(client, now=0.0)
    delays: list[float] = []
    for _ in range(attempts):
        client.transport_closed(transport_id, now=client.next_deadline() or 0.0, code=None)
        [scheduled] = step(client).of(ReconnectScheduled)
        delays.append(scheduled.delay)
        _, transport_id, _ = fire_reconnect(client)
    return delays


def test_seed_backoff_waits_1_2_4_8_16_30_30_seconds() -> None:
    client = make_client(ClientOptions(backoff=Backoff.seed()))
    transport_id = start(client, now=0.0)
    delays: list[float] = []
    attempts: list[int] = []
    now = 0.0
    for _ in range(len(SEED_CAPS)):
        client.transport_closed(transport_id, now=now, code=None)
        [scheduled] = step(client).of(ReconnectScheduled)
        assert scheduled.at == pytest.approx(now + scheduled.delay)
        delays.append(scheduled.delay)
        attempts.append(scheduled.attempt)
        now, transport_id, _ = fire_reconnect(client)

    assert delays == list(SEED_CAPS)
    assert attempts == sorted(set(attempts))  # strictly increasing attempt numbers


def test_jittered_backoff_delays_lie_between_0_and_the_cap() -> None:
    delays = _failed_attempt_delays(make_client(seed=3), 12)

    caps = [*SEED_CAPS, *[30.0] * 5]
    assert all(0.0 <= d <= cap for d, cap in zip(delays, caps, strict=True))
    assert delays != caps  # jitter, not the caps themselves


def test_jittered_backoff_is_drawn_from_the_injected_rng() -> None:
    class HalfwayRandom(random.Random):
        def random(self) -> float:
            return 0.5

    delays = _failed_attempt_delays(make_client(rng=HalfwayRandom(0)), 7)
    assert delays == [cap / 2 for cap in SEED_CAPS]

    same = _failed_attempt_delays(make_client(seed=11), 7)
    again = _failed_attempt_delays(make_client(seed=11), 7)
    other = _failed_attempt_delays(make_client(seed=12), 7)
    assert same == again
    assert same != other


def test_backoff_resets_only_after_a_link_has_proved_itself() -> None:
    client = make_client(ClientOptions(backoff=Backoff.seed()))
    transport_id = start(client, now=0.0)
    client.transport_closed(transport_id, now=0.0, code=None)  # open fails
    assert [e.delay for e in step(client).of(ReconnectScheduled)] == [1.0]

    at, transport_id, _ = fire_reconnect(client)
    client.transport_opened(transport_id, now=at, wall_time_ms=WALL_MS)
    client.transport_closed(transport_id, now=at, code=1006)  # opened, no hello_ack
    assert [e.delay for e in step(client).of(ReconnectScheduled)] == [2.0]

    at, transport_id, _ = fire_reconnect(client)
    client.transport_opened(transport_id, now=at, wall_time_ms=WALL_MS)
    client.handle_timer(at + 5.0)  # hello_ack timeout
    assert [e.delay for e in step(client).of(ReconnectScheduled)] == [4.0]

    at, transport_id, _ = reconnect(client)  # hello_ack, then dropped after 1 s
    client.transport_closed(transport_id, now=at + 1.0, code=1001)
    assert [e.delay for e in step(client).of(ReconnectScheduled)] == [8.0]

    at, transport_id, _ = reconnect(client)  # open for 10 s: proven
    client.handle_timer(at + 10.0)
    client.transport_closed(transport_id, now=at + 10.0, code=1001)
    assert [e.delay for e in step(client).of(ReconnectScheduled)] == [1.0]


def test_a_send_acked_on_a_link_proves_it_at_once() -> None:
    client = make_client(ClientOptions(backoff=Backoff.seed()))
    transport_id = start(client, now=0.0)
    client.transport_closed(transport_id, now=0.0, code=None)
    at, transport_id, _ = reconnect(client)
    client.transport_closed(transport_id, now=at + 0.5, code=None)
    assert [e.delay for e in step(client).of(ReconnectScheduled)] == [2.0]

    at, transport_id, _ = reconnect(client)
    handle = client.send("*", "proof", now=at)
    feed(client, ack(handle.id), now=at + 0.1)
    client.transport_closed(transport_id, now=at + 0.5, code=None)
    assert [e.delay for e in step(client).of(ReconnectScheduled)] == [1.0]


def test_a_broker_that_accepts_and_drops_at_once_sees_the_delays_grow() -> None:
    client = make_client(ClientOptions(backoff=Backoff.seed()))
    transport_id = start(client, now=0.0)
    client.transport_closed(transport_id, now=0.0, code=None)
    delays = [step(client).of(ReconnectScheduled)[0].delay]
    for _ in range(7):
        at, transport_id, _ = reconnect(client)  # hello_ack every time ...
        client.transport_closed(transport_id, now=at, code=None)  # ... and dropped at once
        delays.append(step(client).of(ReconnectScheduled)[0].delay)

    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


PERMANENT_CLOSES = [
    (1000, "session_replaced"),
    (1008, "unauthorized"),
    (1008, "bad_signature"),
    (1008, "malformed"),
    (1008, "bad_session_pubkey"),
    (4001, "kicked"),
    (4002, "banned"),
]


@pytest.mark.parametrize(("code", "reason"), PERMANENT_CLOSES)
def test_permanent_close_ends_in_closed_and_fails_pending_sends(code: int, reason: str) -> None:
    client, transport_id = open_client()
    written = client.send("*", "in flight", now=1.0)
    request_id = client.list_peers(now=1.0)
    step(client)

    client.transport_closed(transport_id, now=2.0, code=code, reason=reason)
    s = step(client)

    assert client.state is ConnectionState.CLOSED
    [closed] = s.of(Closed)
    assert closed.code == code
    assert reason in closed.reason
    assert not closed.by_user
    assert [e.send_id for e in s.of(SendOutcomeUnknown)] == [written.id]  # it was written
    assert s.of(SendOutcomeUnknown)[0].reason.code == "refused"
    assert [e.request_id for e in s.of(RequestFailed)] == [request_id]
    assert s.of(ReconnectScheduled) == []
    assert client.next_deadline() is None
    client.handle_timer(1000.0)
    assert step(client) == Step()


def test_revoked_error_during_handshake_ends_in_closed() -> None:
    client = make_client()
    queued = client.send("*", "never", now=0.0)
    transport_id = start(client, now=0.0)
    client.transport_opened(transport_id, now=0.0, wall_time_ms=WALL_MS)
    step(client)

    message = 'You\'ve been removed from "mesh". Contact the mesh owner to rejoin.'
    feed(client, {"type": "error", "code": "revoked", "message": message}, now=0.1)
    s = step(client)

    assert client.state is ConnectionState.CLOSED
    [closed] = s.of(Closed)
    assert "revoked" in closed.reason
    assert len(s.of(CloseTransport)) == 1
    assert [e.send_id for e in s.of(SendFailed)] == [queued.id]
    assert s.of(ReconnectScheduled) == []

    client.transport_closed(transport_id, now=0.2, code=4002, reason="banned")
    assert step(client) == Step()
    assert client.next_deadline() is None


TRANSIENT_CLOSES = [
    (1000, ""),
    (1000, "admin nudge"),
    (1001, "going away"),
    (None, ""),
    (1008, "timestamp_skew"),
    (1008, "capacity"),
    (1009, "message too big"),
]


@pytest.mark.parametrize(("code", "reason"), TRANSIENT_CLOSES)
def test_transient_close_schedules_a_reconnect(code: int | None, reason: str) -> None:
    client, transport_id = open_client()
    client.set_status("working", now=1.0)
    step(client)
    client.transport_closed(transport_id, now=2.0, code=code, reason=reason)
    queued = client.send("*", "after the drop", now=2.0)
    s = step(client)

    assert client.state is ConnectionState.RECONNECTING
    assert len(s.of(ReconnectScheduled)) == 1
    assert s.of(Closed) == []
    assert s.of(SendFailed) == []
    _, _, s = reconnect(client)
    assert [f.id for f in s.frames_of(Send)] == [queued.id]


def test_close_1009_fails_the_last_written_send_as_payload_too_large() -> None:
    client, transport_id = open_client()
    small = client.send("*", "small", now=1.0)
    big = client.send("*", "x" * 40_000, now=1.0)
    step(client)

    client.transport_closed(transport_id, now=1.5, code=1009)
    [failed] = step(client).of(SendFailed)

    assert failed.send_id == big.id
    assert failed.reason.code == "payload_too_large"
    assert not failed.reason.retryable
    _, _, s = reconnect(client)
    assert [f.id for f in s.frames_of(Send)] == [small.id]


def test_user_close_closes_the_transport_fails_pending_and_stops_timers() -> None:
    client, transport_id = open_client()
    written = client.send("*", "in flight", now=1.0)
    request_id = client.list_peers(now=1.0)
    step(client)

    client.close(now=2.0)
    s = step(client)

    assert len(s.of(CloseTransport)) == 1
    assert client.state is ConnectionState.CLOSED
    [closed] = s.of(Closed)
    assert closed.by_user
    assert [(e.send_id, e.reason.code) for e in s.of(SendOutcomeUnknown)] == [
        (written.id, "closed")
    ]
    assert [e.request_id for e in s.of(RequestFailed)] == [request_id]
    assert client.next_deadline() is None
    client.transport_closed(transport_id, now=2.1, code=1000)
    client.handle_timer(500.0)
    assert step(client) == Step()


def test_user_close_while_reconnecting_fails_queued_sends_with_closed() -> None:
    client, transport_id = open_client()
    client.transport_closed(transport_id, now=1.0, code=None)
    queued = [client.send("*", f"m{i}", now=1.0) for i in range(3)]
    step(client)

    client.close(now=1.5)
    s = step(client)

    assert [(e.send_id, e.reason.code) for e in s.of(SendFailed)] == [
        (h.id, "closed") for h in queued
    ]
    assert client.state is ConnectionState.CLOSED
    assert not client.reconnect_pending
    assert client.next_deadline() is None
    client.handle_timer(1000.0)
    assert step(client) == Step()


def test_user_close_while_connecting_closes_the_transport_being_opened() -> None:
    client = make_client()
    transport_id = start(client, now=0.0)

    client.close(now=0.1)
    client.transport_opened(transport_id, now=0.2, wall_time_ms=WALL_MS)  # too late
    s = step(client)

    assert len(s.of(CloseTransport)) == 1
    assert s.frames() == []
    assert client.state is ConnectionState.CLOSED


# --- observability ------------------------------------------------------------------------


def test_state_changes_are_reported_with_old_and_new_state() -> None:
    client = make_client()
    assert client.state is ConnectionState.IDLE
    transport_id = start(client, now=0.0)
    assert client.state is ConnectionState.CONNECTING
    client.transport_opened(transport_id, now=0.0, wall_time_ms=WALL_MS)
    assert client.state is ConnectionState.HANDSHAKING
    feed(client, HELLO_ACK, now=0.1)
    client.transport_closed(transport_id, now=1.0, code=None)
    client.handle_timer(client.next_deadline() or 0.0)
    client.close(now=5.0)

    changes = [(e.old, e.new) for e in client.drain_events() if isinstance(e, StateChanged)]
    S = ConnectionState
    assert changes == [
        (S.CONNECTING, S.HANDSHAKING),
        (S.HANDSHAKING, S.OPEN),
        (S.OPEN, S.RECONNECTING),
        (S.RECONNECTING, S.CONNECTING),
        (S.CONNECTING, S.CLOSED),
    ]
    assert client.state is ConnectionState.CLOSED


def test_connect_reports_the_change_from_idle_to_connecting() -> None:
    client = make_client()
    client.connect(0.0)
    assert client.drain_events() == [StateChanged(ConnectionState.IDLE, ConnectionState.CONNECTING)]


def test_frames_in_counts_every_inbound_message() -> None:
    client, _ = open_client()
    before = client.counters.frames_in

    feed(client, push("m-1"), now=1.0)
    client.receive_text("not json", now=1.0)
    client.receive_binary(b"\x00\x01", now=1.0)

    assert client.counters.frames_in == before + 3


def test_frames_out_counts_every_written_frame() -> None:
    client = make_client()
    transport_id = start(client, now=0.0)
    s = handshake(client, transport_id, now=0.0)
    client.send("*", "one", now=1.0)
    client.set_status("idle", now=1.0)
    feed(client, push("m-1"), now=1.0)
    client.take_messages()  # answered with client_ack
    s = s + step(client)

    written = s.of(WriteFrame)
    assert len(written) == 4
    assert client.counters.frames_out == len(written)


def test_reconnects_counter_counts_reconnect_attempts() -> None:
    client, transport_id = open_client()
    assert client.counters.reconnects == 0

    client.transport_closed(transport_id, now=1.0, code=None)
    _, transport_id, _ = reconnect(client)
    assert client.counters.reconnects == 1
    client.transport_closed(transport_id, now=5.0, code=None)
    fire_reconnect(client)
    assert client.counters.reconnects == 2


def test_resends_counter_counts_rewritten_sends() -> None:
    client, transport_id = open_client()
    client.send("*", "again", now=1.0)
    assert client.counters.resends == 0

    client.transport_closed(transport_id, now=2.0, code=None)
    _, transport_id, _ = reconnect(client)
    assert client.counters.resends == 1
    client.transport_closed(transport_id, now=5.0, code=None)
    reconnect(client)
    assert client.counters.resends == 2


def test_duplicate_push_counter_counts_each_duplicate() -> None:
    client, _ = open_client(ClientOptions(inbox_limit=1))
    feed(client, push("m-1"), now=1.0)
    assert client.counters.duplicate_pushes == 0

    feed(client, push("m-1"), now=1.0)
    assert client.counters.duplicate_pushes == 1
    client.take_messages()
    feed(client, push("m-1"), now=1.0)
    assert client.counters.duplicate_pushes == 2


# --- misuse --------------------------------------------------------------------------------


@pytest.mark.parametrize("priority", ["urgent", "NOW", "", None, 1])
def test_send_with_an_unknown_priority_raises_before_any_change(priority: Any) -> None:
    client, _ = open_client()
    assert_misuse_changes_nothing(client, lambda: client.send("*", "hi", priority, now=1.0))


@pytest.mark.parametrize("priority", [["now"], {"now": 1}])
def test_send_with_an_unhashable_priority_raises_local_protocol_error(priority: Any) -> None:
    client, _ = open_client()
    assert_misuse_changes_nothing(client, lambda: client.send("*", "hi", priority, now=1.0))


@pytest.mark.parametrize("target", [None, 42, b"*", ["*"], PEER.encode()])
def test_send_to_a_non_string_target_raises_before_any_change(target: Any) -> None:
    client, _ = open_client()
    assert_misuse_changes_nothing(client, lambda: client.send(target, "hi", now=1.0))


@pytest.mark.parametrize(
    "target",
    ["", "@", "#", "all", "**", PEER[:63], PEER + "0", PEER.upper(), "@two words", "@" + "g" * 129],
)
def test_send_to_a_malformed_target_raises_before_any_change(target: str) -> None:
    client, _ = open_client()
    assert_misuse_changes_nothing(client, lambda: client.send(target, "hi", now=1.0))


@pytest.mark.parametrize("target", ["@\ud800", "#topic\udfff"])
def test_send_to_a_target_that_is_not_valid_unicode_raises_local_protocol_error(
    target: str,
) -> None:
    client, _ = open_client()
    assert_misuse_changes_nothing(client, lambda: client.send(target, "hi", now=1.0))


def test_send_with_a_body_over_64_kib_raises_before_any_change() -> None:
    client, _ = open_client()
    body = b"x" * 65_537
    assert_misuse_changes_nothing(client, lambda: client.send("*", body, now=1.0))
    assert_misuse_changes_nothing(client, lambda: client.send("*", body.decode(), now=1.0))


def test_send_whose_encoded_frame_would_exceed_64_kib_raises_before_any_change() -> None:
    client, _ = open_client()
    body = b"x" * 60_000  # under the body limit, but base64 makes the frame too big
    assert_misuse_changes_nothing(client, lambda: client.send("*", body, now=1.0))


@pytest.mark.parametrize("body", [None, 42, 4.2, ["hi"], {"text": "hi"}])
def test_send_with_a_body_that_is_not_str_or_bytes_raises_before_any_change(body: Any) -> None:
    client, _ = open_client()
    assert_misuse_changes_nothing(client, lambda: client.send("*", body, now=1.0))


def test_send_after_close_raises_before_any_change() -> None:
    client, _ = open_client()
    client.close(now=1.0)
    assert_misuse_changes_nothing(client, lambda: client.send("*", "too late", now=2.0))


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda c: c.set_status("idle", now=2.0), id="set_status"),
        pytest.param(lambda c: c.set_summary("hi", now=2.0), id="set_summary"),
        pytest.param(lambda c: c.list_peers(now=2.0), id="list_peers"),
        pytest.param(lambda c: c.connect(2.0), id="connect"),
    ],
)
def test_other_calls_after_close_raise_before_any_change(
    call: Callable[[ClientConnection], object],
) -> None:
    client, _ = open_client()
    client.close(now=1.0)
    assert_misuse_changes_nothing(client, lambda: call(client))


def test_connect_twice_raises_before_any_change() -> None:
    client, _ = open_client()
    assert_misuse_changes_nothing(client, lambda: client.connect(1.0))


@pytest.mark.parametrize("status", ["busy", "IDLE", "", None, 3])
def test_bad_status_raises_before_any_change(status: Any) -> None:
    client, transport_id = open_client()
    client.set_status("dnd", now=0.5)
    assert_misuse_changes_nothing(client, lambda: client.set_status(status, now=1.0))

    client.transport_closed(transport_id, now=2.0, code=None)
    _, _, s = reconnect(client)
    assert s.frames_of(SetStatus) == [SetStatus("dnd")]  # the bad one was not remembered


@pytest.mark.parametrize("status", [["idle"], {"idle": 1}])
def test_unhashable_status_raises_local_protocol_error(status: Any) -> None:
    client, _ = open_client()
    assert_misuse_changes_nothing(client, lambda: client.set_status(status, now=1.0))


def test_misuse_while_offline_queues_nothing() -> None:
    client = make_client()
    for call in (
        lambda: client.send("*", "hi", "urgent", now=0.0),
        lambda: client.send("nobody", "hi", now=0.0),
        lambda: client.send("*", 42, now=0.0),  # type: ignore[arg-type]
        lambda: client.set_status("busy", now=0.0),
    ):
        assert_misuse_changes_nothing(client, call)

    transport_id = start(client, now=1.0)
    s = handshake(client, transport_id, now=1.0)
    assert s.frames_of(Send) == []
    assert s.frames_of(SetStatus) == []


# --- garbage from the network ------------------------------------------------------------

GARBAGE = [
    pytest.param('{"type": "push", "messageId": ', id="malformed-json"),
    pytest.param("", id="empty"),
    pytest.param('[{"type": "ack"}]', id="json-array"),
    pytest.param('"hello_ack"', id="json-string"),
    pytest.param("null", id="json-null"),
    pytest.param('{"id": "0123456789abcdef", "queued": true}', id="no-type"),
    pytest.param('{"type": 7}', id="non-string-type"),
    pytest.param('{"type": "ack", "id": 12, "messageId": "m", "queued": true}', id="ack-int-id"),
    pytest.param(
        '{"type": "ack", "id": "x", "messageId": "m", "queued": "yes"}', id="ack-str-bool"
    ),
    pytest.param('{"type": "push", "messageId": "m"}', id="push-missing-fields"),
    pytest.param('{"type": "peers_list", "peers": {"a": 1}}', id="peers-not-a-list"),
    pytest.param('{"type": "hello_ack", "memberProfile": []}', id="hello-ack-bad-profile"),
    pytest.param("[" * 100_000, id="deeply-nested"),
]


@pytest.mark.parametrize("text", GARBAGE)
def test_garbage_text_becomes_malformed_frame_and_the_connection_keeps_working(
    text: str,
) -> None:
    client, _ = open_client()
    handle = client.send("*", "hi", now=1.0)
    step(client)

    client.receive_text(text, now=1.1)
    s = step(client)

    [malformed] = s.of(MalformedFrame)
    assert isinstance(malformed.error, RemoteProtocolError)
    assert client.state is ConnectionState.OPEN
    feed(client, ack(handle.id), now=1.2)
    feed(client, push("m-after"), now=1.2)
    s = step(client)
    assert [e.send_id for e in s.of(SendAcked)] == [handle.id]
    assert [e.message_id for e in s.of(MessageReceived)] == ["m-after"]


def test_binary_message_becomes_malformed_frame_and_the_connection_keeps_working() -> None:
    client, _ = open_client()

    client.receive_binary(json.dumps(push("m-bin")).encode(), now=1.0)
    s = step(client)

    assert len(s.of(MalformedFrame)) == 1
    assert s.of(MessageReceived) == []
    assert client.state is ConnectionState.OPEN
    feed(client, push("m-text"), now=1.1)
    assert [e.message_id for e in step(client).of(MessageReceived)] == ["m-text"]


def test_garbage_during_the_handshake_does_not_break_it() -> None:
    client = make_client()
    transport_id = start(client, now=0.0)
    client.transport_opened(transport_id, now=0.0, wall_time_ms=WALL_MS)
    client.receive_text("{oops", now=0.1)
    client.receive_binary(b"\xff", now=0.1)
    feed(client, HELLO_ACK, now=0.2)

    assert len(step(client).of(MalformedFrame)) == 2
    assert client.state is ConnectionState.OPEN


def test_unknown_frame_type_is_ignored_silently() -> None:
    client, _ = open_client()

    feed(client, {"type": "topic_update", "topic": "x", "extra": [1, 2]}, now=1.0)

    assert step(client) == Step()
    assert client.state is ConnectionState.OPEN


@settings(max_examples=150, deadline=None)
@given(
    texts=st.lists(
        st.one_of(
            st.text(max_size=40),
            st.builds(
                json.dumps,
                st.dictionaries(
                    st.sampled_from(["type", "id", "messageId", "queued", "_reqId", "peers"]),
                    st.one_of(
                        st.sampled_from(["ack", "push", "error", "peers_list", "hello_ack"]),
                        st.none(),
                        st.booleans(),
                        st.integers(),
                        st.lists(st.integers(), max_size=2),
                    ),
                ),
            ),
        ),
        max_size=5,
    ),
    blobs=st.lists(st.binary(max_size=20), max_size=2),
)
def test_no_inbound_text_or_binary_ever_raises(texts: list[str], blobs: list[bytes]) -> None:
    client, _ = open_client()
    for text in texts:
        client.receive_text(text, now=1.0)
    for blob in blobs:
        client.receive_binary(blob, now=1.0)
    step(client)

    assert client.state is ConnectionState.OPEN
    handle = client.send("*", "still here", now=2.0)
    assert [f.id for f in step(client).frames_of(Send)] == [handle.id]


# --- outcome unknown, and retrying safely ---------------------------------------------


def test_a_send_never_written_fails_as_not_delivered() -> None:
    client = make_client()
    handle = client.send("*", "never left", now=0.0)
    client.close(now=1.0)

    [failed] = step(client).of(SendFailed)
    assert failed.send_id == handle.id
    assert failed.reason.code == "closed"


def test_a_refusal_of_the_only_write_is_a_definite_failure() -> None:
    client, _ = open_client()
    handle = client.send(PEER, "hi", now=1.0)
    feed(client, nack(handle.id, NO_PEER_TEXT), now=1.1)

    s = step(client)
    assert [e.send_id for e in s.of(SendFailed)] == [handle.id]
    assert s.of(SendOutcomeUnknown) == []


def test_a_refused_resend_is_an_unknown_outcome_since_the_first_write_may_have_landed() -> None:
    client, transport_id = open_client()
    handle = client.send("*", "twice written", now=1.0)
    client.transport_closed(transport_id, now=2.0, code=None)
    reconnect(client)
    feed(client, nack(handle.id, RATE_LIMIT_TEXT), now=5.0)

    [unknown] = step(client).of(SendOutcomeUnknown)
    assert unknown.send_id == handle.id
    assert unknown.reason.code == "rate_limited"


def test_a_retry_under_the_same_client_message_id_carries_that_key() -> None:
    client, _ = open_client()
    first = client.send(PEER, "hello", now=1.0)
    step(client)
    client.handle_timer(11.0)
    [unknown] = step(client).of(SendOutcomeUnknown)

    retry = client.send(PEER, "hello", now=12.0, client_message_id=unknown.client_message_id)
    [written] = step(client).frames_of(Send)

    assert retry.id != first.id
    assert retry.client_message_id == first.client_message_id
    assert written.id == retry.id
    assert written.client_message_id == first.client_message_id


def test_a_client_message_id_already_pending_is_refused_before_any_change() -> None:
    client, _ = open_client()
    pending = client.send(PEER, "hello", now=1.0)
    assert_misuse_changes_nothing(
        client,
        lambda: client.send(PEER, "again", now=1.0, client_message_id=pending.client_message_id),
    )


@pytest.mark.parametrize("bad", ["", "x" * 129, "tab\there", "\ud800", 7])
def test_a_malformed_client_message_id_is_refused_before_any_change(bad: Any) -> None:
    client, _ = open_client()
    assert_misuse_changes_nothing(
        client, lambda: client.send(PEER, "hello", now=1.0, client_message_id=bad)
    )


# --- text that cannot be carried, and bugs --------------------------------------------


@pytest.mark.parametrize(
    "field", ["mesh_id", "member_id", "session_id", "cwd", "display_name", "hostname", "role"]
)
def test_config_refuses_a_string_that_is_not_valid_unicode(field: str) -> None:
    values: dict[str, Any] = {
        "url": URL,
        "mesh_id": MESH_ID,
        "member_id": MEMBER_ID,
        "session_id": SESSION_ID,
        field: "bad\udcffname",
    }
    with pytest.raises(LocalProtocolError, match=field):
        ClientConfig(signer=FakeSigner(), **values)


def test_config_refuses_a_group_name_that_is_not_valid_unicode() -> None:
    with pytest.raises(LocalProtocolError, match="group"):
        ClientConfig(
            url=URL,
            mesh_id=MESH_ID,
            member_id=MEMBER_ID,
            signer=FakeSigner(),
            session_id=SESSION_ID,
            groups=(Group("\ud800"),),
        )


@pytest.mark.parametrize(
    "text",
    [
        '{"type": "push", "messageId": "\\ud800", "meshId": "m", "senderPubkey": "s", '
        '"priority": "now", "nonce": "", "ciphertext": "", "createdAt": "t"}',
        '{"type": "push", "messageId": "m", "meshId": "m", "senderPubkey": "s", '
        '"priority": "now", "nonce": "", "ciphertext": "", "createdAt": "t", '
        '"client_message_id": "\\udfff"}',
        '{"type": "push", "messageId": "m", "meshId": "m", "senderPubkey": "s", '
        '"priority": "now", "nonce": "", "ciphertext": "", "createdAt": "t", '
        '"senderName": "\\ud83d"}',
        '{"type": "push", "subtype": "system", "event": "peer_joined", "messageId": "m", '
        '"meshId": "m", "senderPubkey": "system", "priority": "low", "nonce": "", '
        '"ciphertext": "", "createdAt": "t", "eventData": {"name": "\\ud800"}}',
    ],
    ids=["messageId", "client_message_id", "senderName", "eventData-name"],
)
def test_a_push_holding_a_lone_surrogate_is_a_malformed_frame_and_changes_nothing(
    text: str,
) -> None:
    client, _ = open_client()
    client.receive_text(text, now=1.0)
    s = step(client)

    assert [type(e) for e in s.events] == [MalformedFrame]
    assert s.actions == []
    assert client.inbox_size == 0
    assert client.state is ConnectionState.OPEN


def test_a_bug_while_handling_a_frame_costs_the_transport_not_the_connection(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    client, _ = open_client()
    handle = client.send("*", "in flight", now=1.0)
    step(client)

    def broken(self: ClientConnection, frame: Any, now: float) -> None:
        raise RuntimeError("planted bug")

    monkeypatch.setattr(ClientConnection, "_dispatch", broken)
    with caplog.at_level("ERROR", logger="meshproto.client"):
        feed(client, push("m-1"), now=2.0)
    s = step(client)
    monkeypatch.undo()

    [internal] = s.of(InternalError)
    assert "planted bug" in repr(internal.error)
    assert [(c.code, c.reason) for c in s.of(CloseTransport)] == [(1011, "internal error")]
    assert len(s.of(ReconnectScheduled)) == 1
    assert sum("planted bug" in r.exc_text for r in caplog.records if r.exc_text) == 1
    _, _, after = reconnect(client)
    assert [f.id for f in after.frames_of(Send)] == [handle.id]  # nothing lost
    assert client.state is ConnectionState.OPEN


def test_a_sealer_that_raises_costs_only_that_message() -> None:
    class Broken:
        def seal(self, target_spec: str, body: bytes, rng: random.Random) -> tuple[str, str]:
            return "", ""

        def open(self, push: Any) -> bytes:
            raise KeyError("sealer bug")

    config = ClientConfig(
        url=URL,
        mesh_id=MESH_ID,
        member_id=MEMBER_ID,
        signer=FakeSigner(),
        session_id=SESSION_ID,
        sealer=Broken(),
    )
    client = ClientConnection(config, rng=random.Random(0))
    handshake(client, start(client), now=0.0)
    feed(client, push("m-1"), now=1.0)

    [unreadable] = step(client).of(UnreadableMessage)
    assert "sealer bug" in unreadable.reason
    assert client.state is ConnectionState.OPEN
