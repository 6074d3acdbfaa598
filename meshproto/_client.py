"""The client connection: a sans-IO state machine for one peer of a mesh.

Theory of operation
===================

``ClientConnection`` holds everything a peer keeps between WebSocket frames:
the handshake, the outbox of sends, the pushes already seen, presence,
liveness and the reconnect decision. It performs no I/O and reads no clock.
Every input carries ``now`` (monotonic seconds owned by the caller) and all
randomness comes from the ``random.Random`` passed in, so any run can be
replayed exactly.

States (:class:`ConnectionState`)::

    IDLE --connect()--> CONNECTING --transport_opened()--> HANDSHAKING
    HANDSHAKING --hello_ack--> OPEN
    CONNECTING | HANDSHAKING | OPEN --link lost / timeout--> RECONNECTING
    RECONNECTING --backoff timer--> CONNECTING
    any --close() / permanent refusal--> CLOSED   (terminal)

Inputs: ``connect``, ``transport_opened``, ``receive_text``, ``receive_binary``,
``receive_ping``, ``receive_pong``, ``transport_closed``, ``handle_timer`` and
the user calls ``send``, ``set_status``, ``set_summary``, ``list_peers``,
``take_messages``, ``acknowledge`` and ``close``.

Outputs, after every input:

* ``drain_actions()``: what the transport must do, in order: open a socket
  (:class:`OpenTransport`), write a text frame (:class:`WriteFrame`), ping
  (:class:`SendPing`), close (:class:`CloseTransport`).
* ``drain_events()``: what the application should hear about.
* ``next_deadline()``: the absolute time at which ``handle_timer`` wants to
  run, or ``None``.
* ``take_messages()``: the bounded inbox, for applications that poll; with
  ``acknowledge=False``, ``acknowledge(message)`` once the message is used.

Rules
-----

* The first frame on every transport is the one ``hello``; until
  ``hello_ack`` nothing else is written but the ``client_ack`` of a push that
  arrives early (the broker drains queued messages before it acks the hello,
  and such pushes are taken normally). Without ``hello_ack`` in
  ``hello_timeout`` the transport is closed and a reconnect is scheduled.
* A send is validated and encoded once, in ``send()``, and gets an id that it
  keeps for life; its ``client_message_id`` is that id, or the key of the
  earlier send it retries (``send(..., client_message_id=...)``). It then
  sits in the *outbox* until the connection is open, is written in order,
  and waits ``ack_timeout`` from the moment it is written. The outbox counts
  every send not yet resolved, written or not, and holds at most
  ``max_outbox``; a send beyond that fails at once with ``queue_full``.
* When the link drops, sends in flight go back to the front of the outbox and
  are written again, under the same ``client_message_id``, after the next
  ``hello_ack`` (or, with ``resend_in_flight=False``, resolve as below).
* Every send resolves exactly once, with one of three events, and is never
  written again afterwards:

  - :class:`SendAcked`: the broker accepted it;
  - :class:`SendFailed`: it was **not delivered**: it was never written, or
    the broker refused the only write of it;
  - :class:`SendOutcomeUnknown`: it was written, and nothing settles whether
    a write reached the broker: no ack in time, the link or the client
    closed, or a re-send was refused after an earlier write. Retrying under
    the same ``client_message_id`` is safe; a fresh send may duplicate it.

* Pushes go through the :class:`~meshproto._inbox.Inbox` (see its theory
  of operation): each message reaches the application once, and
  ``client_ack`` is written only when the message is in the application's
  hands: when ``take_messages()`` returns it (with an inbox), or as the
  event is produced (``inbox_limit=0``). An application that must use a
  message before the broker may forget it (print it, store it) takes it
  with ``take_messages(acknowledge=False)`` and calls
  ``acknowledge(message)`` once it has; one never acknowledged is pushed
  again by the broker to a later connection. Acknowledgements due while no
  transport is attached are written after the next ``hello_ack``. While the
  inbox is full (``inbox_limit`` messages waiting, or ``dedupe_window -
  inbox_limit`` taken and not yet acknowledged)
  :attr:`ClientConnection.reading_paused` is true and the adapter stops
  reading; nothing is ever dropped. With ``accept_messages=False`` no
  message is taken or acknowledged at all.
* After ``hello_ack`` the connection pings every ``ping_interval``; any
  inbound frame, ping or pong counts as life, and ``liveness_timeout`` of
  silence closes the transport and reconnects. While reading is paused the
  silence is ours, not the broker's: the liveness timeout is suspended, and
  counts again from the first input after reading resumes.
* Only one reconnect is ever pending. Delays come from :class:`Backoff`; the
  attempt count goes back to zero only after a link has proved itself: it
  stayed open ``proven_after`` seconds past ``hello_ack``, or a send was
  acknowledged on it. A broker that accepts the hello and drops the link at
  once therefore sees the delays grow. Permanent refusals
  (docs/protocol.md §6) end in CLOSED with a :class:`Closed` event that says
  why.
* Garbage from the network never raises: it becomes :class:`MalformedFrame`.
  An unexpected exception while handling a frame (a bug) is logged once,
  becomes :class:`InternalError`, and costs the transport: it is closed with
  1011 and a reconnect is scheduled. Misuse raises :class:`LocalProtocolError`
  before any state changes.
"""

