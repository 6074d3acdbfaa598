"""Shared pieces of the anyio adapter tests: brokers, clients, scripted sockets.

Everything binds 127.0.0.1 port 0 and every wait is bounded.
"""

from __future__ import annotations

import errno
import json
import random
import ssl
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import trustme
from anyio.abc import ByteStream, TaskStatus

from meshproto import (
    AcceptingVerifier,
    Backoff,
    Broker,
    BrokerOptions,
    ClientConfig,
    ClientConnection,
    ClientOptions,
    Event,
    LocalProtocolError,
    Member,
    StaticRegistry,
    Store,
    WriteFrame,
)
from meshproto.testing import FakeSigner
from meshproto_anyio import BrokerServer, Client, connect, running_broker
from meshproto_anyio.sqlite_store import SqliteStore
from meshproto_ws import (
    Closed,
    Opened,
    TextReceived,
    WsAddress,
    WsConnection,
    WsEvent,
    parse_ws_url,
)

MESH = "mesh-test"

#: Short timers so that no test waits through a real backoff or a real timeout.
FAST = ClientOptions(
    connect_timeout=2.0,
    hello_timeout=2.0,
    ack_timeout=3.0,
    request_timeout=3.0,
    ping_interval=0.2,
    liveness_timeout=1.0,
    backoff=Backoff(caps=(0.01, 0.02)),
)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting the server) from a throwaway CA."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    return server_context, client_context


def signer(name: str) -> FakeSigner:
    return FakeSigner(f"member-{name}")


def member(name: str) -> Member:
    return Member(MESH, f"member-{name}", signer(name).public_key, name)


def make_broker(*known: str, **options: Any) -> Broker:
    """A broker whose mesh admits anyone, with ``known`` members registered up front."""
    registry = StaticRegistry([member(name) for name in known], open_mesh=MESH)
    return Broker(
        registry,
        verifier=AcceptingVerifier(),
        rng=random.Random(7),
        options=BrokerOptions(**options),
    )


def join(
    url: str,
    name: str,
    *,
    options: ClientOptions = FAST,
    events: list[Event] | None = None,
    close_timeout: float = 0.5,
    **kwargs: Any,
) -> AbstractAsyncContextManager[Client]:
    """``connect`` as member ``name`` (one session per call unless ``session_id`` is given)."""
    return connect(
        url,
        mesh_id=MESH,
        member_id=f"member-{name}",
        signer=signer(name),
        display_name=name,
        options=options,
        rng=random.Random(zlib.crc32(name.encode())),
        close_timeout=close_timeout,
        on_event=events.append if events is not None else None,
        **kwargs,
    )


async def eventually(predicate: Callable[[], bool], *, timeout: float = 5.0) -> None:
    """Wait (polling every 10 ms, at most ``timeout`` seconds) until ``predicate()``."""
    with anyio.fail_after(timeout):
        for _ in range(int(timeout / 0.01) + 1):
            if predicate():
                return
            await anyio.sleep(0.01)
    raise AssertionError("condition never became true")  # pragma: no cover


