"""The fuzz entry point runs, without atheris, on inputs hypothesis chooses."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from hypothesis import given, settings
from hypothesis import strategies as st


def _load_fuzz_module() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "fuzz" / "fuzz_client.py"
    spec = importlib.util.spec_from_file_location("fuzz_client", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("fuzz_client", module)
    spec.loader.exec_module(module)
    return module


fuzz_client = _load_fuzz_module()


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=800))
def test_fuzz_entry_point_keeps_the_contracts(data: bytes) -> None:
    fuzz_client.test_one_input(data)
