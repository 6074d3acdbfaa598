"""Small parts of the anyio client: the wording of a failed connect, and two waits.

Kept apart from :mod:`meshproto_anyio._client` so that the client module holds
the client itself: these have no state of the client's.
"""

from __future__ import annotations

import os
import socket
import ssl
from typing import Generic, TypeVar

import anyio

__all__ = ["Outcome", "Pulse", "connect_error_text"]

T = TypeVar("T")


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

    The event is made by the first waiter, so a fire with nobody waiting
    (most of them) costs nothing.
    """

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event: anyio.Event | None = None

    def fire(self) -> None:
        event = self._event
        if event is not None:
            self._event = None
            event.set()

    async def wait(self) -> None:
        event = self._event
        if event is None:
            event = self._event = anyio.Event()
        await event.wait()


class Outcome(Generic[T]):
    """The one outcome of a send or a request: a value or an error.

    A :class:`~meshproto_ws.Waiter`: :class:`~meshproto_ws.Outcomes` settles it.
    """

    __slots__ = ("_done", "_error", "_value")

    def __init__(self) -> None:
        self._done = anyio.Event()
        self._value: T | None = None
        self._error: BaseException | None = None

    def set_result(self, value: T) -> None:
        self._value = value
        self._done.set()

    def set_exception(self, error: BaseException) -> None:
        self._error = error
        self._done.set()

    async def wait(self) -> T:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value
