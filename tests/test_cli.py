"""The ``meshproto`` command, run as a user would run it (subprocesses on loopback)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from cli_helpers import BrokerProcess, Running, json_lines, make_mesh, run_cli

from meshproto_cli._demo import run_demo
from meshproto_crypto import KeyPair

COMMANDS = ("demo", "broker", "send", "listen", "peers", "keygen", "mesh")


def assert_one_line_error(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("meshproto: error: ")
    assert fragment in lines[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_useful_help(command: str) -> None:
    result = run_cli(command, "--help")
    assert result.returncode == 0
    assert f"usage: meshproto {command}" in result.stdout
    assert len(result.stdout.splitlines()) >= 3


def test_a_run_builds_the_arguments_of_its_own_command_only() -> None:
    from meshproto_cli._app import build_parser  # noqa: PLC0415

    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    args = parser.parse_args(["send", "bob", "hi"])
    assert (args.run, args.target, args.timeout, args.retry_max) == ("send", "bob", 20.0, 30.0)
    assert {name for name, sub in commands.choices.items() if not sub.deferred} == {"send"}


def test_unknown_subcommand_is_a_usage_error_without_traceback() -> None:
    result = run_cli("frobnicate")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_command_delivers_everything_within_a_minute() -> None:
    started = time.monotonic()
    result = run_cli("demo", timeout=90)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 60
    lines = result.stdout.strip().splitlines()
    assert re.fullmatch(r"delivered (\d+)/\1, lost 0, duplicated 0", lines[-1]), lines[-1]
    assert "new broker on the same port" in result.stdout
    assert "reconnecting" in result.stdout
    assert "Traceback" not in result.stderr


def test_demo_logs_no_secret_key_and_no_plaintext_body(caplog: pytest.LogCaptureFixture) -> None:
    made: list[KeyPair] = []

    def make_keys() -> KeyPair:
        made.append(KeyPair.generate())
        return made[-1]

    printed: list[str] = []
    caplog.set_level(logging.DEBUG)
    status = anyio.run(lambda: run_demo(printed.append, make_keys=make_keys))
    assert status == 0
    assert printed[-1].startswith("delivered ")
    everything = caplog.text + "\n".join(printed)
    assert len(made) == 6
    for keys in made:
        assert keys.secret_key not in everything
        assert keys.secret_key[:64] not in everything  # the seed half
    for body in ("direct now", "for carol", "broadcast to the mesh", "stream 000", "stream 199"):
        assert body not in everything


def test_send_without_a_joined_mesh_is_one_clear_line(tmp_path: Path) -> None:
    result = run_cli("send", "*", "hi", "--config-dir", str(tmp_path / "none"))
    assert_one_line_error(result, "no joined mesh")


def test_malformed_config_file_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    os.chmod(tmp_path / "config.json", 0o600)
    result = run_cli("peers", "--config-dir", str(tmp_path))
    assert_one_line_error(result, "not valid JSON")


@pytest.fixture
def local_mesh(tmp_path: Path) -> Iterator[tuple[Path, str, BrokerProcess]]:
    mesh_dir = make_mesh(tmp_path, "alice,bob")
    broker = BrokerProcess(
        tmp_path, "--mesh", str(mesh_dir / "members.json"), "--db", str(tmp_path / "broker.db")
    )
    url = broker.start()
    try:
        yield mesh_dir, url, broker
    finally:
        broker.kill()


def test_mesh_init_writes_private_identities_and_a_members_file(tmp_path: Path) -> None:
    result = run_cli("mesh", "init", "--members", "alice,bob", "--dir", str(tmp_path / "m"))
    assert result.returncode == 0
    members = json.loads((tmp_path / "m" / "members.json").read_text())
    assert [m["displayName"] for m in members["members"]] == ["alice", "bob"]
    for name in ("alice", "bob"):
        config = tmp_path / "m" / name / "config.json"
        assert config.stat().st_mode & 0o777 == 0o600
        record = json.loads(config.read_text())["meshes"][0]
        assert record["meshId"] == members["meshId"]
        assert record["secretKey"].endswith(record["pubkey"])


def test_send_listen_and_peers_through_the_reference_broker(
    local_mesh: tuple[Path, str, BrokerProcess],
) -> None:
    mesh_dir, url, _broker = local_mesh
    alice = ["--config-dir", str(mesh_dir / "alice"), "--url", url]
    bob = ["--config-dir", str(mesh_dir / "bob"), "--url", url]
    with Running("listen", *bob, "--count", "1", "--timeout", "20", "--json") as listener:
        listener.err.wait_for(r"^connected as bob ")
        peers = run_cli("peers", *alice, "--json")
        assert peers.returncode == 0, peers.stderr
        assert {p["displayName"] for p in json_lines(peers.stdout)} == {"alice", "bob"}
        sent = run_cli("send", "bob", "hello bob", "--priority", "now", *alice)
        assert sent.returncode == 0, sent.stderr
        assert re.fullmatch(r"sent [0-9A-Za-z]{32}\n", sent.stdout)
        assert listener.wait() == 0, listener.err.text()
    message = json.loads(listener.out.text().splitlines()[-1])
    assert message["text"] == "hello bob"
    assert message["priority"] == "now"


def test_revoked_member_is_refused_at_its_next_hello(
    local_mesh: tuple[Path, str, BrokerProcess],
) -> None:
    mesh_dir, url, _broker = local_mesh
    bob = ["--config-dir", str(mesh_dir / "bob"), "--url", url]
    assert run_cli("peers", *bob).returncode == 0
    members_path = mesh_dir / "members.json"
    members = json.loads(members_path.read_text())
    for row in members["members"]:
        row["revoked"] = row["displayName"] == "bob"
    members_path.write_text(json.dumps(members))
    result = run_cli("peers", *bob)
    assert_one_line_error(result, "revoked")


def test_keygen_writes_a_private_identity_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "me.json"
    result = run_cli("keygen", "--out", str(out))
    assert result.returncode == 0, result.stderr
    pubkey = result.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", pubkey)
    assert out.stat().st_mode & 0o777 == 0o600
    data = json.loads(out.read_text())
    assert data["pubkey"] == pubkey and data["secretKey"].endswith(pubkey)
    assert data["secretKey"] not in result.stdout + result.stderr
    assert_one_line_error(run_cli("keygen", "--out", str(out)), "exists")


@pytest.mark.parametrize("args", [(), ("send",), ("listen",), ("peers",), ("broker",)])
def test_the_exit_statuses_are_in_the_help(args: tuple[str, ...]) -> None:
    result = run_cli(*args, "--help")
    assert result.returncode == 0
    assert "exit status:" in result.stdout
    expected = ("130", "143") if args == ("broker",) else ("124", "130", "143", "  3 ")
    assert all(code in result.stdout for code in expected), result.stdout


def test_mesh_init_force_keeps_each_members_other_meshes(tmp_path: Path) -> None:
    mesh_dir = tmp_path / "mesh"
    assert run_cli("mesh", "init", "--members", "alice,bob", "--dir", str(mesh_dir)).returncode == 0
    first = json.loads((mesh_dir / "members.json").read_text())["meshId"]
    # alice has joined another mesh too (say, with the claudemesh CLI).
    other = make_mesh(tmp_path / "elsewhere", "alice")
    (other_record,) = json.loads((other / "alice" / "config.json").read_text())["meshes"]
    other_record["slug"] = "elsewhere"
    config = mesh_dir / "alice" / "config.json"
    data = json.loads(config.read_text())
    data["meshes"].insert(0, other_record)
    config.write_text(json.dumps(data))
    refused = run_cli("mesh", "init", "--members", "alice,bob", "--dir", str(mesh_dir))
    assert_one_line_error(refused, "exists; pass --force")
    again = run_cli(
        "mesh", "init", "--members", "alice,bob", "--dir", str(mesh_dir), "--force", "--json"
    )
    assert again.returncode == 0, again.stderr
    (record,) = json_lines(again.stdout)
    assert record["type"] == "mesh" and record["meshId"] != first and record["slug"] == "local-mesh"
    assert [m["name"] for m in record["members"]] == ["alice", "bob"]
    assert record["members"][0]["configDir"] == str(mesh_dir / "alice")
    meshes = json.loads(config.read_text())["meshes"]
    assert [m["meshId"] for m in meshes] == [other_record["meshId"], record["meshId"]]
    assert config.stat().st_mode & 0o777 == 0o600


def test_keygen_json_says_what_the_key_is_for(tmp_path: Path) -> None:
    result = run_cli("keygen", "--out", str(tmp_path / "k.json"), "--json")
    assert result.returncode == 0, result.stderr
    (record,) = json_lines(result.stdout)
    assert record["type"] == "key" and re.fullmatch(r"[0-9a-f]{64}", record["pubkey"])
    assert record["path"] == str(tmp_path / "k.json")
    assert "No other subcommand reads it" in result.stderr
    assert "members file" in result.stderr
