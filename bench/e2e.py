"""End to end on loopback: sender -> reference broker -> receiver, against a wsproto relay.

Run ``python bench/e2e.py`` (``--quick`` for a smoke run, ``--profile`` adds a
cProfile of one of our runs, ``-n`` sets the messages per run). Everything binds
127.0.0.1, port 0. Each measurement is its own event loop (``anyio.run``), with
a fresh broker or server, and is bounded by ``anyio.fail_after``.

Measurements
------------

e2e (ours)
    The reference :class:`~meshproto.Broker` served by
    :func:`meshproto_anyio.running_broker`; two clients
    (:func:`meshproto_anyio.connect`), a sender and a receiver, both OPEN
    before the clock starts. ``WINDOW`` tasks share the ``N`` sends, each doing
    ``await sender.send(receiver.public_key, BODY, "now")`` in a loop, so that
    ``WINDOW`` sends are in flight (unacked) at any time: direct messages, a
    ~100-byte body. One task reads ``receiver.messages()``. messages/s = N /
    (time of the N-th delivery to the receiver - start). Latency is each
    ``await send()``: from the call to its return (the broker's ack), in ms.
    The broker's rate limit is raised (``RATE_BURST``, ``RATE_PER_MINUTE``) so
    that it never throttles the bench; its other options are the defaults.
    Priority ``now`` is ungated by the receiver's status.
wsproto relay (the baseline)
    The same topology with no protocol in it, written straight on wsproto and
    anyio (as ours is), in the same process and event loop as ours runs its
    broker and clients: a relay server and two clients on
    ``anyio.connect_tcp`` + ``wsproto.WSConnection``. The sender keeps
    ``WINDOW`` copies of our exact ``send`` text frame in flight; for each the
    relay writes an ``ack`` back to the sender and a ``push`` to the receiver,
    which answers with a ``client_ack``: 4 frames per message, each the very
    text ours writes for that message (made once, in memory, by the sans-IO
    broker and two client cores: :func:`wire_frames`). No JSON is parsed or
    built per message and nothing is validated, routed or stored. Like ours,
    each side writes what one read calls for in one write per socket.
    messages/s = N / (time of the N-th push to the receiver - start).
websockets echo (for reference)
    ``websockets.asyncio.server.serve`` echoing every message back, and one
    ``websockets.asyncio.client.connect`` client, both with compression off
    (ours does not compress): a producer keeps ``WINDOW`` messages outstanding
    (an ``asyncio.Semaphore``) while the main task reads the echoes. The
    message is the very text frame our sender writes (same size, same bytes).
    messages/s = N / (time of the N-th echo - start).
e2e sync (ours, blocking)
    The same run with the blocking client (:func:`meshproto_sync.connect`,
    one background I/O thread per client) against the same broker, served
    by ``running_broker`` from an anyio event loop in a background thread of
    the same process (as the anyio run shares one process, and one GIL, with
    its broker). The window is kept with the client's non-blocking path:
    the main thread calls ``sender.send_nowait(receiver.public_key, BODY,
    "now")`` after taking a ``threading.Semaphore(WINDOW)``, and each
    future's done-callback releases it, so ``WINDOW`` sends are in flight
    at any time without ``WINDOW`` threads (``send()`` is exactly this call
    plus a wait on the future). One thread calls ``receiver.receive()`` in
    a loop. messages/s as above; latency is from ``send_nowait`` to the
    future's resolution (the broker's ack, seen by the callback), in ms.

The measurements alternate (ours, relay, echo, ours with SQLite, ours on trio, ours
blocking), ``REPEATS`` rounds, and
medians are reported with the spread (slowest - fastest). The garbage
collector stays on; a full collection runs before each measurement. One
short warm-up run of each comes first and is not reported. Ours also runs on
trio when it is installed (an extra line, not in the ratio). The last four
lines are ``e2e-sync/websockets-echo ratio: X.XX`` and
``e2e/websockets-echo ratio: X.XX`` (for reference), then
``e2e-sync/wsproto-relay ratio: X.XX`` = ours blocking / the relay, and last
``e2e/wsproto-relay ratio: X.XX`` = ours on asyncio (median messages/s) / the
relay (median messages/s); higher is better for us.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import importlib.util
import io
import json
import os
import platform
import pstats
import random
import statistics
import sysconfig
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from importlib.metadata import version
from pathlib import Path
from time import perf_counter
from typing import Any

import anyio
import wsproto
from _windowed import windowed_anyio, windowed_sync
from anyio.abc import SocketAttribute, SocketStream
from anyio.from_thread import start_blocking_portal
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve
from wsproto.events import AcceptConnection, Request, TextMessage

import meshproto
from meshproto import (
    AcceptingVerifier,
    Broker,
    BrokerOptions,
    ClientConfig,
    ClientConnection,
    ConnectionState,
    OpenTransport,
    SendText,
    StaticRegistry,
    Store,
    WriteFrame,
)
from meshproto.testing import FakeSigner
from meshproto_anyio import connect, running_broker
from meshproto_anyio.sqlite_store import SqliteStore
from meshproto_sync import Client as SyncClient
from meshproto_sync import connect as sync_connect

MESH = "mesh-bench"
WINDOW = 100
#: The broker's bound on undelivered messages per member, raised for the long runs.
STORE_LIMIT = 1_000_000
#: Flatness: the rate of the first and of the last block of this many deliveries.
FLAT_BLOCK = 10_000
FLAT_N = 100_000
LATENCY_N = 2_000
N_FULL = 8_000
N_QUICK = 300
REPEATS = 5
#: The broker's token bucket, raised so that it never throttles the bench.
RATE_BURST = 1_000_000_000
RATE_PER_MINUTE = 1e12
#: A realistic chat-sized body: about 100 bytes of UTF-8 text (as in bench/core.py).
BODY = (
    "build 4711 passed on linux-x86_64; 2 flaky tests retried "
    "(test_sync, test_io). deploying to staging"
)
HELLO_ACK = json.dumps({"type": "hello_ack", "presenceId": "BB8qpne0XK46JrD4QyXD4EQ6dvYX2wGB"})
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Run:
    """One measurement: messages per second, and send->ack latencies (ms) for ours."""

    rate: float
    latencies_ms: tuple[float, ...] = ()


def run_timeout(n: int) -> float:
    """A generous bound on one run (connect, N messages, shutdown)."""
    return 30.0 + n / 50


def signer(name: str) -> FakeSigner:
    return FakeSigner(f"member-{name}")


def make_broker(store: Store | None = None) -> Broker:
    return Broker(
        StaticRegistry([], open_mesh=MESH),
        verifier=AcceptingVerifier(),
        store=store,
        rng=random.Random(7),
        options=BrokerOptions(
            rate_burst=RATE_BURST,
            rate_per_minute=RATE_PER_MINUTE,
            store_limit_per_member=STORE_LIMIT,
        ),
    )


class StallMeter:
    """The event loop's longest stall: how late a 1 ms sleep wakes up, at worst."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.running = True

    async def run(self) -> None:
        while self.running:
            began = perf_counter()
            await anyio.sleep(0.001)
            self.longest = max(self.longest, perf_counter() - began - 0.001)


