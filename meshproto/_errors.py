"""The two exception families, named for who erred.

``LocalProtocolError`` means *the caller* misused the API (a bad priority, a
body that is too large, a send after ``close()``). It is raised before any
state changes, so the connection is exactly as it was.

``RemoteProtocolError`` means *the peer* sent something the protocol does not
allow (malformed JSON, a binary message, a field of the wrong type). The codec
raises it; the client connection never lets it escape and turns it into a
:class:`~meshproto.MalformedFrame` event instead.
"""

from __future__ import annotations

from ._reasons import FailureReason

__all__ = [
    "ConnectionClosedError",
    "LocalProtocolError",
    "MeshProtoError",
    "RemoteProtocolError",
    "RequestError",
    "SendError",
    "SendOutcomeUnknownError",
]


class MeshProtoError(Exception):
    """Base class of every error meshproto raises on purpose."""


class LocalProtocolError(MeshProtoError):
    """The caller asked for something the protocol or the API forbids."""


class RemoteProtocolError(MeshProtoError):
    """The remote side sent something the protocol forbids."""


class SendError(MeshProtoError):
    """A send was not delivered; ``reason`` says why and whether retrying can help.

    Raised by the adapters' blocking and awaiting ``send()``, never by the
    core. Its subclass :class:`SendOutcomeUnknownError` means the send *may*
    have been delivered.
    """

    #: Whether the send may have been delivered after all (see the subclass).
    outcome_unknown = False

    def __init__(self, send_id: str, reason: FailureReason) -> None:
        super().__init__(f"send {send_id} failed: {reason}")
        self.send_id = send_id
        self.reason = reason

    @property
    def retryable(self) -> bool:
        return self.reason.retryable


def _plain(reason: FailureReason) -> str:
    """A reason without its retryable/permanent label (which an unknown outcome lacks)."""
    return f"{reason.code}: {reason.detail}" if reason.detail else reason.code


class SendOutcomeUnknownError(SendError):
    """No answer settled the send: it **may have been delivered**.

    Retry it, if you must, with ``send(..., client_message_id=error.client_message_id)``:
    the receiver deduplicates on that key, so the retry cannot make a second
    copy. A retry under a new key might.
    """

    outcome_unknown = True

    def __init__(self, send_id: str, client_message_id: str, reason: FailureReason) -> None:
        MeshProtoError.__init__(
            self,
            f"send {send_id}: outcome unknown, it may have been delivered "
            f"({_plain(reason)}); retry only with client_message_id={client_message_id!r}",
        )
        self.send_id = send_id
        self.client_message_id = client_message_id
        self.reason = reason


class RequestError(MeshProtoError):
    """A request (``list_peers``) failed; ``reason`` says why."""

    def __init__(self, request_id: str, reason: FailureReason) -> None:
        super().__init__(f"request {request_id} failed: {reason}")
        self.request_id = request_id
        self.reason = reason


class ConnectionClosedError(MeshProtoError):
    """The client is closed (by the user, or for good by the broker); ``reason`` says which."""

    def __init__(self, reason: str, code: int | None = None) -> None:
        super().__init__(reason if code is None else f"{reason} (close code {code})")
        self.reason = reason
        self.code = code
