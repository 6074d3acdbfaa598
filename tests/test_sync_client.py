"""The blocking client against the reference broker (served in a background
thread) and scripted brokers, on loopback sockets: the anyio suite's
behaviours, and the two clients talking to each other."""

from __future__ import annotations

import ssl
import subprocess
import sys
from collections.abc import Iterator

import anyio
import pytest
from anyio.from_thread import BlockingPortal
from anyio_helpers import (
    MESH,
    WsPeer,
    answer_hello,
    fake_broker,
    largest_body,
    make_broker,
    member,
    tls,
)
from anyio_helpers import join as anyio_join
from sync_helpers import (
    ServedBroker,
    broker,
    eventually,
    in_portal,
    join,
    no_io_thread_outlives_the_test,
    portal,
    served,
)

from meshproto import (
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
from meshproto_anyio import Client as AnyioClient
from meshproto_sync import Client, Message
from meshproto_ws import CLIENT_MAX_MESSAGE_BYTES
from meshproto_ws import Closed as WsClosed

__all__ = ["broker", "no_io_thread_outlives_the_test", "portal", "tls"]

OPEN = ConnectionState.OPEN


def open_all(*clients: Client) -> None:
    for client in clients:
        client.wait_state(OPEN, timeout=5)


def test_send_is_acked_and_pushed_to_the_target(broker: ServedBroker) -> None:
    with join(broker.url, "a") as a, join(broker.url, "b") as b:
        open_all(a, b)
        message_id = a.send(b.public_key, "hello b", "now", timeout=5)
        received = b.receive(timeout=5)
    assert isinstance(received, MessageReceived)
    assert received.message_id == message_id
    assert received.text == "hello b"
    assert received.sender_pubkey == a.public_key
    assert b.counters.frames_in >= 2


def test_broadcast_reaches_everyone_else(broker: ServedBroker) -> None:
    with join(broker.url, "a") as a, join(broker.url, "b") as b, join(broker.url, "c") as c:
        open_all(a, b, c)
        message_id = a.send("*", "to all", timeout=5)
        for client in (b, c):
            received = client.receive(timeout=5)
            assert isinstance(received, MessageReceived)
            assert (received.message_id, received.text) == (message_id, "to all")


def test_sends_made_before_the_handshake_wait_and_go_out(broker: ServedBroker) -> None:
    with join(broker.url, "a") as a:
        # No wait for OPEN: the send waits in the outbox for hello_ack.
        message_id = a.send("*", "early", timeout=5)
    assert len(message_id) == 32


def test_pipelined_sends_resolve_their_futures_in_any_thread(broker: ServedBroker) -> None:
    with join(broker.url, "a") as a, join(broker.url, "b") as b:
        open_all(a, b)
        futures = [a.send_nowait(b.public_key, f"n{i}", "now") for i in range(8)]
        ids = [future.result(timeout=5) for future in futures]
        assert not futures[0].cancel(), "a send is never withdrawn"
        received = [b.receive(timeout=5) for _ in ids]
    assert [m.message_id for m in received] == ids
    assert [m.text for m in received if isinstance(m, MessageReceived)] == [
        f"n{i}" for i in range(8)
    ]


def test_held_message_is_delivered_when_the_receiver_becomes_idle(broker: ServedBroker) -> None:
    with join(broker.url, "a") as a, join(broker.url, "b") as b:
        open_all(a, b)
        b.set_status("working")
        b.list_peers(timeout=5)  # a round trip: the status is in effect at the broker
        held_id = a.send(b.public_key, "later", "next", timeout=5)
        with pytest.raises(TimeoutError):
            b.receive(timeout=0.3)  # a 'next' message must not reach a working receiver
        urgent_id = a.send(b.public_key, "now!", "now", timeout=5)
        assert b.receive(timeout=5).message_id == urgent_id
        b.set_status("idle")
        held = b.receive(timeout=5)
    assert held.message_id == held_id
    assert isinstance(held, MessageReceived) and held.text == "later"


def test_direct_message_to_an_offline_member_is_delivered_when_it_connects(
    portal: BlockingPortal,
) -> None:
    with served(portal, make_broker("b")) as server:
        with join(server.url, "a") as a:
            a.wait_state(OPEN, timeout=5)
            message_id = a.send(member("b").pubkey, "while you were out", timeout=5)
        with join(server.url, "b") as b:
            received = b.receive(timeout=5)
    assert received.message_id == message_id
    assert isinstance(received, MessageReceived) and received.text == "while you were out"


def test_a_message_received_unacknowledged_comes_back_to_the_next_session(
    portal: BlockingPortal,
) -> None:
    with served(portal, make_broker("b")) as server:
        with join(server.url, "a") as a:
            a.wait_state(OPEN, timeout=5)
            message_id = a.send(member("b").pubkey, "use me first", timeout=5)
        with join(server.url, "b") as b:
            first = b.receive(timeout=5, acknowledge=False)
        with join(server.url, "b") as b:  # the first one failed before acknowledging
            again = b.receive(timeout=5, acknowledge=False)
    assert first.message_id == again.message_id == message_id


def test_an_acknowledged_message_is_forgotten_by_the_broker(portal: BlockingPortal) -> None:
    machine = make_broker("b")
    with served(portal, machine) as server:
        with join(server.url, "a") as a:
            a.wait_state(OPEN, timeout=5)
            a.send(member("b").pubkey, "use me first", timeout=5)
        with join(server.url, "b") as b:
            message = b.receive(timeout=5, acknowledge=False)
            assert machine.store.count_for(MESH, member("b").pubkey) == 1
            b.acknowledge(message)
            eventually(lambda: machine.store.count_for(MESH, member("b").pubkey) == 0)
            with pytest.raises(LocalProtocolError, match="already acknowledged"):
                b.acknowledge(message)


def test_list_peers_status_and_summary(broker: ServedBroker) -> None:
    with join(broker.url, "a") as a, join(broker.url, "b") as b:
        open_all(a, b)
        b.set_status("dnd")
        b.set_summary("reviewing")
        b.list_peers(timeout=5)
        peers = a.list_peers(timeout=5)
    by_name = {peer.display_name: peer for peer in peers}
    assert {"a", "b"} <= set(by_name)
    assert by_name["b"].status == "dnd"
    assert by_name["b"].summary == "reviewing"


def test_system_messages_report_a_peer_joining(broker: ServedBroker) -> None:
    with join(broker.url, "a") as a:
        a.wait_state(OPEN, timeout=5)
        with join(broker.url, "b") as b:
            b.wait_state(OPEN, timeout=5)
            joined = a.receive_system(timeout=5)
    assert joined.event == "peer_joined"
    assert joined.data.get("name") == "b"
    assert list(a.system_messages()) == []  # closed: the iterator ends


# --- sizes and limits ----------------------------------------------------------------


def test_largest_legal_send_is_delivered_whole(broker: ServedBroker) -> None:
    """The push of the largest body the client accepts is over 64 KiB; the receiver takes it."""
    size = largest_body("*")
    with join(broker.url, "a") as a, join(broker.url, "b") as b:
        open_all(a, b)
        message_id = a.send("*", "y" * size, timeout=10)
        received = b.receive(timeout=10)
    assert received.message_id == message_id
    assert isinstance(received, MessageReceived) and received.body == b"y" * size
    assert len(encode(received.push)) > 65_536


def test_body_over_64k_is_refused_before_sending(broker: ServedBroker) -> None:
    with join(broker.url, "a") as a:
        with pytest.raises(LocalProtocolError):
            a.send("*", "x" * 65_537, timeout=5)
        with pytest.raises(LocalProtocolError):
            a.send_nowait("*", "x" * 60_000)  # fits as a body, not once base64-encoded
        with pytest.raises(LocalProtocolError):
            a.send("not a target", "x", timeout=5)


def test_push_over_the_client_cap_closes_with_1009_and_reconnects(
    portal: BlockingPortal,
) -> None:
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
    with (
        in_portal(portal, fake_broker(oversized)) as (url, accepted),
        join(url, "a", close_timeout=10.0) as a,
    ):
        # Until the broker has seen the first socket close: leaving sooner would
        # reset it under that write.
        eventually(lambda: len(accepted) >= 2 and a.state is OPEN and len(seen) >= 1)
    assert seen[0].code == 1009 and seen[0].by_peer


def test_rate_limit_refuses_sends_over_the_burst(portal: BlockingPortal) -> None:
    with (
        served(portal, make_broker(rate_burst=3, rate_per_minute=60)) as server,
        join(server.url, "a") as a,
    ):
        a.wait_state(OPEN, timeout=5)
        results: list[str | SendError] = []
        for index in range(6):
            try:
                results.append(a.send("*", f"message {index}", timeout=5))
            except SendError as exc:
                results.append(exc)
    accepted = [r for r in results if isinstance(r, str)]
    refused = [r for r in results if isinstance(r, SendError)]
    assert len(accepted) == 3 and results[:3] == accepted
    assert refused and all(e.reason.code == "rate_limited" and e.retryable for e in refused)


# --- refusals --------------------------------------------------------------------------


def test_second_client_on_the_same_session_replaces_the_first(broker: ServedBroker) -> None:
    with join(broker.url, "b") as b, join(broker.url, "a", session_id="shared") as first:
        first.wait_state(OPEN, timeout=5)
        with join(broker.url, "a", session_id="shared") as second:
            second.wait_state(OPEN, timeout=5)
            first.wait_state(ConnectionState.CLOSED, timeout=5)
            assert first.closed == Closed("broker refused: session_replaced", 1000)
            with pytest.raises(ConnectionClosedError) as refused:
                first.send("*", "still here?", timeout=5)
            assert refused.value.code == 1000
            with pytest.raises(ConnectionClosedError):
                first.list_peers(timeout=5)
            assert list(first.messages()) == []
            b.wait_state(OPEN, timeout=5)
            message_id = b.send(second.public_key, "to the new one", "now", timeout=5)
            assert second.receive(timeout=5).message_id == message_id
            assert second.state is OPEN


def test_permanent_refusal_closes_the_client(portal: BlockingPortal) -> None:
    async def refuse(peer: WsPeer) -> None:
        await peer.next_frame()
        await peer.send_json({"type": "error", "code": "unauthorized", "message": "no"})
        peer.ws.close(1008, "unauthorized")
        await peer.flush()
        await peer.next_event()

    with in_portal(portal, fake_broker(refuse)) as (url, accepted), join(url, "a") as a:
        a.wait_state(ConnectionState.CLOSED, timeout=5)
        assert a.closed is not None and "unauthorized" in a.closed.reason
        with pytest.raises(ConnectionClosedError):
            a.receive(timeout=5)
        assert len(accepted) == 1


def test_bad_url_is_refused_at_once() -> None:
    with pytest.raises(LocalProtocolError):
        join("http://127.0.0.1:1/ws", "a")


def test_exceptions_in_the_body_propagate_and_the_client_closes(broker: ServedBroker) -> None:
    with pytest.raises(KeyError), join(broker.url, "a") as a:
        raise KeyError("mine")
    assert a.state is ConnectionState.CLOSED


# --- with the anyio client --------------------------------------------------------------


async def anyio_next_message(client: AnyioClient) -> Message:
    with anyio.fail_after(5):
        return await anext(client.messages())


async def anyio_send(client: AnyioClient, target: str, body: str) -> str:
    with anyio.fail_after(5):
        return await client.send(target, body, "now")


async def anyio_wait_open(client: AnyioClient) -> None:
    with anyio.fail_after(5):
        await client.wait_state(OPEN)


def test_sync_and_anyio_clients_talk_through_one_broker(
    portal: BlockingPortal, broker: ServedBroker
) -> None:
    with in_portal(portal, anyio_join(broker.url, "async")) as other, join(broker.url, "s") as s:
        portal.call(anyio_wait_open, other)
        s.wait_state(OPEN, timeout=5)
        to_anyio = s.send(other.public_key, "from a thread", "now", timeout=5)
        received = portal.call(anyio_next_message, other)
        assert received.message_id == to_anyio
        assert isinstance(received, MessageReceived) and received.text == "from a thread"
        to_sync = portal.call(anyio_send, other, s.public_key, "from a task")
        answer = s.receive(timeout=5)
        assert answer.message_id == to_sync
        assert isinstance(answer, MessageReceived) and answer.text == "from a task"
        assert answer.sender_pubkey == other.public_key


# --- TLS ---------------------------------------------------------------------------------


@pytest.fixture
def tls_broker(
    portal: BlockingPortal, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> Iterator[ServedBroker]:
    broker = make_broker(rate_burst=1000, rate_per_minute=1e6)
    with served(portal, broker, ssl_context=tls[0]) as server:
        yield server


def test_wss_round_trip_and_reconnect(
    tls_broker: ServedBroker, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    client_context = tls[1]
    assert tls_broker.url.startswith("wss://127.0.0.1:")
    with (
        join(tls_broker.url, "a", ssl_context=client_context) as a,
        join(tls_broker.url, "b", ssl_context=client_context) as b,
    ):
        open_all(a, b)
        message_id = a.send(b.public_key, "over TLS " + "z" * 40_000, "now", timeout=5)
        received = b.receive(timeout=5)
        assert isinstance(received, MessageReceived) and received.message_id == message_id
        assert received.text == "over TLS " + "z" * 40_000
        bulk = [a.send_nowait(b.public_key, f"{i}" + "w" * 40_000, "now") for i in range(30)]
        bulk_ids = [future.result(timeout=10) for future in bulk]  # ~1.2 MB through TLS
        assert [b.receive(timeout=10).message_id for _ in bulk] == bulk_ids
        tls_broker.abort_connections()
        eventually(lambda: a.counters.reconnects >= 1 and a.state is OPEN)
        again = a.send(b.public_key, "again", "now", timeout=5)
        assert b.receive(timeout=5).message_id == again


def test_wss_with_an_untrusted_certificate_keeps_retrying(tls_broker: ServedBroker) -> None:
    events: list[Event] = []
    with join(tls_broker.url, "a", events=events) as a:
        eventually(lambda: a.counters.reconnects >= 2)
        assert a.state is not OPEN
    causes = [e.cause for e in events if isinstance(e, ReconnectScheduled)]
    assert any("CERTIFICATE_VERIFY_FAILED" in cause for cause in causes), causes


def test_wss_to_a_server_that_hangs_up_at_once_keeps_retrying(
    portal: BlockingPortal, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    async def hang_up(peer: WsPeer) -> None:
        return  # never reached: the TLS handshake fails first

    events: list[Event] = []
    with in_portal(portal, fake_broker(hang_up)) as (url, _):
        secure = url.replace("ws://", "wss://")
        with join(secure, "a", ssl_context=tls[1], events=events) as a:
            eventually(lambda: a.counters.reconnects >= 2)
    causes = [e.cause for e in events if isinstance(e, ReconnectScheduled)]
    # The plain server answers the ClientHello with an HTTP error: OpenSSL's
    # verdict on that reply is said as it is, as the anyio client says it
    # ("could not connect to URL: [SSL: WRONG_VERSION_NUMBER] ..."); a hang-up
    # before any reply names the handshake.
    assert causes and all("[SSL: " in cause or "TLS handshake" in cause for cause in causes), causes


def test_importing_without_wsproto_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['wsproto'] = None\n"
        "try:\n    import meshproto_sync\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'meshproto[sync]'" in out.stdout


def test_importing_meshproto_sync_does_not_import_anyio() -> None:
    code = "import sys, meshproto_sync; print(sorted(m for m in sys.modules if 'anyio' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
