"""The blocking client's threading contract: timeouts, close from another
thread, Ctrl-C, calls from many threads, and no thread left behind."""

from __future__ import annotations

import _thread
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from anyio.from_thread import BlockingPortal
from anyio_helpers import WsPeer, answer_hello, fake_broker, make_broker
from sync_helpers import (
    ServedBroker,
    broker,
    eventually,
    in_portal,
    io_threads,
    join,
    later,
    no_io_thread_outlives_the_test,
    portal,
    served,
    unused_port,
)

import meshproto_sync._link
from meshproto import (
    ConnectionClosedError,
    ConnectionState,
    Event,
    LocalProtocolError,
    MessageReceived,
    SendAcked,
    SendError,
    SendFailed,
    SendOutcomeUnknown,
)
from meshproto_sync import Client

__all__ = ["broker", "no_io_thread_outlives_the_test", "portal"]

OPEN = ConnectionState.OPEN


async def mute(peer: WsPeer) -> None:
    """A broker that says hello_ack and then answers nothing (but reads, and pongs)."""
    await answer_hello(peer)
    for _ in range(1000):
        await peer.next_event(timeout=30)


def timed(call: Callable[[], object], error: type[BaseException]) -> float:
    """Run ``call``, expect ``error``, return how long it took."""
    started = time.monotonic()
    with pytest.raises(error):
        call()
    return time.monotonic() - started


# --- timeouts ----------------------------------------------------------------------------


def test_blocking_calls_honour_their_timeouts(portal: BlockingPortal) -> None:
    with in_portal(portal, fake_broker(mute)) as (url, _), join(url, "a") as a:
        a.wait_state(OPEN, timeout=5)
        calls: list[Callable[[], object]] = [
            lambda: a.receive(timeout=0.2),
            lambda: a.receive_system(timeout=0.2),
            lambda: a.send("*", "never acked", timeout=0.2),
            lambda: a.list_peers(timeout=0.2),
            lambda: a.wait_state(ConnectionState.CLOSED, timeout=0.2),
        ]
        for call in calls:
            assert 0.15 <= timed(call, TimeoutError) < 2.0
        assert timed(lambda: a.receive(timeout=0), TimeoutError) < 0.5
        assert timed(lambda: a.receive(timeout=-1), TimeoutError) < 0.5
        assert a.state is OPEN


def test_send_that_timed_out_stays_pending_and_is_acked_later(portal: BlockingPortal) -> None:
    async def slow_acks(peer: WsPeer) -> None:
        await answer_hello(peer)
        for _ in range(100):
            frame = await peer.next_frame(timeout=30)
            if frame["type"] == "send":
                await anyio.sleep(0.4)
                ack = {"type": "ack", "id": frame["id"], "messageId": "m" * 32, "queued": True}
                await peer.send_json(ack)

    events: list[Event] = []
    with in_portal(portal, fake_broker(slow_acks)) as (url, _), join(url, "a", events=events) as a:
        a.wait_state(OPEN, timeout=5)
        with pytest.raises(TimeoutError):
            a.send("*", "slow", timeout=0.1)
        eventually(lambda: any(isinstance(e, SendAcked) for e in events))
        assert a.send("*", "patient", timeout=5) == "m" * 32


def test_close_from_another_thread_wakes_a_blocked_receive(broker: ServedBroker) -> None:
    with join(broker.url, "a") as a:
        a.wait_state(OPEN, timeout=5)
        closer = later(0.2, a.close)
        elapsed = timed(lambda: a.receive(timeout=10), ConnectionClosedError)
        closer.join(5)
        assert 0.15 <= elapsed < 2.0
        assert io_threads() == []  # close() joined the I/O thread


def test_close_fails_a_send_blocked_in_another_thread(portal: BlockingPortal) -> None:
    failures: list[BaseException] = []

    def send() -> None:
        try:
            a.send("*", "never acked", timeout=10)
        except BaseException as exc:
            failures.append(exc)

    with in_portal(portal, fake_broker(mute)) as (url, _), join(url, "a") as a:
        a.wait_state(OPEN, timeout=5)
        sender = threading.Thread(target=send)
        sender.start()
        eventually(lambda: a.counters.frames_out >= 2)  # the hello, then the send
        a.close()
        sender.join(5)
    assert not sender.is_alive()
    (failure,) = failures
    assert isinstance(failure, SendError) and failure.reason.code == "closed"
    with pytest.raises(ConnectionClosedError):
        a.send("*", "after close")
    with pytest.raises(ConnectionClosedError):
        a.wait_state(OPEN, timeout=1)
    assert a.wait_state(ConnectionState.CLOSED, timeout=1) is ConnectionState.CLOSED
    a.close()  # idempotent


# --- Ctrl-C ------------------------------------------------------------------------------


def interrupt_main() -> None:
    _thread.interrupt_main()


def sigint() -> None:
    os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.parametrize("interrupt", [interrupt_main, sigint], ids=["interrupt_main", "SIGINT"])
def test_ctrl_c_during_a_blocking_receive_raises_and_the_client_still_works(
    broker: ServedBroker, interrupt: Callable[[], None]
) -> None:
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is not Python's default handler here")
    with join(broker.url, "a") as a, join(broker.url, "b") as b:
        a.wait_state(OPEN, timeout=5)
        b.wait_state(OPEN, timeout=5)
        interrupter = later(0.2, interrupt)
        elapsed = timed(lambda: b.receive(timeout=10), KeyboardInterrupt)
        interrupter.join(5)
        assert elapsed < 2.0
        message_id = a.send(b.public_key, "after Ctrl-C", "now", timeout=5)
        assert b.receive(timeout=5).message_id == message_id
    assert b.state is ConnectionState.CLOSED


