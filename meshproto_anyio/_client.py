"""The client on anyio (asyncio or trio): :class:`Client`, made by :func:`connect`.

The client core decides everything (when to connect, what to write, when to
ping, give up, reconnect); :class:`~meshproto_ws.ClientDriver` turns its
decisions into socket commands. This module only carries them out:

* a task per socket opens it and waits until it is gone. On asyncio the
  socket is a :class:`~meshproto_anyio._protocol_link.ProtocolLink`
  (``loop.create_connection``, then ``loop.start_tls`` for ``wss://``): a
  write goes straight into the transport, and bytes are fed to the driver
  in the callback that reads them, with no task hop either way. On trio it
  is ``anyio.connect_tcp`` (TLS for ``wss://``) owned as a
  :class:`~meshproto_anyio._link.SocketLink`, whose reader and writer tasks
  do the same. Either way bytes, EOF and errors go back to the driver;
* one timer task calls ``handle_timer`` at the driver's ``next_deadline()``,
  on anyio's clock (``anyio.current_time()``, read straight from the loop on
  asyncio); it is re-armed after every input, so every wait is bounded by
  the core's own timers;
* user calls go to the core, then the resulting commands are carried out
  and the resulting events delivered, all synchronously, so nothing
  interleaves with a half-applied input. On asyncio, only the first user
  call of a loop turn is carried out at once (so a lone send leaves without
  delay); the calls after it in the same turn, typically the sends of many
  tasks woken by one read of acks, are carried out together in one pass at
  the end of the turn. Any pass carries out everything pending, in the
  core's order, so this changes when frames leave, never which or in what
  order.

Events reach the application three ways: ``await send()`` and
``await list_peers()`` return (or raise) when their outcome arrives;
:meth:`Client.messages` and :meth:`Client.system_messages` iterate what was
pushed; an ``on_event`` hook sees every core event as it happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
import time
from collections.abc import AsyncIterator, Callable
from functools import partial

import anyio
from anyio.abc import ByteStream, TaskGroup

from meshproto import (
    Closed,
    ConnectionState,
    Counters,
    Event,
    LocalProtocolError,
    MessageReceived,
    Peer,
    SystemMessage,
    UnreadableMessage,
)
from meshproto_ws import (
    ClientDriver,
    CloseSocket,
    OpenSocket,
    Outcomes,
    Wake,
    WriteBytes,
    WsAddress,
)

from ._client_parts import (
    Arrivals,
    Outcome,
    Pulse,
    Signal,
    connect_error_text,
    new_signal,
    nothing_more,
)
from ._link import SocketLink
from ._protocol_link import ProtocolLink, WriteTurn, on_asyncio

__all__ = ["MAX_SEND_BUFFER", "SYSTEM_MESSAGE_LIMIT", "Client"]

logger = logging.getLogger("meshproto.anyio")


#: Not a socket id: the links have not been told which socket not to read.
_NOT_TOLD = -1
#: System messages kept for :meth:`Client.system_messages` (oldest dropped first).
SYSTEM_MESSAGE_LIMIT = 256
#: Bytes waiting to be written before the socket is given up on (a broker
#: that pushes but never reads would otherwise grow the client_acks forever).
#: The core's outbox already bounds sends: 100 of at most 64 KiB each.
MAX_SEND_BUFFER = 8 * 1_048_576

Message = MessageReceived | UnreadableMessage


class Client:
    """One mesh membership on anyio. Made by :func:`connect`; see the module docstring."""

    def __init__(
        self,
        driver: ClientDriver,
        *,
        ssl_context: ssl.SSLContext | None = None,
        on_event: Callable[[Event], None] | None = None,
        max_send_buffer: int = MAX_SEND_BUFFER,
    ) -> None:
        self._driver = driver
        self._max_send_buffer = max_send_buffer
        self._core = driver.connection
        self._ssl_context = ssl_context
        self._on_event = on_event
        self._tasks: TaskGroup | None = None
        self._links: dict[int, SocketLink | ProtocolLink] = {}
        self._write_turn = WriteTurn(self._end_turn)
        self._opening: dict[int, anyio.CancelScope] = {}
        self._outcomes = Outcomes(self._core, system_limit=SYSTEM_MESSAGE_LIMIT)
        self._rearm = anyio.Event()
        self._clock: Callable[[], float] = anyio.current_time
        # The deadline the timer task sleeps until: it is woken only for an earlier one.
        self._armed = math.inf
        # On asyncio, user calls after the first of a loop turn are carried out at its end.
        # (The turn is open while ``self._write_turn.deferred``.)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._owed = False
        # The socket the links were last told not to read (_NOT_TOLD: tell them again).
        self._paused_told: int | None = _NOT_TOLD
        self._messages_pulse = Pulse(self._new_signal)
        self._system_pulse = Pulse(self._new_signal)
        self._state_pulse = Pulse(self._new_signal)
        self._sockets_pulse = Pulse(self._new_signal)
        self._pulses = {
            Wake.MESSAGES: self._messages_pulse,
            Wake.SYSTEM: self._system_pulse,
            Wake.STATE: self._state_pulse,
        }

    # --- observation -------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        return self._core.state

    @property
    def counters(self) -> Counters:
        return self._core.counters

    @property
    def session_id(self) -> str:
        return self._core.config.session_id

    @property
    def public_key(self) -> str:
        """This member's public key (what other peers send direct messages to)."""
        return self._core.config.signer.public_key

    @property
    def closed(self) -> Closed | None:
        """Why the client stopped for good, or ``None`` while it is not closed."""
        return self._outcomes.closed

    async def wait_state(self, *states: ConnectionState) -> ConnectionState:
        """Wait until the state is one of ``states``; return it.

        Raises :class:`~meshproto.ConnectionClosedError` if the client closes
        first (unless ``CLOSED`` is one of ``states``). Bound it with
        ``anyio.fail_after``.
        """
        wanted = frozenset(states)
        while True:
            state = self._core.state
            if state in wanted:
                return state
            if state is ConnectionState.CLOSED:
                raise self._outcomes.closed_error()
            await self._state_pulse.wait()

    # --- user calls ----------------------------------------------------------------

    async def send(
        self,
        target: str,
        body: str | bytes,
        priority: str = "next",
        *,
        client_message_id: str | None = None,
    ) -> str:
        """Send ``body`` to ``target`` and wait for the broker's ack; return its ``messageId``.

        Sends made while offline wait in the core's bounded outbox. Raises
        :class:`~meshproto.SendError` (with a reason that says whether
        retrying can help) if the send fails, :class:`~meshproto.LocalProtocolError`
        for a bad target, priority or size, and
        :class:`~meshproto.ConnectionClosedError` once closed. Cancelling the
        wait does not withdraw the send.

        A :class:`~meshproto.SendOutcomeUnknownError` (a ``SendError``) means
        no answer settled the send: it may have been delivered. Retry it, if
        at all, with ``client_message_id=error.client_message_id``, which the
        receiver deduplicates on; a retry without it may deliver twice.
        """
        self._outcomes.check_open()
        now = self._clock()
        handle = self._core.send(
            target, body, priority, now=now, client_message_id=client_message_id
        )
        outcome: Outcome[str] = Outcome(self._loop)
        self._outcomes.expect_send(handle.id, outcome)
        self._carry_out(now)
        return await outcome.wait()

    async def set_status(self, status: str) -> None:
        """Set presence (``idle``, ``working``, ``dnd``); kept across reconnects."""
        self._outcomes.check_open()
        self._core.set_status(status, now=self._clock())
        self._carry_out()

    async def set_summary(self, summary: str) -> None:
        """Set the one-line summary other peers see; kept across reconnects."""
        self._outcomes.check_open()
        self._core.set_summary(summary, now=self._clock())
        self._carry_out()

    async def list_peers(self) -> tuple[Peer, ...]:
        """Ask the broker for the peers of the mesh.

        Raises :class:`~meshproto.RequestError` if the request fails or times out.
        """
        self._outcomes.check_open()
        request_id = self._core.list_peers(now=self._clock())
        outcome: Outcome[tuple[Peer, ...]] = Outcome(self._loop)
        self._outcomes.expect_peers(request_id, outcome)
        self._carry_out()
        return await outcome.wait()

    def messages(self, *, acknowledge: bool = True) -> AsyncIterator[Message]:
        """Messages pushed to this peer, in order, each once; ends when the client closes.

        Backed by the core's bounded inbox (``ClientOptions.inbox_limit``).
        Each message is acknowledged to the broker when this iterator hands it
        to you, never before. While nobody reads and the inbox is full, the
        client stops reading its socket, so the broker holds the rest back:
        nothing is dropped. Messages left in the inbox when the client closes
        are still handed over, but no longer acknowledged: the broker delivers
        its stored ones again to the next session.

        With ``acknowledge=False`` a message is acknowledged only once you
        have used it and pass it to :meth:`acknowledge`; one never acknowledged
        (the program failed first) is delivered again to the next session.
        Holding ``dedupe_window - inbox_limit`` unacknowledged stops the reading.
        """
        if self._core.options.inbox_limit == 0:
            raise LocalProtocolError("messages() needs an inbox: inbox_limit is 0")
        return Arrivals(
            partial(self._take_message, acknowledge), self._closed_now, self._messages_pulse
        )

    async def acknowledge(self, message: Message) -> None:
        """Acknowledge ``message``, from ``messages(acknowledge=False)``: the broker forgets it.

        Raises :class:`~meshproto.LocalProtocolError` for a message not handed
        over unacknowledged (acknowledged already, or another client's). Once
        the client is closed nothing is written: the next session gets it again.
        """
        self._core.acknowledge(message)
        self._carry_out()

    def system_messages(self) -> AsyncIterator[SystemMessage]:
        """System pushes (``peer_joined``, ``peer_left`` …); ends when the client closes.

        The last :data:`SYSTEM_MESSAGE_LIMIT` are kept while nobody reads.
        """
        return Arrivals(self._outcomes.take_system, self._closed_now, self._system_pulse)

    async def aclose(self) -> None:
        """Close for good: say goodbye to the broker and close the socket (bounded).

        Pending sends and requests fail with reason ``closed``; later calls
        raise :class:`~meshproto.ConnectionClosedError`. Idempotent.
        """
        with anyio.CancelScope(shield=True):
            if self._core.state is not ConnectionState.CLOSED:
                self._core.close(now=self._clock())
                self._apply()
            with anyio.move_on_after(self._driver.close_timeout + 1.0):
                while self._links or self._opening:
                    await self._sockets_pulse.wait()

    # --- running -------------------------------------------------------------------

    def _start(self, tasks: TaskGroup) -> None:
        self._tasks = tasks
        tasks.start_soon(self._run_timer)
        if on_asyncio():  # the same clock, without asking which loop runs each time
            self._loop = asyncio.get_running_loop()
            self._clock = self._loop.time
        self._driver.start(self._clock())
        self._apply()

    async def _run_timer(self) -> None:
        while True:
            self._rearm = anyio.Event()
            deadline = self._driver.next_deadline()
            self._armed = math.inf if deadline is None else deadline
            with anyio.CancelScope(deadline=self._armed):
                await self._rearm.wait()
            if deadline is not None:
                now = self._clock()
                if now >= deadline:
                    self._guarded("a timer", self._driver.handle_timer, now)

    def _guarded(self, during: str, step: Callable[[float], None], now: float) -> None:
        """Run one input and carry out its commands; a bug costs the transport, not the client.

        An unexpected exception is logged once and reported to the driver,
        which drops the current transport and reconnects. If even that
        fails, the client is closed for good rather than left half-working.
        """
        try:
            step(now)
            self._apply(now)
        except Exception as exc:
            logger.exception("unexpected error while handling %s; dropping the connection", during)
            try:
                self._driver.report_internal_error(exc, during=during, now=now)
                self._apply(now)
            except Exception:
                logger.exception("could not recover from that error; closing the client")
                self._close_after_failure(now)

    def _close_after_failure(self, now: float) -> None:
        for link in self._links.values():
            link.abort()
        for scope in self._opening.values():
            scope.cancel()
        if self._core.state is not ConnectionState.CLOSED:
            with contextlib.suppress(Exception):
                self._core.close(now=now)
        for event in self._core.drain_events():
            with contextlib.suppress(Exception):
                self._deliver(event)
        self._core.drain_actions()
        self._rearm.set()

    def _take_message(self, acknowledge: bool) -> Message | None:
        taken = self._core.take_messages(1, acknowledge=acknowledge)
        if not taken:
            return None
        self._carry_out()  # the client_ack, and reading again if it was paused
        return taken[0]

    def _closed_now(self) -> bool:
        return self._core.state is ConnectionState.CLOSED

    def _add_link(self, socket_id: int, link: SocketLink | ProtocolLink) -> None:
        self._links[socket_id] = link
        self._paused_told = _NOT_TOLD  # the new link hears whether to read

    def _new_signal(self) -> Signal:
        return new_signal(self._loop)

    def _carry_out(self, now: float | None = None) -> None:
        """Carry out a user call: at once if it is the first of this loop turn (or on trio),
        otherwise in one pass at the end of the turn (see the module docstring)."""
        if self._write_turn.deferred:
            self._owed = True
            return
        self._apply(now)
        if self._loop is not None:
            self._write_turn.defer()  # one callback ends the turn, the links' writes too

    def _end_turn(self) -> None:
        if self._owed:
            self._guarded("the calls of a loop turn", nothing_more, self._clock())

    def _apply(self, now: float | None = None) -> None:
        """Carry out the driver's commands until there are none, then deliver the events.

        ``now`` is the time the caller just read, if it has one (the clock is
        read once per input, not once per step). Whatever a user call left
        owed (:meth:`_carry_out`) is carried out with the rest.
        """
        self._owed = False
        driver = self._driver
        if now is None:
            now = self._clock()
        commands = driver.drain_commands(now=now)
        while commands:
            failed = False  # only a failed socket can make more commands here
            for command in commands:
                if isinstance(command, WriteBytes):
                    link = self._links.get(command.socket_id)
                    if link is not None and not link.write(command.data) and not link.closing:
                        link.abort()
                        driver.socket_failed(
                            command.socket_id, now=now, reason="send buffer overflow"
                        )
                        failed = True
                elif isinstance(command, OpenSocket):
                    assert self._tasks is not None
                    self._opening[command.socket_id] = anyio.CancelScope()
                    self._tasks.start_soon(self._run_socket, command.socket_id, command.address)
                elif isinstance(command, CloseSocket):
                    link = self._links.get(command.socket_id)
                    if link is not None:
                        link.close()
                    scope = self._opening.get(command.socket_id)
                    if scope is not None:
                        scope.cancel()
            commands = driver.drain_commands(now=now) if failed else []
        for event in driver.drain_events():
            self._deliver(event)
        paused = driver.paused_socket
        if paused != self._paused_told:  # links are told only when it changes
            self._paused_told = paused
            for socket_id, link in self._links.items():
                if socket_id == paused:
                    link.pause_reading()
                else:
                    link.resume_reading()
        # Wake the timer only if it sleeps past the next deadline; waking late
        # for one that moved later is harmless (nothing is due yet, it re-arms).
        due = driver.next_deadline()
        if due is not None and due < self._armed:
            self._rearm.set()

    async def _run_socket(self, socket_id: int, address: WsAddress) -> None:
        scope = self._opening.get(socket_id)
        if scope is None:  # pragma: no cover - abandoned before this task ran
            return
        if on_asyncio():
            await self._run_protocol_socket(socket_id, address, scope)
            return
        stream: ByteStream | None = None
        try:
            with scope:
                stream = await self._open_stream(address)
        except (OSError, ValueError) as exc:  # refusals, ssl.SSLError; idna's UnicodeError
            self._connect_failed(socket_id, address, exc)
            return
        except (anyio.BrokenResourceError, anyio.EndOfStream) as exc:
            self._connect_failed(socket_id, address, exc)
            return
        finally:
            self._opening.pop(socket_id, None)
            self._sockets_pulse.fire()
        if stream is None:
            return  # abandoned while opening
        if scope.cancel_called:  # abandoned just as it opened
            await anyio.aclose_forcefully(stream)
            return
        link = SocketLink(
            socket_id,
            stream,
            on_data=self._on_data,
            on_error=self._socket_failed,
            close_timeout=self._driver.close_timeout,
            max_buffered=self._max_send_buffer,
        )
        self._add_link(socket_id, link)
        try:
            self._guarded(
                "an opened socket",
                lambda now: self._driver.socket_opened(socket_id, now=now),
                self._clock(),
            )
            await link.run()
        except Exception as exc:  # a bug in this task: it costs this socket only
            logger.exception("unexpected error on socket %d; dropping it", socket_id)
            link.abort()
            reason = f"internal error: {exc!r}"
            self._guarded(
                "a failed socket",
                lambda now: self._driver.socket_failed(socket_id, now=now, reason=reason),
                self._clock(),
            )
        finally:
            del self._links[socket_id]
            self._sockets_pulse.fire()

    async def _run_protocol_socket(
        self, socket_id: int, address: WsAddress, scope: anyio.CancelScope
    ) -> None:
        """A socket on asyncio's protocol API: opened, then waited on until gone.

        For ``wss://`` the TCP connection is made first and TLS started on it
        (``loop.start_tls``), so that a failed connect and a failed TLS
        handshake are told apart, as anyio's TLS stream tells them.
        """
        gone = anyio.Event()
        link = ProtocolLink(
            on_open=lambda link: self._protocol_opened(socket_id, link, scope),
            on_data=self._on_data,
            on_error=self._socket_failed,
            on_gone=lambda _socket_id: gone.set(),
            close_timeout=self._driver.close_timeout,
            max_buffered=self._max_send_buffer,
            tls=address.secure,
            turn=self._write_turn,
            tls_after_connect=address.secure,
        )
        loop = asyncio.get_running_loop()
        stage = "connect"
        try:
            with scope:
                transport, _ = await loop.create_connection(
                    lambda: link, address.host, address.port
                )
                if address.secure:
                    stage = "tls"
                    try:
                        if transport.is_closing():  # it hung up, or spoke first: not TLS
                            raise ConnectionResetError(
                                "the server closed the connection before the TLS handshake"
                            )
                        secured = await loop.start_tls(
                            transport, link, self._tls_context(), server_hostname=address.host
                        )
                    except BaseException:
                        link.abort()  # the plain connection TLS never came up on
                        raise
                    if secured is None:  # pragma: no cover - closed while starting
                        raise ConnectionResetError("the connection closed during the TLS handshake")
                    link.upgraded(secured)
        except ssl.SSLError as exc:  # a certificate refused, a protocol mismatch: as anyio says
            self._connect_failed(socket_id, address, exc)
            return
        except OSError as exc:  # a refusal; or the server hung up during the TLS handshake
            self._connect_failed(socket_id, address, exc, during_tls=stage == "tls")
            return
        except ValueError as exc:  # the resolver refused the name (idna's UnicodeError)
            self._connect_failed(socket_id, address, exc)
            return
        finally:
            self._opening.pop(socket_id, None)
            self._sockets_pulse.fire()
        if scope.cancel_called:  # abandoned while opening
            link.abort()
            self._links.pop(socket_id, None)
            return
        try:
            await gone.wait()
        finally:
            link.abort()  # cancelled (the client is closing): the socket goes now
            if self._links.pop(socket_id, None) is not None:
                self._sockets_pulse.fire()

    def _protocol_opened(self, socket_id: int, link: ProtocolLink, scope: anyio.CancelScope) -> int:
        """Connected: the driver hears of it before any byte can be read."""
        if scope.cancel_called:  # abandoned just as it opened
            link.abort()
        else:
            self._add_link(socket_id, link)
            self._guarded(
                "an opened socket",
                lambda now: self._driver.socket_opened(socket_id, now=now),
                self._clock(),
            )
        return socket_id

    def _connect_failed(
        self, socket_id: int, address: WsAddress, exc: Exception, *, during_tls: bool = False
    ) -> None:
        if isinstance(exc, OSError) and not during_tls:  # a refusal, a bad name, a certificate
            why = f"could not connect to {address.url}: {connect_error_text(exc)}"
        elif isinstance(exc, ValueError):  # a name the resolver would not take
            why = f"could not connect to {address.url}: {exc}"
        else:  # the TLS handshake broke, or the server hung up during it
            cause = f"{exc!r} ({exc.__cause__!r})" if exc.__cause__ else repr(exc)
            why = f"TLS handshake with {address.url} failed: {cause}"
        self._socket_failed(socket_id, why)

    def _tls_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    async def _open_stream(self, address: WsAddress) -> ByteStream:
        if not address.secure:
            return await anyio.connect_tcp(address.host, address.port)
        return await anyio.connect_tcp(
            address.host,
            address.port,
            ssl_context=self._tls_context(),
            tls_hostname=address.host,
            tls_standard_compatible=False,
        )

    def _on_data(self, socket_id: int, data: bytes | None) -> None:
        wall_time_ms = time.time_ns() // 1_000_000
        self._guarded(
            "bytes from the broker",
            lambda now: self._driver.receive_data(
                socket_id, data, now=now, wall_time_ms=wall_time_ms
            ),
            self._clock(),
        )

    def _socket_failed(self, socket_id: int, reason: str) -> None:
        self._guarded(
            "a failed socket",
            lambda now: self._driver.socket_failed(socket_id, now=now, reason=reason),
            self._clock(),
        )

    def _deliver(self, event: Event) -> None:
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:  # the application's bug: logged, the client goes on
                logger.exception("the on_event hook raised on %s", type(event).__name__)
        for wake in self._outcomes.note(event):
            self._pulses[wake].fire()
        self._outcomes.settle()
