"""WebSocket frames after the handshake (RFC 6455 §5): building them, and reading them.

Theory of operation
===================

wsproto does the opening handshake; once a connection is open, its frames are
read and written here. Every message of the protocol crosses this layer
(four frames per direct message, one per receiver of a broadcast), and
wsproto's general-purpose frame parser (extensions, partial frames handed out
as they arrive, a generator per read) cost more per frame than everything
else the client does with it. meshproto negotiates no extension, so a frame
is a header and a payload, and both fit in a few lines.

Writing
-------

:func:`encode_frame` builds one whole frame. A server's frames are unmasked;
a client's are masked with a key it draws fresh for every frame
(:func:`~meshproto_ws._entropy.fresh_mask`: the operating system's bytes,
drawn in blocks), applied as one integer XOR over the payload rather than
byte by byte. :func:`server_text_frame` and :func:`client_text_frame` are the
text cases, the only frames meshproto sends per message.

Reading
-------

:class:`FrameReader` takes bytes as the socket hands them over and produces,
per complete frame, what it meant: a whole message (fragments joined, text
decoded), a ping, a pong or a close. It keeps only the bytes of a frame not
yet complete, so a read that holds whole frames (nearly every read) is parsed
in place and copies nothing but the payloads.

A frame that breaks RFC 6455 raises :class:`FrameError` with the close code
the peer has earned, after the frames before it in the same read have been
delivered. The rules, checked in this order, which is wsproto's (so the two
refuse the same bytes with the same code, which a property test holds):

* the opcode is one RFC 6455 defines (1002);
* a control frame (close, ping, pong) is never fragmented and carries at
  most 125 bytes (1002);
* a length is written in its shortest form, and an 8-byte length has its
  top bit clear (1002);
* no reserved bit is set: no extension is ever negotiated (1002);
* a server's peer masks every frame and a client's peer masks none (1002);
* a continuation frame continues a message, and a new message does not
  start inside another (1002);
* a text message, and a close reason, are valid UTF-8 (1007);
* a close frame carries nothing, or a code a peer may send, RFC 6455
  §7.4 (1002).

One rule is this layer's own: a message larger than ``max_message_bytes``
(every fragment counted) fails with 1009 as soon as a frame header says so,
before its payload has arrived, so a peer cannot make the reader hold more
than that. Once a close frame has been read, the reader reads nothing more.
"""

from __future__ import annotations

import codecs
from typing import Final

from ._entropy import fresh_mask

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "FrameError",
    "FrameReader",
    "ReadFrame",
    "client_text_frame",
    "close_payload",
    "encode_frame",
    "server_text_frame",
]

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

#: RFC 6455 §5.5: a control frame's payload is at most 125 bytes.
MAX_CONTROL_PAYLOAD: Final = 125
#: Close codes below 3000 a peer may send (RFC 6455 §7.4.1, and 1012 and 1013
#: from the IANA registry): 1004 is reserved; 1005, 1006 and 1015 are never
#: on the wire.
_PEER_CLOSE_CODES: Final = frozenset(
    (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013)
)
#: "No status code was present" (RFC 6455 §7.1.5): a close with no payload.
CLOSE_NO_STATUS: Final = 1005
#: Codes that only report a connection lost without a close (1006) or a
#: failed TLS handshake (1015): closing "with" one sends 1000.
_LOCAL_ONLY_CODES: Final = frozenset((1006, 1015))

_CLOSE_PROTOCOL_ERROR: Final = 1002
_CLOSE_INVALID_DATA: Final = 1007
_CLOSE_TOO_BIG: Final = 1009

#: What :meth:`FrameReader.feed` produces per complete frame: ``(opcode, value)``.
#: ``value`` is the message's text (``OP_TEXT``), its bytes (``OP_BINARY``,
#: ``OP_PING``, ``OP_PONG``), or ``(code, reason)`` (``OP_CLOSE``; code 1005
#: for a close frame with no payload). Tuples, not objects: there is one per
#: frame, and the connection turns them into its events at once.
ReadFrame = tuple[int, object]


