"""What every fuzz target's ``main()`` does: run atheris on its ``test_one_input``.

A sibling of the targets, imported by them only when they run as scripts
(``python fuzz/fuzz_client.py ...`` puts ``fuzz/`` on ``sys.path``), so that
the test suite can load a target's ``test_one_input`` without it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

__all__ = ["fuzz"]


def fuzz(test_one_input: Callable[[bytes], None]) -> None:
    """Instrument what is loaded, then fuzz ``test_one_input`` with ``sys.argv``'s options."""
    try:
        import atheris  # type: ignore[import-not-found]  # noqa: PLC0415 (optional)
    except ImportError:
        sys.exit("atheris is not installed: pip install atheris (see fuzz/README.md)")
    atheris.instrument_all()
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
