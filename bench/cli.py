"""``meshproto send bob hi``, process start to exit, against a minimal websockets script.

Run ``python bench/cli.py`` (``--quick`` for a smoke run, ``-r`` sets the
rounds). Everything binds 127.0.0.1, port 0; every wait is bounded.

Setup
-----

``meshproto mesh init --members alice,bob`` in a temporary folder, then, as
separate processes, the reference broker (``meshproto broker --mesh
members.json --port 0``, its rate limit raised so that it never throttles
the bench) and bob's ``meshproto listen --json``, so that the peer the
sends target is online, as it is when someone types ``send bob hi``.

Measurements
------------

send (ours)
    ``meshproto send bob hi --config-dir mesh/alice --url URL``: the console
    script installed next to ``sys.executable`` (``-m meshproto_cli`` if there
    is none; the line ``command:`` says which), from spawn to exit. It reads
    alice's joined-mesh file, takes a one-shot session, opens a
    ``session_hello`` (an attestation by the member key, the hello signed by
    the session key), lists the peers to resolve ``bob``, seals ``hi`` to
    bob's session key and waits for the broker's ack.
websockets (the baseline)
    A standalone script (:data:`REFERENCE`, written to the temporary folder)
    on ``websockets`` and PyNaCl, importing nothing of meshproto: it reads the
    same ``config.json``, connects, sends a member ``hello`` signed with
    ed25519 over ``meshId|memberId|pubkey|timestamp`` (docs/protocol.md
    §3.1), waits for ``hello_ack``, sends one ``send`` of ``hi`` sealed with
    ``crypto_box`` to bob's member key (§4.1, §5), waits for its ``ack`` and
    exits. It is told bob's key rather than asking for the peer list: one
    round trip less than ours, on loopback a fraction of a millisecond.
python -c pass
    The floor: an interpreter that starts and exits (not in the ratio).

Every process runs with bytecode caching on (``PYTHONDONTWRITEBYTECODE`` is
taken out of its environment), as for an installed package: pip writes the
baseline's bytecode at install, while an editable install of ours would
otherwise compile every module again on every run.

One warm-up run of each comes first. Then ``ROUNDS`` rounds, each running
the three once in an order that alternates; medians are reported, with the
spread (slowest - fastest). Afterwards, a few runs of the same ``send`` under
``python -X importtime`` give the time its imports take (the median of the
sum of the top-level imports, which ``-X importtime`` itself inflates a
little), and whether it imported any module of the broker side
(:data:`BROKER_SIDE`). Bob's listener must have received every message
(both kinds are real deliveries), or the bench fails.

The last line is ``cli-send/websockets-send ratio: X.XX`` = ours (median
ms) / the baseline (median ms); lower is better for us.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

ROUNDS = 15
QUICK_ROUNDS = 2
TIMEOUT = 60.0  # the most any one process may take
#: Modules a client command has no use for (checked in the ``-X importtime`` runs).
BROKER_SIDE = re.compile(
    r"^(meshproto\._broker\w*|meshproto\._presence|meshproto\._store|meshproto\._admission"
    r"|meshproto\._ratelimit|meshproto\._registry|meshproto_anyio\._server"
    r"|meshproto_anyio\.sqlite_store|meshproto_ws\._broker_driver|meshproto_ws\._commit_gate"
    r"|meshproto_cli\._broker_command|meshproto_cli\._brokerlog|meshproto_cli\._mcp\w*"
    r"|sqlite3|_sqlite3|mcp)$"
)

REFERENCE = r'''
"""connect, signed hello, one send, its ack: python ref.py CONFIG_DIR URL TARGET_PUBKEY."""
import asyncio
import base64
import json
import os
import secrets
import sys
import time
from pathlib import Path

from nacl import bindings
from websockets.asyncio.client import connect


async def main(config_dir, url, target):
    mesh = json.loads(Path(config_dir, "config.json").read_text("utf-8"))["meshes"][0]
    secret = bytes.fromhex(mesh["secretKey"])
    async with connect(url, compression=None) as ws:
        timestamp = int(time.time() * 1000)
        signed = f"{mesh['meshId']}|{mesh['memberId']}|{mesh['pubkey']}|{timestamp}"
        signature = bindings.crypto_sign(signed.encode(), secret)[:64]
        await ws.send(json.dumps({
            "type": "hello", "meshId": mesh["meshId"], "memberId": mesh["memberId"],
            "pubkey": mesh["pubkey"], "sessionId": mesh["memberId"] + ":reference",
            "pid": os.getpid(), "cwd": os.getcwd(), "peerType": "connector",
            "timestamp": timestamp, "signature": signature.hex(),
        }))
        while json.loads(await ws.recv())["type"] != "hello_ack":
            pass
        nonce = secrets.token_bytes(24)
        box = bindings.crypto_box(
            b"hi",
            nonce,
            bindings.crypto_sign_ed25519_pk_to_curve25519(bytes.fromhex(target)),
            bindings.crypto_sign_ed25519_sk_to_curve25519(secret),
        )
        send_id = secrets.token_hex(8)
        await ws.send(json.dumps({
            "type": "send", "id": send_id, "client_message_id": send_id,
            "targetSpec": target, "priority": "next",
            "nonce": base64.b64encode(nonce).decode(),
            "ciphertext": base64.b64encode(box).decode(),
        }))
        while True:
            frame = json.loads(await ws.recv())
            if frame.get("type") == "ack" and frame.get("id") == send_id:
                break
    if not frame.get("queued"):
        sys.exit(f"refused: {frame.get('error')}")
    print("sent", frame["messageId"])


asyncio.run(asyncio.wait_for(main(*sys.argv[1:4]), 20))
'''


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONWARNINGS", None)
    # Bytecode is cached, as for any installed package: with PYTHONDONTWRITEBYTECODE
    # an editable install compiles every module of ours again on every run, while
    # the baseline's libraries come with the bytecode pip wrote at install.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["NO_COLOR"] = "1"
    return env


def _command() -> tuple[list[str], str]:
    script = Path(sys.executable).parent / "meshproto"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)], f"{script} (the installed console script)"
    return [sys.executable, "-m", "meshproto_cli"], f"{sys.executable} -m meshproto_cli"


class _Lines:
    """A stream's lines, read by a thread; wait for one that matches."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if re.search(pattern, line):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise SystemExit(f"no line matching {pattern!r}: {self.lines[-5:]}")
                self._changed.wait(remaining)

    def count(self, pattern: str) -> int:
        with self._changed:
            return sum(1 for line in self.lines if re.search(pattern, line))


