"""Randomness from the operating system, drawn in blocks.

Theory of operation
===================

Every message a client sends needs fresh, unpredictable bytes: the masking
key of each frame it writes (RFC 6455 §5.3), and, with the default ``rng``,
the id of each send. A broker needs them for every message id. Drawn one by
one, each is a call to :func:`os.urandom`: a system call, around which
CPython lets go of the GIL. With another thread running (a blocking client's
I/O thread, a store's commit thread) the caller then waits for the GIL to come
back. On the machine where this was measured a 4-byte draw took 0.29 µs
alone, and 69 µs with one busy thread beside it.

So the bytes come from :func:`os.urandom` in blocks of :data:`BLOCK` and are
handed out in order, each byte once:

* :func:`random_bytes` takes the next ``n`` bytes of the block (a new block
  when this one runs out; a draw of more than a quarter of a block goes to
  the operating system directly). A lock makes every draw its own, whichever
  threads draw at once;
* :func:`fresh_mask` is a frame's 4-byte masking key, from a block of its
  own cut into keys: taking one is a single ``list.pop``, which no other
  thread can interleave with, so it needs no lock;
* :class:`PooledSystemRandom` is a :class:`random.SystemRandom` whose
  ``random``, ``getrandbits`` and ``randbytes`` (and so everything built on
  them: ``randrange``, ``choice``, ``uniform``) draw so. It is the clients'
  default ``rng`` and the ``meshproto broker`` command's;
* a process made by ``fork`` forgets the block it inherited
  (:func:`os.register_at_fork`) and the keys cut from one, so that it never
  hands out the bytes its parent hands out, and gets a lock of its own (one
  held by another thread at the fork would never be let go in the child).

The bytes are the operating system's; holding a few KiB of them in memory is
what libc's ``arc4random`` and libsodium do too.
"""

from __future__ import annotations

import os
import random
import threading

__all__ = ["BLOCK", "PooledSystemRandom", "fresh_mask", "random_bytes"]

#: Bytes drawn from the operating system at once.
BLOCK = 4096

#: 2**-53: turns 53 random bits into a float in [0, 1), as ``random.random`` does.
_RECIP_BPF = 2.0**-53


class _Pool:
    """One block of the operating system's bytes, handed out in order (see above)."""

    __slots__ = ("_at", "_block", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._block = b""
        self._at = 0

    def take(self, n: int) -> bytes:
        if n < 0:
            raise ValueError("negative argument not allowed")
        if n > BLOCK // 4:
            return os.urandom(n)
        with self._lock:
            at = self._at
            end = at + n
            if end > len(self._block):
                self._block = os.urandom(BLOCK)
                at, end = 0, n
            self._at = end
            return self._block[at:end]

    def forget(self) -> None:
        """In a forked child: drop the parent's block and its lock."""
        self._lock = threading.Lock()
        self._block = b""
        self._at = 0


_POOL = _Pool()
os.register_at_fork(after_in_child=_POOL.forget)
#: Masking keys cut from blocks, handed out from the end.
_MASKS: list[bytes] = []
os.register_at_fork(after_in_child=_MASKS.clear)


def random_bytes(n: int) -> bytes:
    """``n`` bytes from the operating system's random source, drawn in blocks."""
    return _POOL.take(n)


def fresh_mask() -> bytes:
    """A client frame's masking key: 4 fresh bytes from the operating system."""
    masks = _MASKS
    while True:
        try:
            return masks.pop()
        except IndexError:  # none left: cut a new block (another thread may too)
            block = os.urandom(BLOCK)
            masks.extend([block[at : at + 4] for at in range(0, BLOCK, 4)])


class PooledSystemRandom(random.SystemRandom):
    """A :class:`random.SystemRandom` that draws the operating system's bytes in blocks.

    The same source as ``SystemRandom`` and the same values' shapes; only
    the number of system calls differs (see the module docstring). Like
    ``SystemRandom``, it has no state to seed, save or restore.
    """

    def random(self) -> float:
        """A float in [0, 1), from 53 random bits."""
        return (int.from_bytes(_POOL.take(7), "big") >> 3) * _RECIP_BPF

    def getrandbits(self, k: int) -> int:
        """An int of ``k`` random bits (``k`` >= 0)."""
        if k < 0:
            raise ValueError("number of bits must be non-negative")
        count = (k + 7) // 8
        return int.from_bytes(_POOL.take(count), "big") >> (count * 8 - k)

    def randbytes(self, n: int) -> bytes:
        """``n`` random bytes."""
        return _POOL.take(n)
