"""The client driver: a :class:`~meshproto.ClientConnection` over WebSockets, no I/O.

Theory of operation
===================

The core (:class:`~meshproto.ClientConnection`) thinks in *transports*: open
one, write text frames, ping, close; it is told when a transport opened,
what arrived on it and when it closed. An adapter thinks in *sockets*: open a
TCP connection, write bytes, read bytes, close. Between the two sit
WebSocket framing and the order in which things must happen; that is this
module, written once for every adapter (anyio, blocking sockets).

One socket per transport: the socket's id is the core's ``transport_id``.

Inputs (each carries ``now``, the same monotonic clock the core uses):

* ``start(now)``: the core connects;
* ``socket_opened(id)``: TCP (and TLS) is up; the WebSocket handshake starts;
* ``receive_data(id, data)``: bytes from the socket, ``None`` at EOF;
* ``socket_failed(id, reason)``: opening failed, or the socket broke;
* ``handle_timer(now)``: at ``next_deadline()``;
* user calls go straight to :attr:`ClientDriver.connection` (``send``,
  ``set_status``, ``list_peers``, ``close`` …), followed by ``drain_commands``.

Outputs: ``drain_commands(now=...)`` (:data:`SocketCommand` values, in order),
``drain_events()`` (the core's events) and ``next_deadline()``.

:func:`client_driver` builds a driver from the parameters every adapter's
``connect()`` takes, filling in the defaults ``connect()`` documents (a
:class:`~meshproto_ws.PooledSystemRandom`, a random ``session_id``, no encryption) and
what the core leaves to the adapters (this process's ``pid`` and ``cwd``).

How the core's actions become commands:

* ``OpenTransport`` → :class:`OpenSocket`; when the socket opens, a client
  :class:`WsConnection` is made and its handshake request is written. The core
  hears ``transport_opened`` only when the WebSocket handshake is done, so its
  connect timeout covers TCP, TLS and the upgrade.
* ``WriteFrame`` / ``SendPing`` → the WebSocket's bytes, :class:`WriteBytes`.
* ``CloseTransport`` → a close frame and a bounded wait (``close_timeout``)
  for the broker's echo or EOF, then :class:`CloseSocket`; a socket still
  opening is abandoned at once.

How the WebSocket's events become core inputs: ``Opened`` →
``transport_opened``; text, binary, ping and pong → the matching ``receive_*``
(the pong is already written); ``Closed`` → ``transport_closed`` with the
broker's code, or with no code (1006) when this side closed because the broker
broke the protocol: a 1009 of our own must not read as the broker refusing
our last send.

Rules:

* The core's actions are translated before and after every core input, so
  bytes leave in exactly the order the core decided, and a frame read after
  the core let go of a transport is never fed back.
* A socket the core let go of is only drained until it finishes closing;
  nothing from it reaches the core.
* Back-pressure: while the core's inbox is full,
  :attr:`ClientDriver.paused_socket` names the current socket, and the
  adapter stops reading it (sockets that are closing are still read to
  their end). It is ``None`` again once the application takes messages.
* The driver never raises for anything the network does. An unexpected
  exception while handling an input (a bug, here or in the core) is logged
  once on the ``meshproto.ws`` logger and reported to the core
  (:meth:`~meshproto.ClientConnection.report_internal_error`), which drops
  that transport with 1011 and reconnects. Only if reporting fails as well
  does the exception propagate, and the adapter closes the client.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass

from meshproto import (
    ClientConfig,
    ClientConnection,
    ClientOptions,
    CloseTransport,
    Event,
    Group,
    OpenTransport,
    PlaintextSealer,
    Sealer,
    SendPing,
    Signer,
    WriteFrame,
    is_unicode_text,
)

from ._commands import CloseSocket, OpenSocket, SocketCommand, WriteBytes
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
)
from ._entropy import PooledSystemRandom
from ._record import RecordFile, RecordSetting, recording_for
from ._url import WsAddress, parse_ws_url

__all__ = ["DEFAULT_CLOSE_TIMEOUT", "ClientDriver", "client_driver"]

#: How long a closing socket waits for the peer's close echo or EOF.
DEFAULT_CLOSE_TIMEOUT = 2.0

logger = logging.getLogger("meshproto.ws")


@dataclass(slots=True)
class _Socket:
    ws: WsConnection | None = None  # None until TCP (and TLS) is up
    attached: bool = True  # the core still owns this transport
    close_deadline: float | None = None  # set once attached is False


class ClientDriver:
    """Drives one :class:`~meshproto.ClientConnection` over WebSockets.

    Raises :class:`~meshproto.LocalProtocolError` at once if the
    connection's URL is not a ``ws://`` or ``wss://`` URL.
    """

    def __init__(
        self,
        connection: ClientConnection,
        *,
        max_message_bytes: int | None = None,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    ) -> None:
        self._core = connection
        self.address: WsAddress = parse_ws_url(connection.config.url)
        self.max_message_bytes = max_message_bytes
        self.close_timeout = close_timeout
        self._sockets: dict[int, _Socket] = {}
        self._current: int | None = None
        self._commands: list[SocketCommand] = []

    @property
    def connection(self) -> ClientConnection:
        return self._core

    @property
    def open_sockets(self) -> int:
        """Sockets opening, open, or closing."""
        return len(self._sockets)

    @property
    def paused_socket(self) -> int | None:
        """The socket the adapter must not read now (the inbox is full), or ``None``."""
        if self._current is not None and self._core.reading_paused:
            return self._current
        return None

    # --- inputs --------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Connect (``ClientConnection.connect``)."""
        self._core.connect(now)
        self._translate(now)

    def socket_opened(self, socket_id: int, *, now: float) -> None:
        """The socket from ``OpenSocket(socket_id)`` is connected: start the handshake."""
        try:
            self._translate(now)
            sock = self._sockets.get(socket_id)
            if sock is None or sock.ws is not None:
                return
            sock.ws = WsConnection.client(self.address, max_message_bytes=self.max_message_bytes)
            self._flush(socket_id, sock.ws)
        except Exception as exc:
            self._contain(exc, "opening a WebSocket", now)

    def socket_failed(self, socket_id: int, *, now: float, reason: str) -> None:
        """Opening the socket failed, or it broke (reset, TLS error …)."""
        try:
            self._translate(now)
            sock = self._sockets.pop(socket_id, None)
            if sock is None:
                return
            self._commands.append(CloseSocket(socket_id))
            if sock.attached:
                self._detach(socket_id)
                self._core.transport_closed(socket_id, now=now, code=None, reason=reason)
                self._translate(now)
        except Exception as exc:
            self._contain(exc, "a socket failure", now)

    def receive_data(
        self, socket_id: int, data: bytes | None, *, now: float, wall_time_ms: int
    ) -> None:
        """Bytes read from the socket (``None`` at EOF)."""
        try:
            self._translate(now)
            sock = self._sockets.get(socket_id)
            if sock is None or sock.ws is None:
                return
            ws = sock.ws
            for event in ws.receive_data(data):
                if sock.attached:
                    self._feed(socket_id, sock, event, now, wall_time_ms)
            self._flush(socket_id, ws)
            self._settle(socket_id, sock, now)
        except Exception as exc:
            self._contain(exc, "bytes from the broker", now)

    def handle_timer(self, now: float) -> None:
        """Run what is due: closing sockets that waited long enough, then the core."""
        try:
            self._translate(now)
            for socket_id, sock in list(self._sockets.items()):
                if sock.close_deadline is not None and now >= sock.close_deadline:
                    del self._sockets[socket_id]
                    self._commands.append(CloseSocket(socket_id))
            self._core.handle_timer(now)
            self._translate(now)
        except Exception as exc:
            self._contain(exc, "a timer", now)

    def report_internal_error(self, error: BaseException, *, during: str, now: float) -> None:
        """An adapter hit an unexpected exception: drop the current transport, reconnect.

        The adapter has logged it. Raises only if the core cannot take the report.
        """
        self._core.report_internal_error(error, during=during, now=now)
        self._translate(now)

    def _contain(self, error: Exception, during: str, now: float) -> None:
        logger.exception("unexpected error while handling %s; dropping the connection", during)
        self.report_internal_error(error, during=during, now=now)

    # --- outputs -------------------------------------------------------------------

    def drain_commands(self, *, now: float) -> list[SocketCommand]:
        """What the adapter must do, in order (after translating the core's latest actions)."""
        self._translate(now)
        commands, self._commands = self._commands, []
        return commands

    def drain_events(self) -> list[Event]:
        """The core's events, in order."""
        return self._core.drain_events()

    def next_deadline(self) -> float | None:
        best = self._core.next_deadline()
        for sock in self._sockets.values():
            due = sock.close_deadline
            if due is not None and (best is None or due < best):
                best = due
        return best

    # --- internals -----------------------------------------------------------------

    def _feed(
        self, socket_id: int, sock: _Socket, event: WsEvent, now: float, wall_time_ms: int
    ) -> None:
        core = self._core
        if isinstance(event, TextReceived):
            core.receive_text(event.text, now=now)
        elif isinstance(event, PingReceived):
            core.receive_ping(now=now)
        elif isinstance(event, PongReceived):
            core.receive_pong(now=now)
        elif isinstance(event, Opened):
            core.transport_opened(socket_id, now=now, wall_time_ms=wall_time_ms)
        elif isinstance(event, BinaryReceived):
            core.receive_binary(event.data, now=now)
        elif isinstance(event, Closed):
            self._detach(socket_id)
            if event.by_peer:
                core.transport_closed(socket_id, now=now, code=event.code, reason=event.reason)
            else:
                core.transport_closed(
                    socket_id,
                    now=now,
                    code=None,
                    reason=f"closed by this side ({event.code} {event.reason})",
                )
        self._translate(now)

    def _translate(self, now: float) -> None:
        """Turn the core's pending actions into commands.

        Consecutive frames for the current socket leave as one write: the
        WebSocket buffers them, and they are flushed before anything else
        happens (another kind of action, or the end of the batch).
        """
        actions = self._core.drain_actions()
        if not actions:
            return
        pending: WsConnection | None = None  # holds frames not yet flushed
        for action in actions:
            if isinstance(action, WriteFrame):
                ws = pending if pending is not None else self._current_ws()
                if ws is not None and ws.send_text(action.text):
                    pending = ws
                continue
            if pending is not None:
                self._flush_current(pending)
                pending = None
            if isinstance(action, SendPing):
                ws = self._current_ws()
                if ws is not None and ws.send_ping(action.payload):
                    self._flush_current(ws)
            elif isinstance(action, OpenTransport):
                if self._current is not None:  # pragma: no cover - the core detaches first
                    self._close_current(1000, "superseded", now)
                self._current = action.transport_id
                self._sockets[action.transport_id] = _Socket()
                self._commands.append(OpenSocket(action.transport_id, self.address))
            elif isinstance(action, CloseTransport):
                self._close_current(action.code, action.reason, now)
        if pending is not None:
            self._flush_current(pending)

    def _current_ws(self) -> WsConnection | None:
        if self._current is None:
            return None
        sock = self._sockets.get(self._current)
        return sock.ws if sock is not None else None

    def _flush_current(self, ws: WsConnection) -> None:
        assert self._current is not None
        self._flush(self._current, ws)

    def _flush(self, socket_id: int, ws: WsConnection) -> None:
        data = ws.data_to_send()
        if data:
            self._commands.append(WriteBytes(socket_id, data))

    def _detach(self, socket_id: int) -> None:
        sock = self._sockets.get(socket_id)
        if sock is not None:
            sock.attached = False
        if self._current == socket_id:
            self._current = None

    def _close_current(self, code: int, reason: str, now: float) -> None:
        socket_id = self._current
        if socket_id is None:
            return
        self._detach(socket_id)
        sock = self._sockets[socket_id]
        if sock.ws is not None:
            try:
                sock.ws.close(code, reason)
                self._flush(socket_id, sock.ws)
            except Exception:  # a broken WebSocket: give the socket up at once
                logger.exception("closing socket %d failed; dropping it", socket_id)
                del self._sockets[socket_id]
                self._commands.append(CloseSocket(socket_id))
                return
        self._settle(socket_id, sock, now)

    def _settle(self, socket_id: int, sock: _Socket, now: float) -> None:
        """Close a detached socket once its WebSocket is done, or arm its close deadline."""
        if sock.attached or socket_id not in self._sockets:
            return
        if sock.ws is None or sock.ws.state is WsState.CLOSED:
            del self._sockets[socket_id]
            self._commands.append(CloseSocket(socket_id))
        elif sock.close_deadline is None:
            sock.close_deadline = now + self.close_timeout


