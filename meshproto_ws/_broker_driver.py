"""The broker driver: the reference :class:`~meshproto.Broker` over WebSockets, no I/O.

Theory of operation
===================

The broker core thinks in *connections* (ids in, text frames, pings and
closes per connection out); a server adapter thinks in accepted *sockets*.
This module sits between them, so that any server adapter is only sockets
and a clock.

Each accepted socket gets an id (``socket_opened``), which is also the
broker's ``conn_id``. Its server :class:`WsConnection` upgrades only ``/ws``
and caps received messages (1 MiB by default, docs/protocol.md §1 [ours]). The
broker hears of the connection only once the WebSocket handshake is done,
and of every complete message after that; it hears ``connection_closed``
exactly once, when the socket stops carrying messages (a close frame, EOF,
a protocol error, a message over the cap, an I/O error), unless the broker
closed it itself.

Outputs become commands: ``SendText`` and ``PingConnection`` → WebSocket
bytes (:class:`WriteBytes`); ``CloseConnection`` → a close frame, then a
bounded wait (``close_timeout``) for the client's echo or EOF, then
:class:`CloseSocket`. A socket that does not finish its handshake within
``handshake_timeout`` is closed. The broker's outputs are carried out after
every broker input, in order; the bytes for each socket are written once
per read (one :class:`WriteBytes` for all the frames a read's messages
called for), and once per other input.

The clock is the broker's: Unix wall-clock seconds (``now`` of every input).

Faults are contained per socket. An unexpected exception (a bug, in the
broker or here) while handling one socket's input is logged once, with its
traceback, on the ``meshproto.ws`` logger; that socket is closed with 1011
(``internal error``) and the broker hears ``connection_closed`` for it;
every other socket goes on as before. The outputs the broker produced for
other sockets before it failed are still carried out. An exception from the
broker's timers is logged the same way and the timers are not run again for
:data:`TIMER_RETRY` seconds, so a timer that keeps failing cannot spin.
"""

from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass
from typing import Protocol

from meshproto import (
    BrokerOutput,
    CloseConnection,
    PingConnection,
    SendText,
    SendTextMany,
    SendTextTail,
)

from ._commands import CloseSocket, SocketCommand, WriteBytes
from ._connection import (
    BinaryReceived,
    Closed,
    Opened,
    PingReceived,
    PongReceived,
    TextReceived,
    WsConnection,
    WsEvent,
    WsState,
    server_text_frame,
)

__all__ = [
    "CLOSE_INTERNAL_ERROR",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "TIMER_RETRY",
    "BrokerDriver",
    "BrokerMachine",
]

logger = logging.getLogger("meshproto.ws")

#: How long an accepted socket may take to send its upgrade request.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
_DEFAULT_CLOSE_TIMEOUT = 2.0
#: The close code for a socket whose input hit a bug (RFC 6455 §7.4.1).
CLOSE_INTERNAL_ERROR = 1011
#: After the broker's timers raised, how long before they run again (seconds).
TIMER_RETRY = 1.0


class BrokerMachine(Protocol):
    """What :class:`BrokerDriver` calls on its broker; :class:`~meshproto.Broker` has it all.

    Anything with these methods can be driven, such as a test's stand-in
    that checks the broker around every input.
    """

    def connection_opened(self, conn_id: int, *, now: float) -> None: ...

    def receive_text(self, conn_id: int, text: str, *, now: float) -> None: ...

    def receive_binary(self, conn_id: int, data: bytes, *, now: float) -> None: ...

    def receive_ping(self, conn_id: int, *, now: float) -> None: ...

    def receive_pong(self, conn_id: int, *, now: float) -> None: ...

    def connection_closed(self, conn_id: int, *, now: float) -> None: ...

    def handle_timer(self, now: float) -> None: ...

    def drain_outputs(self) -> list[BrokerOutput]: ...

    def next_deadline(self) -> float | None: ...


@dataclass(slots=True)
class _Socket:
    ws: WsConnection
    registered: bool = False  # the broker knows this connection
    deadline: float | None = None  # handshake deadline, then close deadline


