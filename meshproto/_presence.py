"""The reference broker's in-memory presence: sockets, presences and their indexes.

A :class:`Conn` is one socket (by the adapter's ``conn_id``); after a good
hello it is attached to a :class:`Presence`, the peer that others see. A
presence outlives its socket for the grace window (``conn`` is ``None`` and
``grace_token`` names the pending expiry), so that a reconnect of the same
session (same ``sessionPubkey``, or same ``sessionId`` of the same member)
finds it again. :class:`PresenceTable` keeps the presences and the indexes the
broker routes by: per mesh (in order of arrival), per member, per session
pubkey and per (member, sessionId). None of this is persisted.

A presence made by a ``session_hello`` is *attested*: its session key was
proven (by the session key's own signature and its parent's attestation).
It is found again by that key only, never by ``sessionId``: a member hello
that merely shares the ``sessionId`` must not take an attested session over.
A presence made by a member hello that names a ``sessionPubkey`` is not
attested (the key is only claimed): the broker lets a session hello of another
member that proves the key displace it, and never lets an unproven claim take
the key from another member's presence (see ``meshproto._broker``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from ._frames import Group
from ._registry import Member

__all__ = ["PING_TICK", "Conn", "Presence", "PresenceTable", "ping_due"]

#: Pings fall due on whole multiples of this many seconds (see :func:`ping_due`).
PING_TICK = 1.0


def ping_due(now: float, interval: float) -> float:
    """When a socket pinged (or opened) at ``now`` is pinged next.

    ``interval`` later, rounded down to a whole :data:`PING_TICK`: the pings
    of every socket due within the same tick go out together, from one
    timer, instead of one timer per socket. (An interval under ten ticks is
    not rounded.)
    """
    due = now + interval
    if interval >= 10 * PING_TICK:
        due = math.floor(due / PING_TICK) * PING_TICK
    return due


class Conn:
    """One socket. ``presence`` is ``None`` until its hello is accepted.

    ``hello_deadline`` is when an unhelloed socket is closed (``None`` once
    its hello is accepted). ``claimed`` holds the ids of the stored direct
    messages pushed to this socket and not acknowledged yet: none of them is
    pushed to it again, and they go with it when it closes.

    The push window (see ``meshproto._broker_messages``): ``in_flight`` is
    the bytes of stored messages pushed to it that the peer may not have
    read yet; ``probe_mark`` is what ``in_flight`` was when the broker pinged
    it to learn that (``None``: no probe out); ``starved`` says that a
    message waits for it because its window was full.
    """

    __slots__ = (
        "attached",
        "claimed",
        "conn_id",
        "hello_deadline",
        "in_flight",
        "last_inbound",
        "next_ping",
        "presence",
        "probe_mark",
        "starved",
        "timer_token",
    )

    def __init__(
        self, conn_id: int, now: float, ping_interval: float, hello_timeout: float
    ) -> None:
        self.conn_id = conn_id
        self.last_inbound = now
        self.next_ping = ping_due(now, ping_interval)
        self.hello_deadline: float | None = now + hello_timeout
        self.presence: Presence | None = None
        self.timer_token = 0
        self.claimed: set[str] = set()
        self.in_flight = 0
        self.probe_mark: int | None = None
        self.starved = False
        #: When its hello was accepted, in the broker's order of acceptance (0: not yet).
        self.attached = 0


class Presence:
    """A peer of a mesh: one session of one member, with or without a live socket."""

    __slots__ = (
        "_member",
        "attested",
        "conn",
        "connected_at",
        "cwd",
        "display_name",
        "grace_token",
        "group_names",
        "groups",
        "hostname",
        "member_pubkey",
        "mesh_id",
        "peer_type",
        "pid",
        "presence_id",
        "session_id",
        "session_pubkey",
        "status",
        "summary",
    )

    def __init__(self, presence_id: str, member: Member, connected_at: float) -> None:
        self.presence_id = presence_id
        self.member = member  # and member_pubkey, read on every message
        self.mesh_id = member.mesh_id
        self.connected_at = connected_at
        self.conn: Conn | None = None
        self.grace_token = 0
        self.session_id: str | None = None
        self.session_pubkey: str | None = None
        self.attested = False
        self.display_name = member.display_name
        self.groups: tuple[Group, ...] = ()
        self.group_names: frozenset[str] = frozenset()
        self.status = "idle"
        self.summary: str | None = None
        self.cwd: str | None = None
        self.pid: int | None = None
        self.hostname: str | None = None
        self.peer_type: str | None = None

    @property
    def member(self) -> Member:
        return self._member

    @member.setter
    def member(self, member: Member) -> None:
        self._member = member
        self.member_pubkey = member.pubkey

    @property
    def pubkey(self) -> str:
        """The key others address this peer by: its session key if any, else its member key."""
        return self.session_pubkey or self.member.pubkey

    @property
    def session_key(self) -> str:
        """A name for this session that survives reconnects and restarts."""
        if self.session_pubkey is not None:
            return self.session_pubkey
        if self.session_id is not None:
            return f"id:{self.session_id}"
        return f"presence:{self.presence_id}"

    def set_groups(self, groups: tuple[Group, ...]) -> None:
        self.groups = groups
        self.group_names = frozenset(g.name for g in groups)


class PresenceTable:
    """Every presence the broker knows, with the indexes it routes by."""

    __slots__ = ("_by_id", "_by_member", "_by_mesh", "_by_session_id", "_by_session_key")

    def __init__(self) -> None:
        self._by_id: dict[str, Presence] = {}
        self._by_mesh: dict[str, dict[str, Presence]] = {}
        self._by_member: dict[tuple[str, str], dict[str, Presence]] = {}
        self._by_session_key: dict[tuple[str, str], Presence] = {}
        self._by_session_id: dict[tuple[str, str, str], Presence] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, presence_id: object) -> bool:
        return presence_id in self._by_id

    def get(self, presence_id: str) -> Presence | None:
        return self._by_id.get(presence_id)

    def by_session_key(self, mesh_id: str, session_pubkey: str) -> Presence | None:
        return self._by_session_key.get((mesh_id, session_pubkey))

    def by_session_id(self, mesh_id: str, member: str, session_id: str) -> Presence | None:
        return self._by_session_id.get((mesh_id, member, session_id))

    def in_mesh(self, mesh_id: str) -> Iterator[Presence]:
        """The mesh's presences, in order of arrival."""
        return iter(list(self._by_mesh.get(mesh_id, {}).values()))

    def count(self, mesh_id: str) -> int:
        return len(self._by_mesh.get(mesh_id, ()))

    def of_member(self, mesh_id: str, member: str) -> list[Presence]:
        return list(self._by_member.get((mesh_id, member), {}).values())

    def live_conns_of_member(self, mesh_id: str, member: str) -> list[Conn]:
        found = self._by_member.get((mesh_id, member))
        if not found:
            return []
        return [p.conn for p in found.values() if p.conn is not None]

    def live_conns(self, mesh_id: str) -> list[Conn]:
        return [p.conn for p in self._by_mesh.get(mesh_id, {}).values() if p.conn is not None]

    def add(self, presence: Presence) -> None:
        pid = presence.presence_id
        self._by_id[pid] = presence
        self._by_mesh.setdefault(presence.mesh_id, {})[pid] = presence
        member_key = (presence.mesh_id, presence.member_pubkey)
        self._by_member.setdefault(member_key, {})[pid] = presence
        self._index_session(presence)

    def remove(self, presence: Presence) -> None:
        pid = presence.presence_id
        if self._by_id.pop(pid, None) is None:
            return
        mesh = self._by_mesh[presence.mesh_id]
        del mesh[pid]
        if not mesh:
            del self._by_mesh[presence.mesh_id]
        member_key = (presence.mesh_id, presence.member_pubkey)
        members = self._by_member[member_key]
        del members[pid]
        if not members:
            del self._by_member[member_key]
        self._unindex_session(presence)

    def rekey(
        self,
        presence: Presence,
        session_id: str | None,
        session_pubkey: str | None,
        *,
        attested: bool | None = None,
    ) -> None:
        """Change the session identity of ``presence`` (a reattach with new values)."""
        self._unindex_session(presence)
        presence.session_id = session_id
        presence.session_pubkey = session_pubkey
        if attested is not None:
            presence.attested = attested
        self._index_session(presence)

    def member_has_presences(self, mesh_id: str, member: str) -> bool:
        return (mesh_id, member) in self._by_member

    def _index_session(self, presence: Presence) -> None:
        if presence.session_pubkey is not None:
            self._by_session_key[(presence.mesh_id, presence.session_pubkey)] = presence
        if presence.session_id is not None and not presence.attested:
            key = (presence.mesh_id, presence.member_pubkey, presence.session_id)
            self._by_session_id[key] = presence

    def _unindex_session(self, presence: Presence) -> None:
        if presence.session_pubkey is not None:
            key = (presence.mesh_id, presence.session_pubkey)
            if self._by_session_key.get(key) is presence:
                del self._by_session_key[key]
        if presence.session_id is not None:
            sid_key = (presence.mesh_id, presence.member_pubkey, presence.session_id)
            if self._by_session_id.get(sid_key) is presence:
                del self._by_session_id[sid_key]
