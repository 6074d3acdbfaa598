"""A client's sends before they are written: validation, ids, encoding, and the records kept.

:meth:`meshproto.ClientConnection.send` validates and encodes each send once,
here, before any state changes; the connection then keeps a
:class:`PendingSend` for it until it resolves (the rules are in the theory
of operation of :mod:`meshproto._client`). A ``list_peers`` request is kept
as a :class:`PendingRequest`.
"""

from __future__ import annotations

from collections.abc import Mapping
from random import Random

from ._codec import frame_text
from ._config import MAX_FRAME_BYTES, PRIORITIES, check_text
from ._errors import LocalProtocolError
from ._frames import Send
from ._seams import Sealer
from ._targets import check_target

__all__ = [
    "MAX_CLIENT_MESSAGE_ID",
    "PendingRequest",
    "PendingSend",
    "check_client_message_id",
    "encode_send",
]

_send_text = frame_text(Send)  # the frame's text, without making the frame

#: The longest ``client_message_id`` a caller may choose.
MAX_CLIENT_MESSAGE_ID = 128


class PendingSend:
    """One unresolved send: its ids, its encoded frame, its ack deadline and writes so far."""

    __slots__ = ("client_message_id", "deadline", "id", "text", "writes")

    def __init__(self, send_id: str, client_message_id: str, text: str) -> None:
        self.id = send_id
        self.client_message_id = client_message_id
        self.text = text
        self.deadline = 0.0
        self.writes = 0


class PendingRequest:
    """One unanswered ``list_peers`` request."""

    __slots__ = ("deadline", "id", "written")

    def __init__(self, request_id: str, deadline: float) -> None:
        self.id = request_id
        self.deadline = deadline
        self.written = False


def check_client_message_id(client_message_id: object, sends: Mapping[str, PendingSend]) -> None:
    """Raise :class:`LocalProtocolError` unless ``client_message_id`` may be used now."""
    check_text(client_message_id, "client_message_id")
    assert isinstance(client_message_id, str)
    if not 0 < len(client_message_id) <= MAX_CLIENT_MESSAGE_ID or not (
        client_message_id.isprintable()
    ):
        raise LocalProtocolError(
            f"client_message_id must be 1 to {MAX_CLIENT_MESSAGE_ID} printable "
            f"characters, got {client_message_id!r}"
        )
    for record in sends.values():
        if record.client_message_id == client_message_id:
            raise LocalProtocolError(
                f"a send with client_message_id {client_message_id!r} is already pending "
                f"(send {record.id}): wait for its outcome before retrying it"
            )


def encode_send(
    target: str,
    body: str | bytes,
    priority: str,
    *,
    client_message_id: str | None,
    sealer: Sealer,
    rng: Random,
    sends: Mapping[str, PendingSend],
) -> tuple[str, str, str]:
    """Validate a send and encode it: ``(send id, client_message_id, frame text)``.

    The send id is fresh (not among ``sends``). Raises
    :class:`LocalProtocolError` as :meth:`meshproto.ClientConnection.send`
    documents, having drawn nothing from ``rng`` if the arguments are wrong.
    """
    check_target(target)
    if client_message_id is not None:
        check_client_message_id(client_message_id, sends)
    if not isinstance(priority, str) or priority not in PRIORITIES:
        raise LocalProtocolError(f"priority must be one of 'now', 'next', 'low', got {priority!r}")
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
    send_id = f"{rng.getrandbits(64):016x}"
    while send_id in sends:
        send_id = f"{rng.getrandbits(64):016x}"
    cmid = send_id if client_message_id is None else client_message_id
    nonce, ciphertext = sealer.seal(target, data, rng)
    text = _send_text(send_id, target, priority, nonce, ciphertext, cmid)
    size = len(text) if text.isascii() else len(text.encode("utf-8"))
    if size > MAX_FRAME_BYTES:
        raise LocalProtocolError(
            f"the encoded send is {size} bytes; the broker accepts at most "
            f"{MAX_FRAME_BYTES} (send a smaller body)"
        )
    return send_id, cmid, text
