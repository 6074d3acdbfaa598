"""Identity files: the claudemesh config, session keys, and what reconnecting sessions look like."""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path

import anyio
import pytest

from meshproto import (
    Broker,
    ConnectionState,
    Event,
    HandshakeComplete,
    Member,
    StaticRegistry,
    SystemMessage,
)
from meshproto_anyio import connect as anyio_connect
from meshproto_anyio import running_broker
from meshproto_cli._files import (
    FileProblem,
    JoinedMesh,
    config_dir,
    load_joined_meshes,
    load_or_create_session_keys,
    save_joined_meshes,
)
from meshproto_cli._identity import load_identity
from meshproto_crypto import Ed25519Signer, Ed25519Verifier, KeyPair


def _record(keys: KeyPair, broker_url: str = "ws://127.0.0.1:7900/ws") -> JoinedMesh:
    return JoinedMesh(
        mesh_id="mesh-1",
        member_id="member-1",
        slug="team",
        name="Team",
        pubkey=keys.pubkey,
        secret_key=keys.secret_key,
        broker_url=broker_url,
        joined_at="2026-11-27T00:00:00.000Z",
    )


def _pair() -> tuple[str, str]:
    keys = KeyPair.generate()
    return keys.pubkey, keys.secret_key


def test_config_dir_is_the_flag_then_the_environment_then_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CLAUDEMESH_CONFIG_DIR", raising=False)
    assert config_dir() == tmp_path / "home" / ".claudemesh"
    monkeypatch.setenv("CLAUDEMESH_CONFIG_DIR", str(tmp_path / "env"))
    assert config_dir() == tmp_path / "env"
    assert config_dir(tmp_path / "flag") == tmp_path / "flag"


def test_joined_meshes_round_trip_in_the_claudemesh_format_with_mode_0600(tmp_path: Path) -> None:
    record = _record(KeyPair.generate())
    path = save_joined_meshes(tmp_path, [record])
    assert path == tmp_path / "config.json"
    assert path.stat().st_mode & 0o777 == 0o600
    data = json.loads(path.read_text())
    assert data["version"] == 1
    assert set(data["meshes"][0]) == {
        "meshId", "memberId", "slug", "name", "pubkey", "secretKey", "brokerUrl", "joinedAt",
    }  # fmt: skip
    assert load_joined_meshes(tmp_path) == [record]
    assert record.secret_key not in repr(record)


def test_secret_file_that_others_can_read_gets_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    save_joined_meshes(tmp_path, [_record(KeyPair.generate())])
    os.chmod(tmp_path / "config.json", 0o644)
    with caplog.at_level(logging.WARNING, logger="meshproto.files"):
        load_joined_meshes(tmp_path)
    assert "chmod 600" in caplog.text
    assert str(tmp_path / "config.json") in caplog.text


def test_private_secret_file_gets_no_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    save_joined_meshes(tmp_path, [_record(KeyPair.generate())])
    with caplog.at_level(logging.WARNING, logger="meshproto.files"):
        load_joined_meshes(tmp_path)
    assert caplog.text == ""


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"pubkey": "XYZ"}, "pubkey must be 64 lowercase hex"),
        ({"secretKey": "00" * 64}, "secretKey must be 128 hex ending with the pubkey"),
        ({"meshId": 7}, "'meshId' must be a string"),
    ],
)
def test_malformed_mesh_records_are_refused_with_a_reason(
    tmp_path: Path, change: dict[str, object], complaint: str
) -> None:
    record = _record(KeyPair.generate()).to_record()
    (tmp_path / "config.json").write_text(
        json.dumps({"version": 1, "meshes": [{**record, **change}]})
    )
    os.chmod(tmp_path / "config.json", 0o600)
    with pytest.raises(FileProblem, match=complaint):
        load_joined_meshes(tmp_path)


def test_session_keys_persist_per_mesh_and_session_name(tmp_path: Path) -> None:
    first = load_or_create_session_keys(tmp_path, "mesh-1", "work", _pair)
    assert load_or_create_session_keys(tmp_path, "mesh-1", "work", _pair) == first
    assert load_or_create_session_keys(tmp_path, "mesh-1", "other", _pair) != first
    assert load_or_create_session_keys(tmp_path, "mesh-2", "work", _pair) != first
    path = tmp_path / "meshproto-sessions" / "mesh-1" / "work.json"
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileProblem, match="letters, digits"):
        load_or_create_session_keys(tmp_path, "mesh-1", "../escape", _pair)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_a_session_reconnecting_within_grace_is_the_same_peer_and_nobody_is_told(
    tmp_path: Path,
) -> None:
    """Two connections of one session present one session key; the second reattaches."""
    bob_keys, alice_keys = KeyPair.generate(), KeyPair.generate()
    registry = StaticRegistry(
        [
            Member("mesh-1", "member-1", bob_keys.pubkey, "bob"),
            Member("mesh-1", "member-a", alice_keys.pubkey, "alice"),
        ]
    )
    broker = Broker(registry, verifier=Ed25519Verifier(), rng=random.Random(1))
    with anyio.fail_after(20):
        async with running_broker(broker, port=0) as server:
            save_joined_meshes(tmp_path, [_record(bob_keys, server.url)])
            alice_heard: list[str] = []
            async with anyio_connect(
                server.url,
                mesh_id="mesh-1",
                member_id="member-a",
                signer=Ed25519Signer(alice_keys),
                on_event=lambda e: (
                    alice_heard.append(e.event) if isinstance(e, SystemMessage) else None
                ),
            ) as alice:
                await alice.wait_state(ConnectionState.OPEN)
                presence_ids = []
                for _ in range(2):
                    identity = load_identity(tmp_path, None, "work")
                    events: list[Event] = []
                    async with anyio_connect(
                        **identity.connect_kwargs(), on_event=events.append
                    ) as bob:
                        await bob.wait_state(ConnectionState.OPEN)
                        (ack,) = [e.ack for e in events if isinstance(e, HandshakeComplete)]
                        presence_ids.append(ack.presence_id)
                        peers = await alice.list_peers()
                        assert identity.session.pubkey in {p.pubkey for p in peers}
                await anyio.sleep(0.2)
    assert presence_ids[0] == presence_ids[1]
    assert alice_heard.count("peer_joined") == 1
    assert "peer_left" not in alice_heard
