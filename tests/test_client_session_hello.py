"""A client with a session key opens every transport with a fresh session_hello."""

from __future__ import annotations

import json
import random

import pytest

from meshproto import (
    AcceptingVerifier,
    Broker,
    ClientConfig,
    ClientConnection,
    ConnectionState,
    LocalProtocolError,
    SendText,
    SessionHello,
    StaticRegistry,
    WriteFrame,
    attestation_signing_payload,
    decode,
    encode,
    is_permanent_close,
    session_hello_signing_payload,
)
from meshproto.testing import FakeSigner

MEMBER, SESSION = FakeSigner("member"), FakeSigner("session")
DAY_MS = 24 * 3600 * 1000
HALF_DAY_MS = DAY_MS // 2


def _client(**extra: object) -> ClientConnection:
    config = ClientConfig(
        url="ws://127.0.0.1:7900/ws",
        mesh_id="mesh",
        member_id="member-1",
        signer=MEMBER,
        session_id="s",
        session_signer=SESSION,
        **extra,  # type: ignore[arg-type]
    )
    return ClientConnection(config, rng=random.Random(0))


def _hello_on_new_transport(client: ClientConnection, now: float, wall_ms: int) -> SessionHello:
    (open_action,) = client.drain_actions()
    client.transport_opened(open_action.transport_id, now=now, wall_time_ms=wall_ms)  # type: ignore[union-attr]
    (write,) = client.drain_actions()
    assert isinstance(write, WriteFrame)
    frame = decode(write.text)
    assert isinstance(frame, SessionHello)
    return frame


def test_session_hello_is_signed_by_the_session_key_and_attested_by_the_member_key() -> None:
    client = _client()
    client.connect(0.0)
    hello = _hello_on_new_transport(client, 0.0, 1_000_000)
    assert hello.parent_member_pubkey == MEMBER.public_key
    assert hello.session_pubkey == SESSION.public_key
    assert hello.parent_member_id == "member-1"
    assert hello.timestamp == 1_000_000
    payload = session_hello_signing_payload(
        "mesh", MEMBER.public_key, SESSION.public_key, 1_000_000
    )
    assert hello.signature == SESSION.sign(payload).hex()
    attestation = hello.parent_attestation
    assert attestation.expires_at == 1_000_000 + HALF_DAY_MS
    attested = attestation_signing_payload(
        MEMBER.public_key, SESSION.public_key, attestation.expires_at
    )
    assert attestation.signature == MEMBER.sign(attested).hex()


def test_attestation_is_minted_afresh_on_every_connect() -> None:
    client = _client()
    client.connect(0.0)
    first = _hello_on_new_transport(client, 0.0, 1_000_000)
    client.transport_closed(1, now=1.0, code=1001, reason="")
    client.handle_timer(client.next_deadline() or 0.0)
    second = _hello_on_new_transport(client, 40.0, 1_040_000)
    assert second.parent_attestation.expires_at == 1_040_000 + HALF_DAY_MS
    assert second.parent_attestation != first.parent_attestation


def test_attestation_lifetime_over_24_hours_is_refused_locally() -> None:
    with pytest.raises(LocalProtocolError, match="attestation_ttl_ms"):
        _client(attestation_ttl_ms=DAY_MS + 1)
    assert _client(attestation_ttl_ms=3_600_000).config.attestation_ttl_ms == 3_600_000
    assert _client(attestation_ttl_ms=DAY_MS).config.attestation_ttl_ms == DAY_MS


@pytest.mark.parametrize("ahead_ms", [50, 1_000, 59_000])
def test_a_client_clock_ahead_of_the_broker_still_gets_its_session_hello_accepted(
    ahead_ms: int,
) -> None:
    # The broker measures the 24 h bound on its own clock: an attestation
    # minted for the full 24 h by a clock 50 ms fast was refused ttl_too_long.
    broker_ms = 1_790_000_000_000
    broker = Broker(
        StaticRegistry(open_mesh="mesh"), verifier=AcceptingVerifier(), rng=random.Random(1)
    )
    broker.connection_opened(1, now=broker_ms / 1000)
    client = _client()
    client.connect(0.0)
    hello = _hello_on_new_transport(client, 0.0, broker_ms + ahead_ms)
    broker.receive_text(1, encode(hello), now=broker_ms / 1000)
    frames = [json.loads(o.text) for o in broker.drain_outputs() if isinstance(o, SendText)]
    assert [f["type"] for f in frames] == ["hello_ack"], frames


def test_a_full_day_attestation_from_a_clock_50_ms_fast_is_what_the_broker_refuses() -> None:
    broker_ms = 1_790_000_000_000
    broker = Broker(
        StaticRegistry(open_mesh="mesh"), verifier=AcceptingVerifier(), rng=random.Random(1)
    )
    broker.connection_opened(1, now=broker_ms / 1000)
    client = _client(attestation_ttl_ms=DAY_MS)
    client.connect(0.0)
    hello = _hello_on_new_transport(client, 0.0, broker_ms + 50)
    broker.receive_text(1, encode(hello), now=broker_ms / 1000)
    frames = [json.loads(o.text) for o in broker.drain_outputs() if isinstance(o, SendText)]
    assert frames[0]["code"] == "ttl_too_long"


def test_losing_the_session_key_to_its_proven_owner_stops_reconnecting() -> None:
    client = _client()
    client.connect(0.0)
    _hello_on_new_transport(client, 0.0, 1_000_000)
    client.transport_closed(1, now=1.0, code=1008, reason="session_key_claimed")
    assert client.state is ConnectionState.CLOSED
    assert is_permanent_close(1008, "session_key_claimed")
