"""What the broker does with a ``send``: routing, the store, delivery, acknowledgements.

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
* **a push window per socket [reference broker]**: at most about
  ``push_window`` bytes (1 MiB) of stored messages are pushed to one socket
  and not known to be read. When a push would go past the window the socket
  is *starved*: the broker pings it (a probe) and the rest of its messages
  wait in the store, in order. The pong proves that the peer has read
  everything written before the ping (one TCP stream, in order), so it
  frees what was in flight then, and the next part of the backlog goes out.
  So a recipient with a backlog far larger than its socket's send buffer
  (after a hello, or when its status turns ``idle``) gets all of it, a
  window per round trip, instead of being dropped for a send buffer that
  overflowed; a peer that stops reading stops only its own pushes; and a
  client that never sends ``client_ack`` is served like any other, since
  the window is the transport's, not the acknowledgements'. (A pong that
  answers an older liveness ping may free a little early: the bound is
  about a window, at most two.) One message always goes out, however large.
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
"""

from __future__ import annotations

from ._broker_base import _PRIORITIES, NO_PEER_TEXT, _BrokerBase
from ._broker_outputs import (
    PingConnection,
    SendText,
    SendTextMany,
)
from ._brokerwire import (
    iso_ms,
    random_id,
)
from ._codec import frame_text
from ._errors import LocalProtocolError
from ._frames import (
    Ack,
    ClientAck,
    Push,
    Send,
)
from ._presence import Conn, Presence
from ._ratelimit import TokenBucket
from ._store import StoredMessage
from ._targets import check_target, is_direct_target

#: The texts of the frames written per message, made without the frames.
_ack_text = frame_text(Ack)
_push_text = frame_text(Push)

__all__: list[str] = []


class _Messages(_BrokerBase):
    """Sends, stored messages and their delivery (the module docstring)."""

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
                self._send(conn, _ack_text(send.id, original, True))
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
        self._send(conn, _ack_text(send.id, message.message_id, True))
        targets = [
            c
            for c in self._presences.live_conns_of_member(mesh_id, recipient)
            if self._wants(c, message) and self._has_room(c)
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
        self._send(conn, _ack_text(send.id, message_id, True))
        text = _push_text(
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
        targets = tuple(c.conn_id for c in conns if c is not conn)
        if targets:
            self._outputs.append(SendTextMany(targets, (text,)))

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
        text = _push_text(
            message_id=message.message_id,
            mesh_id=message.mesh_id,
            sender_pubkey=message.sender_pubkey,
            priority=message.priority,
            nonce=message.nonce,
            ciphertext=message.ciphertext,
            created_at=iso_ms(message.created_at),
            client_message_id=message.client_message_id,
        )
        message_id, size = message.message_id, len(text)
        for c in conns:
            c.claimed.add(message_id)
            c.in_flight += size
        if len(conns) == 1:
            self._outputs.append(SendText(conns[0].conn_id, text))
        else:
            self._outputs.append(SendTextMany(tuple(c.conn_id for c in conns), (text,)))

    def _has_room(self, conn: Conn) -> bool:
        """Whether ``conn``'s push window takes another stored message now.

        A starved socket takes its messages from ``_drain`` only, oldest
        first. A socket whose window just filled starves, and is probed
        with a ping unless a probe is already out.
        """
        if conn.starved:
            return False
        if conn.in_flight < self.options.push_window:
            return True
        conn.starved = True
        if conn.probe_mark is None:
            conn.probe_mark = conn.in_flight
            self._outputs.append(PingConnection(conn.conn_id))
        return False

    def _on_probe_answered(self, conn: Conn, now: float) -> None:
        """A pong: what was in flight when the probe went out has been read."""
        mark = conn.probe_mark
        if mark is None:
            return
        conn.probe_mark = None
        conn.in_flight = max(0, conn.in_flight - mark)
        presence = conn.presence
        if conn.starved and presence is not None:
            self._drain(presence.mesh_id, presence.member_pubkey, now, only=conn)

    def _drain(self, mesh_id: str, member: str, now: float, *, only: Conn | None = None) -> None:
        """Push the member's stored messages that may go out now, oldest first.

        Each goes to the live sockets (or ``only`` that one) whose status lets
        it through, that have not had it yet, and whose push window has room:
        a socket's claims last as long as the socket, so a new socket (a
        hello) gets every one, a window at a time.
        """
        conns = (
            [only] if only is not None else self._presences.live_conns_of_member(mesh_id, member)
        )
        if not conns:
            return
        stored = self.store.messages_for(mesh_id, member)
        for conn in conns:
            conn.starved = False
        for message in stored:
            if message.expires_at <= now:
                continue
            message_id = message.message_id
            targets = [
                c
                for c in conns
                if message_id not in c.claimed and self._wants(c, message) and self._has_room(c)
            ]
            if targets:
                self._push_stored(message, targets, now)
            elif all(c.starved for c in conns):
                break  # every window is full: the rest wait for the probes' pongs
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