def test_ctrl_c_during_a_blocking_send_leaves_the_send_pending_and_the_client_closable(
    portal: BlockingPortal,
) -> None:
    events: list[Event] = []
    with in_portal(portal, fake_broker(mute)) as (url, _), join(url, "a", events=events) as a:
        a.wait_state(OPEN, timeout=5)
        interrupter = later(0.2, interrupt_main)
        timed(lambda: a.send("*", "interrupted", timeout=10), KeyboardInterrupt)
        interrupter.join(5)
        assert a.state is OPEN
        assert not any(isinstance(e, (SendAcked, SendFailed, SendOutcomeUnknown)) for e in events)
    assert a.state is ConnectionState.CLOSED
    (unknown,) = [e for e in events if isinstance(e, SendOutcomeUnknown)]
    assert unknown.reason.code == "closed"  # resolved, once, by close(): it was written


# --- many threads --------------------------------------------------------------------------


def test_calls_from_many_threads_are_safe(portal: BlockingPortal) -> None:
    senders, per_sender = 4, 25
    with (
        served(portal, make_broker(rate_burst=1000, rate_per_minute=1e6)) as server,
        join(server.url, "a") as a,
        join(server.url, "b") as b,
    ):
        a.wait_state(OPEN, timeout=5)
        b.wait_state(OPEN, timeout=5)
        sent: list[str] = []
        received: list[Any] = []
        errors: list[BaseException] = []

        def send(index: int) -> None:
            try:
                for n in range(per_sender):
                    sent.append(a.send(b.public_key, f"{index}-{n}", "now", timeout=10))
                    if n % 5 == 0:
                        a.set_summary(f"sender {index} at {n}")
                        a.list_peers(timeout=10)
            except BaseException as exc:
                errors.append(exc)

        def receive() -> None:
            try:
                for _ in range(senders * per_sender):
                    received.append(b.receive(timeout=10))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(senders)]
        threads.append(threading.Thread(target=receive))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        assert not any(thread.is_alive() for thread in threads)
        assert errors == []
    assert len(sent) == len(set(sent)) == senders * per_sender
    assert sorted(m.message_id for m in received) == sorted(sent)
    texts = {m.text for m in received if isinstance(m, MessageReceived)}
    assert texts == {f"{i}-{n}" for i in range(senders) for n in range(per_sender)}


def test_blocking_call_from_on_event_is_refused_but_close_works(broker: ServedBroker) -> None:
    seen: list[BaseException] = []
    holder: list[Client] = []

    def hook(event: Event) -> None:
        if not holder or holder[0].state is not OPEN or seen:
            return
        client = holder[0]
        for timeout in (1.0, 0.0):
            try:
                client.receive(timeout=timeout)
            except (LocalProtocolError, TimeoutError) as exc:
                seen.append(exc)
        client.close()  # from the I/O thread: does not wait for itself

    with join(broker.url, "a", on_event=hook) as a:
        holder.append(a)
        a.set_status("working")  # any input makes an event once OPEN
        a.wait_state(ConnectionState.CLOSED, timeout=5)
        eventually(lambda: io_threads() == [])
    assert [type(e) for e in seen] == [LocalProtocolError, TimeoutError]


# --- threads end ---------------------------------------------------------------------------


def test_no_thread_outlives_close(broker: ServedBroker) -> None:
    before = set(threading.enumerate())
    unreachable = f"ws://127.0.0.1:{unused_port()}/ws"
    with join(broker.url, "a") as a, join(broker.url, "b") as b, join(unreachable, "c") as c:
        a.wait_state(OPEN, timeout=5)
        b.wait_state(OPEN, timeout=5)
        broker.abort_connections()
        eventually(lambda: a.counters.reconnects >= 1 and c.counters.reconnects >= 1)
        assert len(io_threads()) == 3
    assert set(threading.enumerate()) == before
    with pytest.raises(RuntimeError), join(broker.url, "d"):
        raise RuntimeError("the body failed")
    assert set(threading.enumerate()) == before


def test_a_failing_io_thread_closes_the_client_instead_of_hanging(
    broker: ServedBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    with join(broker.url, "a") as a:
        a.wait_state(OPEN, timeout=5)

        def broken(self: object, events: int) -> list[object]:
            raise RuntimeError("a bug in the I/O thread")

        monkeypatch.setattr(meshproto_sync._link.SocketLink, "handle", broken)
        with pytest.raises((SendError, ConnectionClosedError)):
            a.send("*", "into the bug", timeout=5)
        a.wait_state(ConnectionState.CLOSED, timeout=5)
        assert a.closed is not None and "I/O thread failed" in a.closed.reason
        eventually(lambda: io_threads() == [])


def test_close_is_bounded_when_the_broker_never_answers_the_close(portal: BlockingPortal) -> None:
    async def silent(peer: WsPeer) -> None:
        await answer_hello(peer)
        await anyio.sleep_forever()  # reads nothing: no close echo, ever

    with in_portal(portal, fake_broker(silent)) as (url, _):
        a = join(url, "a")  # close_timeout=0.5
        a.wait_state(OPEN, timeout=5)
        started = time.monotonic()
        a.close()
        assert 0.4 <= time.monotonic() - started < 2.0  # close_timeout, then give up
        assert io_threads() == []