def hello_text(name: str, url: str) -> str:
    """The signed hello a client as ``name`` would write."""
    config = ClientConfig(
        url=url, mesh_id=MESH, member_id=f"member-{name}", signer=signer(name), session_id=name
    )
    core = ClientConnection(config, rng=random.Random(0))
    core.connect(0.0)
    core.drain_actions()
    core.transport_opened(1, now=0.0, wall_time_ms=time.time_ns() // 1_000_000)
    (hello,) = core.drain_actions()
    assert isinstance(hello, WriteFrame)
    return hello.text


def largest_body(target: str) -> int:
    """The largest body whose encoded send to ``target`` fits in 65,536 bytes."""
    config = ClientConfig(
        url="ws://x/ws", mesh_id=MESH, member_id="m", signer=signer("x"), session_id="s"
    )
    low, high = 1, 65_536
    while low < high:
        middle = (low + high + 1) // 2
        probe = ClientConnection(config, rng=random.Random(0))  # offline: sends just queue
        try:
            probe.send(target, b"y" * middle, now=0.0)
        except LocalProtocolError:
            high = middle - 1
        else:
            low = middle
    return low


class PeerClosed(AssertionError):
    """The other side closed while a frame was expected."""


class WsPeer:
    """One WebSocket over a real socket, driven by hand (a raw client or a fake broker)."""

    def __init__(self, stream: ByteStream, ws: WsConnection) -> None:
        self.stream = stream
        self.ws = ws
        self.pending: deque[WsEvent] = deque()

    @classmethod
    async def open(cls, url: str, **ws_options: Any) -> WsPeer:
        address: WsAddress = parse_ws_url(url)
        stream = await anyio.connect_tcp(address.host, address.port)
        peer = cls(stream, WsConnection.client(address, **ws_options))
        await peer.flush()
        assert isinstance(await peer.next_event(), Opened)
        return peer

    async def flush(self) -> None:
        data = self.ws.data_to_send()
        if data:
            await self.stream.send(data)

    async def next_event(self, timeout: float = 5.0) -> WsEvent:
        """The next WebSocket event (EOF becomes ``Closed``), answering pings on the way."""
        with anyio.fail_after(timeout):
            while not self.pending:
                try:
                    data: bytes | None = await self.stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    data = None
                self.pending.extend(self.ws.receive_data(data))
                await self.flush()
                if data is None and not self.pending:
                    return Closed(None, "EOF", True)
            return self.pending.popleft()

    async def next_frame(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next text message as JSON (other events are skipped)."""
        with anyio.fail_after(timeout):
            while True:
                event = await self.next_event(timeout)
                if isinstance(event, TextReceived):
                    frame: dict[str, Any] = json.loads(event.text)
                    return frame
                if isinstance(event, Closed):
                    raise PeerClosed(f"closed while waiting for a frame: {event}")

    async def send_text(self, text: str) -> None:
        self.ws.send_text(text)
        await self.flush()

    async def send_json(self, frame: dict[str, Any]) -> None:
        await self.send_text(json.dumps(frame))

    async def aclose(self) -> None:
        await anyio.aclose_forcefully(self.stream)


@asynccontextmanager
async def fake_broker(
    handler: Callable[[WsPeer], Awaitable[None]],
) -> AsyncIterator[tuple[str, list[WsPeer]]]:
    """A scripted broker: ``handler`` runs for every accepted, upgraded socket.

    Yields its URL and the list of sockets accepted so far.
    """
    accepted: list[WsPeer] = []
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def serve(stream: ByteStream) -> None:
        peer = WsPeer(stream, WsConnection.server())
        accepted.append(peer)
        try:
            if isinstance(await peer.next_event(), Opened):
                await handler(peer)
        except PeerClosed:
            pass  # the client went away mid-script (it closes at the end of each test)
        finally:
            await peer.aclose()

    async with listener, anyio.create_task_group() as tasks:
        tasks.start_soon(listener.serve, serve)
        yield f"ws://127.0.0.1:{port}/ws", accepted
        tasks.cancel_scope.cancel()


async def answer_hello(peer: WsPeer) -> dict[str, Any]:
    """Read the hello and answer ``hello_ack``; returns the hello."""
    hello = await peer.next_frame()
    assert hello["type"] == "hello"
    await peer.send_json({"type": "hello_ack", "presenceId": f"p-{hello['sessionId']}"})
    return hello


#: How often :func:`running_broker_on` tries to bind a port again (0.05 s apart).
BIND_ATTEMPTS = 100


def address_in_use(exc: BaseException) -> bool:
    """Whether ``exc`` (or every error of the group it is) says the port is taken."""
    if isinstance(exc, OSError):
        return exc.errno == errno.EADDRINUSE
    inner = getattr(exc, "exceptions", None)
    return bool(inner) and all(address_in_use(e) for e in inner)


@asynccontextmanager
async def running_broker_on(
    broker: Broker, port: int, **options: Any
) -> AsyncIterator[BrokerServer]:
    """``running_broker`` on ``port``, which a broker before it held (a restart).

    In the gap between two brokers, a client's reconnect can hold the port
    for a moment (a connect to a port nobody listens on may be given that
    very port, and connect to itself), so the bind is retried for up to
    :data:`BIND_ATTEMPTS` x 0.05 s before it counts as a failure.
    """
    async with AsyncExitStack() as stack:
        for attempt in range(BIND_ATTEMPTS):
            try:
                server = await stack.enter_async_context(
                    running_broker(broker, port=port, **options)
                )
            except Exception as exc:
                if port == 0 or attempt == BIND_ATTEMPTS - 1 or not address_in_use(exc):
                    raise
                await anyio.sleep(0.05)
            else:
                break
        yield server


def restart_broker(store: Store) -> Broker:
    """The broker of the restart tests: alice and bob in an open mesh, on ``store``."""
    return Broker(
        StaticRegistry([member("alice"), member("bob")], open_mesh=MESH),
        verifier=AcceptingVerifier(),
        store=store,
        rng=random.Random(),
        options=BrokerOptions(rate_burst=1000, rate_per_minute=60_000.0),
    )


async def serve_until(
    db: Path,
    port: int,
    stop: anyio.Event,
    *,
    make: Callable[[Store], Broker] = restart_broker,
    task_status: TaskStatus[BrokerServer] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """One broker's life: ``make`` it on the SQLite ``db``, serve ``port`` until ``stop``.

    A second life on the same ``db`` and port is a broker restart
    (:func:`running_broker_on` binds the port again).
    """
    with SqliteStore(db) as store:
        async with running_broker_on(make(store), port) as server:
            task_status.started(server)
            await stop.wait()
