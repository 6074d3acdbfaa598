"""The README's example is the file in examples/, and it runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_examples_are_the_files_in_examples() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    names = ("two_peers.py", "in_memory.py")
    assert len(blocks) == len(names), "README should show both examples"
    for block, name in zip(blocks, names, strict=True):
        example = (ROOT / "examples" / name).read_text(encoding="utf-8")
        assert example.endswith(block), f"README example and examples/{name} differ"


def test_two_peers_example_delivers_a_direct_message() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "two_peers.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "bob received: hello, bob" in result.stdout


def test_in_memory_example_runs_and_round_trips() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "in_memory.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "acked as mmmm" in result.stdout
    assert "received: hi there" in result.stdout
    assert '"type":"client_ack"' in result.stdout


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    (quick_start,) = re.findall(r"## Quick start\n\n```sh\n(.*?)```", readme, re.S)
    commands = quick_start.strip().splitlines()
    assert len(commands) == 2, "the quick start has two commands: the demo and the tests"
    demo, tests = commands
    assert demo.endswith("meshproto demo")
    assert "pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert ci[-1] == tests, "the last line of .ci/run must be the README's test command"
