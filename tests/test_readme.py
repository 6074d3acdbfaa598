"""The README's example is the file in examples/, and it runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_example_is_examples_in_memory_py() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```python\n(.*?)```", readme, re.S)
    assert block is not None, "README has no python example"
    example = (ROOT / "examples" / "in_memory.py").read_text(encoding="utf-8")
    assert example.endswith(block.group(1)), "README example and examples/in_memory.py differ"


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
