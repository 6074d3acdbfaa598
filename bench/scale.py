"""One broker process, thousands of peers: the join storm, idle sockets, a broadcast, memory.

Run ``python bench/scale.py`` (``--peers N``, ``--idle S``, ``--flood M``;
``--quick`` for a smoke run). The reference broker runs in a process of its
own (this file with ``--serve``): an open mesh that verifies real ed25519
signatures, the in-memory store, ``max_connections_per_mesh`` raised to fit,
and the rate limit raised so that it never throttles. This process plays
the peers over plain sockets with a minimal WebSocket client of its own
(asyncio protocols, a handshake, masked frames, pongs; no wsproto), each
peer with its own ed25519 key and a signed ``hello``, so that the broker,
not the peers, is what is measured. The broker's CPU and RSS are read from
``/proc``.

Phases, each printed as it ends:

join storm
    ``--peers`` peers connect (at most ``CONNECTING`` at a time) and say
    hello to the one mesh at once, as after a broker restart. Time until the
    last ``hello_ack``, and the hello rate of the first and of the last 1,000
    acks: the mesh's ``peer_joined`` fan-out makes each join cost more as
    the mesh grows, unless it is cheap. Also the broker's CPU per hello over
    the same two blocks, and how much of it was system time (the kernel's
    share: mostly copying the pushes into the sockets). Every peer reads
    (and counts) every system push it gets. The broker's handshake and hello timeouts are
    raised for the bench, so that a slow storm is measured rather than cut.
idle
    every socket stays open and idle for ``--idle`` seconds, answering the
    broker's pings: the broker's CPU over that time (percent of one core),
    and its RSS per connection (growth since before the storm / peers).
broadcast
    one peer sends a ``*`` broadcast; the time until the last of the others
    has it.
flood
    ``--flood`` direct messages from one meshproto client to another through
    the same broker (100 in flight), each taken and acknowledged: the
    broker's RSS growth from before the flood to after it, once everything
    was acknowledged and deleted.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import os
import random
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

WINDOW = 100
CONNECTING = 400  # connects in flight at once (the listen backlog is finite)
MESH = "mesh-scale"
MARKER = b"scale-broadcast-marker"
#: How the marker travels: the push's ciphertext is the body in base64.
MARKER64 = base64.b64encode(MARKER)
JOINED = b'"event":"peer_joined"'
PING = b"\x89\x00"  # a server's ping with an empty payload (the broker's)
TAIL = max(len(JOINED), len(PING), len(MARKER64)) - 1


# --- the broker process -------------------------------------------------------------------


def serve(port: int, peers: int, profile: str | None) -> None:
    import signal  # noqa: PLC0415

    import anyio  # noqa: PLC0415

    from meshproto import Broker, BrokerOptions, StaticRegistry  # noqa: PLC0415
    from meshproto_anyio import ServerOptions, serve_broker  # noqa: PLC0415
    from meshproto_crypto import Ed25519Verifier  # noqa: PLC0415

    broker = Broker(
        StaticRegistry(open_mesh=MESH),
        verifier=Ed25519Verifier(),
        rng=random.SystemRandom(),
        options=BrokerOptions(
            max_connections_per_mesh=peers + 10,
            rate_burst=10_000_000,
            rate_per_minute=6e9,
            store_limit_per_member=10_000_000,
            hello_timeout=600.0,  # a storm may take a while: measure it, do not cut it
        ),
    )

    async def main() -> None:
        async with anyio.create_task_group() as tasks:
            server = await tasks.start(
                lambda task_status: serve_broker(
                    broker,
                    port=port,
                    options=ServerOptions(handshake_timeout=600.0),
                    task_status=task_status,
                )
            )
            print(f"listening {server.port}", flush=True)

    if profile is None:
        anyio.run(main)
        return
    import cProfile  # noqa: PLC0415

    profiler = cProfile.Profile()

    def stop(signum: int, frame: object) -> None:
        profiler.disable()
        profiler.dump_stats(profile)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    profiler.enable()
    anyio.run(main)


class BrokerProcess:
    def __init__(self, peers: int, profile: str | None) -> None:
        extra = ["--profile", profile] if profile else []
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve", "--peers", str(peers), *extra],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("listening"):
            raise RuntimeError(f"the broker did not start: {line!r}")
        self.port = int(line.split()[1])
        self.ticks = os.sysconf("SC_CLK_TCK")

    def cpu_seconds(self) -> float:
        return sum(self.cpu_split())

    def cpu_split(self) -> tuple[float, float]:
        """The broker's CPU seconds so far: (user, system)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) / self.ticks, int(fields[12]) / self.ticks  # utime, stime

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


