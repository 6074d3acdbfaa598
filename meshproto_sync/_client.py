"""The blocking client: :func:`connect` and :class:`Client`.

The twin of :mod:`meshproto_anyio`'s client, for scripts and threads. The
core decides, :class:`~meshproto_ws.ClientDriver` translates, and one
background I/O thread (:mod:`meshproto_sync._io`) does the socket work,
so the connection stays alive (pings answered, liveness kept, reconnects
made) whatever the application's threads are doing.

Every method may be called from any thread. A call takes the client's lock,
hands the call to the core, wakes the I/O thread and, if it blocks, waits
on a condition (or a :class:`concurrent.futures.Future`) that the I/O
thread fulfils when the outcome arrives. Every blocking call takes a
``timeout`` (seconds, ``None`` for no limit) and raises the builtin
:class:`TimeoutError` when it passes; a Ctrl-C in the main thread raises
:class:`KeyboardInterrupt` within :data:`~meshproto_sync._wait.MAIN_THREAD_SLICE`
seconds and leaves the client usable and closable.

A send whose wait times out (or is interrupted) is **not** withdrawn: it
stays pending in the core and resolves later (acked, or failed with a
reason, at the latest by the core's ack timeout once written, or with
``closed`` at :meth:`Client.close`); only the caller stopped waiting. The
same holds for :meth:`Client.list_peers`. :meth:`Client.send_nowait` is the
same send without the wait: it returns the future at once.
"""

from __future__ import annotations

import logging
import random
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from types import TracebackType
from typing import TypeVar

from meshproto import (
    ClientOptions,
    Closed,
    ConnectionClosedError,
    ConnectionState,
    Counters,
    Event,
    Group,
    LocalProtocolError,
    MessageReceived,
    Peer,
    Sealer,
    Signer,
    SystemMessage,
    UnreadableMessage,
)
from meshproto_ws import (
    DEFAULT_CLOSE_TIMEOUT,
    ClientDriver,
    Outcomes,
    RecordSetting,
    Wake,
    client_driver,
)

from ._io import CLOSE_GRACE, MAX_SEND_BUFFER, IoThread
from ._wait import Deadline

__all__ = ["SYSTEM_MESSAGE_LIMIT", "Client", "Message", "connect"]

logger = logging.getLogger("meshproto.sync")

T = TypeVar("T")

#: System messages kept for :meth:`Client.receive_system` (oldest dropped first).
SYSTEM_MESSAGE_LIMIT = 256

#: What :meth:`Client.receive` returns.
Message = MessageReceived | UnreadableMessage