from __future__ import annotations

import logging
from collections import deque
from random import Random

from ._client_link import _ClientLink
from ._client_sends import PendingRequest, PendingSend, encode_send
from ._codec import decode, encode
from ._config import (
    ATTESTATION_MAX_TTL_MS,
    MAX_FRAME_BYTES,
    PRIORITIES,
    STATUSES,
    ClientConfig,
    ClientOptions,
    Counters,
    SendHandle,
    check_text,
)
from ._errors import LocalProtocolError, RemoteProtocolError
from ._events import (
    Action,
    Closed,
    ConnectionState,
    Event,
    InternalError,
    MalformedFrame,
    PeersListed,
    RequestFailed,
    SendAcked,
    SendFailed,
    SendOutcomeUnknown,
    SendPing,
    StateChanged,
    SystemMessage,
    WriteFrame,
)
from ._frames import (
    Ack,
    ErrorFrame,
    Frame,
    HelloAck,
    ListPeers,
    PeersList,
    Push,
    SetStatus,
    SetSummary,
)
from ._hellos import hello_frame
from ._inbox import Inbox, Message, ack_for, open_message
from ._reasons import (
    ACK_TIMEOUT,
    CLOSED,
    PAYLOAD_TOO_LARGE,
    QUEUE_FULL,
    REFUSED,
    TIMEOUT,
    FailureReason,
    classify_ack_error,
)
from ._refusals import PERMANENT_REFUSALS, is_permanent_close

__all__ = [
    "ATTESTATION_MAX_TTL_MS",
    "MAX_FRAME_BYTES",
    "PERMANENT_REFUSALS",
    "PRIORITIES",
    "STATUSES",
    "ClientConfig",
    "ClientConnection",
    "ClientOptions",
    "Counters",
    "SendHandle",
    "is_permanent_close",
]

logger = logging.getLogger("meshproto.client")

# States in which a transport exists (opening, handshaking or open).
_WITH_TRANSPORT = frozenset(
    {ConnectionState.CONNECTING, ConnectionState.HANDSHAKING, ConnectionState.OPEN}
)


