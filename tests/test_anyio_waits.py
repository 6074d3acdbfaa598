"""The waits the anyio client builds its calls on, on asyncio: :class:`LoopEvent` and
:class:`Pulse` (``meshproto_anyio._client_parts``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from meshproto_anyio._client_parts import LoopEvent, Pulse


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 5))


def test_setting_a_loop_event_wakes_every_waiter_and_later_waits_return_at_once() -> None:
    async def test() -> None:
        event = LoopEvent(asyncio.get_running_loop())
        woken: list[int] = []

        async def waiter(index: int) -> None:
            assert await event.wait()
            woken.append(index)

        tasks = [asyncio.ensure_future(waiter(index)) for index in range(3)]
        await asyncio.sleep(0)
        assert not event.is_set() and woken == []
        event.set()
        event.set()  # twice is once
        await asyncio.gather(*tasks)
        assert sorted(woken) == [0, 1, 2] and event.is_set()
        assert await event.wait()
        assert event._waiters == []  # nobody left behind

    run(test)


def test_a_cancelled_wait_on_a_loop_event_cancels_no_other_wait() -> None:
    async def test() -> None:
        event = LoopEvent(asyncio.get_running_loop())
        cancelled = asyncio.ensure_future(event.wait())
        kept = asyncio.ensure_future(event.wait())
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.sleep(0)
        assert cancelled.cancelled() and not kept.done()
        assert len(event._waiters) == 1  # the cancelled wait took itself off
        event.set()
        assert await kept

    run(test)


def test_a_pulse_wakes_the_tasks_waiting_when_it_fires_and_not_later_ones() -> None:
    async def test() -> None:
        loop = asyncio.get_running_loop()
        pulse = Pulse(lambda: LoopEvent(loop))
        pulse.fire()  # nobody waits: nothing is kept
        first = asyncio.ensure_future(pulse.wait())
        await asyncio.sleep(0)
        pulse.fire()
        await first
        later = asyncio.ensure_future(pulse.wait())  # a new wait waits for the next fire
        await asyncio.sleep(0)
        assert not later.done()
        pulse.fire()
        await later

    run(test)