def join(url: str, name: str) -> Any:
    return connect(
        url,
        mesh_id=MESH,
        member_id=f"member-{name}",
        signer=signer(name),
        display_name=name,
        rng=random.Random(name),
        close_timeout=1.0,
    )


def opened_core(name: str) -> tuple[ClientConnection, str]:
    """A client core on a pretend transport, and the hello it wrote (no socket)."""
    core = ClientConnection(
        ClientConfig(
            url="ws://127.0.0.1:1/ws",
            mesh_id=MESH,
            member_id=f"member-{name}",
            signer=signer(name),
            session_id=f"{random.Random(name).getrandbits(64):016x}",
            display_name=name,
        ),
        rng=random.Random(0),
    )
    core.connect(0.0)
    (opened,) = [a for a in core.drain_actions() if isinstance(a, OpenTransport)]
    core.transport_opened(opened.transport_id, now=0.0, wall_time_ms=1_795_738_953_347)
    (hello,) = [a.text for a in core.drain_actions() if isinstance(a, WriteFrame)]
    return core, hello


def send_frame_text() -> str:
    """The text frame our sender writes for one message (made in memory, no socket)."""
    core, _ = opened_core("sender")
    core.receive_text(HELLO_ACK, now=0.0)
    core.drain_actions()
    assert core.state is ConnectionState.OPEN, core.state
    core.send(signer("receiver").public_key, BODY, "now", now=0.0)
    (text,) = [a.text for a in core.drain_actions() if isinstance(a, WriteFrame)]
    return text


