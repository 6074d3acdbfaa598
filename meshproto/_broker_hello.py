"""How a socket becomes a peer: hellos, presences and session keys.

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
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ._admission import (
    capacity,
    check_hello,
    check_session_hello,
    parent_member_id_mismatch,
    revoked,
    session_key_taken,
    unauthorized,
)
from ._broker_base import _BrokerBase
from ._brokerwire import (
    group_dicts,
    hello_ack_text,
    iso_ms,
    random_id,
)
from ._frames import (
    Group,
    Hello,
    SessionHello,
)
from ._presence import Conn, Presence
from ._registry import AdmittingRegistry, Member

__all__: list[str] = []


def _merge_groups(first: tuple[Group, ...] | None, second: tuple[Group, ...]) -> tuple[Group, ...]:
    merged: dict[str, Group] = {}
    for group in (*(first or ()), *second):
        merged.setdefault(group.name, group)
    return tuple(merged.values())


class _Hellos(_BrokerBase):
    """Hellos, presences and session keys (the module docstring)."""

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
        if member is None:
            admitting = self._admitting
            if admitting is None or admitting[0] is not registry:
                # A protocol's isinstance inspects the class every time (tens of
                # microseconds); asked once per registry object, not per hello.
                admitting = self._admitting = (
                    registry,
                    registry if isinstance(registry, AdmittingRegistry) else None,
                )
            if admitting[1] is not None:
                member = admitting[1].admit(
                    mesh_id, pubkey, member_id=member_id, display_name=display_name
                )
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
        self._attached += 1
        conn.attached = self._attached
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
