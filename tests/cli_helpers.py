"""Running ``meshproto`` as a user would: subprocesses, a broker that can restart, meshes.

Everything binds 127.0.0.1 (port 0, or the port a restarted broker had), and
every wait is bounded in time.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from meshproto_cli._names import is_one_shot_session

TIMEOUT = 30.0  # the most any single command may take in these tests


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "meshproto_cli", *args]


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, **(extra or {})}
    env.pop("PYTHONWARNINGS", None)
    env.pop("NO_COLOR", None)
    return env


def run_cli(
    *args: str,
    timeout: float = TIMEOUT,
    env: dict[str, str] | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=environment(env),
        input=input,
    )


class Lines:
    """The lines a stream has produced so far, read by a thread; wait for one by pattern."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.lines.append("\0EOF")
            self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = TIMEOUT, start: int = 0) -> str:
        """The first line from index ``start`` that matches ``pattern`` (a regex)."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        with self._changed:
            while True:
                for line in self.lines[start:]:
                    if regex.search(line):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.lines and self.lines[-1] == "\0EOF"):
                    raise AssertionError(f"no line matching {pattern!r} in:\n" + self.text())
                self._changed.wait(remaining)

    def text(self) -> str:
        return "\n".join(line for line in self.lines if line != "\0EOF")

    def join(self, timeout: float = TIMEOUT) -> None:
        self._thread.join(timeout)


class Running:
    """``meshproto ARGS`` running in the background, its stdout and stderr read as lines."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            command(*args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment(env),
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.out = Lines(self.proc.stdout)
        self.err = Lines(self.proc.stderr)

    def wait(self, timeout: float = TIMEOUT) -> int:
        try:
            status = self.proc.wait(timeout=timeout)
        finally:
            self.stop()
        self.out.join()
        self.err.join()
        return status

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class BrokerProcess:
    """``meshproto broker`` in a subprocess that can be stopped and started on the same port.

    Its log goes to a file (``log``), so that a chatty broker never blocks on a pipe.
    """

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.args = args
        self.log = tmp_path / "broker.log"
        self.port = 0
        self.url = ""
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> str:
        with self.log.open("a", encoding="utf-8") as log:
            self.proc = subprocess.Popen(
                command("broker", *self.args, "--port", str(self.port)),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=environment(),
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = re.search(r"wss?://127\.0\.0\.1:(\d+)/ws", line)
        if match is None:
            self.kill()
            raise AssertionError(f"the broker did not start: {line!r}\n{self.log.read_text()}")
        self.port = int(match.group(1))
        self.url = match.group(0)
        return self.url

    def stop(self, signum: int = signal.SIGINT) -> int:
        proc = self.proc
        assert proc is not None
        proc.send_signal(signum)
        try:
            return proc.wait(timeout=15)
        finally:
            self.kill()

    def restart(self) -> str:
        self.stop()
        deadline = time.monotonic() + 10
        while True:  # the port may stay busy for a moment
            try:
                return self.start()
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def kill(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()

    def records(self) -> list[dict[str, Any]]:
        """The log's JSON records (with ``--log-format json``)."""
        return [
            json.loads(line)
            for line in self.log.read_text(encoding="utf-8").splitlines()
            if line.startswith("{")
        ]


def make_mesh(tmp_path: Path, members: str = "alice,bob") -> Path:
    directory = tmp_path / "mesh"
    result = run_cli("mesh", "init", "--members", members, "--dir", str(directory))
    assert result.returncode == 0, result.stderr
    return directory


#: Reconnect within 0.2 s: no test waits through a real backoff.
FAST = ("--retry-max", "0.2")


def member(mesh: Path, name: str, url: str, *extra: str) -> list[str]:
    """The identity options of member ``name`` (add :data:`FAST` to reconnect quickly)."""
    return ["--config-dir", str(mesh / name), "--url", url, *extra]


def revoke(mesh: Path, name: str) -> None:
    members_path = mesh / "members.json"
    data = json.loads(members_path.read_text(encoding="utf-8"))
    for row in data["members"]:
        if row["displayName"] == name:
            row["revoked"] = True
    members_path.write_text(json.dumps(data), encoding="utf-8")


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def attempts(count: int, seconds: float) -> Iterator[int]:
    deadline = time.monotonic() + seconds
    for attempt in range(count):
        if time.monotonic() > deadline:
            return
        yield attempt


def wait_until_listed(mesh: Path, observer: str, name: str, url: str) -> dict[str, Any]:
    """Poll ``peers --json`` as ``observer`` until a live peer called ``name`` is listed."""
    for _ in attempts(60, 20.0):
        result = run_cli("peers", "--json", *member(mesh, observer, url))
        assert result.returncode == 0, result.stderr
        for peer in json_lines(result.stdout):
            if (
                peer["displayName"] == name
                and peer["online"]
                and not peer["self"]
                and not is_one_shot_session(peer["sessionId"])
            ):
                return peer
        time.sleep(0.1)
    raise AssertionError(f"{name} never appeared in the peer list")