class ClientConnection(_ClientLink):
    """The client side of one mesh membership. See the module docstring."""

    def __init__(
        self,
        config: ClientConfig,
        *,
        rng: Random,
        options: ClientOptions | None = None,
    ) -> None:
        self.config = config
        self.options = options if options is not None else ClientOptions()
        self._rng = rng
        self._state = ConnectionState.IDLE
        self._actions: list[Action] = []
        self._events: list[Event] = []
        self._inbox = Inbox(limit=self.options.inbox_limit, window=self.options.dedupe_window)
        # client_acks due while no transport was attached (after the next hello_ack).
        self._owed_acks: list[str] = []  # their texts
        # Sends: every unresolved one by id; the unwritten ones in order; the
        # written ones in write order (so the first has the earliest deadline).
        self._sends: dict[str, PendingSend] = {}
        self._outbox: deque[PendingSend] = deque()
        self._in_flight: dict[str, PendingSend] = {}
        self._requests: dict[str, PendingRequest] = {}
        self._status: str | None = None
        self._summary: str | None = None
        # Transport and timers.
        self._transport_id = 0
        self._attached = False
        self._state_deadline: float | None = None  # connect, hello or reconnect
        self._ping_due = 0.0
        self._last_inbound = 0.0
        self._attempt = 0
        self._refusal: str | None = None
        # Has the current link proved itself (for the backoff)?
        self._opened_at: float | None = None  # hello_ack time on this transport
        self._acked_on_link = False
        # Reading resumed after a pause: liveness counts from the next input.
        self._liveness_restart = False
        # Counters.
        self._frames_in = 0
        self._frames_out = 0
        self._reconnects = 0
        self._resends = 0
        self._declined = 0

    # --- observation -------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def counters(self) -> Counters:
        return Counters(
            self._frames_in,
            self._frames_out,
            self._reconnects,
            self._resends,
            self._inbox.duplicates,
            self._declined,
        )

    @property
    def pending_sends(self) -> int:
        """Sends not yet resolved: waiting in the outbox or written and unacked."""
        return len(self._sends)

    @property
    def in_flight(self) -> int:
        """Sends written and waiting for their ack."""
        return len(self._in_flight)

    @property
    def inbox_size(self) -> int:
        """Messages waiting in the inbox, not yet taken."""
        return len(self._inbox)

    @property
    def unacknowledged(self) -> int:
        """Messages taken with ``acknowledge=False`` and not acknowledged since."""
        return self._inbox.unacknowledged

    @property
    def reading_paused(self) -> bool:
        """Whether the adapter should stop reading the socket: the inbox is full.

        Full is ``inbox_limit`` messages waiting, or ``dedupe_window -
        inbox_limit`` taken and not yet acknowledged. Check it after every
        input, every ``take_messages()`` and every ``acknowledge()``; reading
        resumes once a take or an acknowledgement makes room. Nothing is
        ever dropped instead.
        """
        return self._inbox.full

    @property
    def reconnect_pending(self) -> bool:
        return self._state is ConnectionState.RECONNECTING

    def drain_actions(self) -> list[Action]:
        """The transport actions produced so far, in order; the list is handed over."""
        actions, self._actions = self._actions, []
        return actions

    def drain_events(self) -> list[Event]:
        """The application events produced so far, in order; the list is handed over."""
        events, self._events = self._events, []
        return events

    def take_messages(self, limit: int | None = None, *, acknowledge: bool = True) -> list[Message]:
        """Remove and return up to ``limit`` messages from the inbox, oldest first.

        This is the hand-over: each message returned is acknowledged to the
        broker now (a ``client_ack`` to write, see ``drain_actions()``), or
        after the next ``hello_ack`` if no transport is attached.

        With ``acknowledge=False`` nothing is acknowledged yet: each message
        returned is *taken, unacknowledged* until :meth:`acknowledge` is
        called with it. It is never returned again and a re-push of it is not
        acknowledged either. Its place in the inbox is free at once, so the
        socket is read while the application uses it (and may wait on the
        broker meanwhile); only ``dedupe_window - inbox_limit`` messages held
        unacknowledged at once stop the reading (:attr:`reading_paused`).
        One never acknowledged stays with the broker, which pushes it again
        to a later connection.
        """
        inbox = self._inbox
        was_full = inbox.full
        messages, acks = inbox.take(limit, acknowledge=acknowledge)
        self._acknowledged(acks, was_full)
        return messages

    def acknowledge(self, message: Message) -> None:
        """Acknowledge ``message``, taken with ``take_messages(acknowledge=False)``.

        The ``client_ack`` of every push of it seen so far is written now
        (see ``drain_actions()``), or after the next ``hello_ack`` if no
        transport is attached; the broker then forgets it. Once the
        connection is closed nothing is written, and the broker delivers the
        message again to the member's next session. Raises
        :class:`LocalProtocolError`, before any state changes, for a message
        that is not taken and unacknowledged: one acknowledged already
        (twice is an error, not a no-op), one still waiting in the inbox,
        one this connection never handed over (another connection's copy).
        """
        inbox = self._inbox
        was_full = inbox.full
        self._acknowledged(inbox.acknowledge(message), was_full)

    def next_deadline(self) -> float | None:
        """When ``handle_timer`` should next run, or ``None`` if nothing is timed."""
        best = self._state_deadline
        if self._state is ConnectionState.OPEN:
            due = self._ping_due
            if not (self._liveness_restart or self._inbox.full):
                due = min(due, self._last_inbound + self.options.liveness_timeout)
            if best is None or due < best:
                best = due
        if self._in_flight:  # the oldest send's deadline is the earliest
            due = next(iter(self._in_flight.values())).deadline
            if best is None or due < best:
                best = due
        if self._requests:
            due = next(iter(self._requests.values())).deadline
            if best is None or due < best:
                best = due
        return best

    # --- user calls ---------------------------------------------------------

    def connect(self, now: float) -> None:
        """Start: decide to open the first transport."""
        if self._state is ConnectionState.CLOSED:
            raise LocalProtocolError("the connection is closed; make a new one")
        if self._state is not ConnectionState.IDLE:
            raise LocalProtocolError(f"connect() called twice (state is {self._state})")
        self._open_transport(now)

    def send(
        self,
        target: str,
        body: str | bytes,
        priority: str = "next",
        *,
        now: float,
        client_message_id: str | None = None,
    ) -> SendHandle:
        """Queue a message for ``target``; the outcome arrives as an event.

        ``client_message_id`` retries an earlier send whose outcome is unknown
        (:class:`SendOutcomeUnknown`): pass that send's key, and the receiver
        deduplicates the two. Leave it out for a new message.

        Raises :class:`LocalProtocolError`, before any state changes, for a
        closed connection, a malformed target, an unknown priority, a body
        that is not ``str``/``bytes`` or larger than 64 KiB, a frame that
        would exceed 64 KiB once encoded, or a ``client_message_id`` that is
        malformed or already pending.
        """
        if self._state is ConnectionState.CLOSED:
            raise LocalProtocolError("cannot send: the connection is closed")
        send_id, cmid, text = encode_send(
            target,
            body,
            priority,
            client_message_id=client_message_id,
            sealer=self.config.sealer,
            rng=self._rng,
            sends=self._sends,
        )
        handle = SendHandle(send_id, target, priority, cmid)
        if len(self._sends) >= self.options.max_outbox:
            detail = (
                f"{len(self._sends)} sends already pending (max_outbox={self.options.max_outbox})"
            )
            self._events.append(SendFailed(send_id, FailureReason.of(QUEUE_FULL, detail)))
            return handle
        record = PendingSend(send_id, cmid, text)
        self._sends[send_id] = record
        if self._state is ConnectionState.OPEN:
            self._write_send(record, now)
        else:
            self._outbox.append(record)
        return handle

    def set_status(self, status: str, *, now: float) -> None:
        """Set presence (``idle``, ``working``, ``dnd``); re-sent after every reconnect."""
        if self._state is ConnectionState.CLOSED:
            raise LocalProtocolError("cannot set status: the connection is closed")
        if not isinstance(status, str) or status not in STATUSES:
            raise LocalProtocolError(
                f"status must be one of 'idle', 'working', 'dnd', got {status!r}"
            )
        self._status = status
        if self._state is ConnectionState.OPEN:
            self._write(encode(SetStatus(status)))

    def set_summary(self, summary: str, *, now: float) -> None:
        """Set the one-line summary other peers see; re-sent after every reconnect."""
        if self._state is ConnectionState.CLOSED:
            raise LocalProtocolError("cannot set summary: the connection is closed")
        check_text(summary, "summary")
        self._summary = summary
        if self._state is ConnectionState.OPEN:
            self._write(encode(SetSummary(summary)))

    def list_peers(self, *, now: float) -> str:
        """Ask for the peer list; returns the request id that the answer carries."""
        if self._state is ConnectionState.CLOSED:
            raise LocalProtocolError("cannot list peers: the connection is closed")
        request_id = f"req-{self._rng.getrandbits(64):016x}"
        if len(self._requests) >= self.options.max_requests:
            detail = f"{len(self._requests)} requests already pending"
            self._events.append(RequestFailed(request_id, FailureReason.of(QUEUE_FULL, detail)))
            return request_id
        request = PendingRequest(request_id, now + self.options.request_timeout)
        self._requests[request_id] = request
        if self._state is ConnectionState.OPEN:
            self._write_request(request)
        return request_id

    def close(self, *, now: float) -> None:
        """Stop for good: close the transport and fail what is pending with ``closed``."""
        if self._state is ConnectionState.CLOSED:
            return
        if self._state in _WITH_TRANSPORT:
            self._detach(1000, "client closing")
        self._finish(
            FailureReason.of(CLOSED, "the client was closed"),
            Closed("closed by the user", None, True),
        )

    # --- transport inputs ---------------------------------------------------

    def transport_opened(self, transport_id: int, *, now: float, wall_time_ms: int) -> None:
        """The transport from ``OpenTransport(transport_id)`` is open: say hello.

        ``wall_time_ms`` is Unix time in milliseconds, for the signed hello.
        """
        if transport_id != self._transport_id or self._state is not ConnectionState.CONNECTING:
            return
        self._attached = True
        self._refusal = None
        self._last_inbound = now
        self._set_state(ConnectionState.HANDSHAKING)
        self._state_deadline = now + self.options.hello_timeout
        self._write(encode(hello_frame(self.config, wall_time_ms)))

    def transport_closed(
        self, transport_id: int, *, now: float, code: int | None = None, reason: str = ""
    ) -> None:
        """The transport closed (``code`` ``None`` means no close frame: 1006).

        Also the way to report that opening it failed.
        """
        if transport_id != self._transport_id or self._state not in _WITH_TRANSPORT:
            return
        self._attached = False
        if code == 1009 and self._in_flight:
            # A Node-hosted broker refuses an oversized frame this way: the
            # last frame written is the one it could not take (docs/protocol.md §6).
            last = next(reversed(self._in_flight.values()))
            too_large = FailureReason.of(PAYLOAD_TOO_LARGE, "closed with 1009")
            self._fail_send(last.id, too_large, answered=True)
        if is_permanent_close(code, reason, self._refusal):
            why = reason or self._refusal or "refused"
            self._finish(
                FailureReason.of(REFUSED, f"broker closed the connection: {code} {why}"),
                Closed(f"broker refused: {why}", code),
            )
            return
        self._link_lost(
            now, f"transport closed ({code if code is not None else 1006} {reason})".strip()
        )

    def receive_text(self, text: str, *, now: float) -> None:
        """A text message arrived on the current transport."""
        if not self._attached:
            return
        self._frames_in += 1
        self._last_inbound = now
        try:
            frame = decode(text)
        except RemoteProtocolError as exc:
            logger.debug("dropping malformed frame: %s", exc)
            self._events.append(MalformedFrame(exc))
            return
        try:
            self._dispatch(frame, now)
        except Exception as exc:
            what = getattr(frame, "TYPE", None) or "unknown"
            logger.exception("unexpected error while handling a %r frame", what)
            self.report_internal_error(exc, during=f"handling a {what!r} frame", now=now)

    def receive_binary(self, data: bytes, *, now: float) -> None:
        """A binary message arrived: a protocol violation, reported and dropped."""
        if not self._attached:
            return
        self._frames_in += 1
        self._last_inbound = now
        self._events.append(
            MalformedFrame(
                RemoteProtocolError(f"binary message of {len(data)} bytes: only text is allowed")
            )
        )

    def receive_ping(self, *, now: float) -> None:
        """A ping arrived (the adapter answers it); it counts as life."""
        if self._attached:
            self._last_inbound = now

    def receive_pong(self, *, now: float) -> None:
        """A pong arrived; it counts as life."""
        if self._attached:
            self._last_inbound = now

    def report_internal_error(self, error: BaseException, *, during: str, now: float) -> None:
        """An adapter (or this connection) hit an unexpected exception while handling input.

        Records :class:`InternalError` and gives up on the current transport,
        closing it with 1011, as after any lost link: sends in flight go back
        to the outbox and a reconnect is scheduled. Without a transport only
        the event is recorded.
        """
        self._events.append(InternalError(error, during))
        if self._state in _WITH_TRANSPORT:
            self._detach(1011, "internal error")
            self._link_lost(now, f"internal error while {during}: {error!r}"[:200])

    def handle_timer(self, now: float) -> None:
        """Run everything that is due at or before ``now``."""
        state = self._state
        if self._state_deadline is not None and now >= self._state_deadline:
            self._state_deadline = None
            if state is ConnectionState.RECONNECTING:
                self._reconnects += 1
                self._open_transport(now)
            elif state is ConnectionState.CONNECTING:
                self._drop(now, "could not open the transport in time")
            elif state is ConnectionState.HANDSHAKING:
                self._drop(now, "no hello_ack in time")
        if self._liveness_restart:
            self._liveness_restart = False
            self._last_inbound = max(self._last_inbound, now)
        if self._state is ConnectionState.OPEN:
            # Same expression as next_deadline(), so float rounding cannot
            # leave a deadline at or before ``now``.
            if not self._inbox.full and now >= self._last_inbound + self.options.liveness_timeout:
                self._drop(now, f"nothing heard for {self.options.liveness_timeout:g} s")
            elif now >= self._ping_due:
                self._actions.append(SendPing())
                self._ping_due = now + self.options.ping_interval
        in_flight = self._in_flight
        while in_flight:
            record = next(iter(in_flight.values()))
            if record.deadline > now:
                break
            detail = f"no ack within {self.options.ack_timeout:g} s of writing"
            self._fail_send(record.id, FailureReason.of(ACK_TIMEOUT, detail), answered=False)
        requests = self._requests
        while requests:
            request = next(iter(requests.values()))
            if request.deadline > now:
                break
            del requests[request.id]
            detail = f"no answer within {self.options.request_timeout:g} s"
            self._events.append(RequestFailed(request.id, FailureReason.of(TIMEOUT, detail)))

    # --- frames from the broker ----------------------------------------------

    def _dispatch(self, frame: Frame, now: float) -> None:
        kind = type(frame)
        if kind is Ack:
            assert isinstance(frame, Ack)
            if frame.id in self._in_flight:
                if frame.queued:
                    self._acked_on_link = True
                    self._resolve(frame.id, SendAcked(frame.id, frame.message_id))
                else:
                    reason = classify_ack_error(frame.error or "rejected without a reason")
                    self._fail_send(frame.id, reason, answered=True)
        elif kind is Push:
            assert isinstance(frame, Push)
            self._on_push(frame)
        elif kind is HelloAck:
            assert isinstance(frame, HelloAck)
            if self._state is ConnectionState.HANDSHAKING:
                self._on_hello_ack(frame, now)
        elif kind is ErrorFrame:
            assert isinstance(frame, ErrorFrame)
            self._on_error(frame, now)
        elif kind is PeersList:
            assert isinstance(frame, PeersList)
            if frame.req_id is not None and self._requests.pop(frame.req_id, None) is not None:
                self._events.append(PeersListed(frame.req_id, frame.peers))
        # Anything else (unknown types, frames meant for a broker) is ignored.

    def _on_push(self, push: Push) -> None:
        inbox = self._inbox
        duplicate, ack = inbox.duplicate(push)
        if duplicate:
            if ack is not None:  # already handed over: the broker missed our ack
                self._write(ack)
            return
        if push.subtype == "system":
            inbox.handed_over(push)
            self._write(ack_for(push))
            self._events.append(
                SystemMessage(push.event or "", push.event_data or {}, push.message_id, push)
            )
            return
        if not self.options.accept_messages:
            self._declined += 1  # left for the member's other sessions
            return
        message = open_message(self.config.sealer, push)
        self._events.append(message)
        if inbox.limit:
            inbox.put(push, message)  # acknowledged when taken
        else:
            inbox.handed_over(push)  # the event is the hand-over
            self._write(ack_for(push))

    # --- internals ------------------------------------------------------------

    def _set_state(self, new: ConnectionState) -> None:
        old = self._state
        if old is not new:
            self._state = new
            self._events.append(StateChanged(old, new))

    def _acknowledged(self, acks: list[str], was_full: bool) -> None:
        """Write ``acks`` (or owe them to the next ``hello_ack``); note room made in the inbox.

        Closed, there is no next ``hello_ack``: the acks are dropped, and the
        broker delivers those messages again to the member's next session.
        """
        if acks and self._state is not ConnectionState.CLOSED:
            if self._attached:
                for ack in acks:
                    self._write(ack)
            else:
                self._owed_acks.extend(acks)
        if was_full and not self._inbox.full:
            self._liveness_restart = True

    def _write(self, text: str) -> None:
        self._frames_out += 1
        self._actions.append(WriteFrame(text))

    def _write_send(self, record: PendingSend, now: float) -> None:
        if record.writes:
            self._resends += 1
        record.writes += 1
        record.deadline = now + self.options.ack_timeout
        self._in_flight[record.id] = record
        self._frames_out += 1
        self._actions.append(WriteFrame(record.text))

    def _write_request(self, request: PendingRequest) -> None:
        request.written = True
        self._write(encode(ListPeers(request.id)))

    def _resolve(self, send_id: str, outcome: SendAcked | SendFailed | SendOutcomeUnknown) -> None:
        record = self._sends.pop(send_id)
        if self._in_flight.pop(send_id, None) is None:
            self._outbox.remove(record)
        self._events.append(outcome)