class _Framed:
    """The frames of one batch of outputs for many sockets, each made once.

    A text in several outputs (a batch of system pushes) is framed once for
    all of them. A batch goes out as tails of one sequence of texts
    (:class:`~meshproto.SendTextTail`): each socket hears it from its first
    event after it arrived. The whole batch is joined once, and every tail
    is a view into those bytes, not a copy. So a batch to thousands of
    sockets that joined at different moments costs one copy of its frames,
    not one per distinct tail (which, in a join storm, was hundreds of
    megabytes). Made only when a pump meets such an output.
    """

    __slots__ = ("_blob", "_by_text", "_offsets", "_texts")

    def __init__(self) -> None:
        self._by_text: dict[int, bytes] = {}  # id(text) -> its frame, while outputs hold it
        self._texts: tuple[str, ...] = ()
        self._blob = b""
        self._offsets: list[int] = [0]  # where each text's frame starts in the blob, and the end

    def of(self, output: SendTextMany | SendTextTail) -> bytes | memoryview:
        texts = output.texts
        if type(output) is SendTextTail:
            if texts is not self._texts:
                self._join(texts)
            start = output.start
            return self._blob if start == 0 else memoryview(self._blob)[self._offsets[start] :]
        if len(texts) == 1:
            return server_text_frame(texts[0])
        return b"".join([self._frame(text) for text in texts])

    def _join(self, texts: tuple[str, ...]) -> None:
        parts = []
        offsets = [0]
        for text in texts:
            frame = self._frame(text)
            parts.append(frame)
            offsets.append(offsets[-1] + len(frame))
        self._texts, self._blob, self._offsets = texts, b"".join(parts), offsets

    def _frame(self, text: str) -> bytes:
        frame = self._by_text.get(id(text))
        if frame is None:
            frame = self._by_text[id(text)] = server_text_frame(text)
        return frame


