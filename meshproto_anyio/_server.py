"""The reference broker on anyio: :func:`serve_broker` and :func:`running_broker`.

The :class:`~meshproto.Broker` decides; :class:`~meshproto_ws.BrokerDriver`
turns its outputs into socket commands and socket bytes into its inputs.
This module listens, accepts, does TLS, and carries the commands out:

* every accepted socket gets a link and a driver socket id, which is also
  the broker's ``conn_id``. On asyncio the link is a
  :class:`~meshproto_anyio._protocol_link.ProtocolLink`: sockets are
  accepted with asyncio's protocol API, and a socket has no task of its
  own. On trio it is a :class:`~meshproto_anyio._link.SocketLink` (a reader
  task and a writer task over an anyio stream). Both keep one contract;
* after every input (bytes read, EOF, an I/O error, a timer) the driver's
  commands are carried out synchronously. One timer task sleeps until
  ``next_deadline()``, and is woken only when an input brings that deadline
  forward. The broker's clock is Unix wall-clock seconds (``time.time()``);
* writes never wait: each socket has its own bounded buffer, so a peer that
  stops reading delays nobody else. A socket whose buffer would exceed
  ``max_send_buffer`` is dropped, and the broker hears ``connection_closed``;
* with a store that commits in batches (a :class:`~meshproto.BatchedStore`,
  such as ``SqliteStore``), the commands pass through a
  :class:`~meshproto_ws.CommitGate`: whatever the broker produced after a
  change waits until a commit has made that change durable. One committer
  task commits whenever changes wait, once per turn of the event loop (it
  yields first, so every input that is ready joins the batch): inline when
  the store says a commit does not wait on the disk, else in a worker thread,
  so the loop goes on serving while the disk syncs, and every change made
  during one commit joins the next (group commit). A commit that fails is
  logged and tried again a moment later; the frames that wait for it stay
  held, so nothing is acknowledged that is not durable.

:func:`serve_broker` runs until cancelled (cancelling drops every socket);
:meth:`BrokerServer.aclose` closes gracefully (1001 to every client first).

A bug costs one socket, never the server: the driver contains what happens
inside the broker and the WebSocket glue (a 1011 close), and an unexpected
exception in this module while serving one socket is logged once, aborts
that socket and tells the driver; the listener, the timer and every other
socket go on.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
from anyio.abc import ByteStream, SocketAttribute, SocketStream, TaskGroup, TaskStatus
from anyio.streams.stapled import MultiListener
from anyio.streams.tls import TLSStream

from meshproto import BatchedStore, Broker, LocalProtocolError
from meshproto_ws import (
    TIMER_RETRY,
    BrokerDriver,
    CloseSocket,
    CommitGate,
    OpenSocket,
    SocketCommand,
    WriteBytes,
)

from ._link import SocketLink
from ._protocol_link import ProtocolLink, WriteTurn, on_asyncio

_Link = SocketLink | ProtocolLink

__all__ = ["BrokerAddress", "BrokerServer", "ServerOptions", "running_broker", "serve_broker"]

logger = logging.getLogger("meshproto.anyio.server")

#: The listen backlog on asyncio (the kernel caps it at net.core.somaxconn).
_BACKLOG = 65_535


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """Socket-level limits of the server (the broker's own are ``BrokerOptions``).

    ``max_message_bytes`` defaults to the broker's ``hard_frame_cap``.
    """

    max_message_bytes: int | None = None
    max_send_buffer: int = 4 * 1_048_576
    handshake_timeout: float = 10.0
    close_timeout: float = 2.0

    def __post_init__(self) -> None:
        if self.max_send_buffer < 1:
            raise LocalProtocolError(f"max_send_buffer must be positive: {self.max_send_buffer}")
        for name in ("handshake_timeout", "close_timeout"):
            value = getattr(self, name)
            if not value > 0:
                raise LocalProtocolError(f"{name} must be a positive number, got {value!r}")


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """Where a served broker listens."""

    host: str
    port: int
    secure: bool

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'wss' if self.secure else 'ws'}://{host}:{self.port}/ws"


class BrokerServer:
    """A running broker server: its address, its broker, and a few controls."""

    def __init__(
        self,
        broker: Broker,
        address: BrokerAddress,
        options: ServerOptions,
        ssl_context: ssl.SSLContext | None,
        tasks: TaskGroup,
    ) -> None:
        self.broker = broker
        self.address = address
        self.options = options
        self._ssl_context = ssl_context
        self._tasks = tasks
        cap = options.max_message_bytes
        self._driver = BrokerDriver(
            broker,
            max_message_bytes=cap if cap is not None else broker.options.hard_frame_cap,
            handshake_timeout=options.handshake_timeout,
            close_timeout=options.close_timeout,
        )
        self._links: dict[int, _Link] = {}
        self._stopped = False  # no more sockets: nothing would serve them (asyncio path)
        self._write_turn = WriteTurn()  # the turn its protocol links write in
        self._rearm = anyio.Event()
        self._armed = -math.inf  # the deadline the timer task sleeps until (inf: none)
        self._idle = anyio.Event()
        store = broker.store
        self._gate = CommitGate(store) if isinstance(store, BatchedStore) else None
        self._commit_wanted = anyio.Event()
        #: Sockets dropped because their send buffer would have overflowed.
        self.overflows = 0
        #: Commits made by the committer task, and the longest one (seconds).
        self.commits = 0
        self.longest_commit = 0.0

    @property
    def url(self) -> str:
        return self.address.url

    @property
    def port(self) -> int:
        return self.address.port

    @property
    def socket_count(self) -> int:
        """Sockets accepted and not yet closed."""
        return len(self._links)

    def abort_connections(self) -> int:
        """Drop every socket without a close frame, as a failing network would.

        The broker hears ``connection_closed`` for each. Returns how many.
        """
        now = time.time()
        links = list(self._links.values())
        for link in links:
            link.abort()
            self._driver.socket_failed(link.socket_id, now=now, reason="aborted")
        self._apply()
        return len(links)

    async def aclose(self) -> None:
        """Close every socket with 1001, wait (bounded) for them to go, stop serving."""
        with anyio.CancelScope(shield=True):
            self.broker.shutdown(now=time.time())
            self._apply()
            if self._gate is not None:
                with anyio.move_on_after(self.options.close_timeout + 1.0):
                    await self._commit_pending()
            with anyio.move_on_after(self.options.close_timeout + 1.0):
                while self._links:
                    self._idle = anyio.Event()
                    await self._idle.wait()
        self._tasks.cancel_scope.cancel()

    # --- running -------------------------------------------------------------------

    async def _handle(self, stream: ByteStream) -> None:
        if self._ssl_context is not None:
            try:
                with anyio.fail_after(self.options.handshake_timeout):
                    stream = await TLSStream.wrap(
                        stream,
                        server_side=True,
                        ssl_context=self._ssl_context,
                        standard_compatible=False,
                    )
            except (OSError, anyio.BrokenResourceError, anyio.EndOfStream) as exc:
                logger.debug("TLS handshake failed: %r", exc)
                await anyio.aclose_forcefully(stream)
                return
        try:
            socket_id = self._driver.socket_opened(now=time.time())
        except Exception:  # a bug: it costs this socket, never the listener's task group
            logger.exception("unexpected error while accepting a socket; dropping it")
            await anyio.aclose_forcefully(stream)
            return
        link = SocketLink(
            socket_id,
            stream,
            on_data=self._on_data,
            on_error=self._on_error,
            close_timeout=self.options.close_timeout,
            max_buffered=self.options.max_send_buffer,
        )
        self._links[socket_id] = link
        try:
            self._apply()
            await link.run()
        except Exception:
            logger.exception("unexpected error while serving socket %d; dropping it", socket_id)
            link.abort()
        finally:
            del self._links[socket_id]
            self._idle.set()
            # The link may have ended without telling the driver (cancelled).
            self._guarded(
                socket_id,
                lambda now: self._driver.socket_failed(socket_id, now=now, reason="socket ended"),
            )

    def _on_data(self, socket_id: int, data: bytes | None) -> None:
        self._guarded(socket_id, lambda now: self._driver.receive_data(socket_id, data, now=now))

    # --- the asyncio protocol path -------------------------------------------------

    def _make_protocol(self) -> ProtocolLink:
        return ProtocolLink(
            on_open=self._protocol_opened,
            on_data=self._on_data,
            on_error=self._on_error,
            on_gone=self._protocol_gone,
            close_timeout=self.options.close_timeout,
            max_buffered=self.options.max_send_buffer,
            tls=self._ssl_context is not None,
            turn=self._write_turn,
        )

    def _protocol_opened(self, link: ProtocolLink) -> int:
        if self._stopped:  # its TLS handshake ended after the server stopped
            link.abort()
            return 0
        socket_id = self._driver.socket_opened(now=time.time())
        link.socket_id = socket_id
        self._links[socket_id] = link
        self._guarded(socket_id, lambda now: None)
        return socket_id

    def _protocol_gone(self, socket_id: int) -> None:
        if self._links.pop(socket_id, None) is not None:
            self._idle.set()
        self._guarded(
            socket_id,
            lambda now: self._driver.socket_failed(socket_id, now=now, reason="socket ended"),
        )

    async def _serve_protocols(self, listener: MultiListener[SocketStream]) -> None:
        """Accept on ``listener``'s sockets with asyncio's protocol API until cancelled."""
        loop = asyncio.get_running_loop()
        sockets = [inner.extra(SocketAttribute.raw_socket) for inner in listener.listeners]
        tls = self._ssl_context
        servers = [
            await loop.create_server(
                self._make_protocol,
                sock=sock,
                ssl=tls,
                ssl_handshake_timeout=self.options.handshake_timeout if tls else None,
                backlog=_BACKLOG,
            )
            for sock in sockets
        ]
        try:
            await anyio.sleep_forever()
        finally:
            self._stopped = True  # a handshake under way still ends in connection_made
            for served in servers:
                served.close()
            now = time.time()
            for link in list(self._links.values()):  # cancelled: drop every socket
                link.abort()
                self._driver.socket_failed(link.socket_id, now=now, reason="server stopped")
            self._links.clear()

    def _on_error(self, socket_id: int, reason: str) -> None:
        self._guarded(
            socket_id, lambda now: self._driver.socket_failed(socket_id, now=now, reason=reason)
        )

    def _guarded(self, socket_id: int, step: Callable[[float], None]) -> None:
        """Feed one socket's input and carry out the commands; a bug costs that socket."""
        now = time.time()
        try:
            step(now)
            self._apply()
        except Exception:
            logger.exception("unexpected error while serving socket %d; dropping it", socket_id)
            link = self._links.get(socket_id)
            if link is not None:
                link.abort()
            try:
                self._driver.fail_socket(socket_id, now=now)
                self._apply()
            except Exception:
                logger.exception("could not drop socket %d cleanly", socket_id)

    def _apply(self) -> None:
        """Carry out the driver's commands until there are none, then re-arm the timer.

        With a batched store, the commands pass the commit gate first.
        """
        driver = self._driver
        gate = self._gate
        now = time.time()
        while commands := driver.drain_commands(now=now):
            if gate is not None:
                commands = gate.admit(commands)
            self._carry_out(commands, now)
        if gate is not None and gate.needs_commit:
            self._commit_wanted.set()
        deadline = driver.next_deadline()
        if deadline is not None and deadline < self._armed:
            self._rearm.set()  # sooner than the timer task sleeps

    def _carry_out(self, commands: list[SocketCommand], now: float) -> None:
        for command in commands:
            link = self._links.get(command.socket_id)
            if link is None:
                continue
            if isinstance(command, WriteBytes):
                if not link.write(command.data):
                    self._overflow(link, now)
            elif isinstance(command, CloseSocket):
                link.close()
            elif isinstance(command, OpenSocket):  # pragma: no cover - clients only
                raise AssertionError("a broker never opens sockets")

    async def _run_committer(self) -> None:
        """Commit whenever changes wait, in a worker thread; release what each commit covers."""
        while True:
            await self._commit_wanted.wait()
            self._commit_wanted = anyio.Event()
            try:
                await self._commit_pending()
            except Exception:  # a failing disk: the held frames wait, nothing is acked
                logger.exception("committing the store failed; trying again in %g s", TIMER_RETRY)
                await anyio.sleep(TIMER_RETRY)
                self._commit_wanted.set()

    async def _commit_pending(self) -> None:
        gate = self._gate
        assert gate is not None
        store = self.broker.store
        assert isinstance(store, BatchedStore)
        while gate.needs_commit:
            await anyio.sleep(0)  # let every input that is ready join this batch
            began = time.perf_counter()
            if store.commit_may_block:
                await anyio.to_thread.run_sync(store.commit)
            else:
                store.commit()
            self.commits += 1
            self.longest_commit = max(self.longest_commit, time.perf_counter() - began)
            now = time.time()
            self._carry_out(gate.release(), now)
            self._apply()  # what the driver produced meanwhile, through the gate

    def _overflow(self, link: _Link, now: float) -> None:
        if link.closing:
            return  # a write after the close began: nothing to overflow
        self.overflows += 1
        logger.info(
            "socket %d: send buffer over %d bytes, dropped",
            link.socket_id,
            self.options.max_send_buffer,
        )
        link.abort()
        self._driver.socket_failed(link.socket_id, now=now, reason="send buffer overflow")

    async def _run_timer(self) -> None:
        driver = self._driver
        while True:
            self._rearm = anyio.Event()
            deadline = driver.next_deadline()
            self._armed = math.inf if deadline is None else deadline
            if deadline is None:
                await self._rearm.wait()
                continue
            delay = deadline - time.time()
            if delay > 0:
                with anyio.move_on_after(delay):
                    await self._rearm.wait()
                if time.time() < deadline:
                    continue
            self._armed = -math.inf  # running: every input may wake it again
            try:
                driver.handle_timer(time.time())
                self._apply()
            except Exception:  # the driver contains the broker's; this is ours
                logger.exception("unexpected error in the server's timer; going on")
                await anyio.sleep(TIMER_RETRY)


async def serve_broker(
    broker: Broker,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    ssl_context: ssl.SSLContext | None = None,
    options: ServerOptions | None = None,
    task_status: TaskStatus[BrokerServer] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``broker`` on ``host:port`` (``ws://…/ws``, or ``wss://`` with ``ssl_context``).

    Reports the running :class:`BrokerServer` (whose ``port`` is the bound
    one, useful with ``port=0``) through ``task_status``, so::

        server = await task_group.start(serve_broker, broker)

    Runs until cancelled. An address that cannot be bound (a port in use)
    raises the :class:`OSError` itself, before anything is reported.
    """
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    await _serve_listener(broker, listener, host, ssl_context, options, task_status=task_status)


async def _serve_listener(
    broker: Broker,
    listener: MultiListener[SocketStream],
    host: str,
    ssl_context: ssl.SSLContext | None,
    options: ServerOptions | None,
    *,
    task_status: TaskStatus[BrokerServer] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``broker`` on a bound ``listener`` (see :func:`serve_broker`)."""
    options = options if options is not None else ServerOptions()
    bound = listener.extra(SocketAttribute.local_port)
    address = BrokerAddress(host, bound, ssl_context is not None)
    async with listener, anyio.create_task_group() as tasks:
        server = BrokerServer(broker, address, options, ssl_context, tasks)
        tasks.start_soon(server._run_timer)
        if server._gate is not None:
            tasks.start_soon(server._run_committer)
        task_status.started(server)
        logger.info("broker listening on %s", address.url)
        if on_asyncio():
            await server._serve_protocols(listener)
        else:
            await listener.serve(server._handle, task_group=tasks)


@asynccontextmanager
async def running_broker(
    broker: Broker,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    ssl_context: ssl.SSLContext | None = None,
    options: ServerOptions | None = None,
) -> AsyncIterator[BrokerServer]:
    """``async with running_broker(broker) as server:`` serves until the block ends,
    then closes gracefully (:meth:`BrokerServer.aclose`).

    An address that cannot be bound (a port in use) raises the
    :class:`OSError` itself on entry, not wrapped in an exception group.
    """
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    body_error: Exception | None = None
    # The listener is closed by the server, and here too should it never start.
    async with listener, anyio.create_task_group() as tasks:
        server: BrokerServer = await tasks.start(
            _serve_listener, broker, listener, host, ssl_context, options
        )
        try:
            yield server
        except Exception as exc:
            body_error = exc  # re-raised outside the task group, not as an exception group
        finally:
            await server.aclose()
            tasks.cancel_scope.cancel()
    if body_error is not None:
        raise body_error