class FrameError(Exception):
    """The peer broke RFC 6455; ``code`` is the close code to answer with."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _mask(payload: bytes | bytearray, key: bytes | bytearray) -> bytes:
    """``payload`` XORed with the 4-byte ``key`` repeated (masking and unmasking alike)."""
    n = len(payload)
    if not n:
        return b""
    repeated = (bytes(key) * ((n + 3) // 4))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")).to_bytes(
        n, "little"
    )


def _header(first: int, n: int, masked: int) -> bytes:
    if n < 126:
        return bytes((first, masked | n))
    if n < 65_536:
        return bytes((first, masked | 126)) + n.to_bytes(2, "big")
    return bytes((first, masked | 127)) + n.to_bytes(8, "big")


def encode_frame(opcode: int, payload: bytes, *, masked: bool) -> bytes:
    """One whole, final frame of ``opcode``; ``masked`` for a client (a fresh key)."""
    if not masked:
        return _header(0x80 | opcode, len(payload), 0) + payload
    key = fresh_mask()
    return _header(0x80 | opcode, len(payload), 0x80) + key + _mask(payload, key)


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
    every frame (RFC 6455 §5.3; the connection draws it with
    :func:`~meshproto_ws._entropy.fresh_mask`).
    """
    payload = text.encode("utf-8")
    return _header(0x81, len(payload), 0x80) + mask + _mask(payload, mask)


def close_payload(code: int, reason: str) -> bytes:
    """The payload of a close frame: the code, then the reason cut to fit 125 bytes.

    Code 1005 ("no status") is sent as an empty payload, as RFC 6455 §7.1.5
    means it; 1006 and 1015, which no frame may carry, are sent as 1000; a
    reason is cut at a character boundary.
    """
    if code == CLOSE_NO_STATUS:
        return b""
    if code in _LOCAL_ONLY_CODES:
        code = 1000
    data = reason.encode("utf-8")
    if len(data) > MAX_CONTROL_PAYLOAD - 2:
        data = data[: MAX_CONTROL_PAYLOAD - 2].decode("utf-8", "ignore").encode("utf-8")
    return code.to_bytes(2, "big") + data


def _parse_close(payload: bytes) -> tuple[int, str]:
    if not payload:
        return CLOSE_NO_STATUS, ""
    if len(payload) == 1:
        raise FrameError(_CLOSE_PROTOCOL_ERROR, "close frame with a 1-byte payload")
    code = int.from_bytes(payload[:2], "big")
    if not (code in _PEER_CLOSE_CODES or 3000 <= code <= 4999):
        raise FrameError(
            _CLOSE_PROTOCOL_ERROR, f"close frame with code {code}, which a peer may not send"
        )
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FrameError(_CLOSE_INVALID_DATA, f"close reason is not UTF-8: {exc}") from None
    return code, reason


