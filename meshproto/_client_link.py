"""A client's links and failures: a link opened, refused, lost or ended, and a failed send.

:class:`~meshproto.ClientConnection` inherits these methods from
:class:`_ClientLink`; they work on its state, set up in its ``__init__``
(the attributes they use are declared below). They run once per transport or
once per failure, not once per message: the ``hello_ack`` that opens a link
(the acknowledgements owed, the presence and the outbox written), the
broker's error frames (a refused send, request or hello), opening and closing
a transport, losing a link (sends in flight back to the outbox, the backoff
and its reset once a link has proved itself), the end in CLOSED, and how a
send that was not acknowledged resolves (not delivered, or outcome unknown).
They are apart so that :mod:`meshproto._client` keeps its theory of
operation (the rules these follow), its inputs and the per-message path.
"""

from __future__ import annotations

import logging
from collections import deque
from random import Random
from typing import TYPE_CHECKING

from ._client_sends import PendingRequest, PendingSend
from ._codec import encode
from ._config import ClientConfig, ClientOptions
from ._events import (
    Action,
    BrokerError,
    Closed,
    CloseTransport,
    ConnectionState,
    Event,
    HandshakeComplete,
    OpenTransport,
    ReconnectScheduled,
    RequestFailed,
    SendAcked,
    SendFailed,
    SendOutcomeUnknown,
)
from ._frames import ErrorFrame, HelloAck, SetStatus, SetSummary
from ._reasons import CONNECTION_LOST, REFUSED, FailureReason, classify_error_frame
from ._refusals import PERMANENT_REFUSALS

__all__: list[str] = []

logger = logging.getLogger("meshproto.client")


class _ClientLink:
    """The life of a client's transports (the module docstring)."""

    if TYPE_CHECKING:
        # What ClientConnection provides: the state these methods use (set in
        # its __init__) and the helpers they call. For the type checker only,
        # so that ClientConnection's documented signature stays its own.
        config: ClientConfig
        options: ClientOptions
        _rng: Random
        _state: ConnectionState
        _actions: list[Action]
        _events: list[Event]
        _owed_acks: list[str]
        _sends: dict[str, PendingSend]
        _outbox: deque[PendingSend]
        _in_flight: dict[str, PendingSend]
        _requests: dict[str, PendingRequest]
        _status: str | None
        _summary: str | None
        _transport_id: int
        _attached: bool
        _state_deadline: float | None
        _ping_due: float
        _attempt: int
        _refusal: str | None
        _opened_at: float | None
        _acked_on_link: bool

        def _set_state(self, new: ConnectionState) -> None: ...
        def _write(self, text: str) -> None: ...
        def _write_send(self, record: PendingSend, now: float) -> None: ...
        def _write_request(self, request: PendingRequest) -> None: ...
        def _resolve(
            self, send_id: str, outcome: SendAcked | SendFailed | SendOutcomeUnknown
        ) -> None: ...

    def _on_hello_ack(self, ack: HelloAck, now: float) -> None:
        self._state_deadline = None
        self._opened_at = now
        self._acked_on_link = False
        self._ping_due = now + self.options.ping_interval
        self._set_state(ConnectionState.OPEN)
        self._events.append(HandshakeComplete(ack))
        if self._owed_acks:
            owed, self._owed_acks = self._owed_acks, []
            for client_ack in owed:
                self._write(client_ack)
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

    def _on_error(self, frame: ErrorFrame, now: float) -> None:
        if frame.id is not None and frame.id in self._in_flight:
            reason = classify_error_frame(frame.code, frame.message)
            self._fail_send(frame.id, reason, answered=True)
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
                    self._fail_send(send_id, reason, answered=False)
        for request in self._requests.values():
            request.written = False
        opened_at, self._opened_at = self._opened_at, None
        if opened_at is not None and (
            self._acked_on_link or now - opened_at >= self.options.proven_after
        ):
            self._attempt = 0  # the link proved itself: start the backoff again
        self._acked_on_link = False
        delay = self.options.backoff.delay(self._attempt, self._rng)
        self._attempt += 1
        self._set_state(ConnectionState.RECONNECTING)
        self._state_deadline = now + delay
        self._events.append(ReconnectScheduled(now + delay, delay, self._attempt, cause))

    def _finish(self, reason: FailureReason, closed: Closed) -> None:
        """Enter CLOSED: fail everything pending with ``reason``."""
        for send_id in list(self._sends):
            self._fail_send(send_id, reason, answered=False)
        for request_id in list(self._requests):
            del self._requests[request_id]
            self._events.append(RequestFailed(request_id, reason))
        self._state_deadline = None
        self._set_state(ConnectionState.CLOSED)
        self._events.append(closed)

    def _fail_send(self, send_id: str, reason: FailureReason, *, answered: bool) -> None:
        """Resolve a send that was not acknowledged.

        ``answered``: the broker refused the latest write itself. The send is
        known not delivered if it was never written, or if that refusal
        answers its only write; otherwise an earlier write may have landed.
        """
        record = self._sends[send_id]
        if record.writes == 0 or (answered and record.writes == 1):
            self._resolve(send_id, SendFailed(send_id, reason))
        else:
            self._resolve(send_id, SendOutcomeUnknown(send_id, record.client_message_id, reason))
