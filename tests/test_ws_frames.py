"""The frame layer after the handshake: built frames, and the reader held to wsproto.

The reader replaced wsproto's frame parser for speed, so wsproto is its oracle:
for any run of frames, well-formed or hostile, fed in any chunks, both must
produce the same messages, pings, pongs and close, and refuse the same frame
with the same close code.
"""

from __future__ import annotations

import itertools
import os
import struct
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshproto_ws._frame_oracle import read_with_ours, read_with_wsproto
from meshproto_ws._frames import (
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
from meshproto_ws.testing import check_frame_reader


@dataclass(frozen=True)
class RawFrame:
    """One frame as a peer may write it, rules broken or not."""

    fin: bool
    rsv: int  # the three reserved bits, 0..7
    opcode: int  # 0..15
    payload: bytes
    masked: bool
    length_form: str  # "short", "two", "eight": as written, whatever the length

    def encode(self) -> bytes:
        n = len(self.payload)
        first = (0x80 if self.fin else 0) | (self.rsv << 4) | self.opcode
        mask_bit = 0x80 if self.masked else 0
        if self.length_form == "short" and n < 126:
            head = bytes((first, mask_bit | n))
        elif self.length_form in ("short", "two") and n < 65_536:
            head = bytes((first, mask_bit | 126)) + struct.pack("!H", n)
        else:
            head = bytes((first, mask_bit | 127)) + struct.pack("!Q", n)
        if not self.masked:
            return head + self.payload
        key = os.urandom(4)
        return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(self.payload))


#: Close codes: those a peer may send, the reserved and local-only ones, the edges.
CLOSE_CODES = [*range(999, 1017), 2999, 3000, 3999, 4000, 4999, 5000, 0, 65535]


def close_payloads() -> st.SearchStrategy[bytes]:
    reasons = st.one_of(
        st.text(max_size=6).map(lambda t: t.encode("utf-8")),
        st.sampled_from([b"\xff", b"\xc3", b"ok\xed\xa0\x80"]),
    )
    return st.one_of(
        st.just(b""),
        st.binary(min_size=1, max_size=1),
        st.builds(lambda c, r: struct.pack("!H", c) + r, st.sampled_from(CLOSE_CODES), reasons),
    )


def bodies() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.text(max_size=10).map(lambda t: t.encode("utf-8")),
        st.binary(max_size=12),
        st.sampled_from([125, 126, 300, 65_536]).map(lambda n: b"x" * n),
        st.just("é😀".encode() * 3),  # characters to cut across fragments
    )


@st.composite
def message_frames(draw: st.DrawFn, peer_masks: bool) -> list[RawFrame]:
    """One message as a peer should send it: fragmented or not, controls between."""
    kind = draw(st.sampled_from([OP_TEXT, OP_TEXT, OP_BINARY, OP_PING, OP_PONG]))
    body = draw(bodies())
    if kind >= OP_CLOSE:
        return [RawFrame(True, 0, kind, body[:125], peer_masks, "short")]
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=3)))
    pieces = [body[a:b] for a, b in itertools.pairwise([0, *cuts, len(body)])]
    frames: list[RawFrame] = []
    for i, piece in enumerate(pieces):
        frames.append(
            RawFrame(i == len(pieces) - 1, 0, kind if i == 0 else 0, piece, peer_masks, "short")
        )
        if i < len(pieces) - 1 and draw(st.booleans()):
            frames.append(RawFrame(True, 0, OP_PING, b"mid", peer_masks, "short"))
    return frames


def broken(frame: RawFrame, how: str, peer_masks: bool) -> RawFrame:
    """``frame`` with one of RFC 6455's rules broken."""
    if how == "rsv":
        return RawFrame(frame.fin, 4, frame.opcode, frame.payload, frame.masked, frame.length_form)
    if how == "mask":
        return RawFrame(frame.fin, 0, frame.opcode, frame.payload, not peer_masks, "short")
    if how == "opcode":
        return RawFrame(
            frame.fin, 0, 3 + len(frame.payload) % 5 * 2, frame.payload, frame.masked, "short"
        )
    if how == "long-length":
        return RawFrame(frame.fin, 0, frame.opcode, frame.payload, frame.masked, "eight")
    if how == "fragmented-control":
        return RawFrame(False, 0, OP_PING, frame.payload[:10], frame.masked, "short")
    if how == "big-control":
        return RawFrame(True, 0, OP_PONG, b"p" * 126, frame.masked, "short")
    if how == "bad-utf8":
        return RawFrame(True, 0, OP_TEXT, frame.payload + b"\xff", frame.masked, "short")
    if how == "continuation":
        return RawFrame(True, 0, 0, frame.payload, frame.masked, "short")
    raise AssertionError(how)


HOW = ["rsv", "mask", "opcode", "long-length", "fragmented-control", "big-control"]
HOW += ["bad-utf8", "continuation"]


@st.composite
def frame_runs(draw: st.DrawFn, peer_masks: bool) -> list[RawFrame]:
    """Messages, perhaps one broken frame among them, perhaps a close at the end."""
    run = [f for m in draw(st.lists(message_frames(peer_masks), max_size=5)) for f in m]
    if run and draw(st.booleans()):
        at = draw(st.integers(0, len(run) - 1))
        run[at] = broken(run[at], draw(st.sampled_from(HOW)), peer_masks)
    if draw(st.booleans()):
        run.append(RawFrame(True, 0, OP_CLOSE, draw(close_payloads()), peer_masks, "short"))
        run.append(RawFrame(True, 0, OP_TEXT, b"after the close", peer_masks, "short"))
    return run


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