class FrameReader:
    """Reads the frames a peer sends once a connection is open. See the module docstring.

    ``masked`` says whether the peer must mask (it must when it is a client,
    so a server's reader is made with ``masked=True``).
    """

    __slots__ = (
        "_buffer",
        "_chunks",
        "_closed",
        "_decoder",
        "_masked",
        "_max",
        "_opcode",
        "_size",
        "_skip",
        "_texts",
    )

    def __init__(self, *, masked: bool, max_message_bytes: int) -> None:
        self._masked = 0x80 if masked else 0
        self._max = max_message_bytes
        self._buffer = bytearray()  # the start of a frame not yet complete
        self._closed = False  # a close frame was read: nothing more is
        self._opcode = 0  # the opcode of the fragmented message under way, or 0
        self._texts: list[str] = []  # its text so far, decoded fragment by fragment
        self._chunks: list[bytes] = []  # or its bytes
        self._size = 0  # its bytes so far
        self._skip = 0  # bytes still to pass over, of a frame refused as too big
        self._decoder: codecs.BufferedIncrementalDecoder | None = None

    @property
    def mid_frame(self) -> bool:
        """Whether the start of a frame is held, waiting for the rest of it."""
        return bool(self._buffer or self._skip)

    def feed(self, data: bytes, out: list[ReadFrame]) -> None:
        """Read ``data``, appending one :data:`ReadFrame` per complete frame to ``out``.

        Raises :class:`FrameError` at the first frame that breaks the rules;
        what came before it is in ``out`` already. After an error, or a close
        frame, nothing more is read, with one exception: past a message over
        the cap (1009), whose frame boundaries are still known, the reader
        skips the rest of that frame unread and goes on, so that the peer's
        close frame (its answer to our 1009) can still be seen.
        """
        if self._closed:
            return
        if self._skip:
            skipped = min(self._skip, len(data))
            self._skip -= skipped
            data = data[skipped:]
        view: bytes | bytearray = data
        buffer = self._buffer
        if buffer:  # the rest of a frame: grows in place, not copied per read
            buffer += data
            view = buffer
        self._read(view, out)

    def _read(self, data: bytes | bytearray, out: list[ReadFrame]) -> None:
        end = len(data)
        pos = 0
        too_big: FrameError | None = None
        try:
            while end - pos >= 2:
                first = data[pos]
                second = data[pos + 1]
                opcode = first & 0x0F
                if opcode >= OP_CLOSE:
                    if opcode > OP_PONG:
                        raise FrameError(_CLOSE_PROTOCOL_ERROR, f"invalid opcode {opcode:#x}")
                    if not first & 0x80:
                        raise FrameError(_CLOSE_PROTOCOL_ERROR, "fragmented control frame")
                    if second & 0x7F > MAX_CONTROL_PAYLOAD:
                        raise FrameError(
                            _CLOSE_PROTOCOL_ERROR, "control frame with a payload over 125 bytes"
                        )
                elif opcode > OP_BINARY:
                    raise FrameError(_CLOSE_PROTOCOL_ERROR, f"invalid opcode {opcode:#x}")
                length = second & 0x7F
                start = pos + 2
                if length == 126:
                    start += 2
                    if start > end:
                        break
                    length = int.from_bytes(data[pos + 2 : start], "big")
                    if length < 126:
                        raise FrameError(
                            _CLOSE_PROTOCOL_ERROR, "length in 2 bytes where 1 would have done"
                        )
                elif length == 127:
                    start += 8
                    if start > end:
                        break
                    length = int.from_bytes(data[pos + 2 : start], "big")
                    if length < 65_536:
                        raise FrameError(
                            _CLOSE_PROTOCOL_ERROR, "length in 8 bytes where 2 would have done"
                        )
                    if length >> 63:
                        raise FrameError(
                            _CLOSE_PROTOCOL_ERROR, "8-byte length with its top bit set"
                        )
                if first & 0x70:
                    raise FrameError(_CLOSE_PROTOCOL_ERROR, "reserved bit set")
                if second & 0x80 != self._masked:
                    raise FrameError(
                        _CLOSE_PROTOCOL_ERROR,
                        "unmasked frame from a client"
                        if self._masked
                        else "masked frame from a server",
                    )
                if self._masked:
                    start += 4
                if opcode < OP_CLOSE and self._size + length > self._max:
                    too_big = FrameError(_CLOSE_TOO_BIG, f"message too big: over {self._max} bytes")
                    self._drop_message()
                    self._skip = max(0, start + length - end)
                    pos = min(start + length, end)
                    break
                stop = start + length
                if stop > end:
                    break
                payload: bytes | bytearray
                if self._masked:
                    payload = _mask(data[start:stop], data[start - 4 : start])
                else:
                    payload = data[start:stop]
                pos = stop
                if opcode == OP_TEXT and first & 0x80 and not self._opcode:
                    # The frame nearly every message is: whole, text, alone.
                    try:
                        out.append((OP_TEXT, payload.decode("utf-8")))
                    except UnicodeDecodeError as exc:
                        raise FrameError(_CLOSE_INVALID_DATA, f"text is not UTF-8: {exc}") from None
                elif opcode < OP_CLOSE:
                    self._data_frame(opcode, bool(first & 0x80), bytes(payload), out)
                elif opcode == OP_CLOSE:
                    self._closed = True
                    out.append((OP_CLOSE, _parse_close(bytes(payload))))
                    break
                else:
                    out.append((opcode, bytes(payload)))
        except FrameError:
            self._closed = True
            self._buffer = bytearray()
            self._drop_message()
            raise
        buffer = self._buffer
        if self._closed or pos == end:
            buffer.clear()
        elif data is buffer:
            del buffer[:pos]
        else:
            self._buffer = bytearray(data[pos:])
        if too_big is not None:
            raise too_big

    def _data_frame(self, opcode: int, fin: bool, payload: bytes, out: list[ReadFrame]) -> None:
        """A frame of a fragmented message, or a binary one (the rare cases)."""
        if opcode == OP_CONTINUATION:
            if not self._opcode:
                raise FrameError(
                    _CLOSE_PROTOCOL_ERROR, "continuation frame with no message to continue"
                )
            opcode = self._opcode
        elif self._opcode:
            raise FrameError(_CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one")
        elif not fin:
            self._opcode = opcode
            if opcode == OP_TEXT:
                self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._size += len(payload)
        if opcode == OP_TEXT:
            decoder = self._decoder
            try:
                text = decoder.decode(payload, fin) if decoder else payload.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise FrameError(_CLOSE_INVALID_DATA, f"text is not UTF-8: {exc}") from None
            self._texts.append(text)
        else:
            self._chunks.append(payload)
        if fin:
            message: object = "".join(self._texts) if opcode == OP_TEXT else b"".join(self._chunks)
            self._drop_message()
            out.append((opcode, message))

    def _drop_message(self) -> None:
        self._opcode = 0
        self._texts = []
        self._chunks = []
        self._size = 0
        self._decoder = None
