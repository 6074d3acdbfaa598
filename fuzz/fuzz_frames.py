"""Fuzz the frame reader against wsproto: bytes become reads of WebSocket frames.

Run with atheris (see fuzz/README.md)::

    python fuzz/fuzz_frames.py -max_total_time=600

The first byte chooses the side (odd: the reader is a server's, so its peer
masks every frame) and up to seven places where the rest is cut into reads;
the rest is what the peer sent. ``meshproto_ws.testing.check_frame_reader``
feeds the reads to meshproto's frame reader and to wsproto's, the oracle
``tests/test_ws_frames.py`` uses too, and raises if they read anything
differently: a message, a ping, a pong, a close, or which frame they refuse
with which code (wsproto may refuse a frame the reads end in the middle of
before the reader, which waits for the whole frame; the oracle allows that).
"""

from __future__ import annotations

import itertools

from meshproto_ws.testing import check_frame_reader


def test_one_input(data: bytes) -> None:
    """One fuzz case: a byte for the side and the number of cuts, bytes for the cuts."""
    if not data:
        return
    head, cuts, body = data[0], [], data[1:]
    for _ in range(head >> 5):
        if not body:
            break
        cuts.append(body[0] * 7)
        body = body[1:]
    points = sorted({cut % (len(body) + 1) for cut in cuts})
    edges = [0, *points, len(body)]
    chunks = [body[a:b] for a, b in itertools.pairwise(edges) if b > a]
    check_frame_reader(chunks, peer_masks=bool(head & 1))


def main() -> None:
    from _atheris import fuzz  # noqa: PLC0415 (a sibling: fuzz/ is on sys.path for a script)

    fuzz(test_one_input)


if __name__ == "__main__":
    main()
