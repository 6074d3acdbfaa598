"""What our clients cost, against a minimal client on ``websockets``, one broker apart.

Run ``python bench/client.py`` (``--quick`` for a smoke run, ``--profile``
adds a cProfile of one run of our anyio client, ``-n`` sets the messages per
run). Everything binds 127.0.0.1.

The broker
----------

The reference :class:`~meshproto.Broker` with :class:`~meshproto_crypto.Ed25519Verifier`,
served by :func:`meshproto_anyio.serve_broker` in a **separate process**
(``python bench/client.py --serve``, which binds port 0 and prints the port).
The bench process therefore runs the two clients and nothing else, and its
CPU time (``time.process_time()``, every thread) is the clients' own. The
broker's rate limit and store bound are raised so that they never throttle
the bench; one broker serves every round.

The clients
-----------

Each run makes two fresh members with their own ed25519 keys, a sender and a
receiver, both past ``hello_ack`` before the clock starts. The sender sends
``N`` direct messages (a ~100-byte body, priority ``now``); the receiver takes
each push and answers it with a ``client_ack``. A run ends when every message
is delivered and every send acknowledged.

ours anyio
    :func:`meshproto_anyio.connect` on asyncio: ``WINDOW`` tasks each
    ``await sender.send(...)`` in a loop; one task reads
    ``receiver.messages()`` (which writes the ``client_ack``).
ours sync
    :func:`meshproto_sync.connect` (one I/O thread per client): the window is
    kept with ``send_nowait`` and a ``threading.Semaphore(WINDOW)`` released
    by each future's done-callback; one thread calls ``receiver.receive()``.
minimal (the baseline)
    Two ``websockets.asyncio.client.connect`` clients, compression off, that
    speak the same frames and nothing more: a signed ``hello`` (the same
    fields our hello carries), then the sender writes ``send`` frames (the
    shape ours writes: random 16-hex id, 24 random nonce bytes and the body
    in base64, as our default sealer does) with a semaphore keeping
    ``WINDOW`` in flight while a reader task parses each frame with
    ``json.loads`` and releases the semaphore on its ``ack``; the receiver
    parses each push and writes its ``client_ack``. No reconnects, no
    validation, no outbox: the protocol's bare cost on a well-known library.

Figures
-------

* CPU per message: the bench process's CPU time over the run / ``N``, in µs
  (sender and receiver together), with ``WINDOW`` sends in flight.
* messages/s of the same runs (wall clock, for reference: the broker's own
  speed bounds it).
* send->ack p50 with ONE message in flight (``LATENCY_N`` sends, one at a
  time), in ms: from the send call to the ack seen by the sender.

The variants alternate within each round, ``REPEATS`` rounds, after one
short warm-up of each; medians are reported, with ratios ours / minimal
(lower is better for us). The last two lines are
``client-sync/minimal ratios: cpu X.XX, p50 X.XX`` and
``client/minimal ratios: cpu X.XX, p50 X.XX`` (ours on anyio).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import random
import statistics
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from time import perf_counter, process_time
from typing import Any

from _windowed import windowed_anyio, windowed_sync

MESH = "mesh-client-bench"
WINDOW = 100
N_FULL = 5_000
N_QUICK = 300
LATENCY_N = 1_000
LATENCY_N_QUICK = 50
REPEATS = 5
#: A realistic chat-sized body: about 100 bytes of UTF-8 text (as in bench/e2e.py).
BODY = (
    "build 4711 passed on linux-x86_64; 2 flaky tests retried "
    "(test_sync, test_io). deploying to staging"
)
REPO = Path(__file__).resolve().parent.parent


def run_timeout(n: int) -> float:
    """A generous bound on one run (connect, N messages, shutdown)."""
    return 30.0 + n / 50


# --- the broker process ------------------------------------------------------------


def serve() -> None:
    import anyio  # noqa: PLC0415

    from meshproto import Broker, BrokerOptions, StaticRegistry  # noqa: PLC0415
    from meshproto_anyio import serve_broker  # noqa: PLC0415
    from meshproto_crypto import Ed25519Verifier  # noqa: PLC0415

    broker = Broker(
        StaticRegistry(open_mesh=MESH),
        verifier=Ed25519Verifier(),
        rng=random.Random(7),
        options=BrokerOptions(
            rate_burst=1_000_000_000,
            rate_per_minute=1e12,
            store_limit_per_member=1_000_000,
        ),
    )

    async def main() -> None:
        async with anyio.create_task_group() as tasks:
            server = await tasks.start(
                lambda task_status: serve_broker(broker, port=0, task_status=task_status)
            )
            print(f"listening {server.port}", flush=True)

    anyio.run(main)


class BrokerProcess:
    """The broker in its own process, for as long as the bench runs."""

    def __init__(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True, env=env
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("listening"):
            self.process.kill()
            raise RuntimeError(f"the broker did not start: {line!r}")
        self.url = f"ws://127.0.0.1:{int(line.split()[1])}/ws"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# --- identities ----------------------------------------------------------------------

_members = iter(range(1_000_000))


@dataclass(frozen=True)
class Member:
    """A fresh member: its id and its ed25519 key pair."""

    member_id: str
    keys: Any  # meshproto_crypto.KeyPair

    @staticmethod
    def make(role: str) -> Member:
        from meshproto_crypto import KeyPair  # noqa: PLC0415

        return Member(f"{role}-{next(_members)}", KeyPair.generate())

    @property
    def pubkey(self) -> str:
        return str(self.keys.pubkey)

    def signer(self) -> Any:
        from meshproto_crypto import Ed25519Signer  # noqa: PLC0415

        return Ed25519Signer(self.keys)

    def connect_options(self, url: str) -> dict[str, Any]:
        """What our clients' ``connect()`` takes to join as this member (either adapter)."""
        return {
            "url": url,
            "mesh_id": MESH,
            "member_id": self.member_id,
            "signer": self.signer(),
            "display_name": self.member_id,
            "close_timeout": 1.0,
        }

    def hello(self) -> str:
        """The signed member hello (docs/protocol.md §3.1), as our client writes it."""
        from meshproto import hello_signing_payload  # noqa: PLC0415

        now_ms = time.time_ns() // 1_000_000
        payload = hello_signing_payload(MESH, self.member_id, self.pubkey, now_ms)
        return json.dumps(
            {
                "type": "hello",
                "meshId": MESH,
                "memberId": self.member_id,
                "pubkey": self.pubkey,
                "sessionId": f"{random.getrandbits(64):016x}",
                "pid": os.getpid(),
                "cwd": os.getcwd(),
                "timestamp": now_ms,
                "signature": self.signer().sign(payload).hex(),
                "displayName": self.member_id,
            },
            separators=(",", ":"),
            ensure_ascii=False,
        )