# --- a minimal WebSocket peer ---------------------------------------------------------------


def _frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (the mask is fixed: the bench measures the broker)."""
    mask = b"\x01\x02\x03\x04"
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    masked = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
    return header + mask + masked


PONG = _frame(0xA, b"")


@dataclass
class Stats:
    acked: list[float] = field(default_factory=list)
    broadcast_at: list[float] = field(default_factory=list)
    joined: int = 0  # peer_joined pushes read, by all peers
    watching: bool = False  # the broadcast phase: look for the marker too
    closed: int = 0


#: One read buffer for every peer (their callbacks never overlap): a chunk's bytes
#: are counted where the kernel put them, and the last few bytes of each peer's
#: previous chunk are copied in front of its next one.
READ_SIZE = 256 * 1024
SCAN = bytearray(TAIL + READ_SIZE)
SCAN_VIEW = memoryview(SCAN)


class Peer(asyncio.BufferedProtocol):
    """One peer: upgrade, hello, then count frames, answer pings, watch for the marker."""

    def __init__(self, identity: Identity, stats: Stats, port: int) -> None:
        self.identity = identity
        self.stats = stats
        self.port = port
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded = False
        self.helloed = False
        self.tail = b""
        self.ready = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            (
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def get_buffer(self, sizehint: int) -> memoryview:
        tail = self.tail
        SCAN[: len(tail)] = tail
        return SCAN_VIEW[len(tail) :]

    def buffer_updated(self, nbytes: int) -> None:
        edge = len(self.tail)
        if self.helloed:
            self._count(edge, edge + nbytes)
        else:
            self.tail = b""
            self.data_received(bytes(SCAN[edge : edge + nbytes]))

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            del buffer[: end + 4]
            self.upgraded = True
            assert self.transport is not None
            self.transport.write(_frame(0x1, self.identity.hello()))
        # Frame by frame until the hello_ack (the first text the broker sends).
        pos, size = 0, len(buffer)
        while size - pos >= 2:
            first, second = buffer[pos], buffer[pos + 1]
            n, head = second & 0x7F, 2
            if n == 126:
                if size - pos < 4:
                    break
                n, head = struct.unpack_from("!H", buffer, pos + 2)[0], 4
            elif n == 127:
                if size - pos < 10:
                    break
                n, head = struct.unpack_from("!Q", buffer, pos + 2)[0], 10
            if size - pos < head + n:
                break
            opcode = first & 0x0F
            start = pos + head
            pos = start + n
            if opcode == 0x9:  # ping: answer it
                assert self.transport is not None
                self.transport.write(_frame(0xA, bytes(buffer[start:pos])))
            elif opcode == 0x1 and buffer.find(b'"hello_ack"', start, pos) >= 0:
                self.helloed = True
                self.stats.acked.append(time.perf_counter())
                if not self.ready.done():
                    self.ready.set_result(None)
                rest = bytes(buffer[pos:])
                buffer.clear()
                SCAN[: len(rest)] = rest  # (a hello_ack's chunk is far smaller than SCAN)
                self._count(0, len(rest))
                return
        del buffer[:pos]

    def _count(self, edge: int, end: int) -> None:
        """After the hello_ack: count what matters in C, not frame by frame in Python.

        A peer must answer pings, count the ``peer_joined`` pushes and spot
        the broadcast marker; parsing millions of frames one by one would
        make this process, not the broker, what the storm measures. The last
        bytes of the previous chunk are kept, so that nothing is missed at a
        chunk's edge. A false ping (the two bytes inside some other frame)
        costs only a spare pong, which a WebSocket peer ignores.
        """
        scan = SCAN  # this peer's previous tail, then the new bytes, up to end
        stats = self.stats
        stats.joined += scan.count(JOINED, max(0, edge - len(JOINED) + 1), end)
        pings = 0  # found by its first byte (memchr, which JSON text never holds)
        at = scan.find(PING[0], max(0, edge - len(PING) + 1), end)
        while at >= 0:
            if at + 1 < end and scan[at + 1] == PING[1]:
                pings += 1
            at = scan.find(PING[0], at + 1, end)
        if pings:
            assert self.transport is not None
            self.transport.write(PONG * pings)
        # The marker only in the broadcast phase: a third pass over every byte
        # of the storm would be the peers' cost, not the broker's.
        if stats.watching and scan.find(MARKER64, max(0, edge - len(MARKER64) + 1), end) >= 0:
            stats.broadcast_at.append(time.perf_counter())
        self.tail = bytes(scan[max(0, end - TAIL) : end])

    def connection_lost(self, exc: Exception | None) -> None:
        self.stats.closed += 1
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before hello_ack: {exc}"))

    def send_text(self, text: str) -> None:
        assert self.transport is not None
        self.transport.write(_frame(0x1, text.encode()))


class Identity:
    """One peer's ed25519 key; it signs its hello when it connects (the skew is 60 s)."""

    def __init__(self, index: int) -> None:
        from nacl.signing import SigningKey  # noqa: PLC0415

        self.member_id = f"peer-{index:05d}"
        self.key = SigningKey.generate()
        self.pubkey = self.key.verify_key.encode().hex()

    def hello(self) -> bytes:
        from meshproto import hello_signing_payload  # noqa: PLC0415

        now_ms = time.time_ns() // 1_000_000
        payload = hello_signing_payload(MESH, self.member_id, self.pubkey, now_ms)
        hello = {
            "type": "hello",
            "meshId": MESH,
            "memberId": self.member_id,
            "pubkey": self.pubkey,
            "sessionId": self.member_id,
            "displayName": self.member_id,
            "timestamp": now_ms,
            "signature": self.key.sign(payload).signature.hex(),
        }
        return json.dumps(hello).encode()


