"""A bug costs one socket, never the process: planted failures over real loopback sockets.

Each test plants a failing handler with a test double (a store or a
registry that raises, or one method patched to raise once) and checks what
the contracts promise: in the broker, the socket being served is closed
with 1011 and the traceback is logged once, while every other socket and
the server go on; in a client, the failure becomes an ``InternalError``
event, the transport is dropped and the client reconnects, on asyncio, on
trio and in the blocking client's I/O thread, and it never escapes
``connect()`` or kills the thread.
"""

from __future__ import annotations

import logging
from random import Random
from typing import Any

import anyio
import pytest
from anyio.from_thread import BlockingPortal
from anyio_helpers import FAST, MESH, WsPeer, eventually, hello_text, join, make_broker, signer
from sync_helpers import join as sync_join
from sync_helpers import no_io_thread_outlives_the_test, portal, served

from meshproto import (
    AcceptingVerifier,
    Broker,
    ClientOptions,
    ConnectionState,
    Event,
    InternalError,
    MemoryStore,
    StaticRegistry,
    StoredMessage,
)
from meshproto_anyio import connect, running_broker
from meshproto_ws import ClientDriver
from meshproto_ws import Closed as WsClosed

pytestmark = pytest.mark.anyio

__all__ = ["no_io_thread_outlives_the_test", "portal"]  # fixtures used here

POISON = "cG9pc29u"  # base64 of "poison": the body the planted store refuses to keep


class PoisonStore(MemoryStore):
    """A memory store with a planted bug: storing the poison body raises."""

    def add_message(self, message: StoredMessage) -> None:
        if message.ciphertext == POISON:
            raise RuntimeError("planted store bug")
        super().add_message(message)


class FailingExpiryStore(MemoryStore):
    """A memory store whose expiry sweep raises, as a broken disk might."""

    def __init__(self) -> None:
        super().__init__()
        self.sweeps = 0

    def expire(self, now: float) -> int:
        self.sweeps += 1
        raise RuntimeError("planted expiry bug")

    def next_expiry(self) -> float | None:
        return 0.0  # always due


