"""One WebSocket connection, client or server side; no I/O.

wsproto does the opening handshake; the frames after it are read and built by
:mod:`meshproto_ws._frames` (why, and its rules, are in that module's
docstring). :class:`WsConnection` joins the two and takes on, once for every
meshproto adapter, the duties a WebSocket's user has:

* the client handshake for a parsed ``ws://``/``wss://`` URL, and the server
  handshake, which upgrades only the path ``/ws`` (any other path gets a 404
  response, a request that is not a WebSocket upgrade gets wsproto's 400, and
  an upgrade request that carries a body, or a header that is not ASCII, a
  400 of ours; a response with such a header is a bad handshake);
* handing the frame reader whatever arrived behind the handshake in the same
  read, so that nothing a peer sends early is lost;
* answering pings, echoing a close the peer started;
* a cap on the size of a received message (closing with 1009 "message too
  big" as soon as a frame header shows the message is past it, without
  waiting for the rest);
* reporting protocol errors (a bad frame, invalid UTF-8) by closing with the
  code RFC 6455 names, and turning EOF into a close without a close frame.

Bytes in, events out: :meth:`WsConnection.receive_data` takes bytes from the
socket (``None`` for EOF) and returns :data:`WsEvent` values. Everything that
must go out on the socket, whether the caller asked for it (``send_text``,
``send_ping``, ``close``) or the connection produced it on its own (the
handshake, a pong, a close echo), is appended to one outgoing buffer that
:meth:`WsConnection.data_to_send` hands over, so bytes leave in the order they
were produced. Call ``data_to_send()`` after every method.

States (:class:`WsState`)::

    CONNECTING --handshake done--> OPEN --close() / peer close / error--> CLOSING | CLOSED
    CONNECTING --handshake refused, EOF--> CLOSED
    CLOSING --peer's close echo, EOF--> CLOSED

``CLOSING`` means this side has sent its close frame and waits for the peer's
echo; nothing received in it is delivered. In ``CLOSED`` the socket can be
closed once ``data_to_send()`` is flushed. :class:`Closed` is reported exactly
once per connection, when it stops carrying messages, unless :meth:`close`
was called first (the caller knows then).
"""

from __future__ import annotations

import contextlib
import enum
import re
from dataclasses import dataclass

import h11
import wsproto
import wsproto.events as wse
import wsproto.utilities

from meshproto._quick import quick_init

from ._entropy import fresh_mask
from ._frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameError,
    FrameReader,
    ReadFrame,
    client_text_frame,
    close_payload,
    encode_frame,
    server_text_frame,
)
from ._url import DEFAULT_PATH, WsAddress

__all__ = [
    "CLIENT_MAX_MESSAGE_BYTES",
    "CLOSE_MESSAGE_TOO_BIG",
    "SERVER_MAX_MESSAGE_BYTES",
    "BinaryReceived",
    "Closed",
    "Opened",
    "PingReceived",
    "PongReceived",
    "Role",
    "TextReceived",
    "WsConnection",
    "WsEvent",
    "WsState",
    "server_text_frame",
]

#: Received-message cap on the client side. The protocol caps a send's
#: *payload* at 65,536 bytes (docs/protocol.md §1), and the push that carries
#: it adds an envelope, so a push can exceed 65,536 bytes; a ``peers_list`` of
#: a large mesh is larger still (a thousand peers with long paths and
#: summaries come to a few megabytes). A cap too small would refuse a legal
#: frame that the broker sends again after every reconnect, so the client
#: would loop; 8 MiB bounds memory and refuses nothing a broker legitimately
#: sends.
CLIENT_MAX_MESSAGE_BYTES = 8 * 1_048_576
#: Received-message hard cap on the server side (docs/protocol.md §1, [ours]).
SERVER_MAX_MESSAGE_BYTES = 1_048_576
#: The close code for a message over the cap (RFC 6455 §7.4.1).
CLOSE_MESSAGE_TOO_BIG = 1009


#: Where an HTTP head ends, by h11's own rule (a line feed, an optional
#: carriage return, a line feed): what follows it is the first frames.
_END_OF_HEAD = re.compile(rb"\n\r?\n")


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class WsState(enum.Enum):
    CONNECTING = "connecting"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Opened:
    """The handshake is done; ``target`` is the request target (path and query)."""

    target: str


