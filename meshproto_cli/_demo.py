"""``meshproto demo``: the whole mesh on one machine, in under a minute.

1. Start the reference broker on a free loopback port, with a temporary
   SQLite store and three members whose hellos are signed with real ed25519
   keys.
2. Connect alice, bob and carol.
3. alice sends bob a direct message in every priority, sends carol (who is
   ``working``) a ``next`` message that the broker holds until carol turns
   ``idle``, and broadcasts to everyone.
4. alice streams 200 direct messages to bob; halfway through, the broker is
   stopped and a new one started on the same port and the same store. The
   clients reconnect, re-send what was in flight with the same
   ``client_message_id``, and the broker's stored dedupe records keep it
   from making copies.
5. Count what arrived. The last line is ``delivered N/N, lost L,
   duplicated D``.

Bodies are end-to-end encrypted for direct messages; the report shows
message counts and sizes, never a body, and nothing secret is logged.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskStatus

from meshproto import (
    Backoff,
    Broker,
    BrokerOptions,
    ClientOptions,
    ConnectionState,
    Event,
    Member,
    MessageReceived,
    ReconnectScheduled,
    SendError,
    StateChanged,
    StaticRegistry,
    SystemMessage,
)
from meshproto_anyio import BrokerServer, Client, connect, running_broker
from meshproto_anyio.sqlite_store import SqliteStore
from meshproto_crypto import BoxSealer, Ed25519Signer, Ed25519Verifier, KeyPair
from meshproto_ws import PooledSystemRandom

__all__ = ["run_demo"]

MESH_ID = "meshproto-demo"
STREAM = 200
WINDOW = 20
DEADLINE = 50.0  # seconds; the demo promises to finish within 60
# Reconnect fast so the demo is quick; real clients use 1-30 s caps.
CLIENT_OPTIONS = ClientOptions(backoff=Backoff(caps=(0.05, 0.1, 0.2, 0.4, 0.8, 1.0)))
# One member sends 200 messages in seconds: lift the 60/min default for the demo.
BROKER_OPTIONS = BrokerOptions(rate_burst=1000, rate_per_minute=60_000.0)


@dataclass
class Peer:
    name: str
    member: KeyPair
    session: KeyPair
    client: Client | None = None
    received: Counter[str] = field(default_factory=Counter)
    arrived: anyio.Event = field(default_factory=anyio.Event)
    reconnects: int = 0
    resends: int = 0


class Report:
    def __init__(self, out: Callable[[str], None]) -> None:
        self.out = out
        self.start = time.monotonic()

    def line(self, text: str) -> None:
        self.out(f"[{time.monotonic() - self.start:6.2f}s] {text}")

    def section(self, title: str) -> None:
        self.out("")
        self.out(f"== {title}")


def _on_event(peer: Peer, report: Report) -> Callable[[Event], None]:
    def handle(event: Event) -> None:
        if isinstance(event, StateChanged) and event.new in (
            ConnectionState.RECONNECTING,
            ConnectionState.OPEN,
        ):
            report.line(f"{peer.name}: {event.old} -> {event.new}")
        elif isinstance(event, ReconnectScheduled):
            peer.reconnects += 1
        elif isinstance(event, SystemMessage):
            name = event.data.get("name", "?")
            report.line(f"{peer.name} hears: {name} {event.event.replace('_', ' ')}")

    return handle


async def _collect(peer: Peer, expected: Callable[[], int]) -> None:
    assert peer.client is not None
    async for message in peer.client.messages():
        if isinstance(message, MessageReceived):
            peer.received[message.text] += 1
            if sum(peer.received.values()) >= expected():
                peer.arrived.set()


async def _broker_generation(
    store_path: Path,
    registry: StaticRegistry,
    port: int,
    stop: anyio.Event,
    done: anyio.Event,
    *,
    task_status: TaskStatus[BrokerServer] = anyio.TASK_STATUS_IGNORED,
) -> None:
    store = SqliteStore(store_path)
    try:
        broker = Broker(
            registry,
            verifier=Ed25519Verifier(),
            store=store,
            rng=PooledSystemRandom(),
            options=BROKER_OPTIONS,
        )
        async with running_broker(broker, port=port) as server:
            task_status.started(server)
            await stop.wait()
    finally:
        store.close()
        done.set()


async def _wait_delivered(peers: list[Peer], expected: dict[str, int], timeout: float) -> None:
    with anyio.move_on_after(timeout):
        for peer in peers:
            while sum(peer.received.values()) < expected[peer.name]:
                peer.arrived = anyio.Event()
                await peer.arrived.wait()


async def run_demo(
    out: Callable[[str], None] = print, *, make_keys: Callable[[], KeyPair] = KeyPair.generate
) -> int:
    """Run the demo, reporting through ``out``; 0 if nothing was lost or duplicated."""
    report = Report(out)
    names = ("alice", "bob", "carol")
    peers = {n: Peer(n, make_keys(), make_keys()) for n in names}
    registry = StaticRegistry(
        Member(MESH_ID, f"member-{p.name}", p.member.pubkey, p.name) for p in peers.values()
    )
    expected = {"alice": 0, "bob": 0, "carol": 0}
    failed_sends = 0

    with tempfile.TemporaryDirectory(prefix="meshproto-demo-") as tmp, anyio.fail_after(DEADLINE):
        store_path = Path(tmp) / "broker.db"
        async with anyio.create_task_group() as tasks:
            report.section("broker")
            stop, done = anyio.Event(), anyio.Event()
            server: BrokerServer = await tasks.start(
                _broker_generation, store_path, registry, 0, stop, done
            )
            port = server.port
            report.line(f"reference broker on {server.url}, SQLite store in a temporary folder")

            report.section("three peers join (ed25519-signed session hellos)")
            async with _connect_all(peers, server.url, report) as clients:
                for peer in peers.values():
                    tasks.start_soon(_collect, peer, lambda p=peer: expected[p.name])
                bob, carol = peers["bob"], peers["carol"]

                async def send(to: Peer | str, text: str, priority: str = "next") -> str | None:
                    nonlocal failed_sends
                    # To the member's key: the broker keeps messages for an offline
                    # member (in its store, so across its own restarts), while a
                    # session key is known only while that session is around.
                    target = to.member.pubkey if isinstance(to, Peer) else to
                    try:
                        return await clients["alice"].send(target, text, priority)
                    except SendError as exc:
                        failed_sends += 1
                        report.line(f"send failed: {exc.reason}")
                        return None

                report.section("direct messages, one per priority (end-to-end encrypted)")
                for priority in ("now", "next", "low"):
                    expected["bob"] += 1
                    message_id = await send(bob, f"direct {priority}", priority)
                    report.line(f"alice -> bob [{priority}] acked as {message_id}")
                await _wait_delivered([bob], expected, 5)
                report.line(f"bob has {sum(bob.received.values())} messages")

                report.section("held until idle")
                await clients["carol"].set_status("working")
                await anyio.sleep(0.1)
                expected["carol"] += 1
                message_id = await send(carol, "for carol, when she is free", "next")
                report.line(f"carol is working; alice -> carol [next] acked as {message_id}")
                await anyio.sleep(0.5)
                report.line(f"after 0.5 s carol has {sum(carol.received.values())} messages (held)")
                await clients["carol"].set_status("idle")
                await _wait_delivered([carol], expected, 5)
                report.line(f"carol turned idle and has {sum(carol.received.values())} message")

                report.section("broadcast to everyone else")
                expected["bob"] += 1
                expected["carol"] += 1
                message_id = await send("*", "broadcast to the mesh", "next")
                await _wait_delivered([bob, carol], expected, 5)
                report.line(f"alice -> * acked as {message_id}; bob and carol both have it")

                report.section(f"a stream of {STREAM} messages, broker restarted halfway")
                expected["bob"] += STREAM
                window = anyio.Semaphore(WINDOW)
                halfway = anyio.Event()
                restarted = anyio.Event()

                async def one(i: int) -> None:
                    try:
                        await send(bob, f"stream {i:03d}", "now")
                    finally:
                        window.release()

                async def restart() -> None:
                    nonlocal stop, done
                    await halfway.wait()
                    report.line("stopping the broker (sends are in flight)")
                    stop.set()
                    await done.wait()
                    stop, done = anyio.Event(), anyio.Event()
                    await tasks.start(_broker_generation, store_path, registry, port, stop, done)
                    report.line(f"new broker on the same port {port} and the same store")
                    restarted.set()

                async with anyio.create_task_group() as stream:
                    stream.start_soon(restart)
                    for i in range(STREAM):
                        await window.acquire()
                        if i == STREAM // 2:
                            halfway.set()
                        stream.start_soon(one, i)
                await restarted.wait()
                await _wait_delivered([bob, carol], expected, 15)
                for peer in peers.values():
                    peer.resends = clients[peer.name].counters.resends
            stop.set()

    return _summarise(report, peers, expected, failed_sends)


class _connect_all:
    """Connect every peer (an async context manager over several ``connect()``)."""

    def __init__(self, peers: dict[str, Peer], url: str, report: Report) -> None:
        self.peers = peers
        self.url = url
        self.report = report
        self._stack: Any = None

    async def __aenter__(self) -> dict[str, Client]:
        from contextlib import AsyncExitStack  # noqa: PLC0415 (kept beside its one use)

        self._stack = AsyncExitStack()
        clients = {}
        for peer in self.peers.values():
            client = await self._stack.enter_async_context(
                connect(
                    self.url,
                    mesh_id=MESH_ID,
                    member_id=f"member-{peer.name}",
                    signer=Ed25519Signer(peer.member),
                    session_id=f"demo-{peer.name}",
                    session_signer=Ed25519Signer(peer.session),
                    sealer=BoxSealer(peer.member, peer.session),
                    options=CLIENT_OPTIONS,
                    on_event=_on_event(peer, self.report),
                )
            )
            await client.wait_state(ConnectionState.OPEN)
            peer.client = client
            clients[peer.name] = client
            self.report.line(f"{peer.name} joined as {peer.member.pubkey[:12]}...")
        return clients

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.__aexit__(*exc)


def _summarise(
    report: Report, peers: dict[str, Peer], expected: dict[str, int], failed_sends: int
) -> int:
    report.section("report")
    delivered = lost = duplicated = 0
    total = sum(expected.values())
    for name, peer in peers.items():
        unique = len(peer.received)
        dupes = sum(peer.received.values()) - unique
        delivered += min(unique, expected[name])
        lost += max(expected[name] - unique, 0)
        duplicated += dupes
        report.out(
            f"  {name:<6} expected {expected[name]:>3}, got {unique:>3} distinct, "
            f"{dupes} duplicated, reconnected {peer.reconnects}x, re-sent {peer.resends}"
        )
    if failed_sends:
        report.out(f"  {failed_sends} sends failed and were reported to the sender")
    report.out(f"delivered {delivered}/{total}, lost {lost}, duplicated {duplicated}")
    return 0 if lost == 0 and duplicated == 0 else 1


def main() -> int:
    return anyio.run(run_demo)


if __name__ == "__main__":
    sys.exit(main())
