"""Small parts of the anyio client: the wording of a failed connect, the waits, the iterators.

Kept apart from :mod:`meshproto_anyio._client` so that the client module holds
the client itself: these have no state of the client's.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import anyio
import anyio.lowlevel

__all__ = [
    "Arrivals",
    "LoopEvent",
    "Outcome",
    "Pulse",
    "Signal",
    "connect_error_text",
    "new_signal",
    "nothing_more",
]

T = TypeVar("T")


class Signal(Protocol):
    """What a wait needs of an event: :class:`anyio.Event` and :class:`asyncio.Event` alike."""

    def set(self) -> None: ...

    def is_set(self) -> bool: ...

    async def wait(self) -> object: ...


def new_signal(loop: asyncio.AbstractEventLoop | None) -> Signal:
    """An event for the waits of a :class:`Pulse`: a :class:`LoopEvent` on ``loop`` (asyncio),
    anyio's elsewhere.

    On asyncio, :class:`anyio.Event` is a wrapper around :class:`asyncio.Event`
    that asks which library runs (sniffio) each time one is made, so the
    client makes its own there.
    """
    return anyio.Event() if loop is None else LoopEvent(loop)


class LoopEvent:
    """A :class:`Signal` for any number of waiting tasks on one asyncio loop.

    What :class:`asyncio.Event` does, on the loop it is given: asyncio's asks
    for the running loop at each event's first wait, which on Python 3.11 is
    a system call (``getpid``), and the client makes an event per wait: a
    :class:`Pulse` per message, for a task reading messages, and an
    :class:`Outcome` per send. Each waiter awaits a future of its own, so
    cancelling one cancels no other.
    """

    __slots__ = ("_loop", "_set", "_waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._set = False
        self._waiters: list[asyncio.Future[None]] = []

    def set(self) -> None:
        if not self._set:
            self._set = True
            for future in self._waiters:
                if not future.done():  # a cancelled wait is done
                    future.set_result(None)

    def is_set(self) -> bool:
        return self._set

    async def wait(self) -> bool:
        if self._set:
            return True
        future = self._loop.create_future()
        self._waiters.append(future)
        try:
            await future
            return True
        finally:
            self._waiters.remove(future)


def nothing_more(now: float) -> None:
    """The input of a pass that only carries out what is pending (the calls of a loop turn)."""


def connect_error_text(exc: OSError) -> str:
    """Why a connection could not be made, for a person: ``Connection refused``.

    anyio reports a failed connect as ``All connection attempts failed``, with
    the error of each attempt as its cause; asyncio words a refusal as
    ``Connect call failed ('127.0.0.1', 9)``. This names the cause instead:
    the system's text for its errno, a resolver's message as it is, and a TLS
    error (``CERTIFICATE_VERIFY_FAILED`` …) in full.
    """
    cause = exc.__cause__
    found: list[OSError] = []
    if isinstance(cause, OSError):
        found.append(cause)
    elif cause is not None and hasattr(cause, "exceptions"):  # an exception group
        found.extend(e for e in cause.exceptions if isinstance(e, OSError))
    texts: list[str] = []
    for error in found or [exc]:
        if isinstance(error, socket.gaierror):
            text = error.strerror or str(error)
        elif isinstance(error, ssl.SSLError):
            text = str(error)
        elif error.errno:
            text = os.strerror(error.errno)
        else:
            text = str(error)
        if text not in texts:
            texts.append(text)
    return "; ".join(texts)


class Pulse:
    """Wakes every task waiting on it; re-armed by each ``fire``.

    The event is made by the first waiter (with ``new_event``), so a fire
    with nobody waiting (most of them) costs nothing.
    """

    __slots__ = ("_event", "_new_event")

    def __init__(self, new_event: Callable[[], Signal] = anyio.Event) -> None:
        self._new_event = new_event
        self._event: Signal | None = None

    def fire(self) -> None:
        event = self._event
        if event is not None:
            self._event = None
            event.set()

    async def wait(self) -> None:
        event = self._event
        if event is None:
            event = self._event = self._new_event()
        await event.wait()


class Outcome(Generic[T]):
    """The one outcome of a send or a request: a value or an error.

    A :class:`~meshproto_ws.Waiter`: :class:`~meshproto_ws.Outcomes` settles it,
    and only the task that made the call awaits it: on asyncio (``loop``) the
    wait is a :class:`LoopEvent`, elsewhere an :class:`anyio.Event`.
    """

    __slots__ = ("_done", "_error", "_value")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._done: Signal = anyio.Event() if loop is None else LoopEvent(loop)
        self._value: T | None = None
        self._error: BaseException | None = None

    def set_result(self, value: T) -> None:
        self._value = value
        self._done.set()

    def set_exception(self, error: BaseException) -> None:
        self._error = error
        self._done.set()

    async def wait(self) -> T:
        if self._done.is_set():  # settled already: still a checkpoint, as anyio's wait is
            await anyio.lowlevel.checkpoint()
        else:
            await self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


class Arrivals(Generic[T]):
    """What ``take`` hands out, one at a time, as an async iterator.

    ``Client.messages()`` and ``Client.system_messages()``: each step takes
    the next item (``None``: nothing yet), waits on ``pulse`` for more, and
    ends once nothing is left and ``closed()`` says the client is closed.
    """

    __slots__ = ("_closed", "_pulse", "_take")

    def __init__(
        self, take: Callable[[], T | None], closed: Callable[[], bool], pulse: Pulse
    ) -> None:
        self._take = take
        self._closed = closed
        self._pulse = pulse

    def __aiter__(self) -> Arrivals[T]:
        return self

    async def __anext__(self) -> T:
        while True:
            item = self._take()
            if item is not None:
                return item
            if self._closed():
                raise StopAsyncIteration
            await self._pulse.wait()
