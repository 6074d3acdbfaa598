"""The frame reader's oracle: wsproto, fed the same bytes in the same reads.

:class:`~meshproto_ws._frames.FrameReader` replaced wsproto's frame parser,
so wsproto says what it must do. :func:`check_frame_reader` feeds both the
same chunks and raises :class:`AssertionError` unless they read the same
messages, pings, pongs and close, in order, and refuse the same frame with
the same close code.

One difference is allowed, at the end of the reads only: wsproto looks into a
frame's payload before the frame is complete (a continuation with nothing to
continue, or bad UTF-8, is refused from its first bytes), while the reader
waits for the whole frame. So when the reads stop in the middle of a frame,
wsproto may have refused it while the reader is still waiting; complete runs
of frames, which the property test feeds, must agree exactly.

The property tests (``tests/test_ws_frames.py``) and the fuzz target
(``fuzz/fuzz_frames.py``) share it.

The reader's one rule of its own, the size cap, is off here (wsproto has
none); its own tests cover it.
"""

from __future__ import annotations

import wsproto.events as wse
from wsproto.connection import Connection, ConnectionState, ConnectionType

from ._frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameError,
    FrameReader,
    ReadFrame,
)

__all__ = ["ReadOutcome", "check_frame_reader", "read_with_ours", "read_with_wsproto"]

#: What a run of reads meant: the frames read, then the close code of the
#: frame refused (``None``: nothing was).
ReadOutcome = tuple[list[ReadFrame], int | None]

_NO_CAP = 1 << 64  # above any length a frame can declare


def read_with_ours(chunks: list[bytes], *, peer_masks: bool) -> ReadOutcome:
    return _read_with_ours(chunks, peer_masks)[0]


def _read_with_ours(chunks: list[bytes], peer_masks: bool) -> tuple[ReadOutcome, bool]:
    """The outcome, and whether the reader waits for the rest of a frame."""
    reader = FrameReader(masked=peer_masks, max_message_bytes=_NO_CAP)
    out: list[ReadFrame] = []
    for chunk in chunks:
        try:
            reader.feed(chunk, out)
        except FrameError as exc:
            return (out, exc.code), False
    return (out, None), reader.mid_frame


def read_with_wsproto(chunks: list[bytes], *, peer_masks: bool) -> ReadOutcome:
    """What wsproto makes of the same reads, in the reader's terms."""
    conn = Connection(ConnectionType.SERVER if peer_masks else ConnectionType.CLIENT)
    out: list[ReadFrame] = []
    texts: list[str] = []
    blobs: list[bytes] = []
    for chunk in chunks:
        conn.receive_data(chunk)
        for event in conn.events():
            if isinstance(event, wse.TextMessage):
                texts.append(event.data)
                if event.message_finished:
                    out.append((OP_TEXT, "".join(texts)))
                    texts = []
            elif isinstance(event, wse.BytesMessage):
                blobs.append(bytes(event.data))
                if event.message_finished:
                    out.append((OP_BINARY, b"".join(blobs)))
                    blobs = []
            elif isinstance(event, wse.Ping):
                out.append((OP_PING, bytes(event.payload)))
            elif isinstance(event, wse.Pong):
                out.append((OP_PONG, bytes(event.payload)))
            elif isinstance(event, wse.CloseConnection):
                if conn.state is ConnectionState.OPEN:  # a frame it could not parse
                    return out, int(event.code)
                out.append((OP_CLOSE, (int(event.code), event.reason or "")))
                return out, None
    return out, None


def check_frame_reader(chunks: list[bytes], *, peer_masks: bool) -> ReadOutcome:
    """Both readers' outcome of ``chunks``; :class:`AssertionError` if they differ."""
    ours, waiting = _read_with_ours(chunks, peer_masks)
    theirs = read_with_wsproto(chunks, peer_masks=peer_masks)
    refused_early = waiting and ours == (theirs[0], None) and theirs[1] is not None
    if ours != theirs and not refused_early:
        raise AssertionError(f"frame reader: {ours!r}, wsproto: {theirs!r}, reads {chunks!r}")
    return ours
