"""examples/selectors_loop.py, the selectors adapter, against the reference broker on
loopback (served in a background thread), with a blocking client as the other peer."""

from __future__ import annotations

import importlib.util
import random
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import pytest
from anyio.from_thread import BlockingPortal
from anyio_helpers import MESH
from sync_helpers import (
    FAST,
    ServedBroker,
    broker,
    eventually,
    join,
    no_io_thread_outlives_the_test,
    portal,
    served,
    unused_port,
)

from meshproto import (
    AcceptingVerifier,
    Broker,
    ConnectionState,
    Event,
    HandshakeComplete,
    MessageReceived,
    SendAcked,
    SendFailed,
    StaticRegistry,
)
from meshproto.testing import FakeSigner

__all__ = ["broker", "no_io_thread_outlives_the_test", "portal"]

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "selectors_loop.py"


def _load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("selectors_loop_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


example = _load_example()


def test_selectors_example_delivers_a_message_through_a_real_broker(
    broker: ServedBroker,
) -> None:
    lines: list[str] = []
    with join(broker.url, "bob") as bob:
        bob.wait_state(ConnectionState.OPEN, timeout=5)
        report = example.run(
            broker.url,
            mesh_id=MESH,
            send_to=bob.public_key,
            text="hello, bob",
            options=FAST,
            timeout=10,
            log=lines.append,
        )
        received = bob.receive(timeout=5)
        with pytest.raises(TimeoutError):
            bob.receive(timeout=0.3)  # exactly once
        eventually(lambda: broker.server.socket_count == 1)  # the example's socket is gone
    assert report.ok and not report.timed_out
    assert isinstance(report.sent, SendAcked)
    assert isinstance(received, MessageReceived)
    assert (received.text, received.message_id) == ("hello, bob", report.sent.message_id)
    assert received.sender_pubkey == report.public_key
    assert report.counters.reconnects == 0
    assert f"acked as {report.sent.message_id}" in lines
    assert lines[-1] == "closed: 'closed by the user'"


def test_selectors_example_receives_a_message_sent_to_it_exactly_once(
    broker: ServedBroker,
) -> None:
    signer = FakeSigner("member-selectors")
    opened = threading.Event()
    lines: list[str] = []

    def on_event(event: Event) -> None:
        if isinstance(event, HandshakeComplete):
            opened.set()

    with join(broker.url, "bob") as bob, ThreadPoolExecutor(1) as pool:
        running = pool.submit(
            example.run,
            broker.url,
            mesh_id=MESH,
            member_id="member-selectors",
            signer=signer,
            send_to=None,
            count=1,
            options=FAST,
            timeout=10,
            on_event=on_event,
            log=lines.append,
        )
        assert opened.wait(timeout=5), "the selectors client never opened"
        body = "hello, selectors\x1b[2J"  # a terminal control sequence, shown inert
        message_id = bob.send(signer.public_key, body, "now", timeout=5)
        report = running.result(timeout=15)
    assert report.ok and report.sent is None
    assert [(m.message_id, m.text) for m in report.received] == [(message_id, body)]
    assert report.received[0].sender_pubkey == bob.public_key
    assert report.counters.duplicate_pushes == 0
    # Taking the message sent its client_ack: the broker keeps nothing for us.
    store = broker.server.broker.store
    eventually(lambda: store.count_for(MESH, signer.public_key) == 0)
    assert f"received from {bob.public_key[:12]}: 'hello, selectors\\x1b[2J'" in lines
    assert not any("\x1b" in line for line in lines)


def test_selectors_example_gives_up_at_its_timeout_when_nothing_arrives(
    broker: ServedBroker,
) -> None:
    started = time.monotonic()
    report = example.run(
        broker.url, mesh_id=MESH, send_to=None, count=1, options=FAST, timeout=0.5, log=None
    )
    elapsed = time.monotonic() - started
    assert report.timed_out and not report.ok
    assert report.received == []
    assert elapsed < 5, elapsed  # the timeout plus a bounded close
    eventually(lambda: broker.server.socket_count == 0)


def test_selectors_example_reconnects_until_its_timeout_when_no_broker_listens() -> None:
    lines: list[str] = []
    url = f"ws://127.0.0.1:{unused_port()}/ws"
    report = example.run(url, options=FAST, timeout=0.5, log=lines.append)  # 10-50 ms backoff
    assert report.timed_out and not report.ok
    assert report.counters.reconnects >= 1
    assert any(line.startswith("reconnecting in") for line in lines), lines
    # Closing fails the send that never got out, with a reason that says so.
    assert isinstance(report.sent, SendFailed) and report.sent.reason.code == "closed"


def test_selectors_example_stops_when_the_broker_refuses_its_hello(
    portal: BlockingPortal,
) -> None:
    closed_mesh = Broker(StaticRegistry([]), verifier=AcceptingVerifier(), rng=random.Random(3))
    with served(portal, closed_mesh) as server:
        report = example.run(server.url, mesh_id=MESH, options=FAST, timeout=10, log=None)
    assert report.refused is not None and "unauthorized" in report.refused.reason
    assert not report.timed_out and not report.ok
    assert report.counters.reconnects == 0


def test_selectors_example_script_sends_and_exits_with_status_0(broker: ServedBroker) -> None:
    with join(broker.url, "bob") as bob:
        bob.wait_state(ConnectionState.OPEN, timeout=5)
        command = [sys.executable, str(EXAMPLE), broker.url, "--mesh", MESH]
        command += ["--to", bob.public_key, "--text", "from the script"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        received = bob.receive(timeout=5)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "state: handshaking -> open" in lines
    assert any(line.startswith("acked as ") for line in lines), lines
    assert lines[-1].startswith("ok: received 0 as ")
    assert isinstance(received, MessageReceived) and received.text == "from the script"


def test_selectors_example_script_exits_with_status_1_when_nothing_arrives_in_time(
    broker: ServedBroker,
) -> None:
    command = [sys.executable, str(EXAMPLE), broker.url, "--mesh", MESH]
    command += ["--no-send", "--count", "1", "--timeout", "0.3"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines()[-1].startswith("timed out: received 0 as ")
