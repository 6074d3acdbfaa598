"""A slow reader loses nothing: 5,000 messages into an inbox of 100, one taken per millisecond.

The receiver's application takes one message every millisecond while the
sender pipelines 5,000 direct messages through the reference broker over
loopback. The inbox fills, the client stops reading its socket, TCP and the
broker hold the rest back, and every message still arrives exactly once and
in the order it was sent, while the inbox stays bounded. Once, this case
dropped the oldest messages after acknowledging them.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import anyio
import pytest
from anyio_helpers import FAST, join, make_broker
from sync_helpers import join as sync_join
from sync_helpers import no_io_thread_outlives_the_test, portal, served

from meshproto import ClientOptions, ConnectionState, MessageReceived
from meshproto_anyio import Client, running_broker

__all__ = ["no_io_thread_outlives_the_test", "portal"]  # fixtures used here

TOTAL = 5_000
INBOX = 100
WINDOW = 100
#: What one read of the socket can carry past a full inbox (64 KiB of pushes).
ONE_READ = 600

SLOW = ClientOptions(
    connect_timeout=FAST.connect_timeout,
    hello_timeout=FAST.hello_timeout,
    ack_timeout=30.0,
    request_timeout=FAST.request_timeout,
    ping_interval=1.0,
    liveness_timeout=10.0,
    inbox_limit=INBOX,
    backoff=FAST.backoff,
)
PIPELINE = ClientOptions(ack_timeout=30.0, max_outbox=WINDOW, backoff=FAST.backoff)


def _flood_broker() -> object:
    return make_broker(
        "receiver",
        rate_burst=TOTAL,
        rate_per_minute=60.0 * TOTAL,
        store_limit_per_member=TOTAL,
    )


async def _send_all(sender: Client, target: str) -> None:
    async def one(index: int, window: anyio.Semaphore) -> None:
        async with window:
            await sender.send(target, f"{index:05d}", "now")

    window = anyio.Semaphore(WINDOW)
    async with anyio.create_task_group() as tasks:
        for index in range(TOTAL):
            await window.acquire()  # keep at most WINDOW sends, and tasks, alive
            window.release()
            tasks.start_soon(one, index, window)
            await anyio.sleep(0)


def _check(bodies: list[str], peak: int) -> None:
    assert len(bodies) == TOTAL
    assert len(set(bodies)) == TOTAL  # exactly once
    assert bodies == sorted(bodies)  # in the order sent
    assert peak <= INBOX + ONE_READ, peak


@pytest.mark.anyio
async def test_a_slow_anyio_reader_receives_everything_once_in_order_with_bounded_memory() -> None:
    bodies: list[str] = []
    peak = 0
    async with running_broker(_flood_broker(), port=0) as server:  # type: ignore[arg-type]
        async with (
            join(server.url, "receiver", options=SLOW) as receiver,
            join(server.url, "sender", options=PIPELINE) as sender,
        ):
            await receiver.wait_state(ConnectionState.OPEN)
            await sender.wait_state(ConnectionState.OPEN)

            async def read() -> None:
                nonlocal peak
                async for message in receiver.messages():
                    peak = max(peak, receiver._core.inbox_size + 1)
                    assert isinstance(message, MessageReceived)
                    bodies.append(message.text)
                    if len(bodies) == TOTAL:
                        return
                    await anyio.sleep(0.001)

            with anyio.fail_after(120):
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(read)
                    await _send_all(sender, receiver.public_key)
            assert receiver.counters.reconnects == 0
        assert server.broker.store.count_for("mesh-test", receiver.public_key) == 0
    _check(bodies, peak)


def test_a_slow_blocking_reader_receives_everything_once_in_order_with_bounded_memory(
    portal: object,
) -> None:
    bodies: list[str] = []
    peak = 0
    failures: list[BaseException] = []
    window = threading.Semaphore(WINDOW)

    def sent(future: Future[str]) -> None:
        window.release()
        error = future.exception()
        if error is not None:
            failures.append(error)

    with (
        served(portal, _flood_broker()) as server,  # type: ignore[arg-type]
        sync_join(server.url, "receiver", options=SLOW) as receiver,
        sync_join(server.url, "sender", options=PIPELINE) as sender,
    ):
        receiver.wait_state(ConnectionState.OPEN, timeout=5)
        sender.wait_state(ConnectionState.OPEN, timeout=5)

        def send_all() -> None:
            for index in range(TOTAL):
                if not window.acquire(timeout=60):
                    failures.append(TimeoutError("no room in the send window"))
                    return
                future = sender.send_nowait(receiver.public_key, f"{index:05d}", "now")
                future.add_done_callback(sent)

        sending = threading.Thread(target=send_all, name="test-sender")
        sending.start()
        deadline = time.monotonic() + 120
        while len(bodies) < TOTAL and time.monotonic() < deadline:
            message = receiver.receive(timeout=30)
            with receiver._lock:
                peak = max(peak, receiver._core.inbox_size + 1)
            assert isinstance(message, MessageReceived)
            bodies.append(message.text)
            time.sleep(0.001)
        sending.join(60)
        assert not failures, failures[:3]
        assert receiver.counters.reconnects == 0
    _check(bodies, peak)
