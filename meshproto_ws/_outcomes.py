"""What a client's callers wait for, kept once for every adapter; no I/O, no waiting.

Theory of operation
===================

The core reports everything as events (:meth:`ClientDriver.drain_events`);
an application waits for a few of them inside calls: a send for its ack, a
peer list for its answer, a reader for the next system message, any wait
for a state or for the client closing. :class:`Outcomes` is the bookkeeping
between the two, written once: which call an event answers, with what value
or error, and which waits it may end. The waiting itself stays in each
adapter, in its own primitives (anyio events; threading conditions and
futures).

State:

* the pending sends and peer requests, by id, each with its :class:`Waiter`
  (anything with ``set_result`` and ``set_exception``, such as
  :class:`concurrent.futures.Future`);
* the outcomes decided but not yet handed over;
* the system messages nobody has taken yet (the newest ``system_limit``);
* :attr:`Outcomes.closed`: why the client closed, once it has.

Inputs:

* ``expect_send(send_id, waiter)`` / ``expect_peers(request_id, waiter)``: a
  call starts waiting. Register right after the core call that returned the
  id and before the core's events are next drained (the core may decide an
  outcome at once, e.g. ``queue_full``);
* ``note(event)``: every core event, in order.

Outputs:

* ``note`` returns the kinds of wait the event may end (:class:`Wake`); the
  adapter wakes those waiters, which look again;
* ``settle()`` hands every outcome decided so far to its waiter, in event
  order: ``set_result`` with the ``messageId`` or the peers,
  ``set_exception`` with :class:`~meshproto.SendError` (its subclass
  :class:`~meshproto.SendOutcomeUnknownError` when the send may have been
  delivered) or :class:`~meshproto.RequestError`. The adapter calls it when running
  whatever a waiter runs is safe (anyio: after each event; threads:
  with the client's lock released, because a future runs its callbacks
  inside ``set_result``);
* ``take_system()``, ``closed_error()`` and ``check_open()`` for the calls.

Invariants: every waiter gets exactly one outcome and is then forgotten,
because the core resolves every send and every request exactly once (acked
or failed, answered or failed; closing fails whatever is left). A waiter
whose caller stopped waiting (a timeout, a cancellation) still gets its
outcome, unobserved. Nothing here raises for what the network does.

Not locked: the adapter serialises the calls. The blocking client makes
every call but ``settle`` under its lock; ``settle`` runs without it, in
the I/O thread, the only thread that calls ``note``, and it touches nothing
but the outcomes ``note`` decided.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Protocol, TypeVar

from meshproto import (
    ClientConnection,
    Closed,
    ConnectionClosedError,
    ConnectionState,
    Event,
    MessageReceived,
    Peer,
    PeersListed,
    RequestError,
    RequestFailed,
    SendAcked,
    SendError,
    SendFailed,
    SendOutcomeUnknown,
    SendOutcomeUnknownError,
    StateChanged,
    SystemMessage,
    UnreadableMessage,
)

__all__ = ["Outcomes", "Waiter", "Wake"]

T_contra = TypeVar("T_contra", contravariant=True)


class Waiter(Protocol[T_contra]):
    """What a call waits on for its one outcome (a :class:`concurrent.futures.Future` is one)."""

    def set_result(self, result: T_contra, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


class Wake(enum.Enum):
    """A kind of wait that an event may end."""

    #: The core's inbox grew (or the client closed).
    MESSAGES = "messages"
    #: A system message was kept (or the client closed).
    SYSTEM = "system"
    #: The connection state changed.
    STATE = "state"


_NONE: tuple[Wake, ...] = ()
_MESSAGES = (Wake.MESSAGES,)
_SYSTEM = (Wake.SYSTEM,)
_STATE = (Wake.STATE,)
_ALL = tuple(Wake)


class Outcomes:
    """The outcomes a client's callers wait for; see the module docstring."""

    __slots__ = ("_core", "_due", "_requests", "_sends", "_system", "closed")

    def __init__(self, connection: ClientConnection, *, system_limit: int) -> None:
        self._core = connection
        self._sends: dict[str, Waiter[str]] = {}
        self._requests: dict[str, Waiter[tuple[Peer, ...]]] = {}
        self._due: list[Callable[[], None]] = []
        self._system: deque[SystemMessage] = deque(maxlen=system_limit)
        #: Why the client stopped for good (the core's :class:`~meshproto.Closed`),
        #: or ``None``. An adapter that closes the core outside its event
        #: path may set it first; the ``Closed`` event then replaces it.
        self.closed: Closed | None = None

    # --- inputs --------------------------------------------------------------------

    def expect_send(self, send_id: str, waiter: Waiter[str]) -> None:
        """Send ``send_id`` (from ``ClientConnection.send``) is waited on by ``waiter``.

        The waiter gets the broker's ``messageId``, or a :class:`~meshproto.SendError`.
        """
        self._sends[send_id] = waiter

    def expect_peers(self, request_id: str, waiter: Waiter[tuple[Peer, ...]]) -> None:
        """Request ``request_id`` (from ``ClientConnection.list_peers``) is waited on by ``waiter``.

        The waiter gets the peers, or a :class:`~meshproto.RequestError`.
        """
        self._requests[request_id] = waiter

    def note(self, event: Event) -> tuple[Wake, ...]:
        """Take one core event into account; return the kinds of wait it may end."""
        if isinstance(event, SendAcked):
            sent = self._sends.pop(event.send_id, None)
            if sent is not None:
                self._due.append(partial(sent.set_result, event.message_id))
        elif isinstance(event, SendFailed):
            sent = self._sends.pop(event.send_id, None)
            if sent is not None:
                self._due.append(
                    partial(sent.set_exception, SendError(event.send_id, event.reason))
                )
        elif isinstance(event, SendOutcomeUnknown):
            sent = self._sends.pop(event.send_id, None)
            if sent is not None:
                unknown = SendOutcomeUnknownError(
                    event.send_id, event.client_message_id, event.reason
                )
                self._due.append(partial(sent.set_exception, unknown))
        elif isinstance(event, (MessageReceived, UnreadableMessage)):
            return _MESSAGES
        elif isinstance(event, SystemMessage):
            self._system.append(event)
            return _SYSTEM
        elif isinstance(event, StateChanged):
            return _STATE
        elif isinstance(event, PeersListed):
            request = self._requests.pop(event.request_id, None)
            if request is not None:
                self._due.append(partial(request.set_result, event.peers))
        elif isinstance(event, RequestFailed):
            request = self._requests.pop(event.request_id, None)
            if request is not None:
                error = RequestError(event.request_id, event.reason)
                self._due.append(partial(request.set_exception, error))
        elif isinstance(event, Closed):
            self.closed = event
            return _ALL
        return _NONE

    # --- outputs -------------------------------------------------------------------

    def settle(self) -> None:
        """Hand every outcome decided so far to its waiter, in the order decided."""
        if self._due:
            due, self._due = self._due, []
            for hand_over in due:
                hand_over()

    def take_system(self) -> SystemMessage | None:
        """The oldest system message not yet taken, or ``None``."""
        return self._system.popleft() if self._system else None

    def closed_error(self) -> ConnectionClosedError:
        """What a call raises once the client is closed."""
        closed = self.closed
        if closed is None:  # pragma: no cover - CLOSED always comes with Closed
            return ConnectionClosedError("the client is closed")
        return ConnectionClosedError(closed.reason, closed.code)

    def check_open(self) -> None:
        """Raise :meth:`closed_error` if the core is closed."""
        if self._core.state is ConnectionState.CLOSED:
            raise self.closed_error()
