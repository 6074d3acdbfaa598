"""The whole simulated mesh: the fault schedule, healing, and when a run has settled.

See the package docstring (:mod:`meshproto.testing.sim`) for what is
simulated and what is checked; :mod:`._core` for how the machinery is
laid out.
"""

from __future__ import annotations

from ... import (
    ConnectionState,
    LocalProtocolError,
)
from ._clients import _Clients
from ._ledger import ACKED
from ._model import (
    _KINDS,
    _WEIGHTS,
    DEFAULT_RUN_FAULTS,
    FAULT_KINDS,
    MESH,
    SETTLE_LIMIT,
    RunStats,
    SimFailure,
    _Link,
    _Process,
)

__all__ = ["DEFAULT_RUN_FAULTS", "FAULT_KINDS", "RunStats", "SimFailure", "Simulation"]


class Simulation(_Clients):
    """A whole mesh in one deterministic loop; ``run()`` it once.

    The parameters are :class:`~meshproto.testing.sim._core._SimCore`'s.
    """

    # --- faults ---------------------------------------------------------------------------

    def _next_fault_delay(self) -> float:
        return self.now + self.rng.expovariate(self.params.fault_rate)

    def _fault(self) -> None:
        if self.healing:
            return
        kind = self.rng.choices(_KINDS, _WEIGHTS)[0]
        if self._inject(kind):
            self._count_fault(kind)
        if not self.healing:
            self._at(self._next_fault_delay(), self._fault)

    def _count_fault(self, kind: str) -> None:
        stats = self.stats
        stats.faults += 1
        stats.fault_counts[kind] += 1
        if stats.faults >= self.fault_budget:
            self._heal()

    def _live_procs(self) -> list[_Process]:
        return [p for s in self.sessions for p in s.procs if p.ended is None]

    def _inject(self, kind: str) -> bool:
        rng = self.rng
        if kind == "restart":
            if self.broker is None:
                return False
            self._restart_broker(graceful=rng.random() < 0.3)
            return True
        if kind == "takeover":
            single = [s for s in self.sessions if len(s.procs) == 1]
            if not single:
                return False
            session = rng.choice(single)
            self._note(session.name, "another process takes the session over")
            self._start_process(session)
            return True
        if kind == "slow":
            session = rng.choice(self.sessions)
            until = self.now + rng.uniform(2.0, 90.0)
            session.slow_until = until
            self._note(session.name, f"the application stops taking messages until {until:.3f}")
            self._at(until, self._resume_consumer, session)
            return True
        if kind == "resend":
            session = rng.choice(self.sessions)
            proc = self._live(session)
            if proc is None:
                return False
            acked = [
                m
                for m in self.ledger.messages.values()
                if m.sender == session.name and m.state == ACKED and m.pending_in is None
            ]
            if not acked:
                return False
            message = acked[-1 - min(len(acked) - 1, int(rng.expovariate(0.2)))]
            try:
                handle = proc.core.send(
                    message.target,
                    message.lid,
                    message.priority,
                    now=self._cnow(proc),
                    client_message_id=message.cmid,
                )
            except LocalProtocolError as exc:
                self.ledger.violation(
                    "resolution", f"{proc.name}: re-sending acknowledged {message.lid}: {exc}"
                )
                return True
            if proc.oracle is not None:
                proc.oracle.sent(handle)
            message.pending_in = proc
            proc.sends[handle.id] = (message, True)
            self._note(proc.name, f"the application re-sends {message.describe()}")
            self._client_after(proc)
            return True
        procs = self._live_procs()
        if not procs:
            return False
        proc = rng.choice(procs)
        link = proc.link
        if kind == "cut":
            if link is None or link.dead:
                return False
            self._note(proc.name, f"FAULT: transport {link.transport_id} cut")
            self._kill(link)
        elif kind == "stall":
            if link is None or link.dead or link.stalled:
                return False
            self._note(proc.name, f"FAULT: transport {link.transport_id} stalls (dead NAT)")
            link.stalled = True
        elif kind == "partition":
            proc.partition_until = self.now + rng.uniform(5.0, 60.0)
            self._note(proc.name, f"FAULT: network down until {proc.partition_until:.3f}")
            if link is not None:
                link.stalled = True
        elif kind == "delay":
            proc.spike = rng.uniform(0.2, 15.0)
            proc.spike_until = self.now + rng.uniform(1.0, 30.0)
            self._note(proc.name, f"FAULT: +{proc.spike:.3f} s delay until {proc.spike_until:.3f}")
        elif kind == "skew":
            proc.skew = rng.uniform(-59.0, 59.0)
            self._note(proc.name, f"FAULT: wall clock off by {proc.skew:+.3f} s")
        elif kind == "crash":
            self._crash(proc)
        return True

    def _targeted_cut(self, link: _Link) -> None:
        if self.healing or link.dead or link.proc.ended is not None:
            return
        self._note(link.proc.name, f"FAULT: transport {link.transport_id} cut near a write")
        self._kill(link)
        self._count_fault("cut-targeted")

    # --- the end ------------------------------------------------------------------------

    def _heal(self) -> None:
        """The fault budget is spent: heal the network, stop the workload, let it settle."""
        self.healing = True
        self._settle_by = self.now + SETTLE_LIMIT
        self._note("SIM", "faults stop; the mesh settles")
        for session in self.sessions:
            session.slow_until = 0.0
            session.status = "idle"
            for proc in list(session.procs):
                proc.spike_until = 0.0
                proc.partition_until = 0.0
                if proc.ended is None and proc.core.state is not ConnectionState.CLOSED:
                    proc.core.set_status("idle", now=self._cnow(proc))
                    self._client_after(proc)
        self._at(self.now + 1.0, self._check_quiet)

    def _check_quiet(self) -> None:
        if self._quiet() or self.now >= self._settle_by:
            self._done = True
            return
        self._at(self.now + 2.0, self._check_quiet)

    def _quiet(self) -> bool:
        if self.broker is None or self.ledger.undelivered or self.ledger.unsettled():
            return False
        for session in self.sessions:
            proc = session.current
            if proc is None or len(session.procs) != 1 or proc.ended is not None:
                return False
            core = proc.core
            if (
                core.state is not ConnectionState.OPEN
                or core.pending_sends
                or core.inbox_size
                or proc.requests
                or (proc.link is not None and proc.link.backlog)
            ):
                return False
        return all(self.store.count_for(MESH, m.pubkey) == 0 for m in self.members)

    def _report_unsettled(self) -> None:
        ledger = self.ledger
        problems = []
        unresolved = []
        if self.broker is None:
            problems.append("the broker is down")
        for session in self.sessions:
            proc = session.current
            if proc is None:
                problems.append(f"session {session.name} has no process")
                continue
            core = proc.core
            if core.state is not ConnectionState.OPEN:
                problems.append(f"{proc.name} is {core.state}")
            if proc.sends:
                problems.append(f"{proc.name} has {len(proc.sends)} sends unresolved")
            unresolved += [
                f"{proc.name}: send {send_id} of {message.describe()} never resolved"
                for send_id, (message, _) in proc.sends.items()
            ]
            if core.inbox_size:
                problems.append(f"{proc.name} holds {core.inbox_size} messages in its inbox")
        for member in self.members:
            held = self.store.count_for(MESH, member.pubkey)
            if held:
                problems.append(f"{held} messages still stored for member {member.pubkey[:8]}")
        if problems:
            ledger.violation(
                "unsettled",
                f"not settled {SETTLE_LIMIT:g} s after the faults stopped: " + "; ".join(problems),
            )
        for text in unresolved:
            ledger.violation("unresolved", text)

    def _sample(self) -> None:
        """Memory and bounds, every 10 virtual seconds."""
        if self._done:
            return
        self._at(self.now + 10.0, self._sample)
        peaks = self.stats.peaks
        ledger = self.ledger
        live = self._live_procs()
        values = {"processes": len(live)}
        broker = self.broker
        if broker is not None:
            stored = len(self.store)
            values.update(
                connections=broker.connection_count,
                presences=broker.presence_count,
                claims=broker.claimed_count,
                stored=stored,
            )
            if broker.connection_count != len(self.conns):
                ledger.violation(
                    "bound",
                    f"the broker has {broker.connection_count} sockets, its server "
                    f"{len(self.conns)}",
                )
            if broker.connection_count > 3 * len(live) + 4:
                ledger.violation(
                    "memory", f"{broker.connection_count} sockets for {len(live)} processes"
                )
            while self._retired and self._retired[0][0] < self.now - 400.0:
                self._retired.popleft()
            allowed = len(self.sessions) + len(self._retired)
            if broker.presence_count > allowed:
                ledger.violation(
                    "memory", f"{broker.presence_count} presences, at most {allowed} expected"
                )
            if broker.claimed_count > stored:
                ledger.violation(
                    "memory", f"{broker.claimed_count} claims for {stored} stored messages"
                )
            limit = self.params.store_limit
            for member in self.members:
                held = self.store.count_for(MESH, member.pubkey)
                if held > limit:
                    ledger.violation(
                        "bound", f"{held} messages stored for one member, over the limit {limit}"
                    )
        values["inboxes"] = sum(p.core.inbox_size for p in live)
        values["outboxes"] = sum(p.core.pending_sends for p in live)
        values["unread_bytes"] = max((p.link.unread for p in live if p.link is not None), default=0)
        for key, value in values.items():
            if value > peaks.get(key, 0):
                peaks[key] = value