@dataclass(frozen=True)
class Run:
    """One run: CPU time and wall time over it, and send->ack latencies (ms)."""

    n: int
    cpu: float
    wall: float
    latencies_ms: tuple[float, ...]


# --- the minimal client on websockets -----------------------------------------------


async def minimal_join(url: str, member: Member) -> Any:
    from websockets.asyncio.client import connect as ws_connect  # noqa: PLC0415

    ws = await ws_connect(url, compression=None, close_timeout=1.0)
    await ws.send(member.hello())
    while True:
        frame = json.loads(await ws.recv())
        if frame["type"] == "hello_ack":
            return ws
        if frame["type"] == "error":
            raise RuntimeError(f"hello refused: {frame}")


async def run_minimal(url: str, n: int, window: int) -> Run:
    sender_member, receiver_member = Member.make("sender"), Member.make("receiver")
    sender = await minimal_join(url, sender_member)
    receiver = await minimal_join(url, receiver_member)
    target = receiver_member.pubkey
    latencies = [0.0] * n
    sent_at: dict[str, tuple[int, float]] = {}
    slots = asyncio.Semaphore(window)
    acked = asyncio.Event()
    delivered = asyncio.Event()
    rng = random.Random()
    body64 = base64.b64encode(BODY.encode()).decode()
    dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

    async def produce() -> None:
        for index in range(n):
            await slots.acquire()
            send_id = f"{rng.getrandbits(64):016x}"
            nonce = base64.b64encode(rng.randbytes(24)).decode()
            frame = {
                "type": "send",
                "id": send_id,
                "targetSpec": target,
                "priority": "now",
                "nonce": nonce,
                "ciphertext": body64,
                "client_message_id": send_id,
            }
            sent_at[send_id] = (index, perf_counter())
            await sender.send(dumps(frame))

    async def read_acks() -> None:
        count = 0
        async for text in sender:
            frame = json.loads(text)
            kind = frame["type"]
            if kind == "ack":
                index, began = sent_at.pop(frame["id"])
                latencies[index] = perf_counter() - began
                if not frame["queued"]:
                    raise RuntimeError(f"send refused: {frame}")
                slots.release()
                count += 1
                if count == n:
                    acked.set()
                    return
            elif kind == "push":  # a system push (peer_joined ...): acknowledge it
                await sender.send(dumps(client_ack(frame)))

    async def receive_all() -> None:
        count = 0
        async for text in receiver:
            frame = json.loads(text)
            if frame["type"] != "push":
                continue
            await receiver.send(dumps(client_ack(frame)))
            if frame.get("subtype") != "system":
                count += 1
                if count == n:
                    delivered.set()
                    return

    gc.collect()
    cpu0, wall0 = process_time(), perf_counter()
    tasks = [asyncio.ensure_future(job()) for job in (produce, read_acks, receive_all)]
    done, _ = await asyncio.wait(tasks, timeout=run_timeout(n), return_when="FIRST_EXCEPTION")
    cpu, wall = process_time() - cpu0, perf_counter() - wall0
    for task in tasks:
        if task not in done:
            task.cancel()
            raise RuntimeError("the minimal run did not finish in time")
        task.result()
    await sender.close()
    await receiver.close()
    return Run(n, cpu, wall, tuple(x * 1_000 for x in latencies))


