"""The command at its edges: closed and full streams, odd arguments, broken files.

Whatever a user types, whatever state the machine is in, the command ends
with one line on stderr and a documented status: never a traceback, a hang
or a lost line of its own output that it claims to have printed. Most
tests run the command in this process (``_app.main``) against a broker
served from a background thread, so they are fast; the few that must see
what the interpreter itself does at exit run it as a subprocess.
"""

from __future__ import annotations

import errno
import io
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from anyio.from_thread import start_blocking_portal
from anyio_helpers import MESH, WsPeer, fake_broker, make_broker
from cli_helpers import TIMEOUT, command, environment, run_cli
from sync_helpers import in_portal, served

from meshproto import AcceptingVerifier, Broker, Member, StaticRegistry
from meshproto_cli._app import main
from meshproto_cli._files import JoinedMesh, save_joined_meshes
from meshproto_crypto import KeyPair


def _config(tmp_path: Path, url: str, name: str = "alice") -> Path:
    """A config dir whose one joined mesh is the open mesh of ``make_broker``."""
    keys = KeyPair.generate()
    directory = tmp_path / name
    record = JoinedMesh(
        MESH, f"member-{name}", "test", "test", keys.pubkey, keys.secret_key, url,
        "2026-12-01T00:00:00.000Z",
    )  # fmt: skip
    save_joined_meshes(directory, [record])
    return directory


@contextmanager
def _broker() -> Iterator[str]:
    """The URL of a reference broker (open mesh ``MESH``) served from another thread."""
    with start_blocking_portal() as portal, served(portal, make_broker()) as broker:
        yield broker.url


def _push(message_id: str, text: str = "aGVsbG8=") -> dict[str, Any]:
    return {
        "type": "push",
        "messageId": message_id,
        "meshId": MESH,
        "senderPubkey": "ab" * 32,
        "senderName": "peer",
        "priority": "now",
        "nonce": "",
        "ciphertext": text,
        "createdAt": "2026-12-01T00:00:00.000Z",
    }


async def _serve_pushes(peer: WsPeer, *pushes: dict[str, Any]) -> None:
    """Accept any hello, push ``pushes``, then answer peer lists (with nobody) until closed."""
    hello = await peer.next_frame()
    assert hello["type"] in ("hello", "session_hello")
    await peer.send_json({"type": "hello_ack", "presenceId": "p-cli"})
    for push in pushes:
        await peer.send_json(push)
    while True:
        frame = await peer.next_frame(timeout=60)
        if frame.get("type") == "list_peers":
            await peer.send_json({"type": "peers_list", "peers": [], "_reqId": frame.get("_reqId")})


async def _two_pushes(peer: WsPeer) -> None:
    await _serve_pushes(peer, _push("m-1"), _push("m-2"))


@contextmanager
def _pushing_broker() -> Iterator[str]:
    """The URL of a scripted broker that pushes two messages to whoever connects."""
    with start_blocking_portal() as portal, in_portal(portal, fake_broker(_two_pushes)) as (url, _):
        yield url


class _Failing(io.TextIOBase):
    """A text stream that takes ``lines`` lines, then fails every write with ``error``."""

    def __init__(self, error: OSError, lines: int = 0) -> None:
        self.error = error
        self.lines = lines
        self.written = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if self.written.count("\n") >= self.lines:
            raise self.error
        self.written += text
        return len(text)

    def flush(self) -> None:
        pass


def _pipe_closed() -> OSError:
    return BrokenPipeError(errno.EPIPE, "Broken pipe")


def _disk_full() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


# --- output streams ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [("peers",), ("peers", "--json"), ("send", "*", "hi"), ("send", "*", "hi", "--json")],
)
def test_a_reader_that_stops_reading_ends_a_one_shot_command_quietly_with_141(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: tuple[str, ...],
) -> None:
    with _broker() as url:
        config = _config(tmp_path, url)
        monkeypatch.setattr(sys, "stdout", _Failing(_pipe_closed()))
        status = main([*args, "--config-dir", str(config), "--timeout", "10"])
    assert status == 141  # what a shell reports for a command a closed pipe stopped
    assert capsys.readouterr().err == ""  # `| head -1` needs no explanation


