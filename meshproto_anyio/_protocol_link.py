"""One socket served through asyncio's protocol API: no task of its own.

On the asyncio backend the broker server accepts with ``loop.create_server``,
and the client connects with ``loop.create_connection``; either way the
socket is a :class:`ProtocolLink`: asyncio calls it when
bytes arrive, at EOF and when the connection is lost, and it writes straight
into the transport. It keeps the contract of
:class:`~meshproto_anyio._link.SocketLink` (the link of a task-based stream,
which the trio backend uses), so the server drives either the same way:

* every chunk read goes to ``on_data`` (``None`` at EOF), any I/O error to
  ``on_error``, each at most until :meth:`close` or :meth:`abort`. A read
  takes at most :data:`~meshproto_anyio._link.READ_SIZE` bytes, as the
  task-based link's does, so that a client whose inbox is full takes in at
  most one read more before it stops reading. Reads land in one buffer that
  every link of the process shares (asyncio fills it and hands it over in
  one synchronous step, and the bytes are copied out at once), so a
  thousand idle sockets hold no read buffer each;
* :meth:`write` never waits. The first write of a turn of the event loop
  goes to the transport at once (which sends what the kernel takes and
  buffers the rest), so a lone frame leaves without delay; later writes in
  the same turn are held and handed over together at the end of the turn,
  one system call for a burst instead of one per frame (as the task-based
  link's writer does). The links of one owner share a :class:`WriteTurn`,
  which schedules one callback per turn for all of them, not one per link
  (a broadcast writes to every socket of a mesh in one turn). A write that
  would take what is held and buffered over ``max_buffered`` is refused,
  and the owner drops the link;
* :meth:`pause_reading` and :meth:`resume_reading` stop and restart reading
  (TCP then pushes back on the peer);
* :meth:`close` flushes what is buffered, then closes, within
  ``close_timeout``; :meth:`abort` closes at once;
* ``on_gone`` is called exactly once, when the socket is closed for good.

asyncio calls a protocol from plain callbacks, outside any task, where anyio
cannot tell which event loop runs it (with sniffio installed it asks for the
current task, and there is none). Every callback to the owner therefore runs
with sniffio's "current library" declared as asyncio, so the owner may use
anyio there as anywhere (start a task, read the clock). An exception that
escapes an owner's callback (a bug: the owners contain their own) is logged
and costs that socket, which is aborted; it never reaches asyncio, which
would log it as the loop's error and leave the socket open, unserved.

A client's ``wss://`` link is made over TCP first and opens only once TLS is
up (:meth:`ProtocolLink.upgraded`). Bytes that arrive before TLS began are
no TLS server's (one waits for the client's hello): the link aborts, and
the owner, which finds the connection closing, fails the connect at once
rather than start TLS on it and wait for a handshake that cannot come.

Why: a socket served by two tasks costs each write a task wake-up and each
idle socket two parked tasks, which is most of what a broker with thousands
of sockets spends, and a client a hop of the event loop each way of every
round trip. Here a write is one call into the transport, bytes read are
handled in the callback that reads them, and an idle socket is a transport
and this object.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextvars import ContextVar

from ._link import READ_SIZE

_LIBRARY: ContextVar[str | None] | None
try:
    from sniffio import current_async_library_cvar as _LIBRARY
except ImportError:  # pragma: no cover - anyio then tells asyncio by its running loop
    _LIBRARY = None

__all__ = ["ProtocolLink", "WriteTurn", "on_asyncio"]

logger = logging.getLogger("meshproto.anyio")


def on_asyncio() -> bool:
    """Whether this runs on an asyncio loop (anyio's asyncio backend), not trio."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _declared(link: ProtocolLink, callback: Callable[..., object], *args: object) -> None:
    """Call ``callback`` with asyncio declared as the running library (see above).

    An exception it raises (a bug of the owner's, which contains its own)
    costs this socket only: it is logged once and the socket aborted, rather
    than left to asyncio, which would log it as an error of the event loop
    and leave the socket open with nobody serving it.
    """
    library = _LIBRARY
    token = library.set("asyncio") if library is not None else None
    try:
        callback(*args)
    except Exception:
        logger.exception("unexpected error while serving socket %d; dropping it", link.socket_id)
        link.abort()
    finally:
        if library is not None and token is not None:
            library.reset(token)


class WriteTurn:
    """The links of one owner that have written in this turn of the event loop.

    The first link to write in a turn schedules the end of the turn, once;
    then every link that wrote hands over what it held back. A link whose
    hand-over fails (a bug) is logged and aborted; the others still hand
    over theirs, and their next turn is a turn like any.

    An owner with work of its own for the end of the turn (the client's user
    calls after the first, carried out together) passes ``on_end`` and calls
    :meth:`defer`: the same one callback runs ``on_end`` first, then the
    hand-over, so what ``on_end`` writes leaves with the rest of the turn's
    writes and a turn costs the loop one callback, not two.
    """

    __slots__ = ("_deferred", "_links", "_loop", "_on_end", "_scheduled")

    def __init__(self, on_end: Callable[[], None] | None = None) -> None:
        # The loop of the first turn (an owner's links all live on one loop),
        # so that a turn does not ask for the running loop: on Python 3.11
        # that asks the operating system for the process id every time.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._links: list[ProtocolLink] = []
        self._on_end = on_end
        self._deferred = False
        self._scheduled = False

    @property
    def deferred(self) -> bool:
        """Whether ``on_end`` is due at the end of this turn (it is not running yet)."""
        return self._deferred

    def defer(self) -> None:
        """Run ``on_end`` at the end of this turn (once, however often this is called)."""
        self._deferred = True
        self._schedule()

    def wrote(self, link: ProtocolLink) -> None:
        self._schedule()
        self._links.append(link)

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            loop.call_soon(self._end)

    def _end(self) -> None:
        # What ``on_end`` defers again, or a link's first write in it, is the
        # next turn's business: it schedules the next end.
        self._scheduled = False
        if self._deferred and self._on_end is not None:
            self._deferred = False
            try:
                self._on_end()
            except Exception:  # the owner's bug (it contains its own): the writes still go
                logger.exception("the end of a loop turn failed")
        links, self._links = self._links, []
        for link in links:
            try:
                link._end_turn()
            except Exception:  # that link's fault: it must not strand the others' writes
                logger.exception("writing to socket %d failed; dropping it", link.socket_id)
                link.abort()


#: Where every link's reads land, one at a time (see the module docstring).
_READ_BUFFER = memoryview(bytearray(READ_SIZE))


class ProtocolLink(asyncio.BufferedProtocol):
    """A socket as an asyncio protocol, with the owner's callbacks."""

    __slots__ = (
        "_close_timeout",
        "_closer",
        "_closing",
        "_done",
        "_held",
        "_held_size",
        "_in_turn",
        "_max_buffered",
        "_on_data",
        "_on_error",
        "_on_gone",
        "_on_open",
        "_paused",
        "_plain",
        "_tls",
        "_tls_pending",
        "_transport",
        "_turn",
        "socket_id",
    )

    def __init__(
        self,
        *,
        on_open: Callable[[ProtocolLink], int],
        on_data: Callable[[int, bytes | None], None],
        on_error: Callable[[int, str], None],
        on_gone: Callable[[int], None],
        close_timeout: float,
        max_buffered: int | None = None,
        tls: bool = False,
        turn: WriteTurn | None = None,
        tls_after_connect: bool = False,
    ) -> None:
        self.socket_id = 0  # the owner's id for it, from on_open
        self._on_open = on_open
        self._on_data = on_data
        self._on_error = on_error
        self._on_gone = on_gone
        self._close_timeout = close_timeout
        self._max_buffered = max_buffered
        self._tls = tls
        self._transport: asyncio.Transport | None = None
        self._closing = False
        self._done = True  # no callbacks until the connection is made
        self._paused = False
        self._closer: asyncio.TimerHandle | None = None
        self._turn = turn if turn is not None else WriteTurn()
        # A client's wss:// link: TCP first, then TLS (``upgraded``); nothing
        # reaches the owner before TLS is up.
        self._tls_pending = tls_after_connect
        self._plain: asyncio.Transport | None = None
        self._in_turn = False  # this turn's first write went out: hold the rest
        self._held: list[bytes | memoryview] = []
        self._held_size = 0

    # --- what the owner calls --------------------------------------------------------

    @property
    def closing(self) -> bool:
        """Whether ``close`` or ``abort`` was called, or the socket broke."""
        return self._closing

    @property
    def buffered(self) -> int:
        """Bytes written but not yet handed to the kernel."""
        transport = self._transport
        held = self._held_size
        return held + transport.get_write_buffer_size() if transport is not None else held

    def write(self, data: bytes | memoryview) -> bool:
        """Send ``data``; ``False`` if the link is closing or the buffer would overflow."""
        transport = self._transport
        if self._closing or transport is None:
            return False
        limit = self._max_buffered
        if (
            limit is not None
            and transport.get_write_buffer_size() + self._held_size + len(data) > limit
        ):
            return False
        if self._in_turn:
            self._held.append(data)
            self._held_size += len(data)
        else:
            transport.write(data)
            self._in_turn = True
            self._turn.wrote(self)
        return True

    def _end_turn(self) -> None:
        """Hand over what this turn held back, in one write."""
        self._in_turn = False
        held = self._held
        if held and self._transport is not None and not self._transport.is_closing():
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))
        held.clear()
        self._held_size = 0

    @property
    def reading_paused(self) -> bool:
        return self._paused

    def pause_reading(self) -> None:
        """Read nothing more until :meth:`resume_reading`."""
        if not self._paused:
            self._paused = True
            if self._transport is not None and not self._closing:
                self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            if self._transport is not None and not self._closing:
                self._transport.resume_reading()

    def close(self) -> None:
        """Flush what is buffered (within ``close_timeout``), then close the socket."""
        self._done = True
        transport = self._transport
        if self._closing or transport is None:
            return
        self._closing = True
        if self._held:
            self._end_turn()
        transport.close()  # asyncio flushes the buffer first
        if self._closer is None:
            self._closer = asyncio.get_running_loop().call_later(
                self._close_timeout, transport.abort
            )

    def abort(self) -> None:
        """Close the socket now (TLS up or not); whatever is buffered is dropped."""
        self._done = True
        self._closing = True
        self._held.clear()
        self._held_size = 0
        for transport in (self._transport, self._plain):
            if transport is not None:
                transport.abort()

    # --- what asyncio calls ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if self._tls_pending:  # TCP only: TLS comes next, through ``upgraded``
            self._plain = transport
            return
        self._transport = transport
        self._done = False
        if self._paused:  # paused while TLS came up: it holds on the secured transport
            transport.pause_reading()
        _declared(self, self._opened)

    def upgraded(self, transport: asyncio.Transport) -> None:
        """TLS is up on the connection (``loop.start_tls``): the link opens on ``transport``.

        For a link made with ``tls_after_connect``: until now nothing was
        read or written, and ``on_open`` had not been called.
        """
        self._tls_pending = False
        self._plain = None
        self.connection_made(transport)

    def _opened(self) -> None:
        self.socket_id = self._on_open(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return _READ_BUFFER

    def buffer_updated(self, nbytes: int) -> None:
        if not self._done:
            _declared(self, self._on_data, self.socket_id, bytes(_READ_BUFFER[:nbytes]))
        elif self._tls_pending:  # bytes before TLS began: a TLS server waits for our hello
            self.abort()

    def eof_received(self) -> bool:
        if not self._done:
            _declared(self, self._on_data, self.socket_id, None)
        # Keep the socket open for writing until the owner closes it (a TLS
        # transport closes by itself: it cannot stay half open).
        return not self._tls

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._closer is not None:
            self._closer.cancel()
            self._closer = None
        if not self._done:
            self._done = True
            _declared(self, self._on_error, self.socket_id, f"connection lost: {exc!r}")
        _declared(self, self._on_gone, self.socket_id)
