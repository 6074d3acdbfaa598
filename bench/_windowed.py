"""The windowed run that ``bench/e2e.py`` and ``bench/client.py`` both make of our clients.

A sender keeps ``window`` sends of ``body`` in flight to a receiver until
``n`` have been made; the receiver takes every message (which acknowledges
it). The run ends when every message is delivered and every send is
acknowledged. What the two benches do around it (which broker, which
clients, what they print) is their own.

On anyio, ``window`` tasks share the sends, each awaiting
``sender.send(...)`` in a loop, and one task reads ``receiver.messages()``.
On the blocking client, the main thread keeps the window with
``send_nowait`` and a semaphore that each future's done-callback releases
(``send()`` is that call plus a wait), and one thread calls
``receiver.receive()``.

Imported by the benches as a sibling module (``python bench/e2e.py`` puts
``bench/`` on ``sys.path``); it imports the clients' packages only inside the
functions that use them.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from time import perf_counter, process_time
from typing import Any

__all__ = ["Windowed", "windowed_anyio", "windowed_sync"]


@dataclass(frozen=True)
class Windowed:
    """One windowed run: when it started, when the last message arrived, when the last
    ack did, the process's CPU time from start to end, and each send->ack (ms)."""

    start: float
    delivered: float
    end: float
    cpu: float
    latencies_ms: tuple[float, ...]


async def windowed_anyio(
    sender: Any,
    receiver: Any,
    n: int,
    window: int,
    body: str,
    *,
    on_delivery: Callable[[int], None] | None = None,
) -> Windowed:
    """The run on two open :class:`meshproto_anyio.Client` objects.

    ``on_delivery(count)`` is called as the receiver takes each message.
    """
    import anyio  # noqa: PLC0415

    from meshproto import MessageReceived  # noqa: PLC0415

    target = receiver.public_key
    latencies = [0.0] * n
    delivered = 0.0
    next_index = 0

    async def send_loop() -> None:
        nonlocal next_index
        send = sender.send
        while next_index < n:
            index = next_index
            next_index += 1
            began = perf_counter()
            await send(target, body, "now")
            latencies[index] = perf_counter() - began

    async def receive_all() -> None:
        nonlocal delivered
        count = 0
        async for message in receiver.messages():
            if not isinstance(message, MessageReceived):
                raise RuntimeError(f"unreadable message: {message!r}")
            count += 1
            if on_delivery is not None:
                on_delivery(count)
            if count == n:
                delivered = perf_counter()
                return
        raise RuntimeError(f"receiver closed after {count} of {n} messages")

    gc.collect()
    cpu0, start = process_time(), perf_counter()
    async with anyio.create_task_group() as work:
        work.start_soon(receive_all)
        for _ in range(window):
            work.start_soon(send_loop)
    cpu, end = process_time() - cpu0, perf_counter()
    return Windowed(start, delivered, end, cpu, tuple(x * 1_000 for x in latencies))


def windowed_sync(
    sender: Any, receiver: Any, n: int, window: int, body: str, *, bound: float
) -> Windowed:
    """The run on two open :class:`meshproto_sync.Client` objects; every wait is
    bounded by ``bound`` seconds, and the first error raises."""
    from meshproto import MessageReceived  # noqa: PLC0415

    target = receiver.public_key
    latencies = [0.0] * n
    errors: list[BaseException] = []
    delivered = 0.0
    slots = threading.Semaphore(window)

    def acked(index: int, began: float, future: Future[str]) -> None:
        latencies[index] = perf_counter() - began
        slots.release()
        error = future.exception()
        if error is not None:
            errors.append(error)

    def receive_all() -> None:
        nonlocal delivered
        try:
            for count in range(n):
                message = receiver.receive(timeout=bound)
                if not isinstance(message, MessageReceived):
                    raise RuntimeError(f"unreadable message {count}: {message!r}")
            delivered = perf_counter()
        except BaseException as exc:
            errors.append(exc)

    receiving = threading.Thread(target=receive_all, name="bench-receiver")
    gc.collect()
    cpu0, start = process_time(), perf_counter()
    receiving.start()
    send = sender.send_nowait
    for index in range(n):
        if errors or not slots.acquire(timeout=bound):
            break
        began = perf_counter()
        send(target, body, "now").add_done_callback(partial(acked, index, began))
    receiving.join(bound)
    # Every ack too: a push may reach the receiver before its ack reaches the sender.
    for _ in range(window):
        if errors or not slots.acquire(timeout=bound):
            break
    cpu, end = process_time() - cpu0, perf_counter()
    if receiving.is_alive():
        errors.append(RuntimeError("the receiver did not finish in time"))
    if errors:
        raise errors[0]
    return Windowed(start, delivered, end, cpu, tuple(x * 1_000 for x in latencies))
