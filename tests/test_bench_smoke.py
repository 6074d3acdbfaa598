"""The benchmarks run to the end and print their summary line (smoke tests: no timing asserted)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_bench(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=env,
    )


def check_last_line(result: subprocess.CompletedProcess[str], pattern: str) -> None:
    assert result.returncode == 0, f"exit code {result.returncode}\n{result.stderr[-4000:]}"
    lines = result.stdout.splitlines()
    assert lines, f"no output\n{result.stderr[-4000:]}"
    assert re.fullmatch(pattern, lines[-1]), f"last line {lines[-1]!r}\n{result.stdout[-4000:]}"


def test_e2e_bench_quick_run() -> None:
    pytest.importorskip("websockets", reason="bench/e2e.py compares against websockets")
    pytest.importorskip("anyio")
    pytest.importorskip("wsproto")
    result = run_bench("e2e.py", "--quick")
    check_last_line(result, r"e2e/wsproto-relay ratio: \d+\.\d\d")
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"e2e-sync/wsproto-relay ratio: \d+\.\d\d", lines[-2]), lines[-2]
    assert re.fullmatch(r"e2e/websockets-echo ratio: \d+\.\d\d", lines[-3]), lines[-3]


def test_client_bench_quick_run() -> None:
    pytest.importorskip("websockets", reason="bench/client.py compares against websockets")
    pytest.importorskip("anyio")
    pytest.importorskip("nacl", reason="bench/client.py signs real ed25519 hellos")
    result = run_bench("client.py", "--quick")
    check_last_line(result, r"client/minimal ratios: cpu \d+\.\d\d, p50 \d+\.\d\d")


def test_core_bench_runs() -> None:
    result = run_bench("core.py")
    check_last_line(result, r"core/json ratio: \d+\.\d\d")


def test_cli_bench_quick_run() -> None:
    pytest.importorskip("websockets", reason="bench/cli.py compares against websockets")
    pytest.importorskip("anyio")
    pytest.importorskip("nacl")
    result = run_bench("cli.py", "--quick")
    check_last_line(result, r"cli-send/websockets-send ratio: \d+\.\d\d")
