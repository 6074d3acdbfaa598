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
the user calls ``send``, ``set_status``, ``set_summary``, ``list_peers`` and
``close``.

Outputs, after every input:

* ``drain_actions()``: what the transport must do, in order: open a socket
  (:class:`OpenTransport`), write a text frame (:class:`WriteFrame`), ping
  (:class:`SendPing`), close (:class:`CloseTransport`).
* ``drain_events()``: what the application should hear about.
* ``next_deadline()``: the absolute time at which ``handle_timer`` wants to
  run, or ``None``.
* ``take_messages()``: the bounded inbox, for applications that poll.

Rules
-----

* The first frame on every transport is the one ``hello``; until
  ``hello_ack`` nothing else is written but the ``client_ack`` of a push that
  arrives early (the broker drains queued messages before it acks the hello,
  and such pushes are taken normally). Without ``hello_ack`` in ``hello_timeout`` the transport is
  closed and a reconnect is scheduled.
* A send is validated and encoded once, in ``send()``, and gets an id that it
  keeps for life (it is also its ``client_message_id``). It then sits in the
  *outbox* until the connection is open, is written in order, and waits
  ``ack_timeout`` from the moment it is written. The outbox counts every send
  not yet resolved, written or not, and holds at most ``max_outbox``; a send
  beyond that fails at once with ``queue_full``.
* When the link drops, sends in flight go back to the front of the outbox and
  are written again after the next ``hello_ack`` (or, with
  ``resend_in_flight=False``, fail with ``connection_lost``).
* Every send resolves exactly once (:class:`SendAcked` or :class:`SendFailed`);
  a failed send is never written again.
* Every push is answered with ``client_ack``, duplicates included. A push
  whose dedupe key (``client_message_id``, else ``messageId``) is within the
  last ``dedupe_window`` keys is counted as a duplicate and not delivered.
* After ``hello_ack`` the connection pings every ``ping_interval``; any
  inbound frame, ping or pong counts as life, and ``liveness_timeout`` of
  silence closes the transport and reconnects.
* Only one reconnect is ever pending. Delays come from :class:`Backoff`; the
  attempt count resets only after ``hello_ack``. Permanent refusals
  (docs/protocol.md §6) end in CLOSED with a :class:`Closed` event that says why.
* Garbage from the network never raises: it becomes :class:`MalformedFrame`.
  Misuse raises :class:`LocalProtocolError` before any state changes.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from random import Random

from ._backoff import Backoff
from ._codec import decode, encode
from ._errors import LocalProtocolError, RemoteProtocolError
from ._events import (
    Action,
    BrokerError,
    Closed,
    CloseTransport,
    ConnectionState,
    Event,
    HandshakeComplete,
    MalformedFrame,
    MessageReceived,
    OpenTransport,
    PeersListed,
    ReconnectScheduled,
    RequestFailed,
    SendAcked,
    SendFailed,
    SendPing,
    StateChanged,
    SystemMessage,
    UnreadableMessage,
    WriteFrame,
)
from ._frames import (
    Ack,
    ClientAck,
    ErrorFrame,
    Frame,
    Group,
    Hello,
    HelloAck,
    ListPeers,
    ParentAttestation,
    PeersList,
    Push,
    Send,
    SessionHello,
    SetStatus,
    SetSummary,
)
from ._reasons import (
    ACK_TIMEOUT,
    CLOSED,
    CONNECTION_LOST,
    PAYLOAD_TOO_LARGE,
    QUEUE_FULL,
    REFUSED,
    TIMEOUT,
    FailureReason,
    classify_ack_error,
    classify_error_frame,
)
from ._seams import (
    OpenError,
    PlaintextSealer,
    Sealer,
    Signer,
    attestation_signing_payload,
    hello_signing_payload,
    session_hello_signing_payload,
)
from ._targets import check_target

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

#: A parent attestation lives at most 24 hours (docs/protocol.md §3.2).
ATTESTATION_MAX_TTL_MS = 24 * 3600 * 1000

#: The largest frame a client writes and the largest body it accepts (§1, §7).
MAX_FRAME_BYTES = 65_536
PRIORITIES = frozenset({"now", "next", "low"})
STATUSES = frozenset({"idle", "working", "dnd"})

