"""The how-to pages' examples run, and what they show is what the code does.

* ``examples/blocking_peers.py`` runs (with its own broker, and stops at once
  on Ctrl-C), and ``docs/howto/blocking-client.md`` shows it verbatim;
* every complete program in the how-to pages (a ``python`` block that starts
  with a docstring) runs and prints what the page says;
* every other ``python`` block compiles, and every ``json`` block parses;
* the command walkthrough of ``docs/howto/command.md`` works as shown.

Everything binds 127.0.0.1 port 0, and every wait is bounded.
"""

from __future__ import annotations

import ast
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshproto import StaticRegistry

ROOT = Path(__file__).resolve().parents[1]
HOWTO = ROOT / "docs" / "howto"
PAGES = ("anyio-client.md", "blocking-client.md", "broker.md", "command.md")
EXAMPLE = ROOT / "examples" / "blocking_peers.py"
TIMEOUT = 60.0  # seconds: the most any one program or command may take here


def _blocks(page: str, language: str) -> list[str]:
    text = (HOWTO / page).read_text(encoding="utf-8")
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def _programs(page: str) -> list[str]:
    return [block for block in _blocks(page, "python") if block.startswith('"""')]


def _program(page: str, first_line: str) -> str:
    (found,) = [p for p in _programs(page) if p.splitlines()[0] == f'"""{first_line}"""']
    return found


def _run(
    argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        env=env,
        cwd=cwd,
    )


