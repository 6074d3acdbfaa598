"""Fuzz the reference broker: bytes become a sequence of broker inputs.

Run with atheris (see fuzz/README.md)::

    python fuzz/fuzz_broker.py -max_total_time=600

Each input is interpreted by ``meshproto.testing.BrokerHarness.run_bytes``:
sockets opened and closed in four slots (and inputs for closed or unknown
sockets), member and session hellos (good, skewed, badly signed, revoked,
unknown, with every kind of session key), sends to every kind of target,
client acks, status, summary, list_peers, near-miss and arbitrary text,
binary, pings and time; then a shutdown with every timer run out. Around
every input ``BrokerOracle`` checks the broker's invariants, the same oracle
the property tests use; a violation raises and atheris reports the input
that caused it.
"""

from __future__ import annotations

import sys

from meshproto.testing import BrokerHarness


def test_one_input(data: bytes) -> None:
    """One fuzz case: the first byte picks the limits and the rng seed, the rest are operations."""
    head = data[0] if data else 0
    BrokerHarness(small=bool(head & 1), seed=head >> 1).run_bytes(data[1:])


def main() -> None:
    try:
        import atheris  # type: ignore[import-not-found]  # noqa: PLC0415 (optional)
    except ImportError:
        sys.exit("atheris is not installed: pip install atheris (see fuzz/README.md)")
    atheris.instrument_all()
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
