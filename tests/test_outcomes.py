"""The adapters' shared bookkeeping: which waiting call each core event answers."""

from __future__ import annotations

import random
from concurrent.futures import Future

import pytest

from meshproto import (
    ClientConfig,
    ClientConnection,
    Closed,
    ConnectionClosedError,
    ConnectionState,
    FailureReason,
    Peer,
    PeersListed,
    RequestError,
    RequestFailed,
    SendAcked,
    SendError,
    SendFailed,
    StateChanged,
    SystemMessage,
)
from meshproto.testing import FakeSigner
from meshproto_ws import Outcomes, Wake, client_driver


def _core() -> ClientConnection:
    config = ClientConfig(
        url="ws://x/ws", mesh_id="m", member_id="u", signer=FakeSigner(), session_id="s"
    )
    return ClientConnection(config, rng=random.Random(0))


def _outcomes(limit: int = 2) -> Outcomes:
    return Outcomes(_core(), system_limit=limit)


def _system(name: str) -> SystemMessage:
    return SystemMessage("peer_joined", {"name": name}, name, None)  # type: ignore[arg-type]


def test_acked_and_failed_sends_reach_their_waiters_only_when_settled() -> None:
    outcomes = _outcomes()
    acked, failed = Future[str](), Future[str]()
    outcomes.expect_send("a", acked)
    outcomes.expect_send("b", failed)
    reason = FailureReason.of("rate_limited", "slow down")
    assert outcomes.note(SendAcked("a", "M1")) == ()
    assert outcomes.note(SendFailed("b", reason)) == ()
    assert not acked.done() and not failed.done()
    outcomes.settle()
    assert acked.result() == "M1"
    error = failed.exception()
    assert isinstance(error, SendError) and error.reason == reason and error.retryable


def test_an_outcome_for_nobody_waiting_is_dropped() -> None:
    outcomes = _outcomes()
    outcomes.note(SendAcked("unknown", "M"))
    outcomes.settle()  # nothing to hand over, nothing raised


def test_peer_requests_get_the_peers_or_a_request_error() -> None:
    outcomes = _outcomes()
    answered, refused = Future[tuple[Peer, ...]](), Future[tuple[Peer, ...]]()
    outcomes.expect_peers("r1", answered)
    outcomes.expect_peers("r2", refused)
    peers = (Peer("ab" * 32),)
    outcomes.note(PeersListed("r1", peers))
    outcomes.note(RequestFailed("r2", FailureReason.of("timeout")))
    outcomes.settle()
    assert answered.result() == peers
    assert isinstance(refused.exception(), RequestError)


def test_system_messages_are_kept_newest_first_within_the_limit() -> None:
    outcomes = _outcomes(limit=2)
    for name in ("a", "b", "c"):
        assert outcomes.note(_system(name)) == (Wake.SYSTEM,)
    assert [outcomes.take_system().message_id for _ in range(2)] == ["b", "c"]  # type: ignore[union-attr]
    assert outcomes.take_system() is None


def test_state_changes_and_closing_wake_the_right_waits() -> None:
    core = _core()
    outcomes = Outcomes(core, system_limit=2)
    assert outcomes.note(StateChanged(ConnectionState.IDLE, ConnectionState.CONNECTING)) == (
        Wake.STATE,
    )
    outcomes.check_open()
    assert set(outcomes.note(Closed("broker refused: revoked", 4002))) == set(Wake)
    core.close(now=0.0)
    with pytest.raises(ConnectionClosedError, match="revoked") as caught:
        outcomes.check_open()
    assert caught.value.code == 4002


def test_client_driver_builds_a_client_that_fills_in_the_defaults() -> None:
    driver = client_driver(
        "ws://127.0.0.1:7900/ws", mesh_id="m", member_id="u", signer=FakeSigner()
    )
    config = driver.connection.config
    assert len(config.session_id) == 16
    assert config.pid > 0 and config.cwd
