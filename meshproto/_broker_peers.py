"""What peers learn of each other: statuses, summaries, the peer list, system pushes.

Statuses gate direct messages (see :mod:`meshproto._broker_messages`); a
status that becomes ``idle`` releases what was held. ``list_peers`` lists
every presence of the mesh, live or in its grace window (``online`` says
which). A presence that appears or goes sends a system push to every other
live socket of its mesh: ``peer_joined`` (a member's first presence ever),
``peer_returned`` (a member seen before) and ``peer_left`` (a presence
dropped after its grace window).

System pushes in batches **[reference broker]**. Every socket of a mesh
hears of every other's arrival, so a mesh of *n* peers that all join at once
(as after a broker restart) makes *n*² pushes. They are delivered in
batches: an event in a quiet mesh goes out at once and opens a window of
``presence_batch`` seconds; events during the window wait, in order, and go
out together when it ends (and open the next window). The window is
``presence_batch`` for up to 500 live sockets and grows in proportion beyond
that (a batch costs one write to every socket). Each socket then gets
a whole batch as one write, framed once for every socket, instead of one
write per event. An event goes only to the sockets that were live when it
happened (a later joiner learns of earlier peers from ``list_peers``), and a
socket that closes before the batch goes out gets nothing of it.

A window ends once the mesh has been quiet for a whole window: each event
moves its end to a window after it (the window of the mesh's size then),
but never past ``SPAN_WINDOWS`` such windows after it opened. So while a
storm lasts, the broker answers hellos and keeps their news; the news goes
out when the storm ends, or every ``SPAN_WINDOWS`` windows if it does not
(at 5,000 peers, a window is half a second and news waits at most four
seconds). A batch whose texts reach ``presence_batch_chars`` (2 MiB) goes
out at once, so that no socket is handed more than that at a time (half of
a default send buffer, see ``meshproto_anyio.ServerOptions.max_send_buffer``).
The batch goes out as one :class:`SendTextTail` per point sockets hear it
from, all holding the batch's one tuple of texts.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

from ._broker_base import _STATUSES, _T_GRACE, _T_PRESENCE, PresenceBatch, _BrokerBase
from ._broker_outputs import SendTextMany, SendTextTail
from ._brokerwire import (
    group_dicts,
    iso_ms,
    peers_list_text,
    random_uuid,
)
from ._codec import encode
from ._frames import Push
from ._presence import Conn, Presence

__all__ = ["SOCKETS_PER_WINDOW", "SPAN_WINDOWS"]

#: A mesh of this many live sockets (or fewer) has batch windows of ``presence_batch``.
SOCKETS_PER_WINDOW = 500
#: A batch kept open by events that keep coming goes out this many windows after it opened.
SPAN_WINDOWS = 8


def _without_nones(entry: dict[str, Any], optional: tuple[str, ...]) -> dict[str, Any]:
    """``entry`` without the ``optional`` keys whose value is ``None`` (sent only when set)."""
    for key in optional:
        if entry[key] is None:
            del entry[key]
    return entry


class _Peers(_BrokerBase):
    """Statuses, summaries, the peer list and system pushes (the module docstring)."""

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
        skip_id = skip.conn_id if skip is not None else None
        batch = self._batches.get(mesh_id)
        if batch is not None and now >= batch.until:
            # The window is over and its timer has not run yet: what waited in
            # it goes out first (and the next window opens if it was not empty).
            self._flush_batch(mesh_id, now)
            batch = self._batches.get(mesh_id)
        if batch is not None:  # a window is open: wait in it (who hears it: at the flush)
            text = self._event_text(mesh_id, event, data, now)
            batch.events.append((text, skip_id, self._attached))
            batch.size += len(text)
            if batch.size >= self.options.presence_batch_chars:
                self._flush_batch(mesh_id, now)  # a socket's burst stays bounded
            else:  # the window stays open while events keep coming, up to its span
                batch.extend(self._window(self._presences.count(mesh_id)), now)
            return
        conns = self._presences.live_conns(mesh_id)
        if not conns or (len(conns) == 1 and conns[0] is skip):
            return
        # A quiet mesh: out at once, and a window opens for what follows.
        text = self._event_text(mesh_id, event, data, now)
        targets = tuple(c.conn_id for c in conns if c is not skip)
        if targets:
            self._outputs.append(SendTextMany(targets, (text,)))
        self._open_batch(mesh_id, len(conns), now)

    def _flush_batch(self, mesh_id: str, now: float) -> None:
        """A batch window ended: its events go out, in order, to the sockets live for each.

        A socket hears every event from the first one after it arrived (its
        own arrival is never sent to it), so what each socket hears is a tail
        of the batch. Sockets that hear the same tail share one output.
        """
        batch = self._batches.pop(mesh_id)
        if not batch.events:
            return  # the mesh was quiet: the next event goes out at once
        live = self._presences.live_conns(mesh_id)
        self._send_batch(batch.events, live)
        self._open_batch(mesh_id, len(live), now)  # and the next window opens

    def _open_batch(self, mesh_id: str, sockets: int, now: float) -> None:
        window = self._window(sockets)
        if window > 0:
            batch = self._batches[mesh_id] = PresenceBatch(now, window, SPAN_WINDOWS)
            self._push_timer(batch.timer_at, _T_PRESENCE, mesh_id, 0)

    def _send_batch(self, events: list[tuple[str, int | None, int]], live: list[Conn]) -> None:
        texts = tuple(text for text, _, _ in events)
        seens = [seen for _, _, seen in events]
        skipped: dict[int, list[int]] = {}
        for index, (_, skip_id, _) in enumerate(events):
            if skip_id is not None:
                skipped.setdefault(skip_id, []).append(index)
        tails: dict[int, list[int]] = {}  # first event heard -> the sockets that hear from it
        out = self._outputs
        for conn in live:
            start = bisect_left(seens, conn.attached)  # the first event after it arrived
            skips = [i for i in skipped.get(conn.conn_id, ()) if i >= start]
            if skips == [start]:  # its own arrival, first of its tail (the usual case)
                start += 1
            elif skips:  # skipped further into its tail: an output of its own
                own = tuple(t for i, t in enumerate(texts) if i >= start and i not in skips)
                if own:
                    out.append(SendTextMany((conn.conn_id,), own))
                continue
            if start < len(texts):
                tails.setdefault(start, []).append(conn.conn_id)
        for start, conn_ids in tails.items():
            out.append(SendTextTail(tuple(conn_ids), texts, start))

    def _window(self, sockets: int) -> float:
        """The batch window for a mesh of ``sockets`` live sockets.

        ``presence_batch`` per 500 sockets: a batch costs a write to every
        socket, so a larger mesh waits longer between batches and pays for
        the same share of the broker's time.
        """
        return self.options.presence_batch * max(1.0, sockets / SOCKETS_PER_WINDOW)

    def _event_text(self, mesh_id: str, event: str, data: dict[str, Any], now: float) -> str:
        return encode(
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