def client_ack(push: dict[str, Any]) -> dict[str, Any]:
    ack = {"type": "client_ack", "brokerMessageId": push["messageId"]}
    if push.get("client_message_id") is not None:
        ack["clientMessageId"] = push["client_message_id"]
    return ack


# --- ours on anyio ---------------------------------------------------------------------


async def run_ours(url: str, n: int, window: int) -> Run:
    import anyio  # noqa: PLC0415

    from meshproto import ConnectionState  # noqa: PLC0415
    from meshproto_anyio import connect  # noqa: PLC0415

    sender_member, receiver_member = Member.make("sender"), Member.make("receiver")
    with anyio.fail_after(run_timeout(n)):
        async with (
            connect(**sender_member.connect_options(url)) as sender,
            connect(**receiver_member.connect_options(url)) as receiver,
        ):
            await sender.wait_state(ConnectionState.OPEN)
            await receiver.wait_state(ConnectionState.OPEN)
            run = await windowed_anyio(sender, receiver, n, window, BODY)
    return Run(n, run.cpu, run.end - run.start, run.latencies_ms)


# --- ours, blocking -----------------------------------------------------------------------


def run_sync(url: str, n: int, window: int) -> Run:
    from meshproto import ConnectionState  # noqa: PLC0415
    from meshproto_sync import connect  # noqa: PLC0415

    bound = run_timeout(n)
    sender_member, receiver_member = Member.make("sender"), Member.make("receiver")
    with (
        connect(**sender_member.connect_options(url)) as sender,
        connect(**receiver_member.connect_options(url)) as receiver,
    ):
        sender.wait_state(ConnectionState.OPEN, timeout=bound)
        receiver.wait_state(ConnectionState.OPEN, timeout=bound)
        run = windowed_sync(sender, receiver, n, window, BODY, bound=bound)
    return Run(n, run.cpu, run.end - run.start, run.latencies_ms)


# --- measuring -------------------------------------------------------------------------

Variant = Callable[[str, int, int], Run]


def on_asyncio(run: Callable[[str, int, int], Any]) -> Variant:
    return lambda url, n, window: asyncio.run(run(url, n, window))


