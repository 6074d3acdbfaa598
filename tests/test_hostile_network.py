"""Faults of the network and of the peer at each stage of a socket's life, over loopback.

A server that hangs up (or talks plaintext) before a ``wss://`` client has
started TLS, a bug at the moment the broker accepts a socket, handshake
headers that are not ASCII, a TLS handshake that ends after the broker
stopped, a receiver dropped because it stopped reading: each test plants one
such fault and checks the rule every adapter keeps: the fault gets a clear
error at once (no wait for a timeout), costs that one socket, loses nothing
that was acknowledged, and never logs a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
import trustme
from anyio.abc import SocketAttribute, SocketStream
from anyio.streams.tls import TLSStream
from anyio_helpers import (
    FAST,
    WsPeer,
    anyio_backend,
    eventually,
    hello_text,
    join,
    make_broker,
    member,
    tls,
)
from hypothesis import given
from hypothesis import strategies as st
from sync_helpers import join as sync_join

from meshproto import (
    ConnectionState,
    Event,
    InternalError,
    ReconnectScheduled,
    SendError,
)
from meshproto_anyio import ServerOptions, running_broker
from meshproto_ws import BrokerDriver, Opened, WsAddress, WsConnection, WsState, parse_ws_url
from meshproto_ws import Closed as WsClosed

pytestmark = pytest.mark.anyio
__all__ = ["anyio_backend", "tls"]

OPEN = ConnectionState.OPEN
ADDRESS = WsAddress("broker.test", 7900, False, "/ws")
#: What a scripted server's socket raises once the client has hung up.
GONE = (anyio.EndOfStream, anyio.BrokenResourceError, OSError)
#: A connect timeout far longer than any test waits: a failure seen in time
#: was seen at once, not when the core gave up on the connect.
PATIENT = dataclasses.replace(FAST, connect_timeout=30.0)


@pytest.fixture(scope="module")
def client_tls() -> ssl.SSLContext:
    """A client context that trusts a throwaway CA (no server here needs its certificate)."""
    context = ssl.create_default_context()
    trustme.CA().configure_trust(context)
    return context


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """Records that carry a traceback, or asyncio's word for an exception it caught."""
    return [
        r
        for r in caplog.records
        if r.exc_info or "Exception in callback" in r.getMessage() or "Fatal" in r.getMessage()
    ]


# --- a wss:// client whose server does not wait for TLS ---------------------------------


async def _hang_up(stream: SocketStream) -> None:
    await stream.aclose()


