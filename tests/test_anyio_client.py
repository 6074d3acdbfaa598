"""The anyio client against the reference broker (and scripted brokers) on
loopback sockets, on asyncio and on trio."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from anyio_helpers import (
    FAST,
    MESH,
    WsPeer,
    answer_hello,
    anyio_backend,
    eventually,
    fake_broker,
    join,
    largest_body,
    make_broker,
    member,
)

from meshproto import (
    ClientOptions,
    Closed,
    ConnectionClosedError,
    ConnectionState,
    Event,
    LocalProtocolError,
    MessageReceived,
    ReconnectScheduled,
    SendError,
    encode,
)
from meshproto_anyio import BrokerServer, Client, running_broker
from meshproto_ws import CLIENT_MAX_MESSAGE_BYTES
from meshproto_ws import Closed as WsClosed

pytestmark = pytest.mark.anyio
__all__ = ["anyio_backend"]

OPEN = ConnectionState.OPEN


async def test_send_is_acked_and_pushed_to_the_target() -> None:
    async with (
        running_broker(make_broker()) as server,
        join(server.url, "a") as a,
        join(server.url, "b") as b,
    ):
        with anyio.fail_after(5):
            await a.wait_state(OPEN)
            await b.wait_state(OPEN)
            message_id = await a.send(b.public_key, "hello b", "now")
            received = await anext(b.messages())
    assert isinstance(received, MessageReceived)
    assert received.message_id == message_id
    assert received.text == "hello b"
    assert received.sender_pubkey == a.public_key
    assert b.counters.frames_in >= 2


async def test_sends_from_many_tasks_in_one_turn_arrive_in_the_order_they_were_made() -> None:
    # Every task runs in the same loop turn: on asyncio the first send leaves
    # at once and the rest in one pass at the end of the turn.
    order: list[str] = []

    async def send(client: Client, target: str, text: str) -> None:
        order.append(text)
        await client.send(target, text, "now")

    async with (
        running_broker(make_broker()) as server,
        join(server.url, "a") as a,
        join(server.url, "b") as b,
    ):
        with anyio.fail_after(5):
            await a.wait_state(OPEN)
            await b.wait_state(OPEN)
            async with anyio.create_task_group() as tasks:
                for index in range(8):  # within the broker's burst of 10
                    tasks.start_soon(send, a, b.public_key, f"message {index}")
            received: list[str] = []
            async for message in b.messages():
                assert isinstance(message, MessageReceived)
                received.append(message.text)
                if len(received) == len(order):
                    break
    assert received == order
    assert len(set(order)) == 8


async def test_a_send_whose_wait_was_cancelled_is_still_delivered_and_the_client_goes_on() -> None:
    async with (
        running_broker(make_broker()) as server,
        join(server.url, "a") as a,
        join(server.url, "b") as b,
    ):
        with anyio.fail_after(5):
            await a.wait_state(OPEN)
            await b.wait_state(OPEN)
            with anyio.CancelScope() as scope:
                scope.cancel()  # the wait for the ack is cancelled before the ack comes
                await a.send(b.public_key, "cancelled wait", "now")
            assert scope.cancelled_caught
            later_id = await a.send(b.public_key, "after it", "now")  # the ack settles no wait
            inbox = b.messages()
            first, second = await anext(inbox), await anext(inbox)
            assert a.state is OPEN  # settling the cancelled wait cost the client nothing
    assert isinstance(first, MessageReceived) and first.text == "cancelled wait"
    assert isinstance(second, MessageReceived) and second.text == "after it"
    assert second.message_id == later_id


async def test_broadcast_reaches_everyone_else() -> None:
    async with (
        running_broker(make_broker()) as server,
        join(server.url, "a") as a,
        join(server.url, "b") as b,
        join(server.url, "c") as c,
    ):
        with anyio.fail_after(5):
            for client in (a, b, c):
                await client.wait_state(OPEN)
            message_id = await a.send("*", "to all")
            for client in (b, c):
                received = await anext(client.messages())
                assert isinstance(received, MessageReceived)
                assert (received.message_id, received.text) == (message_id, "to all")


async def test_sends_made_before_the_handshake_wait_and_go_out() -> None:
    async with running_broker(make_broker()) as server, join(server.url, "a") as a:
        with anyio.fail_after(5):
            # No wait for OPEN: the send waits in the outbox for hello_ack.
            message_id = await a.send("*", "early")
    assert len(message_id) == 32


async def test_held_message_is_delivered_when_the_receiver_becomes_idle() -> None:
    async with (
        running_broker(make_broker()) as server,
        join(server.url, "a") as a,
        join(server.url, "b") as b,
    ):
        with anyio.fail_after(5):
            await a.wait_state(OPEN)
            await b.wait_state(OPEN)
            await b.set_status("working")
            await b.list_peers()  # a round trip: the status is in effect at the broker
            held_id = await a.send(b.public_key, "later", "next")
            inbox = b.messages()
            with anyio.move_on_after(0.3) as waited:
                await anext(inbox)
            assert waited.cancelled_caught, "a 'next' message reached a working receiver"
            urgent_id = await a.send(b.public_key, "now!", "now")
            urgent = await anext(inbox)
            assert urgent.message_id == urgent_id
            await b.set_status("idle")
            held = await anext(inbox)
            assert held.message_id == held_id
            assert isinstance(held, MessageReceived) and held.text == "later"


async def test_direct_message_to_an_offline_member_is_delivered_when_it_connects() -> None:
    async with running_broker(make_broker("b")) as server:
        async with join(server.url, "a") as a:
            with anyio.fail_after(5):
                await a.wait_state(OPEN)
                message_id = await a.send(member("b").pubkey, "while you were out")
        async with join(server.url, "b") as b:
            with anyio.fail_after(5):
                received = await anext(b.messages())
    assert received.message_id == message_id
    assert isinstance(received, MessageReceived) and received.text == "while you were out"


async def test_a_message_handed_over_unacknowledged_comes_back_to_the_next_session() -> None:
    async with running_broker(make_broker("b")) as server:
        async with join(server.url, "a") as a:
            with anyio.fail_after(5):
                await a.wait_state(OPEN)
                message_id = await a.send(member("b").pubkey, "use me first")
        async with join(server.url, "b") as b:
            with anyio.fail_after(5):
                first = await anext(b.messages(acknowledge=False))
        async with join(server.url, "b") as b:  # the first one failed before acknowledging
            with anyio.fail_after(5):
                again = await anext(b.messages(acknowledge=False))
    assert first.message_id == again.message_id == message_id


@asynccontextmanager
async def full_with_two(server: BrokerServer) -> AsyncIterator[Client]:
    """``b`` joined with an inbox of two, full of the two messages ``a`` left for it."""
    async with join(server.url, "a") as a:
        with anyio.fail_after(5):
            await a.wait_state(OPEN)
            for index in range(2):
                await a.send(member("b").pubkey, f"stored {index}")
    full_at_two = dataclasses.replace(FAST, inbox_limit=2)
    async with join(server.url, "b", options=full_at_two) as b:
        with anyio.fail_after(5):
            await eventually(lambda: b._core.reading_paused)  # both arrived: full
        yield b


async def test_a_request_made_while_using_a_message_taken_from_a_full_inbox_is_answered() -> None:
    async with running_broker(make_broker("b")) as server, full_with_two(server) as b:
        with anyio.fail_after(5):
            message = await anext(b.messages(acknowledge=False))
            peers = await b.list_peers()  # while the message is in use
            await b.acknowledge(message)
    assert isinstance(message, MessageReceived) and message.text == "stored 0"
    assert isinstance(peers, tuple)


async def test_a_socket_opened_while_the_inbox_is_full_is_not_read_until_room_is_made() -> None:
    async with running_broker(make_broker("b")) as server, full_with_two(server) as b:
        with anyio.fail_after(5):
            (first,) = b._links
            assert server.abort_connections() == 1
            # the reconnect's socket opens with the inbox still full: it is not read
            await eventually(lambda: any(socket_id != first for socket_id in b._links))
            (second,) = (link for socket_id, link in b._links.items() if socket_id != first)
            assert second.reading_paused
            taken = [await anext(b.messages()) for _ in range(2)]  # room: it is read
            await eventually(lambda: b.state is OPEN and not second.reading_paused)
    assert [getattr(m, "text", None) for m in taken] == ["stored 0", "stored 1"]


async def test_an_acknowledged_message_is_forgotten_by_the_broker() -> None:
    broker = make_broker("b")
    async with running_broker(broker) as server:
        async with join(server.url, "a") as a:
            with anyio.fail_after(5):
                await a.wait_state(OPEN)
                await a.send(member("b").pubkey, "use me first")
        async with join(server.url, "b") as b:
            with anyio.fail_after(5):
                message = await anext(b.messages(acknowledge=False))
            assert broker.store.count_for(MESH, member("b").pubkey) == 1
            await b.acknowledge(message)
            await eventually(lambda: broker.store.count_for(MESH, member("b").pubkey) == 0)
            with pytest.raises(LocalProtocolError, match="already acknowledged"):
                await b.acknowledge(message)


async def test_client_reconnects_after_the_broker_drops_the_connection() -> None:
    events: list[Event] = []
    async with (
        running_broker(make_broker()) as server,
        join(server.url, "a", events=events) as a,
        join(server.url, "b") as b,
    ):
        with anyio.fail_after(5):
            await a.wait_state(OPEN)
            await b.wait_state(OPEN)
            assert server.abort_connections() == 2
            await eventually(lambda: a.counters.reconnects >= 1 and a.state is OPEN)
            await eventually(lambda: b.counters.reconnects >= 1 and b.state is OPEN)
            message_id = await a.send(b.public_key, "after the drop", "now")
            received = await anext(b.messages())
    assert received.message_id == message_id
    causes = [e.cause for e in events if isinstance(e, ReconnectScheduled)]
    assert causes and "1006" in causes[0]


async def test_client_gives_up_on_a_silent_broker_after_the_liveness_timeout() -> None:
    hello_acked: list[float] = []

    async def silent(peer: WsPeer) -> None:
        await answer_hello(peer)
        hello_acked.append(anyio.current_time())
        await anyio.sleep_forever()  # reads nothing, answers nothing

    events: list[Event] = []
    options = ClientOptions(
        ping_interval=0.2,
        liveness_timeout=0.5,
        backoff=FAST.backoff,
    )
    async with (
        fake_broker(silent) as (url, accepted),
        join(url, "a", options=options, events=events),
    ):
        with anyio.fail_after(5):
            await eventually(lambda: any(isinstance(e, ReconnectScheduled) for e in events))
            gave_up = anyio.current_time()
            await eventually(lambda: len(accepted) >= 2)  # and it connected again
    (scheduled, *_) = [e for e in events if isinstance(e, ReconnectScheduled)]
    assert "nothing heard for 0.5 s" in scheduled.cause
    assert 0.45 <= gave_up - hello_acked[0] < 2.0


async def test_push_over_the_client_cap_closes_with_1009_and_reconnects() -> None:
    seen: list[WsClosed] = []

    async def oversized(peer: WsPeer) -> None:
        await answer_hello(peer)
        if len(seen) == 0:
            await peer.send_text('{"type":"push","pad":"' + "x" * CLIENT_MAX_MESSAGE_BYTES + '"}')
        for _ in range(100):
            event = await peer.next_event()
            if isinstance(event, WsClosed):
                seen.append(event)
                return

    # The broker is still writing the 8 MiB the client refused when the client
    # closes: it waits for the broker's echo (reading past the rest unread)
    # rather than resetting the socket under that write.
    async with (
        fake_broker(oversized) as (url, accepted),
        join(url, "a", close_timeout=10.0) as a,
    ):
        with anyio.fail_after(5):
            # Until the broker has seen the first socket close: leaving sooner
            # would reset it under that write.
            await eventually(lambda: len(accepted) >= 2 and a.state is OPEN and len(seen) >= 1)
    assert seen[0].code == 1009 and seen[0].by_peer


async def test_largest_legal_send_is_delivered_whole() -> None:
    """A send of the largest body the client accepts makes a push over 64 KiB
    (the envelope grows); the receiving client must still take it."""
    size = largest_body("*")
    async with (
        running_broker(make_broker()) as server,
        join(server.url, "a") as a,
        join(server.url, "b") as b,
    ):
        with anyio.fail_after(10):
            await a.wait_state(OPEN)
            await b.wait_state(OPEN)
            message_id = await a.send("*", "y" * size)
            received = await anext(b.messages())
    assert received.message_id == message_id
    assert isinstance(received, MessageReceived) and received.body == b"y" * size
    assert len(encode(received.push)) > 65_536


async def test_body_over_64k_is_refused_before_sending() -> None:
    async with running_broker(make_broker()) as server, join(server.url, "a") as a:
        with pytest.raises(LocalProtocolError):
            await a.send("*", "x" * 65_537)
        with pytest.raises(LocalProtocolError):
            await a.send("*", "x" * 60_000)  # fits as a body, not once base64-encoded


async def test_second_client_on_the_same_session_replaces_the_first() -> None:
    async with (
        running_broker(make_broker()) as server,
        join(server.url, "b") as b,
        join(server.url, "a", session_id="shared") as first,
    ):
        with anyio.fail_after(5):
            await first.wait_state(OPEN)
            async with join(server.url, "a", session_id="shared") as second:
                await second.wait_state(OPEN)
                await first.wait_state(ConnectionState.CLOSED)
                assert first.closed == Closed("broker refused: session_replaced", 1000)
                with pytest.raises(ConnectionClosedError) as refused:
                    await first.send("*", "still here?")
                assert refused.value.code == 1000
                with pytest.raises(ConnectionClosedError):
                    await first.list_peers()
                assert [m async for m in first.messages()] == []
                await b.wait_state(OPEN)
                message_id = await b.send(second.public_key, "to the new one", "now")
                received = await anext(second.messages())
                assert received.message_id == message_id
                assert second.state is OPEN


async def test_list_peers_and_status() -> None:
    async with (
        running_broker(make_broker()) as server,
        join(server.url, "a") as a,
        join(server.url, "b") as b,
    ):
        with anyio.fail_after(5):
            await a.wait_state(OPEN)
            await b.wait_state(OPEN)
            await b.set_status("dnd")
            await b.set_summary("reviewing")
            await b.list_peers()
            peers = await a.list_peers()
    by_name = {peer.display_name: peer for peer in peers}
    assert {"a", "b"} <= set(by_name)
    assert by_name["b"].status == "dnd"
    assert by_name["b"].summary == "reviewing"


async def test_aclose_fails_pending_sends_and_later_calls_raise() -> None:
    async def mute(peer: WsPeer) -> None:
        await answer_hello(peer)
        for _ in range(100):
            if isinstance(await peer.next_event(), WsClosed):
                return

    async with fake_broker(mute) as (url, _), join(url, "a") as a:
        with anyio.fail_after(5):
            await a.wait_state(OPEN)
            failures: list[SendError] = []

            async def send_and_record() -> None:
                try:
                    await a.send("*", "never acked")
                except SendError as exc:
                    failures.append(exc)

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(send_and_record)
                await anyio.sleep(0.05)
                await a.aclose()
            assert failures[0].reason.code == "closed"
            assert a.state is ConnectionState.CLOSED
            with pytest.raises(ConnectionClosedError):
                await a.send("*", "after close")
            with pytest.raises(ConnectionClosedError):
                await a.wait_state(OPEN)
            assert await a.wait_state(ConnectionState.CLOSED) is ConnectionState.CLOSED


async def test_permanent_refusal_closes_the_client() -> None:
    async def refuse(peer: WsPeer) -> None:
        await peer.next_frame()
        await peer.send_json({"type": "error", "code": "unauthorized", "message": "no"})
        peer.ws.close(1008, "unauthorized")
        await peer.flush()
        await peer.next_event()

    async with fake_broker(refuse) as (url, accepted), join(url, "a") as a:
        with anyio.fail_after(5):
            await a.wait_state(ConnectionState.CLOSED)
        assert a.closed is not None and "unauthorized" in a.closed.reason
        assert len(accepted) == 1


async def test_unreachable_broker_is_retried_without_hanging() -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    await listener.aclose()  # nothing listens there any more
    events: list[Event] = []
    started = time.monotonic()
    async with join(f"ws://127.0.0.1:{port}/ws", "a", events=events) as a:
        with anyio.fail_after(5):
            await eventually(lambda: a.counters.reconnects >= 3)
        assert a.state is not OPEN
    assert time.monotonic() - started < 5
    assert any("could not connect" in e.cause for e in events if isinstance(e, ReconnectScheduled))
    causes = {e.cause for e in events if isinstance(e, ReconnectScheduled)}
    assert all(cause.endswith("Connection refused)") for cause in causes), causes


async def test_an_unresolvable_broker_host_names_the_resolver_error() -> None:
    events: list[Event] = []
    async with join("ws://nonexistent.invalid:7900/ws", "a", events=events) as a:
        with anyio.fail_after(5):
            await eventually(lambda: a.counters.reconnects >= 1)
    causes = [e.cause for e in events if isinstance(e, ReconnectScheduled)]
    assert causes and "All connection attempts failed" not in causes[0], causes
    assert "could not connect to ws://nonexistent.invalid:7900/ws: " in causes[0]


async def test_exceptions_in_the_body_propagate_unwrapped() -> None:
    async with running_broker(make_broker()) as server:
        with pytest.raises(KeyError):
            async with join(server.url, "a"):
                raise KeyError("mine")


async def test_bad_url_is_refused_at_once() -> None:
    with pytest.raises(LocalProtocolError):
        async with join("http://127.0.0.1:1/ws", "a"):
            pass  # pragma: no cover


def test_importing_without_anyio_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['anyio'] = None\n"
        "try:\n    import meshproto_anyio\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'meshproto[anyio]'" in out.stdout


def test_the_client_works_under_a_plain_anyio_run() -> None:
    """Outside pytest's anyio runner, which declares the event loop for every
    callback: asyncio calls a socket's protocol outside any task, and the
    client must still read, write and reconnect there."""

    async def main() -> None:
        async with (
            running_broker(make_broker(), port=0) as server,
            join(server.url, "a") as a,
            join(server.url, "b") as b,
        ):
            with anyio.fail_after(5):
                await a.wait_state(ConnectionState.OPEN)
                await b.wait_state(ConnectionState.OPEN)
                message_id = await a.send(b.public_key, "hi", "now")
                received = await anext(b.messages())
                assert received.message_id == message_id

    anyio.run(main, backend="asyncio")
