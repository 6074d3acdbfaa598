"""Running many simulations, adding up what they did, and the one-line summary."""

from __future__ import annotations

from collections.abc import Iterable

from ._world import DEFAULT_RUN_FAULTS, RunStats, SimFailure, Simulation

__all__ = ["TRACE_LINES", "Totals", "clients_for", "run_seed", "run_seeds"]

#: Events of the trace printed with a failure, by default.
TRACE_LINES = 40


def clients_for(seed: int) -> int:
    """How many clients a run has when the caller does not say: 2 to 10, by seed."""
    return 2 + seed % 9


def run_seed(
    seed: int,
    *,
    clients: int | None = None,
    faults: int = DEFAULT_RUN_FAULTS,
    plant: str | None = None,
    oracle: bool = True,
    link_buffer: int | None = None,
    trace: int = TRACE_LINES,
) -> RunStats:
    """One run; raise :class:`SimFailure` (with ``trace`` events of trace) if it failed.

    The run goes once without a trace, for speed; a failed run is run again
    with one, which, the simulation being deterministic, fails the same way.
    """
    count = clients if clients is not None else clients_for(seed)

    def simulation(trace_lines: int) -> Simulation:
        return Simulation(
            seed,
            clients=count,
            faults=faults,
            plant=plant,
            oracle=oracle,
            link_buffer=link_buffer,
            trace=trace_lines,
        )

    try:
        return simulation(0).run()
    except SimFailure as first:
        if trace <= 0:
            raise
        try:
            simulation(trace).run()
        except SimFailure as traced:
            if traced.report.splitlines()[1] != first.report.splitlines()[1]:
                raise SimFailure(
                    f"{first.report}\n(NOT DETERMINISTIC: a second run failed otherwise:\n"
                    f"{traced.report})",
                    first.stats,
                    first.command,
                    "nondeterministic",
                ) from None
            raise traced from None
        raise SimFailure(
            f"{first.report}\n(NOT DETERMINISTIC: a second run passed)",
            first.stats,
            first.command,
            "nondeterministic",
        ) from None


class Totals:
    """What many runs did, added up."""

    def __init__(self) -> None:
        self.runs = 0
        self.faults = 0
        self.messages = 0
        self.deliveries = 0
        self.redeliveries = 0
        self.lost = 0
        self.duplicated = 0
        self.virtual_seconds = 0.0
        self.fault_counts: dict[str, int] = {}
        self.induced: dict[str, int] = {}
        self.peaks: dict[str, int] = {}
        self.failures: list[SimFailure] = []

    def add(self, stats: RunStats) -> None:
        self.runs += 1
        self.faults += stats.faults
        self.messages += stats.messages
        self.deliveries += stats.deliveries
        self.redeliveries += stats.redeliveries
        self.lost += stats.lost
        self.duplicated += stats.duplicated
        self.virtual_seconds += stats.virtual_seconds
        for kind, count in stats.fault_counts.items():
            self.fault_counts[kind] = self.fault_counts.get(kind, 0) + count
        for kind, count in stats.induced.items():
            self.induced[kind] = self.induced.get(kind, 0) + count
        for key, value in stats.peaks.items():
            self.peaks[key] = max(self.peaks.get(key, 0), value)

    def add_failure(self, failure: SimFailure) -> None:
        self.add(failure.stats)
        self.failures.append(failure)

    def merge(self, others: Iterable[Totals]) -> None:
        for other in others:
            self.runs += other.runs
            self.faults += other.faults
            self.messages += other.messages
            self.deliveries += other.deliveries
            self.redeliveries += other.redeliveries
            self.lost += other.lost
            self.duplicated += other.duplicated
            self.virtual_seconds += other.virtual_seconds
            for kind, count in other.fault_counts.items():
                self.fault_counts[kind] = self.fault_counts.get(kind, 0) + count
            for kind, count in other.induced.items():
                self.induced[kind] = self.induced.get(kind, 0) + count
            for key, value in other.peaks.items():
                self.peaks[key] = max(self.peaks.get(key, 0), value)
            self.failures += other.failures

    def line(self) -> str:
        """``sim: R runs, F faults, M messages, lost L, duplicated D``."""
        return (
            f"sim: {self.runs} runs, {self.faults} faults, {self.messages} messages, "
            f"lost {self.lost}, duplicated {self.duplicated}"
        )

    def details(self) -> str:
        """The rest of what happened, for a person reading the output."""
        kinds = ", ".join(
            f"{kind} {count}"
            for kind, count in sorted(self.fault_counts.items(), key=lambda kv: -kv[1])
        )
        induced = ", ".join(f"{kind} {count}" for kind, count in sorted(self.induced.items()))
        peaks = ", ".join(f"{key} {value}" for key, value in sorted(self.peaks.items()))
        hours = self.virtual_seconds / 3600
        return (
            f"faults: {kinds}\n"
            f"deliveries {self.deliveries} ({self.redeliveries} again to a later process of "
            f"the same session after a crash or takeover), {hours:.1f} virtual hours, "
            f"{len(self.failures)} failed runs\n"
            f"brought about: {induced or 'nothing'}\n"
            f"peaks: {peaks}"
        )


def run_seeds(
    seeds: Iterable[int],
    *,
    clients: int | None = None,
    faults: int = DEFAULT_RUN_FAULTS,
    trace: int = TRACE_LINES,
) -> Totals:
    """Run each seed (each failure is kept, with its trace) and add them up."""
    totals = Totals()
    for seed in seeds:
        try:
            totals.add(run_seed(seed, clients=clients, faults=faults, trace=trace))
        except SimFailure as failure:
            totals.add_failure(failure)
    return totals
