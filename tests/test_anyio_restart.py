"""A broker restart on the same SQLite file loses nothing and duplicates nothing.

Sends are in flight when the first broker goes away; the sender re-sends them
with the same ``client_message_id`` after reconnecting, the second broker
finds their dedupe records in the store and makes no second copy, and what
the first broker had stored but not delivered reaches the receiver.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import anyio
import pytest
from anyio_helpers import anyio_backend, eventually, join, serve_until, signer

from meshproto import MessageReceived

pytestmark = pytest.mark.anyio
__all__ = ["anyio_backend"]  # the fixture: run on asyncio and trio

STREAM = 60


async def test_broker_restart_on_sqlite_loses_nothing_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    db = tmp_path / "broker.db"
    received: Counter[str] = Counter()
    acked: list[str] = []
    bob_key = signer("bob").public_key
    with anyio.fail_after(30):
        async with anyio.create_task_group() as brokers:
            first_stop = anyio.Event()
            server = await brokers.start(serve_until, db, 0, first_stop)
            async with join(server.url, "alice") as alice, join(server.url, "bob") as bob:

                async def collect() -> None:
                    async for message in bob.messages():
                        assert isinstance(message, MessageReceived)
                        received[message.text] += 1

                async def send(i: int) -> None:
                    acked.append(await alice.send(bob_key, f"m{i:03d}", "now"))

                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(collect)
                    for i in range(STREAM // 2):
                        tasks.start_soon(send, i)
                    await eventually(lambda: len(acked) >= 5)
                    # Stop the broker while sends are in flight; start a new one
                    # on the same port and the same file.
                    first_stop.set()
                    await eventually(lambda: server.socket_count == 0)
                    second_stop = anyio.Event()
                    await brokers.start(serve_until, db, server.port, second_stop)
                    for i in range(STREAM // 2, STREAM):
                        tasks.start_soon(send, i)
                    await eventually(lambda: len(acked) == STREAM, timeout=20)
                    await eventually(lambda: len(received) == STREAM, timeout=20)
                    await anyio.sleep(0.2)  # room for a duplicate to show up
                    tasks.cancel_scope.cancel()
            second_stop.set()
    assert sorted(received) == [f"m{i:03d}" for i in range(STREAM)]
    assert set(received.values()) == {1}, "a message arrived twice"
    assert len(set(acked)) == STREAM, "two sends were acked with one messageId"