class BrokerDriver:
    """Drives one :class:`~meshproto.Broker` (any :class:`BrokerMachine`) over many sockets."""

    def __init__(
        self,
        broker: BrokerMachine,
        *,
        max_message_bytes: int | None = None,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        close_timeout: float = _DEFAULT_CLOSE_TIMEOUT,
    ) -> None:
        self._broker = broker
        self.max_message_bytes = max_message_bytes
        self.handshake_timeout = handshake_timeout
        self.close_timeout = close_timeout
        self._sockets: dict[int, _Socket] = {}
        # (deadline, socket id) of the sockets handshaking or closing, a heap, so
        # that neither next_deadline() nor handle_timer() looks at every socket.
        # An entry whose socket is gone or has another deadline is stale.
        self._deadlines: list[tuple[float, int]] = []
        # Sockets written to by the outputs being carried out, flushed at the end.
        self._dirty: dict[int, WsConnection] = {}
        self._next_id = 0
        self._commands: list[SocketCommand] = []
        self._timers_paused_until: float | None = None
        #: Sockets closed because handling their input raised (a bug).
        self.internal_errors = 0

    @property
    def broker(self) -> BrokerMachine:
        return self._broker

    @property
    def socket_count(self) -> int:
        """Sockets accepted and not yet closed (handshaking, open or closing)."""
        return len(self._sockets)

    def socket_ids(self) -> list[int]:
        return list(self._sockets)

    # --- inputs --------------------------------------------------------------------

    def socket_opened(self, *, now: float) -> int:
        """A socket was accepted (TLS already done); returns its id."""
        self._next_id += 1
        socket_id = self._next_id
        ws = WsConnection.server(max_message_bytes=self.max_message_bytes)
        sock = _Socket(ws)
        self._sockets[socket_id] = sock
        self._set_deadline(socket_id, sock, now + self.handshake_timeout)
        return socket_id

    def receive_data(self, socket_id: int, data: bytes | None, *, now: float) -> None:
        """Bytes read from the socket (``None`` at EOF)."""
        try:
            self._pump(now)
            sock = self._sockets.get(socket_id)
            if sock is None:
                return
            for event in sock.ws.receive_data(data):
                self._feed(socket_id, sock, event, now)
            self._flush_dirty()  # what the read's messages called for, one write per socket
            self._flush(socket_id, sock.ws)
            self._settle(socket_id, sock, now)
        except Exception:
            self._contain(socket_id, now)

    def socket_failed(self, socket_id: int, *, now: float, reason: str = "") -> None:
        """The socket broke (reset, TLS error, its send buffer overflowed …)."""
        try:
            self._pump(now)
            sock = self._forget(socket_id)
            if sock is None:
                return
            if sock.registered:
                sock.registered = False
                self._broker.connection_closed(socket_id, now=now)
                self._pump(now)
        except Exception:
            logger.exception("unexpected error while closing socket %d", socket_id)
            self._recover(now)

    def handle_timer(self, now: float) -> None:
        """Run what is due: handshake and close deadlines, then the broker's timers."""
        self._pump(now)
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            due, socket_id = heapq.heappop(deadlines)
            sock = self._sockets.get(socket_id)
            if sock is not None and sock.deadline == due:
                self._forget(socket_id)
                if sock.registered:  # pragma: no cover - registered sockets have no deadline
                    self._broker.connection_closed(socket_id, now=now)
        paused = self._timers_paused_until
        if paused is not None and now < paused:
            return
        self._timers_paused_until = None
        try:
            self._broker.handle_timer(now)
            self._pump(now)
        except Exception:
            logger.exception(
                "unexpected error in the broker's timers; retrying in %g s", TIMER_RETRY
            )
            self._timers_paused_until = now + TIMER_RETRY
            self._recover(now)

    def fail_socket(self, socket_id: int, *, now: float) -> None:
        """The adapter hit a bug while serving ``socket_id``: close it with 1011.

        The adapter has logged the error. Every other socket is untouched.
        """
        self._close_for_bug(socket_id, now)

    # --- outputs -------------------------------------------------------------------

    def drain_commands(self, *, now: float) -> list[SocketCommand]:
        """What the adapter must do, in order (after carrying out the broker's outputs)."""
        self._pump(now)
        commands, self._commands = self._commands, []
        return commands

    def next_deadline(self) -> float | None:
        try:
            best = self._broker.next_deadline()
        except Exception:
            logger.exception("unexpected error in the broker's next_deadline()")
            best = None
        paused = self._timers_paused_until
        if paused is not None and (best is None or best < paused):
            best = paused
        deadlines, sockets = self._deadlines, self._sockets
        while deadlines:
            due, socket_id = deadlines[0]
            sock = sockets.get(socket_id)
            if sock is not None and sock.deadline == due:
                if best is None or due < best:
                    best = due
                break
            heapq.heappop(deadlines)  # stale
        return best

    # --- internals -----------------------------------------------------------------

    def _feed(self, socket_id: int, sock: _Socket, event: WsEvent, now: float) -> None:
        broker = self._broker
        if isinstance(event, Opened):
            sock.registered = True
            sock.deadline = None
            broker.connection_opened(socket_id, now=now)
        elif not sock.registered:
            return
        elif isinstance(event, TextReceived):
            broker.receive_text(socket_id, event.text, now=now)
        elif isinstance(event, PingReceived):
            broker.receive_ping(socket_id, now=now)
        elif isinstance(event, PongReceived):
            broker.receive_pong(socket_id, now=now)
        elif isinstance(event, BinaryReceived):
            broker.receive_binary(socket_id, event.data, now=now)
        elif isinstance(event, Closed):
            sock.registered = False
            broker.connection_closed(socket_id, now=now)
        self._pump(now, flush=False)

    def _pump(self, now: float, *, flush: bool = True) -> None:
        """Carry out the broker's outputs; one that fails costs only its own socket.

        The texts for many sockets are framed once and the same bytes go to
        each (a server's frames are not masked); a text in several such
        outputs (a batch of system pushes) is framed once for all of them.
        Each socket written to is flushed once, at the end, as one write;
        with ``flush=False`` they wait for :meth:`_flush_dirty` (a read's
        events are carried out one by one, and written once).
        """
        sockets = self._sockets
        while outputs := self._broker.drain_outputs():
            framed: _Framed | None = None  # while these outputs hold their texts
            for output in outputs:
                if type(output) is SendTextMany or type(output) is SendTextTail:
                    try:
                        if framed is None:
                            framed = _Framed()
                        blob = framed.of(output)
                    except Exception:
                        logger.exception("unexpected error while framing texts for many sockets")
                        for conn_id in output.conn_ids:
                            self._close_for_bug(conn_id, now)
                        continue
                    for conn_id in output.conn_ids:
                        sock = sockets.get(conn_id)
                        if sock is not None and sock.ws.send_framed(blob):
                            self._dirty[conn_id] = sock.ws
                    continue
                conn_id = output.conn_id  # type: ignore[union-attr]
                sock = sockets.get(conn_id)
                if sock is None:
                    continue
                try:
                    self._carry_out(output, conn_id, sock, now)
                except Exception:
                    logger.exception(
                        "unexpected error while writing to socket %d; closing it with %d",
                        conn_id,
                        CLOSE_INTERNAL_ERROR,
                    )
                    self._close_for_bug(conn_id, now)
        if flush:
            self._flush_dirty()

    def _flush_dirty(self) -> None:
        dirty = self._dirty
        if dirty:
            self._dirty = {}
            for conn_id, ws in dirty.items():
                self._flush(conn_id, ws)

    def _carry_out(self, output: BrokerOutput, conn_id: int, sock: _Socket, now: float) -> None:
        ws = sock.ws
        if type(output) is SendText:
            if ws.send_text(output.text):
                self._dirty[conn_id] = ws
        elif type(output) is PingConnection:
            if ws.send_ping():
                self._dirty[conn_id] = ws
        elif type(output) is CloseConnection:
            sock.registered = False
            ws.close(output.code, output.reason)
            self._dirty.pop(conn_id, None)
            self._flush(conn_id, ws)  # what came before the close, then the close frame
            self._settle(conn_id, sock, now)

    def _contain(self, socket_id: int, now: float) -> None:
        logger.exception(
            "unexpected error while handling input on socket %d; closing it with %d",
            socket_id,
            CLOSE_INTERNAL_ERROR,
        )
        self._close_for_bug(socket_id, now)

    def _close_for_bug(self, socket_id: int, now: float) -> None:
        """Close one socket whose handling raised, and let the broker forget it."""
        self.internal_errors += 1
        sock = self._sockets.get(socket_id)
        registered = sock is not None and sock.registered
        if sock is not None:
            sock.registered = False
            try:
                sock.ws.close(CLOSE_INTERNAL_ERROR, "internal error")
                self._dirty.pop(socket_id, None)
                self._flush(socket_id, sock.ws)
                self._settle(socket_id, sock, now)
            except Exception:  # the WebSocket itself is broken: drop the socket
                self._forget(socket_id)
        if registered:
            try:
                self._broker.connection_closed(socket_id, now=now)
            except Exception:
                logger.exception("the broker could not forget socket %d", socket_id)
        self._recover(now)

    def _recover(self, now: float) -> None:
        """Carry out what the broker decided before (or despite) a failure."""
        self._pump(now)

    def _forget(self, socket_id: int) -> _Socket | None:
        """Drop a socket from every table and tell the adapter to close it."""
        sock = self._sockets.pop(socket_id, None)
        if sock is None:
            return None
        self._dirty.pop(socket_id, None)
        self._commands.append(CloseSocket(socket_id))
        return sock

    def _flush(self, socket_id: int, ws: WsConnection) -> None:
        data = ws.data_to_send()
        if data:
            self._commands.append(WriteBytes(socket_id, data))

    def _settle(self, socket_id: int, sock: _Socket, now: float) -> None:
        """Close a socket whose WebSocket is done; arm the close deadline of a closing one."""
        if socket_id not in self._sockets:
            return
        state = sock.ws.state
        if state is WsState.CLOSED:
            self._forget(socket_id)
            if sock.registered:  # pragma: no cover - Closed was reported first
                sock.registered = False
                self._broker.connection_closed(socket_id, now=now)
        elif state is WsState.CLOSING and not sock.registered and sock.deadline is None:
            self._set_deadline(socket_id, sock, now + self.close_timeout)

    def _set_deadline(self, socket_id: int, sock: _Socket, when: float) -> None:
        sock.deadline = when
        heapq.heappush(self._deadlines, (when, socket_id))
