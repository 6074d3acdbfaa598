"""Taking a message without acknowledging it, and acknowledging it once used.

``take_messages(acknowledge=False)`` hands a message over and writes no
``client_ack``; ``acknowledge(message)`` writes every one owed for it. Until
then the broker keeps the message, so an application that fails between the
take and the use (a print that fails) loses nothing. Driven by hand, as in
``test_client.py``, whose helpers these tests share.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from test_client import (
    assert_misuse_changes_nothing,
    feed,
    open_client,
    push,
    reconnect,
    step,
)

from meshproto import (
    ClientAck,
    ClientConfig,
    ClientConnection,
    ClientOptions,
    LocalProtocolError,
    MessageReceived,
    UnreadableMessage,
)
from meshproto.replay import RecordingConnection, load, replay
from meshproto.testing import FakeSigner


def _acks(client: ClientConnection) -> list[tuple[str | None, str | None]]:
    return [(a.client_message_id, a.broker_message_id) for a in step(client).frames_of(ClientAck)]


def _held_elsewhere(message_id: str) -> MessageReceived | UnreadableMessage:
    """Message ``message_id`` as another connection took it, unacknowledged."""
    other, _ = open_client()
    feed(other, push(message_id), now=1.0)
    [message] = other.take_messages(acknowledge=False)
    return message


def test_a_message_taken_without_acknowledging_is_not_acknowledged() -> None:
    client, _ = open_client()
    feed(client, push("m-1", client_message_id="c-1"), now=1.0)
    step(client)

    [taken] = client.take_messages(acknowledge=False)

    assert taken.message_id == "m-1"
    assert _acks(client) == []
    assert client.unacknowledged == 1
    assert client.inbox_size == 0


def test_acknowledge_writes_the_client_ack_of_the_message() -> None:
    client, _ = open_client()
    feed(client, push("m-1", client_message_id="c-1"), now=1.0)
    [taken] = client.take_messages(acknowledge=False)
    step(client)

    client.acknowledge(taken)

    assert _acks(client) == [("c-1", "m-1")]
    assert client.unacknowledged == 0


def test_a_message_taken_without_acknowledging_is_never_handed_over_again() -> None:
    client, _ = open_client()
    feed(client, push("m-1"), now=1.0)
    client.take_messages(acknowledge=False)
    step(client)
    feed(client, push("m-1"), now=2.0)

    assert step(client).of(MessageReceived) == []
    assert client.take_messages() == []
    assert client.counters.duplicate_pushes == 1


def test_a_repush_of_an_unacknowledged_message_is_acknowledged_only_with_it() -> None:
    client, _ = open_client()
    feed(client, push("m-1", client_message_id="c-1"), now=1.0)
    [taken] = client.take_messages(acknowledge=False)
    feed(client, push("m-1", client_message_id="c-1"), now=1.1)  # pushed again
    feed(client, push("m-9", client_message_id="c-1"), now=1.2)  # stored again: a new row
    assert _acks(client) == []

    client.acknowledge(taken)

    assert _acks(client) == [("c-1", "m-1"), ("c-1", "m-9")]


def test_a_message_acknowledged_while_offline_is_acknowledged_after_the_next_hello_ack() -> None:
    client, transport_id = open_client()
    feed(client, push("m-1"), now=1.0)
    [taken] = client.take_messages(acknowledge=False)
    client.transport_closed(transport_id, now=2.0, code=None)
    client.acknowledge(taken)
    assert _acks(client) == []

    _, _, s = reconnect(client)

    assert [(a.client_message_id, a.broker_message_id) for a in s.frames_of(ClientAck)] == [
        (None, "m-1")
    ]


def test_acknowledging_a_message_twice_is_an_error_that_changes_nothing() -> None:
    client, _ = open_client()
    feed(client, push("m-1"), now=1.0)
    [taken] = client.take_messages(acknowledge=False)
    client.acknowledge(taken)

    assert_misuse_changes_nothing(client, lambda: client.acknowledge(taken))


def test_acknowledging_a_message_taken_with_its_acknowledgement_is_an_error() -> None:
    client, _ = open_client()
    feed(client, push("m-1"), now=1.0)
    [taken] = client.take_messages()

    with pytest.raises(LocalProtocolError, match="already acknowledged"):
        client.acknowledge(taken)


def test_acknowledging_a_message_still_waiting_in_the_inbox_is_an_error() -> None:
    elsewhere = _held_elsewhere("m-1")
    client, _ = open_client()
    feed(client, push("m-1"), now=1.0)

    with pytest.raises(LocalProtocolError, match="not taken yet"):
        client.acknowledge(elsewhere)
    assert client.inbox_size == 1


def test_acknowledging_a_message_this_connection_never_had_is_an_error() -> None:
    elsewhere = _held_elsewhere("m-1")
    client, _ = open_client()

    assert_misuse_changes_nothing(client, lambda: client.acknowledge(elsewhere))


def test_acknowledging_another_connections_copy_of_a_message_it_holds_too_is_an_error() -> None:
    # Two clients of one process that both took the same broadcast.
    elsewhere = _held_elsewhere("m-1")
    client, _ = open_client()
    feed(client, push("m-1"), now=1.0)
    [mine] = client.take_messages(acknowledge=False)

    assert_misuse_changes_nothing(client, lambda: client.acknowledge(elsewhere))
    client.acknowledge(mine)


def test_acknowledging_what_is_not_a_message_is_an_error() -> None:
    client, _ = open_client()

    assert_misuse_changes_nothing(client, lambda: client.acknowledge("m-1"))  # type: ignore[arg-type]


def test_a_message_taken_without_acknowledging_frees_its_place_in_the_inbox() -> None:
    # The application is using it, and may wait on the broker meanwhile (a
    # peer list, the ack of a reply): the socket must be read again.
    client, _ = open_client(ClientOptions(inbox_limit=2))
    feed(client, push("m-0"), now=1.0)
    feed(client, push("m-1"), now=1.0)
    assert client.reading_paused

    client.take_messages(1, acknowledge=False)

    assert not client.reading_paused


def test_holding_as_many_unacknowledged_messages_as_the_window_has_room_for_stops_reading() -> None:
    # The window keeps dedupe_window - inbox_limit keys for messages held.
    client, _ = open_client(ClientOptions(inbox_limit=2, dedupe_window=5))
    held = []
    for i in range(3):
        feed(client, push(f"m-{i}"), now=1.0)
        assert not client.reading_paused
        held.extend(client.take_messages(acknowledge=False))
    assert client.unacknowledged == 3
    assert client.reading_paused

    client.acknowledge(held[0])

    assert not client.reading_paused


def test_messages_held_unacknowledged_take_no_room_from_the_keys_handed_over() -> None:
    # A is re-pushed (its ack lost with the link) after 3 newer keys; the
    # window of 8 remembers it however many messages are held.
    client, transport_id = open_client(ClientOptions(inbox_limit=2, dedupe_window=8))
    for i in range(5):
        feed(client, push(f"held-{i}"), now=1.0)
        client.take_messages(acknowledge=False)
    feed(client, push("A"), now=1.0)
    client.take_messages()
    for later in ("B", "C", "D"):
        feed(client, push(later), now=1.0)
        client.take_messages()
    step(client)
    client.transport_closed(transport_id, now=2.0, code=1006)
    reconnect(client)

    feed(client, push("A"), now=100.0)

    assert step(client).of(MessageReceived) == []


def test_a_key_handed_over_just_now_is_remembered_past_one_read_of_many_pushes() -> None:
    client, _ = open_client(ClientOptions(inbox_limit=2, dedupe_window=4))
    feed(client, push("held"), now=1.0)
    client.take_messages(acknowledge=False)
    for message_id in ("A", "B", "C", "D"):  # one read of the socket, past the pause
        feed(client, push(message_id), now=1.0)
    client.take_messages(1)  # A, acknowledged
    step(client)

    feed(client, push("A"), now=1.0)  # the broker had not read the ack yet

    assert step(client).of(MessageReceived) == []


def test_liveness_is_suspended_while_unacknowledged_messages_stop_the_reading() -> None:
    client, _ = open_client(ClientOptions(inbox_limit=1, dedupe_window=2))
    feed(client, push("m-0"), now=1.0)
    [taken] = client.take_messages(acknowledge=False)
    client.handle_timer(1000.0)  # long past the liveness timeout: the silence is ours
    assert client.reading_paused
    assert step(client).frames_of(ClientAck) == []

    client.acknowledge(taken)
    client.handle_timer(1001.0)

    deadline = client.next_deadline()
    assert deadline is not None and deadline > 1001.0
    assert not client.reconnect_pending


def test_the_dedupe_window_never_forgets_a_message_taken_unacknowledged() -> None:
    client, _ = open_client(ClientOptions(inbox_limit=2, dedupe_window=4))
    feed(client, push("kept"), now=1.0)
    [kept] = client.take_messages(acknowledge=False)
    for i in range(8):  # more keys than the window holds, each taken at once
        feed(client, push(f"m-{i}"), now=1.0)
        client.take_messages()
    step(client)
    feed(client, push("kept"), now=2.0)  # the broker pushes it again

    assert step(client).of(MessageReceived) == []
    client.acknowledge(kept)
    assert _acks(client) == [(None, "kept")]


def _open_recording(lines: list[str]) -> RecordingConnection:
    """A recording connection, open, its records appended to ``lines``."""
    config = ClientConfig(
        url="ws://127.0.0.1:7900/ws",
        mesh_id="mesh",
        member_id="member",
        signer=FakeSigner(),
        session_id="recorded",
    )
    client = RecordingConnection(
        config, rng=random.Random(1), sink=lambda record: lines.append(json.dumps(record))
    )
    client.connect(0.0)
    transport_id = step(client).open_transport_id()
    client.transport_opened(transport_id, now=0.0, wall_time_ms=1_795_738_827_449)
    feed(client, {"type": "hello_ack", "presenceId": "p"}, now=0.0)
    return client


def _replays_the_same(lines: list[str], tmp_path: Path) -> None:
    path = tmp_path / "recording.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = replay(load(path))
    assert result.same, result.difference


def test_a_recording_with_acknowledgements_replays_to_the_same_events(tmp_path: Path) -> None:
    lines: list[str] = []
    client = _open_recording(lines)
    feed(client, push("m-1"), now=1.0)
    client.drain_events()
    [taken] = client.take_messages(acknowledge=False)
    client.acknowledge(taken)
    with pytest.raises(LocalProtocolError):
        client.acknowledge(taken)

    _replays_the_same(lines, tmp_path)
    assert [r.get("in") for r in map(json.loads, lines)][-3:] == [
        "take_messages",
        "acknowledge",
        "acknowledge",
    ]


def test_a_recorded_refusal_of_another_connections_copy_replays_as_a_refusal(
    tmp_path: Path,
) -> None:
    elsewhere = _held_elsewhere("m-1")
    lines: list[str] = []
    client = _open_recording(lines)
    feed(client, push("m-1"), now=1.0)
    client.drain_events()
    [mine] = client.take_messages(acknowledge=False)
    with pytest.raises(LocalProtocolError):
        client.acknowledge(elsewhere)
    client.acknowledge(mine)

    _replays_the_same(lines, tmp_path)


def test_a_message_left_unacknowledged_is_not_acknowledged_when_the_connection_closes() -> None:
    client, _ = open_client()
    feed(client, push("m-1"), now=1.0)
    client.take_messages(acknowledge=False)

    client.close(now=2.0)

    assert step(client).frames_of(ClientAck) == []
