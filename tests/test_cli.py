"""The ``meshproto`` command, run as a user would run it (subprocesses on loopback)."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from meshproto_cli._demo import run_demo
from meshproto_crypto import KeyPair

COMMANDS = ("demo", "broker", "send", "listen", "peers", "keygen", "mesh")


def run_cli(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshproto_cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )


def start_cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "meshproto_cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


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


def test_unreachable_broker_times_out_with_one_line(tmp_path: Path) -> None:
    mesh_dir = tmp_path / "mesh"
    assert run_cli("mesh", "init", "--members", "alice", "--dir", str(mesh_dir)).returncode == 0
    result = run_cli(
        "send", "*", "hi", "--config-dir", str(mesh_dir / "alice"),
        "--url", "ws://127.0.0.1:9/ws", "--timeout", "1.5",
    )  # fmt: skip
    assert_one_line_error(result, "timed out")


def test_a_display_name_that_is_not_valid_unicode_is_one_clear_line(tmp_path: Path) -> None:
    mesh_dir = tmp_path / "mesh"
    assert run_cli("mesh", "init", "--members", "alice", "--dir", str(mesh_dir)).returncode == 0
    # As the shell passes $'\xff': an argv byte that is not UTF-8.
    undecodable = os.fsdecode(b"\xff")
    result = run_cli(
        "send", "*", "hi", "--name", undecodable, "--config-dir", str(mesh_dir / "alice"),
        "--timeout", "5",
    )  # fmt: skip
    assert_one_line_error(result, "display_name is not valid Unicode")


@pytest.fixture
def local_mesh(tmp_path: Path) -> Iterator[tuple[Path, str, subprocess.Popen[str]]]:
    mesh_dir = tmp_path / "mesh"
    init = run_cli("mesh", "init", "--members", "alice,bob", "--dir", str(mesh_dir))
    assert init.returncode == 0, init.stderr
    broker = start_cli(
        "broker", "--mesh", str(mesh_dir / "members.json"), "--port", "0",
        "--db", str(tmp_path / "broker.db"),
    )  # fmt: skip
    assert broker.stdout is not None
    line = broker.stdout.readline()
    match = re.search(r"ws://127\.0\.0\.1:\d+/ws", line)
    assert match, line
    try:
        yield mesh_dir, match.group(0), broker
    finally:
        broker.send_signal(signal.SIGINT)
        try:
            broker.wait(timeout=10)
        except subprocess.TimeoutExpired:
            broker.kill()
            broker.wait(timeout=10)


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
    local_mesh: tuple[Path, str, subprocess.Popen[str]],
) -> None:
    mesh_dir, url, _broker = local_mesh
    alice = ["--config-dir", str(mesh_dir / "alice"), "--url", url]
    bob = ["--config-dir", str(mesh_dir / "bob"), "--url", url]
    listener = start_cli("listen", *bob, "--count", "1", "--timeout", "20", "--json")
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            peers = run_cli("peers", *alice, "--json")
            assert peers.returncode == 0, peers.stderr
            if "bob" in {p["displayName"] for p in json.loads(peers.stdout)}:
                break
            time.sleep(0.1)
        sent = run_cli("send", "bob", "hello bob", "--priority", "now", *alice)
        assert sent.returncode == 0, sent.stderr
        assert re.fullmatch(r"sent [0-9A-Za-z]{32}\n", sent.stdout)
        out, err = listener.communicate(timeout=30)
    finally:
        listener.kill()
    assert listener.returncode == 0, err
    message = json.loads(out.strip().splitlines()[-1])
    assert message["text"] == "hello bob"
    assert message["priority"] == "now"


def test_revoked_member_is_refused_at_its_next_hello(
    local_mesh: tuple[Path, str, subprocess.Popen[str]],
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


def test_ctrl_c_stops_listen_cleanly(local_mesh: tuple[Path, str, subprocess.Popen[str]]) -> None:
    mesh_dir, url, _broker = local_mesh
    listener = start_cli("listen", "--config-dir", str(mesh_dir / "bob"), "--url", url)
    assert listener.stderr is not None
    assert "listening as" in listener.stderr.readline()
    listener.send_signal(signal.SIGINT)
    _, err = listener.communicate(timeout=20)
    assert listener.returncode == 130
    assert "Traceback" not in err


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
