"""Bounded, interruptible waits for blocking calls.

A blocked call waits on a :class:`threading.Condition` (or a future) until
its outcome arrives, its ``timeout`` passes (:class:`TimeoutError`), or the
client closes. In the main thread the wait is cut into slices of
:data:`MAIN_THREAD_SLICE` seconds, so that Ctrl-C (a real ``SIGINT`` or
``_thread.interrupt_main()``, both of which only run their handler between
bytecodes) raises :class:`KeyboardInterrupt` promptly; other threads get no
signals and wait in slices of at most :data:`OTHER_THREAD_SLICE`.
"""

from __future__ import annotations

import threading
import time

__all__ = ["MAIN_THREAD_SLICE", "OTHER_THREAD_SLICE", "Deadline"]

#: Longest single wait in the main thread (how late a Ctrl-C can be noticed).
MAIN_THREAD_SLICE = 0.05
#: Longest single wait in any other thread (a safety net; notifications wake them).
OTHER_THREAD_SLICE = 1.0


class Deadline:
    """When a blocking call gives up; ``None`` waits for ever."""

    __slots__ = ("_at", "_slice", "timeout")

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self._at = None if timeout is None else time.monotonic() + max(0.0, timeout)
        main = threading.current_thread() is threading.main_thread()
        self._slice = MAIN_THREAD_SLICE if main else OTHER_THREAD_SLICE

    def next_wait(self, what: str) -> float:
        """How long to wait this time; raises :class:`TimeoutError` once the time is up."""
        if self._at is None:
            return self._slice
        left = self._at - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{what}: no outcome within {self.timeout:g} s")
        return min(left, self._slice)