#: Refusal codes (error frames or 1008 close reasons) that mean "our identity
#: is wrong": reconnecting cannot help (docs/protocol.md §3, §6).
PERMANENT_REFUSALS = frozenset(
    {
        "unauthorized",
        "bad_signature",
        "malformed",
        "bad_session_pubkey",
        "revoked",
        "expired",
        "ttl_too_long",
        "attestation_mismatch",
        "bad_parent_pubkey",
        "parent_member_id_mismatch",
        "session_key_claimed",  # [ours] the key's proven owner took it back
    }
)


def _is_utf8_encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# States in which a transport exists (opening, handshaking or open).
_WITH_TRANSPORT = frozenset(
    {ConnectionState.CONNECTING, ConnectionState.HANDSHAKING, ConnectionState.OPEN}
)


def is_permanent_close(code: int | None, reason: str, refusal: str | None = None) -> bool:
    """Whether a close (with the hello refusal that preceded it) stops reconnecting.

    docs/protocol.md §6: ``1000 session_replaced``, ``1008`` with an identity
    refusal, ``4001 kicked`` and ``4002 banned`` are final; everything else
    (1000 otherwise, 1001, 1006, 1009, 1008 ``timestamp_skew``/``capacity``)
    is a reason to reconnect.
    """
    if code in (4001, 4002):
        return True
    if code == 1000:
        return reason == "session_replaced"
    if code == 1008:
        return reason in PERMANENT_REFUSALS or (not reason and refusal in PERMANENT_REFUSALS)
    return False


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Who this peer is and where its broker is.

    ``signer`` holds the member key. With ``session_signer`` (a session key,
    docs/protocol.md §3.2) every transport opens with ``session_hello``: a parent
    attestation minted afresh, valid ``attestation_ttl_ms`` (at most 24 h),
    signed by the member key, and the hello signed by the session key.
    Without it, the transport opens with a member ``hello``, which may still
    name a ``session_pubkey`` so that the broker can reattach the session.

    ``pid`` and ``cwd`` are reported in the hello; the core does not read them
    from the process, the adapters fill them in.
    """

    url: str
    mesh_id: str
    member_id: str
    signer: Signer
    session_id: str
    pid: int = 0
    cwd: str = ""
    display_name: str | None = None
    hostname: str | None = None
    peer_type: str | None = None
    groups: tuple[Group, ...] | None = None
    session_pubkey: str | None = None
    sealer: Sealer = field(default_factory=PlaintextSealer)
    session_signer: Signer | None = None
    attestation_ttl_ms: int = ATTESTATION_MAX_TTL_MS
    role: str | None = None

    def __post_init__(self) -> None:
        if not 0 < self.attestation_ttl_ms <= ATTESTATION_MAX_TTL_MS:
            raise LocalProtocolError(
                f"attestation_ttl_ms must be in (0, {ATTESTATION_MAX_TTL_MS}], "
                f"got {self.attestation_ttl_ms!r}"
            )


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """Timers (seconds), bounds and policies. The defaults are docs/protocol.md §7's."""

    connect_timeout: float = 10.0
    hello_timeout: float = 5.0
    ack_timeout: float = 10.0
    request_timeout: float = 10.0
    ping_interval: float = 30.0
    liveness_timeout: float = 75.0
    max_outbox: int = 100
    inbox_limit: int = 500
    dedupe_window: int = 4096
    max_requests: int = 64
    resend_in_flight: bool = True
    backoff: Backoff = field(default_factory=Backoff)

    def __post_init__(self) -> None:
        for name in (
            "connect_timeout",
            "hello_timeout",
            "ack_timeout",
            "request_timeout",
            "ping_interval",
            "liveness_timeout",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and value > 0):
                raise LocalProtocolError(
                    f"{name} must be a positive number of seconds, got {value!r}"
                )
        for name in ("max_outbox", "dedupe_window", "max_requests"):
            value = getattr(self, name)
            if isinstance(value, bool) or not (isinstance(value, int) and value >= 1):
                raise LocalProtocolError(f"{name} must be a positive integer, got {value!r}")
        limit = self.inbox_limit
        if isinstance(limit, bool) or not (isinstance(limit, int) and limit >= 0):
            raise LocalProtocolError(f"inbox_limit must be >= 0, got {self.inbox_limit!r}")


@dataclass(frozen=True, slots=True)
class Counters:
    """A snapshot of what the connection has done so far."""

    frames_in: int = 0
    frames_out: int = 0
    reconnects: int = 0
    resends: int = 0
    duplicate_pushes: int = 0
    dropped_pushes: int = 0


