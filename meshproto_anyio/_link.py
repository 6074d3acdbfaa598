"""One socket, owned by two tasks: a reader and a writer.

The drivers of :mod:`meshproto_ws` decide what to write and when to close;
a :class:`SocketLink` only does it. The reader hands every chunk it reads to
``on_data`` (``None`` at EOF) and any I/O error to ``on_error``; both are
plain synchronous callbacks that run the driver and carry out its commands,
so nothing in between can interleave. Writes never wait: :meth:`write`
appends to a buffer that the writer task flushes, so a peer that stops
reading stalls only its own writer. The buffer is bounded (``max_buffered``);
a write that would overflow it is refused, and the owner closes the link.
:meth:`pause_reading` stops the reader before its next read (the owner's
inbox is full) until :meth:`resume_reading`; TCP then pushes back on the
peer.

:meth:`close` flushes what is buffered, then closes the socket; the flush is
bounded by ``close_timeout``. :meth:`abort` closes at once. Either way the
socket is closed when :meth:`run` returns, and no callback runs after
``close``/``abort``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
from anyio.abc import ByteStream

__all__ = ["READ_SIZE", "SocketLink"]

logger = logging.getLogger("meshproto.anyio")

#: How much one read asks for.
READ_SIZE = 65_536

#: What reading or writing a broken socket raises (ssl.SSLError is an OSError;
#: a TLS stream raises EndOfStream from ``send`` when the peer hung up).
_IO_ERRORS = (
    OSError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
)


class SocketLink:
    """A socket with a reader task and a bounded, never-blocking write buffer."""

    def __init__(
        self,
        socket_id: int,
        stream: ByteStream,
        *,
        on_data: Callable[[int, bytes | None], None],
        on_error: Callable[[int, str], None],
        close_timeout: float,
        max_buffered: int | None = None,
    ) -> None:
        self.socket_id = socket_id
        self._stream = stream
        self._on_data = on_data
        self._on_error = on_error
        self._close_timeout = close_timeout
        self._max_buffered = max_buffered
        self._buffer = bytearray()
        self._closing = False
        self._done = False  # no more callbacks
        self._wakeup = anyio.Event()
        self._scope = anyio.CancelScope()
        self._paused = False
        self._resumed = anyio.Event()

    @property
    def closing(self) -> bool:
        """Whether ``close`` or ``abort`` was called, or the socket broke."""
        return self._closing

    @property
    def buffered(self) -> int:
        """Bytes written but not yet handed to the socket."""
        return len(self._buffer)

    def write(self, data: bytes | memoryview) -> bool:
        """Queue ``data``; ``False`` if the link is closing or the buffer would overflow."""
        if self._closing:
            return False
        limit = self._max_buffered
        if limit is not None and len(self._buffer) + len(data) > limit:
            return False
        self._buffer += data
        self._wakeup.set()
        return True

    @property
    def reading_paused(self) -> bool:
        return self._paused

    def pause_reading(self) -> None:
        """Read nothing more until :meth:`resume_reading` (bytes already read are delivered)."""
        if not self._paused:
            self._paused = True
            self._resumed = anyio.Event()

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            self._resumed.set()

    def close(self) -> None:
        """Flush what is buffered (within ``close_timeout``), then close the socket."""
        self._done = True
        self._begin_close()

    def abort(self) -> None:
        """Close the socket now; whatever is buffered is dropped."""
        self._closing = True
        self._done = True
        self._buffer.clear()
        self.resume_reading()
        self._scope.cancel()

    async def run(self) -> None:
        """Read and write until closed; the socket is closed on return."""
        try:
            with self._scope:
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(self._read)
                    await self._write()
                    tasks.cancel_scope.cancel()
        finally:
            self._done = True
            with anyio.CancelScope(shield=True):
                await anyio.aclose_forcefully(self._stream)

    async def _read(self) -> None:
        while not self._done:
            if self._paused:
                await self._resumed.wait()
                continue
            try:
                data = await self._stream.receive(READ_SIZE)
            except anyio.EndOfStream:
                if not self._done:
                    self._on_data(self.socket_id, None)
                return
            except _IO_ERRORS as exc:
                self._fail(f"read failed: {exc!r}")
                return
            if not self._done:
                self._on_data(self.socket_id, data)

    async def _write(self) -> None:
        while True:
            if not self._buffer:
                if self._closing:
                    return
                self._wakeup = anyio.Event()
                await self._wakeup.wait()
                continue
            data = bytes(self._buffer)
            self._buffer.clear()
            try:
                await self._stream.send(data)
            except _IO_ERRORS as exc:
                self._fail(f"write failed: {exc!r}")
                return

    def _fail(self, reason: str) -> None:
        if not self._done:
            self._done = True
            logger.debug("socket %d: %s", self.socket_id, reason)
            self._on_error(self.socket_id, reason)
        self._begin_close()

    def _begin_close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._scope.deadline = min(self._scope.deadline, anyio.current_time() + self._close_timeout)
        self._wakeup.set()
