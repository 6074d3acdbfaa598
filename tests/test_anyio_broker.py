"""The reference broker served over anyio: hostile and slow peers, limits, TLS.
Loopback sockets only, on asyncio and on trio."""

from __future__ import annotations

import errno
import socket
import ssl
from functools import partial

import anyio
import pytest
from anyio.abc import SocketAttribute, SocketStream
from anyio_helpers import (
    MESH,
    WsPeer,
    anyio_backend,
    eventually,
    hello_text,
    join,
    make_broker,
    member,
    tls,
)

from meshproto import ConnectionState, Event, MessageReceived, ReconnectScheduled, SendError
from meshproto_anyio import BrokerServer, ServerOptions, running_broker, serve_broker
from meshproto_ws import Closed, WsConnection, parse_ws_url

pytestmark = pytest.mark.anyio
__all__ = ["anyio_backend", "tls"]

OPEN = ConnectionState.OPEN


async def round_trip(sender_url: str, server: BrokerServer) -> None:
    """A fresh pair of clients can still talk through ``server``."""
    async with join(sender_url, "ping") as a, join(server.url, "pong") as b:
        with anyio.fail_after(5):
            await a.wait_state(OPEN)
            await b.wait_state(OPEN)
            message_id = await a.send(b.public_key, "still up?", "now")
            received = await anext(b.messages())
            assert received.message_id == message_id


async def read_until_eof(stream: SocketStream, limit: int = 1_000_000) -> bytes:
    data = bytearray()
    with anyio.fail_after(5):
        while len(data) < limit:
            try:
                data += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                break
    return bytes(data)


async def raw_connect(server: BrokerServer) -> SocketStream:
    return await anyio.connect_tcp("127.0.0.1", server.port)


# --- hostile input --------------------------------------------------------------------


async def test_garbage_instead_of_http_gets_400_and_the_broker_stays_up() -> None:
    async with running_broker(make_broker()) as server:
        stream = await raw_connect(server)
        await stream.send(b"\x16\x03\x01\x00\xff not http at all\r\n\r\n")
        answer = await read_until_eof(stream)
        assert answer.startswith(b"HTTP/1.1 400 ")
        await round_trip(server.url, server)
        await eventually(lambda: server.socket_count == 0)


async def test_paths_other_than_ws_get_404() -> None:
    async with running_broker(make_broker()) as server:
        stream = await raw_connect(server)
        ws = WsConnection.client(parse_ws_url(f"ws://127.0.0.1:{server.port}/admin"))
        await stream.send(ws.data_to_send())
        answer = await read_until_eof(stream)
        assert answer.startswith(b"HTTP/1.1 404 ")


async def test_bad_frames_close_with_1002_and_bad_json_gets_an_error_frame() -> None:
    async with running_broker(make_broker()) as server, join(server.url, "bystander") as c:
        with anyio.fail_after(5):
            await c.wait_state(OPEN)
            peer = await WsPeer.open(server.url)
            await peer.send_text("{this is not json")
            error = await peer.next_frame()
            assert error["type"] == "error"
            await peer.stream.send(b"\x81\x02hi")  # unmasked: clients must mask
            closed = await peer.next_event()
            assert isinstance(closed, Closed) and closed.code == 1002
            await peer.aclose()
            await round_trip(server.url, server)
            assert c.state is OPEN and c.counters.reconnects == 0


async def test_silent_socket_is_closed_after_the_handshake_timeout() -> None:
    options = ServerOptions(handshake_timeout=0.2)
    async with running_broker(make_broker(), options=options) as server:
        stream = await raw_connect(server)
        started = anyio.current_time()
        assert await read_until_eof(stream) == b""
        assert anyio.current_time() - started < 2


async def test_binary_message_is_refused_but_the_socket_stays_open() -> None:
    async with running_broker(make_broker()) as server:
        peer = await WsPeer.open(server.url)
        await peer.send_text(hello_text("raw", server.url))
        assert (await peer.next_frame())["type"] == "hello_ack"
        peer.ws.send_binary(b"\x00\x01")
        await peer.flush()
        assert (await peer.next_frame())["type"] == "error"
        await peer.send_json({"type": "list_peers", "_reqId": "r1"})
        assert (await peer.next_frame())["type"] == "peers_list"
        await peer.aclose()


# --- size limits ----------------------------------------------------------------------


