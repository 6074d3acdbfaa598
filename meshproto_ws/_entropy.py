"""Randomness from the operating system, drawn in advance.

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

So small draws come from bytes drawn in advance, each byte handed out once:

* :func:`random_bytes` of at most :data:`CUT_MAX` bytes pops a piece of
  exactly that size from a list of pieces cut from one
  :func:`os.urandom` call (:data:`PIECES` of them; a new call when the list
  runs out). A ``list.pop`` is one step that no other thread can split, so
  however many threads draw at once no piece is handed out twice, and no
  lock is taken. Larger draws go to the operating system directly;
* :func:`fresh_mask` is a frame's 4-byte masking key, popped the same way
  from a list of its own (one draw per frame written: the commonest);
* :class:`PooledSystemRandom` is a :class:`random.SystemRandom` whose
  ``random``, ``getrandbits`` and ``randbytes`` (and so everything built on
  them: ``randrange``, ``choice``, ``uniform``) draw so. It is the clients'
  default ``rng`` and the ``meshproto broker`` command's;
* a process made by ``fork`` forgets every piece it inherited
  (:func:`os.register_at_fork`), so that it never hands out the bytes its
  parent hands out.

The bytes are the operating system's; holding a few KiB of them in memory is
what libc's ``arc4random`` and libsodium do too.
"""

from __future__ import annotations

import os
import random

__all__ = ["CUT_MAX", "PIECES", "PooledSystemRandom", "fresh_mask", "random_bytes"]

#: The largest draw served from pieces cut in advance; larger ones go to the OS.
CUT_MAX = 32
#: Pieces cut from one call to the operating system.
PIECES = 256

#: 2**-53: turns 53 random bits into a float in [0, 1), as ``random.random`` does.
_RECIP_BPF = 2.0**-53

#: Pieces cut in advance, by size, handed out from the end.
_PIECES: dict[int, list[bytes]] = {}
#: Masking keys cut in advance, handed out from the end.
_MASKS: list[bytes] = []


def _forget() -> None:
    """In a forked child: the parent hands out these very pieces."""
    _PIECES.clear()
    _MASKS.clear()


os.register_at_fork(after_in_child=_forget)


def _cut(pieces: list[bytes], n: int) -> bytes:
    """A piece of ``n`` bytes from ``pieces``, cutting new ones when none is left."""
    while True:
        try:
            return pieces.pop()
        except IndexError:  # none left: cut more (another thread may too; both are fresh)
            block = os.urandom(n * PIECES)
            pieces.extend([block[at : at + n] for at in range(0, n * PIECES, n)])


def random_bytes(n: int) -> bytes:
    """``n`` bytes from the operating system's random source (small draws cut in advance)."""
    if 0 < n <= CUT_MAX:
        pieces = _PIECES.get(n)
        if pieces is None:
            pieces = _PIECES.setdefault(n, [])
        try:
            return pieces.pop()
        except IndexError:
            return _cut(pieces, n)
    return os.urandom(n)  # 0 is b"", and a negative count is refused as the OS refuses it


def fresh_mask() -> bytes:
    """A client frame's masking key: 4 fresh bytes from the operating system."""
    try:
        return _MASKS.pop()
    except IndexError:
        return _cut(_MASKS, 4)


class PooledSystemRandom(random.SystemRandom):
    """A :class:`random.SystemRandom` that draws the operating system's bytes in advance.

    The same source as ``SystemRandom`` and the same values' shapes; only
    the number of system calls differs (see the module docstring). Like
    ``SystemRandom``, it has no state to seed, save or restore.
    """

    def random(self) -> float:
        """A float in [0, 1), from 53 random bits."""
        return (int.from_bytes(random_bytes(7), "big") >> 3) * _RECIP_BPF

    def getrandbits(self, k: int) -> int:
        """An int of ``k`` random bits (``k`` >= 0)."""
        if k < 0:
            raise ValueError("number of bits must be non-negative")
        count = (k + 7) // 8
        return int.from_bytes(random_bytes(count), "big") >> (count * 8 - k)

    def randbytes(self, n: int) -> bytes:
        """``n`` random bytes."""
        return random_bytes(n)