def _run_program(code: str, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    path = tmp_path / "program.py"
    path.write_text(code, encoding="utf-8")
    result = _run([sys.executable, str(path), *args], env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


# --- the blocking example ------------------------------------------------------------


def test_blocking_example_runs_with_its_own_broker() -> None:
    result = _run([sys.executable, str(EXAMPLE)])
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for line in (
        "alice and bob are open",
        "alice -> bob: 5 more sent without waiting, 0 not acked",
        "alice -> nobody: refused, no_peer (retryable: False)",
        "alice received: hi alice, from bob",
        "bob received: hello, bob",
        "bob received: message 4",
        "peers: alice, bob",
        "done",
    ):
        assert line in out.splitlines(), f"{line!r} missing from:\n{out}"
    assert re.search(r"^broker: ws://127\.0\.0\.1:\d+/ws \(started here\)$", out, re.M)
    assert re.search(r"^alice -> bob: acked as \w{32}$", out, re.M)
    assert out.index("bob received: message 0") < out.index("bob received: message 4")


def test_blocking_example_stops_at_once_on_ctrl_c() -> None:
    # A "broker" that accepts the connection and never answers: the example
    # blocks in wait_state() until it is interrupted.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = f"ws://127.0.0.1:{silent.getsockname()[1]}/ws"
        with subprocess.Popen(
            [sys.executable, str(EXAMPLE), url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as proc:
            try:
                assert _read_line(proc, TIMEOUT) == f"broker: {url}"
                time.sleep(0.3)  # now inside a blocking call
                proc.send_signal(signal.SIGINT)
                started = time.monotonic()
                _, err = proc.communicate(timeout=10)
            finally:
                _stop(proc)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert time.monotonic() - started < 5


def test_blocking_page_shows_the_example_verbatim() -> None:
    example = EXAMPLE.read_text(encoding="utf-8")
    shown = [b for b in _blocks("blocking-client.md", "python") if "def reference_broker" in b]
    assert len(shown) == 1, "blocking-client.md should show examples/blocking_peers.py once"
    assert example.endswith(shown[0]), "blocking-client.md and examples/blocking_peers.py differ"
    assert shown[0].startswith("from __future__ import annotations")


# --- the other pages' programs and fragments -------------------------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_anyio_tour_runs(backend: str, tmp_path: Path) -> None:
    if backend == "trio":
        pytest.importorskip("trio")
    code = _program(
        "anyio-client.md", "Two peers and a reference broker in one program, on asyncio or trio."
    )
    out = _run_program(code, tmp_path, backend).splitlines()
    assert out[:6] == [
        "alice hears: peer_joined bob",
        "peer: alice idle None",
        "peer: bob working answers questions",
        "refused: no_peer retryable: False",
        "bob: urgent",
        "bob, now idle: when you are free",
    ]
    assert out[6].startswith("alice's counters: Counters(")
    assert len(out) == 7


def test_anyio_config_reader_lists_the_peers_of_a_joined_mesh(tmp_path: Path) -> None:
    _meshproto("mesh", "init", "--members", "alice,bob", "--dir", str(tmp_path / "mesh"))
    code = _program(
        "anyio-client.md",
        "List the peers of a mesh this machine has joined, from the claudemesh config file.",
    )
    with _broker("--mesh", str(tmp_path / "mesh" / "members.json")) as url:
        env = _env(tmp_path, tmp_path / "mesh" / "alice")
        out = _run_program(code, tmp_path, url, env=env)
    (line,) = out.splitlines()
    assert re.fullmatch(r"[0-9a-f]{16} alice idle", line), out


def test_broker_restart_program_delivers_across_the_restart(tmp_path: Path) -> None:
    code = _program(
        "broker.md",
        "A reference broker with a member list and a SQLite store, restarted before delivery.",
    )
    assert _run_program(code, tmp_path).splitlines() == [
        "stored for bob: 1",
        "broker stopped",
        "bob received: for bob, who is offline",
        "stored for bob: 0",
    ]


def test_broker_members_file_fragment_reads_what_mesh_init_writes(tmp_path: Path) -> None:
    _meshproto("mesh", "init", "--members", "alice,bob", "--group", "team", cwd=tmp_path)
    (fragment,) = [b for b in _blocks("broker.md", "python") if "members.json" in b]
    cwd = Path.cwd()
    namespace: dict[str, object] = {}
    try:
        os.chdir(tmp_path)
        exec(compile(fragment, "broker.md", "exec"), namespace)
    finally:
        os.chdir(cwd)
    data = json.loads((tmp_path / "mesh" / "members.json").read_text(encoding="utf-8"))
    registry = namespace["registry"]
    assert isinstance(registry, StaticRegistry)
    members = registry.members(data["meshId"])
    assert [m.display_name for m in members] == ["alice", "bob"]
    assert all(g.name == "team" for m in members for g in m.groups)
    alice = data["members"][0]
    found = registry.lookup(data["meshId"], alice["pubkey"])
    assert found is not None and found.member_id == alice["memberId"]


@pytest.mark.parametrize("page", PAGES)
def test_every_fragment_compiles_and_every_json_block_parses(page: str) -> None:
    for block in _blocks(page, "python"):
        compile(block, page, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    for block in _blocks(page, "json"):
        json.loads(block)


def test_the_pages_have_the_programs_this_file_runs() -> None:
    assert len(_programs("anyio-client.md")) == 2
    assert len(_programs("broker.md")) == 1
    assert _programs("blocking-client.md") == []  # its program is examples/blocking_peers.py


# --- the command walkthrough --------------------------------------------------------------


def test_command_walkthrough(tmp_path: Path) -> None:
    mesh = tmp_path / "mesh"
    out = _meshproto("mesh", "init", "--members", "alice,bob", "--dir", str(mesh)).stdout
    assert f"serve it with: meshproto broker --mesh {mesh / 'members.json'}" in out
    for name in ("alice", "bob"):
        assert (mesh / name / "config.json").stat().st_mode & 0o777 == 0o600
    alice, bob = _env(tmp_path, mesh / "alice"), _env(tmp_path, mesh / "bob")
    bob_key = json.loads((mesh / "members.json").read_text(encoding="utf-8"))["members"][1][
        "pubkey"
    ]
    db = str(tmp_path / "broker.db")

    with _broker("--mesh", str(mesh / "members.json"), "--db", db) as url:
        with subprocess.Popen(
            _command("listen", "--count", "1", "--timeout", str(TIMEOUT), "--url", url),
            env=bob,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as listener:
            try:
                _wait_until_listed("bob", url, alice)
                sent = _meshproto(
                    "send", "bob", "hello", "--priority", "now", "--url", url, env=alice
                )
                assert re.fullmatch(r"sent \w{32}\n", sent.stdout)
                heard, err = listener.communicate(timeout=TIMEOUT)
            finally:
                _stop(listener)
        assert listener.returncode == 0, err
        assert re.fullmatch(r"\d\d:\d\d:\d\d \[local-mesh\] alice \(now!\): hello\n", heard)
        connecting, connected = err.splitlines()[:2]
        assert connecting == f"connecting to {url}"
        announced = re.fullmatch(
            r"connected as bob \(([0-9a-f]{16})\); listening \(Ctrl-C to stop\)", connected
        )
        assert announced, err

        header, *peers = _meshproto("peers", "--url", url, env=alice).stdout.splitlines()
        assert header.split() == ["KEY", "NAME", "STATUS", "ONLINE", "GROUPS", "SUMMARY"]
        assert sorted(line.split()[1] for line in peers) == ["alice", "bob"]
        assert any(line.split()[2] == "(you)" for line in peers)
        assert announced.group(1) in {line.split()[0] for line in peers}  # the key peers see

        refused = _meshproto("send", "carol", "hi", "--url", url, env=alice, status=1)
        assert refused.stderr.startswith("meshproto: error: ")
        assert len(refused.stderr.splitlines()) == 1
        # To bob's member key while bob is offline: kept in the store.
        _meshproto("send", bob_key, "while you were away", "--url", url, env=alice)

    # A new broker on the same store delivers it.
    with _broker("--mesh", str(mesh / "members.json"), "--db", db) as url:
        later = _meshproto("listen", "--count", "1", "--timeout", "20", "--url", url, env=bob)
        assert later.stdout.endswith("): while you were away\n")

    _meshproto("send", status=2)  # missing arguments: usage


# --- helpers ----------------------------------------------------------------------------


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "meshproto_cli", *args]


def _env(tmp_path: Path, config_dir: Path) -> dict[str, str]:
    env = dict(os.environ, HOME=str(tmp_path), CLAUDEMESH_CONFIG_DIR=str(config_dir))
    env.pop("PYTHONWARNINGS", None)
    return env


def _meshproto(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, status: int = 0
) -> subprocess.CompletedProcess[str]:
    result = _run(_command(*args), env=env, cwd=cwd)
    assert result.returncode == status, (args, result.stdout, result.stderr)
    return result


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The next line of ``proc``'s stdout, waiting at most ``timeout`` seconds."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no output in time"
    return proc.stdout.readline().rstrip("\n")


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


class _broker:
    """``meshproto broker ARGS --port 0`` in a subprocess; yields its URL, stops it with Ctrl-C."""

    def __init__(self, *args: str) -> None:
        self._argv = _command("broker", *args, "--port", "0")
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> str:
        self._proc = subprocess.Popen(  # its log (stderr) is not read: never let it block
            self._argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        line = _read_line(self._proc, TIMEOUT)
        match = re.fullmatch(r"meshproto broker listening on (ws://127\.0\.0\.1:\d+/ws)", line)
        if match is None:
            _stop(self._proc)
            raise AssertionError(f"unexpected first line: {line!r}")
        return match.group(1)

    def __exit__(self, *exc: object) -> None:
        proc = self._proc
        assert proc is not None
        try:
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=20)
            assert proc.returncode == 130, err
        finally:
            _stop(proc)


def _wait_until_listed(name: str, url: str, env: dict[str, str]) -> None:
    for _ in _attempts(40, 20.0):
        listed = _meshproto("peers", "--json", "--url", url, env=env).stdout.splitlines()
        if any(json.loads(peer)["displayName"] == name for peer in listed):
            return
        time.sleep(0.1)
    raise AssertionError(f"{name} never appeared in the peer list")


def _attempts(count: int, seconds: float) -> Iterator[int]:
    deadline = time.monotonic() + seconds
    for attempt in range(count):
        if time.monotonic() > deadline:
            return
        yield attempt