def _rate(times: list[float]) -> float:
    return (
        (len(times) - 1) / (times[-1] - times[0])
        if len(times) > 1 and times[-1] > times[0]
        else 0.0
    )


def _cpu_between(samples: list[tuple[int, float]], start: int, end: int) -> float:
    """The broker's CPU seconds (or system seconds: the samples say) from the
    ``start``-th hello_ack to the ``end``-th (sampled)."""

    def at(count: int) -> float:
        for (n0, c0), (n1, c1) in itertools.pairwise(samples):
            if n0 <= count <= n1:
                return c0 if n1 == n0 else c0 + (c1 - c0) * (count - n0) / (n1 - n0)
        return samples[-1][1]

    return at(end) - at(start)


async def storm(broker: BrokerProcess, peers: int, idle: float) -> list[Peer]:
    loop = asyncio.get_running_loop()
    stats = Stats()
    identities = [Identity(i) for i in range(peers)]
    connecting = asyncio.Semaphore(CONNECTING)
    made: list[Peer] = []
    base_rss = broker.rss_bytes()

    async def one(identity: Identity) -> None:
        async with connecting:
            peer = Peer(identity, stats, broker.port)
            await loop.create_connection(lambda: peer, "127.0.0.1", broker.port)
            made.append(peer)
            await asyncio.wait_for(peer.ready, 600)

    samples: list[tuple[int, float]] = []  # (hello_acks so far, broker CPU seconds)
    system: list[tuple[int, float]] = []  # (hello_acks so far, broker system CPU seconds)

    def take_sample() -> None:
        user, kernel = broker.cpu_split()
        samples.append((len(stats.acked), user + kernel))
        system.append((len(stats.acked), kernel))

    async def sample() -> None:
        while True:
            take_sample()
            await asyncio.sleep(0.02)

    cpu0 = broker.cpu_seconds()
    mine0 = sum(os.times()[:2])
    began = time.perf_counter()
    sampler = asyncio.ensure_future(sample())
    await asyncio.gather(*(one(identity) for identity in identities))
    took = time.perf_counter() - began
    sampler.cancel()
    take_sample()
    cpu = broker.cpu_seconds() - cpu0
    peers_cpu = sum(os.times()[:2]) - mine0
    acks = sorted(stats.acked)
    first, last = _rate(acks[:1000]), _rate(acks[-1000:])
    print(
        f"join storm: {peers} peers in one mesh, all joined in {took:.1f} s "
        f"(broker CPU {cpu:.1f} s, the peers' {peers_cpu:.1f} s); hello rate of the first "
        f"1,000 {first:.0f}/s, "
        f"of the last 1,000 {last:.0f}/s (last/first {last / first:.2f})",
        flush=True,
    )
    block = min(1000, peers // 2)
    early, late = _cpu_between(samples, 0, block), _cpu_between(samples, peers - block, peers)
    early_sys = _cpu_between(system, 0, block)
    late_sys = _cpu_between(system, peers - block, peers)
    print(
        f"join storm: broker CPU per hello, the first {block:,} {early / block * 1e6:.0f} us, "
        f"the last {block:,} {late / block * 1e6:.0f} us (last/first "
        f"{late / early if early else float('nan'):.2f}); of which in the kernel (system "
        f"time: socket writes) {early_sys / block * 1e6:.0f} us and "
        f"{late_sys / block * 1e6:.0f} us",
        flush=True,
    )
    # Every peer hears of every later one: n(n-1)/2 peer_joined pushes in all.
    expected = peers * (peers - 1) // 2
    for _ in range(60_000):
        if stats.joined >= expected:
            break
        await asyncio.sleep(0.01)
    told = time.perf_counter() - began
    print(
        f"join storm: {stats.joined} of {expected} peer_joined pushes read, the last "
        f"{told:.1f} s after the first connect",
        flush=True,
    )
    await asyncio.sleep(2.0)  # what is still in flight (pongs, the last writes)
    rss = broker.rss_bytes()
    cpu0 = broker.cpu_seconds()
    wall0 = time.perf_counter()
    await asyncio.sleep(idle)
    idle_cpu = (broker.cpu_seconds() - cpu0) / (time.perf_counter() - wall0)
    print(
        f"idle: {peers} sockets for {idle:.0f} s: broker CPU {idle_cpu * 100:.2f} % of a core; "
        f"RSS {rss / 2**20:.1f} MiB, {(rss - base_rss) / peers / 1024:.1f} KiB per connection "
        f"({stats.closed} closed)",
        flush=True,
    )
    sender = made[0]
    stats.watching = True
    sent_at = time.perf_counter()
    sender.send_text(
        json.dumps(
            {
                "type": "send",
                "id": "b1",
                "targetSpec": "*",
                "priority": "now",
                "nonce": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                "ciphertext": base64.b64encode(MARKER).decode(),
            }
        )
    )
    for _ in range(3000):
        if len(stats.broadcast_at) >= peers - 1:
            break
        await asyncio.sleep(0.005)
    arrivals = sorted(stats.broadcast_at)
    last_arrival = (arrivals[-1] - sent_at) * 1e3 if arrivals else float("nan")
    print(
        f"broadcast: to {peers - 1} peers, {len(arrivals)} arrived, the last after "
        f"{last_arrival:.0f} ms",
        flush=True,
    )
    return made


async def flood(broker: BrokerProcess, messages: int) -> None:
    import anyio  # noqa: PLC0415

    from meshproto import ClientOptions, ConnectionState  # noqa: PLC0415
    from meshproto_anyio import connect  # noqa: PLC0415
    from meshproto_crypto import Ed25519Signer, KeyPair  # noqa: PLC0415

    url = f"ws://127.0.0.1:{broker.port}/ws"
    options = ClientOptions(max_outbox=WINDOW)

    def peer(name: str) -> object:
        return connect(
            url,
            mesh_id=MESH,
            member_id=name,
            signer=Ed25519Signer(KeyPair.generate()),
            display_name=name,
            options=options,
        )

    async with peer("flood-sender") as sender, peer("flood-receiver") as receiver:  # type: ignore[attr-defined]
        await sender.wait_state(ConnectionState.OPEN)
        await receiver.wait_state(ConnectionState.OPEN)
        await anyio.sleep(1.0)
        before = broker.rss_bytes()
        taken = 0
        next_index = 0

        async def send_loop() -> None:
            nonlocal next_index
            while next_index < messages:
                next_index += 1
                await sender.send(receiver.public_key, "x" * 100, "now")

        async def read() -> None:
            nonlocal taken
            async for _ in receiver.messages():
                taken += 1
                if taken == messages:
                    return

        began = time.perf_counter()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(read)
            for _ in range(WINDOW):
                tasks.start_soon(send_loop)
        took = time.perf_counter() - began
        await anyio.sleep(2.0)  # the last acknowledgements reach the broker
        after = broker.rss_bytes()
    print(
        f"flood: {messages} direct messages acknowledged and deleted in {took:.1f} s; broker "
        f"RSS {before / 2**20:.1f} -> {after / 2**20:.1f} MiB (growth "
        f"{(after - before) / 2**20:.1f} MiB)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--peers", type=int, default=5_000)
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of the idle phase")
    parser.add_argument("--flood", type=int, default=200_000, help="messages in the flood")
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--profile", metavar="FILE", help="cProfile the broker into FILE")
    args = parser.parse_args()
    if args.serve:
        serve(args.port, args.peers, args.profile)
        return
    if args.quick:
        args.peers, args.idle, args.flood = 200, 2.0, 2_000
    import meshproto  # noqa: PLC0415

    print(
        f"meshproto {meshproto.__version__} scale bench: one broker process, {args.peers} "
        f"peers in one mesh over loopback (minimal WebSocket peers, ed25519 hellos), "
        f"{os.cpu_count()} CPUs"
    )
    broker = BrokerProcess(args.peers, args.profile)
    try:
        peers = asyncio.run(storm(broker, args.peers, args.idle))
        del peers
        import anyio  # noqa: PLC0415

        anyio.run(flood, broker, args.flood)
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