class Client:
    """One mesh membership over a blocking socket. Made by :func:`connect`.

    A context manager: leaving the ``with`` block closes it.
    """

    def __init__(
        self,
        driver: ClientDriver,
        *,
        ssl_context: ssl.SSLContext | None = None,
        on_event: Callable[[Event], None] | None = None,
        max_send_buffer: int = MAX_SEND_BUFFER,
    ) -> None:
        self._driver = driver
        self._core = driver.connection
        self._on_event = on_event
        self._lock = threading.Lock()
        self._messages_cv = threading.Condition(self._lock)
        self._system_cv = threading.Condition(self._lock)
        self._state_cv = threading.Condition(self._lock)
        self._conditions = {
            Wake.MESSAGES: self._messages_cv,
            Wake.SYSTEM: self._system_cv,
            Wake.STATE: self._state_cv,
        }
        # Outcomes are noted by _deliver (lock held) and settled by _settle
        # (lock released), both in the I/O thread; so are the hook's events.
        self._outcomes = Outcomes(self._core, system_limit=SYSTEM_MESSAGE_LIMIT)
        self._hook_events: list[Event] = []
        self._io = IoThread(
            driver,
            self._lock,
            deliver=self._deliver,
            settle=self._settle,
            ssl_context=ssl_context,
            max_send_buffer=max_send_buffer,
        )

    # --- observation -------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        return self._core.state

    @property
    def counters(self) -> Counters:
        with self._lock:
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

    def wait_state(self, *states: ConnectionState, timeout: float | None = None) -> ConnectionState:
        """Wait until the state is one of ``states``; return it.

        Raises :class:`~meshproto.ConnectionClosedError` if the client closes
        first (unless ``CLOSED`` is one of ``states``), :class:`TimeoutError`
        after ``timeout`` seconds.
        """
        wanted = frozenset(states)
        deadline = Deadline(timeout)
        with self._lock:
            while True:
                state = self._core.state
                if state in wanted:
                    return state
                if state is ConnectionState.CLOSED:
                    raise self._outcomes.closed_error()
                self._state_cv.wait(self._next_wait(deadline, "wait_state"))

    # --- user calls ----------------------------------------------------------------

    def send(
        self,
        target: str,
        body: str | bytes,
        priority: str = "next",
        *,
        timeout: float | None = None,
        client_message_id: str | None = None,
    ) -> str:
        """Send ``body`` to ``target`` and wait for the broker's ack; return its ``messageId``.

        Sends made while offline wait in the core's bounded outbox. Raises
        :class:`~meshproto.SendError` (with a reason that says whether
        retrying can help) if the send fails, :class:`~meshproto.LocalProtocolError`
        for a bad target, priority or size, :class:`~meshproto.ConnectionClosedError`
        once closed, and :class:`TimeoutError` after ``timeout`` seconds, in
        which case the send stays pending and resolves later, unobserved
        (see the module docstring). A :class:`~meshproto.SendOutcomeUnknownError`
        (a ``SendError``) means the send may have been delivered: retry it,
        if at all, with ``client_message_id=error.client_message_id``.
        """
        future = self.send_nowait(target, body, priority, client_message_id=client_message_id)
        return self._wait_future(future, timeout, "send")

    def send_nowait(
        self,
        target: str,
        body: str | bytes,
        priority: str = "next",
        *,
        client_message_id: str | None = None,
    ) -> Future[str]:
        """Start a send and return at once; the future gives the ``messageId``.

        The future's ``result()`` raises what :meth:`send` raises
        (:class:`~meshproto.SendError`); it cannot be cancelled (the send is
        never withdrawn). Invalid arguments and a closed client raise here,
        at once. Pipelining: at most ``ClientOptions.max_outbox`` sends are
        pending; more fail with reason ``queue_full``.
        """
        future: Future[str] = Future()
        future.set_running_or_notify_cancel()
        with self._lock:
            self._outcomes.check_open()
            handle = self._core.send(
                target, body, priority, now=time.monotonic(), client_message_id=client_message_id
            )
            self._outcomes.expect_send(handle.id, future)
            self._io.wake()
        return future

    def set_status(self, status: str) -> None:
        """Set presence (``idle``, ``working``, ``dnd``); kept across reconnects."""
        with self._lock:
            self._outcomes.check_open()
            self._core.set_status(status, now=time.monotonic())
            self._io.wake()

    def set_summary(self, summary: str) -> None:
        """Set the one-line summary other peers see; kept across reconnects."""
        with self._lock:
            self._outcomes.check_open()
            self._core.set_summary(summary, now=time.monotonic())
            self._io.wake()

    def list_peers(self, timeout: float | None = None) -> tuple[Peer, ...]:
        """Ask the broker for the peers of the mesh.

        Raises :class:`~meshproto.RequestError` if the request fails or the
        core's ``request_timeout`` passes, :class:`TimeoutError` after
        ``timeout`` seconds (the request itself stays pending in the core).
        """
        future: Future[tuple[Peer, ...]] = Future()
        future.set_running_or_notify_cancel()
        with self._lock:
            self._outcomes.check_open()
            request_id = self._core.list_peers(now=time.monotonic())
            self._outcomes.expect_peers(request_id, future)
            self._io.wake()
        return self._wait_future(future, timeout, "list_peers")

    def receive(self, timeout: float | None = None, *, acknowledge: bool = True) -> Message:
        """The next message pushed to this peer, in order, each once.

        Backed by the core's bounded inbox (``ClientOptions.inbox_limit``).
        Each message is acknowledged to the broker when this call returns it,
        never before. While nobody reads and the inbox is full, the I/O
        thread stops reading the socket, so the broker holds the rest back:
        nothing is dropped. Raises :class:`TimeoutError` after ``timeout``
        seconds, and :class:`~meshproto.ConnectionClosedError` once the
        client is closed and the inbox is empty.

        With ``acknowledge=False`` the message is acknowledged only when it
        is passed to :meth:`acknowledge`, once the program has used it
        (printed it, stored it): one never acknowledged (the program failed
        first) stays with the broker, which delivers it again to the next
        session. A program that holds ``dedupe_window - inbox_limit``
        messages unacknowledged at once stops the reading until it
        acknowledges one.
        """
        self._check_inbox()
        deadline = Deadline(timeout)
        with self._lock:
            while True:
                taken = self._core.take_messages(1, acknowledge=acknowledge)
                if taken:
                    self._io.wake()  # the client_ack, and reading again if it was paused
                    return taken[0]
                if self._core.state is ConnectionState.CLOSED:
                    raise self._outcomes.closed_error()
                self._messages_cv.wait(self._next_wait(deadline, "receive"))

    def messages(self, *, acknowledge: bool = True) -> Iterator[Message]:
        """Iterate :meth:`receive` (no timeout); ends when the client is closed and drained."""
        self._check_inbox()
        return self._iterate(lambda: self.receive(acknowledge=acknowledge))

    def acknowledge(self, message: Message) -> None:
        """Acknowledge ``message``, returned by ``receive(acknowledge=False)``.

        The broker then forgets it: the ``client_ack`` leaves now, or after
        the next handshake while the client is reconnecting. Never blocks.
        Raises :class:`~meshproto.LocalProtocolError` for a message not
        returned unacknowledged (one acknowledged already, or another
        client's). Once the client is closed nothing is written: the broker
        delivers the message again to the next session.
        """
        with self._lock:
            self._core.acknowledge(message)
            self._io.wake()

    def receive_system(self, timeout: float | None = None) -> SystemMessage:
        """The next system push (``peer_joined``, ``peer_left`` …).

        The last :data:`SYSTEM_MESSAGE_LIMIT` are kept while nobody reads.
        Raises like :meth:`receive`.
        """
        deadline = Deadline(timeout)
        with self._lock:
            while True:
                message = self._outcomes.take_system()
                if message is not None:
                    return message
                if self._core.state is ConnectionState.CLOSED:
                    raise self._outcomes.closed_error()
                self._system_cv.wait(self._next_wait(deadline, "receive_system"))

    def system_messages(self) -> Iterator[SystemMessage]:
        """Iterate :meth:`receive_system` (no timeout); ends when the client is closed."""
        return self._iterate(self.receive_system)

    def close(self) -> None:
        """Close for good: say goodbye to the broker, close the socket, end the I/O thread.

        Bounded by ``close_timeout`` (plus a little). Pending sends and
        requests fail with reason ``closed``; blocked calls in other threads
        wake up (:meth:`receive` raises :class:`~meshproto.ConnectionClosedError`);
        later calls raise :class:`~meshproto.ConnectionClosedError`.
        Idempotent; safe from any thread, including from ``on_event`` (which
        does not wait for the thread it runs on).
        """
        with self._lock:
            if self._core.state is not ConnectionState.CLOSED:
                self._core.close(now=time.monotonic())
                if self._outcomes.closed is None:
                    self._outcomes.closed = Closed("closed by the user", None, True)
                self._notify_all()
                self._io.wake()
        thread = self._io.thread
        if self._io.in_io_thread or not thread.is_alive():
            return
        deadline = Deadline(self._driver.close_timeout + CLOSE_GRACE + 1.0)
        while thread.is_alive():
            try:
                wait = deadline.next_wait("close")
            except TimeoutError:  # pragma: no cover - the I/O thread bounds its own close
                logger.warning("the meshproto_sync I/O thread did not end in time")
                return
            thread.join(wait)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- the I/O thread's side -------------------------------------------------------

    def _start(self) -> None:
        self._io.start()

    def _deliver(self, event: Event) -> None:
        """One core event (I/O thread, lock held)."""
        if self._on_event is not None:
            self._hook_events.append(event)
        if isinstance(event, Closed) and self._io.error is not None:
            event = Closed(f"the I/O thread failed: {self._io.error!r}")
        for wake in self._outcomes.note(event):
            self._conditions[wake].notify_all()

    def _settle(self) -> None:
        """Run the hook and resolve futures (I/O thread, lock released)."""
        if self._hook_events:
            events, self._hook_events = self._hook_events, []
            hook = self._on_event
            assert hook is not None
            for event in events:
                try:
                    hook(event)
                except Exception:
                    logger.exception("on_event hook raised (ignored)")
        self._outcomes.settle()

    # --- internals -----------------------------------------------------------------

    def _notify_all(self) -> None:
        self._messages_cv.notify_all()
        self._system_cv.notify_all()
        self._state_cv.notify_all()

    def _next_wait(self, deadline: Deadline, what: str) -> float:
        wait = deadline.next_wait(what)
        if self._io.in_io_thread:
            raise LocalProtocolError(
                f"{what}() would block the I/O thread (called from on_event?): "
                "use a timeout of 0, or call it from another thread"
            )
        return wait

    def _wait_future(self, future: Future[T], timeout: float | None, what: str) -> T:
        deadline = Deadline(timeout)
        while not future.done():
            wait_futures((future,), timeout=self._next_wait(deadline, what))
        return future.result()

    def _iterate(self, take: Callable[[], T]) -> Iterator[T]:
        while True:
            try:
                yield take()
            except ConnectionClosedError:
                return

    def _check_inbox(self) -> None:
        if self._core.options.inbox_limit == 0:
            raise LocalProtocolError("receive() needs an inbox: inbox_limit is 0")


