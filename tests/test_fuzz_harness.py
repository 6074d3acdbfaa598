"""The fuzz entry points run, without atheris, on inputs hypothesis chooses.

``fuzz/fuzz_broker.py`` drives the broker over WebSocket bytes through a
real ``BrokerDriver`` (``meshproto_ws.testing.SocketBrokerHarness``); these
tests run its ``test_one_input`` on generated inputs, on one input per op
(so that every op of the byte interpreter is known to run), and on the
input that spells the hello which once killed the broker.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from hypothesis import given, settings
from hypothesis import strategies as st

from meshproto_ws.testing import SocketBrokerHarness


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
fuzz_frames = _load_fuzz_module("fuzz_frames")

#: Op 18 of the byte interpreter is ``op_hostile``; with every later byte 0 it
#: opens a socket and sends a good hello of ``a`` whose ``meshId`` is the JSON
#: escape ``"\ud800"`` (a lone surrogate), the frame that once raised out of
#: ``hello_signing_payload`` and killed the broker process.
LONE_SURROGATE_HELLO = bytes([18]) + bytes(10)


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


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_frames_fuzz_entry_point_reads_as_wsproto_does(data: bytes) -> None:
    fuzz_frames.test_one_input(data)


def test_broker_fuzz_entry_point_runs_every_op() -> None:
    for op in range(SocketBrokerHarness.BYTE_OPS):
        for head in (0, 1):  # default and small limits
            for arguments in (0, 1):
                # A hello on slot 0 first, so that the op has a helloed socket to act on.
                hello = bytes([head, 3, 0, 0, 0, 0])
                fuzz_broker.test_one_input(hello + bytes([op] + [arguments] * 12))


def test_broker_fuzz_entry_point_refuses_the_hello_that_once_killed_the_broker() -> None:
    fuzz_broker.test_one_input(bytes([0]) + LONE_SURROGATE_HELLO)
    harness = SocketBrokerHarness()
    harness.run_bytes(LONE_SURROGATE_HELLO)
    (close,) = harness.machine.closes.values()
    assert (close.code, close.reason) == (1008, "malformed")
    assert harness.driver.internal_errors == 0


def test_client_fuzz_finding_a_declined_message_then_a_system_push_with_its_key() -> None:
    # Found by atheris: a send-only client declines a message, then a system push
    # comes with the same key. The client acknowledges the system push, rightly.
    fuzz_client.test_one_input(bytes.fromhex("0000ff2992ff2992ffbf"))


def test_client_fuzz_finding_one_message_id_under_two_dedupe_keys() -> None:
    # Found by atheris: msg-13 pushed without a client_message_id, then again
    # with one: two messages to the client, so its acknowledgements must be
    # told apart by the whole key, as the oracle now does.
    fuzz_client.test_one_input(
        bytes.fromhex(
            "00003d8d893f0a00000000000000000033292e2e2d33292e2e3d292d292e2d292e2d00292e2e29b12920b1b12d692e2e"
        )
    )