@dataclass(frozen=True)
class WireFrames:
    """The four text frames of one message, byte for byte as ours writes them."""

    send: str  # sender -> broker
    ack: str  # broker -> sender
    push: str  # broker -> receiver
    client_ack: str  # receiver -> broker


def wire_frames() -> WireFrames:
    """One message through the sans-IO broker and two client cores, in memory."""
    broker = make_broker()
    cores = {}
    for conn_id, name in ((1, "sender"), (2, "receiver")):
        core, hello = opened_core(name)
        broker.connection_opened(conn_id, now=1_795_738_953.0)
        broker.receive_text(conn_id, hello, now=1_795_738_953.0)
        cores[conn_id] = core
    for output in broker.drain_outputs():
        if isinstance(output, SendText):
            cores[output.conn_id].receive_text(output.text, now=0.0)
    for core in cores.values():
        core.drain_actions()
        assert core.state is ConnectionState.OPEN, core.state
        core.drain_events()
        core.take_messages()
        core.drain_actions()
    cores[1].send(signer("receiver").public_key, BODY, "now", now=0.0)
    (send,) = [a.text for a in cores[1].drain_actions() if isinstance(a, WriteFrame)]
    broker.receive_text(1, send, now=1_795_738_953.0)
    texts = {o.conn_id: o.text for o in broker.drain_outputs() if isinstance(o, SendText)}
    cores[2].receive_text(texts[2], now=0.0)
    cores[2].take_messages()
    (client_ack,) = [a.text for a in cores[2].drain_actions() if isinstance(a, WriteFrame)]
    frames = WireFrames(send, texts[1], texts[2], client_ack)
    for text, kind in zip(
        (frames.send, frames.ack, frames.push, frames.client_ack),
        ("send", "ack", "push", "client_ack"),
        strict=True,
    ):
        if json.loads(text)["type"] != kind:
            raise RuntimeError(f"expected a {kind} frame, got {text[:80]!r}")
    return frames


async def check_no_leftover_tasks() -> None:
    """Every task started by a run has ended (asyncio; trio's nurseries guarantee it)."""
    try:
        current = asyncio.current_task()
    except RuntimeError:  # no asyncio loop: trio
        return
    for _ in range(10):  # a few loop iterations for callbacks of closed transports
        if not [t for t in asyncio.all_tasks() if t is not current]:
            return
        await asyncio.sleep(0)
    left = [t for t in asyncio.all_tasks() if t is not current]
    raise RuntimeError(f"tasks left over after a run: {left}")


# --- ours ----------------------------------------------------------------------------


async def run_ours(
    n: int,
    *,
    store: Callable[[], Store] | None = None,
    window: int = WINDOW,
    marks: list[float] | None = None,
    mark_every: int = FLAT_BLOCK,
    stalls: StallMeter | None = None,
) -> Run:
    """One run; ``store`` makes the broker's store (default: in memory).

    ``marks`` (if given) gets the start time and the delivery time of every
    ``mark_every``-th message; ``stalls`` measures the event loop's longest
    stall meanwhile.
    """

    def delivered(count: int) -> None:
        if marks is not None and count % mark_every == 0:
            marks.append(perf_counter())

    with anyio.fail_after(run_timeout(n)):
        async with (
            running_broker(make_broker(store() if store is not None else None)) as server,
            join(server.url, "sender") as sender,
            join(server.url, "receiver") as receiver,
        ):
            await sender.wait_state(ConnectionState.OPEN)
            await receiver.wait_state(ConnectionState.OPEN)
            async with anyio.create_task_group() as tasks:
                if stalls is not None:
                    tasks.start_soon(stalls.run)
                run = await windowed_anyio(sender, receiver, n, window, BODY, on_delivery=delivered)
                if stalls is not None:
                    stalls.running = False
    if marks is not None:
        marks.insert(0, run.start)
    await check_no_leftover_tasks()
    return Run(n / (run.delivered - run.start), run.latencies_ms)


# --- ours, blocking (meshproto_sync) -----------------------------------------------


def join_sync(url: str, name: str) -> SyncClient:
    return sync_connect(
        url,
        mesh_id=MESH,
        member_id=f"member-{name}",
        signer=signer(name),
        display_name=name,
        rng=random.Random(name),
        close_timeout=1.0,
    )


