"""Fuzz the client connection: bytes become a sequence of client inputs.

Run with atheris (see fuzz/README.md)::

    python fuzz/fuzz_client.py -max_total_time=600

Each input is interpreted by ``meshproto.testing.ClientHarness.run_bytes``:
sends, transport opens and failures, hello_acks, acks and rejections, pushes
(with duplicates), the application taking messages (with or without
acknowledging them, and acknowledging them later), hostile frame text (lone
surrogates, huge numbers, ``NaN``, duplicate keys, deep nesting: see
``meshproto.testing._hostile``), link drops, refusals, garbage frames,
timers, pings and close. After every step ``ClientOracle`` checks the client's contracts, the
same oracle the property tests use; a violation raises and atheris reports
the input that caused it.
"""

from __future__ import annotations

from meshproto import ClientOptions
from meshproto.testing import ClientHarness


def test_one_input(data: bytes) -> None:
    """One fuzz case: two bytes seed the rng, one picks the options, the rest are operations."""
    seed = int.from_bytes(data[:2], "big")
    flags = data[2] if len(data) > 2 else 0
    options = ClientOptions(
        inbox_limit=flags % 5,  # 0: no inbox, messages are events
        accept_messages=flags & 0x70 != 0x70,
        resend_in_flight=not flags & 0x80,
    )
    ClientHarness(seed=seed, options=options).run_bytes(data[3:])


def main() -> None:
    from _atheris import fuzz  # noqa: PLC0415 (a sibling: fuzz/ is on sys.path for a script)

    fuzz(test_one_input)


if __name__ == "__main__":
    main()
