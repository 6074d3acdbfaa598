"""Tools for testing code built on meshproto, and meshproto itself.

* :class:`FakeSigner` stands in for an ed25519 key where no real signature is
  needed (a broker that verifies signatures will refuse it).
* :class:`ClientOracle` watches a :class:`~meshproto.ClientConnection` from
  the outside and checks the contracts of docs/architecture.md after every step. The
  property tests and the fuzz harness both use it, so they check one oracle.
* :class:`ClientHarness` drives a connection against a scripted broker; the
  property tests and the fuzz harness both turn their inputs into its
  operations.
* :class:`BrokerOracle` stands between a :class:`~meshproto.Broker` and
  whoever feeds it: every input goes through the oracle, which passes it on,
  drains the outputs and checks the broker's invariants (the theory of
  operation in ``meshproto/_broker.py``) before handing them back.
* :class:`BrokerHarness` drives a broker through its oracle with sockets,
  hellos, sends, acks, garbage, hostile frame text and time, by small
  integers and bytes (a :class:`ByteSource`); ``meshproto_ws.testing``
  carries the same operations over WebSocket bytes through a
  ``BrokerDriver``, and ``tests/test_broker_properties.py`` and
  ``fuzz/fuzz_broker.py`` turn their inputs into its operations.

A broken contract raises :class:`ContractViolation` (an ``AssertionError``).
"""

from __future__ import annotations

from ._broker_harness import BrokerHarness, ByteSource
from ._broker_oracle import BrokerOracle
from ._client_harness import (
    ACK_ERROR_TEXTS,
    PERMANENT_CLOSES,
    TARGETS,
    TRANSIENT_CLOSES,
    ClientHarness,
)
from ._client_oracle import ClientOracle
from ._fakes import ContractViolation, FakeSigner

__all__ = [
    "ACK_ERROR_TEXTS",
    "PERMANENT_CLOSES",
    "TARGETS",
    "TRANSIENT_CLOSES",
    "BrokerHarness",
    "BrokerOracle",
    "ByteSource",
    "ClientHarness",
    "ClientOracle",
    "ContractViolation",
    "FakeSigner",
]