def run_sync(n: int) -> Run:
    """The blocking client: the window held by ``send_nowait`` futures (see the docstring)."""
    bound = run_timeout(n)
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(running_broker(make_broker())) as server,
        join_sync(server.url, "sender") as sender,
        join_sync(server.url, "receiver") as receiver,
    ):
        sender.wait_state(ConnectionState.OPEN, timeout=bound)
        receiver.wait_state(ConnectionState.OPEN, timeout=bound)
        run = windowed_sync(sender, receiver, n, WINDOW, BODY, bound=bound)
    left = [t for t in threading.enumerate() if t.name == "meshproto-sync-io"]
    if left:
        raise RuntimeError(f"I/O threads left over after a run: {left}")
    return Run(n / (run.delivered - run.start), run.latencies_ms)


# --- the baseline: a minimal relay on wsproto + anyio --------------------------------


class WsprotoPeer:
    """One end of a WebSocket on wsproto over an anyio stream: bytes in, messages out."""

    def __init__(self, stream: SocketStream, role: wsproto.ConnectionType) -> None:
        self.stream = stream
        self.ws = wsproto.WSConnection(role)

    async def flush(self, data: bytes) -> None:
        if data:
            await self.stream.send(data)

    async def reads(self) -> Any:
        """The wsproto events of each read, a list per read (ends when the peer closes)."""
        while True:
            try:
                data = await self.stream.receive(65_536)
            except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                return
            self.ws.receive_data(data)
            yield list(self.ws.events())


def finished_texts(events: list[Any]) -> int:
    """How many whole text messages ``events`` completes."""
    return sum(1 for e in events if isinstance(e, TextMessage) and e.message_finished)


async def relay_join(port: int, path: str) -> WsprotoPeer:
    peer = WsprotoPeer(await anyio.connect_tcp("127.0.0.1", port), wsproto.ConnectionType.CLIENT)
    await peer.flush(peer.ws.send(Request(host="127.0.0.1", target=path)))
    async for events in peer.reads():
        if any(isinstance(e, AcceptConnection) for e in events):
            return peer
    raise RuntimeError("the relay closed before accepting")


async def run_relay(n: int, frames: WireFrames) -> Run:
    """The relay: ack each send to its sender and push it to the receiver; 4 frames a message.

    Like ours, every side writes what one read calls for in one write (one
    syscall per socket per read), not a write per frame.
    """
    ack = TextMessage(frames.ack)
    push = TextMessage(frames.push)
    client_ack = TextMessage(frames.client_ack)
    send = TextMessage(frames.send)
    receiver_ready = anyio.Event()
    receivers: list[WsprotoPeer] = []
    delivered_at = 0.0

    async def serve(stream: SocketStream) -> None:
        peer = WsprotoPeer(stream, wsproto.ConnectionType.SERVER)
        is_sender = False
        async with stream:
            async for events in peer.reads():
                for event in events:
                    if isinstance(event, Request):
                        await peer.flush(peer.ws.send(AcceptConnection()))
                        is_sender = event.target == "/sender"
                        if not is_sender:
                            receivers.append(peer)
                            receiver_ready.set()
                count = finished_texts(events) if is_sender else 0
                if count:
                    to = receivers[0]
                    await peer.flush(b"".join(peer.ws.send(ack) for _ in range(count)))
                    await to.flush(b"".join(to.ws.send(push) for _ in range(count)))

    with anyio.fail_after(run_timeout(n)):
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        port = listener.extra(SocketAttribute.local_port)
        async with listener, anyio.create_task_group() as server:
            server.start_soon(listener.serve, serve)
            receiver = await relay_join(port, "/receiver")
            await receiver_ready.wait()
            sender = await relay_join(port, "/sender")

            async def send_all() -> None:
                written = min(WINDOW, n)
                await sender.flush(b"".join(sender.ws.send(send) for _ in range(written)))
                acked = 0
                async for events in sender.reads():
                    acked += finished_texts(events)
                    if acked >= n:
                        return
                    more = min(n, acked + WINDOW) - written
                    if more > 0:
                        written += more
                        await sender.flush(b"".join(sender.ws.send(send) for _ in range(more)))

            async def receive_all() -> None:
                nonlocal delivered_at
                count = 0
                async for events in receiver.reads():
                    got = finished_texts(events)
                    if got:
                        count += got
                        await receiver.flush(
                            b"".join(receiver.ws.send(client_ack) for _ in range(got))
                        )
                        if count >= n:
                            delivered_at = perf_counter()
                            return

            start = perf_counter()
            async with anyio.create_task_group() as work:
                work.start_soon(send_all)
                work.start_soon(receive_all)
            await sender.stream.aclose()
            await receiver.stream.aclose()
            server.cancel_scope.cancel()
    await check_no_leftover_tasks()
    return Run(n / (delivered_at - start))