def _tracebacks(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(1 for r in caplog.records if r.exc_text and text in r.exc_text)


async def test_a_bug_while_serving_one_socket_closes_it_with_1011_and_spares_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = make_broker("bob")
    broker.store = PoisonStore()
    with caplog.at_level(logging.ERROR, logger="meshproto"):
        async with running_broker(broker, port=0) as server, join(server.url, "bob") as bob:
            await eventually(lambda: bob.state == "open")
            victim = await WsPeer.open(server.url)
            await victim.send_text(hello_text("mallory", server.url))
            assert (await victim.next_frame())["type"] == "hello_ack"
            await victim.send_json(
                {
                    "type": "send",
                    "id": "s1",
                    "targetSpec": signer("bob").public_key,
                    "priority": "now",
                    "nonce": "A" * 32,
                    "ciphertext": POISON,
                }
            )
            closed = None
            for _ in range(20):
                event = await victim.next_event()
                if isinstance(event, WsClosed):
                    closed = event
                    break
            assert closed is not None and closed.code == 1011
            await victim.aclose()

            assert await bob.send("*", "the broker still serves")  # the other socket
            fresh = await WsPeer.open(server.url)  # and the next connection
            await fresh.send_text(hello_text("fresh", server.url))
            assert (await fresh.next_frame())["type"] == "hello_ack"
            await fresh.aclose()
    assert _tracebacks(caplog, "planted store bug") == 1


async def test_a_bug_in_the_server_itself_drops_only_that_socket(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from meshproto_ws import BrokerDriver  # noqa: PLC0415

    original = BrokerDriver.receive_data
    doomed: set[int] = set()

    def failing(self: BrokerDriver, socket_id: int, data: bytes | None, *, now: float) -> None:
        if socket_id in doomed:
            raise RuntimeError("planted server bug")
        original(self, socket_id, data, now=now)

    monkeypatch.setattr(BrokerDriver, "receive_data", failing)
    with caplog.at_level(logging.ERROR, logger="meshproto"):
        async with running_broker(make_broker(), port=0) as server, join(server.url, "bob") as bob:
            await eventually(lambda: bob.state == "open")
            victim = await WsPeer.open(server.url)
            doomed.update(server._driver.socket_ids())
            doomed.discard(min(server._driver.socket_ids()))  # bob's is the first
            await victim.send_text(hello_text("mallory", server.url))
            event = await victim.next_event()
            assert isinstance(event, WsClosed)
            await victim.aclose()
            assert await bob.send("*", "still served")
    assert _tracebacks(caplog, "planted server bug") == 1


async def test_a_timer_that_keeps_failing_is_logged_and_retried_not_spun(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FailingExpiryStore()
    broker = Broker(
        StaticRegistry(open_mesh=MESH), verifier=AcceptingVerifier(), store=store, rng=Random(1)
    )
    with caplog.at_level(logging.ERROR, logger="meshproto"):
        async with running_broker(broker, port=0) as server, join(server.url, "bob") as bob:
            await eventually(lambda: store.sweeps >= 1)
            await eventually(lambda: bob.state == "open")
            await anyio.sleep(0.5)
            assert await bob.send("*", "timers failing, sockets fine")
    assert 1 <= store.sweeps <= 3  # retried about once a second, not in a loop
    assert _tracebacks(caplog, "planted expiry bug") == store.sweeps


# --- clients ------------------------------------------------------------------------------


def _fail_next(monkeypatch: pytest.MonkeyPatch, driver: ClientDriver, method: str) -> None:
    """Make ``driver.<method>`` raise once, the next time it is called."""
    original = getattr(driver, method)
    left = [1]

    def patched(*args: Any, **kwargs: Any) -> Any:
        if left[0]:
            left[0] = 0
            raise RuntimeError("planted client bug")
        return original(*args, **kwargs)

    monkeypatch.setattr(driver, method, patched)


async def test_anyio_client_turns_a_bug_into_an_event_and_reconnects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events: list[Event] = []
    async with (
        running_broker(make_broker("bob"), port=0) as server,
        join(server.url, "alice", events=events) as alice,
        join(server.url, "bob") as bob,
    ):
        await eventually(lambda: alice.state == "open" and bob.state == "open")
        _fail_next(monkeypatch, alice._driver, "receive_data")  # alice's next bytes
        await bob.send(alice.public_key, "wake the bug", "now")
        await eventually(lambda: any(isinstance(e, InternalError) for e in events))
        await alice.wait_state(ConnectionState.OPEN)
        with anyio.fail_after(5):
            async for message in alice.messages():
                assert message.message_id  # the message came back after the reconnect
                break
        assert await alice.send("*", "alive")
        assert alice.counters.reconnects >= 1


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_bug_in_the_end_of_turn_pass_becomes_an_event_and_loses_no_send(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # On asyncio the sends after the first of a loop turn are carried out by a
    # loop callback at the end of the turn; a bug there must not reach the loop.
    events: list[Event] = []
    async with (
        running_broker(make_broker("bob"), port=0) as server,
        join(server.url, "alice", events=events) as alice,
        join(server.url, "bob") as bob,
    ):
        await eventually(lambda: alice.state == "open" and bob.state == "open")
        ending = [False]
        end_turn = alice._end_turn

        def observed_end_turn() -> None:
            ending[0] = True
            try:
                end_turn()
            finally:
                ending[0] = False

        monkeypatch.setattr(alice._write_turn, "_on_end", observed_end_turn)
        drain = alice._driver.drain_commands
        planted = [1]

        def failing_drain(*, now: float) -> Any:
            if ending[0] and planted[0]:
                planted[0] = 0
                raise RuntimeError("planted end-of-turn bug")
            return drain(now=now)

        monkeypatch.setattr(alice._driver, "drain_commands", failing_drain)
        acked: list[str] = []

        async def send(text: str) -> None:
            acked.append(await alice.send(bob.public_key, text, "now"))

        sent: list[str] = []
        with anyio.fail_after(10):
            # A read that lands in the same turn (a pong, a peer_joined) carries the
            # deferred sends out before the turn ends: then the turn is tried again.
            for attempt in range(10):
                batch = [f"message {attempt}.{index}" for index in range(3)]
                async with anyio.create_task_group() as tasks:
                    for text in batch:  # one turn: the second and third are deferred
                        tasks.start_soon(send, text)
                sent += batch
                if not planted[0]:
                    break
            texts: set[str] = set()
            async for message in bob.messages():
                texts.add(getattr(message, "text", ""))
                if len(texts) == len(sent):
                    break
    assert planted == [0]
    assert len(acked) == len(sent)
    assert texts == set(sent)
    assert any(isinstance(e, InternalError) and "loop turn" in e.during for e in events)
    assert _tracebacks(caplog, "planted end-of-turn bug") == 1
    assert not [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]


def test_sync_client_turns_a_bug_into_an_event_and_keeps_its_thread(
    monkeypatch: pytest.MonkeyPatch, portal: BlockingPortal
) -> None:
    events: list[Event] = []
    with (
        served(portal, make_broker("bob")) as server,
        sync_join(server.url, "alice", events=events) as alice,
        sync_join(server.url, "bob") as bob,
    ):
        alice.wait_state(ConnectionState.OPEN, timeout=5)
        bob.wait_state(ConnectionState.OPEN, timeout=5)
        with alice._lock:  # the I/O thread reads the attribute under the lock
            _fail_next(monkeypatch, alice._driver, "receive_data")
        bob.send(alice.public_key, "wake the bug", "now", timeout=5)
        message = alice.receive(timeout=10)
        assert message.message_id
        assert any(isinstance(e, InternalError) for e in events)
        assert alice.send("*", "alive", timeout=5)
        assert alice.counters.reconnects >= 1


async def test_an_on_event_hook_that_raises_changes_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def hook(event: Event) -> None:
        raise ValueError("the application's own bug")

    with caplog.at_level(logging.ERROR, logger="meshproto"):
        async with (
            running_broker(make_broker(), port=0) as server,
            connect(
                server.url,
                mesh_id=MESH,
                member_id="member-alice",
                signer=signer("alice"),
                options=FAST,
                on_event=hook,
            ) as alice,
        ):
            await alice.wait_state(ConnectionState.OPEN)
            assert await alice.send("*", "fine")
            assert alice.counters.reconnects == 0
    assert _tracebacks(caplog, "the application's own bug") >= 1


# --- outcome unknown, and the safe retry ---------------------------------------------------


async def test_a_send_whose_outcome_is_unknown_can_be_retried_without_a_second_copy() -> None:
    from meshproto import SendOutcomeUnknownError  # noqa: PLC0415

    once = ClientOptions(
        connect_timeout=FAST.connect_timeout,
        hello_timeout=FAST.hello_timeout,
        ack_timeout=FAST.ack_timeout,
        backoff=FAST.backoff,
        resend_in_flight=False,
    )
    async with (
        running_broker(make_broker("bob"), port=0) as server,
        join(server.url, "alice", options=once) as alice,
        join(server.url, "bob") as bob,
    ):
        await alice.wait_state(ConnectionState.OPEN)
        await bob.wait_state(ConnectionState.OPEN)
        outcome: list[BaseException] = []

        async def send() -> None:
            try:
                await alice.send(bob.public_key, "exactly once", "now")
            except SendOutcomeUnknownError as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(send)
            await anyio.sleep(0)  # the send is written ...
            server.abort_connections()  # ... and the link dies before its ack arrives
        if outcome:  # the usual case; if the ack won the race there is nothing to retry
            (unknown,) = outcome
            assert isinstance(unknown, SendOutcomeUnknownError)
            await alice.wait_state(ConnectionState.OPEN)
            await alice.send(
                bob.public_key, "exactly once", "now", client_message_id=unknown.client_message_id
            )
        received = []
        with anyio.move_on_after(1.0):
            async for message in bob.messages():
                received.append(message)
        assert [m.text for m in received] == ["exactly once"]  # type: ignore[union-attr]
