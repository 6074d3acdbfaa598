"""The simulated mesh: clients, a broker, the network between them, the clock and faults.

See the package docstring (:mod:`meshproto.testing.sim`) for what is
simulated and what is checked. This module is the machinery: one event heap
in virtual time, the links, the processes, the workload and the faults.
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
    BrokerError,
    BrokerOptions,
    ClientConfig,
    ClientConnection,
    ClientOptions,
    CloseConnection,
    Closed,
    CloseTransport,
    ConnectionState,
    Event,
    Group,
    LocalProtocolError,
    Member,
    MemoryStore,
    MessageReceived,
    OpenTransport,
    PeersListed,
    PingConnection,
    Push,
    ReconnectScheduled,
    RequestFailed,
    SendAcked,
    SendFailed,
    SendOutcomeUnknown,
    SendPing,
    SendText,
    StaticRegistry,
    UnreadableMessage,
    WriteFrame,
    decode,
    expand_outputs,
)
from .._client_oracle import ClientOracle
from .._fakes import ContractViolation, FakeSigner
from ._ledger import ACKED, BROADCAST, DIRECT, GROUP, PENDING, RETRY, Ledger, LogicalMessage
from ._plants import planted

__all__ = ["DEFAULT_RUN_FAULTS", "FAULT_KINDS", "RunStats", "SimFailure", "Simulation"]

#: The broker's wall clock at virtual time 0 (Unix seconds).
T0 = 1_800_000_000.0
MESH = "sim-mesh"
URL = "ws://sim.invalid/ws"
#: How long (virtual seconds) the mesh may take to settle once faults stop.
SETTLE_LIMIT = 1800.0
#: Faults per run unless told otherwise.
DEFAULT_RUN_FAULTS = 1000
#: The fault kinds and their weights in the schedule.
FAULT_KINDS: dict[str, float] = {
    "cut": 24.0,
    "stall": 7.0,
    "partition": 3.0,
    "delay": 10.0,
    "restart": 1.5,
    "slow": 8.0,
    "skew": 6.0,
    "resend": 10.0,
    "takeover": 4.0,
    "crash": 6.0,
}
_KINDS = tuple(FAULT_KINDS)
_WEIGHTS = tuple(FAULT_KINDS.values())

# What travels on a link: client to broker, broker to client.
_OPEN, _TEXT, _PING, _PONG, _CLOSE, _OPENED, _REFUSED = range(7)

Message = MessageReceived | UnreadableMessage


class SimFailure(AssertionError):
    """An invariant broke. ``str()`` is the report: what broke, the replay command, the trace.

    ``kind`` names the first invariant that broke (``duplicated``, ``lost``,
    ``unresolved``, ``contract`` ...), ``command`` replays the run, and
    ``stats`` says what the run did up to then.
    """

    def __init__(self, report: str, stats: RunStats, command: str, kind: str) -> None:
        super().__init__(report)
        self.report = report
        self.stats = stats
        self.command = command
        self.kind = kind

    def __reduce__(self) -> tuple[type[SimFailure], tuple[str, RunStats, str, str]]:
        return SimFailure, (self.report, self.stats, self.command, self.kind)


class RunStats:
    """What one run did."""

    __slots__ = (
        "clients",
        "deliveries",
        "digest",
        "duplicated",
        "fault_counts",
        "faults",
        "induced",
        "lost",
        "messages",
        "peaks",
        "redeliveries",
        "seed",
        "virtual_seconds",
    )

    def __init__(self, seed: int, clients: int) -> None:
        self.seed = seed
        self.clients = clients
        self.faults = 0
        self.messages = 0
        self.deliveries = 0
        self.redeliveries = 0
        self.lost = 0
        self.duplicated = 0
        self.virtual_seconds = 0.0
        self.fault_counts: dict[str, int] = dict.fromkeys(_KINDS, 0)
        self.fault_counts["cut-targeted"] = 0
        self.induced: dict[str, int] = {"overflow": 0}
        self.peaks: dict[str, int] = {}
        self.digest = ""


class _Member:
    __slots__ = ("groups", "index", "member", "sessions", "signer")

    def __init__(self, index: int) -> None:
        self.index = index
        self.signer = FakeSigner(f"sim-member-{index}")
        self.groups = (Group("ops"),) if index % 2 == 0 else ()
        self.member = Member(
            MESH, f"member-{index}", self.signer.public_key, f"m{index}", groups=self.groups
        )
        self.sessions: list[_Session] = []

    @property
    def pubkey(self) -> str:
        return self.signer.public_key


class _Session:
    """One application instance: it runs one process at a time (two during a takeover)."""

    __slots__ = (
        "counter",
        "current",
        "generation",
        "group_names",
        "hello_groups",
        "index",
        "journal",
        "member",
        "name",
        "procs",
        "restarting",
        "session_signer",
        "sid",
        "slow_until",
        "status",
    )

    def __init__(self, index: int, member: _Member, keyed: bool) -> None:
        self.index = index
        self.name = f"s{index}"
        self.member = member
        self.sid = f"s{index}"
        self.session_signer = FakeSigner(f"sim-session-{index}") if keyed else None
        self.hello_groups = (Group("dev"),) if index % 3 == 0 else ()
        self.group_names = frozenset(g.name for g in (*member.groups, *self.hello_groups))
        self.procs: list[_Process] = []
        self.current: _Process | None = None
        self.generation = 0
        self.counter = 0
        self.status = "idle"
        self.slow_until = 0.0
        self.journal: list[LogicalMessage] = []
        self.restarting = False

    @property
    def key(self) -> str | None:
        """The session key others may address it by, if it has one."""
        return self.session_signer.public_key if self.session_signer is not None else None


class _Process:
    """One ``ClientConnection``: a process of a session, from its start to its end."""

    __slots__ = (
        "armed",
        "core",
        "ended",
        "last_now",
        "link",
        "mono",
        "name",
        "oracle",
        "partition_until",
        "requests",
        "sends",
        "session",
        "sid",
        "skew",
        "spike",
        "spike_until",
        "taken",
        "timer_token",
    )

    def __init__(
        self, session: _Session, core: ClientConnection, name: str, mono: float, *, oracle: bool
    ) -> None:
        self.session = session
        self.sid = session.sid
        self.core = core
        self.oracle = ClientOracle(core) if oracle else None
        self.name = name
        self.mono = mono  # this process's monotonic clock reads virtual time + mono
        self.last_now = 0.0
        self.skew = 0.0  # its wall clock minus the broker's, seconds
        self.link: _Link | None = None
        self.ended: str | None = None  # "crashed" or "closed"
        self.armed: float | None = None
        self.timer_token = 0
        self.sends: dict[str, tuple[LogicalMessage, bool]] = {}  # send id -> (message, resend)
        self.requests: set[str] = set()
        self.taken: set[str] = set()  # lids the application took
        self.spike = 0.0
        self.spike_until = 0.0
        self.partition_until = 0.0


class _Link:
    """One transport: a TCP connection carrying WebSocket text and control frames, FIFO each way."""

    __slots__ = (
        "b2c_at",
        "backlog",
        "broker_gen",
        "broker_open",
        "c2b_at",
        "client_attached",
        "conn_id",
        "dead",
        "draining",
        "proc",
        "stalled",
        "status",
        "transport_id",
        "unread",
    )

    def __init__(self, proc: _Process, transport_id: int) -> None:
        self.proc = proc
        self.transport_id = transport_id
        self.conn_id = 0
        self.broker_gen = -1
        self.broker_open = False  # the broker knows this socket
        self.client_attached = True  # the core still owns this transport
        self.dead = False  # cut: nothing more gets through
        self.stalled = False  # a dead NAT: nothing gets through, nobody is told
        self.c2b_at = 0.0  # when the last frame each way arrives (FIFO per direction)
        self.b2c_at = 0.0
        self.unread = 0  # bytes that arrived while the client was not reading
        self.status: str | None = None  # the last set_status the broker read from it
        self.backlog: deque[tuple[int, Any]] = deque()  # arrived while reading was paused
        self.draining = False


class _Params:
    """Everything about a run that its seed decides."""

    def __init__(self, rng: Random) -> None:
        self.latency = rng.uniform(0.001, 0.06)  # one-way, seconds
        self.jitter = rng.uniform(0.001, 0.04)  # mean of the exponential extra
        self.fault_rate = rng.uniform(0.8, 2.5)  # faults per virtual second
        self.send_rate = rng.uniform(0.05, 0.4)  # new messages per session per second
        self.targeted = rng.uniform(0.005, 0.03)  # chance a write arms a cut near it
        self.store_limit = rng.choice((1000, 1000, 1000, 40, 8))
        # Bytes the broker may have written to one socket that its client has not
        # read, before the broker's server gives the socket up (a bounded buffer,
        # as meshproto_anyio's server has). A member's whole backlog may be far
        # larger: the broker's push window (a quarter of the buffer here, as
        # 1 MiB is of the server's 4 MiB) sends it a part per ping round trip.
        self.link_buffer = rng.choice((4096, 16_384, 131_072))
        self.keyed = rng.uniform(0.0, 0.6)  # share of sessions with a session key
        self.journal = rng.uniform(0.5, 1.0)  # chance a restarted process re-sends orphans

    @property
    def broker_options(self) -> BrokerOptions:
        return BrokerOptions(
            store_limit_per_member=self.store_limit, push_window=self.link_buffer // 4
        )


class Simulation:
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

    # --- the clients ------------------------------------------------------------------

    def _start_process(self, session: _Session, *, fresh_id: bool = False) -> None:
        rng = self.rng
        session.generation += 1
        session.restarting = False
        if fresh_id:
            self._retired.append((self.now, session.sid))
            session.sid = f"{session.name}.{session.generation}"
        member = session.member
        inbox = rng.choice((0, 1, 3, 16, 500))
        options = ClientOptions(inbox_limit=inbox, resend_in_flight=rng.random() < 0.85)
        config = ClientConfig(
            url=URL,
            mesh_id=MESH,
            member_id=member.member.member_id,
            signer=member.signer,
            session_id=session.sid,
            display_name=f"{session.name}",
            groups=session.hello_groups or None,
            session_signer=session.session_signer,
            attestation_ttl_ms=12 * 3600 * 1000,  # a clock may run ahead (protocol.md §3.2)
        )
        core = ClientConnection(config, rng=Random(rng.getrandbits(64)), options=options)
        name = f"c{session.index}#{session.generation}"
        proc = _Process(session, core, name, mono=rng.uniform(0.0, 1e6), oracle=self.use_oracle)
        proc.skew = rng.uniform(-5.0, 5.0)
        session.procs.append(proc)
        session.current = proc
        self._note(name, f"process starts: session {session.sid}, inbox {inbox}")
        core.connect(self._cnow(proc))
        # The application says its status on every start: a process that takes a
        # session over (or reattaches it after a crash) inherits the presence's.
        core.set_status(session.status, now=self._cnow(proc))
        self._client_after(proc)
        journal, session.journal = session.journal, []
        for message in journal:
            self._retry_later(message, rng.uniform(0.0, 1.0))

    def _client_after(self, proc: _Process, *, timer_at: float | None = None) -> None:
        """Carry out what the core decided, hand its events to the application, re-arm."""
        core = proc.core
        oracle = proc.oracle
        while True:
            actions = core.drain_actions()
            events = core.drain_events()
            if not actions and not events:
                break
            if oracle is not None:
                oracle.observe(actions, events)
                oracle.check(timer_fired_at=timer_at)
            timer_at = None
            for action in actions:
                self._route(proc, action)
            for event in events:
                self._on_event(proc, event)
            if (
                proc.ended is None
                and core.inbox_size
                and core.options.inbox_limit
                and proc.session.slow_until <= self.now
            ):
                taken = core.take_messages()
                if oracle is not None:
                    oracle.took(taken)
                for message in taken:
                    self._delivered(proc, message)
        if proc.ended is None:
            deadline = core.next_deadline()
            if deadline != proc.armed:
                proc.armed = deadline
                proc.timer_token += 1
                if deadline is not None:
                    when = max(self.now, deadline - proc.mono)
                    self._at(when, self._client_timer, proc, proc.timer_token)
            link = proc.link
            if link is not None and link.backlog and not link.draining and not core.reading_paused:
                link.draining = True
                self._at(self.now, self._drain_backlog, link)

    def _client_timer(self, proc: _Process, token: int) -> None:
        if token != proc.timer_token or proc.ended is not None:
            return
        deadline = proc.armed
        proc.armed = None
        now = self._cnow(proc)
        if deadline is not None and now < deadline:
            now = proc.last_now = deadline
        proc.core.handle_timer(now)
        self._client_after(proc, timer_at=now)

    def _route(self, proc: _Process, action: Any) -> None:
        if isinstance(action, WriteFrame):
            link = proc.link
            assert link is not None and link.client_attached
            text = action.text
            if (
                not self.healing
                and self.rng.random() < self.params.targeted
                and (text.startswith('{"type":"send"') or '"hello"' in text[:30])
            ):
                gap = self.rng.uniform(0.0, 3.0 * self.params.latency)
                self._at(self.now + gap, self._targeted_cut, link)
            if self._trace is not None:
                self._note(proc.name, f"-> {text[:110]}")
            self._c2b(link, _TEXT, text)
        elif isinstance(action, SendPing):
            assert proc.link is not None
            self._c2b(proc.link, _PING)
        elif isinstance(action, OpenTransport):
            link = _Link(proc, action.transport_id)
            proc.link = link
            if proc.partition_until > self.now:
                link.stalled = True  # the network is down: the connect hangs
            self._note(proc.name, f"opens transport {action.transport_id}")
            self._c2b(link, _OPEN)
            if not self.healing and self.rng.random() < self.params.targeted:
                self._at(self.now + self.rng.uniform(0.0, 0.2), self._targeted_cut, link)
        elif isinstance(action, CloseTransport):
            link = proc.link
            assert link is not None
            link.client_attached = False
            link.backlog.clear()
            link.unread = 0
            proc.link = None
            self._note(proc.name, f"closes transport {link.transport_id}: {action.code}")
            self._c2b(link, _CLOSE)

    def _on_event(self, proc: _Process, event: Event) -> None:
        if isinstance(event, (SendAcked, SendFailed, SendOutcomeUnknown)):
            self._outcome(proc, event)
        elif isinstance(event, (MessageReceived, UnreadableMessage)):
            if proc.core.options.inbox_limit == 0:
                self._delivered(proc, event)  # the event is the hand-over
        elif isinstance(event, PeersListed):
            self._request_done(proc, event.request_id)
            if not any(p.session_id == proc.sid for p in event.peers):
                self.ledger.violation(
                    "contract", f"{proc.name}: peers_list lacks the caller's own session"
                )
        elif isinstance(event, RequestFailed):
            self._request_done(proc, event.request_id)
        elif isinstance(event, Closed):
            self._closed(proc, event)
        elif isinstance(event, BrokerError):
            induced = self.stats.induced
            induced[event.code] = induced.get(event.code, 0) + 1
        elif isinstance(event, ReconnectScheduled) and self._trace is not None:
            self._note(proc.name, f"reconnect #{event.attempt} in {event.delay:.3f} s")

    def _request_done(self, proc: _Process, request_id: str) -> None:
        if request_id not in proc.requests:
            self.ledger.violation("contract", f"{proc.name}: request {request_id} resolved twice")
        proc.requests.discard(request_id)

    def _delivered(self, proc: _Process, message: Message) -> None:
        if isinstance(message, UnreadableMessage):
            self.ledger.violation("contract", f"{proc.name}: unreadable message {message}")
            return
        lid = message.body.decode("utf-8", "replace")
        logical = self.ledger.messages.get(lid)
        if self._trace is not None:
            self._note(proc.name, f"app takes {lid} ({message.message_id})")
        if logical is None:
            self.ledger.violation("misrouted", f"{proc.name} took {lid!r}, which nobody sent")
            return
        if lid in proc.taken:
            self.ledger.violation(
                "duplicated",
                f"{logical.describe()} reached the application of {proc.name} twice "
                f"(messageId {message.message_id})",
            )
            return
        proc.taken.add(lid)
        session = proc.session
        self.ledger.delivered(
            logical,
            proc=proc.name,
            sid=proc.sid,
            member=session.member.pubkey,
            groups=session.group_names,
            mid=message.message_id,
            cmid=message.client_message_id,
        )

    def _closed(self, proc: _Process, event: Closed) -> None:
        """The process's connection stopped for good; the application ends it."""
        self._note(proc.name, f"closed for good: {event.reason}")
        if not (event.code == 1000 and "session_replaced" in event.reason):
            self.ledger.violation(
                "refused", f"{proc.name} was refused for good: {event.reason} ({event.code})"
            )
        # Messages still in the inbox are handed over, unacknowledged (as the adapters do).
        if proc.core.options.inbox_limit:
            taken = proc.core.take_messages()
            if proc.oracle is not None:
                proc.oracle.took(taken)
            for message in taken:
                self._delivered(proc, message)
        self._end(proc, "closed")

    def _end(self, proc: _Process, how: str) -> None:
        proc.ended = how
        session = proc.session
        session.procs.remove(proc)
        if session.current is proc:
            session.current = session.procs[-1] if session.procs else None
        if session.current is None and not session.restarting:
            session.restarting = True
            self._at(self.now + self.rng.uniform(0.05, 15.0), self._restart_session, session)

    def _restart_session(self, session: _Session) -> None:
        if session.current is not None:
            session.restarting = False
            return
        fresh = session.session_signer is None and self.rng.random() < 0.2
        self._start_process(session, fresh_id=fresh)

    def _crash(self, proc: _Process) -> None:
        self._note(proc.name, "process crashes")
        link = proc.link
        if link is not None:
            self._kill(link, tell_client=False)
        for message, resend in proc.sends.values():
            if resend:
                continue
            message.pending_in = None
            message.maybe = True
            if self.rng.random() < self.params.journal:
                # Its application kept a journal: the next process re-sends it.
                self._retry_later(message, self.rng.uniform(0.0, 1.0))
            else:
                self.ledger.abandon(message)
        proc.sends.clear()
        self._end(proc, "crashed")

    # --- the applications ---------------------------------------------------------------

    def _schedule_workload(self, session: _Session) -> None:
        rng = self.rng
        self._at(rng.expovariate(self.params.send_rate), self._app_send, session)
        self._at(rng.uniform(5.0, 120.0), self._app_status, session)
        self._at(rng.uniform(5.0, 60.0), self._app_peers, session)
        self._at(rng.uniform(5.0, 300.0), self._app_summary, session)

    def _live(self, session: _Session) -> _Process | None:
        proc = session.current
        if proc is None or proc.ended is not None or proc.core.state is ConnectionState.CLOSED:
            return None
        return proc

    def _app_send(self, session: _Session) -> None:
        if self.healing:
            return
        rng = self.rng
        self._at(self.now + rng.expovariate(self.params.send_rate), self._app_send, session)
        session.counter += 1
        lid = f"{session.name}.{session.counter}"
        priority = rng.choice(("now", "next", "low"))
        member = session.member
        roll = rng.random()
        common = {"sender": session.name, "sender_sid": session.sid, "sender_member": member.pubkey}
        if roll < 0.62:
            others = [m for m in self.members if m is not member]
            if len(member.sessions) > 1 and rng.random() < 0.1:
                others = [member]  # to the member's other sessions
            to = rng.choice(others)
            message = LogicalMessage(
                lid, DIRECT, to.pubkey, priority, recipient_member=to.pubkey, **common
            )
        elif roll < 0.72:
            keyed = [s for s in self.sessions if s.key is not None and s is not session]
            if not keyed:
                return
            to_session = rng.choice(keyed)
            key = to_session.key
            assert key is not None
            message = LogicalMessage(
                lid,
                DIRECT,
                key,
                priority,
                recipient_member=to_session.member.pubkey,
                recipient_sid=to_session.sid,
                **common,
            )
        elif roll < 0.9:
            target = rng.choice(("*", "@all", "#news"))
            message = LogicalMessage(lid, BROADCAST, target, priority, **common)
        else:
            group = rng.choice(("ops", "dev"))
            message = LogicalMessage(lid, GROUP, f"@{group}", priority, group=group, **common)
        self.ledger.add(message)
        self._attempt(message)

    def _attempt(self, message: LogicalMessage) -> None:
        """One ``send()`` of ``message`` from its session's current process."""
        if message.state != RETRY:
            return
        session = self.sessions[int(message.sender[1:])]
        proc = self._live(session)
        if proc is None:
            session.journal.append(message)  # sent when a process runs again
            return
        if message.pending_in is not None:
            self._retry_later(message, 1.0)
            return
        try:
            handle = proc.core.send(
                message.target,
                message.lid,
                message.priority,
                now=self._cnow(proc),
                client_message_id=message.cmid,
            )
        except LocalProtocolError as exc:
            self.ledger.violation("contract", f"{proc.name}: send of {message.lid} raised {exc}")
            self.ledger.abandon(message)
            return
        if proc.oracle is not None:
            proc.oracle.sent(handle)
        if message.cmid is None:
            message.cmid = handle.client_message_id
        message.state = PENDING
        message.pending_in = proc
        message.sender_sids.add(proc.sid)
        proc.sends[handle.id] = (message, False)
        if self._trace is not None:
            self._note(proc.name, f"app sends {message.describe()} as {handle.id}")
        self._client_after(proc)

    def _retry_later(self, message: LogicalMessage, delay: float) -> None:
        message.state = RETRY
        self._at(self.now + delay, self._attempt, message)

    def _outcome(self, proc: _Process, event: SendAcked | SendFailed | SendOutcomeUnknown) -> None:
        entry = proc.sends.pop(event.send_id, None)
        if entry is None:
            self.ledger.violation(
                "resolution", f"{proc.name}: send {event.send_id} resolved again: {event}"
            )
            return
        message, resend = entry
        if message.pending_in is proc:
            message.pending_in = None
        if self._trace is not None:
            self._note(proc.name, f"app hears {type(event).__name__} for {message.lid}")
        if isinstance(event, SendAcked):
            self.ledger.acked(message, event.message_id, self.now, resend=resend)
            return
        if resend or message.state == ACKED:
            return
        rng = self.rng
        if isinstance(event, SendOutcomeUnknown):
            message.maybe = True
            self._retry_later(message, rng.uniform(0.1, 3.0))
            return
        code = event.reason.code
        if code == "no_peer":
            self.ledger.abandon(message)
        elif code in ("refused", "closed"):
            self._retry_later(message, rng.uniform(0.1, 2.0))  # its process stopped
        elif code == "store_full":
            self._retry_later(message, rng.uniform(5.0, 30.0))
        elif event.reason.retryable:
            self._retry_later(message, rng.uniform(0.5, 4.0))
        else:
            self.ledger.violation("refused", f"{message.describe()} refused: {event.reason}")
            self.ledger.abandon(message)

    def _app_status(self, session: _Session) -> None:
        if self.healing:
            return
        rng = self.rng
        if session.status == "idle":
            session.status = rng.choice(("working", "dnd"))
            self._at(self.now + rng.uniform(2.0, 60.0), self._app_status, session)
        else:
            session.status = "idle"
            self._at(self.now + rng.uniform(10.0, 150.0), self._app_status, session)
        for proc in session.procs:
            if proc.core.state is not ConnectionState.CLOSED:
                proc.core.set_status(session.status, now=self._cnow(proc))
                self._client_after(proc)

    def _app_peers(self, session: _Session) -> None:
        if self.healing:
            return
        self._at(self.now + self.rng.uniform(10.0, 60.0), self._app_peers, session)
        proc = self._live(session)
        if proc is not None:
            proc.requests.add(proc.core.list_peers(now=self._cnow(proc)))
            self._client_after(proc)

    def _app_summary(self, session: _Session) -> None:
        if self.healing:
            return
        self._at(self.now + self.rng.uniform(30.0, 300.0), self._app_summary, session)
        proc = self._live(session)
        if proc is not None:
            proc.core.set_summary(f"{session.name} at {self.now:.0f}", now=self._cnow(proc))
            self._client_after(proc)

    def _resume_consumer(self, session: _Session) -> None:
        for proc in list(session.procs):
            if proc.ended is None:
                self._client_after(proc)

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
