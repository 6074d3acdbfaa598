"""The simulation's parameters and its pieces: members, sessions, processes, links.

See the package docstring (:mod:`meshproto.testing.sim`) for what is
simulated and what is checked.
"""

from __future__ import annotations

from collections import deque
from random import Random
from typing import Any

from ... import (
    BrokerOptions,
    ClientConnection,
    Group,
    Member,
    MessageReceived,
    UnreadableMessage,
)
from .._client_oracle import ClientOracle
from .._fakes import FakeSigner
from ._ledger import LogicalMessage

__all__ = ["DEFAULT_RUN_FAULTS", "FAULT_KINDS", "RunStats", "SimFailure"]

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