# --- the reference: a plain websockets echo -------------------------------------------


async def run_echo(n: int, text: str) -> Run:
    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    with anyio.fail_after(run_timeout(n)):
        async with ws_serve(echo, "127.0.0.1", 0, compression=None, close_timeout=1.0) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            async with ws_connect(
                f"ws://127.0.0.1:{port}/", compression=None, close_timeout=1.0
            ) as ws:
                window = asyncio.Semaphore(WINDOW)

                async def produce() -> None:
                    for _ in range(n):
                        await window.acquire()
                        await ws.send(text)

                start = perf_counter()
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(produce)
                    for _ in range(n):
                        echoed = await ws.recv()
                        window.release()
                    echoed_at = perf_counter()
                if echoed != text:
                    raise RuntimeError("the echo differs from what was sent")
    await check_no_leftover_tasks()
    return Run(n / (echoed_at - start))


# --- measuring -----------------------------------------------------------------------


def percentile(values: list[float] | tuple[float, ...], p: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def measure(runs: dict[str, Callable[[int], Run]], n: int, repeats: int) -> dict[str, list[Run]]:
    """Every run once per round (interleaved), ``repeats`` rounds, after a warm-up."""
    for run in runs.values():
        run(min(n, 200))
    results: dict[str, list[Run]] = {label: [] for label in runs}
    for _ in range(repeats):
        for label, run in runs.items():
            gc.collect()
            results[label].append(run(n))
    return results


def summary(label: str, runs: list[Run]) -> str:
    rates = [r.rate for r in runs]
    line = (
        f"{label + ':':<22}{statistics.median(rates):9.0f} messages/s"
        f"  (spread {max(rates) - min(rates):.0f})"
    )
    if runs[0].latencies_ms:
        p50 = statistics.median(percentile(r.latencies_ms, 50) for r in runs)
        p99 = statistics.median(percentile(r.latencies_ms, 99) for r in runs)
        line += f", send->ack p50 {p50:.2f} ms, p99 {p99:.2f} ms"
    return line


# --- profiling -----------------------------------------------------------------------

#: (component, test on a pstats key (file, line, function)), first match wins.
_BROKER_FILES = ("_broker", "_presence", "_store", "_ratelimit", "_admission", "_registry")
COMPONENTS: tuple[tuple[str, Callable[[str, str], bool]], ...] = (
    ("bench harness (bench/e2e.py)", lambda f, _: f.endswith("bench/e2e.py")),
    (
        "broker state machine",
        lambda f, _: "/meshproto/" in f and f.rsplit("/", 1)[-1].startswith(_BROKER_FILES),
    ),
    (
        "codec (meshproto._codec, _frames)",
        lambda f, _: f.endswith(("meshproto/_codec.py", "meshproto/_frames.py")),
    ),
    ("core client (other meshproto)", lambda f, _: "/meshproto/" in f),
    ("ws glue (meshproto_ws)", lambda f, _: "/meshproto_ws/" in f),
    ("adapter (meshproto_anyio)", lambda f, _: "/meshproto_anyio/" in f),
    ("json (stdlib)", lambda f, fn: "/json/" in f or "_json" in fn),
    ("wsproto (+h11)", lambda f, _: "/wsproto/" in f or "/h11/" in f),
    ("anyio", lambda f, _: "/anyio/" in f),
    ("socket syscalls", lambda f, fn: f == "~" and ("socket" in fn or "poll" in fn)),
    ("asyncio event loop", lambda f, _: "/asyncio/" in f or f.endswith("selectors.py")),
)


OTHER = "other (no caller to charge)"

#: A pstats entry: (calls, primitive calls, tottime, cumtime, {caller: (.., .., tottime, ..)}).
StatsTable = dict[tuple[str, int, str], tuple[Any, ...]]


def component(filename: str, function: str) -> str | None:
    """The component of a function, ``None`` for a builtin or stdlib helper."""
    for name, test in COMPONENTS:
        if test(filename, function):
            return name
    return None


def charge(table: StatsTable, key: tuple[str, int, str], depth: int = 0) -> dict[str, float]:
    """Which components ``key``'s own time belongs to (fractions summing to 1).

    A builtin or stdlib helper (``isinstance``, ``len``, ``enum``, ``codecs`` ...)
    is charged to its callers, in proportion to the time it spent for each.
    """
    name = component(key[0], key[2])
    if name is not None:
        return {name: 1.0}
    callers = table[key][4]
    spent = sum(v[2] for v in callers.values())
    if depth > 8 or spent <= 0:
        return {OTHER: 1.0}
    shares: dict[str, float] = {}
    for caller, v in callers.items():
        for owner, fraction in charge(table, caller, depth + 1).items():
            shares[owner] = shares.get(owner, 0.0) + fraction * v[2] / spent
    return shares


def profile_ours(n: int) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    anyio.run(run_ours, n, backend="asyncio")
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    table: StatsTable = stats.stats  # type: ignore[attr-defined]
    by_component: dict[str, float] = {}
    for key, entry in table.items():
        for name, fraction in charge(table, key).items():
            by_component[name] = by_component.get(name, 0.0) + fraction * entry[2]
    total = sum(by_component.values())
    out.write(f"cProfile of one e2e run on asyncio, N={n}: {total:.2f} s of own time, ")
    out.write(f"{total / n * 1e6:.0f} us per message (inflated by the profiler)\n")
    out.write("own time (tottime) by component, builtins and stdlib helpers charged to callers:\n")
    for name, seconds in sorted(by_component.items(), key=lambda kv: -kv[1]):
        out.write(f"  {name:<36}{seconds / total:6.1%}  {seconds / n * 1e6:7.1f} us/message\n")
    for order in ("cumulative", "tottime"):
        out.write(f"\n--- top 25 by {order} ---\n")
        stats.sort_stats(order).print_stats(25)
    text = out.getvalue()
    prefixes = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["stdlib"], str(REPO)}
    for prefix in sorted(prefixes, key=len, reverse=True):
        text = text.replace(prefix + "/", "")
    return text


