"""The simulated mesh: the event heap in virtual time, the network and the broker.

See the package docstring (:mod:`meshproto.testing.sim`) for what is
simulated and what is checked. The machinery is three layers, each a class
over the one before: this module (the clock, the links, the broker),
:mod:`._clients` (the client processes and their applications' workload)
and :mod:`._world` (the fault schedule and quiescence), whose
:class:`Simulation` is the whole.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import traceback
from collections import deque
from collections.abc import Callable
from random import Random
from typing import Any

from ... import (
    AcceptingVerifier,
    Broker,
    CloseConnection,
    MemoryStore,
    PingConnection,
    Push,
    SendText,
    StaticRegistry,
    decode,
    expand_outputs,
)
from .._fakes import ContractViolation
from ._ledger import Ledger
from ._model import (
    _CLOSE,
    _OPEN,
    _OPENED,
    _PING,
    _PONG,
    _REFUSED,
    _TEXT,
    DEFAULT_RUN_FAULTS,
    T0,
    RunStats,
    SimFailure,
    _Link,
    _Member,
    _Params,
    _Process,
    _Session,
)
from ._plants import planted

__all__ = ["_SimCore"]


class _SimCore:
    """A whole mesh in one deterministic loop; ``run()`` it once.

    ``seed`` decides everything: the parameters of the run, the workload, the
    fault schedule, every delay, and the random generators of every client
    and broker. ``clients`` is the number of sessions (each runs one client
    process at a time, two during a takeover); ``faults`` is how many faults
    to inject before letting the mesh settle. ``plant`` plants a bug
    (:mod:`~meshproto.testing.sim._plants`) for the run. ``trace`` keeps the
    last that many events, for the failure report.
    """

    def __init__(
        self,
        seed: int,
        *,
        clients: int = 8,
        faults: int = DEFAULT_RUN_FAULTS,
        plant: str | None = None,
        trace: int = 0,
        oracle: bool = True,
        link_buffer: int | None = None,
    ) -> None:
        if clients < 2:
            raise ValueError("a mesh needs at least 2 clients")
        self.seed = seed
        self.clients = clients
        self.fault_budget = faults
        self.plant = plant
        self.use_oracle = oracle
        self.rng = rng = Random(seed)
        self.params = _Params(rng)
        self.link_buffer_override = link_buffer
        if link_buffer is not None:
            self.params.link_buffer = link_buffer
        self.stats = RunStats(seed, clients)
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0
        self._trace: deque[tuple[float, str, str]] | None = deque(maxlen=trace) if trace else None
        self.first_trace: list[tuple[float, str, str]] | None = None
        self.ledger = Ledger(self._on_violation)
        self.healing = False
        self._done = False
        self._settle_by = 0.0
        self._broker_last = T0
        self._retired: deque[tuple[float, str]] = deque()  # (when, session id) retired
        # The mesh: members, and sessions spread over them (some members get two).
        count = max(2, clients - clients // 3)
        self.members = [_Member(i) for i in range(count)]
        self.sessions: list[_Session] = []
        for i in range(clients):
            member = self.members[i % count]
            session = _Session(i, member, rng.random() < self.params.keyed)
            member.sessions.append(session)
            self.sessions.append(session)
        self.registry = StaticRegistry([m.member for m in self.members])
        self.store = MemoryStore()
        self.broker: Broker | None = None
        self.broker_gen = 0
        self.conns: dict[int, _Link] = {}
        self._next_conn = 0
        self._broker_armed: float | None = None
        self._broker_token = 0

    # --- what the later layers provide (see the module docstring) ----------------

    def _start_process(self, session: _Session, *, fresh_id: bool = False) -> None:
        raise NotImplementedError  # _clients

    def _client_after(self, proc: _Process, *, timer_at: float | None = None) -> None:
        raise NotImplementedError  # _clients

    def _schedule_workload(self, session: _Session) -> None:
        raise NotImplementedError  # _clients

    def _next_fault_delay(self) -> float:
        raise NotImplementedError  # _world

    def _fault(self) -> None:
        raise NotImplementedError  # _world

    def _quiet(self) -> bool:
        raise NotImplementedError  # _world

    def _report_unsettled(self) -> None:
        raise NotImplementedError  # _world

    def _sample(self) -> None:
        raise NotImplementedError  # _world

    def _targeted_cut(self, link: _Link) -> None:
        raise NotImplementedError  # _world

    # --- running ------------------------------------------------------------

    def command(self) -> str:
        """The one-line command that replays this run."""
        parts = [f"python -m meshproto.testing.sim --seed {self.seed} --clients {self.clients}"]
        if self.fault_budget != DEFAULT_RUN_FAULTS:
            parts.append(f"--run-faults {self.fault_budget}")
        if self.plant is not None:
            parts.append(f"--plant {self.plant}")
        if not self.use_oracle:
            parts.append("--no-oracle")
        if self.link_buffer_override is not None:
            parts.append(f"--link-buffer {self.link_buffer_override}")
        return " ".join(parts)

    def run(self) -> RunStats:
        """Run to quiescence and check everything; raise :class:`SimFailure` if anything broke."""
        with planted(self.plant):
            try:
                self._run()
            except ContractViolation as exc:
                self._fail("contract", str(exc))
            except SimFailure:
                raise
            except Exception as exc:
                where = traceback.format_exception(type(exc), exc, exc.__traceback__, chain=False)
                self._fail("crash", f"an unexpected exception: {exc!r}\n" + "".join(where))
        violations = self.ledger.violations
        if violations:
            kind, text = violations[0]
            more = "".join(f"\n  {k}: {t}" for k, t in violations[1:10])
            if len(violations) > 10:
                more += f"\n  ... and {len(violations) - 10} more"
            self._fail(kind, text + more, trace=self.first_trace)
        return self.stats

    def _run(self) -> None:
        self._start_broker()
        for session in self.sessions:
            self._start_process(session)
            self._schedule_workload(session)
        self._at(self._next_fault_delay(), self._fault)
        self._at(10.0, self._sample)
        heap = self._heap
        pop = heapq.heappop
        while heap and not self._done:
            when, _seq, fn, args = pop(heap)
            self.now = when
            fn(*args)
        self._finish()

    def _finish(self) -> None:
        stats = self.stats
        ledger = self.ledger
        if not self._quiet():
            self._report_unsettled()
        ledger.report_lost()
        stats.messages = ledger.acked_count
        stats.deliveries = ledger.deliveries
        stats.redeliveries = ledger.redeliveries
        stats.lost = ledger.lost
        stats.duplicated = ledger.duplicated
        stats.virtual_seconds = self.now
        digest = hashlib.sha256()
        for message in ledger.messages.values():
            sessions = sorted(message.sessions.items())
            digest.update(f"{message.lid}|{message.mid}|{message.state}|{sessions}\n".encode())
        digest.update(repr((stats.fault_counts, stats.induced, self.now)).encode())
        stats.digest = digest.hexdigest()[:16]

    def _fail(
        self, kind: str, text: str, *, trace: list[tuple[float, str, str]] | None = None
    ) -> None:
        stats = self.stats
        stats.lost = max(stats.lost, self.ledger.lost)
        stats.duplicated = max(stats.duplicated, self.ledger.duplicated)
        stats.virtual_seconds = self.now
        command = self.command()
        lines = [
            f"sim: run failed: seed {self.seed}, {self.clients} clients, "
            f"{self.stats.faults} of {self.fault_budget} faults injected, at {self.now:.6f} s",
            f"  {kind}: {text}",
            f"replay: {command}",
        ]
        events = trace if trace is not None else list(self._trace or ())
        if events:
            lines.append(f"trace, the last {len(events)} events before it (virtual seconds):")
            lines += [f"  {when:12.6f}  {who:<8} {what}" for when, who, what in events]
        else:
            lines.append("(replay it to see the trace around the failure)")
        raise SimFailure("\n".join(lines), stats, command, kind)

    def _on_violation(self, kind: str, text: str) -> None:
        if self.first_trace is None:
            self.first_trace = list(self._trace or ())
        self._note("LEDGER", f"{kind}: {text}")

    def _note(self, who: str, what: str) -> None:
        trace = self._trace
        if trace is not None:
            trace.append((self.now, who, what))

    def _at(self, when: float, fn: Callable[..., None], *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, fn, args))

    # --- clocks --------------------------------------------------------------

    def _cnow(self, proc: _Process) -> float:
        now = self.now + proc.mono
        now = max(now, proc.last_now)
        proc.last_now = now
        return now

    def _bnow(self) -> float:
        now = T0 + self.now
        now = max(now, self._broker_last)
        self._broker_last = now
        return now

    def _wall_ms(self, proc: _Process) -> int:
        return round((T0 + self.now + proc.skew) * 1000)

    # --- the network -----------------------------------------------------------

    def _latency(self, proc: _Process) -> float:
        params = self.params
        delay = params.latency + self.rng.expovariate(1.0 / params.jitter)
        if proc.spike_until > self.now:
            delay += proc.spike
        return delay

    def _c2b(self, link: _Link, kind: int, payload: Any = None) -> None:
        when = self.now + self._latency(link.proc)
        when = max(when, link.c2b_at)
        link.c2b_at = when
        self._at(when, self._arrive_broker, link, kind, payload)

    def _b2c(self, link: _Link, kind: int, payload: Any = None) -> None:
        when = self.now + self._latency(link.proc)
        when = max(when, link.b2c_at)
        link.b2c_at = when
        self._at(when, self._arrive_client, link, kind, payload)

    def _arrive_broker(self, link: _Link, kind: int, payload: Any) -> None:
        if link.dead or link.stalled:
            return
        broker = self.broker
        if kind == _OPEN:
            if broker is None:
                self._b2c(link, _REFUSED)  # nobody listens: connection refused
                return
            self._next_conn += 1
            conn_id = self._next_conn
            link.conn_id = conn_id
            link.broker_gen = self.broker_gen
            link.broker_open = True
            self.conns[conn_id] = link
            broker.connection_opened(conn_id, now=self._bnow())
            self._broker_after()
            self._b2c(link, _OPENED)
            return
        if broker is None or not link.broker_open or link.broker_gen != self.broker_gen:
            return
        conn_id = link.conn_id
        now = self._bnow()
        if kind == _TEXT:
            text: str = payload
            if text.startswith('{"type":"client_ack"') and broker.is_helloed(conn_id):
                mid = json.loads(text).get("brokerMessageId")
                if isinstance(mid, str):
                    self.ledger.ack_reached_broker(mid, self.now)
            elif text.startswith('{"type":"set_status"') and broker.is_helloed(conn_id):
                link.status = json.loads(text).get("status")
            broker.receive_text(conn_id, text, now=now)
        elif kind == _PING:
            broker.receive_ping(conn_id, now=now)
            self._b2c(link, _PONG)  # the broker's WebSocket answers at once
        elif kind == _PONG:
            broker.receive_pong(conn_id, now=now)
        elif kind == _CLOSE:
            link.broker_open = False
            del self.conns[conn_id]
            broker.connection_closed(conn_id, now=now)
        self._broker_after()

    def _arrive_client(self, link: _Link, kind: int, payload: Any) -> None:
        if link.dead or link.stalled or not link.client_attached:
            return
        proc = link.proc
        if proc.ended is not None:
            return
        if link.backlog or (kind not in (_OPENED, _REFUSED) and proc.core.reading_paused):
            link.backlog.append((kind, payload))  # not read: the client stopped reading
            if kind == _TEXT:
                link.unread += len(payload[0])
            return
        self._feed(link, kind, payload)

    def _feed(self, link: _Link, kind: int, payload: Any) -> None:
        proc = link.proc
        core = proc.core
        now = self._cnow(proc)
        if kind == _TEXT:
            text, push = payload
            if push is not None and proc.oracle is not None:
                proc.oracle.pushed(push)
            if self._trace is not None:
                self._note(proc.name, f"<- {text[:110]}")
            core.receive_text(text, now=now)
        elif kind == _PING:
            core.receive_ping(now=now)
            self._c2b(link, _PONG)
        elif kind == _PONG:
            core.receive_pong(now=now)
        elif kind == _OPENED:
            self._note(proc.name, f"transport {link.transport_id} open (conn {link.conn_id})")
            core.transport_opened(link.transport_id, now=now, wall_time_ms=self._wall_ms(proc))
        elif kind == _CLOSE:
            code, reason = payload
            link.client_attached = False
            self._note(proc.name, f"closed by the broker: {code} {reason}")
            core.transport_closed(link.transport_id, now=now, code=code, reason=reason)
        elif kind == _REFUSED:
            link.client_attached = False
            self._note(proc.name, f"transport {link.transport_id} refused")
            core.transport_closed(
                link.transport_id, now=now, code=None, reason="connection refused"
            )
        self._client_after(proc)

    def _drain_backlog(self, link: _Link) -> None:
        proc = link.proc
        while (
            link.backlog
            and not link.dead
            and link.client_attached
            and proc.ended is None
            and not proc.core.reading_paused
        ):
            kind, payload = link.backlog.popleft()
            if kind == _TEXT:
                link.unread -= len(payload[0])
            self._feed(link, kind, payload)
        link.draining = False

    def _kill(self, link: _Link, *, tell_broker: bool = True, tell_client: bool = True) -> None:
        """The link is cut: nothing more gets through; each side hears of it after a while."""
        if link.dead:
            return
        link.dead = True
        link.backlog.clear()
        link.unread = 0
        if tell_broker and link.broker_open and link.broker_gen == self.broker_gen:
            self._at(self.now + self._latency(link.proc), self._broker_hears_reset, link)
        if tell_client and link.client_attached:
            self._at(self.now + self._latency(link.proc), self._client_hears_reset, link)

    def _broker_hears_reset(self, link: _Link) -> None:
        broker = self.broker
        if broker is None or not link.broker_open or link.broker_gen != self.broker_gen:
            return
        link.broker_open = False
        del self.conns[link.conn_id]
        broker.connection_closed(link.conn_id, now=self._bnow())
        self._broker_after()

    def _client_hears_reset(self, link: _Link) -> None:
        proc = link.proc
        if not link.client_attached or proc.ended is not None:
            return
        link.client_attached = False
        self._note(proc.name, f"transport {link.transport_id} reset")
        proc.core.transport_closed(
            link.transport_id, now=self._cnow(proc), code=None, reason="connection reset"
        )
        self._client_after(proc)

    # --- the broker --------------------------------------------------------------

    def _start_broker(self) -> None:
        self.broker_gen += 1
        self.broker = Broker(
            self.registry,
            verifier=AcceptingVerifier(),
            store=self.store,
            rng=Random(self.rng.getrandbits(64)),
            options=self.params.broker_options,
        )
        self._broker_armed = None
        self._note("BROKER", f"started (generation {self.broker_gen}, {len(self.store)} stored)")
        self._broker_after()

    def _broker_after(self) -> None:
        broker = self.broker
        assert broker is not None
        conns = self.conns
        ledger = self.ledger
        dropped: list[int] = []  # sockets its server gave up on during this drain
        # What the broker writes in one go lands in its server's send buffer at
        # once; with what the client has left unread, it must fit.
        burst: dict[int, int] = {}
        while outputs := broker.drain_outputs():
            for out in expand_outputs(outputs):
                link = conns.get(out.conn_id)
                if link is None:
                    if out.conn_id in dropped:
                        continue  # written before the broker heard it was gone
                    raise ContractViolation(f"the broker wrote to socket {out.conn_id}, not open")
                if isinstance(out, SendText):
                    text = out.text
                    push: Push | None = None
                    if text.startswith('{"type":"push"'):
                        frame = decode(text)
                        assert isinstance(frame, Push)
                        push = frame
                        if push.subtype is None and push.sender_member_pubkey is None:
                            ledger.broker_pushed(push.message_id, link.proc.name, self.now)
                            if push.priority != "now" and link.status in ("working", "dnd"):
                                # This socket said it is busy: next and low wait (§4.5).
                                ledger.violation(
                                    "held",
                                    f"the broker pushed {push.priority} message "
                                    f"{push.message_id} to {link.proc.name}, whose socket "
                                    f"set status {link.status}",
                                )
                    written = burst.get(out.conn_id, 0) + len(text)
                    burst[out.conn_id] = written
                    if link.unread + written > self.params.link_buffer:
                        dropped.append(out.conn_id)
                        self._overflow(link)
                        continue
                    self._b2c(link, _TEXT, (text, push))
                elif isinstance(out, PingConnection):
                    self._b2c(link, _PING)
                elif isinstance(out, CloseConnection):
                    link.broker_open = False
                    del conns[out.conn_id]
                    self._b2c(link, _CLOSE, (out.code, out.reason))
        deadline = broker.next_deadline()
        if deadline != self._broker_armed:
            self._broker_armed = deadline
            self._broker_token += 1
            if deadline is not None:
                when = max(self.now, deadline - T0)
                self._at(when, self._broker_timer, self.broker_gen, self._broker_token)

    def _broker_timer(self, generation: int, token: int) -> None:
        broker = self.broker
        if broker is None or generation != self.broker_gen or token != self._broker_token:
            return
        deadline = self._broker_armed
        self._broker_armed = None
        now = self._bnow()
        if deadline is not None and now < deadline:
            now = self._broker_last = deadline
        broker.handle_timer(now)
        self._broker_after()

    def _overflow(self, link: _Link) -> None:
        """The broker's write buffer for a socket overflowed: its server gives the socket up."""
        broker = self.broker
        assert broker is not None
        self.stats.induced["overflow"] += 1
        self._note(link.proc.name, f"conn {link.conn_id}: broker's write buffer overflowed")
        link.broker_open = False
        del self.conns[link.conn_id]
        broker.connection_closed(link.conn_id, now=self._bnow())
        self._kill(link, tell_broker=False)

    def _restart_broker(self, graceful: bool) -> None:
        broker = self.broker
        assert broker is not None
        self._note("BROKER", f"{'shutting down' if graceful else 'crashes'}")
        if graceful:
            broker.shutdown(now=self._bnow())
            self._broker_after()  # the 1001 closes are on their way
        for link in list(self.conns.values()):
            link.broker_open = False
            self._kill(link, tell_broker=False)
        self.conns.clear()
        self.broker = None
        self.broker_gen += 1
        self._at(self.now + self.rng.uniform(0.05, 8.0), self._start_broker)