async def test_frame_over_the_hard_cap_is_closed_with_1009() -> None:
    async with running_broker(make_broker()) as server:
        peer = await WsPeer.open(server.url)
        await peer.send_text("x" * (1_048_576 + 1))
        closed = await peer.next_event()
        assert isinstance(closed, Closed) and closed.code == 1009
        await peer.aclose()
        await round_trip(server.url, server)


async def test_payload_over_64k_is_refused_with_an_ack_and_the_socket_stays_open() -> None:
    async with running_broker(make_broker()) as server:
        peer = await WsPeer.open(server.url)
        await peer.send_text(hello_text("raw", server.url))
        assert (await peer.next_frame())["type"] == "hello_ack"
        await peer.send_json(
            {
                "type": "send",
                "id": "big",
                "targetSpec": "*",
                "priority": "next",
                "nonce": "A" * 32,
                "ciphertext": "A" * 70_000,
            }
        )
        ack = await peer.next_frame()
        assert ack["type"] == "ack" and ack["id"] == "big" and ack["queued"] is False
        assert ack["error"].startswith("payload too large")
        await peer.send_json({"type": "list_peers", "_reqId": "r1"})
        assert (await peer.next_frame())["type"] == "peers_list"
        await peer.aclose()


# --- fairness and limits ----------------------------------------------------------------


async def _stuck_peer(server: BrokerServer, name: str, *, tiny_window: bool = True) -> WsPeer:
    """A raw peer that stops reading after its hello (with a tiny receive window)."""
    stream = await raw_connect(server)
    if tiny_window:  # (reading through one later would crawl: 4 KiB per delayed ACK)
        raw_socket = stream.extra(SocketAttribute.raw_socket)
        raw_socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck = WsPeer(stream, WsConnection.client(parse_ws_url(server.url)))
    await stuck.flush()
    await stuck.next_event()
    await stuck.send_text(hello_text(name, server.url))
    assert (await stuck.next_frame())["type"] == "hello_ack"
    return stuck


async def test_slow_receiver_of_broadcasts_is_dropped_without_delaying_the_others() -> None:
    broker = make_broker(rate_burst=100_000, rate_per_minute=1e9)
    options = ServerOptions(max_send_buffer=128 * 1024)
    async with running_broker(broker, options=options) as server, join(server.url, "a") as a:
        stuck = await _stuck_peer(server, "stuck")
        with anyio.fail_after(20):
            await a.wait_state(OPEN)
            slowest = 0.0
            for _ in range(400):
                started = anyio.current_time()
                try:
                    await a.send("*", "z" * 40_000, "now")  # broadcasts have no push window
                except SendError:  # no_peer: the stuck receiver is gone already
                    break
                slowest = max(slowest, anyio.current_time() - started)
                if server.overflows:
                    break
            assert server.overflows == 1, "the stuck receiver was never dropped"
            assert slowest < 1.0, f"a send took {slowest:.2f} s while a peer was stuck"
            async with join(server.url, "c") as c:
                await c.wait_state(OPEN)
                message_id = await a.send(c.public_key, "unaffected", "now")
                received = await anext(c.messages())
                assert received.message_id == message_id
        await stuck.aclose()


async def test_direct_messages_to_a_receiver_that_stops_reading_wait_for_it() -> None:
    # Far more than its socket's buffers take: the push window holds the rest
    # in the store, so nothing overflows, and it all arrives once it reads.
    broker = make_broker(rate_burst=100_000, rate_per_minute=1e9, push_window=65_536)
    options = ServerOptions(max_send_buffer=256 * 1024)
    async with running_broker(broker, options=options) as server, join(server.url, "a") as a:
        stuck = await _stuck_peer(server, "stuck", tiny_window=False)
        with anyio.fail_after(30):
            await a.wait_state(OPEN)
            slowest = 0.0
            sent = []
            for i in range(300):  # 12 MB
                started = anyio.current_time()
                sent.append(await a.send(member("stuck").pubkey, f"{i:03d}" + "z" * 40_000, "now"))
                slowest = max(slowest, anyio.current_time() - started)
            assert server.overflows == 0
            assert slowest < 1.0, f"a send took {slowest:.2f} s while a peer was stuck"
            assert broker.store.count_for(MESH, member("stuck").pubkey) == 300
            got = []
            while len(got) < 300:  # reading now, and answering the broker's probes
                frame = await stuck.next_frame()
                if frame["type"] == "push" and frame.get("subtype") != "system":
                    got.append(frame["messageId"])
            assert got == sent
        await stuck.aclose()


