"""A broker driven through its oracle by small integers and bytes.

Theory of operation
===================

:class:`BrokerHarness` holds one :class:`~meshproto.Broker` of one mesh
behind a :class:`~meshproto.testing.BrokerOracle`, and a handful of socket
*slots*. Its ``op_*`` methods are the inputs a test can make: open and close
sockets, say hello (member and session hellos, good and bad), send,
acknowledge, set status and summary, list peers, feed garbage, binary and
pings, and move time. Each op is chosen by small integers (indices into the
harness's tables, taken modulo their length), so that hypothesis rules and
fuzzer bytes drive the same code; ``run_bytes`` reads a whole sequence of
ops from bytes (a :class:`ByteSource`) and then calls ``finish``.

Every op builds what it sends with one of the ``*_frame`` builders and then
hands the text to the *transport*: a few ``_connect``, ``_deliver_*``,
``_disconnect``, ``_run_timers``, ``_shutdown`` methods. Here they feed the
oracle directly (the sans-IO path: each call is one broker input). A
subclass may carry the same inputs some other way: ``meshproto_ws.testing``
writes them as WebSocket bytes through a ``BrokerDriver`` and adds ops of its
own (``BYTE_OPS`` and ``_byte_op`` extend the byte interpreter), so both
paths share every table, builder and op.

``op_hostile`` takes one of the builders' well-formed frames as a template
and writes it with :func:`~meshproto.testing._hostile.hostile_text`: lone
surrogates as escapes in any string or key, strings at the size caps, huge
numbers, ``NaN``, duplicate keys, deep nesting. Whatever arrives, the broker
must answer as its invariants say and never raise.

Every loop here is bounded: ``run_bytes`` consumes at least one byte per op,
and ``finish`` runs at most ``max_rounds`` timers.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from random import Random
from typing import Any, ClassVar

from .._broker import Broker, BrokerOptions
from .._frames import Group
from .._registry import AcceptingVerifier, Member, StaticRegistry
from ._broker_oracle import BrokerOracle
from ._hostile import Draw, hostile_text

__all__ = ["BrokerHarness", "ByteSource"]

# ---------------------------------------------------------------------------
# The broker harness: a broker driven through its oracle.
# ---------------------------------------------------------------------------

_MESH = "mesh-prop"
_T0 = 1_800_000_000.0
_SLOTS = 4
#: Members by name: ``d`` is revoked, ``x`` is not in the registry.
_PK = {name: f"{i:x}" * 64 for i, name in enumerate(("a", "b", "c", "d", "x"), start=1)}
_SK = ("e" * 64, "f" * 64)
_WHO = ("a", "b", "c", "d", "x")
_SESSION_IDS = (None, "one", "two")
#: A member hello's ``sessionPubkey``: none, a session key, not hex, another member's key.
_HELLO_KEYS = (None, _SK[0], _SK[1], "BAD", _PK["c"])
_SKEWS = (0.0, 30.0, -61.0, 61.0)
_GROUPS: tuple[list[dict[str, str]] | None, ...] = (
    None,
    [{"name": "ops"}],
    [{"name": "dev", "role": "x"}],
)
#: A session hello's key: a session key, or a member's own key.
_SESSION_KEYS = (_SK[0], _SK[1], _PK["c"])
_EXPIRIES = (3600.0, 24 * 3600.0, 0.0, 24 * 3600.0 + 1)
_BROKER_TARGETS = (
    _PK["a"],
    _PK["b"],
    _PK["c"],
    _PK["x"],
    _SK[0],
    _SK[1],
    "*",
    "@all",
    "@ops",
    "#topic",
    "nobody",
    "AB" * 32,
)
_SEND_PRIORITIES = ("now", "next", "low", "urgent")
_CMIDS = (None, "c1", "c2", "c3")
_SET_STATUSES = ("idle", "working", "dnd", "asleep")
_BROKER_GARBAGE = (
    "",
    "nope",
    "[]",
    "{}",
    '{"type": 1}',
    '{"type": "send", "id": "g1"}',
    '{"type": "hello"}',
    '{"type": "hello", "meshId": 5}',
    '{"type": "session_hello"}',
    '{"type": "client_ack", "brokerMessageId": 3}',
    '{"type": "list_peers", "_reqId": {}}',
    '{"type": "whatever", "id": "g2"}',
    "[" * 2000,
)
_BROKER_STEPS = (0.0, 0.5, 1.0, 10.0, 29.0, 31.0, 61.0, 76.0, 91.0, 4000.0)
#: What a hello may say about its process: every optional string and integer
#: field, so that a hostile template has them all to mutate.
_PROFILE: dict[str, Any] = {
    "pid": 4242,
    "cwd": "/home/peer/project",
    "displayName": "peer",
    "hostname": "host.local",
    "peerType": "claude",
}
#: The kinds of frame ``op_hostile`` takes as templates.
_HOSTILE_KINDS = 7


def _pick(table: tuple[Any, ...], index: int) -> Any:
    return table[index % len(table)]


class ByteSource:
    """Fuzzer bytes read as small integers, front to back; past the end every byte is 0."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    @property
    def exhausted(self) -> bool:
        return self._pos >= len(self._data)

    def take(self) -> int:
        """The next byte (0 past the end); every call moves on by one."""
        data, pos = self._data, self._pos
        self._pos = pos + 1
        return data[pos] if pos < len(data) else 0

    def draw(self, n: int) -> int:
        """An integer in ``range(n)`` (0 if ``n`` is 0): a :data:`Draw` over the bytes."""
        return self.take() % n if n > 0 else 0

    def chunk(self, limit: int = 32) -> bytes:
        """The next ``take() % limit`` bytes, as they are."""
        size = self.take() % limit
        piece = self._data[self._pos : self._pos + size]
        self._pos += size
        return piece