@quick_init
@dataclass(frozen=True, slots=True)
class TextReceived:
    """A complete text message (fragments already joined)."""

    text: str


@dataclass(frozen=True, slots=True)
class BinaryReceived:
    """A complete binary message; meshproto's protocol forbids them, the owner decides."""

    data: bytes


@dataclass(frozen=True, slots=True)
class PingReceived:
    """A ping arrived; the pong is already in the outgoing buffer."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class PongReceived:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Closed:
    """The connection stopped carrying messages.

    ``code`` is the close code of the close that ended it, or ``None`` when no
    close frame was exchanged (EOF, a refused or malformed handshake: what
    RFC 6455 calls 1006). ``by_peer`` says whether the peer ended it (its
    close frame, EOF, a refused handshake) or this side did because the peer
    broke the protocol (a bad frame, a message over the cap, a bad handshake
    request); in the second case ``code`` is the code this side sent.
    """

    code: int | None
    reason: str
    by_peer: bool


WsEvent = Opened | TextReceived | BinaryReceived | PingReceived | PongReceived | Closed


class WsConnection:
    """A WebSocket connection over wsproto. See the module docstring."""

    def __init__(
        self,
        role: Role,
        *,
        address: WsAddress | None = None,
        max_message_bytes: int | None = None,
        path: str = DEFAULT_PATH,
    ) -> None:
        if role is Role.CLIENT and address is None:
            raise ValueError("a client WsConnection needs the address it connects to")
        if max_message_bytes is None:
            max_message_bytes = (
                CLIENT_MAX_MESSAGE_BYTES if role is Role.CLIENT else SERVER_MAX_MESSAGE_BYTES
            )
        if max_message_bytes < 1:
            raise ValueError(f"max_message_bytes must be positive, got {max_message_bytes}")
        self.role = role
        self.max_message_bytes = max_message_bytes
        self._path = path
        self._state = WsState.CONNECTING
        self._target = address.target if address is not None else ""
        self._out: list[bytes | memoryview] = []  # what is to be sent, as produced (not copied)
        self._masked = role is Role.CLIENT  # a client masks what it sends
        # The handshake, over wsproto, and the bytes it has been fed (a head
        # is at most h11's 16 KiB); both go once the connection opens.
        self._handshake: wsproto.WSConnection | None = wsproto.WSConnection(
            wsproto.ConnectionType.CLIENT if role is Role.CLIENT else wsproto.ConnectionType.SERVER
        )
        self._head = bytearray()
        self._reader: FrameReader | None = None  # from the moment the connection opens
        if address is not None and role is Role.CLIENT:
            request = wse.Request(host=address.host_header, target=address.target)
            self._queue(self._handshake.send(request))

    @classmethod
    def client(cls, address: WsAddress, *, max_message_bytes: int | None = None) -> WsConnection:
        """A client connection; its handshake request is already in ``data_to_send()``."""
        return cls(Role.CLIENT, address=address, max_message_bytes=max_message_bytes)

    @classmethod
    def server(
        cls, *, max_message_bytes: int | None = None, path: str = DEFAULT_PATH
    ) -> WsConnection:
        """A server connection that upgrades requests for ``path`` only."""
        return cls(Role.SERVER, max_message_bytes=max_message_bytes, path=path)

    @property
    def state(self) -> WsState:
        return self._state

    # --- output ------------------------------------------------------------------

    def data_to_send(self) -> bytes | memoryview:
        """Everything produced so far for the socket, in order; the buffer is emptied.

        One piece is handed over as it is (for a server's fan-out: the same
        bytes object, or a view of it, for every socket), several are joined
        once. Only :meth:`send_framed` can queue a memoryview.
        """
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def _queue(self, data: bytes | memoryview) -> None:
        if data:
            self._out.append(data)

    def send_text(self, text: str) -> bool:
        """Queue one text message; returns ``False`` (and queues nothing) unless OPEN."""
        if self._state is not WsState.OPEN:
            return False
        if self.role is Role.SERVER:
            self._queue(server_text_frame(text))  # no mask, no extension: framed here
        else:
            self._queue(client_text_frame(text, fresh_mask()))  # framed here too
        return True

    def send_framed(self, frame: bytes | memoryview) -> bool:
        """Queue whole frames made by :func:`server_text_frame` (server side, OPEN only).

        How a server hands the same bytes to many sockets without framing
        them again for each; a memoryview (part of frames shared with other
        sockets) is queued without a copy. Returns ``False`` (and queues
        nothing) otherwise.
        """
        if self._state is not WsState.OPEN or self.role is not Role.SERVER:
            return False
        self._queue(frame)
        return True

    def send_binary(self, data: bytes) -> bool:
        """Queue one binary message (meshproto never sends one; tests and tools may).

        Returns ``False`` (and queues nothing) unless OPEN.
        """
        if self._state is not WsState.OPEN:
            return False
        self._queue(encode_frame(OP_BINARY, bytes(data), masked=self._masked))
        return True

    def send_ping(self, payload: bytes = b"") -> bool:
        """Queue a ping (``payload`` at most 125 bytes); returns ``False`` (and
        queues nothing) unless OPEN."""
        if len(payload) > 125:
            raise ValueError(f"a ping carries at most 125 bytes, got {len(payload)}")
        if self._state is not WsState.OPEN:
            return False
        self._queue(encode_frame(OP_PING, bytes(payload), masked=self._masked))
        return True

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake (OPEN → CLOSING), or give up on one not yet
        open (→ CLOSED). Does nothing once CLOSING or CLOSED."""
        if self._state is WsState.OPEN:
            self._send_close(code, reason)
        elif self._state is WsState.CONNECTING:
            self._state = WsState.CLOSED

    # --- input -------------------------------------------------------------------

    def receive_data(self, data: bytes | None) -> list[WsEvent]:
        """Feed bytes from the socket (``None`` at EOF; ``b""`` is ignored); returns
        what they meant."""
        if self._state is WsState.CLOSED:
            return []
        if data is None:
            return self._eof()
        if not data:
            return []  # wsproto's handshake would take b"" for EOF
        events: list[WsEvent] = []
        if self._reader is not None:
            self._read_frames(self._reader, data, events)
        else:
            self._read_handshake(data, events)
        return events

    # --- internals -----------------------------------------------------------------

    def _read_frames(self, reader: FrameReader, data: bytes, events: list[WsEvent]) -> None:
        frames: list[ReadFrame] = []
        error: FrameError | None = None
        try:
            reader.feed(data, frames)
        except FrameError as exc:
            error = exc
        if self._state is WsState.OPEN:
            for opcode, value in frames:
                if opcode == OP_TEXT:
                    events.append(TextReceived(value))  # type: ignore[arg-type]
                else:
                    self._on_frame(opcode, value, events)
            if error is not None and self._state is WsState.OPEN:
                self._fail(error.code, error.reason, events)
        elif error is not None or any(opcode == OP_CLOSE for opcode, _ in frames):
            # CLOSING: the peer's echo (or its broken frame) ends it.
            self._state = WsState.CLOSED

    def _on_frame(self, opcode: int, value: object, events: list[WsEvent]) -> None:
        """Every frame but the common text one, while OPEN."""
        if self._state is not WsState.OPEN:
            return  # a close came first in this read
        if opcode == OP_BINARY:
            assert isinstance(value, bytes)
            events.append(BinaryReceived(value))
        elif opcode == OP_PING:
            assert isinstance(value, bytes)
            self._queue(encode_frame(OP_PONG, value, masked=self._masked))
            events.append(PingReceived(value))
        elif opcode == OP_PONG:
            assert isinstance(value, bytes)
            events.append(PongReceived(value))
        else:  # OP_CLOSE: the peer started the closing handshake; echo it
            assert isinstance(value, tuple)
            code, reason = value
            self._queue(encode_frame(OP_CLOSE, close_payload(code, reason), masked=self._masked))
            self._state = WsState.CLOSED
            events.append(Closed(code, reason, True))

    def _read_handshake(self, data: bytes, events: list[WsEvent]) -> None:
        handshake = self._handshake
        assert handshake is not None  # until the connection opens
        self._head += data
        try:
            handshake.receive_data(data)
            for event in handshake.events():
                self._on_handshake_event(event, events)
                if self._state is not WsState.CONNECTING:
                    break
        except wsproto.utilities.RemoteProtocolError as exc:
            self._bad_handshake(exc, events)
        except ValueError as exc:  # wsproto decodes the headers it reads as ASCII
            hint = wse.RejectConnection(status_code=400) if self.role is Role.SERVER else None
            refused = wsproto.utilities.RemoteProtocolError(
                f"a header that is not ASCII ({exc})", event_hint=hint
            )
            self._bad_handshake(refused, events)
        except (wsproto.utilities.LocalProtocolError, h11.ProtocolError) as exc:
            # Never expected (states are kept in step with wsproto's), but
            # nothing the network sends may raise out of here.
            self._state = WsState.CLOSED
            events.append(Closed(None, f"WebSocket state error: {exc}", False))
        if self._state is WsState.CONNECTING:
            return
        head = self._head
        self._handshake = None
        self._head = bytearray()
        if self._state is WsState.OPEN:
            # Whatever followed the head in the same reads is the first frames.
            self._reader = FrameReader(
                masked=self.role is Role.SERVER, max_message_bytes=self.max_message_bytes
            )
            end = _END_OF_HEAD.search(head)
            rest = bytes(head[end.end() :]) if end is not None else b""
            if rest:
                self._read_frames(self._reader, rest, events)

    def _eof(self) -> list[WsEvent]:
        was = self._state
        self._state = WsState.CLOSED
        self._reader = None
        if was is WsState.CLOSING:
            return []
        return [Closed(None, "connection closed without a close frame", True)]

    def _send_close(self, code: int, reason: str) -> None:
        self._queue(encode_frame(OP_CLOSE, close_payload(code, reason), masked=self._masked))
        self._state = WsState.CLOSING

    def _fail(self, code: int, reason: str, events: list[WsEvent]) -> None:
        """The peer broke the protocol: close with ``code`` and report it."""
        if self._state is WsState.OPEN:
            self._send_close(code, reason)
            events.append(Closed(code, reason, False))

    def _on_handshake_event(self, event: wse.Event, events: list[WsEvent]) -> None:
        if isinstance(event, wse.Request):
            self._on_request(event, events)
        elif isinstance(event, wse.AcceptConnection):
            self._state = WsState.OPEN
            events.append(Opened(self._target))
        elif isinstance(event, wse.RejectConnection):
            self._state = WsState.CLOSED
            events.append(Closed(None, f"handshake refused: HTTP {event.status_code}", True))
        # Nothing else comes before the handshake ends: the loop stops at it.

    def _refuse(self, status: int, body: bytes) -> None:
        assert self._handshake is not None
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
        ]
        refusal = wse.RejectConnection(status_code=status, headers=headers, has_body=True)
        self._queue(self._handshake.send(refusal))
        self._queue(self._handshake.send(wse.RejectData(data=body, body_finished=True)))
        self._state = WsState.CLOSED

    def _on_request(self, request: wse.Request, events: list[WsEvent]) -> None:
        path = request.target.partition("?")[0]
        if path != self._path:
            self._refuse(404, f"not found: only {self._path} is a WebSocket endpoint\n".encode())
            events.append(Closed(None, f"no WebSocket endpoint at {path!r}: HTTP 404", False))
            return
        if any(
            name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0")
            for name, value in request.extra_headers
        ):
            self._refuse(400, b"bad request: a WebSocket upgrade request carries no body\n")
            events.append(Closed(None, "bad handshake: an upgrade request with a body", False))
            return
        assert self._handshake is not None
        self._queue(self._handshake.send(wse.AcceptConnection()))
        self._state = WsState.OPEN
        events.append(Opened(request.target))

    def _bad_handshake(
        self, exc: wsproto.utilities.RemoteProtocolError, events: list[WsEvent]
    ) -> None:
        self._state = WsState.CLOSED
        if self.role is Role.SERVER and isinstance(exc.event_hint, wse.RejectConnection):
            # Answer with the status wsproto suggests (400, or 426 for a bad version).
            assert self._handshake is not None
            with contextlib.suppress(wsproto.utilities.LocalProtocolError, h11.ProtocolError):
                self._queue(self._handshake.send(exc.event_hint))
        by_peer = self.role is Role.CLIENT
        events.append(Closed(None, f"bad handshake: {exc}", by_peer))