async def _talk_plaintext(stream: SocketStream) -> None:
    with contextlib.suppress(*GONE):
        await stream.send(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
        await anyio.sleep_forever()  # and wait, as a server that speaks first would


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("server", [_hang_up, _talk_plaintext], ids=["hang-up", "plaintext"])
async def test_wss_fails_at_once_when_the_server_acts_before_tls_began(
    server: Callable[[SocketStream], Awaitable[None]],
    client_tls: ssl.SSLContext,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # What the server did reaches the client between the TCP connect and
    # start_tls (a busy loop makes that window; here it is held open): the
    # client must see it then, not wait for its connect timeout.
    connect = asyncio.BaseEventLoop.create_connection

    async def slow_connect(self: asyncio.AbstractEventLoop, *args: Any, **kwargs: Any) -> Any:
        transport, protocol = await connect(self, *args, **kwargs)  # type: ignore[arg-type]
        for _ in range(100):  # at most 0.5 s: until the link has seen what came
            if transport.is_closing():
                break
            await asyncio.sleep(0.005)
        return transport, protocol

    monkeypatch.setattr(asyncio.BaseEventLoop, "create_connection", slow_connect)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(SocketAttribute.local_port)
    events: list[Event] = []
    async with listener, anyio.create_task_group() as tasks:
        tasks.start_soon(listener.serve, server)
        url = f"wss://127.0.0.1:{port}/ws"
        async with join(url, "a", ssl_context=client_tls, events=events, options=PATIENT) as a:
            await eventually(lambda: a.counters.reconnects >= 2, timeout=5.0)
        tasks.cancel_scope.cancel()
    causes = [e.cause for e in events if isinstance(e, ReconnectScheduled)]
    assert causes and all("TLS handshake" in cause for cause in causes), causes
    assert not tracebacks(caplog)


# --- a bug as the broker accepts a socket ----------------------------------------------


async def test_a_bug_as_a_socket_is_accepted_costs_that_socket_only(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    original = BrokerDriver.socket_opened
    planted = 0

    def failing(self: BrokerDriver, *, now: float) -> int:
        nonlocal planted
        if planted == 0 and self.socket_ids():  # the second socket: bob's is first
            planted += 1
            raise RuntimeError("planted accept bug")
        return original(self, now=now)

    monkeypatch.setattr(BrokerDriver, "socket_opened", failing)
    with caplog.at_level(logging.ERROR):
        async with running_broker(make_broker(), port=0) as server, join(server.url, "bob") as bob:
            await eventually(lambda: bob.state is OPEN)
            victim = await anyio.connect_tcp("127.0.0.1", server.port)
            with anyio.fail_after(5):  # the socket it cost is closed, not left hanging
                while True:
                    try:
                        await victim.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                        break
            await victim.aclose()
            assert planted == 1
            assert await bob.send("*", "still served")  # the other socket
            fresh = await WsPeer.open(server.url)  # and the next connection
            await fresh.send_text(hello_text("fresh", server.url))
            assert (await fresh.next_frame())["type"] == "hello_ack"
            await fresh.aclose()
            await eventually(lambda: server.socket_count == 1)
    logged = [r for r in caplog.records if r.exc_text and "planted accept bug" in r.exc_text]
    assert len(logged) == 1
    assert not any("Exception in callback" in r.getMessage() for r in caplog.records)


# --- the opening handshake: header bytes that are not ASCII -----------------------------

#: Header lines whose value is not ASCII (wsproto decodes the ones it reads as ASCII).
NOT_ASCII = [
    b"Connection: Upgrade, \xc3\xa9",
    b"Upgrade: websocket\xff",
    b"Sec-WebSocket-Protocol: \xe2\x80\xa8",
    b"Sec-WebSocket-Extensions: permessage-\xc3\xa9",
]


def _request_with(line: bytes) -> bytes:
    request = WsConnection.client(ADDRESS).data_to_send()
    return request.replace(b"\r\n\r\n", b"\r\n" + line + b"\r\n\r\n", 1)


def _response_with(client: WsConnection, line: bytes) -> bytes:
    server = WsConnection.server()
    server.receive_data(client.data_to_send())
    accepted = server.data_to_send()
    return accepted.replace(b"\r\n\r\n", b"\r\n" + line + b"\r\n\r\n", 1)


@pytest.mark.parametrize("line", NOT_ASCII)
def test_a_request_header_that_is_not_ascii_gets_a_400_not_an_exception(line: bytes) -> None:
    server = WsConnection.server()
    (closed,) = server.receive_data(_request_with(line))
    assert isinstance(closed, WsClosed) and closed.code is None and not closed.by_peer
    assert "bad handshake" in closed.reason
    assert server.data_to_send().startswith(b"HTTP/1.1 400 ")
    assert server.state is WsState.CLOSED


@pytest.mark.parametrize("line", NOT_ASCII)
def test_a_response_header_that_is_not_ascii_is_a_bad_handshake_not_an_exception(
    line: bytes,
) -> None:
    client = WsConnection.client(ADDRESS)
    (closed,) = client.receive_data(_response_with(client, line) + b"\x81\x02hi")
    assert isinstance(closed, WsClosed) and closed.code is None and closed.by_peer
    assert "bad handshake" in closed.reason
    assert client.state is WsState.CLOSED


_HEADER_NAMES = st.sampled_from(
    ["Host", "Upgrade", "Connection", "Sec-WebSocket-Key", "Sec-WebSocket-Version",
     "Sec-WebSocket-Protocol", "Sec-WebSocket-Extensions", "Sec-WebSocket-Accept", "X-Any"]
)  # fmt: skip
_HEADER_VALUES = st.binary(max_size=40).filter(lambda v: b"\r" not in v and b"\n" not in v)


@given(_HEADER_NAMES, _HEADER_VALUES, st.booleans())
def test_any_header_value_in_either_handshake_never_raises(
    name: str, value: bytes, server_side: bool
) -> None:
    line = name.encode() + b": " + value
    if server_side:
        target = WsConnection.server()
        events = target.receive_data(_request_with(line))
    else:
        target = WsConnection.client(ADDRESS)
        events = target.receive_data(_response_with(target, line))
    target.data_to_send()
    assert all(isinstance(e, (Opened, WsClosed)) for e in events)
    assert target.state in (WsState.OPEN, WsState.CLOSED)


async def test_the_broker_answers_a_header_that_is_not_ascii_with_400_and_no_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG):
        async with running_broker(make_broker(), port=0) as server:
            stream = await anyio.connect_tcp("127.0.0.1", server.port)
            await stream.send(_request_with(NOT_ASCII[0]))
            answer = b""
            with anyio.fail_after(5):
                while True:
                    try:
                        answer += await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                        break
            await stream.aclose()
            assert answer.startswith(b"HTTP/1.1 400 ")
            fresh = await WsPeer.open(server.url)
            await fresh.send_text(hello_text("fresh", server.url))
            assert (await fresh.next_frame())["type"] == "hello_ack"
            await fresh.aclose()
    assert not tracebacks(caplog)


async def test_a_client_takes_a_response_header_that_is_not_ascii_for_a_bad_handshake(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def answer(stream: SocketStream) -> None:
        request = b""
        with contextlib.suppress(*GONE):  # the client hangs up as it likes
            while b"\r\n\r\n" not in request:
                request += await stream.receive()
            server = WsConnection.server()  # a proper acceptance, then the one bad line
            server.receive_data(request)
            accepted = server.data_to_send()
            await stream.send(
                accepted.replace(b"\r\n\r\n", b"\r\n" + NOT_ASCII[0] + b"\r\n\r\n", 1)
            )
            await anyio.sleep_forever()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(SocketAttribute.local_port)
    events: list[Event] = []
    with caplog.at_level(logging.DEBUG):
        async with listener, anyio.create_task_group() as tasks:
            tasks.start_soon(listener.serve, answer)
            url = f"ws://127.0.0.1:{port}/ws"
            async with join(url, "a", events=events, options=PATIENT) as a:
                await eventually(lambda: a.counters.reconnects >= 2)
            tasks.cancel_scope.cancel()
    causes = [e.cause for e in events if isinstance(e, ReconnectScheduled)]
    assert causes and all("bad handshake" in cause for cause in causes), causes
    assert not any(isinstance(e, InternalError) for e in events)
    assert not tracebacks(caplog)


# --- a resolver that fails with something other than OSError ---------------------------

UNRESOLVABLE = "unresolvable.test"


@pytest.fixture
def resolver_that_raises_unicode_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """``socket.getaddrinfo`` refusing one host as the idna codec does: ``UnicodeError``."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host in (UNRESOLVABLE, UNRESOLVABLE.encode()):
            raise UnicodeError("encoding with 'idna' codec failed (label too long)")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.mark.usefixtures("resolver_that_raises_unicode_error")
async def test_a_resolver_error_that_is_not_an_oserror_is_a_failed_connect(
    caplog: pytest.LogCaptureFixture,
) -> None:
    events: list[Event] = []
    with caplog.at_level(logging.DEBUG), anyio.fail_after(10):
        async with join(f"ws://{UNRESOLVABLE}:9/ws", "a", events=events) as a:
            await eventually(lambda: a.counters.reconnects >= 2)
    causes = [e.cause for e in events if isinstance(e, ReconnectScheduled)]
    assert causes and all("could not connect" in cause for cause in causes), causes
    assert all("label too long" in cause for cause in causes), causes
    assert not any(isinstance(e, InternalError) for e in events)
    assert not tracebacks(caplog)


@pytest.mark.usefixtures("resolver_that_raises_unicode_error")
def test_the_blocking_client_takes_such_a_resolver_error_for_a_failed_connect(
    caplog: pytest.LogCaptureFixture,
) -> None:
    events: list[Event] = []
    with (
        caplog.at_level(logging.DEBUG),
        sync_join(f"ws://{UNRESOLVABLE}:9/ws", "a", events=events) as a,
    ):
        deadline = time.monotonic() + 10
        while a.counters.reconnects < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert a.counters.reconnects >= 2
        assert a.state is not ConnectionState.CLOSED  # the I/O thread lives on
    causes = [e.cause for e in events if isinstance(e, ReconnectScheduled)]
    assert causes and all("could not connect" in cause for cause in causes), causes
    assert not any(isinstance(e, InternalError) for e in events)
    assert not tracebacks(caplog)


# --- a broker that stops while a TLS handshake is under way ----------------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_socket_whose_tls_comes_up_after_the_broker_stopped_is_not_served(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_context, client_context = tls
    async with running_broker(make_broker(), ssl_context=server_context) as server:
        stream = await anyio.connect_tcp("127.0.0.1", server.port)
    # Stopped (no timer runs now, nothing would ever close it): TLS comes up only now.
    answer = b""
    with contextlib.suppress(*GONE, ssl.SSLError, anyio.EndOfStream), anyio.fail_after(10):
        secured = await TLSStream.wrap(
            stream, ssl_context=client_context, hostname="127.0.0.1", standard_compatible=False
        )
        stream = secured
        await secured.send(WsConnection.client(ADDRESS).data_to_send())
        answer = await secured.receive(1000)
    await anyio.aclose_forcefully(stream)
    assert not answer.startswith(b"HTTP/1.1 101"), answer
    assert server.socket_count == 0


# --- a reader that stops, dropped for it: what it was sent is not lost -----------------


async def test_a_receiver_dropped_for_not_reading_loses_none_of_its_acked_messages() -> None:
    broker = make_broker("stuck", rate_burst=100_000, rate_per_minute=1e9)
    options = ServerOptions(max_send_buffer=128 * 1024)
    async with running_broker(broker, options=options) as server, join(server.url, "a") as a:
        stream = await anyio.connect_tcp("127.0.0.1", server.port)
        stream.extra(SocketAttribute.raw_socket).setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVBUF, 4096
        )
        stuck = WsPeer(stream, WsConnection.client(parse_ws_url(server.url)))
        await stuck.flush()
        assert isinstance(await stuck.next_event(), Opened)
        await stuck.send_text(hello_text("stuck", server.url))
        assert (await stuck.next_frame())["type"] == "hello_ack"
        with anyio.fail_after(20):
            await a.wait_state(OPEN)
            sent = [await a.send(member("stuck").pubkey, f"direct {i}", "now") for i in range(20)]
            for _ in range(200):  # broadcasts until the stuck socket overflows
                if server.overflows:
                    break
                with contextlib.suppress(SendError):  # no_peer: it is gone already
                    await a.send("*", "z" * 40_000, "now")
            assert server.overflows == 1
        await stuck.aclose()
        got: list[str] = []
        async with join(server.url, "stuck") as again:  # the next session gets them all
            with anyio.fail_after(10):
                async for message in again.messages():
                    if message.message_id in sent:
                        got.append(message.message_id)
                    if len(got) == len(sent):
                        break
        assert got == sent
