"""SIGKILL a SQLite broker mid-stream, restart it on the same file: nothing acknowledged is lost.

The broker runs in a process of its own (``tests/broker_process.py``); a
sender pipelines direct messages to a receiver through it, and the broker is
killed with SIGKILL after some of them were acknowledged, then started again
on the same database and port. The clients reconnect by themselves and
re-send what was in flight under the same ``client_message_id``. At the end
every message that was acknowledged ``queued: true`` has reached the
receiver exactly once, and no other message more than once. Run at several
kill points, with the anyio clients and with the blocking ones.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest
from anyio_helpers import join
from sync_helpers import join as sync_join
from sync_helpers import no_io_thread_outlives_the_test

from meshproto import Backoff, ClientOptions, ConnectionState, MessageReceived

__all__ = ["no_io_thread_outlives_the_test"]  # a fixture used here

TOTAL = 300
WINDOW = 20
KILL_AFTER = (0, 60, 200)  # acknowledgements seen before the kill
SCRIPT = Path(__file__).resolve().parent / "broker_process.py"
STEADY = ClientOptions(
    connect_timeout=2.0,
    hello_timeout=2.0,
    ack_timeout=20.0,
    ping_interval=0.5,
    liveness_timeout=3.0,
    max_outbox=WINDOW,
    backoff=Backoff(caps=(0.02, 0.05, 0.1)),
)


class BrokerProcess:
    """The broker's process: started, killed, started again on the same file and port."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.port = 0
        self.process: subprocess.Popen[str] | None = None
        self.start()

    def start(self) -> None:
        for _ in range(50):  # the port can take a moment to be free again
            process = subprocess.Popen(
                [sys.executable, str(SCRIPT), str(self.db), str(self.port)],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert process.stdout is not None
            line = process.stdout.readline()
            if line.startswith("listening"):
                self.port = int(line.split()[1])
                self.process = process
                return
            process.wait(10)
            process.stdout.close()
            time.sleep(0.05)
        raise AssertionError("the broker process did not start")

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()


@contextmanager
def broker_process(tmp_path: Path) -> Iterator[BrokerProcess]:
    broker = BrokerProcess(tmp_path / "broker.db")
    try:
        yield broker
    finally:
        broker.stop()


def _check(acked: set[str], received: list[str]) -> None:
    assert len(received) == len(set(received)), "a message reached the receiver twice"
    assert acked <= set(received), f"acknowledged but lost: {sorted(acked - set(received))[:5]}"


@pytest.mark.anyio
@pytest.mark.parametrize("kill_after", KILL_AFTER)
async def test_anyio_clients_lose_nothing_acknowledged_when_the_broker_is_killed(
    kill_after: int, tmp_path: Path
) -> None:
    acked: set[str] = set()
    received: list[str] = []
    with broker_process(tmp_path) as broker:
        async with (
            join(broker.url, "receiver", options=STEADY) as receiver,
            join(broker.url, "sender", options=STEADY) as sender,
        ):
            await receiver.wait_state(ConnectionState.OPEN)
            await sender.wait_state(ConnectionState.OPEN)
            killed = anyio.Event()

            async def send(index: int, window: anyio.Semaphore) -> None:
                async with window:
                    await sender.send(receiver.public_key, f"{index:04d}", "now")
                    acked.add(f"{index:04d}")
                    if len(acked) >= kill_after and not killed.is_set():
                        killed.set()
                        broker.kill()
                        broker.start()

            async def read() -> None:
                async for message in receiver.messages():
                    assert isinstance(message, MessageReceived)
                    received.append(message.text)
                    if len(set(received)) >= TOTAL:
                        return

            with anyio.fail_after(90):
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(read)
                    window = anyio.Semaphore(WINDOW)
                    async with anyio.create_task_group() as senders:
                        for index in range(TOTAL):
                            senders.start_soon(send, index, window)
            assert killed.is_set()
    assert len(acked) == TOTAL  # every send was acknowledged in the end
    _check(acked, received)


@pytest.mark.parametrize("kill_after", KILL_AFTER)
def test_blocking_clients_lose_nothing_acknowledged_when_the_broker_is_killed(
    kill_after: int, tmp_path: Path
) -> None:
    acked: set[str] = set()
    received: list[str] = []
    lock = threading.Lock()
    killed = threading.Event()
    with (
        broker_process(tmp_path) as broker,
        sync_join(broker.url, "receiver", options=STEADY) as receiver,
        sync_join(broker.url, "sender", options=STEADY) as sender,
    ):
        receiver.wait_state(ConnectionState.OPEN, timeout=10)
        sender.wait_state(ConnectionState.OPEN, timeout=10)
        window = threading.Semaphore(WINDOW)

        def sent(body: str) -> object:
            def done(future: object) -> None:
                window.release()
                if future.exception() is None:  # type: ignore[attr-defined]
                    with lock:
                        acked.add(body)
                        ready = len(acked) >= kill_after and not killed.is_set()
                        if ready:
                            killed.set()
                    if ready:
                        threading.Thread(target=lambda: (broker.kill(), broker.start())).start()

            return done

        for index in range(TOTAL):
            assert window.acquire(timeout=60)
            body = f"{index:04d}"
            sender.send_nowait(receiver.public_key, body, "now").add_done_callback(sent(body))
        deadline = time.monotonic() + 90
        while len(set(received)) < TOTAL and time.monotonic() < deadline:
            message = receiver.receive(timeout=30)
            assert isinstance(message, MessageReceived)
            received.append(message.text)
        assert killed.is_set()
        for _ in range(WINDOW):  # every send's outcome is in before the clients close
            assert window.acquire(timeout=30)
    assert len(acked) == TOTAL
    _check(acked, received)