@dataclass(frozen=True, slots=True)
class SendHandle:
    """What ``send()`` returns at once; the outcome arrives as an event with ``id``."""

    id: str
    target_spec: str
    priority: str

    @property
    def client_message_id(self) -> str:
        return self.id


class _PendingSend:
    __slots__ = ("deadline", "id", "text", "writes")

    def __init__(self, send_id: str, text: str) -> None:
        self.id = send_id
        self.text = text
        self.deadline = 0.0
        self.writes = 0


class _PendingRequest:
    __slots__ = ("deadline", "id", "written")

    def __init__(self, request_id: str, deadline: float) -> None:
        self.id = request_id
        self.deadline = deadline
        self.written = False


class ClientConnection:
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
        self._inbox: deque[MessageReceived | UnreadableMessage] = deque()
        # Sends: every unresolved one by id; the unwritten ones in order; the
        # written ones in write order (so the first has the earliest deadline).
        self._sends: dict[str, _PendingSend] = {}
        self._outbox: deque[_PendingSend] = deque()
        self._in_flight: dict[str, _PendingSend] = {}
        self._requests: dict[str, _PendingRequest] = {}
        self._seen: dict[str, None] = {}
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
        # Counters.
        self._frames_in = 0
        self._frames_out = 0
        self._reconnects = 0
        self._resends = 0
        self._duplicates = 0
        self._dropped = 0

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
            self._duplicates,
            self._dropped,
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
        return len(self._inbox)

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

    def take_messages(self, limit: int | None = None) -> list[MessageReceived | UnreadableMessage]:
        """Remove and return up to ``limit`` messages from the inbox, oldest first."""
        inbox = self._inbox
        count = len(inbox) if limit is None else min(limit, len(inbox))
        return [inbox.popleft() for _ in range(count)]

    def next_deadline(self) -> float | None:
        """When ``handle_timer`` should next run, or ``None`` if nothing is timed."""
        best = self._state_deadline
        if self._state is ConnectionState.OPEN:
            due = min(self._ping_due, self._last_inbound + self.options.liveness_timeout)
            best = due if best is None or due < best else best
        if self._in_flight:
            due = next(iter(self._in_flight.values())).deadline
            best = due if best is None or due < best else best
        if self._requests:
            due = next(iter(self._requests.values())).deadline
            best = due if best is None or due < best else best
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
        self, target: str, body: str | bytes, priority: str = "next", *, now: float
    ) -> SendHandle:
        """Queue a message for ``target``; the outcome arrives as an event.

        Raises :class:`LocalProtocolError`, before any state changes, for a
        closed connection, a malformed target, an unknown priority, a body
        that is not ``str``/``bytes`` or larger than 64 KiB, or a frame that
        would exceed 64 KiB once encoded.
        """
        if self._state is ConnectionState.CLOSED:
            raise LocalProtocolError("cannot send: the connection is closed")
        check_target(target)
        if not isinstance(priority, str) or priority not in PRIORITIES:
            raise LocalProtocolError(
                f"priority must be one of 'now', 'next', 'low', got {priority!r}"
            )
        if isinstance(body, str):
            try:
                data = body.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise LocalProtocolError(f"body is not valid Unicode text: {exc}") from None
        elif isinstance(body, (bytes, bytearray, memoryview)):
            data = bytes(body)
        else:
            raise LocalProtocolError(f"body must be str or bytes, got {type(body).__name__}")
        if len(data) > MAX_FRAME_BYTES:
            raise LocalProtocolError(
                f"body is {len(data)} bytes; the protocol allows at most {MAX_FRAME_BYTES}"
            )
        rng = self._rng
        send_id = f"{rng.getrandbits(64):016x}"
        while send_id in self._sends:
            send_id = f"{rng.getrandbits(64):016x}"
        nonce, ciphertext = self.config.sealer.seal(target, data, rng)
        text = encode(Send(send_id, target, priority, nonce, ciphertext, send_id))
        size = len(text) if text.isascii() else len(text.encode("utf-8"))
        if size > MAX_FRAME_BYTES:
            raise LocalProtocolError(
                f"the encoded send is {size} bytes; the broker accepts at most "
                f"{MAX_FRAME_BYTES} (send a smaller body)"
            )
        handle = SendHandle(send_id, target, priority)
        if len(self._sends) >= self.options.max_outbox:
            detail = (
                f"{len(self._sends)} sends already pending (max_outbox={self.options.max_outbox})"
            )
            self._events.append(SendFailed(send_id, FailureReason.of(QUEUE_FULL, detail)))
            return handle
        record = _PendingSend(send_id, text)
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
        if not isinstance(summary, str):
            raise LocalProtocolError(f"summary must be a str, got {type(summary).__name__}")
        if not _is_utf8_encodable(summary):
            raise LocalProtocolError("summary is not valid Unicode text (lone surrogate)")
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
        request = _PendingRequest(request_id, now + self.options.request_timeout)
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
        self._write(encode(self._hello(wall_time_ms)))

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
            self._resolve(
                last.id,
                SendFailed(last.id, FailureReason.of(PAYLOAD_TOO_LARGE, "closed with 1009")),
            )
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
        self._dispatch(frame, now)

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
        if self._state is ConnectionState.OPEN:
            # Same expression as next_deadline(), so float rounding cannot
            # leave a deadline at or before ``now``.
            if now >= self._last_inbound + self.options.liveness_timeout:
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
            self._resolve(record.id, SendFailed(record.id, FailureReason.of(ACK_TIMEOUT, detail)))
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
                    self._resolve(frame.id, SendAcked(frame.id, frame.message_id))
                else:
                    reason = classify_ack_error(frame.error or "rejected without a reason")
                    self._resolve(frame.id, SendFailed(frame.id, reason))
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

    def _on_hello_ack(self, ack: HelloAck, now: float) -> None:
        self._attempt = 0
        self._state_deadline = None
        self._ping_due = now + self.options.ping_interval
        self._set_state(ConnectionState.OPEN)
        self._events.append(HandshakeComplete(ack))
        if self._status is not None:
            self._write(encode(SetStatus(self._status)))
        if self._summary is not None:
            self._write(encode(SetSummary(self._summary)))
        outbox = self._outbox
        while outbox:
            self._write_send(outbox.popleft(), now)
        for request in self._requests.values():
            if not request.written:
                self._write_request(request)

    def _on_push(self, push: Push) -> None:
        self._write(encode(ClientAck(push.client_message_id, push.message_id)))
        key = push.client_message_id or push.message_id
        seen = self._seen
        if key in seen:
            self._duplicates += 1
            return
        seen[key] = None
        if len(seen) > self.options.dedupe_window:
            del seen[next(iter(seen))]
        if push.subtype == "system":
            self._events.append(
                SystemMessage(push.event or "", push.event_data or {}, push.message_id, push)
            )
            return
        message: MessageReceived | UnreadableMessage
        try:
            body = self.config.sealer.open(push)
        except OpenError as exc:
            message = UnreadableMessage(push.message_id, push.sender_pubkey, str(exc), push)
        else:
            message = MessageReceived(
                push.message_id,
                push.client_message_id,
                push.sender_pubkey,
                push.priority,
                body,
                push.created_at,
                push,
            )
        self._events.append(message)
        limit = self.options.inbox_limit
        if limit:
            inbox = self._inbox
            if len(inbox) >= limit:
                inbox.popleft()
                self._dropped += 1
            inbox.append(message)

    def _on_error(self, frame: ErrorFrame, now: float) -> None:
        if frame.id is not None and frame.id in self._in_flight:
            self._resolve(
                frame.id, SendFailed(frame.id, classify_error_frame(frame.code, frame.message))
            )
            return
        if frame.req_id is not None and self._requests.pop(frame.req_id, None) is not None:
            self._events.append(
                RequestFailed(frame.req_id, classify_error_frame(frame.code, frame.message))
            )
            return
        self._events.append(BrokerError(frame.code, frame.message))
        if self._state is ConnectionState.HANDSHAKING:
            # A refused hello: the broker closes next. Act on the refusal now
            # rather than wait for the close, which may never come.
            self._refusal = frame.code
            if frame.code in PERMANENT_REFUSALS:
                self._detach(1000, "hello refused")
                self._finish(
                    FailureReason.of(REFUSED, f"{frame.code}: {frame.message}"),
                    Closed(f"broker refused the hello: {frame.code}: {frame.message}", None),
                )
            elif frame.code != "no_hello":
                self._drop(now, f"hello refused: {frame.code}")

    # --- internals ------------------------------------------------------------

    def _hello(self, wall_time_ms: int) -> Hello | SessionHello:
        config = self.config
        if config.session_signer is not None:
            return self._session_hello(wall_time_ms, config.session_signer)
        pubkey = config.signer.public_key
        payload = hello_signing_payload(config.mesh_id, config.member_id, pubkey, wall_time_ms)
        return Hello(
            mesh_id=config.mesh_id,
            member_id=config.member_id,
            pubkey=pubkey,
            session_id=config.session_id,
            pid=config.pid,
            cwd=config.cwd,
            timestamp=wall_time_ms,
            signature=config.signer.sign(payload).hex(),
            session_pubkey=config.session_pubkey,
            display_name=config.display_name,
            hostname=config.hostname,
            peer_type=config.peer_type,
            groups=config.groups,
        )

    def _session_hello(self, wall_time_ms: int, session: Signer) -> SessionHello:
        config = self.config
        member_pubkey = config.signer.public_key
        session_pubkey = session.public_key
        expires_at = wall_time_ms + config.attestation_ttl_ms
        attestation = ParentAttestation(
            session_pubkey=session_pubkey,
            parent_member_pubkey=member_pubkey,
            expires_at=expires_at,
            signature=config.signer.sign(
                attestation_signing_payload(member_pubkey, session_pubkey, expires_at)
            ).hex(),
        )
        payload = session_hello_signing_payload(
            config.mesh_id, member_pubkey, session_pubkey, wall_time_ms
        )
        return SessionHello(
            mesh_id=config.mesh_id,
            parent_member_id=config.member_id,
            parent_member_pubkey=member_pubkey,
            session_pubkey=session_pubkey,
            parent_attestation=attestation,
            session_id=config.session_id,
            pid=config.pid,
            cwd=config.cwd,
            timestamp=wall_time_ms,
            signature=session.sign(payload).hex(),
            display_name=config.display_name,
            hostname=config.hostname,
            peer_type=config.peer_type,
            groups=config.groups,
            role=config.role,
        )

    def _set_state(self, new: ConnectionState) -> None:
        old = self._state
        if old is not new:
            self._state = new
            self._events.append(StateChanged(old, new))

    def _write(self, text: str) -> None:
        self._frames_out += 1
        self._actions.append(WriteFrame(text))

    def _write_send(self, record: _PendingSend, now: float) -> None:
        if record.writes:
            self._resends += 1
        record.writes += 1
        record.deadline = now + self.options.ack_timeout
        self._in_flight[record.id] = record
        self._frames_out += 1
        self._actions.append(WriteFrame(record.text))

    def _write_request(self, request: _PendingRequest) -> None:
        request.written = True
        self._write(encode(ListPeers(request.id)))

    def _resolve(self, send_id: str, outcome: SendAcked | SendFailed) -> None:
        record = self._sends.pop(send_id)
        if self._in_flight.pop(send_id, None) is None:
            self._outbox.remove(record)
        self._events.append(outcome)

    def _open_transport(self, now: float) -> None:
        self._transport_id += 1
        self._set_state(ConnectionState.CONNECTING)
        self._state_deadline = now + self.options.connect_timeout
        self._actions.append(OpenTransport(self.config.url, self._transport_id))

    def _detach(self, code: int, reason: str) -> None:
        """Close the current transport; the core forgets it at once."""
        self._attached = False
        self._transport_id += 1  # anything still reported for the old one is stale
        self._actions.append(CloseTransport(code, reason))

    def _drop(self, now: float, cause: str) -> None:
        """Give up on the current transport (timeout, refusal) and reconnect."""
        logger.debug("dropping transport: %s", cause)
        self._detach(1000, cause[:120])
        self._link_lost(now, cause)

    def _link_lost(self, now: float, cause: str) -> None:
        if self._in_flight:
            if self.options.resend_in_flight:
                self._outbox.extendleft(reversed(self._in_flight.values()))
                self._in_flight.clear()
            else:
                reason = FailureReason.of(CONNECTION_LOST, cause)
                for send_id in list(self._in_flight):
                    self._resolve(send_id, SendFailed(send_id, reason))
        for request in self._requests.values():
            request.written = False
        delay = self.options.backoff.delay(self._attempt, self._rng)
        self._attempt += 1
        self._set_state(ConnectionState.RECONNECTING)
        self._state_deadline = now + delay
        self._events.append(ReconnectScheduled(now + delay, delay, self._attempt, cause))

    def _finish(self, reason: FailureReason, closed: Closed) -> None:
        """Enter CLOSED: fail everything pending with ``reason``."""
        for send_id in list(self._sends):
            self._resolve(send_id, SendFailed(send_id, reason))
        for request_id in list(self._requests):
            del self._requests[request_id]
            self._events.append(RequestFailed(request_id, reason))
        self._state_deadline = None
        self._set_state(ConnectionState.CLOSED)
        self._events.append(closed)