def _printable_cwd() -> str:
    """This process's working directory, as valid Unicode for the hello.

    A path with bytes that are not UTF-8 comes back from the OS with lone
    surrogates; they are shown as U+FFFD instead (the hello only reports it).
    """
    cwd = os.getcwd()
    if is_unicode_text(cwd):
        return cwd
    return cwd.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def client_driver(
    url: str,
    *,
    mesh_id: str,
    member_id: str,
    signer: Signer,
    session_id: str | None = None,
    display_name: str | None = None,
    groups: Sequence[Group] | None = None,
    hostname: str | None = None,
    peer_type: str | None = None,
    session_pubkey: str | None = None,
    session_signer: Signer | None = None,
    role: str | None = None,
    sealer: Sealer | None = None,
    options: ClientOptions | None = None,
    rng: random.Random | None = None,
    max_message_bytes: int | None = None,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    record: RecordSetting = None,
) -> ClientDriver:
    """The driver behind an adapter's ``connect()``, from ``connect()``'s parameters.

    ``rng`` defaults to a :class:`~meshproto_ws.PooledSystemRandom`; ``session_id`` to 64
    bits drawn from ``rng``; ``sealer`` to :class:`~meshproto.PlaintextSealer`.
    The hello reports this process's ``pid`` and ``cwd``. ``record`` records
    the connection's inputs to a file for ``python -m meshproto.replay``
    (see :mod:`meshproto_ws._record`: a path, a
    :class:`~meshproto_ws.Recording`, ``False``; by default, only if
    ``MESHPROTO_RECORD`` names a file). Raises
    :class:`~meshproto.LocalProtocolError` at once for a URL that is not
    ``ws://`` or ``wss://``.
    """
    rng = rng if rng is not None else PooledSystemRandom()
    config = ClientConfig(
        url=url,
        mesh_id=mesh_id,
        member_id=member_id,
        signer=signer,
        session_id=session_id if session_id is not None else f"{rng.getrandbits(64):016x}",
        pid=os.getpid(),
        cwd=_printable_cwd(),
        display_name=display_name,
        hostname=hostname,
        peer_type=peer_type,
        groups=tuple(groups) if groups is not None else None,
        session_pubkey=session_pubkey,
        sealer=sealer if sealer is not None else PlaintextSealer(),
        session_signer=session_signer,
        role=role,
    )
    recording = recording_for(record)
    if recording is None:
        core = ClientConnection(config, rng=rng, options=options)
    else:
        from meshproto.replay import RecordingConnection  # noqa: PLC0415 (only when recording)

        core = RecordingConnection(
            config,
            rng=rng,
            options=options,
            sink=RecordFile(recording.path),
            bodies=recording.bodies,
        )
    return ClientDriver(core, max_message_bytes=max_message_bytes, close_timeout=close_timeout)
