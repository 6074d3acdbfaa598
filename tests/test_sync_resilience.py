"""The blocking client survives what networks and brokers do: dropped
connections, silent brokers, unreachable brokers, a broker restart on SQLite."""

from __future__ import annotations

import dataclasses
import random
import time
from contextlib import ExitStack
from pathlib import Path

import anyio
import pytest
from anyio.from_thread import BlockingPortal
from anyio_helpers import MESH, WsPeer, answer_hello, fake_broker, member
from sync_helpers import (
    FAST,
    ServedBroker,
    broker,
    eventually,
    in_portal,
    join,
    no_io_thread_outlives_the_test,
    portal,
    served,
    unused_port,
)

from meshproto import (
    AcceptingVerifier,
    Broker,
    ClientOptions,
    ConnectionState,
    Event,
    MessageReceived,
    ReconnectScheduled,
    StaticRegistry,
)
from meshproto_anyio.sqlite_store import SqliteStore

__all__ = ["broker", "no_io_thread_outlives_the_test", "portal"]

OPEN = ConnectionState.OPEN


def test_client_reconnects_after_the_broker_drops_the_connection(broker: ServedBroker) -> None:
    events: list[Event] = []
    with join(broker.url, "a", events=events) as a, join(broker.url, "b") as b:
        a.wait_state(OPEN, timeout=5)
        b.wait_state(OPEN, timeout=5)
        assert broker.abort_connections() == 2
        eventually(lambda: a.counters.reconnects >= 1 and a.state is OPEN)
        eventually(lambda: b.counters.reconnects >= 1 and b.state is OPEN)
        message_id = a.send(b.public_key, "after the drop", "now", timeout=5)
        received = b.receive(timeout=5)
    assert received.message_id == message_id
    causes = [e.cause for e in events if isinstance(e, ReconnectScheduled)]
    assert causes and "1006" in causes[0]


def test_connection_stays_alive_while_the_script_sleeps(broker: ServedBroker) -> None:
    """Pings go out and pongs come back from the I/O thread while no call is made."""
    options = dataclasses.replace(FAST, ping_interval=0.1, liveness_timeout=0.6)
    with join(broker.url, "a", options=options) as a:
        a.wait_state(OPEN, timeout=5)
        with join(broker.url, "b") as b:  # made after a is in: a hears that b joined
            b.wait_state(OPEN, timeout=5)
            assert a.receive_system(timeout=5).event == "peer_joined"  # the last frame for a
            frames_before = a.counters.frames_in
            time.sleep(1.5)  # more than twice the liveness timeout, and not one call
            assert a.state is OPEN and a.counters.reconnects == 0
            assert a.counters.frames_in == frames_before  # kept alive by pongs alone
            message_id = b.send(a.public_key, "still there?", "now", timeout=5)
            assert a.receive(timeout=5).message_id == message_id


def test_client_gives_up_on_a_silent_broker_after_the_liveness_timeout(
    portal: BlockingPortal,
) -> None:
    hello_acked: list[float] = []

    async def silent(peer: WsPeer) -> None:
        await answer_hello(peer)
        hello_acked.append(time.monotonic())
        await anyio.sleep_forever()  # reads nothing, answers nothing

    events: list[Event] = []
    options = ClientOptions(ping_interval=0.2, liveness_timeout=0.5, backoff=FAST.backoff)
    with (
        in_portal(portal, fake_broker(silent)) as (url, accepted),
        join(url, "a", options=options, events=events),
    ):
        eventually(lambda: any(isinstance(e, ReconnectScheduled) for e in events))
        gave_up = time.monotonic()
        eventually(lambda: len(accepted) >= 2)  # and it connected again
    (scheduled, *_) = [e for e in events if isinstance(e, ReconnectScheduled)]
    assert "nothing heard for 0.5 s" in scheduled.cause
    assert 0.45 <= gave_up - hello_acked[0] < 2.0


def test_unreachable_broker_is_retried_without_hanging() -> None:
    port = unused_port()
    events: list[Event] = []
    started = time.monotonic()
    with join(f"ws://127.0.0.1:{port}/ws", "a", events=events) as a:
        eventually(lambda: a.counters.reconnects >= 3)
        assert a.state is not OPEN
    assert time.monotonic() - started < 5
    assert any("could not connect" in e.cause for e in events if isinstance(e, ReconnectScheduled))


def sqlite_broker(store: SqliteStore, seed: int) -> Broker:
    """A broker on a SQLite store; member ``c`` is known (and offline) from the start."""
    return Broker(
        StaticRegistry([member("c")], open_mesh=MESH),
        verifier=AcceptingVerifier(),
        rng=random.Random(seed),
        store=store,
    )


def test_broker_restart_on_sqlite_loses_no_message_and_creates_no_duplicate(
    portal: BlockingPortal, tmp_path: Path
) -> None:
    db = tmp_path / "b.db"
    c_key = member("c").pubkey
    first_store = SqliteStore(db)
    with ExitStack() as clients:
        with served(portal, sqlite_broker(first_store, seed=1)) as server:
            port = server.port
            a = clients.enter_context(join(server.url, "a"))
            b = clients.enter_context(join(server.url, "b"))
            a.wait_state(OPEN, timeout=5)
            b.wait_state(OPEN, timeout=5)
            before = a.send(b.public_key, "before the restart", "now", timeout=5)
            assert b.receive(timeout=5).message_id == before  # taken and acked
            stored = a.send(c_key, "stored for c", timeout=5)
            # In flight as the broker goes down: acked now, or re-sent after
            # the restart with the same client_message_id. Either way, one copy.
            racing = a.send_nowait(c_key, "racing the shutdown")
        first_store.close()
        eventually(lambda: a.state is not OPEN and b.state is not OPEN)
        queued = a.send_nowait(c_key, "sent while the broker is down")

        second_store = SqliteStore(db)
        # Another rng: ids made afresh would differ from the first broker's.
        with served(portal, sqlite_broker(second_store, seed=2), port=port) as server:
            ids = [stored, racing.result(timeout=5), queued.result(timeout=5)]
            assert len(set(ids)) == 3
            with join(server.url, "c") as c:
                got = [c.receive(timeout=5) for _ in ids]
                assert [m.message_id for m in got] == ids
                assert [m.text for m in got if isinstance(m, MessageReceived)] == [
                    "stored for c",
                    "racing the shutdown",
                    "sent while the broker is down",
                ]
                c.list_peers(timeout=5)  # a round trip: anything re-pushed has arrived
                assert c.counters.duplicate_pushes == 0
                with pytest.raises(TimeoutError):
                    c.receive(timeout=0)
            b.wait_state(OPEN, timeout=5)
            b.list_peers(timeout=5)
            assert b.counters.duplicate_pushes == 0  # acked before the restart: gone
            with pytest.raises(TimeoutError):
                b.receive(timeout=0)
            assert a.counters.reconnects >= 1 and b.counters.reconnects >= 1
            clients.close()
        second_store.close()
