"""Fuzz the reference broker over WebSockets: bytes become a sequence of socket inputs.

Run with atheris (see fuzz/README.md)::

    python fuzz/fuzz_broker.py -max_total_time=600

Each input is interpreted by ``meshproto_ws.testing.SocketBrokerHarness.run_bytes``:
a real ``BrokerDriver`` runs the broker, and every op is written as a
client's WebSocket bytes into it. The ops: sockets opened (handshakes) and
closed in four slots (and inputs for closed or unknown sockets, as late
reads), member and session hellos (good, skewed, badly signed, revoked,
unknown, with every kind of session key), sends to every kind of target,
client acks, status, summary, list_peers, near-miss and arbitrary text,
hostile frame text (lone surrogates, huge numbers, ``NaN``, duplicate keys,
deep nesting, written from the harness's own well-formed frames: see
``meshproto.testing._hostile``), binary, pings and pongs, time; and at the
socket level botched handshakes, raw garbage bytes, close frames with any
code, EOF, broken and silent sockets, reads split into pieces, fragmented
messages, messages over the size caps; then a shutdown with every timer run
out. Around every broker input ``BrokerOracle`` checks the broker's
invariants, the same oracle the property tests use, and the harness checks
the driver (nothing escapes it, its fault containment is never needed,
every text a client reads decodes and is what the broker wrote, every socket
is closed in the end); a violation raises and atheris reports the input
that caused it.
"""

from __future__ import annotations

from meshproto_ws.testing import SocketBrokerHarness


def test_one_input(data: bytes) -> None:
    """One fuzz case: the first byte picks the limits and the rng seed, the rest are operations."""
    head = data[0] if data else 0
    SocketBrokerHarness(small=bool(head & 1), seed=head >> 1).run_bytes(data[1:])


def main() -> None:
    from _atheris import fuzz  # noqa: PLC0415 (a sibling: fuzz/ is on sys.path for a script)

    fuzz(test_one_input)


if __name__ == "__main__":
    main()
