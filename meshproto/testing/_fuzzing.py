"""Running a fuzz target under atheris, written once for every target in ``fuzz/``."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

__all__ = ["run_fuzzer"]


def run_fuzzer(test_one_input: Callable[[bytes], None]) -> None:
    """Fuzz ``test_one_input`` with atheris, taking libFuzzer's options from ``sys.argv``.

    atheris is optional (``pip install atheris``); without it this exits with
    a message that says so.
    """
    try:
        atheris = importlib.import_module("atheris")  # optional, and untyped
    except ImportError:
        sys.exit("atheris is not installed: pip install atheris (see fuzz/README.md)")
    atheris.instrument_all()
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