def _timed(argv: list[str]) -> float:
    """Milliseconds from spawn to exit; a failure ends the bench."""
    start = time.perf_counter()
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=TIMEOUT, check=False, env=_env()
    )
    elapsed = (time.perf_counter() - start) * 1000
    if result.returncode != 0:
        raise SystemExit(f"{argv} failed ({result.returncode}): {result.stderr[-2000:]}")
    return elapsed


def _imports_of(argv: list[str]) -> tuple[list[str], list[str]]:
    """What a run under ``-X importtime`` imported: its top-level imports in order, and the
    broker-side modules among all it imported."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", *argv],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        env=_env(),
    )
    if result.returncode != 0:
        raise SystemExit(f"{argv} failed ({result.returncode}): {result.stderr[-2000:]}")
    top: list[str] = []
    broker_side: list[str] = []
    for line in result.stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+\d+ \| (\s*)(\S+)", line)
        if match is None:
            continue
        indent, name = match.groups()
        if not indent and not name.endswith("__main__"):
            top.append(name)
        if BROKER_SIDE.match(name):
            broker_side.append(name)
    return top, broker_side


def _summary(label: str, values: list[float]) -> str:
    return (
        f"{label:<28} median {statistics.median(values):7.1f} ms"
        f"  spread {max(values) - min(values):6.1f} ms  (n={len(values)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help=f"a smoke run: {QUICK_ROUNDS} rounds")
    parser.add_argument("-r", "--rounds", type=int, default=None, help=f"(default: {ROUNDS})")
    options = parser.parse_args()
    rounds = options.rounds or (QUICK_ROUNDS if options.quick else ROUNDS)
    meshproto, described = _command()
    folder = Path(tempfile.mkdtemp(prefix="meshproto-bench-cli-"))
    broker = listener = None
    try:
        mesh = folder / "mesh"
        subprocess.run(
            [*meshproto, "mesh", "init", "--members", "alice,bob", "--dir", str(mesh)],
            capture_output=True,
            timeout=TIMEOUT,
            check=True,
            env=_env(),
        )
        members = json.loads((mesh / "members.json").read_text(encoding="utf-8"))["members"]
        bob = next(row["pubkey"] for row in members if row["displayName"] == "bob")
        broker = subprocess.Popen(
            [
                *meshproto,
                "broker",
                "-q",
                "--mesh",
                str(mesh / "members.json"),
                "--port",
                "0",
                "--rate-burst",
                "100000",
                "--rate-per-minute",
                "1000000",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=_env(),
        )
        assert broker.stdout is not None
        found = re.search(r"ws://127\.0\.0\.1:\d+/ws", broker.stdout.readline())
        if found is None:
            raise SystemExit("the broker did not start")
        url = found.group(0)
        listener = subprocess.Popen(
            [*meshproto, "listen", "--json", "--config-dir", str(mesh / "bob"), "--url", url],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        assert listener.stdout is not None and listener.stderr is not None
        received = _Lines(listener.stdout)
        _Lines(listener.stderr).wait_for(r"^connected as bob")
        reference = folder / "ref.py"
        reference.write_text(REFERENCE, encoding="utf-8")
        send_argv = [*meshproto, "send", "bob", "hi", "--config-dir", str(mesh / "alice")]
        send_argv += ["--url", url]
        # What send imports: the same command under this interpreter's -X importtime.
        modules, broker_side = _imports_of(["-m", "meshproto_cli", *send_argv[len(meshproto) :]])
        runs = {
            "send (ours)": send_argv,
            "websockets (baseline)": [
                sys.executable,
                str(reference),
                str(mesh / "alice"),
                url,
                bob,
            ],
            "python -c pass": [sys.executable, "-c", "pass"],
            "send's imports": [sys.executable, "-c", "import " + ", ".join(modules)],
        }
        times: dict[str, list[float]] = {label: [] for label in runs}
        for argv in runs.values():  # warm-up: page cache, .pyc files
            _timed(argv)
        labels = list(runs)
        for round_number in range(rounds):
            order = labels if round_number % 2 == 0 else labels[::-1]
            for label in order:
                times[label].append(_timed(runs[label]))
        sends = 1 + 2 * (rounds + 1)  # the -X importtime run, the warm-ups, the rounds
        deadline = time.monotonic() + 10
        while received.count(r'"text": "hi"') < sends and time.monotonic() < deadline:
            time.sleep(0.05)
        delivered = received.count(r'"text": "hi"')
        if delivered != sends:
            raise SystemExit(f"bob received {delivered} of {sends} messages")
    finally:
        for proc in (listener, broker):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)

    floor = statistics.median(times["python -c pass"])
    imports = statistics.median(times["send's imports"]) - floor
    print(f"python {sys.version.split()[0]}; command: {described}")
    print(f"{rounds} rounds, interleaved; bob received all {delivered} messages")
    for label, values in times.items():
        print(_summary(label, values))
    print(
        f"send's imports: {imports:.1f} ms over the floor"
        f" (python -c 'import ...' of the {len(modules)} top-level modules send imports)"
    )
    print(f"broker-side modules send imports: {', '.join(sorted(set(broker_side))) or 'none'}")
    ours = statistics.median(times["send (ours)"])
    baseline = statistics.median(times["websockets (baseline)"])
    print(f"cli-send/websockets-send ratio: {ours / baseline:.2f}")


if __name__ == "__main__":
    main()