class BrokerHarness:
    """A :class:`~meshproto.Broker` of one mesh, driven through a :class:`BrokerOracle`.

    The registry holds members ``a``, ``b`` (in group ``ops``), ``c`` and a
    revoked ``d``; ``x`` is unknown. Rules name one of four socket *slots*; a
    slot keeps naming its last socket after that socket closed, and names a
    socket that was never opened until it is first opened, so inputs for
    closed and unknown sockets (which an adapter may deliver late) are fed
    too, and the broker must ignore them. Each ``op_*`` method is one input
    (or a socket opened, then one input), chosen by small integers (indices,
    taken modulo the length, into the tables below) or bytes, so that
    hypothesis rules and fuzzer bytes can both drive it; an op that makes no
    sense in the current state does nothing. The oracle checks every input,
    and ``finish`` checks that nothing outlives the broker's shutdown.
    ``small`` gives tight limits (3 sockets, 2 stored messages per member, a
    burst of 3 sends, a 1 s hello timeout, a 200,000-byte frame cap).

    See the module docstring for how a subclass carries the inputs over
    another transport.
    """

    #: What the ``op_*`` integers choose from (each taken modulo the length).
    SLOTS: ClassVar[int] = _SLOTS
    WHO: ClassVar[tuple[str, ...]] = _WHO
    SESSION_IDS: ClassVar[tuple[str | None, ...]] = _SESSION_IDS
    HELLO_KEYS: ClassVar[tuple[str | None, ...]] = _HELLO_KEYS
    SKEWS: ClassVar[tuple[float, ...]] = _SKEWS
    GROUPS: ClassVar[tuple[list[dict[str, str]] | None, ...]] = _GROUPS
    SESSION_KEYS: ClassVar[tuple[str, ...]] = _SESSION_KEYS
    EXPIRIES: ClassVar[tuple[float, ...]] = _EXPIRIES
    TARGETS: ClassVar[tuple[str, ...]] = _BROKER_TARGETS
    PRIORITIES: ClassVar[tuple[str, ...]] = _SEND_PRIORITIES
    CLIENT_MESSAGE_IDS: ClassVar[tuple[str | None, ...]] = _CMIDS
    STATUSES: ClassVar[tuple[str, ...]] = _SET_STATUSES
    GARBAGE: ClassVar[tuple[str, ...]] = _BROKER_GARBAGE
    TIME_STEPS: ClassVar[tuple[float, ...]] = _BROKER_STEPS
    #: How many ops ``run_bytes`` chooses from (see ``_byte_op``).
    BYTE_OPS: ClassVar[int] = 20

    def __init__(
        self,
        *,
        small: bool = False,
        seed: int = 0,
        presence_batch: float | None = None,
        follow_deadlines: bool = True,
    ) -> None:
        registry = StaticRegistry(
            [
                Member(_MESH, "id-a", _PK["a"], "a"),
                Member(_MESH, "id-b", _PK["b"], "b", groups=(Group("ops"),)),
                Member(_MESH, "id-c", _PK["c"], "c"),
                Member(_MESH, "id-d", _PK["d"], "d", revoked=True),
            ]
        )
        options = (
            BrokerOptions(
                max_connections_per_mesh=3,
                store_limit_per_member=2,
                rate_burst=3,
                hello_timeout=1.0,
                hard_frame_cap=200_000,
            )
            if small
            else BrokerOptions()
        )
        if presence_batch is not None:
            options = dataclasses.replace(options, presence_batch=presence_batch)
        self.broker = Broker(
            registry, verifier=AcceptingVerifier(), rng=Random(seed), options=options
        )
        self.oracle = BrokerOracle(self.broker, meshes=(_MESH,))
        self.now = _T0
        self.slots: dict[int, int] = {}  # slot -> conn_id of its last socket
        self.next_conn = 0
        self.sends = 0
        self.message_ids: list[str] = ["unknown-id"]  # for client_ack to name
        # Whether op_fire_next_deadline jumps to the next deadline (else it runs
        # what is due now): two brokers whose timers differ keep one clock.
        self.follow_deadlines = follow_deadlines

    # --- the transport: straight into the oracle (a subclass may override) -----

    def conn(self, slot: int) -> int:
        """The conn_id behind a slot; a never-opened slot names a socket never opened."""
        slot %= _SLOTS
        return self.slots.get(slot, -1 - slot)

    def is_open(self, slot: int) -> bool:
        """Whether the slot's socket can carry a message to the broker now."""
        return self.conn(slot) in self.oracle.open

    def is_helloed(self, slot: int) -> bool:
        """Whether the broker accepted a hello on the slot's socket."""
        return self.broker.is_helloed(self.conn(slot))

    def next_deadline(self) -> float | None:
        """When the next timer is due (the broker's; a subclass adds its own)."""
        return self.broker.next_deadline()

    def _connect(self, slot: int) -> None:
        """Open a new socket in ``slot`` (already reduced modulo ``SLOTS``)."""
        conn_id, self.next_conn = self.next_conn, self.next_conn + 1
        self.slots[slot] = conn_id
        self.oracle.connection_opened(conn_id, now=self.now)

    def _deliver_text(self, slot: int, text: str) -> None:
        self.oracle.receive_text(self.conn(slot), text, now=self.now)
        self._noticed(frame for _to, frame in self.oracle.written)

    def _deliver_binary(self, slot: int, data: bytes) -> None:
        self.oracle.receive_binary(self.conn(slot), data, now=self.now)

    def _deliver_ping(self, slot: int, ping: bool) -> None:
        if ping:
            self.oracle.receive_ping(self.conn(slot), now=self.now)
        else:
            self.oracle.receive_pong(self.conn(slot), now=self.now)

    def _disconnect(self, slot: int) -> None:
        """The adapter reports the slot's socket closed (even if it is closed already)."""
        self.oracle.connection_closed(self.conn(slot), now=self.now)

    def _run_timers(self, now: float) -> None:
        self.oracle.handle_timer(now)

    def _shutdown(self) -> None:
        self.oracle.shutdown(now=self.now)

    def _check_finished(self) -> None:
        self.oracle.check_finished()

    def _noticed(self, frames: Iterable[Any]) -> None:
        """Frames the broker wrote: remember their message ids for ``client_ack``."""
        for frame in frames:
            if (
                isinstance(frame, dict)
                and frame.get("type") in ("push", "ack")
                and isinstance(frame.get("messageId"), str)
                and frame["messageId"]
            ):
                self.message_ids.append(frame["messageId"])

    # --- plumbing -----------------------------------------------------------------

    def _feed(self, slot: int, text: str) -> None:
        self._deliver_text(slot % _SLOTS, text)

    def _feed_frame(self, slot: int, frame: dict[str, Any]) -> None:
        self._feed(slot, json.dumps(frame))

    # --- frame builders (the ops' frames, and ``op_hostile``'s templates) ------

    def hello_frame(
        self,
        who: int,
        session_id: int,
        session_key: int,
        skew: int,
        *,
        good_signature: bool,
        groups: int,
    ) -> dict[str, Any]:
        name = _pick(_WHO, who)
        frame: dict[str, Any] = {
            "type": "hello",
            "meshId": _MESH,
            "memberId": f"id-{name}",
            "pubkey": _PK[name],
            "timestamp": round((self.now + _pick(_SKEWS, skew)) * 1000),
            "signature": "ab" * 64 if good_signature else "xyz",
        }
        sid = _pick(_SESSION_IDS, session_id)
        if sid is not None:
            frame["sessionId"] = sid
        key = _pick(_HELLO_KEYS, session_key)
        if key is not None:
            frame["sessionPubkey"] = key
        group_list = _pick(_GROUPS, groups)
        if group_list is not None:
            frame["groups"] = group_list
        return frame

    def session_hello_frame(
        self, who: int, session_key: int, session_id: int, expires: int
    ) -> dict[str, Any]:
        name = _pick(_WHO, who)
        key = _pick(_SESSION_KEYS, session_key)
        frame: dict[str, Any] = {
            "type": "session_hello",
            "meshId": _MESH,
            "parentMemberId": f"id-{name}",
            "parentMemberPubkey": _PK[name],
            "sessionPubkey": key,
            "parentAttestation": {
                "sessionPubkey": key,
                "parentMemberPubkey": _PK[name],
                "expiresAt": round((self.now + _pick(_EXPIRIES, expires)) * 1000),
                "signature": "cd" * 64,
            },
            "timestamp": round(self.now * 1000),
            "signature": "ab" * 64,
        }
        sid = _pick(_SESSION_IDS, session_id)
        if sid is not None:
            frame["sessionId"] = sid
        return frame

    def send_frame(self, target: int, priority: int, cmid: int, big: bool) -> dict[str, Any]:
        self.sends += 1
        frame: dict[str, Any] = {
            "type": "send",
            "id": f"send-{self.sends}",
            "targetSpec": _pick(_BROKER_TARGETS, target),
            "priority": _pick(_SEND_PRIORITIES, priority),
            "nonce": "bm9uY2U=",
            "ciphertext": "A" * (70_000 if big else 8),
        }
        client_message_id = _pick(_CMIDS, cmid)
        if client_message_id is not None:
            frame["client_message_id"] = client_message_id
        return frame

    def client_ack_frame(self, pick: int, by_cmid: bool) -> dict[str, Any]:
        """An ack of a message id seen so far (most recent first), or of a client id."""
        frame: dict[str, Any] = {"type": "client_ack"}
        if by_cmid:
            frame["clientMessageId"] = _pick(_CMIDS[1:], pick)
        else:
            frame["brokerMessageId"] = self.message_ids[-1 - pick % len(self.message_ids)]
        return frame

    @staticmethod
    def set_status_frame(status: int) -> dict[str, Any]:
        return {"type": "set_status", "status": _pick(_SET_STATUSES, status)}

    @staticmethod
    def set_summary_frame(summary: str) -> dict[str, Any]:
        return {"type": "set_summary", "summary": summary}

    @staticmethod
    def list_peers_frame(with_req_id: bool) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "list_peers"}
        if with_req_id:
            frame["_reqId"] = "r1"
        return frame

    # --- sockets ------------------------------------------------------------------

    def op_open(self, slot: int) -> None:
        """A socket opens in ``slot`` (nothing if the slot's socket is open)."""
        if self.is_open(slot):
            return
        self._connect(slot % _SLOTS)

    def op_close(self, slot: int) -> None:
        """The slot's socket goes away (even if it is closed already)."""
        self._disconnect(slot % _SLOTS)

    def op_ping(self, slot: int, ping: bool) -> None:
        self._deliver_ping(slot % _SLOTS, ping)

    # --- hellos ---------------------------------------------------------------------

    def op_hello(
        self,
        slot: int,
        who: int,
        session_id: int,
        session_key: int,
        skew: int,
        *,
        good_signature: bool,
        groups: int,
    ) -> None:
        """A member hello, good or bad; on a closed even slot a socket opens first."""
        if not self.is_open(slot) and slot % 2 == 0:
            self.op_open(slot)  # a client opens a socket to say hello (mostly)
        frame = self.hello_frame(
            who, session_id, session_key, skew, good_signature=good_signature, groups=groups
        )
        self._feed_frame(slot, frame)

    def op_good_hello(self, slot: int, who: int, session_id: int, session_key: int) -> None:
        """A hello of a, b or c the registry decides on (the common case), socket opened."""
        self.op_open(slot)
        self.op_hello(slot, who % 3, session_id, session_key % 3, 0, good_signature=True, groups=0)

    def op_session_hello(
        self, slot: int, who: int, session_key: int, session_id: int, expires: int
    ) -> None:
        """A session hello (socket opened): it proves its key (any signature is accepted)."""
        self.op_open(slot)
        self._feed_frame(slot, self.session_hello_frame(who, session_key, session_id, expires))

    # --- frames of a helloed socket ------------------------------------------------

    def op_send(self, slot: int, target: int, priority: int, cmid: int, big: bool) -> None:
        self._feed_frame(slot, self.send_frame(target, priority, cmid, big))

    def op_client_ack(self, slot: int, pick: int, by_cmid: bool) -> None:
        """Acknowledge a message id seen so far (most recent first), or a client id."""
        self._feed_frame(slot, self.client_ack_frame(pick, by_cmid))

    def op_set_status(self, slot: int, status: int) -> None:
        self._feed_frame(slot, self.set_status_frame(status))

    def op_set_summary(self, slot: int, summary: bytes) -> None:
        self._feed_frame(slot, self.set_summary_frame(summary.decode("utf-8", errors="replace")))

    def op_list_peers(self, slot: int, with_req_id: bool) -> None:
        self._feed_frame(slot, self.list_peers_frame(with_req_id))

    # --- garbage ----------------------------------------------------------------------

    def op_malformed(self, slot: int, which: int) -> None:
        """One of a list of near misses (bad JSON, wrong types, missing fields)."""
        self._feed(slot, _pick(_BROKER_GARBAGE, which))

    def op_text(self, slot: int, data: bytes) -> None:
        """Arbitrary text (``data`` as UTF-8, bad bytes replaced)."""
        self._feed(slot, data.decode("utf-8", errors="replace"))

    def op_binary(self, slot: int, data: bytes) -> None:
        self._deliver_binary(slot % _SLOTS, data)

    def op_hostile(self, slot: int, draw: Draw) -> None:
        """A client frame as the builders make it, written with hostile mutations.

        The template is a good hello or session hello (with every optional
        field: a socket opens first, and one that said hello already is
        closed first half the time, so that the hello is read as one), a
        send, a client_ack, set_status, set_summary or a list_peers with
        ``_reqId``; :func:`~meshproto.testing._hostile.hostile_text` writes
        it with lone surrogates, huge numbers, duplicate keys, nesting ...
        """
        kind = draw(_HOSTILE_KINDS)
        if kind <= 1:
            if self.is_helloed(slot) and draw(2) == 0:
                self.op_close(slot)
            self.op_open(slot)
        if kind == 0:
            template = self.hello_frame(
                draw(3),  # a, b or c
                draw(len(_SESSION_IDS)),
                draw(3),  # none, or a session key
                0,
                good_signature=True,
                groups=draw(len(_GROUPS)),
            )
            template.update(_PROFILE)
        elif kind == 1:
            template = self.session_hello_frame(
                draw(3), draw(len(_SESSION_KEYS)), draw(len(_SESSION_IDS)), 0
            )
            template.update(_PROFILE, groups=[{"name": "ops", "role": "lead"}], role="worker")
        elif kind == 2:
            template = self.send_frame(
                draw(len(_BROKER_TARGETS)),
                draw(3),  # a good priority
                draw(len(_CMIDS)),
                False,
            )
        elif kind == 3:
            template = self.client_ack_frame(draw(len(self.message_ids)), draw(2) == 1)
        elif kind == 4:
            template = self.set_status_frame(draw(3))  # a good status
        elif kind == 5:
            template = self.set_summary_frame("working on it")
        else:
            template = self.list_peers_frame(with_req_id=True)
        self._feed(slot, hostile_text(template, draw))

    # --- time -------------------------------------------------------------------------

    def op_advance(self, step: int) -> None:
        self.now += _pick(_BROKER_STEPS, step)
        self._run_timers(self.now)

    def op_drift(self, step: int) -> None:
        """The clock moves on and no timer runs: an adapter whose timer is late."""
        self.now += _pick(_BROKER_STEPS, step)

    def op_fire_next_deadline(self) -> None:
        if not self.follow_deadlines:
            self._run_timers(self.now)
            return
        self._jump_to_next_deadline()

    def _jump_to_next_deadline(self) -> None:
        deadline = self.next_deadline()
        if deadline is not None:
            self.now = max(self.now, deadline)
            self._run_timers(self.now)

    # --- endings ------------------------------------------------------------------------

    def finish(self, *, max_rounds: int = 100_000) -> None:
        """Shut the broker down, run every timer out, and check nothing is left behind."""
        self._shutdown()
        for _ in range(max_rounds):
            if self.next_deadline() is None:
                break
            self._jump_to_next_deadline()
        self._check_finished()

    # --- fuzzing ---------------------------------------------------------------------------

    def run_bytes(self, data: bytes) -> None:
        """Interpret ``data`` as a sequence of operations, then ``finish`` (the fuzz entry)."""
        self.run_ops(data)
        self.finish()

    def run_ops(self, data: bytes) -> None:
        """Interpret ``data`` as a sequence of operations (no ``finish``)."""
        source = ByteSource(data)
        while not source.exhausted:  # every op takes at least one byte
            self._byte_op(source.take() % self.BYTE_OPS, source)

    def settle(self, seconds: float, *, max_rounds: int = 10_000) -> None:
        """Run every timer due within ``seconds`` from now, in order, then move there."""
        end = self.now + seconds
        for _ in range(max_rounds):
            deadline = self.next_deadline()
            if deadline is None or deadline > end:
                break
            self.now = max(self.now, deadline)
            self._run_timers(self.now)
        self.now = end
        self._run_timers(end)

    def _byte_op(self, op: int, source: ByteSource) -> None:
        """Op number ``op`` (below ``BYTE_OPS``), its arguments read from ``source``."""
        take = source.take
        if op == 0:
            self.op_open(take())
        elif op == 1:
            slot, who, session_id, session_key, skew = (take() for _ in range(5))
            self.op_hello(
                slot,
                who,
                session_id,
                session_key,
                skew,
                good_signature=take() % 4 != 0,
                groups=take(),
            )
        elif op == 2:
            self.op_session_hello(take(), take(), take(), take(), take())
        elif op in (3, 16):
            self.op_good_hello(take(), take(), take(), take())
        elif op in (4, 17):
            self.op_send(take(), take(), take(), take(), take() % 8 == 0)
        elif op == 5:
            self.op_client_ack(take(), take(), take() % 2 == 1)
        elif op == 6:
            self.op_set_status(take(), take())
        elif op == 7:
            self.op_list_peers(take(), take() % 2 == 1)
        elif op == 8:
            slot = take()
            self.op_set_summary(slot, source.chunk())
        elif op == 9:
            self.op_malformed(take(), take())
        elif op == 10:
            slot = take()
            self.op_text(slot, source.chunk())
        elif op == 11:
            slot = take()
            self.op_binary(slot, source.chunk())
        elif op == 12:
            self.op_ping(take(), take() % 2 == 1)
        elif op == 13:
            self.op_close(take())
        elif op == 14:
            self.op_advance(take())
        elif op == 15:
            self.op_fire_next_deadline()
        elif op == 19:
            self.op_drift(take())
        else:
            slot = take()
            self.op_hostile(slot, source.draw)