# --- main ----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: small N, 1 repeat")
    parser.add_argument("--profile", action="store_true", help="also profile one of our runs")
    parser.add_argument("-n", type=int, default=None, help="messages per run")
    args = parser.parse_args()
    n = args.n if args.n is not None else (N_QUICK if args.quick else N_FULL)
    repeats = 1 if args.quick else REPEATS
    frame = send_frame_text()
    frames = wire_frames()

    scratch = tempfile.TemporaryDirectory(prefix="meshproto-bench-")
    databases = iter(range(1_000_000))

    def sqlite(synchronous: str = "NORMAL") -> Callable[[], Store]:
        def make() -> Store:
            path = Path(scratch.name) / f"broker-{next(databases)}.db"
            return SqliteStore(path, synchronous=synchronous)

        return make

    runs: dict[str, Callable[[int], Run]] = {
        "e2e asyncio": lambda k: anyio.run(run_ours, k, backend="asyncio"),
        "wsproto relay": lambda k: anyio.run(run_relay, k, frames, backend="asyncio"),
        "websockets echo": lambda k: anyio.run(run_echo, k, frame, backend="asyncio"),
        "e2e sqlite (asyncio)": lambda k: anyio.run(
            partial(run_ours, k, store=sqlite()), backend="asyncio"
        ),
    }
    if importlib.util.find_spec("trio") is not None:
        runs["e2e trio (extra)"] = lambda k: anyio.run(run_ours, k, backend="trio")
    runs["e2e sync (threads)"] = run_sync

    print(
        f"meshproto {meshproto.__version__} e2e bench, Python {platform.python_version()} "
        f"({platform.python_implementation()}), anyio {version('anyio')}, "
        f"wsproto {version('wsproto')}, websockets {version('websockets')}, "
        f"{os.cpu_count()} CPUs"
    )
    print(
        f"loopback 127.0.0.1 port 0; 1 sender -> reference broker -> 1 receiver, direct "
        f'messages, priority "now", window {WINDOW} sends in flight; N={n} per run, '
        f"{repeats} repeat(s) interleaved, medians"
    )
    print(
        f"broker: BrokerOptions(rate_burst={RATE_BURST}, rate_per_minute={RATE_PER_MINUTE:g}) "
        "so the rate limit never throttles the bench; other options default"
    )
    print(
        f"frames: send {len(frame.encode())} B (body {len(BODY.encode())} B), ack "
        f"{len(frames.ack.encode())} B, push {len(frames.push.encode())} B, client_ack "
        f"{len(frames.client_ack.encode())} B; the relay writes these, the echo sends the "
        "send frame; compression off everywhere"
    )
    results = measure(runs, n, repeats)
    for label, measured in results.items():
        print(summary(label, measured))
    if args.profile:
        print(profile_ours(n))
    ours = statistics.median(r.rate for r in results["e2e asyncio"])
    relay = statistics.median(r.rate for r in results["wsproto relay"])
    baseline = statistics.median(r.rate for r in results["websockets echo"])
    blocking = statistics.median(r.rate for r in results["e2e sync (threads)"])
    durable = statistics.median(r.rate for r in results["e2e sqlite (asyncio)"])
    print_sqlite_figures(sqlite, quick=args.quick, ratio=durable / ours)
    scratch.cleanup()
    print(f"e2e-sync/websockets-echo ratio: {blocking / baseline:.2f}")
    print(f"e2e/websockets-echo ratio: {ours / baseline:.2f}")
    print(f"e2e-sync/wsproto-relay ratio: {blocking / relay:.2f}")
    print(f"e2e/wsproto-relay ratio: {ours / relay:.2f}")


