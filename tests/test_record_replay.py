"""Recording a client connection and replaying it: the same events, no secrets, clear refusals.

A real anyio session over sockets, with a broker restart in the middle, is
recorded and replayed to the very events its application saw; the blocking
client records when the environment says so; a recording holds no secret
key and, unless asked, no body; and a file this version cannot replay is
refused with a message that says why, not a traceback.
"""

from __future__ import annotations

import dataclasses
import json
import random
import subprocess
import sys
from collections import Counter, deque
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio_helpers import (
    FAST,
    MESH,
    anyio_backend,
    eventually,
    join,
    serve_until,
    signer,
)
from inmemory import Wire
from sync_helpers import broker, no_io_thread_outlives_the_test, portal
from sync_helpers import join as sync_join

from meshproto import (
    AcceptingVerifier,
    Backoff,
    Broker,
    ClientConfig,
    ClientOptions,
    Event,
    MessageReceived,
    StaticRegistry,
)
from meshproto.replay import (
    FORMAT_VERSION,
    RecordingConnection,
    ReplayError,
    describe_event,
    load,
    replay,
)
from meshproto.testing import FakeSigner
from meshproto_crypto import BoxSealer, Ed25519Signer, KeyPair
from meshproto_ws import RECORD_BODIES_ENV, RECORD_ENV, Recording, client_driver

__all__ = ["anyio_backend", "broker", "no_io_thread_outlives_the_test", "portal"]

ROOT = Path(__file__).resolve().parents[1]


def described(events: list[Event], bodies: bool) -> list[dict[str, Any]]:
    return json.loads(json.dumps([describe_event(e, bodies) for e in events]))


def replayed(path: Path) -> list[dict[str, Any]]:
    result = replay(load(path))
    assert result.same, result.difference
    return json.loads(json.dumps([event for _, _, event in result.events]))


def run_replay(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshproto.replay", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=60,
    )


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# --- in memory: the core alone ---------------------------------------------------------


def recorded_wire(
    tmp_path: Path, *, bodies: bool, sealer_keys: KeyPair | None = None
) -> tuple[Path, list[Event], list[MessageReceived]]:
    """Bob, recorded, on an in-memory wire with alice: messages, a held one, a lost link."""
    alice_signer, bob_signer = FakeSigner("alice"), FakeSigner("bob")
    registry = StaticRegistry(open_mesh=MESH)
    wire = Wire(Broker(registry, verifier=AcceptingVerifier(), rng=random.Random(3)))

    def config(who: FakeSigner, name: str, **extra: Any) -> ClientConfig:
        return ClientConfig(
            url="ws://127.0.0.1:7900/ws",
            mesh_id=MESH,
            member_id=f"member-{name}",
            signer=who,
            session_id=name,
            **extra,
        )

    alice = wire.connect("alice", config(alice_signer, "alice"))
    path = tmp_path / f"bob-{bodies}.jsonl"
    sink_lines: list[str] = []
    bob = RecordingConnection(
        config(bob_signer, "bob"),
        rng=random.Random(5),
        options=ClientOptions(inbox_limit=3),
        sink=lambda record: sink_lines.append(json.dumps(record)),
        bodies=bodies,
    )
    wire.clients["bob"], wire.events["bob"], wire.taken["bob"] = bob, [], []
    wire.backlog["bob"] = deque()
    bob.connect(wire.now)
    wire.pump()
    for i in range(8):
        alice.send(bob_signer.public_key, f"secret body {i}", "now", now=wire.now)
        wire.pump()
    bob.set_status("working", now=wire.now)
    bob.list_peers(now=wire.now)
    wire.pump()
    alice.send(bob_signer.public_key, "held while working", "next", now=wire.now)
    alice.send("*", "a broadcast", now=wire.now)
    wire.pump()
    wire.drop_link("bob")
    wire.advance(5.0)
    bob.set_status("idle", now=wire.now)
    bob.send(alice_signer.public_key, "secret reply", now=wire.now)
    wire.pump()
    wire.advance(40.0)
    bob.close(now=wire.now)
    wire.pump()
    path.write_text("\n".join(sink_lines) + "\n", encoding="utf-8")
    taken = [m for m in wire.taken["bob"] if isinstance(m, MessageReceived)]
    return path, wire.events["bob"], taken


