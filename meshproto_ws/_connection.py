"""One WebSocket connection, client or server side, over wsproto; no I/O.

wsproto parses and frames, and leaves a handful of duties to whoever drives
it. :class:`WsConnection` takes them on, once, for every meshproto adapter:

* the client handshake for a parsed ``ws://``/``wss://`` URL, and the server
  handshake, which upgrades only the path ``/ws`` (any other path gets a 404
  response, a request that is not a WebSocket upgrade gets wsproto's 400);
* answering pings, echoing a close the peer started;
* reassembling fragmented messages and enforcing a cap on the size of a
  received message (closing with 1009 "message too big" as soon as the
  message grows past it, without waiting for the rest);
* reporting protocol errors (a bad frame, invalid UTF-8) by closing with the
  code wsproto names, and turning EOF into a close without a close frame.

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
import os
from dataclasses import dataclass
from typing import Any

import h11
import wsproto
import wsproto.events as wse
import wsproto.utilities
from wsproto.connection import ConnectionState as _WsprotoState

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


def server_text_frame(text: str) -> bytes:
    """One complete, unmasked text frame of ``text``, as a server sends it (RFC 6455 §5.2).

    Servers never mask, and meshproto negotiates no extension, so the bytes
    are the same for every socket.
    """
    payload = text.encode("utf-8")
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65_536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload


def client_text_frame(text: str, mask: bytes) -> bytes:
    """One complete text frame of ``text`` as a client sends it: masked with ``mask``.

    ``mask`` is the frame's 4-byte masking key, fresh and unpredictable for
    every frame (RFC 6455 §5.3; :meth:`WsConnection.send_text` draws it from
    :func:`os.urandom`). The payload is XORed with the key repeated, in one
    integer operation rather than byte by byte.
    """
    payload = text.encode("utf-8")
    n = len(payload)
    if n < 126:
        header = bytes((0x81, 0x80 | n))
    elif n < 65_536:
        header = b"\x81\xfe" + n.to_bytes(2, "big")
    else:
        header = b"\x81\xff" + n.to_bytes(8, "big")
    key = (mask * ((n + 3) // 4))[:n]
    masked = (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
        n, "little"
    )
    return header + mask + masked


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
        self._out: list[bytes] = []  # what is to be sent, as produced (not copied)
        self._chunks: list[Any] = []  # the fragments of the message being received
        self._size = 0
        self._ws = wsproto.WSConnection(
            wsproto.ConnectionType.CLIENT if role is Role.CLIENT else wsproto.ConnectionType.SERVER
        )
        if address is not None and role is Role.CLIENT:
            self._queue(self._ws.send(wse.Request(host=address.host_header, target=address.target)))

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

    def data_to_send(self) -> bytes:
        """Everything produced so far for the socket, in order; the buffer is emptied.

        One frame is handed over as it is (for a server's fan-out: the same
        bytes object for every socket), several are joined once.
        """
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def _queue(self, data: bytes) -> None:
        if data:
            self._out.append(data)

    def send_text(self, text: str) -> bool:
        """Queue one text message; returns ``False`` (and queues nothing) unless OPEN."""
        if self._state is not WsState.OPEN:
            return False
        if self.role is Role.SERVER:
            self._queue(server_text_frame(text))  # no mask, no extension: framed here
        else:
            self._queue(client_text_frame(text, os.urandom(4)))  # framed here too
        return True

    def send_framed(self, frame: bytes) -> bool:
        """Queue a whole frame made by :func:`server_text_frame` (server side, OPEN only).

        How a server hands the same bytes to many sockets without framing
        them again for each. Returns ``False`` (and queues nothing) otherwise.
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
        self._queue(self._ws.send(wse.BytesMessage(data=data)))
        return True

    def send_ping(self, payload: bytes = b"") -> bool:
        """Queue a ping; returns ``False`` (and queues nothing) unless OPEN."""
        if self._state is not WsState.OPEN:
            return False
        self._queue(self._ws.send(wse.Ping(payload=payload)))
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
        try:
            self._ws.receive_data(data)
            for event in self._ws.events():
                self._handle(event, events)
                if self.state is WsState.CLOSED:  # the property: _handle changed the state
                    break
        except wsproto.utilities.RemoteProtocolError as exc:
            # Only the HTTP handshake raises; frame errors arrive as events.
            self._bad_handshake(exc, events)
        except (wsproto.utilities.LocalProtocolError, h11.ProtocolError) as exc:
            # Never expected (states are kept in step with wsproto's), but
            # nothing the network sends may raise out of here.
            self._state = WsState.CLOSED
            events.append(Closed(None, f"WebSocket state error: {exc}", False))
        return events

    # --- internals -----------------------------------------------------------------

    def _eof(self) -> list[WsEvent]:
        was = self._state
        self._state = WsState.CLOSED
        self._chunks.clear()
        if was is WsState.CLOSING:
            return []
        return [Closed(None, "connection closed without a close frame", True)]

    def _send_close(self, code: int, reason: str) -> None:
        self._queue(self._ws.send(wse.CloseConnection(code=code, reason=reason)))
        self._state = WsState.CLOSING
        self._chunks.clear()

    def _fail(self, code: int, reason: str, events: list[WsEvent]) -> None:
        """The peer broke the protocol: close with ``code`` and report it."""
        if self._state is WsState.OPEN:
            self._send_close(code, reason)
            events.append(Closed(code, reason, False))

    def _handle(self, event: wse.Event, events: list[WsEvent]) -> None:
        state = self._state
        # Messages first: they are nearly every event, and wsproto's event
        # classes are ABCs, so each isinstance test before this one costs.
        if isinstance(event, wse.Message):
            if state is WsState.OPEN:
                self._on_message(event, events)
        elif isinstance(event, wse.Request):
            self._on_request(event, events)
        elif isinstance(event, wse.AcceptConnection):
            self._state = WsState.OPEN
            events.append(Opened(self._target))
        elif isinstance(event, wse.RejectConnection):
            self._state = WsState.CLOSED
            events.append(Closed(None, f"handshake refused: HTTP {event.status_code}", True))
        elif isinstance(event, wse.RejectData):
            pass  # the body of a refusal; the refusal was reported already
        elif isinstance(event, wse.Ping):
            if state is WsState.OPEN:
                self._queue(self._ws.send(event.response()))
                events.append(PingReceived(bytes(event.payload)))
        elif isinstance(event, wse.Pong):
            if state is WsState.OPEN:
                events.append(PongReceived(bytes(event.payload)))
        elif isinstance(event, wse.CloseConnection):
            self._on_close(event, events)

    def _on_request(self, request: wse.Request, events: list[WsEvent]) -> None:
        path = request.target.partition("?")[0]
        if path != self._path:
            body = f"not found: only {self._path} is a WebSocket endpoint\n".encode()
            self._queue(
                self._ws.send(
                    wse.RejectConnection(
                        status_code=404,
                        headers=[
                            (b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                        has_body=True,
                    )
                )
            )
            self._queue(self._ws.send(wse.RejectData(data=body, body_finished=True)))
            self._state = WsState.CLOSED
            events.append(Closed(None, f"no WebSocket endpoint at {path!r}: HTTP 404", False))
            return
        self._queue(self._ws.send(wse.AcceptConnection()))
        self._state = WsState.OPEN
        events.append(Opened(request.target))

    def _bad_handshake(
        self, exc: wsproto.utilities.RemoteProtocolError, events: list[WsEvent]
    ) -> None:
        was = self._state
        self._state = WsState.CLOSED
        if was is not WsState.CONNECTING:  # pragma: no cover - wsproto raises only then
            return
        if self.role is Role.SERVER and isinstance(exc.event_hint, wse.RejectConnection):
            # Answer with the status wsproto suggests (400, or 426 for a bad version).
            with contextlib.suppress(wsproto.utilities.LocalProtocolError, h11.ProtocolError):
                self._queue(self._ws.send(exc.event_hint))
        by_peer = self.role is Role.CLIENT
        events.append(Closed(None, f"bad handshake: {exc}", by_peer))

    def _on_close(self, event: wse.CloseConnection, events: list[WsEvent]) -> None:
        ws_state = self._ws.state
        if ws_state in (_WsprotoState.OPEN, _WsprotoState.LOCAL_CLOSING):
            # wsproto reports a frame it could not parse as a close event
            # without changing state: this side must send that close.
            if self._state is WsState.OPEN:
                self._fail(int(event.code), event.reason or "protocol error", events)
            else:
                self._state = WsState.CLOSED
            return
        if self._state is WsState.OPEN:
            # The peer started the closing handshake: echo it.
            self._queue(self._ws.send(event.response()))
            self._state = WsState.CLOSED
            self._chunks.clear()
            events.append(Closed(int(event.code), event.reason or "", True))
        else:
            # The echo of the close this side sent.
            self._state = WsState.CLOSED

    def _on_message(self, message: wse.Message[Any], events: list[WsEvent]) -> None:
        data = message.data
        if data:
            if isinstance(data, str) and not data.isascii():
                self._size += len(data.encode("utf-8"))
            else:
                self._size += len(data)
            if self._size > self.max_message_bytes:
                self._fail(
                    CLOSE_MESSAGE_TOO_BIG,
                    f"message too big: over {self.max_message_bytes} bytes",
                    events,
                )
                return
            self._chunks.append(data)
        if not message.message_finished:
            return
        chunks = self._chunks
        self._chunks = []
        self._size = 0
        if isinstance(message, wse.TextMessage):
            events.append(TextReceived("".join(chunks)))
        else:
            events.append(BinaryReceived(b"".join(chunks)))
