"""The ``meshproto`` command: a reference broker, send, listen, peers, and a demo."""

from __future__ import annotations

import gc
import signal
import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``meshproto`` command; returns its exit status.

    A Ctrl-C while the command's modules load is held back until they have
    loaded, and then ends the command with status 130 like any other Ctrl-C
    (raised inside an import it would be a traceback, or worse: see
    ``_app._interrupts_deferred``).

    The cyclic garbage collector is off while the modules load: every
    object they make lives until exit, so a collection could only walk them
    in vain. ``_app`` turns it back on once they have loaded (and freezes
    them); the ``finally`` here covers a command that stopped before.
    """
    held: list[int] = []

    def hold(signum: int, frame: object) -> None:
        held.append(signum)

    gc.disable()
    try:
        try:
            previous = signal.signal(signal.SIGINT, hold)
        except ValueError:  # not the main thread
            previous = None
        try:
            from ._app import main as run  # noqa: PLC0415 (the imports to protect)
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        if held:
            print("interrupted", file=sys.stderr)
            return 130
        return run(argv)
    finally:
        gc.enable()