VARIANTS: dict[str, Variant] = {
    "ours anyio": on_asyncio(run_ours),
    "minimal": on_asyncio(run_minimal),
    "ours sync": run_sync,
}


def measure(url: str, n: int, latency_n: int, repeats: int) -> dict[str, list[tuple[Run, Run]]]:
    """Each variant once per round (interleaved): a windowed run, then one in flight."""
    for run in VARIANTS.values():
        run(url, min(n, 200), WINDOW)
    results: dict[str, list[tuple[Run, Run]]] = {label: [] for label in VARIANTS}
    for _ in range(repeats):
        for label, run in VARIANTS.items():
            windowed = run(url, n, WINDOW)
            single = run(url, latency_n, 1)
            results[label].append((windowed, single))
    return results


def cpu_us(runs: list[tuple[Run, Run]]) -> float:
    return statistics.median(w.cpu / w.n * 1e6 for w, _ in runs)


def rate(runs: list[tuple[Run, Run]]) -> float:
    return statistics.median(w.n / w.wall for w, _ in runs)


def p50_ms(runs: list[tuple[Run, Run]]) -> float:
    return statistics.median(statistics.median(s.latencies_ms) for _, s in runs)


def profile_ours(url: str, n: int) -> str:
    """cProfile of one windowed run of our anyio client (the broker is elsewhere)."""
    profiler = cProfile.Profile()
    profiler.enable()
    asyncio.run(run_ours(url, n, WINDOW))
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    table: dict[Any, tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in table.values())
    out.write(
        f"cProfile of our anyio client (sender + receiver), N={n}: {total:.2f} s of own time, "
        f"{total / n * 1e6:.0f} us per message (inflated by the profiler)\n"
        "top 15 by tottime (us per message):\n"
    )
    top = sorted(table.items(), key=lambda kv: -kv[1][2])[:15]
    for (filename, line, function), entry in top:
        out.write(f"  {entry[2] / n * 1e6:7.1f}  {entry[0]:>8}  {filename}:{line}({function})\n")
    out.write("\n--- top 25 by cumulative ---\n")
    stats.sort_stats("cumulative").print_stats(25)
    text = out.getvalue()
    prefixes = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["stdlib"], str(REPO)}
    for prefix in sorted(prefixes, key=len, reverse=True):
        text = text.replace(prefix + "/", "")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: small N, 1 repeat")
    parser.add_argument("--profile", action="store_true", help="also profile our anyio client")
    parser.add_argument("-n", type=int, default=None, help="messages per windowed run")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    n = args.n if args.n is not None else (N_QUICK if args.quick else N_FULL)
    latency_n = LATENCY_N_QUICK if args.quick else LATENCY_N
    repeats = 1 if args.quick else REPEATS
    print(
        f"client bench, Python {platform.python_version()} ({platform.python_implementation()}), "
        f"anyio {version('anyio')}, wsproto {version('wsproto')}, "
        f"websockets {version('websockets')}, {os.cpu_count()} CPUs"
    )
    print(
        f"reference broker (ed25519 hellos) in a separate process; 1 sender -> 1 receiver, "
        f"direct messages; N={n} with {WINDOW} in flight, {latency_n} with 1 in flight; "
        f"{repeats} round(s) interleaved, medians"
    )
    broker = BrokerProcess()
    try:
        results = measure(broker.url, n, latency_n, repeats)
        if args.profile:
            print(profile_ours(broker.url, n))
    finally:
        broker.stop()
    base = results["minimal"]
    for label, runs in results.items():
        print(
            f"{label + ':':<12} CPU {cpu_us(runs):6.1f} us/message (sender + receiver), "
            f"{rate(runs):6.0f} messages/s; one in flight: send->ack p50 {p50_ms(runs):.3f} ms"
        )
    for label, name in (("ours sync", "client-sync"), ("ours anyio", "client")):
        runs = results[label]
        print(
            f"{name}/minimal ratios: cpu {cpu_us(runs) / cpu_us(base):.2f}, "
            f"p50 {p50_ms(runs) / p50_ms(base):.2f}"
        )


if __name__ == "__main__":
    main()