def connect(
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
    ssl_context: ssl.SSLContext | None = None,
    rng: random.Random | None = None,
    max_message_bytes: int | None = None,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    on_event: Callable[[Event], None] | None = None,
    record: RecordSetting = None,
) -> Client:
    """Join a mesh through the broker at ``url`` (``ws://`` or ``wss://``).

    Returns a started :class:`Client` at once, to be used as a context
    manager (``with connect(...) as client:``) or closed with
    :meth:`Client.close`. It connects (and reconnects) in its I/O thread;
    sends made before the handshake completes wait in the outbox. Use
    ``client.wait_state(ConnectionState.OPEN, timeout=...)`` to wait for the
    broker's ``hello_ack``.

    The parameters are :func:`meshproto_anyio.connect`'s: ``signer`` holds
    the member key; with ``session_signer`` every socket opens with a
    ``session_hello``. ``session_id`` defaults to a fresh random id, stable
    for this client's life. ``rng`` (ids, nonces, backoff jitter) defaults
    to a :class:`~meshproto_ws.PooledSystemRandom` (the operating system's
    bytes). ``ssl_context`` is used for ``wss://`` (default:
    :func:`ssl.create_default_context`). ``max_message_bytes`` caps a
    received message. ``on_event`` is called with every core event,
    in order, from the I/O thread (without the client's lock): it must not
    block; exceptions it raises are logged and ignored. ``record`` records
    the connection's inputs for ``python -m meshproto.replay``, as in
    :func:`meshproto_anyio.connect`.

    Raises :class:`~meshproto.LocalProtocolError` at once for a URL that is
    not ``ws://`` or ``wss://``.
    """
    driver = client_driver(
        url,
        mesh_id=mesh_id,
        member_id=member_id,
        signer=signer,
        session_id=session_id,
        display_name=display_name,
        groups=groups,
        hostname=hostname,
        peer_type=peer_type,
        session_pubkey=session_pubkey,
        session_signer=session_signer,
        role=role,
        sealer=sealer,
        options=options,
        rng=rng,
        max_message_bytes=max_message_bytes,
        close_timeout=close_timeout,
        record=record,
    )
    client = Client(driver, ssl_context=ssl_context, on_event=on_event)
    client._start()
    return client
