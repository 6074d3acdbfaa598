"""What the client connection hands back after each input.

*Actions* are for the transport, in the order they must be carried out:
open a WebSocket, write a text frame, send a ping, close. *Events* are for
the application. Both are frozen dataclasses; an adapter matches on their
types.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._errors import RemoteProtocolError
from ._frames import HelloAck, Peer, Push
from ._quick import quick_init
from ._reasons import FailureReason

__all__ = [
    "Action",
    "BrokerError",
    "CloseTransport",
    "Closed",
    "ConnectionState",
    "Event",
    "HandshakeComplete",
    "InternalError",
    "MalformedFrame",
    "MessageReceived",
    "OpenTransport",
    "PeersListed",
    "ReconnectScheduled",
    "RequestFailed",
    "SendAcked",
    "SendFailed",
    "SendOutcomeUnknown",
    "SendPing",
    "StateChanged",
    "SystemMessage",
    "UnreadableMessage",
    "WriteFrame",
]


class ConnectionState(str, enum.Enum):
    """Where the client connection is; see the theory of operation in ``_client``."""

    IDLE = "idle"
    CONNECTING = "connecting"
    HANDSHAKING = "handshaking"
    OPEN = "open"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"

    def __str__(self) -> str:
        return self.value


# --- actions for the transport ---------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenTransport:
    """Open a WebSocket to ``url``; report back with ``transport_id``."""

    url: str
    transport_id: int


@quick_init
@dataclass(frozen=True, slots=True)
class WriteFrame:
    """Write ``text`` as one WebSocket text message on the current transport."""

    text: str


@dataclass(frozen=True, slots=True)
class SendPing:
    """Send a WebSocket ping control frame."""

    payload: bytes = b""


@dataclass(frozen=True, slots=True)
class CloseTransport:
    """Close the current transport with ``code`` and ``reason``.

    The core has already let go of it: nothing more read from it, its close
    included, may be fed back in.
    """

    code: int
    reason: str


Action = OpenTransport | WriteFrame | SendPing | CloseTransport


# --- events for the application --------------------------------------------


@dataclass(frozen=True, slots=True)
class StateChanged:
    old: ConnectionState
    new: ConnectionState


@dataclass(frozen=True, slots=True)
class HandshakeComplete:
    """``hello_ack`` arrived; the connection is open."""

    ack: HelloAck


@quick_init
@dataclass(frozen=True, slots=True)
class SendAcked:
    """The broker accepted send ``send_id`` as ``message_id``."""

    send_id: str
    message_id: str


@dataclass(frozen=True, slots=True)
class SendFailed:
    """Send ``send_id`` failed and was not delivered; it will never be written again.

    Either it was never written, or the broker refused the one write of it.
    """

    send_id: str
    reason: FailureReason


@dataclass(frozen=True, slots=True)
class SendOutcomeUnknown:
    """Send ``send_id`` got no answer that settles it: it **may have been delivered**.

    It was written at least once and then: no ack came in time
    (``ack_timeout``), the link dropped (``connection_lost``, with
    ``resend_in_flight=False``), the client closed or was refused, or a
    re-send was refused after an earlier write may have been accepted. It
    will never be written again. To retry without risking a duplicate, send
    the same message again with ``client_message_id=`` this value: the
    receiver (and the reference broker) deduplicate on it.
    """

    send_id: str
    client_message_id: str
    reason: FailureReason


@quick_init
@dataclass(frozen=True, slots=True)
class MessageReceived:
    """A message pushed to us, seen for the first time, with its opened body.

    With an inbox (``ClientOptions.inbox_limit > 0``) this event says the
    message is waiting there; it is handed over, and acknowledged to the
    broker, when :meth:`~meshproto.ClientConnection.take_messages` returns it
    (or, taken with ``acknowledge=False``, when
    :meth:`~meshproto.ClientConnection.acknowledge` is called with it).
    Without one, this event is the hand-over.
    """

    message_id: str
    client_message_id: str | None
    sender_pubkey: str
    priority: str
    body: bytes
    created_at: str
    push: Push

    @property
    def text(self) -> str:
        """The body as text (undecodable bytes are replaced, never raised)."""
        return self.body.decode("utf-8", errors="replace")


@dataclass(frozen=True, slots=True)
class UnreadableMessage:
    """A message pushed to us whose body could not be opened."""

    message_id: str
    sender_pubkey: str
    reason: str
    push: Push


@dataclass(frozen=True, slots=True)
class SystemMessage:
    """A ``subtype: system`` push: ``peer_joined``, ``peer_left`` ..."""

    event: str
    data: Mapping[str, Any]
    message_id: str
    push: Push


@dataclass(frozen=True, slots=True)
class PeersListed:
    request_id: str
    peers: tuple[Peer, ...]


@dataclass(frozen=True, slots=True)
class RequestFailed:
    request_id: str
    reason: FailureReason


@dataclass(frozen=True, slots=True)
class BrokerError:
    """An ``error`` frame that answers nothing we have in flight."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class MalformedFrame:
    """The broker sent something the protocol forbids; it was dropped."""

    error: RemoteProtocolError


@dataclass(frozen=True, slots=True)
class InternalError:
    """An unexpected exception (a bug) while handling input; the transport was dropped.

    The connection reconnects as after any other link loss. ``during`` says
    what was being handled.
    """

    error: BaseException
    during: str


@dataclass(frozen=True, slots=True)
class ReconnectScheduled:
    """The next connection attempt, number ``attempt``, is due at ``at``."""

    at: float
    delay: float
    attempt: int
    cause: str


@dataclass(frozen=True, slots=True)
class Closed:
    """The connection stopped for good. ``permanent`` refusals carry the broker's reason."""

    reason: str
    code: int | None = None
    by_user: bool = False


Event = (
    StateChanged
    | HandshakeComplete
    | SendAcked
    | SendFailed
    | SendOutcomeUnknown
    | MessageReceived
    | UnreadableMessage
    | SystemMessage
    | PeersListed
    | RequestFailed
    | BrokerError
    | MalformedFrame
    | InternalError
    | ReconnectScheduled
    | Closed
)
