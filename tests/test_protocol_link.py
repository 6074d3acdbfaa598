"""ProtocolLink's contract, against a scripted transport: writes held within a turn, limits,
pause and resume, close and abort, and what it does with a bug or a fault in one link.

The link is driven as asyncio drives it (``connection_made``, ``buffer_updated``,
``eof_received``, ``connection_lost``) inside a running loop; no socket is involved.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from meshproto_anyio._protocol_link import ProtocolLink, WriteTurn


class ScriptedTransport(asyncio.Transport):
    """A transport that records what it is told; ``fail_writes`` makes ``write`` raise."""

    def __init__(self, *, fail_writes: bool = False) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closing = False
        self.aborted = False
        self.paused = False
        self.fail_writes = fail_writes

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.fail_writes:
            raise RuntimeError("planted transport bug")
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def is_reading(self) -> bool:
        return not self.paused


class Owner:
    """The callbacks of a link's owner, recorded; ``fail_data`` makes ``on_data`` raise."""

    def __init__(self, *, fail_data: bool = False) -> None:
        self.opened: list[ProtocolLink] = []
        self.data: list[bytes | None] = []
        self.errors: list[str] = []
        self.gone = 0
        self.fail_data = fail_data

    def link(self, turn: WriteTurn | None = None, **options: Any) -> ProtocolLink:
        return ProtocolLink(
            on_open=self.on_open,
            on_data=self.on_data,
            on_error=lambda _id, reason: self.errors.append(reason),
            on_gone=self.on_gone,
            close_timeout=1.0,
            turn=turn,
            **options,
        )

    def on_open(self, link: ProtocolLink) -> int:
        self.opened.append(link)
        return len(self.opened)

    def on_data(self, socket_id: int, data: bytes | None) -> None:
        if self.fail_data:
            raise RuntimeError("planted owner bug")
        self.data.append(data)

    def on_gone(self, socket_id: int) -> None:
        self.gone += 1


def run(test: Any) -> None:
    """Run the coroutine function ``test`` on a fresh loop; fail on anything asyncio caught."""
    loop = asyncio.new_event_loop()
    caught: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: caught.append(context))
    try:
        loop.run_until_complete(asyncio.wait_for(test(), 5))
    finally:
        loop.close()
    assert not caught, caught


def feed(link: ProtocolLink, data: bytes) -> None:
    """Bytes arriving, as asyncio hands them over (into the link's buffer)."""
    buffer = link.get_buffer(len(data))
    buffer[: len(data)] = data
    link.buffer_updated(len(data))


def opened(link: ProtocolLink) -> tuple[ProtocolLink, ScriptedTransport]:
    """``link``, its connection made on a fresh scripted transport."""
    transport = ScriptedTransport()
    link.connection_made(transport)
    return link, transport


async def end_of_turn() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


def test_writes_after_the_first_of_a_turn_leave_together_at_its_end() -> None:
    async def test() -> None:
        owner = Owner()
        link, transport = opened(owner.link())
        assert link.write(b"a") and link.write(b"b") and link.write(b"c")
        assert transport.written == [b"a"]
        await end_of_turn()
        assert transport.written == [b"a", b"bc"]

    run(test)


def test_held_writes_whose_transport_closed_meanwhile_are_dropped_quietly() -> None:
    async def test() -> None:
        link, transport = opened(Owner().link())
        link.write(b"a")
        link.write(b"b")
        transport.closing = True  # asyncio closed it (the peer went) before the turn ended
        await end_of_turn()
        assert transport.written == [b"a"]
        assert link.buffered == 0

    run(test)


def test_close_hands_over_what_was_held_and_nothing_is_written_after_it() -> None:
    async def test() -> None:
        link, transport = opened(Owner().link())
        link.write(b"a")
        link.write(b"b")
        link.close()
        assert transport.written == [b"a", b"b"] and transport.closing
        assert not link.write(b"late")
        link.connection_lost(None)
        await end_of_turn()
        assert transport.written == [b"a", b"b"]

    run(test)


def test_writes_after_abort_are_refused_and_nothing_held_leaves() -> None:
    async def test() -> None:
        link, transport = opened(Owner().link())
        link.write(b"a")
        link.write(b"held")
        link.abort()
        assert transport.aborted and not link.write(b"late")
        await end_of_turn()
        assert transport.written == [b"a"]

    run(test)


def test_a_write_over_the_limit_is_refused_and_the_rest_still_leaves() -> None:
    async def test() -> None:
        link, transport = opened(Owner().link(max_buffered=10))
        assert link.write(b"12345")
        assert link.write(b"1234567890")  # the first went to the transport, which buffers none
        assert not link.write(b"1")  # held and new over 10
        await end_of_turn()
        assert transport.written == [b"12345", b"1234567890"]

    run(test)


def test_gone_is_told_once_and_no_callback_follows_close() -> None:
    async def test() -> None:
        owner = Owner()
        link = owner.link()
        link.connection_made(ScriptedTransport())
        feed(link, b"one")
        link.close()
        feed(link, b"after close")
        link.eof_received()
        link.connection_lost(ConnectionResetError())
        assert owner.data == [b"one"] and owner.errors == [] and owner.gone == 1

    run(test)


