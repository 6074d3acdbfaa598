"""``python -m meshproto.testing.sim``: run the mesh simulation, or replay one run of it.

One run by default (seed 0). ``--seed S --clients N`` replays exactly the run
a failure report names. ``--faults F`` keeps going, seed after seed, until
``F`` faults have been injected (``--runs R`` counts runs instead). The last
line is ``sim: R runs, F faults, M messages, lost L, duplicated D``; the exit
status is 1 if any run failed, and each failure is printed with its replay
command and the events that led to it.
"""

from __future__ import annotations

import argparse
import sys

from ._plants import PLANTS
from ._runner import TRACE_LINES, Totals, run_seed
from ._world import DEFAULT_RUN_FAULTS, SimFailure


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m meshproto.testing.sim",
        description="Simulate a whole mesh (clients, a broker, the network, the clock) "
        "in one deterministic loop, injecting faults; every failure prints the command "
        "that replays it.",
    )
    parser.add_argument("--seed", type=int, default=0, help="the first run's seed (default 0)")
    parser.add_argument(
        "--clients",
        type=int,
        default=None,
        help="clients (sessions) per run; by default 2 to 10, chosen by the seed",
    )
    parser.add_argument(
        "--run-faults",
        type=int,
        default=DEFAULT_RUN_FAULTS,
        metavar="K",
        help=f"faults injected in each run before it settles (default {DEFAULT_RUN_FAULTS})",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--faults",
        type=int,
        default=None,
        metavar="F",
        help="run seed after seed until F faults in all (default: one run)",
    )
    group.add_argument("--runs", type=int, default=None, metavar="R", help="run R seeds")
    parser.add_argument(
        "--trace", type=int, default=TRACE_LINES, metavar="N", help="trace events per failure"
    )
    parser.add_argument(
        "--plant",
        choices=sorted(PLANTS),
        default=None,
        help="plant a bug in the client core, to see the simulation catch it",
    )
    parser.add_argument(
        "--no-oracle",
        action="store_true",
        help="check only the whole-mesh invariants, not each client's contract oracle",
    )
    parser.add_argument(
        "--link-buffer",
        type=int,
        default=None,
        metavar="BYTES",
        help="the broker's send buffer per socket (default: chosen by the seed); "
        "its push window is a quarter of it",
    )
    parser.add_argument(
        "--progress", type=int, default=0, metavar="N", help="print the totals every N runs"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.clients is not None and args.clients < 2:
        print("--clients must be at least 2", file=sys.stderr)
        return 2
    if args.run_faults < 1:
        print("--run-faults must be at least 1", file=sys.stderr)
        return 2
    totals = Totals()
    seed = args.seed
    while True:
        if args.runs is not None:
            if totals.runs >= args.runs:
                break
        elif args.faults is not None:
            if totals.faults >= args.faults:
                break
        elif totals.runs >= 1:
            break
        try:
            totals.add(
                run_seed(
                    seed,
                    clients=args.clients,
                    faults=args.run_faults,
                    plant=args.plant,
                    oracle=not args.no_oracle,
                    link_buffer=args.link_buffer,
                    trace=args.trace,
                )
            )
        except SimFailure as failure:
            totals.add_failure(failure)
            print(failure.report, flush=True)
        seed += 1
        if args.progress and totals.runs % args.progress == 0:
            print(f"{totals.line()} (seeds {args.seed}..{seed - 1})", file=sys.stderr, flush=True)
    print(totals.details())
    print(totals.line())
    return 1 if totals.failures else 0


if __name__ == "__main__":
    sys.exit(main())
