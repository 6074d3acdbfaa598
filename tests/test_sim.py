"""The mesh simulation: many seeds lose and duplicate nothing, and planted bugs are caught.

``test_many_seeds_lose_nothing_and_duplicate_nothing`` is the CI run: more
than 100,000 injected faults across many seeds, on two processes, ending
with the line ``sim: R runs, F faults, M messages, lost 0, duplicated 0``
(printed past pytest's capture, so that it shows in the CI log).
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import pytest

from meshproto.testing.sim import (
    PLANTS,
    SimFailure,
    Simulation,
    Totals,
    run_seed,
    run_seeds,
)

ROOT = Path(__file__).resolve().parents[1]

#: The CI run: this many seeds, 1,000 faults each, 2 to 10 clients by seed.
CI_RUNS = 110
CI_WORKERS = 2


def test_many_seeds_lose_nothing_and_duplicate_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    seeds = list(range(CI_RUNS))
    chunks = [seeds[i :: CI_WORKERS * 4] for i in range(CI_WORKERS * 4)]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=CI_WORKERS, mp_context=context) as pool:
        parts = list(pool.map(partial(run_seeds), chunks))
    totals = Totals()
    totals.merge(parts)
    with capsys.disabled():
        print(f"\n{totals.details()}\n{totals.line()}")
    assert not totals.failures, "\n\n".join(f.report for f in totals.failures[:3])
    assert totals.runs == CI_RUNS
    assert totals.faults >= 100_000
    assert totals.messages > 50_000
    assert totals.lost == 0
    assert totals.duplicated == 0
    assert totals.line() == (
        f"sim: {CI_RUNS} runs, {totals.faults} faults, {totals.messages} messages, "
        "lost 0, duplicated 0"
    )
    # Every kind of fault happened, and so did what they bring about.
    assert all(totals.fault_counts[kind] > 0 for kind in totals.fault_counts)
    assert totals.redeliveries > 0  # a crash between taking and acknowledging
    assert totals.induced["overflow"] > 0  # a slow consumer outgrew the broker's buffer


def test_a_seed_replays_exactly() -> None:
    first = Simulation(11, clients=5, faults=300).run()
    second = Simulation(11, clients=5, faults=300).run()
    assert first.digest == second.digest
    assert first.messages == second.messages > 0
    assert Simulation(12, clients=5, faults=300).run().digest != first.digest


def test_a_run_does_not_depend_on_the_hash_seed() -> None:
    code = (
        "from meshproto.testing.sim import Simulation;"
        "print(Simulation(3, clients=6, faults=200).run().digest)"
    )
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
        )
        digests.add(result.stdout.strip())
    assert len(digests) == 1


# --- planted bugs ---------------------------------------------------------------

#: What catches each plant: the client's contract oracle, or (without it) the
#: whole-mesh invariants alone.
CAUGHT_BY = {
    ("double-ack", True): "contract",
    ("double-ack", False): "resolution",
    ("dropped-resend", True): "contract",
    ("dropped-resend", False): "unsettled",
    ("duplicate-delivery", True): "contract",
    ("duplicate-delivery", False): "duplicated",
}


@pytest.mark.parametrize(("plant", "oracle"), sorted(CAUGHT_BY))
def test_a_planted_bug_is_caught_with_a_replayable_seed(plant: str, oracle: bool) -> None:
    with pytest.raises(SimFailure) as caught:
        run_seed(2, clients=4, faults=300, plant=plant, oracle=oracle, trace=20)
    failure = caught.value
    assert failure.kind == CAUGHT_BY[(plant, oracle)]
    command = (
        f"python -m meshproto.testing.sim --seed 2 --clients 4 --run-faults 300 --plant {plant}"
    )
    if not oracle:
        command += " --no-oracle"
    assert failure.command == command
    report = failure.report
    if plant == "dropped-resend" and not oracle:
        assert "never resolved" in report
    assert f"replay: {command}" in report
    assert "trace, the last 20 events before it" in report
    # The plant is gone afterwards: the same run passes.
    run_seed(2, clients=4, faults=300, oracle=oracle)


def test_every_plant_is_tested() -> None:
    assert {plant for plant, _ in CAUGHT_BY} == set(PLANTS)


def test_the_printed_command_replays_the_failure() -> None:
    with pytest.raises(SimFailure) as caught:
        run_seed(2, clients=4, faults=300, plant="duplicate-delivery", oracle=False)
    command = caught.value.command.split()
    assert command[:3] == ["python", "-m", "meshproto.testing.sim"]
    result = subprocess.run(
        [sys.executable, *command[1:], "--trace", "5"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[1] == caught.value.report.splitlines()[1]  # the same violation
    assert "trace, the last 5 events before it" in result.stdout
    assert lines[-1].startswith("sim: 1 runs, 300 faults, ")
    assert lines[-1].endswith(", lost 0, duplicated 16")


def test_the_command_runs_a_seed_and_prints_the_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "meshproto.testing.sim", "--seed", "4", "--runs", "2"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    last = result.stdout.splitlines()[-1]
    assert last.startswith("sim: 2 runs, 2000 faults, ")
    assert last.endswith(", lost 0, duplicated 0")


def test_a_backlog_larger_than_the_send_buffer_arrives_a_window_at_a_time() -> None:
    """The run that found the broker dropping a member at every reconnect.

    Right after a hello the broker used to push every stored message of the
    member at once; its server drops a socket whose send buffer overflows,
    so a member with more stored than one buffer holds (here 15 messages and
    4 KiB) never got any of it. The push window sends a part per ping round
    trip: nothing is lost and nothing overflows.
    """
    stats = run_seed(3, clients=2, faults=40, link_buffer=4096, trace=0)
    assert stats.lost == 0 and stats.duplicated == 0
    assert stats.induced["overflow"] == 0