def test_a_bug_in_the_owner_costs_that_socket_and_never_reaches_asyncio(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def test() -> None:
        owner = Owner(fail_data=True)
        link, transport = opened(owner.link())
        feed(link, b"x")
        assert transport.aborted and link.closing

    with caplog.at_level(logging.ERROR):
        run(test)
    assert [r for r in caplog.records if r.exc_text and "planted owner bug" in r.exc_text]


def test_a_link_that_fails_at_the_end_of_a_turn_does_not_hold_up_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def test() -> None:
        turn = WriteTurn()
        owner = Owner()
        broken, healthy = owner.link(turn), owner.link(turn)
        broken_transport, healthy_transport = ScriptedTransport(), ScriptedTransport()
        broken.connection_made(broken_transport)
        healthy.connection_made(healthy_transport)
        for link in (broken, healthy):  # a broadcast: both write twice in one turn
            link.write(b"first")
            link.write(b"second")
        broken_transport.fail_writes = True
        await end_of_turn()
        assert broken.closing and broken_transport.aborted  # the fault costs its socket
        assert healthy_transport.written == [b"first", b"second"]
        healthy.write(b"next turn")  # and the healthy link's next turn is a turn like any
        healthy.write(b"held")
        await end_of_turn()
        assert healthy_transport.written == [b"first", b"second", b"next turn", b"held"]

    with caplog.at_level(logging.ERROR):
        run(test)
    assert [r for r in caplog.records if r.exc_text and "planted transport bug" in r.exc_text]


def test_the_owners_end_of_turn_and_the_hand_over_are_one_loop_callback() -> None:
    async def test() -> None:
        loop = asyncio.get_running_loop()
        scheduled: list[object] = []
        call_soon = loop.call_soon

        def counted(callback: Any, *args: Any, **kwargs: Any) -> asyncio.Handle:
            scheduled.append(callback)
            return call_soon(callback, *args, **kwargs)

        loop.call_soon = counted  # type: ignore[method-assign]
        ended: list[int] = []

        def on_end() -> None:  # the owner's deferred calls: they write too
            ended.append(len(transport.written))
            link.write(b"deferred")

        turn = WriteTurn(on_end)
        owner = Owner()
        link = owner.link(turn)
        transport = ScriptedTransport()
        link.connection_made(transport)
        try:
            link.write(b"first")  # the turn's first write leaves at once
            turn.defer()
            link.write(b"held")
            turn.defer()  # deferring twice still ends the turn once
            assert len(scheduled) == 1
            await end_of_turn()
        finally:
            loop.call_soon = call_soon  # type: ignore[method-assign]
        assert ended == [1]
        # what the owner wrote at the end leaves with what the turn held, in one write
        assert transport.written == [b"first", b"helddeferred"]

    run(test)


def test_work_the_owners_end_of_turn_defers_again_is_done_in_the_next_turn() -> None:
    async def test() -> None:
        ends: list[int] = []

        def on_end() -> None:  # an on_event hook that makes a call: owed to the next turn
            ends.append(len(link_transport.written))
            if len(ends) == 1:
                turn.defer()
                link.write(b"from the hook")

        turn = WriteTurn(on_end)
        link, link_transport = opened(Owner().link(turn))
        turn.defer()
        for _ in range(3):
            await end_of_turn()
        assert ends == [0, 1]
        assert link_transport.written == [b"from the hook"]

    run(test)


def test_an_owner_whose_end_of_turn_fails_still_gets_its_links_writes_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def test() -> None:
        def on_end() -> None:
            raise RuntimeError("planted end-of-turn bug")

        turn = WriteTurn(on_end)
        owner = Owner()
        link, transport = opened(owner.link(turn))
        link.write(b"first")
        link.write(b"held")
        turn.defer()
        await end_of_turn()
        assert transport.written == [b"first", b"held"]
        assert not link.closing
        link.write(b"next turn")  # the next turn is a turn like any
        await end_of_turn()
        assert transport.written == [b"first", b"held", b"next turn"]

    with caplog.at_level(logging.ERROR):
        run(test)
    assert [r for r in caplog.records if r.exc_text and "planted end-of-turn bug" in r.exc_text]


def test_reading_paused_before_tls_is_up_stays_paused_once_it_is() -> None:
    async def test() -> None:
        owner = Owner()
        link = owner.link(tls=True, tls_after_connect=True)
        plain = ScriptedTransport()
        link.connection_made(plain)
        assert owner.opened == []  # nothing reaches the owner before TLS is up
        link.pause_reading()
        secured = ScriptedTransport()
        link.upgraded(secured)
        assert owner.opened == [link]
        assert secured.paused
        link.resume_reading()
        assert not secured.paused

    run(test)


def test_bytes_before_tls_began_abort_the_connection() -> None:
    async def test() -> None:
        owner = Owner()
        link = owner.link(tls=True, tls_after_connect=True)
        plain = ScriptedTransport()
        link.connection_made(plain)
        feed(link, b"HTTP/1.1 400 Bad Request\r\n\r\n")  # no TLS server speaks first
        assert plain.aborted and link.closing
        assert owner.data == [] and owner.opened == []

    run(test)
