"""The I/O thread: one background thread that owns the sockets and drives the core.

Theory of operation
===================

The client core (:class:`~meshproto.ClientConnection`) decides everything;
:class:`~meshproto_ws.ClientDriver` turns its decisions into socket commands
and socket bytes into core inputs. :class:`IoThread` carries the commands
out with :mod:`selectors` and non-blocking sockets (:class:`SocketLink`),
so that pings are answered, liveness is kept and reconnects happen while the
application's threads are busy elsewhere, asleep, or blocked in a call.

Threads and the lock:

* one lock (the client's) guards the driver, the core and everything the
  client keeps about them. Application threads take it for a core call
  (``send``, ``set_status``, ``close`` …) and then :meth:`IoThread.wake` the
  I/O thread; they never touch a socket and never drain the driver;
* the I/O thread takes the lock for every input it feeds (bytes read, EOF,
  a socket error, a timer, the wake-up) and, in the same critical section,
  carries out the driver's commands and hands the core's events to
  ``deliver`` (the client's, which notifies its conditions). It releases
  the lock only around ``select()`` and around ``settle``, where the client
  resolves futures and runs the user's hook (so neither can deadlock
  against the lock);
* the wake-up is a socket pair: :meth:`wake` writes one byte unless a
  wake-up is already pending, and the read end is in the selector, so a
  call from any thread ends the I/O thread's ``select()`` at once.

One turn of the loop (lock held except where said):

1. run the driver's timer if ``next_deadline()`` (``time.monotonic()``)
   has passed, abandon closing sockets whose flush took too long;
2. carry out the commands (``OpenSocket`` → a new link that resolves the
   host and starts a non-blocking connect; ``WriteBytes`` → the link's
   bounded buffer, flushed at once as far as the socket takes it;
   ``CloseSocket`` → flush, then close), deliver the events;
3. stop if the core is ``CLOSED`` and no socket is left (or the close has
   taken longer than ``close_timeout`` + :data:`CLOSE_GRACE`: the rest are
   aborted);
4. sync each link's selector registration, release the lock, settle, and
   ``select()`` until the earliest of the driver's deadline and the links'
   close deadlines (at once if a link has data left over from its read budget);
5. take the lock, feed each ready link's results (opened, bytes, EOF,
   failure) to the driver, carrying out the commands after each.

Connecting is non-blocking end to end (TCP, then the TLS handshake with
``server_hostname``), so the thread keeps serving the old socket's close
and the timers while a new one opens; the core's connect timeout bounds it
(it closes the transport, which abandons the link). Name resolution is the
one blocking step (see :mod:`meshproto_sync._link`).

Back-pressure: after every input the link of the driver's
:attr:`~meshproto_ws.ClientDriver.paused_socket` is marked ``paused`` and
leaves the selector's read set until the application takes messages (each
read hands the driver one chunk, so the core sees it before the next).

Faults: an unexpected exception while feeding one input (a bug) is logged
once and reported to the driver, which drops that transport with 1011 and
reconnects; the thread goes on. Only if that fails too, or the loop itself
keeps failing (:data:`MAX_FAILED_TURNS` turns in a row), does the thread
close the core (every pending send and request fails with ``closed``), abort
the sockets and end, so that no caller waits forever; :attr:`IoThread.error`
keeps the exception.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable

from meshproto import ConnectionState, Event
from meshproto_ws import ClientDriver, CloseSocket, OpenSocket, WriteBytes

from ._link import LinkData, LinkFailed, LinkOpened, LinkResult, SocketLink

__all__ = ["CLOSE_GRACE", "MAX_FAILED_TURNS", "MAX_SEND_BUFFER", "IoThread"]

logger = logging.getLogger("meshproto.sync")

#: Bytes waiting to be written before a socket is given up on (as in the
#: anyio adapter: a broker that pushes but never reads would grow the
#: client_acks forever; the core's outbox already bounds the sends).
MAX_SEND_BUFFER = 8 * 1_048_576
#: How long past ``close_timeout`` a closing client may take before its
#: remaining sockets are aborted and the thread ends.
CLOSE_GRACE = 0.5
#: Turns of the loop that may fail in a row before the thread gives up.
MAX_FAILED_TURNS = 8


class IoThread:
    """Owns the selector, the wake-up pair and the sockets of one client."""

    def __init__(
        self,
        driver: ClientDriver,
        lock: threading.Lock,
        *,
        deliver: Callable[[Event], None],
        settle: Callable[[], None],
        ssl_context: ssl.SSLContext | None = None,
        max_send_buffer: int = MAX_SEND_BUFFER,
    ) -> None:
        self._driver = driver
        self._core = driver.connection
        self._lock = lock
        self._deliver = deliver
        self._settle = settle
        self._ssl_context = ssl_context
        self._max_send_buffer = max_send_buffer
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._wake_pending = False
        self._links: dict[int, SocketLink] = {}
        self._stop_by: float | None = None
        #: What made the loop fail, if it did (a bug: reported as the close reason).
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="meshproto-sync-io", daemon=True)

    # --- for the client (any thread) --------------------------------------------------

    def start(self) -> None:
        self.thread.start()

    def wake(self) -> None:
        """End the I/O thread's current ``select()``. Call with the lock held."""
        if self._wake_pending:
            return
        self._wake_pending = True
        # OSError: full (a wake-up is pending anyway) or closed (thread gone).
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    @property
    def in_io_thread(self) -> bool:
        return threading.current_thread() is self.thread

    # --- the thread -----------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # a bug: close, so that nobody waits forever
            logger.exception("meshproto_sync I/O thread failed")
            self.error = exc
            with self._lock:
                if self._core.state is not ConnectionState.CLOSED:
                    self._core.close(now=time.monotonic())
                for event in self._driver.drain_events():
                    self._deliver(event)
        finally:
            with self._lock:
                for link in self._links.values():
                    link.abort()
                self._links.clear()
                self._selector.close()
                self._wake_r.close()
                self._wake_w.close()
            self._settle()

    def _loop(self) -> None:
        lock = self._lock
        driver = self._driver
        with lock:
            driver.start(time.monotonic())
            try:
                self._apply()  # the first socket opens here
            except Exception as exc:
                self._contain(exc, "the first connect")
        failed_turns = 0
        while True:
            try:
                with lock:
                    now = time.monotonic()
                    deadline = driver.next_deadline()
                    if deadline is not None and now >= deadline:
                        driver.handle_timer(now)
                    self._expire_closing(now)
                    self._apply()
                    if self._finished(now):
                        return
                    timeout = self._timeout(now)
                    for link in self._links.values():
                        link.sync_interest()
                self._settle()
                ready = self._selector.select(timeout)
                with lock:
                    self._on_ready(ready)
                failed_turns = 0
            except Exception as exc:
                failed_turns += 1
                if failed_turns >= MAX_FAILED_TURNS:
                    raise
                with lock:
                    self._contain(exc, "a turn of the I/O loop")

    def _on_ready(self, ready: list[tuple[selectors.SelectorKey, int]]) -> None:
        handled: set[int] = set()
        for key, events in ready:
            link = key.data
            if link is None:
                self._drain_wakeups()
            elif isinstance(link, SocketLink):
                handled.add(link.socket_id)
                self._feed(link, link.handle(events))
        for link in list(self._links.values()):
            if link.read_again and link.socket_id not in handled:
                self._feed(link, link.handle(0))

    def _drain_wakeups(self) -> None:
        self._wake_pending = False
        with contextlib.suppress(OSError):  # BlockingIOError: drained
            while self._wake_r.recv(4096):
                pass

    def _feed(self, link: SocketLink, results: list[LinkResult]) -> None:
        """Hand a link's results to the driver, carrying out the commands after each."""
        driver = self._driver
        socket_id = link.socket_id
        for result in results:
            if self._links.get(socket_id) is not link:
                return  # the driver let go of it: nothing more is fed back
            now = time.monotonic()
            try:
                if isinstance(result, LinkData):
                    driver.receive_data(
                        socket_id, result.data, now=now, wall_time_ms=time.time_ns() // 1_000_000
                    )
                elif isinstance(result, LinkOpened):
                    driver.socket_opened(socket_id, now=now)
                elif isinstance(result, LinkFailed):
                    del self._links[socket_id]
                    logger.debug("socket %d: %s", socket_id, result.reason)
                    driver.socket_failed(socket_id, now=now, reason=result.reason)
                self._apply()
            except Exception as exc:
                self._contain(exc, f"input from socket {socket_id}")

    def _contain(self, error: Exception, during: str) -> None:
        """A bug while handling ``during``: log it once, drop the transport, go on.

        Raises (and so ends the thread) only if the driver cannot take the report.
        """
        logger.exception("unexpected error while handling %s; dropping the connection", during)
        self._driver.report_internal_error(error, during=during, now=time.monotonic())
        self._apply()

    def _apply(self) -> None:
        """Carry out the driver's commands until there are none, then deliver the events.

        Written bytes are flushed at once, as far as each socket takes them;
        a socket that breaks on the way is reported, which may make more
        commands, so the loop runs until nothing is left to do.
        """
        driver = self._driver
        now = time.monotonic()
        links = self._links
        while True:
            commands = driver.drain_commands(now=now)
            for command in commands:
                if isinstance(command, WriteBytes):
                    link = links.get(command.socket_id)
                    if link is not None and not link.write(command.data) and not link.closing:
                        self._drop(link, now, "send buffer overflow")
                elif isinstance(command, OpenSocket):
                    self._open(command, now)
                elif isinstance(command, CloseSocket):
                    link = links.get(command.socket_id)
                    if link is not None:
                        link.close(now)
            broke = False
            for link in list(links.values()):
                if link.buffered:
                    failed = link.flush()
                    if failed is not None:
                        broke = True
                        del links[link.socket_id]
                        driver.socket_failed(link.socket_id, now=now, reason=failed.reason)
                if link.done:
                    links.pop(link.socket_id, None)
            if not commands and not broke:
                break
        for event in driver.drain_events():
            self._deliver(event)
        paused = driver.paused_socket
        for link in links.values():
            link.paused = link.socket_id == paused

    def _open(self, command: OpenSocket, now: float) -> None:
        link = SocketLink(
            command.socket_id,
            command.address,
            self._selector,
            ssl_context=self._ssl_context,
            max_buffered=self._max_send_buffer,
            close_timeout=self._driver.close_timeout,
        )
        failed = link.begin()
        if failed is not None:
            self._driver.socket_failed(command.socket_id, now=now, reason=failed.reason)
            return
        self._links[command.socket_id] = link

    def _drop(self, link: SocketLink, now: float, reason: str) -> None:
        link.abort()
        self._links.pop(link.socket_id, None)
        self._driver.socket_failed(link.socket_id, now=now, reason=reason)

    def _expire_closing(self, now: float) -> None:
        for socket_id, link in list(self._links.items()):
            due = link.close_deadline
            if due is not None and now >= due:
                link.abort()
                del self._links[socket_id]

    def _finished(self, now: float) -> bool:
        if self._core.state is not ConnectionState.CLOSED:
            return False
        if self._stop_by is None:
            self._stop_by = now + self._driver.close_timeout + CLOSE_GRACE
        if not self._links and self._driver.open_sockets == 0:
            return True
        if now >= self._stop_by:
            logger.debug("closing took too long: aborting %d sockets", len(self._links))
            return True
        return False

    def _timeout(self, now: float) -> float | None:
        if any(link.read_again and not link.paused for link in self._links.values()):
            return 0.0
        best = self._driver.next_deadline()
        for link in self._links.values():
            due = link.close_deadline
            if due is not None and (best is None or due < best):
                best = due
        if self._stop_by is not None and (best is None or self._stop_by < best):
            best = self._stop_by
        return None if best is None else max(0.0, best - now)
