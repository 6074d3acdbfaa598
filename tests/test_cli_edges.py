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
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from anyio.from_thread import start_blocking_portal
from anyio_helpers import MESH, WsPeer, fake_broker, make_broker
from cli_helpers import TIMEOUT, command, environment
from sync_helpers import in_portal, served

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


async def _two_pushes(peer: WsPeer) -> None:
    """Accept any hello, push two broadcasts, then keep the socket open."""
    hello = await peer.next_frame()
    assert hello["type"] in ("hello", "session_hello")
    await peer.send_json({"type": "hello_ack", "presenceId": "p-cli"})
    await peer.send_json(_push("m-1"))
    await peer.send_json(_push("m-2"))
    while True:
        frame = await peer.next_frame(timeout=60)
        if frame.get("type") == "list_peers":
            await peer.send_json({"type": "peers_list", "peers": [], "_reqId": frame.get("_reqId")})


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