@settings(max_examples=400)
@given(
    peer_masks=st.booleans(),
    frames=st.data(),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=8),
)
def test_the_reader_reads_every_run_of_frames_as_wsproto_does(
    peer_masks: bool, frames: st.DataObject, cuts: list[int]
) -> None:
    run = frames.draw(frame_runs(peer_masks))
    data = b"".join(frame.encode() for frame in run)
    check_frame_reader(chunked(data, cuts), peer_masks=peer_masks)


@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_how_bytes_are_split_into_reads_changes_nothing(cuts: list[int]) -> None:
    data = b"".join(
        [
            client_text_frame("first", os.urandom(4)),
            encode_frame(OP_PING, b"p", masked=True),
            client_text_frame("é" * 200, os.urandom(4)),
            encode_frame(OP_CLOSE, close_payload(1000, "bye"), masked=True),
        ]
    )
    whole = read_with_ours([data], peer_masks=True)
    assert whole == (
        [(OP_TEXT, "first"), (OP_PING, b"p"), (OP_TEXT, "é" * 200), (OP_CLOSE, (1000, "bye"))],
        None,
    )
    assert read_with_ours(chunked(data, cuts), peer_masks=True) == whole


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65_535, 65_536, 70_000])
def test_built_frames_of_every_length_class_are_read_back(size: int) -> None:
    text = "a" * size
    assert read_with_ours([server_text_frame(text)], peer_masks=False) == ([(OP_TEXT, text)], None)
    assert read_with_ours([client_text_frame(text, os.urandom(4))], peer_masks=True) == (
        [(OP_TEXT, text)],
        None,
    )
    blob = bytes(range(256)) * (size // 256 + 1)
    frame = encode_frame(OP_BINARY, blob[:size], masked=True)
    assert read_with_wsproto([frame], peer_masks=True) == ([(OP_BINARY, blob[:size])], None)


def test_a_message_over_the_cap_is_refused_from_its_header_alone() -> None:
    reader = FrameReader(masked=False, max_message_bytes=100)
    header = server_text_frame("x" * 1000)[:4]  # no payload yet
    out: list[ReadFrame] = []
    with pytest.raises(FrameError) as refused:
        reader.feed(header, out)
    assert (refused.value.code, out) == (1009, [])


def test_past_a_message_over_the_cap_the_peers_close_is_still_read() -> None:
    reader = FrameReader(masked=False, max_message_bytes=100)
    big = server_text_frame("x" * 1000)
    out: list[ReadFrame] = []
    with pytest.raises(FrameError):
        reader.feed(big[:500], out)
    reader.feed(big[500:], out)
    reader.feed(encode_frame(OP_CLOSE, close_payload(1009, ""), masked=False), out)
    assert out == [(OP_CLOSE, (1009, ""))]


def test_fragments_count_together_against_the_cap() -> None:
    reader = FrameReader(masked=False, max_message_bytes=100)
    first = RawFrame(False, 0, OP_TEXT, b"a" * 60, False, "short").encode()
    rest = RawFrame(True, 0, 0, b"b" * 60, False, "short").encode()
    out: list[ReadFrame] = []
    reader.feed(first, out)
    with pytest.raises(FrameError) as refused:
        reader.feed(rest, out)
    assert (refused.value.code, out) == (1009, [])


def test_a_close_reason_is_cut_to_fit_at_a_character_boundary() -> None:
    payload = close_payload(1000, "é" * 100)
    assert len(payload) <= 125
    assert payload[2:].decode("utf-8") == "é" * 61


def test_a_close_without_status_is_sent_empty() -> None:
    assert close_payload(1005, "ignored") == b""


@pytest.mark.parametrize("code", [1006, 1015])
def test_a_close_with_a_code_no_frame_may_carry_is_sent_as_1000(code: int) -> None:
    assert close_payload(code, "gone") == b"\x03\xe8gone"


def test_every_close_code_is_taken_or_refused_as_wsproto_does() -> None:
    for code in range(65_536):
        frame = encode_frame(OP_CLOSE, struct.pack("!H", code) + b"why", masked=False)
        check_frame_reader([frame], peer_masks=False)


@pytest.mark.parametrize("peer_masks", [False, True])
def test_every_two_byte_frame_header_is_read_as_wsproto_reads_it(peer_masks: bool) -> None:
    """All 65,536 first two bytes of a frame, each completed with a payload that fits
    (an extended length of 200 for 126, a non-minimal 8-byte one for 127)."""
    for first in range(256):
        for second in range(256):
            length = second & 0x7F
            extended = b""
            if length == 126:
                length, extended = 200, struct.pack("!H", 200)
            elif length == 127:
                length, extended = 10, struct.pack("!Q", 10)
            key = b"\x01\x02\x03\x04" if second & 0x80 else b""
            frame = bytes((first, second)) + extended + key + b"a" * length
            check_frame_reader([frame], peer_masks=peer_masks)