def print_sqlite_figures(
    sqlite: Callable[[str], Callable[[], Store]], *, quick: bool, ratio: float
) -> None:
    """The SQLite broker's own figures: flatness, one in flight, the longest loop stall.

    Flatness runs ``FLAT_N`` messages per run (rounds interleaved, medians):
    the rate of the first and of the last ``FLAT_BLOCK`` deliveries, for each
    ``synchronous`` mode and for the in-memory broker as the baseline; the
    longest stall of the event loop (shared by the broker and both clients)
    during each run, as a median of the runs and the worst of them.
    """
    flat_n = 3 * FLAT_BLOCK // 10 if quick else FLAT_N
    block = FLAT_BLOCK // 10 if quick else FLAT_BLOCK
    rounds = 1 if quick else 3
    modes: dict[str, Callable[[], Store] | None] = {
        "sqlite synchronous=normal": sqlite("NORMAL"),
        "sqlite synchronous=full": sqlite("FULL"),
        "in memory": None,
    }
    figures: dict[str, list[tuple[float, float, float]]] = {label: [] for label in modes}
    for _ in range(rounds):
        for label, store in modes.items():
            marks: list[float] = []
            stalls = StallMeter()
            gc.collect()
            anyio.run(
                partial(
                    run_ours,
                    flat_n,
                    store=store,
                    marks=marks,
                    mark_every=block,
                    stalls=stalls,
                ),
                backend="asyncio",
            )
            first = block / (marks[1] - marks[0])
            last = block / (marks[-1] - marks[-2])
            figures[label].append((first, last, stalls.longest))
    for label, runs in figures.items():
        first = statistics.median(f for f, _, _ in runs)
        last = statistics.median(la for _, la, _ in runs)
        stall = statistics.median(st for _, _, st in runs)
        worst = max(st for _, _, st in runs)
        print(
            f"e2e {label}: {flat_n} messages, first {block}: {first:.0f} messages/s, "
            f"last {block}: {last:.0f} messages/s (last/first {last / first:.2f}), "
            f"longest loop stall {stall * 1e3:.1f} ms (worst run {worst * 1e3:.1f} ms)"
        )
    n = LATENCY_N // 10 if quick else LATENCY_N
    p50 = {}
    for label, store in (("in-memory", None), ("sqlite", sqlite("NORMAL"))):
        results = []
        for _ in range(1 if quick else 3):
            gc.collect()
            results.append(
                anyio.run(partial(run_ours, n, store=store, window=1), backend="asyncio")
            )
        p50[label] = statistics.median(percentile(r.latencies_ms, 50) for r in results)
    print(
        f"one in flight: send->ack p50 in memory {p50['in-memory']:.3f} ms, sqlite "
        f"{p50['sqlite']:.3f} ms (sqlite/in-memory {p50['sqlite'] / p50['in-memory']:.2f})"
    )
    print(f"e2e-sqlite/in-memory ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
