"""The reference broker: a sans-IO state machine for every socket of every mesh.

Theory of operation
===================

``Broker`` is the whole broker of docs/protocol.md, minus the sockets. The adapter
gives every socket an integer ``conn_id`` and reports what happens on it; the
broker answers with :data:`BrokerOutput` values (write text, ping, close) and
the absolute time at which it wants ``handle_timer``. It performs no I/O and
reads no clock: every input carries ``now``, the **Unix wall-clock time in
seconds** (the broker stamps ``createdAt``, checks the hello's ±60 s skew and
expires stored messages with it, and a persistent store must make sense
after a restart). Ids come from the injected ``random.Random``.

Inputs: ``connection_opened``, ``receive_text``, ``receive_binary``,
``receive_ping``, ``receive_pong``, ``connection_closed``, ``handle_timer``
(and ``shutdown``). Outputs: ``drain_outputs()`` and ``next_deadline()``.

Sockets and presences
---------------------

A socket starts *unhelloed*. Its first frame must be a ``hello`` (a member
key, docs/protocol.md §3.1) or a ``session_hello`` (a session key vouched for by
its parent member's signed attestation, §3.2). Either is checked by
:mod:`meshproto._admission`, frame first and registry last:

* ``hello``: ``timestamp_skew``, ``malformed``, ``bad_session_pubkey``,
  ``bad_signature`` (the member key over ``meshId|memberId|pubkey|timestamp``);
* ``session_hello``: ``timestamp_skew``, ``malformed``, ``bad_parent_pubkey``,
  ``bad_session_pubkey``, ``attestation_mismatch`` (the attestation must name
  the hello's session and parent keys), ``expired``/``ttl_too_long`` (its
  ``expiresAt`` must be in ``(now, now + 24 h]``), ``bad_signature`` (the
  session key over the session-hello string, the member key over the
  attestation string);
* then the registry, asked afresh on every hello (so a revocation takes
  effect at the member's next hello): ``unauthorized`` (no such member or
  mesh; for a session hello, no such parent), ``revoked``,
  ``parent_member_id_mismatch`` (session hello: ``parentMemberId`` is not the
  parent's row), ``bad_session_pubkey`` (the session key is another member's
  member key, or the key of another member's presence that the hello cannot
  displace: see *Session keys* below) and ``capacity``.

The timestamp of either hello may be up to ``skew`` (60 s) away from the
broker's clock in milliseconds, bounds included. A refusal is one
``error{code, message}`` and a close (1008, or 4002 ``banned`` for
``revoked``). Any other frame before the hello gets ``error{no_hello}`` and
the socket stays open (until its hello timeout, see *Liveness*). A second
hello of either kind on a helloed socket gets ``error{already_helloed}`` and
changes nothing.

A good hello attaches the socket to a *presence* (the peer others see). A
session hello's presence belongs to the parent member (its member row,
groups, rate limit and stored messages) but is known by the session key: its
``pubkey`` in ``list_peers`` and events, and the ``senderPubkey`` of what it
sends, is the session key, as for a member hello that names a
``sessionPubkey``. The presence is:

* the presence with the same ``sessionPubkey`` (of the same member), else,
  for a member hello only, the one with the same ``sessionId`` of the same
  member (a presence made by a session hello is found by its key alone), if
  the broker still knows it: it keeps its ``presenceId``, status and summary,
  and nobody is told. If that presence still has a live socket, the old
  socket is closed with 1000 ``session_replaced`` first (the new one takes
  over);
* else a new presence, and every other live socket of the mesh gets a
  system push: ``peer_joined`` the first time the store has ever seen the
  member, ``peer_returned`` after that.

The socket then gets ``hello_ack`` (``restored: true`` and ``lastSeenAt``
when the member was seen before; the reference broker always includes
``memberProfile``), and *after* it every stored direct message for it,
oldest first (the real broker drains before the ack; a client must accept
both). When a socket closes, its presence stays for ``grace`` seconds (still
listed by ``list_peers`` and counted against ``capacity``, as at the real
broker); if nobody reattaches it by then it is dropped and the rest of the
mesh gets ``peer_left``.

Session keys
~~~~~~~~~~~~

A member ``hello`` may name a ``sessionPubkey`` without proving it holds
that key; only a ``session_hello`` proves one (the key's own signature and its
parent's attestation), and the presence it makes is *attested*. A session key
names at most one presence of the mesh, and which member may have it is
decided as follows **[ours]**:

* the same member may always name its own session key again, proven or not
  (a member hello with ``sessionPubkey`` reattaches that session);
* an unproven claim of a key that a presence of *another* member holds (live
  or in its grace window) is refused ``bad_session_pubkey``, and so is a
  proven one when that presence is attested too: first come, first served;
* a proven key *displaces* an unproven claim of it by another member. The
  claimant's socket, if live, is closed with 1008 ``session_key_claimed``
  (a client that reconnects with the same claim is then refused
  ``bad_session_pubkey`` while the proven session is known);
  its presence is dropped at once (the mesh gets ``peer_left`` for it, then
  the usual ``peer_joined``/``peer_returned`` for the proven session); its
  place no longer counts against ``capacity``. The direct messages stored
  for the claimant's member that were addressed to that session key (sealed
  to a key the claimant cannot open) become the proven session's: they join
  the end of its member's queue (even beyond ``store_limit_per_member``,
  which bounds only new sends), and are pushed
  after its ``hello_ack`` like any stored message. (The :class:`Store` has no
  atomic move, so each is deleted and added again: a crash in between loses
  that message.) What the claimant already acknowledged is gone; what is
  still stored for the claimant once its presence has left on its own (after
  its grace window) stays with it until it expires.

Once the proven session has been gone for longer than ``grace`` its key is
free again: nothing remembers who proved it, so a later unproven claim is let
in, and displaced in turn when the proven session comes back.

Messages
--------

A ``send`` is charged to the member's token bucket first (``rate_limit``
ack), then checked: an unknown priority or a bad target spec is answered with
``error{malformed, id}`` **[ours]**; a payload over ``max_payload`` with an
``ack{queued: false}``. A ``client_message_id`` already recorded for this
member (records are kept in the store for ``dedupe_ttl``, at most
``dedupe_limit_per_member`` per member) is acknowledged with the original
``messageId`` and nothing else happens. Otherwise:

* **direct** (64-hex target): a live or in-grace session pubkey addresses
  that session, else a member pubkey addresses every session of that member
  (except the sending one). Unknown keys, the sender's own session key, and
  the sender's member key with no other session are refused
  (``no connected peer ...``). Accepted messages are written to the
  :class:`~meshproto.Store` (bounded per recipient member; over the bound the
  send is refused) *before* the ack, and pushed at once to every live socket
  of the recipient whose status lets it through: ``now`` always, ``next`` and
  ``low`` only to an ``idle`` socket. A pushed message is *claimed* by the
  socket it went to, for as long as that socket lives: it is never pushed
  to that socket again, on no timer and for no other reason (TCP delivered
  it; what the receiver does with it is its own business). When the socket
  closes, its claims go with it, and the message, still stored, is pushed
  again after the recipient's next ``hello_ack`` (a new hello, or a reattach
  within the grace window), and to any other live socket of the recipient
  that has not had it yet. A new direct message to the recipient does not
  re-push what it left unacknowledged **[reference broker]**. A
  ``client_ack`` (by ``brokerMessageId``, else by ``clientMessageId``)
  deletes it from the store. Messages held by status go out, oldest first,
  the moment the socket's status becomes ``idle``.
  Messages for a member with no live socket simply wait in the store (its
  time to live is ``store_ttl``); one addressed to a session waits for that
  session only (its body is sealed to the session's key).
* **broadcast** (``*``, ``@all``), **group** (``@name``: presences whose
  hello or registry groups include ``name``) and **topic** (``#id``: treated
  as a broadcast to the whole mesh, with ``topic`` set in the push): pushed
  once, at once, ungated, to the live sockets concerned except the sending
  socket (other sessions of the same member do get it), with
  ``senderMemberPubkey``, ``senderMemberId``, ``senderName`` and the
  ``messageId`` of the sender's ack. Never stored, never re-pushed.

Liveness
--------

Every socket is pinged every ``ping_interval`` from the moment it opens and
closed with 1001 ``liveness timeout`` after ``liveness_timeout`` seconds in
which nothing (text, binary, ping or pong) arrived. A socket that has no
accepted hello ``hello_timeout`` seconds after it opened is closed with 1008
``hello timeout`` **[ours]**, however alive it is: answering pings, or
sending frames that are each answered ``no_hello``, does not hold it off. A
refused hello closes the socket at once; an accepted one cancels the hello
timeout. (When both are due at once, the liveness timeout wins.) A text
message over ``hard_frame_cap`` bytes closes the socket with 1009.

Invariants
----------

* No input raises for anything a peer can send; garbage gets
  ``error{malformed}`` (echoing a string ``id``) and the socket stays open.
  Misuse by the adapter (opening a ``conn_id`` twice) raises
  :class:`LocalProtocolError` before any state changes.
* Every ``send`` on an open socket is answered exactly once, by an ``ack``
  or an ``error`` with its ``id``.
* Outputs address only sockets that are open at the time they are produced;
  after :class:`CloseConnection` the socket is forgotten.
* After ``handle_timer(now)``, ``next_deadline()`` is ``None`` or ``> now``.
* Whatever must survive a restart (stored messages, dedupe records, members'
  last-seen times) is written through the store before the frame that
  depends on it is produced; presence is memory only.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
from dataclasses import dataclass, replace
from random import Random
from typing import Any

from ._admission import (
    Refusal,
    capacity,
    check_hello,
    check_session_hello,
    parent_member_id_mismatch,
    refuse_undecodable_hello,
    revoked,
    session_key_taken,
    unauthorized,
)
from ._broker_outputs import BrokerOutput, CloseConnection, PingConnection, SendText
from ._brokerwire import (
    group_dicts,
    hello_ack_text,
    iso_ms,
    peers_list_text,
    random_id,
    random_uuid,
)
from ._codec import decode, encode, is_unicode_text
from ._errors import LocalProtocolError, RemoteProtocolError
from ._frames import (
    Ack,
    ClientAck,
    ErrorFrame,
    Frame,
    Group,
    Hello,
    ListPeers,
    Peer,
    Push,
    Send,
    SessionHello,
    SetStatus,
    SetSummary,
    UnknownFrame,
)
from ._presence import Conn, Presence, PresenceTable
from ._ratelimit import TokenBucket
from ._registry import AdmittingRegistry, Member, MemberRegistry, Verifier
from ._store import MemoryStore, Store, StoredMessage
from ._targets import check_target, is_direct_target

__all__ = [
    "NO_PEER_TEXT",
    "SUMMARY_LIMIT",
    "Broker",
    "BrokerOptions",
]

logger = logging.getLogger("meshproto.broker")

_PRIORITIES = frozenset({"now", "next", "low"})
_STATUSES = frozenset({"idle", "working", "dnd"})

#: The longest summary a presence may set, in characters **[reference broker]**.
SUMMARY_LIMIT = 512

#: The real broker's refusal of a direct send it cannot route (docs/protocol.md §4.1).
NO_PEER_TEXT = (
    "no connected peer for target (not online, or targetSpec is your own key "
    "without another session)"
)

# Timer kinds (heap entries are (when, seq, kind, key, token)).
_T_CONN = 0
_T_GRACE = 2
_T_EXPIRY = 3

_Timer = tuple[float, int, int, Any, int]


@dataclass(frozen=True, slots=True)
class BrokerOptions:
    """Limits and timers (seconds). The defaults are docs/protocol.md §7's.

    ``hello_timeout`` (how long a socket may stay open without an accepted
    hello) is ours: the protocol names no such limit.
    """

    max_connections_per_mesh: int = 1000
    ping_interval: float = 30.0
    liveness_timeout: float = 75.0
    grace: float = 90.0
    store_ttl: float = 7 * 24 * 3600.0
    store_limit_per_member: int = 1000
    rate_burst: int = 10
    rate_per_minute: float = 60.0
    max_payload: int = 65_536
    hard_frame_cap: int = 1_048_576
    skew: float = 60.0
    dedupe_ttl: float = 24 * 3600.0
    dedupe_limit_per_member: int = 10_000
    hello_timeout: float = 10.0

    def __post_init__(self) -> None:
        for name in (
            "ping_interval",
            "liveness_timeout",
            "hello_timeout",
            "grace",
            "store_ttl",
            "rate_per_minute",
            "skew",
            "dedupe_ttl",
        ):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise LocalProtocolError(f"{name} must be a positive number, got {value!r}")
        for name in (
            "max_connections_per_mesh",
            "store_limit_per_member",
            "rate_burst",
            "max_payload",
            "hard_frame_cap",
            "dedupe_limit_per_member",
        ):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise LocalProtocolError(f"{name} must be a positive integer, got {value!r}")


def _raw_object(text: str) -> dict[str, Any] | None:
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return obj if type(obj) is dict else None


def _merge_groups(first: tuple[Group, ...] | None, second: tuple[Group, ...]) -> tuple[Group, ...]:
    merged: dict[str, Group] = {}
    for group in (*(first or ()), *second):
        merged.setdefault(group.name, group)
    return tuple(merged.values())


class Broker:
    """The reference broker. See the module docstring."""

    def __init__(
        self,
        registry: MemberRegistry,
        *,
        verifier: Verifier,
        store: Store | None = None,
        rng: Random,
        options: BrokerOptions | None = None,
    ) -> None:
        self.registry = registry
        self.verifier = verifier
        self.store: Store = store if store is not None else MemoryStore()
        self.options = options if options is not None else BrokerOptions()
        self._rng = rng
        self._outputs: list[BrokerOutput] = []
        self._conns: dict[int, Conn] = {}
        self._presences = PresenceTable()
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._timers: list[_Timer] = []
        self._seq = 0
        self._expiry_at: float | None = None
        self._schedule_expiry(self.store.next_expiry(), None)

    # --- observation ----------------------------------------------------------

    @property
    def connection_count(self) -> int:
        """Open sockets, helloed or not."""
        return len(self._conns)

    @property
    def presence_count(self) -> int:
        """Presences in every mesh, live or inside their grace window."""
        return len(self._presences)

    @property
    def claimed_count(self) -> int:
        """Stored direct messages pushed to a live socket and not acknowledged yet."""
        claimed: set[str] = set()
        for conn in self._conns.values():
            claimed |= conn.claimed
        return len(claimed)

    def is_open(self, conn_id: int) -> bool:
        """Whether the broker still knows socket ``conn_id``."""
        return conn_id in self._conns

    def is_helloed(self, conn_id: int) -> bool:
        """Whether socket ``conn_id`` is open and its hello was accepted."""
        conn = self._conns.get(conn_id)
        return conn is not None and conn.presence is not None

    def presence_id(self, conn_id: int) -> str | None:
        """The ``presenceId`` socket ``conn_id`` is attached to, if any."""
        conn = self._conns.get(conn_id)
        return None if conn is None or conn.presence is None else conn.presence.presence_id

    def peers(self, mesh_id: str) -> tuple[Peer, ...]:
        """What ``list_peers`` would answer in ``mesh_id`` right now."""
        return tuple(
            Peer(
                pubkey=p.pubkey,
                member_pubkey=p.member_pubkey,
                display_name=p.display_name,
                status=p.status,
                summary=p.summary,
                groups=p.groups,
                session_id=p.session_id,
                connected_at=iso_ms(p.connected_at),
                cwd=p.cwd,
                peer_role="session",
                visible=True,
                hostname=p.hostname,
                peer_type=p.peer_type,
                online=p.conn is not None,
            )
            for p in self._presences.in_mesh(mesh_id)
        )

    def drain_outputs(self) -> list[BrokerOutput]:
        """The outputs produced so far, in order; the list is handed over."""
        outputs, self._outputs = self._outputs, []
        return outputs

    def next_deadline(self) -> float | None:
        """When ``handle_timer`` should next run, or ``None`` if nothing is timed."""
        timers = self._timers
        while timers and self._is_stale(timers[0]):
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    # --- inputs ---------------------------------------------------------------

    def connection_opened(self, conn_id: int, *, now: float) -> None:
        """A socket was accepted (and upgraded); it must say hello first."""
        if conn_id in self._conns:
            raise LocalProtocolError(f"connection {conn_id} is already open")
        options = self.options
        conn = Conn(conn_id, now, options.ping_interval, options.hello_timeout)
        self._conns[conn_id] = conn
        self._schedule_conn(conn)

    def receive_text(self, conn_id: int, text: str, *, now: float) -> None:
        """A text message arrived on socket ``conn_id``."""
        conn = self._conns.get(conn_id)
        if conn is None:
            return
        self._alive(conn, now)
        cap = self.options.hard_frame_cap
        size = len(text)
        if size * 4 > cap and (size > cap or len(text.encode("utf-8", "surrogatepass")) > cap):
            self._close(conn, 1009, f"frame too large (over {cap} bytes)", now)
            return
        try:
            frame = decode(text)
        except RemoteProtocolError as exc:
            self._on_undecodable(conn, text, exc, now)
            return
        self._dispatch(conn, frame, now)

    def receive_binary(self, conn_id: int, data: bytes, *, now: float) -> None:
        """A binary message arrived: answered with ``error{malformed}``; the socket stays open."""
        conn = self._conns.get(conn_id)
        if conn is None:
            return
        self._alive(conn, now)
        self._error(
            conn,
            "malformed",
            f"binary message of {len(data)} bytes: the protocol allows only text messages",
        )

    def receive_ping(self, conn_id: int, *, now: float) -> None:
        """A WebSocket ping arrived (the adapter answers it); it counts as life."""
        conn = self._conns.get(conn_id)
        if conn is not None:
            self._alive(conn, now)

    def receive_pong(self, conn_id: int, *, now: float) -> None:
        """A WebSocket pong arrived; it counts as life."""
        conn = self._conns.get(conn_id)
        if conn is not None:
            self._alive(conn, now)

    def connection_closed(self, conn_id: int, *, now: float) -> None:
        """Socket ``conn_id`` is gone (closed by either side, or dropped)."""
        conn = self._conns.pop(conn_id, None)
        if conn is None:
            return
        if self._outputs:
            self._outputs = [o for o in self._outputs if o.conn_id != conn_id]
        self._detach(conn, now)

    def handle_timer(self, now: float) -> None:
        """Run everything that is due at or before ``now``."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            _when, _seq, kind, key, token = heapq.heappop(timers)
            if kind == _T_CONN:
                conn = self._conns.get(key)
                if conn is not None and conn.timer_token == token:
                    self._conn_timer(conn, now)
            elif kind == _T_GRACE:
                presence = self._presences.get(key)
                if presence is not None and presence.conn is None and presence.grace_token == token:
                    self._drop_presence(presence, now)
            elif self._expiry_at is not None and self._expiry_at <= now:
                self._expiry_at = None
                expired = self.store.expire(now)
                if expired and logger.isEnabledFor(logging.DEBUG):
                    logger.debug("%d stored messages expired", expired)
                self._schedule_expiry(self.store.next_expiry(), now)

    def shutdown(self, *, now: float) -> None:
        """Close every socket with 1001 (the broker is going away)."""
        for conn in list(self._conns.values()):
            self._close(conn, 1001, "broker shutting down", now)

    # --- frames ---------------------------------------------------------------

    def _dispatch(self, conn: Conn, frame: Frame, now: float) -> None:
        kind = type(frame)
        presence = conn.presence
        if kind is Hello or kind is SessionHello:
            if presence is not None:
                self._error(
                    conn,
                    "already_helloed",
                    "this socket has already said hello; the second hello is ignored",
                )
            elif isinstance(frame, Hello):
                self._on_hello(conn, frame, now)
            else:
                assert isinstance(frame, SessionHello)
                self._on_session_hello(conn, frame, now)
            return
        if presence is None:
            self._error(conn, "no_hello", "must send hello first", _frame_id(frame))
            return
        if kind is Send:
            assert isinstance(frame, Send)
            self._on_send(conn, presence, frame, now)
        elif kind is ClientAck:
            assert isinstance(frame, ClientAck)
            self._on_client_ack(presence, frame)
        elif kind is SetStatus:
            assert isinstance(frame, SetStatus)
            self._on_set_status(conn, presence, frame.status, now)
        elif kind is SetSummary:
            assert isinstance(frame, SetSummary)
            if len(frame.summary) > SUMMARY_LIMIT:
                self._error(
                    conn,
                    "malformed",
                    f"set_summary: a summary is at most {SUMMARY_LIMIT} characters, "
                    f"got {len(frame.summary)}",
                )
            else:
                presence.summary = frame.summary
        elif kind is ListPeers:
            assert isinstance(frame, ListPeers)
            self._on_list_peers(conn, presence, frame.req_id)
        # Anything else (unknown types, frames only a broker sends) is ignored.

    def _on_undecodable(self, conn: Conn, text: str, exc: RemoteProtocolError, now: float) -> None:
        raw = _raw_object(text)
        frame_type = raw.get("type") if raw is not None else None
        if frame_type in ("hello", "session_hello") and raw is not None:
            if conn.presence is not None:
                self._error(
                    conn,
                    "already_helloed",
                    "this socket has already said hello; the second hello is ignored",
                )
            else:
                self._refuse(conn, refuse_undecodable_hello(raw), now)
            return
        frame_id = raw.get("id") if raw is not None else None
        if type(frame_id) is not str or not is_unicode_text(frame_id):
            frame_id = None  # only a clean string id is echoed
        self._error(conn, "malformed", str(exc), frame_id)

    # --- hello ------------------------------------------------------------------

    def _on_hello(self, conn: Conn, hello: Hello, now: float) -> None:
        refusal = check_hello(hello, now=now, skew=self.options.skew, verifier=self.verifier)
        if refusal is not None:
            self._refuse(conn, refusal, now)
            return
        member = self._admit(
            conn,
            hello.mesh_id,
            hello.pubkey,
            member_id=hello.member_id,
            display_name=hello.display_name,
            now=now,
        )
        if member is not None:
            self._attach(conn, member, hello, now)

    def _on_session_hello(self, conn: Conn, hello: SessionHello, now: float) -> None:
        refusal = check_session_hello(
            hello, now=now, skew=self.options.skew, verifier=self.verifier
        )
        if refusal is not None:
            self._refuse(conn, refusal, now)
            return
        member = self._admit(
            conn,
            hello.mesh_id,
            hello.parent_member_pubkey,
            member_id=hello.parent_member_id,
            display_name=hello.display_name,
            now=now,
        )
        if member is None:
            return
        if member.member_id != hello.parent_member_id:
            self._refuse(conn, parent_member_id_mismatch(), now)
            return
        self._attach(conn, member, hello, now)

    def _admit(
        self,
        conn: Conn,
        mesh_id: str,
        pubkey: str,
        *,
        member_id: str,
        display_name: str | None,
        now: float,
    ) -> Member | None:
        """The registry's live row for ``pubkey``, or ``None`` after refusing the hello.

        The registry is asked on every hello (nothing is cached), so a
        revocation takes effect at the member's next hello.
        """
        registry = self.registry
        member = registry.lookup(mesh_id, pubkey)
        if member is None and isinstance(registry, AdmittingRegistry):
            member = registry.admit(mesh_id, pubkey, member_id=member_id, display_name=display_name)
        if member is None or member.pubkey != pubkey or member.mesh_id != mesh_id:
            self._refuse(conn, unauthorized(), now)
            return None
        if member.revoked:
            self._refuse(conn, revoked(mesh_id), now)
            return None
        return member

    def _attach(self, conn: Conn, member: Member, hello: Hello | SessionHello, now: float) -> None:
        """Attach an admitted hello's socket to its presence (found again, or new)."""
        mesh_id = hello.mesh_id
        attested = isinstance(hello, SessionHello)
        session_pubkey = hello.session_pubkey
        presences = self._presences
        existing: Presence | None = None
        squatter: Presence | None = None
        if session_pubkey is not None:
            if session_pubkey != member.pubkey:
                other = self.registry.lookup(mesh_id, session_pubkey)
                if other is not None and other.pubkey != member.pubkey:
                    # Another member's own key: direct sends to it would be misrouted.
                    self._refuse(conn, session_key_taken(), now)
                    return
            existing = presences.by_session_key(mesh_id, session_pubkey)
            if existing is not None and existing.member_pubkey != member.pubkey:
                if not attested or existing.attested:
                    # First come, first served, unless the newcomer proves the key
                    # and the holder did not: an unproven claim never wins.
                    self._refuse(conn, session_key_taken(), now)
                    return
                squatter, existing = existing, None
        if existing is None and not attested and hello.session_id is not None:
            existing = presences.by_session_id(mesh_id, member.pubkey, hello.session_id)
        limit = self.options.max_connections_per_mesh
        taken = presences.count(mesh_id) - (squatter is not None)
        if existing is None and taken >= limit:
            self._refuse(conn, capacity(limit), now)
            return
        if squatter is not None:
            self._displace(squatter, member, now)

        store = self.store
        last_seen = store.last_seen(mesh_id, member.pubkey)
        store.set_last_seen(mesh_id, member.pubkey, now)
        if existing is not None:
            presence = existing
            if presence.conn is not None:
                self._close(presence.conn, 1000, "session_replaced", now)
            presence.member = member
            is_new = False
        else:
            presence_id = random_id(self._rng)
            while presence_id in presences:
                presence_id = random_id(self._rng)
            presence = Presence(presence_id, member, now)
            is_new = True
        presence.display_name = hello.display_name or member.display_name
        presence.set_groups(_merge_groups(hello.groups, member.groups))
        presence.cwd = hello.cwd
        presence.pid = hello.pid
        presence.hostname = hello.hostname
        presence.peer_type = hello.peer_type
        if is_new:
            presence.session_id = hello.session_id
            presence.session_pubkey = session_pubkey
            presence.attested = attested
            presences.add(presence)
        elif (presence.session_id, presence.session_pubkey) != (
            hello.session_id,
            session_pubkey,
        ) or (attested and not presence.attested):
            presences.rekey(
                presence,
                hello.session_id if hello.session_id is not None else presence.session_id,
                session_pubkey if session_pubkey is not None else presence.session_pubkey,
                attested=presence.attested or attested,
            )
        presence.grace_token += 1  # cancels a pending grace expiry
        presence.conn = conn
        conn.presence = presence
        conn.hello_deadline = None
        self._schedule_conn(conn)  # without the hello timeout

        self._send(
            conn,
            hello_ack_text(
                presence_id=presence.presence_id,
                display_name=presence.display_name,
                profile_groups=member.groups,
                last_seen=last_seen,
            ),
        )
        self._drain(mesh_id, member.pubkey, now, only=conn)
        if is_new:
            event_data: dict[str, Any] = {
                "name": presence.display_name,
                "pubkey": presence.pubkey,
                "groups": group_dicts(presence.groups),
            }
            if last_seen is not None:
                event_data["lastSeenAt"] = iso_ms(last_seen)
            # "name" is what the real broker sends; claudemesh's clients read "displayName".
            event_data["displayName"] = presence.display_name
            event = "peer_joined" if last_seen is None else "peer_returned"
            self._system_push(mesh_id, event, event_data, now, skip=conn)

    def _displace(self, squatter: Presence, owner: Member, now: float) -> None:
        """A proven session takes its key back from ``squatter``, an unproven claim of it.

        The squatter's socket (if live) is closed with 1008 ``session_key_claimed``,
        its presence is dropped at once (``peer_left``), and the messages stored for
        the squatter's member *addressed to that key* become the owner's.
        """
        key = squatter.session_pubkey
        assert key is not None
        if squatter.conn is not None:
            self._close(squatter.conn, 1008, "session_key_claimed", now)
        self._drop_presence(squatter, now)
        mesh_id, holder = squatter.mesh_id, squatter.member_pubkey
        store = self.store
        for message in store.messages_for(mesh_id, holder):
            if message.recipient_session != key:
                continue
            # The Store has no atomic move: delete, then add under the owner.
            if store.remove_acked(
                mesh_id, holder, message_id=message.message_id, client_message_id=None
            ):
                store.add_message(replace(message, recipient=owner.pubkey))

    # --- sends ------------------------------------------------------------------

    def _on_send(self, conn: Conn, sender: Presence, send: Send, now: float) -> None:
        options = self.options
        member_key = (sender.mesh_id, sender.member_pubkey)
        bucket = self._buckets.get(member_key)
        if bucket is None:
            bucket = TokenBucket(options.rate_burst, options.rate_per_minute, now)
            self._buckets[member_key] = bucket
        if not bucket.take(now):
            self._reject(
                conn,
                send.id,
                f"rate_limit: max {options.rate_per_minute:g} msg/min "
                f"(burst {options.rate_burst}) \u2014 slow down",
            )
            return
        if send.priority not in _PRIORITIES:
            self._error(
                conn,
                "malformed",
                f"send: priority must be one of 'now', 'next', 'low', got {send.priority!r}",
                send.id,
            )
            return
        target = send.target_spec
        try:
            check_target(target)
        except LocalProtocolError as exc:
            self._error(conn, "malformed", f"send: {exc}", send.id)
            return
        size = len(send.ciphertext) + len(send.nonce) + len(target)
        if size > options.max_payload:
            self._reject(
                conn,
                send.id,
                f"payload too large: {size} bytes > MAX_MESSAGE_BYTES={options.max_payload}",
            )
            return
        store = self.store
        cmid = send.client_message_id or None
        if cmid is not None:
            original = store.dedupe_get(sender.mesh_id, sender.member_pubkey, cmid, now=now)
            if original is not None:
                self._send(conn, encode(Ack(send.id, original, True)))
                return
        if is_direct_target(target):
            self._send_direct(conn, sender, send, cmid, now)
        else:
            self._send_broadcast(conn, sender, send, cmid, now)

    def _remember(self, sender: Presence, cmid: str | None, message_id: str, now: float) -> None:
        if cmid is not None:
            options = self.options
            self.store.dedupe_put(
                sender.mesh_id,
                sender.member_pubkey,
                cmid,
                message_id,
                now=now,
                expires_at=now + options.dedupe_ttl,
                limit=options.dedupe_limit_per_member,
            )

    def _route_direct(self, sender: Presence, target: str) -> tuple[str, str | None] | None:
        """(recipient member, recipient session or None) for a direct target, or None."""
        mesh_id = sender.mesh_id
        owner = self._presences.by_session_key(mesh_id, target)
        if owner is not None:
            return None if owner is sender else (owner.member_pubkey, target)
        presences = self._presences
        if target == sender.member_pubkey:
            others = [p for p in presences.of_member(mesh_id, target) if p is not sender]
            return (target, None) if others else None
        if presences.member_has_presences(mesh_id, target):
            return target, None
        member = self.registry.lookup(mesh_id, target)
        if member is None or member.revoked:
            return None
        return target, None

    def _send_direct(
        self, conn: Conn, sender: Presence, send: Send, cmid: str | None, now: float
    ) -> None:
        route = self._route_direct(sender, send.target_spec)
        if route is None:
            self._reject(conn, send.id, NO_PEER_TEXT)
            return
        recipient, recipient_session = route
        mesh_id = sender.mesh_id
        store = self.store
        limit = self.options.store_limit_per_member
        held = store.count_for(mesh_id, recipient)
        if held >= limit:
            self._reject(
                conn,
                send.id,
                f"store full: {held} undelivered messages are already held for this "
                f"recipient (store_limit_per_member={limit}); try again later",
            )
            return
        message = StoredMessage(
            message_id=random_id(self._rng),
            mesh_id=mesh_id,
            recipient=recipient,
            recipient_session=recipient_session,
            sender_pubkey=sender.pubkey,
            sender_member_pubkey=sender.member_pubkey,
            sender_session=sender.session_key,
            priority=send.priority,
            nonce=send.nonce,
            ciphertext=send.ciphertext,
            client_message_id=cmid,
            created_at=now,
            expires_at=now + self.options.store_ttl,
        )
        store.add_message(message)
        self._remember(sender, cmid, message.message_id, now)
        self._schedule_expiry(message.expires_at, None)
        self._send(conn, encode(Ack(send.id, message.message_id, True)))
        targets = [
            c
            for c in self._presences.live_conns_of_member(mesh_id, recipient)
            if self._wants(c, message)
        ]
        if targets:
            self._push_stored(message, targets, now)

    def _send_broadcast(
        self, conn: Conn, sender: Presence, send: Send, cmid: str | None, now: float
    ) -> None:
        target = send.target_spec
        conns = self._presences.live_conns(sender.mesh_id)
        topic: str | None = None
        if target.startswith("@") and target != "@all":
            group = target[1:]
            conns = [c for c in conns if c.presence is not None and group in c.presence.group_names]
        elif target.startswith("#"):
            topic = target[1:]
        message_id = random_id(self._rng)
        self._remember(sender, cmid, message_id, now)
        self._send(conn, encode(Ack(send.id, message_id, True)))
        text = encode(
            Push(
                message_id=message_id,
                mesh_id=sender.mesh_id,
                sender_pubkey=sender.pubkey,
                priority=send.priority,
                nonce=send.nonce,
                ciphertext=send.ciphertext,
                created_at=iso_ms(now),
                sender_member_pubkey=sender.member_pubkey,
                sender_member_id=sender.member.member_id,
                sender_name=sender.display_name,
                topic=topic,
            )
        )
        out = self._outputs
        for c in conns:
            if c is not conn:
                out.append(SendText(c.conn_id, text))

    def _reject(self, conn: Conn, send_id: str, error: str) -> None:
        self._send(conn, encode(Ack(send_id, "", False, error)))

    # --- delivery of stored messages -------------------------------------------

    @staticmethod
    def _wants(conn: Conn, message: StoredMessage) -> bool:
        """Whether ``message`` may be pushed to ``conn`` now (recipient, not its sender, gate)."""
        p = conn.presence
        if p is None:
            return False
        if message.recipient_session is not None and p.session_pubkey != message.recipient_session:
            return False
        if p.member_pubkey == message.sender_member_pubkey and (
            p.session_key == message.sender_session
        ):
            return False
        return message.priority == "now" or p.status == "idle"

    def _push_stored(self, message: StoredMessage, conns: list[Conn], now: float) -> None:
        text = encode(
            Push(
                message_id=message.message_id,
                mesh_id=message.mesh_id,
                sender_pubkey=message.sender_pubkey,
                priority=message.priority,
                nonce=message.nonce,
                ciphertext=message.ciphertext,
                created_at=iso_ms(message.created_at),
                client_message_id=message.client_message_id,
            )
        )
        out = self._outputs
        message_id = message.message_id
        for c in conns:
            out.append(SendText(c.conn_id, text))
            c.claimed.add(message_id)

    def _drain(self, mesh_id: str, member: str, now: float, *, only: Conn | None = None) -> None:
        """Push the member's stored messages that may go out now, oldest first.

        Each goes to the live sockets (or ``only`` that one) whose status lets
        it through and that have not had it yet: a socket's claims last as
        long as the socket, so a new socket (a hello) gets every one.
        """
        conns = (
            [only] if only is not None else self._presences.live_conns_of_member(mesh_id, member)
        )
        if not conns:
            return
        stored = self.store.messages_for(mesh_id, member)
        for message in stored:
            if message.expires_at <= now:
                continue
            targets = [
                c for c in conns if message.message_id not in c.claimed and self._wants(c, message)
            ]
            if targets:
                self._push_stored(message, targets, now)
        limit = 2 * self.options.store_limit_per_member
        for conn in conns:
            if len(conn.claimed) > limit:  # claims of messages that expired meanwhile
                conn.claimed &= {m.message_id for m in stored}

    def _on_client_ack(self, presence: Presence, ack: ClientAck) -> None:
        if ack.broker_message_id is None and ack.client_message_id is None:
            return
        gone = self.store.remove_acked(
            presence.mesh_id,
            presence.member_pubkey,
            message_id=ack.broker_message_id,
            client_message_id=ack.client_message_id,
        )
        if gone:
            for conn in self._presences.live_conns_of_member(
                presence.mesh_id, presence.member_pubkey
            ):
                conn.claimed.difference_update(gone)

    # --- presence ------------------------------------------------------------------

    def _on_set_status(self, conn: Conn, presence: Presence, status: str, now: float) -> None:
        if status not in _STATUSES:
            self._error(
                conn,
                "malformed",
                f"set_status: status must be one of 'idle', 'working', 'dnd', got {status!r}",
            )
            return
        before = presence.status
        presence.status = status
        if status == "idle" and before != "idle":
            self._drain(presence.mesh_id, presence.member_pubkey, now)

    def _on_list_peers(self, conn: Conn, presence: Presence, req_id: str | None) -> None:
        peers = [
            _without_nones(
                {
                    "pubkey": p.pubkey,
                    "memberPubkey": p.member_pubkey,
                    "displayName": p.display_name,
                    "status": p.status,
                    "summary": p.summary,
                    "groups": group_dicts(p.groups),
                    "sessionId": p.session_id,
                    "connectedAt": iso_ms(p.connected_at),
                    "cwd": p.cwd,
                    "peerRole": "session",
                    "visible": True,
                    "hostname": p.hostname,
                    "peerType": p.peer_type,
                    "online": p.conn is not None,
                },
                ("hostname", "peerType"),
            )
            for p in self._presences.in_mesh(presence.mesh_id)
        ]
        self._send(conn, peers_list_text(peers, req_id))

    def _system_push(
        self, mesh_id: str, event: str, data: dict[str, Any], now: float, *, skip: Conn | None
    ) -> None:
        conns = self._presences.live_conns(mesh_id)
        if not conns or (len(conns) == 1 and conns[0] is skip):
            return
        text = encode(
            Push(
                message_id=random_uuid(self._rng),
                mesh_id=mesh_id,
                sender_pubkey="system",
                priority="low",
                nonce="",
                ciphertext="",
                created_at=iso_ms(now),
                subtype="system",
                event=event,
                event_data=data,
            )
        )
        out = self._outputs
        for c in conns:
            if c is not skip:
                out.append(SendText(c.conn_id, text))

    def _detach(self, conn: Conn, now: float) -> None:
        """``conn`` is gone: its presence (if still its own) starts the grace window."""
        presence = conn.presence
        conn.presence = None
        if presence is None or presence.conn is not conn:
            return
        presence.conn = None
        presence.grace_token += 1
        self._push_timer(
            now + self.options.grace, _T_GRACE, presence.presence_id, presence.grace_token
        )
        self.store.set_last_seen(presence.mesh_id, presence.member_pubkey, now)

    def _drop_presence(self, presence: Presence, now: float) -> None:
        """The grace window ran out: forget the presence and tell the mesh."""
        presences = self._presences
        presences.remove(presence)
        mesh_id, member = presence.mesh_id, presence.member_pubkey
        if not presences.member_has_presences(mesh_id, member):
            self._buckets.pop((mesh_id, member), None)
        data = {"name": presence.display_name, "pubkey": presence.pubkey}
        self._system_push(mesh_id, "peer_left", data, now, skip=None)

    # --- sockets and timers ----------------------------------------------------------

    def _alive(self, conn: Conn, now: float) -> None:
        conn.last_inbound = max(conn.last_inbound, now)

    def _conn_timer(self, conn: Conn, now: float) -> None:
        options = self.options
        # Same expressions as _schedule_conn, so float rounding cannot loop.
        if now >= conn.last_inbound + options.liveness_timeout:
            self._close(conn, 1001, "liveness timeout", now)
            return
        if conn.hello_deadline is not None and now >= conn.hello_deadline:
            self._close(conn, 1008, "hello timeout", now)
            return
        if now >= conn.next_ping:
            self._outputs.append(PingConnection(conn.conn_id))
            conn.next_ping = now + options.ping_interval
        self._schedule_conn(conn)

    def _schedule_conn(self, conn: Conn) -> None:
        conn.timer_token += 1
        when = min(conn.next_ping, conn.last_inbound + self.options.liveness_timeout)
        if conn.hello_deadline is not None and conn.hello_deadline < when:
            when = conn.hello_deadline
        self._push_timer(when, _T_CONN, conn.conn_id, conn.timer_token)

    def _schedule_expiry(self, when: float | None, now: float | None) -> None:
        if when is None:
            return
        if now is not None and when <= now:  # a store that left an expired message behind
            when = math.nextafter(now, math.inf)
        if self._expiry_at is None or when < self._expiry_at:
            self._expiry_at = when
            self._push_timer(when, _T_EXPIRY, None, 0)

    def _push_timer(self, when: float, kind: int, key: Any, token: int) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (when, self._seq, kind, key, token))

    def _is_stale(self, timer: _Timer) -> bool:
        when, _seq, kind, key, token = timer
        if kind == _T_CONN:
            conn = self._conns.get(key)
            return conn is None or conn.timer_token != token
        if kind == _T_GRACE:
            presence = self._presences.get(key)
            return presence is None or presence.conn is not None or presence.grace_token != token
        return self._expiry_at != when

    def _close(self, conn: Conn, code: int, reason: str, now: float) -> None:
        """Close ``conn`` from our side and forget it."""
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("closing connection %d: %d %s", conn.conn_id, code, reason)
        del self._conns[conn.conn_id]
        self._outputs.append(CloseConnection(conn.conn_id, code, reason))
        self._detach(conn, now)

    def _refuse(self, conn: Conn, refusal: Refusal, now: float) -> None:
        self._send(conn, encode(ErrorFrame(refusal.code, refusal.message)))
        self._close(conn, refusal.close_code, refusal.reason, now)

    def _send(self, conn: Conn, text: str) -> None:
        self._outputs.append(SendText(conn.conn_id, text))

    def _error(self, conn: Conn, code: str, message: str, frame_id: str | None = None) -> None:
        self._send(conn, encode(ErrorFrame(code, message, frame_id)))


def _without_nones(entry: dict[str, Any], optional: tuple[str, ...]) -> dict[str, Any]:
    """``entry`` without the ``optional`` keys whose value is ``None`` (sent only when set)."""
    for key in optional:
        if entry[key] is None:
            del entry[key]
    return entry


def _frame_id(frame: Frame) -> str | None:
    """The ``id`` of a frame that has one (to echo in an error)."""
    if isinstance(frame, Send):
        return frame.id
    if isinstance(frame, UnknownFrame):
        value = frame.fields.get("id")
        return value if type(value) is str else None
    return None