def test_listen_into_a_reader_that_stops_reading_ends_quietly_with_141(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stdout = _Failing(_pipe_closed(), lines=1)  # `listen --json | head -1`
    with _pushing_broker() as url:
        config = _config(tmp_path, url)
        monkeypatch.setattr(sys, "stdout", stdout)
        status = main(["listen", "-q", "--json", "--config-dir", str(config), "--timeout", "10"])
    assert status == 141
    assert capsys.readouterr().err == ""
    assert json.loads(stdout.written)["messageId"] == "m-1"


@pytest.mark.parametrize("run", ["listen", "peers"])
def test_a_full_stdout_is_one_error_line_not_a_traceback(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    run: str,
) -> None:
    with _pushing_broker() if run == "listen" else _broker() as url:
        config = _config(tmp_path, url)
        monkeypatch.setattr(sys, "stdout", _Failing(_disk_full()))
        status = main([run, "-q", "--json", "--config-dir", str(config), "--timeout", "10"])
    assert status == 1
    assert capsys.readouterr().err == (
        "meshproto: error: cannot write to stdout: No space left on device\n"
    )


def test_a_message_listen_could_not_print_is_delivered_to_the_next_listen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    alice_keys = KeyPair.generate()
    alice = tmp_path / "alice"
    record = JoinedMesh(
        MESH, "member-alice", "test", "test", alice_keys.pubkey, alice_keys.secret_key,
        "ws://127.0.0.1:1/ws", "2026-12-01T00:00:00.000Z",
    )  # fmt: skip
    save_joined_meshes(alice, [record])
    registry = StaticRegistry(
        [Member(MESH, "member-alice", alice_keys.pubkey, "alice")], open_mesh=MESH
    )
    broker = Broker(registry, verifier=AcceptingVerifier(), rng=random.Random(7))
    with start_blocking_portal() as portal, served(portal, broker) as server:
        url = ["--url", server.url]
        bob = _config(tmp_path, server.url, "bob")
        sent = main(["send", alice_keys.pubkey, "kept", "--priority", "now", "-q",
                     "--config-dir", str(bob), "--timeout", "10"])  # fmt: skip
        assert sent == 0  # held for alice, who is not listening yet
        with monkeypatch.context() as patched:
            patched.setattr(sys, "stdout", _Failing(_disk_full()))
            failed = main(["listen", "-q", "--json", "--config-dir", str(alice), *url,
                           "--timeout", "10"])  # fmt: skip
        assert failed == 1  # it could not print the message
        capsys.readouterr()
        again = main(["listen", "-q", "--json", "--count", "1", "--config-dir", str(alice),
                      *url, "--timeout", "10"])  # fmt: skip
    assert again == 0
    assert json.loads(capsys.readouterr().out)["text"] == "kept"


def test_with_stderr_closed_json_output_stays_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stderr", None)  # what Python makes of `2>&-`
    status = main(["send", "bob", "hi", "--json", "--config-dir", str(tmp_path / "none")])
    assert status == 1
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["error"] == "file"


def test_a_full_stderr_still_gives_the_status_of_the_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _broker() as url:
        config = _config(tmp_path, url)
    # The broker has stopped: the command times out, and cannot say so.
    monkeypatch.setattr(sys, "stderr", _Failing(_disk_full()))
    status = main(["peers", "--config-dir", str(config), "--timeout", "0.5"])
    assert status == 124


def test_stdout_on_a_full_disk_is_one_line_even_at_exit(tmp_path: Path) -> None:
    with _broker() as url:
        config = _config(tmp_path, url)
        with open("/dev/full", "w") as full:
            result = subprocess.run(
                command("peers", "--json", "--config-dir", str(config)),
                stdout=full,
                stderr=subprocess.PIPE,
                text=True,
                timeout=TIMEOUT,
                check=False,
                env=environment(),
            )
    assert result.returncode == 1
    assert result.stderr == "meshproto: error: cannot write to stdout: No space left on device\n"


@pytest.mark.parametrize(
    ("encoding", "folder", "name", "shown"),
    [
        ("utf-8", b"mesh-\xff", "team", "mesh-\\udcff"),  # a path that is not UTF-8
        ("ascii", b"mesh-e", "caf\u00e9", "caf\\xe9"),  # a name the stdout cannot encode
    ],
    ids=["path-not-utf8", "name-stdout-cannot-encode"],
)
def test_output_a_stdout_cannot_encode_is_escaped_not_an_error(
    tmp_path: Path, encoding: str, folder: bytes, name: str, shown: str
) -> None:
    target = os.path.join(os.fsencode(tmp_path), folder)
    result = subprocess.run(
        [os.fsencode(arg) for arg in command("mesh", "init", "--name", name, "--members", "alice")]
        + [b"--dir", target],
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
        env=environment({"PYTHONIOENCODING": encoding}),
    )
    assert (result.returncode, result.stderr) == (0, b"")
    assert shown.encode() in result.stdout  # escaped, as Python escapes what stderr cannot take
    assert os.path.isdir(target)


def test_a_broker_whose_stdout_reader_went_away_serves_on(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # `meshproto broker --port 0 | head -1`: the lines after the URL find the pipe closed.
    tried = threading.Event()

    class _Closed(_Failing):
        def write(self, text: str) -> int:
            tried.set()
            return super().write(text)

    def stop_once_it_has_spoken() -> None:
        if tried.wait(TIMEOUT):
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(sys, "stdout", _Closed(_pipe_closed()))
    stopper = threading.Thread(target=stop_once_it_has_spoken)
    stopper.start()
    try:
        status = main(["broker", "--port", "0"])
    finally:
        stopper.join(TIMEOUT)
    assert status == 143  # it served until SIGTERM, as ever
    assert capsys.readouterr().err == "terminated\n"
    assert "cannot write to stdout (Broken pipe); serving all the same" in caplog.text


# --- arguments -----------------------------------------------------------------------------


def _bounded_main(args: list[str], seconds: float = 10.0) -> int:
    """``main(args)``, stopped with SIGTERM if it runs past ``seconds`` (a broker that serves)."""
    done = threading.Event()

    def stop_if_still_running() -> None:
        if not done.wait(seconds):
            os.kill(os.getpid(), signal.SIGTERM)

    stopper = threading.Thread(target=stop_if_still_running)
    stopper.start()
    try:
        return main(args)
    finally:
        done.set()
        stopper.join(TIMEOUT)


def _one_error(capsys: pytest.CaptureFixture[str]) -> str:
    """The one line the command said on stderr, without its ``meshproto: error:``."""
    captured = capsys.readouterr()
    (line,) = captured.err.splitlines()
    assert line.startswith("meshproto: error: "), line
    return line.removeprefix("meshproto: error: ")


def test_send_from_a_closed_stdin_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", None)  # what Python makes of `<&-`
    status = main(["send", "*", "-", "--config-dir", str(tmp_path)])
    assert status == 1
    assert _one_error(capsys) == "nothing to send: stdin is closed"


class _Endless(io.RawIOBase):
    """``/dev/zero`` as stdin: every read is full, and reading to the end never ends."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        buffer[:] = b"x" * len(buffer)
        return len(buffer)

    def readall(self) -> bytes:
        raise AssertionError("read to the end of an endless stream")


def test_send_from_an_endless_stdin_reads_a_bounded_amount_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # `meshproto send bob - < /dev/zero` once read until memory ran out.
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(_Endless())))
    status = main(["send", "*", "-", "--config-dir", str(tmp_path)])
    assert status == 1
    assert _one_error(capsys) == ("stdin holds more than 1 MiB; a message is at most 65536 bytes")


@pytest.mark.parametrize("body", ["", "\n"])
def test_an_empty_message_is_refused_before_connecting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str
) -> None:
    # `meshproto send bob "$UNSET"`: refused as an empty stdin is, not sent as nothing.
    status = main(["send", "*", body, "--config-dir", str(tmp_path), "--json"])
    assert status == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["error"] == "error"
    assert captured.err == "meshproto: error: nothing to send: the message is empty\n"


@pytest.mark.parametrize("run", ["listen", "peers", "send"])
@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("ws://" + "a" * 300 + "/ws", "the host cannot be looked up"),
        ("ws://127.0.0.1:1/a b", "the URL path must be printable ASCII without spaces"),
    ],
)
def test_a_url_no_connection_could_use_is_one_line_before_connecting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], run: str, url: str, complaint: str
) -> None:
    # Once a traceback from the resolver (listen), an "I/O thread failed" refusal
    # (peers, send), or h11's complaint logged at every attempt until --timeout.
    config = _config(tmp_path, "ws://127.0.0.1:1/ws")
    args = [run, *(["*", "hi"] if run == "send" else []), "-q", "--url", url]
    status = main([*args, "--config-dir", str(config), "--timeout", "5"])
    assert status == 1
    assert _one_error(capsys).startswith(complaint)


# --- files ---------------------------------------------------------------------------------


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "config.json is not valid JSON: nested too deeply"),
        (b'\xff\xfe{"version": 1}', "config.json is not UTF-8 text (invalid start byte at byte 0)"),
    ],
)
def test_a_config_file_no_parser_can_read_is_a_file_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data: bytes, complaint: str
) -> None:
    _write(tmp_path / "config.json", data)
    status = main(["peers", "--json", "--config-dir", str(tmp_path)])
    assert status == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["error"] == "file"
    assert captured.err == f"meshproto: error: {tmp_path / complaint}\n"


def _file_error(tmp_path: Path, *run: str) -> str:
    """The one error line of ``meshproto RUN --json`` on config dir ``tmp_path`` (bounded)."""
    result = run_cli(*run, "--json", "--config-dir", str(tmp_path), timeout=TIMEOUT)
    assert result.returncode == 1, result.stderr
    assert json.loads(result.stdout)["error"] == "file"
    (line,) = result.stderr.splitlines()
    return line.removeprefix("meshproto: error: ")


@pytest.mark.parametrize("target", ["missing.json", "config.json"], ids=["dangling", "loop"])
def test_a_config_json_that_is_a_broken_link_says_so_rather_than_no_joined_mesh(
    tmp_path: Path, target: str
) -> None:
    # Once "no joined mesh in …; create one with 'meshproto mesh init'": the way to lose a mesh.
    (tmp_path / "config.json").symlink_to(target)
    assert _file_error(tmp_path, "peers") == (
        f"{tmp_path / 'config.json'} is a broken link (to {target})"
    )


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (os.mkfifo, "a FIFO"),  # once a hang: open() waits for a writer
        (lambda path: path.symlink_to("/dev/zero"), "a character device"),  # once endless reading
    ],
    ids=["fifo", "device"],
)
def test_a_config_json_that_is_not_a_file_is_refused_without_reading_it(
    tmp_path: Path, make: Any, kind: str
) -> None:
    make(tmp_path / "config.json")
    assert _file_error(tmp_path, "peers") == f"{tmp_path / 'config.json'} is {kind}, not a file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file whatever its mode")
def test_a_config_json_nobody_may_read_is_a_file_problem(tmp_path: Path) -> None:
    _write(tmp_path / "config.json", b"{}").chmod(0)
    assert _file_error(tmp_path, "peers") == (
        f"cannot read {tmp_path / 'config.json'}: Permission denied"
    )


def test_a_session_key_file_that_is_a_broken_link_is_not_replaced_by_a_new_key(
    tmp_path: Path,
) -> None:
    # A new key would make the session a stranger to the broker; the link may point at a
    # drive that is not mounted yet.
    config, sessions = _joined(tmp_path)
    sessions.mkdir(parents=True)
    (sessions / "listen.json").symlink_to(tmp_path / "unmounted" / "listen.json")
    assert _file_error(config, "listen", "--timeout", "1") == (
        f"{sessions / 'listen.json'} is a broken link (to {tmp_path / 'unmounted' / 'listen.json'})"
    )
    assert (sessions / "listen.json").is_symlink()


def test_a_members_file_that_is_a_fifo_stops_the_broker_in_one_line(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "members.json")
    result = run_cli("broker", "--port", "0", "--mesh", str(tmp_path / "members.json"))
    assert result.returncode == 1
    assert result.stderr == f"meshproto: error: {tmp_path / 'members.json'} is a FIFO, not a file\n"


def test_a_deeply_nested_members_file_stops_the_broker_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    members = _write(tmp_path / "members.json", b"[" * 100_000)
    status = _bounded_main(["broker", "--port", "0", "--mesh", str(members)])
    assert status == 1
    assert _one_error(capsys) == f"{members} is not valid JSON: nested too deeply"


def _joined(tmp_path: Path) -> tuple[Path, Path]:
    """A config dir with one joined mesh, and the folder its session files go in."""
    config = _config(tmp_path, "ws://127.0.0.1:1/ws")
    return config, config / "meshproto-sessions" / MESH


@pytest.mark.parametrize("run", [("peers",), ("listen",)])
def test_a_file_where_the_sessions_folder_should_be_is_a_file_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], run: tuple[str, ...]
) -> None:
    config, _ = _joined(tmp_path)
    (config / "meshproto-sessions").write_text("")
    status = main([*run, "--json", "--config-dir", str(config), "--timeout", "1"])
    assert status == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["error"] == "file"
    assert captured.err == (
        f"meshproto: error: cannot create {config / 'meshproto-sessions' / MESH}: Not a directory\n"
    )


def test_a_folder_where_a_session_lock_should_be_is_a_file_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, sessions = _joined(tmp_path)
    (sessions / "listen.lock").mkdir(parents=True)
    status = main(["listen", "--config-dir", str(config), "--timeout", "1"])
    assert status == 1
    assert _one_error(capsys) == (
        f"cannot open the session lock {sessions / 'listen.lock'}: Is a directory"
    )


def test_a_session_lock_on_a_read_only_file_system_still_locks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from meshproto_cli import _files  # noqa: PLC0415

    config, _ = _joined(tmp_path)
    held = _files.lock_session(config, MESH, "listen")  # makes the lock file
    assert isinstance(held, _files.SessionLock)
    held.release()
    real_open = os.open

    def read_only(path: Any, flags: int, *args: Any) -> int:
        if flags & (os.O_RDWR | os.O_WRONLY | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(_files.os, "open", read_only)
    first = _files.lock_session(config, MESH, "listen")
    assert isinstance(first, _files.SessionLock)  # a lock all the same, without the pid
    try:
        second = _files.lock_session(config, MESH, "listen")
        assert isinstance(second, str)  # held: a second command is refused
    finally:
        first.release()


def test_a_lock_file_holding_bytes_that_are_not_text_names_no_pid(tmp_path: Path) -> None:
    from meshproto_cli import _files  # noqa: PLC0415

    config, sessions = _joined(tmp_path)
    first = _files.lock_session(config, MESH, "listen")
    assert isinstance(first, _files.SessionLock)
    try:
        (sessions / "listen.lock").write_bytes(b"\xff\xfe")
        assert _files.lock_session(config, MESH, "listen") == "another process"
    finally:
        first.release()


def test_a_members_file_that_lists_one_key_twice_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Which row would count, the revoked one or the other? Neither: say so.
    key = "ab" * 32
    rows = [
        {"memberId": "m-1", "pubkey": key, "displayName": "alice", "revoked": True},
        {"memberId": "m-2", "pubkey": key, "displayName": "mallory"},
    ]
    members = tmp_path / "members.json"
    members.write_text(json.dumps({"version": 1, "meshId": "m", "members": rows}))
    status = _bounded_main(["broker", "--port", "0", "--mesh", str(members)])
    assert status == 1
    assert _one_error(capsys) == (
        f"{members} member #2: pubkey {key[:16]}… is member #1's too; each key may be listed once"
    )


# --- what the network sends ------------------------------------------------------------------


@pytest.mark.parametrize(
    "created_at",
    ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59Z", "x" * 999],
)
def test_a_timestamp_past_the_calendar_is_shown_as_now(
    created_at: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from meshproto_cli._output import local_time  # noqa: PLC0415

    monkeypatch.setenv("TZ", "Pacific/Kiritimati")  # UTC+14: the year 9999 runs out here
    time.tzset()
    try:
        shown = local_time(created_at)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert len(shown) == len("19:21:38")


async def _push_from_the_end_of_time(peer: WsPeer) -> None:
    late = {**_push("m-1"), "createdAt": "9999-12-31T23:59:59-14:00"}
    await _serve_pushes(peer, late, _push("m-2"))


def test_listen_shows_a_push_stamped_past_the_calendar(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with (
        start_blocking_portal() as portal,
        in_portal(portal, fake_broker(_push_from_the_end_of_time)) as (url, _),
    ):
        config = _config(tmp_path, url)
        status = main(["listen", "-q", "--count", "2", "--config-dir", str(config)])
    assert status == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.endswith("peer (now!): hello") for line in lines] == [True, True]


def test_keygen_into_a_folder_says_so_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "keys"
    folder.mkdir()
    status = main(["keygen", "--out", str(folder), "--force"])
    assert status == 1
    assert (
        _one_error(capsys) == f"--out {folder} is a folder; name a file, such as {folder}/me.json"
    )
    assert list(tmp_path.iterdir()) == [folder]  # no temporary file left beside it
    assert list(folder.iterdir()) == []


def test_mesh_init_refuses_a_broker_url_no_member_could_connect_to(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(
        ["mesh", "init", "--members", "a", "--broker-url", "http://x", "--dir", str(tmp_path / "m")]
    )
    assert status == 1
    assert _one_error(capsys) == (
        "--broker-url: the URL must start with ws:// or wss://, got 'http://x'"
    )
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("value", ["0.01", "1e-300", "0", "nan"])
def test_a_retry_max_that_would_hammer_the_broker_is_bad_usage(
    capsys: pytest.CaptureFixture[str], value: str
) -> None:
    # 1e-300 once made thousands of connection attempts a second.
    with pytest.raises(SystemExit) as stopped:
        main(["peers", "--retry-max", value])
    assert stopped.value.code == 2
    assert "argument --retry-max: must be" in capsys.readouterr().err
