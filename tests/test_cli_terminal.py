"""``meshproto listen`` in a terminal, as a person sees it: a pseudo-terminal, a broker that
restarts and then revokes the member.

The screen is what the pty's other end reads, colour codes and all; the
assertions are about what a person would read there (colour removed), and
about what must never reach the terminal (a peer's own escape sequences).
"""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import threading
import time
from pathlib import Path

import pytest
from cli_helpers import (
    FAST,
    BrokerProcess,
    command,
    environment,
    make_mesh,
    member,
    revoke,
    run_cli,
)

_SGR = re.compile(rb"\x1b\[[0-9;]*m")  # the colour codes the command itself writes


class Screen:
    """Everything written to a pseudo-terminal, read by a thread."""

    def __init__(self, master: int) -> None:
        self.raw = b""
        self._master = master
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            ready, _, _ = select.select([self._master], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(self._master, 4096)
            except OSError:  # EIO: the other end is closed
                chunk = b""
            with self._changed:
                if not chunk:
                    self.raw += b"\0"
                    self._changed.notify_all()
                    return
                self.raw += chunk
                self._changed.notify_all()

    @property
    def text(self) -> str:
        """What a person reads: the command's colours removed, lines as lines."""
        return _SGR.sub(b"", self.raw).decode("utf-8", "replace").replace("\r\n", "\n")

    def wait_for(self, pattern: str, timeout: float = 20.0, *, after: int = 0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern, re.M)
        with self._changed:
            while True:
                match = regex.search(self.text, after)
                if match:
                    return match
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.raw.endswith(b"\0"):
                    pytest.fail(f"{pattern!r} never appeared on the screen:\n{self.text}")
                self._changed.wait(remaining)


def test_listen_in_a_terminal_through_a_broker_restart_and_a_revocation(tmp_path: Path) -> None:
    mesh = make_mesh(tmp_path, "alice,bob")
    broker = BrokerProcess(
        tmp_path, "--mesh", str(mesh / "members.json"), "--db", str(tmp_path / "broker.db")
    )
    url = broker.start()
    alice = member(mesh, "alice", url)
    master, slave = pty.openpty()
    listener = subprocess.Popen(
        command("listen", *member(mesh, "bob", url, *FAST)),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=environment({"TERM": "xterm-256color"}),
        close_fds=True,
    )
    os.close(slave)
    screen = Screen(master)
    try:
        # Connected: the URL, then the name and the key that peers list.
        screen.wait_for(rf"^connecting to {re.escape(url)}$")
        key = screen.wait_for(
            r"^connected as bob \(([0-9a-f]{16})\); listening \(Ctrl-C to stop\)$"
        )
        listed = run_cli("peers", *alice).stdout
        assert any(line.startswith(key.group(1)) for line in listed.splitlines()), listed

        # A message, shown with its sender's name; a hostile one, shown inert.
        assert run_cli("send", "bob", "hello from alice", "-p", "now", *alice).returncode == 0
        screen.wait_for(r"^\d\d:\d\d:\d\d \[local-mesh\] alice \(now!\): hello from alice$")
        assert run_cli("send", "bob", "\x1b[2J\x1b]0;owned\x07cleared?", *alice).returncode == 0
        screen.wait_for(r"alice \(next\): \\x1b\[2J\\x1b\]0;owned\\x07cleared\?$")

        # The broker restarts: the listener says so, and comes back by itself.
        mark = len(screen.text)
        broker.restart()
        screen.wait_for(
            r"^connection lost: the broker went away \(1001 broker shutting down\); "
            r"reconnecting in \d+\.\d s$",
            after=mark,
        )
        screen.wait_for(rf"^connected as bob \({key.group(1)}\)$", after=mark)
        assert run_cli("send", "bob", "after the restart", *alice).returncode == 0
        screen.wait_for(r"\[local-mesh\] alice \(next\): after the restart$", after=mark)

        # Revoked while the broker is down: the next hello is refused, for good.
        mark = len(screen.text)
        revoke(mesh, "bob")
        broker.restart()
        refusal = screen.wait_for(r"^meshproto: error: .*$", after=mark)
        status = listener.wait(timeout=20)
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait(timeout=10)
        broker.kill()
        os.close(master)
    assert status == 1
    assert refusal.group(0).startswith(
        "meshproto: error: refused by the broker (revoked: this member was removed from the "
        "mesh): You've been removed from "
    )
    assert screen.text.count("meshproto: error:") == 1
    assert "Traceback" not in screen.text
    # The terminal got the command's colours, and none of the peer's escapes.
    assert b"\x1b[1mbob\x1b[0m" in screen.raw and b"\x1b[1;31mnow!\x1b[0m" in screen.raw
    assert (
        b"\x1b[2J" not in screen.raw and b"\x1b]0;" not in screen.raw and b"\x07" not in screen.raw
    )
