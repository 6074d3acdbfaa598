"""The fuzz entry points run, without atheris, on inputs hypothesis chooses."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from hypothesis import given, settings
from hypothesis import strategies as st


def _load_fuzz_module(name: str) -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "fuzz" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


fuzz_client = _load_fuzz_module("fuzz_client")
fuzz_broker = _load_fuzz_module("fuzz_broker")


@settings(max_examples=200, deadline=None)
@given(data=st.binary(min_size=64, max_size=800))
def test_fuzz_entry_point_keeps_the_contracts(data: bytes) -> None:
    fuzz_client.test_one_input(data)


# hypothesis's binaries are a few bytes long unless told otherwise: too short to
# say hello and then send on the same socket.
@settings(max_examples=200, deadline=None)
@given(data=st.binary(min_size=64, max_size=800))
def test_broker_fuzz_entry_point_keeps_the_invariants(data: bytes) -> None:
    fuzz_broker.test_one_input(data)