@pytest.mark.parametrize("bodies", [False, True])
def test_an_in_memory_recording_replays_to_the_same_events(tmp_path: Path, bodies: bool) -> None:
    path, events, taken = recorded_wire(tmp_path, bodies=bodies)
    assert len(taken) == 10  # 8, the held one, the broadcast
    assert replayed(path) == described(events, bodies)
    first, second = run_replay(path), run_replay(path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout == second.stdout
    verdict = first.stdout.splitlines()[-1]
    assert "the same events as recorded" in verdict
    assert ("modulo bodies" in verdict) is not bodies
    text = path.read_text(encoding="utf-8")
    assert ("secret body" in text) is bodies
    assert ("secret reply" in text) is bodies


def test_a_recording_holds_no_secret_key(tmp_path: Path) -> None:
    keys, session_keys = KeyPair.generate(), KeyPair.generate()
    records: list[dict[str, Any]] = []
    core = RecordingConnection(
        ClientConfig(
            url="wss://user:password@broker.example:443/ws?token=t0ps3cret",
            mesh_id=MESH,
            member_id="member-x",
            signer=Ed25519Signer(keys),
            session_id="s",
            sealer=BoxSealer(keys),
            session_signer=Ed25519Signer(session_keys),
        ),
        rng=random.SystemRandom(),
        sink=records.append,
    )
    core.connect(0.0)
    core.transport_opened(1, now=0.1, wall_time_ms=1_800_000_000_000)
    core.receive_text('{"type":"hello_ack","presenceId":"p"}', now=0.2)
    core.send(KeyPair.generate().pubkey, "a sealed secret", now=0.3)
    core.drain_events()
    text = json.dumps(records)
    for secret in (keys.secret_key, session_keys.secret_key, "password", "t0ps3cret"):
        assert secret not in text
    assert "a sealed secret" not in text
    assert records[0]["config"]["url"] == "wss://broker.example:443/ws"
    assert records[0]["config"]["public_key"] == keys.pubkey
    assert records[0]["config"]["session_public_key"] == session_keys.pubkey


def test_sealed_messages_replay_without_the_keys(tmp_path: Path) -> None:
    """Bodies sealed with crypto_box: the replay needs none of the keys to open them."""
    alice_keys, bob_keys = KeyPair.generate(), KeyPair.generate()
    registry = StaticRegistry(open_mesh=MESH)
    wire = Wire(Broker(registry, verifier=AcceptingVerifier(), rng=random.Random(3)))

    def config(keys: KeyPair, name: str) -> ClientConfig:
        return ClientConfig(
            url="ws://127.0.0.1:7900/ws",
            mesh_id=MESH,
            member_id=f"member-{name}",
            signer=Ed25519Signer(keys),
            session_id=name,
            sealer=BoxSealer(keys),
        )

    alice = wire.connect("alice", config(alice_keys, "alice"))
    records: list[dict[str, Any]] = []
    bob = RecordingConnection(config(bob_keys, "bob"), rng=random.Random(1), sink=records.append)
    wire.clients["bob"], wire.events["bob"], wire.taken["bob"] = bob, [], []
    wire.backlog["bob"] = deque()
    bob.connect(wire.now)
    wire.pump()
    for i in range(3):
        alice.send(bob_keys.pubkey, f"boxed {i}", now=wire.now)
        wire.pump()
    path = tmp_path / "sealed.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    assert [m.text for m in wire.taken["bob"]] == ["boxed 0", "boxed 1", "boxed 2"]
    assert replayed(path) == described(wire.events["bob"], False)
    assert bob_keys.secret_key not in path.read_text(encoding="utf-8")


# --- over real sockets ----------------------------------------------------------------------

STREAM = 30
#: Reconnect 0.3 s after a drop, not at once: a connection that reaches the old
#: broker's listener just as it closes makes asyncio's sock_accept raise
#: InvalidStateError in the loop (python/cpython#153761), which fails the test.
PATIENT = dataclasses.replace(FAST, backoff=Backoff(caps=(0.3,), jitter=False))


@pytest.mark.anyio
@pytest.mark.parametrize("bodies", [False, True])
async def test_a_real_session_with_a_broker_restart_replays_to_the_same_events(
    tmp_path: Path, bodies: bool
) -> None:
    db = tmp_path / "broker.db"
    path = tmp_path / "bob.jsonl"
    events: list[Event] = []
    received: Counter[str] = Counter()
    bob_key = signer("bob").public_key
    with anyio.fail_after(30):
        async with anyio.create_task_group() as brokers:
            first_stop = anyio.Event()
            server = await brokers.start(serve_until, db, 0, first_stop)
            async with (
                join(server.url, "alice", options=PATIENT) as alice,
                join(
                    server.url,
                    "bob",
                    options=PATIENT,
                    events=events,
                    record=Recording(path, bodies=bodies),
                ) as bob,
            ):

                async def collect() -> None:
                    async for message in bob.messages():
                        assert isinstance(message, MessageReceived)
                        received[message.text] += 1

                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(collect)
                    for i in range(STREAM // 2):
                        await alice.send(bob_key, f"m{i:03d}", "now")
                    await bob.set_status("working")
                    await bob.list_peers()
                    await eventually(lambda: len(received) == STREAM // 2)
                    first_stop.set()  # the broker goes away, and a new one takes its file
                    await eventually(lambda: server.socket_count == 0)
                    second_stop = anyio.Event()
                    await brokers.start(serve_until, db, server.port, second_stop)
                    for i in range(STREAM // 2, STREAM):
                        await alice.send(bob_key, f"m{i:03d}", "next")  # held: bob is working
                    await bob.set_status("idle")
                    await eventually(lambda: len(received) == STREAM, timeout=15)
                    tasks.cancel_scope.cancel()
            second_stop.set()
    assert set(received.values()) == {1} and len(received) == STREAM
    records = lines(path)
    assert records[0]["version"] == FORMAT_VERSION
    assert all("wall" in record for record in records)
    calls = Counter(record.get("in") for record in records)
    assert calls["transport_opened"] >= 2  # before and after the restart
    assert calls["transport_closed"] >= 1
    assert calls["receive_text"] > STREAM
    assert replayed(path) == described(events, bodies)
    first, second = run_replay(path), run_replay(path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout == second.stdout
    assert "the same events as recorded" in first.stdout.splitlines()[-1]
    assert ("m000" in path.read_text(encoding="utf-8")) is bodies


def test_the_blocking_client_records_when_the_environment_says_so(
    broker: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(RECORD_ENV, str(tmp_path / "rec-{pid}-{n}.jsonl"))
    monkeypatch.setenv(RECORD_BODIES_ENV, "1")
    events_a: list[Event] = []
    with sync_join(broker.url, "a", events=events_a) as a, sync_join(broker.url, "b") as b:
        b.wait_state(b.state.OPEN, timeout=5)
        a.send(b.public_key, "hello over threads", timeout=5)
        assert b.receive(timeout=5).text == "hello over threads"
        with sync_join(broker.url, "c", record=False):
            pass
    files = sorted(tmp_path.glob("rec-*.jsonl"))
    assert len(files) == 2  # a and b; c said no
    by_member = {lines(f)[0]["config"]["member_id"]: f for f in files}
    assert replayed(by_member["member-a"]) == described(events_a, True)
    assert "hello over threads" in by_member["member-b"].read_text(encoding="utf-8")


def test_two_clients_recording_to_one_path_write_two_files(tmp_path: Path) -> None:
    target = tmp_path / "same.jsonl"
    for _ in range(2):
        client_driver(
            "ws://127.0.0.1:1/ws",
            mesh_id=MESH,
            member_id="m",
            signer=FakeSigner(),
            record=target,
        ).start(0.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same.2.jsonl", "same.jsonl"]


# --- what cannot be replayed ------------------------------------------------------------------


def small_recording(tmp_path: Path) -> Path:
    path, _, _ = recorded_wire(tmp_path, bodies=False)
    return path


def test_a_recording_from_an_older_format_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "old.jsonl"
    header = {"format": "meshproto-recording", "version": 0, "meshproto": "0.1.0"}
    path.write_text(json.dumps(header) + '\n{"in": "connect", "now": 0}\n', encoding="utf-8")
    result = run_replay(path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "recorded by meshproto 0.1.0 in recording format 0" in result.stderr
    assert "Replay it with meshproto 0.1.0" in result.stderr
    with pytest.raises(ReplayError, match="format 0"):
        load(path)


def test_a_recording_this_core_cannot_follow_is_refused_clearly(tmp_path: Path) -> None:
    """As if an older core had drawn one random number fewer: the tapes do not fit."""
    path = small_recording(tmp_path)
    records = lines(path)
    for record in records:
        if record.get("in") == "send" and record.get("rng"):
            record["rng"] = record["rng"][1:]
            break
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    result = run_replay(path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "draws differently from the one that recorded the file" in result.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ("hello\n", "is not a meshproto recording"),
        ('{"format": "meshproto-recording", "version": 99, "meshproto": "9.0"}\n', "9.0 or later"),
    ],
)
def test_what_is_not_a_recording_is_refused_clearly(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text(content, encoding="utf-8")
    result = run_replay(path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_recording_cut_short_replays_what_it_holds(tmp_path: Path) -> None:
    path = small_recording(tmp_path)
    text = path.read_text(encoding="utf-8")
    path.write_text(text + '{"in": "receive_text", "no', encoding="utf-8")  # half written
    result = run_replay(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is cut short and was left out" in result.stdout


def test_a_replay_that_differs_says_where(tmp_path: Path) -> None:
    path = small_recording(tmp_path)
    records = lines(path)
    for record in records:
        if record.get("out") == "events":
            record["events"][0]["new"] = "elsewhere"
            break
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    result = run_replay(path)
    assert result.returncode == 1
    assert "the events DIFFER from the recording" in result.stdout
    assert '"new": "elsewhere"' in result.stdout