async def test_rate_limit_refuses_sends_over_the_burst() -> None:
    async with (
        running_broker(make_broker(rate_burst=3, rate_per_minute=60)) as server,
        join(server.url, "a") as a,
    ):
        with anyio.fail_after(5):
            await a.wait_state(OPEN)
            results: list[str | SendError] = []
            for index in range(6):
                try:
                    results.append(await a.send("*", f"message {index}"))
                except SendError as exc:
                    results.append(exc)
    accepted = [r for r in results if isinstance(r, str)]
    refused = [r for r in results if isinstance(r, SendError)]
    assert len(accepted) == 3 and results[:3] == accepted
    assert refused and all(e.reason.code == "rate_limited" and e.retryable for e in refused)


# --- TLS --------------------------------------------------------------------------------


async def test_wss_round_trip(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_context, client_context = tls
    async with (
        running_broker(make_broker(), ssl_context=server_context) as server,
        join(server.url, "a", ssl_context=client_context) as a,
        join(server.url, "b", ssl_context=client_context) as b,
    ):
        assert server.url.startswith("wss://127.0.0.1:")
        with anyio.fail_after(5):
            await a.wait_state(OPEN)
            await b.wait_state(OPEN)
            message_id = await a.send(b.public_key, "over TLS", "now")
            received = await anext(b.messages())
            assert isinstance(received, MessageReceived) and received.message_id == message_id
            server.abort_connections()
            await eventually(lambda: a.counters.reconnects >= 1 and a.state is OPEN)


async def test_wss_with_an_untrusted_certificate_keeps_retrying(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_context, _ = tls
    events: list[Event] = []
    async with (
        running_broker(make_broker(), ssl_context=server_context) as server,
        join(server.url, "a", events=events) as a,
    ):
        with anyio.fail_after(5):
            await eventually(lambda: a.counters.reconnects >= 2)
        assert a.state is not OPEN
        causes = [e.cause for e in events if isinstance(e, ReconnectScheduled)]
        assert any("CERTIFICATE_VERIFY_FAILED" in cause for cause in causes), causes


async def test_plain_client_against_a_tls_broker_does_not_disturb_it(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_context, client_context = tls
    async with running_broker(make_broker(), ssl_context=server_context) as server:
        stream = await raw_connect(server)
        await stream.send(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
        await read_until_eof(stream)
        async with join(server.url, "a", ssl_context=client_context) as a:
            with anyio.fail_after(5):
                await a.wait_state(OPEN)


async def test_serve_broker_reports_the_bound_port() -> None:
    async with anyio.create_task_group() as tasks:
        server: BrokerServer = await tasks.start(serve_broker, make_broker())
        assert server.port > 0 and server.url == f"ws://127.0.0.1:{server.port}/ws"
        await round_trip(server.url, server)
        tasks.cancel_scope.cancel()


async def test_a_port_in_use_is_a_plain_oserror_from_running_broker() -> None:
    async with running_broker(make_broker()) as first:
        with pytest.raises(OSError) as taken:
            async with running_broker(make_broker(), port=first.port):
                pytest.fail("a second broker bound a port in use")
        assert taken.value.errno == errno.EADDRINUSE


async def test_a_port_in_use_is_a_plain_oserror_from_serve_broker() -> None:
    async with running_broker(make_broker()) as first, anyio.create_task_group() as tasks:
        with pytest.raises(OSError) as taken:
            await tasks.start(partial(serve_broker, make_broker(), port=first.port))
        assert taken.value.errno == errno.EADDRINUSE


async def test_wss_to_a_server_that_hangs_up_at_once_keeps_retrying(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    _, client_context = tls
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(SocketAttribute.local_port)

    async def hang_up(stream: SocketStream) -> None:
        await stream.aclose()

    events: list[Event] = []
    async with listener, anyio.create_task_group() as tasks:
        tasks.start_soon(listener.serve, hang_up)
        url = f"wss://127.0.0.1:{port}/ws"
        async with join(url, "a", ssl_context=client_context, events=events) as a:
            await eventually(lambda: a.counters.reconnects >= 2)
        tasks.cancel_scope.cancel()
    causes = [e.cause for e in events if isinstance(e, ReconnectScheduled)]
    assert causes and all("TLS handshake" in cause for cause in causes), causes
