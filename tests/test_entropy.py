"""The operating system's random bytes, drawn in advance (meshproto_ws._entropy)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from collections.abc import Callable

import pytest

from meshproto_ws import PooledSystemRandom, WsConnection, WsState, parse_ws_url
from meshproto_ws._entropy import CUT_MAX, PIECES, fresh_mask, random_bytes


def drawn_by_four_threads_at_once(draw: Callable[[], bytes], count: int) -> list[bytes]:
    """What ``count`` calls of ``draw`` in each of four threads, run together, handed out."""
    drawn: list[bytes] = []
    lock = threading.Lock()

    def run() -> None:
        mine = [draw() for _ in range(count)]
        with lock:
            drawn.extend(mine)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    assert len(drawn) == 4 * count
    return drawn


def test_draws_never_hand_out_the_same_bytes_twice_even_from_threads_at_once() -> None:
    draws = drawn_by_four_threads_at_once(lambda: random_bytes(16), 3 * PIECES)
    assert len(set(draws)) == len(draws)  # three cuts' worth from each thread


def test_masking_keys_are_never_handed_out_twice_even_from_threads_at_once() -> None:
    keys = drawn_by_four_threads_at_once(fresh_mask, 3 * PIECES)  # three cuts' worth
    assert all(len(key) == 4 for key in keys)
    # 3,072 random 32-bit keys repeat by chance about once in 900 runs, and
    # three times about once in 10**9; a key handed out twice repeats a whole cut.
    assert len(keys) - len(set(keys)) < 3


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX only")
def test_a_forked_process_does_not_hand_out_the_bytes_its_parent_does() -> None:
    script = textwrap.dedent(
        """
        import os
        from meshproto_ws._entropy import fresh_mask, random_bytes
        random_bytes(32)  # the parent now holds cut pieces, and cut keys
        fresh_mask()
        def draw():
            return random_bytes(32) + b"".join(fresh_mask() for _ in range(8))
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(write, draw())
            os._exit(0)
        os.waitpid(pid, 0)
        child = os.read(read, 64)
        parent = draw()
        print("same" if child[:32] == parent[:32] or child[32:] == parent[32:] else "different")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "different"


@pytest.mark.parametrize("n", [0, 1, 7, CUT_MAX, CUT_MAX + 1, 3 * 4096])
def test_random_bytes_are_as_many_as_asked_for(n: int) -> None:
    assert len(random_bytes(n)) == n
    assert len(PooledSystemRandom().randbytes(n)) == n


def test_a_negative_count_of_bytes_is_refused_as_os_urandom_refuses_it() -> None:
    with pytest.raises(ValueError, match="negative"):
        random_bytes(-1)
    with pytest.raises(ValueError, match="non-negative"):
        PooledSystemRandom().getrandbits(-1)


@pytest.mark.parametrize("k", [0, 1, 7, 8, 9, 64, 200])
def test_pooled_random_bits_fit_in_the_bits_asked_for(k: int) -> None:
    rng = PooledSystemRandom()
    values = [rng.getrandbits(k) for _ in range(300)]
    assert all(0 <= v < 2**k for v in values)
    if k >= 8:  # and they reach the top bit
        assert max(values) >= 2 ** (k - 1)


def test_pooled_random_floats_are_in_the_unit_interval_and_centred() -> None:
    rng = PooledSystemRandom()
    values = [rng.random() for _ in range(10_000)]
    assert all(0.0 <= v < 1.0 for v in values)
    # The mean's standard deviation is 0.0029: 0.02 is seven of them.
    assert abs(sum(values) / len(values) - 0.5) < 0.02


def test_every_byte_value_is_equally_likely_from_the_pool() -> None:
    counts = Counter(PooledSystemRandom().randbytes(64_000))
    expected = 64_000 / 256
    chi_square = sum((counts[b] - expected) ** 2 / expected for b in range(256))
    # 255 degrees of freedom: 340 is beyond the 99.9th percentile.
    assert chi_square < 340


def test_what_is_built_on_the_pooled_random_works_as_on_system_random() -> None:
    rng = PooledSystemRandom()
    assert {rng.randrange(10) for _ in range(500)} == set(range(10))
    assert rng.choice("ab") in "ab"
    assert 2.0 <= rng.uniform(2.0, 3.0) <= 3.0


def _open_client() -> WsConnection:
    """A client WebSocket whose handshake a server in memory has accepted."""
    client = WsConnection.client(parse_ws_url("ws://127.0.0.1:1/ws"))
    server = WsConnection.server()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    assert client.state is WsState.OPEN
    return client


def test_consecutive_client_frames_have_different_masking_keys() -> None:
    client = _open_client()
    keys = []
    for _ in range(50):
        assert client.send_text("hi")
        frame = client.data_to_send()
        assert frame[1] == 0x80 | 2  # masked, 2 bytes
        keys.append(frame[2:6])
    assert len(set(keys)) == len(keys)
