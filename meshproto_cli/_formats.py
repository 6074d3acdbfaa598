"""How ``listen`` and ``peers`` show what they got: lines for people, records for scripts.

Lines for people are made of :func:`~meshproto_cli._output.visible` text
only, with colour when the :class:`~meshproto_cli._output.Style` allows it.
Records are plain dicts with the stable field names of
docs/howto/command.md, printed one per line by
:func:`~meshproto_cli._output.json_line`; each has a ``type``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from meshproto import MessageReceived, Peer, SystemMessage, UnreadableMessage

from ._output import Style, local_time, visible
from ._roster import Roster, describe_system_message

__all__ = [
    "MessageFormat",
    "peer_record",
    "peer_table",
]


class MessageFormat:
    """Lines and records for what ``listen`` receives in one mesh."""

    def __init__(self, mesh_slug: str, mesh_id: str, roster: Roster, style: Style) -> None:
        self.mesh_slug = mesh_slug
        self.mesh_id = mesh_id
        self.roster = roster
        self.style = style

    def sender_name(self, message: MessageReceived | UnreadableMessage) -> str | None:
        push = message.push
        return push.sender_name or self.roster.name_of(
            message.sender_pubkey, push.sender_member_pubkey
        )

    # --- for people ------------------------------------------------------------------

    def _head(self, created_at: str | None) -> str:
        style = self.style
        return (
            f"{style.dim(local_time(created_at))} {style.dim('[' + visible(self.mesh_slug) + ']')}"
        )

    def _sender(self, message: MessageReceived | UnreadableMessage) -> str:
        name = self.sender_name(message)
        shown = visible(name) if name else visible(message.sender_pubkey[:12])
        return self.style.bold(shown)

    def _priority(self, priority: str) -> str:
        if priority == "now":
            return self.style.red("now!")
        if priority == "low":
            return self.style.dim("low")
        return visible(priority)

    def line(self, message: MessageReceived | UnreadableMessage) -> str:
        """``19:21:38 [local-mesh] alice (now!): hello``."""
        head, sender = self._head(message.push.created_at), self._sender(message)
        topic = message.push.topic
        if topic:
            sender += f" {self.style.cyan('#' + visible(topic))}"
        if isinstance(message, UnreadableMessage):
            why = self.style.yellow(f"[unreadable: {visible(message.reason)}]")
            return f"{head} {sender}: {why}"
        return f"{head} {sender} ({self._priority(message.priority)}): {visible(message.text)}"

    def system_line(self, message: SystemMessage) -> str:
        """``19:22:01 [local-mesh] · bob joined``, dimmed."""
        text = visible(describe_system_message(message, self.roster))
        return self.style.dim(
            f"{local_time(message.push.created_at)} [{visible(self.mesh_slug)}] · {text}"
        )

    # --- for scripts -----------------------------------------------------------------

    def record(self, message: MessageReceived | UnreadableMessage) -> dict[str, Any]:
        push = message.push
        common: dict[str, Any] = {
            "messageId": message.message_id,
            "sender": message.sender_pubkey,
            "senderMemberPubkey": push.sender_member_pubkey,
            "senderName": self.sender_name(message),
            "mesh": self.mesh_slug,
            "meshId": self.mesh_id,
            "createdAt": push.created_at,
        }
        if isinstance(message, UnreadableMessage):
            return {"type": "unreadable", "unreadable": True, **common, "reason": message.reason}
        return {
            "type": "message",
            **common,
            "clientMessageId": message.client_message_id,
            "direct": push.sender_member_pubkey is None and push.topic is None,
            "topic": push.topic,
            "priority": message.priority,
            "text": message.text,
        }

    def system_record(self, message: SystemMessage) -> dict[str, Any]:
        return {
            "type": "system",
            "event": message.event,
            "data": dict(message.data),
            "messageId": message.message_id,
            "mesh": self.mesh_slug,
            "meshId": self.mesh_id,
            "createdAt": message.push.created_at,
        }


# --- peers -------------------------------------------------------------------------------


def _online(peer: Peer) -> str:
    if peer.online is None:
        return "?"
    return "yes" if peer.online else "no"


def peer_record(peer: Peer, own_keys: Iterable[str] = ()) -> dict[str, Any]:
    """One ``peers --json`` line."""
    return {
        "type": "peer",
        "pubkey": peer.pubkey,
        "memberPubkey": peer.member_pubkey,
        "displayName": peer.display_name,
        "status": peer.status,
        "summary": peer.summary,
        "groups": [g.name for g in peer.groups or ()],
        "sessionId": peer.session_id,
        "connectedAt": peer.connected_at,
        "online": peer.online,
        "self": peer.pubkey in set(own_keys),
        "peerType": peer.peer_type,
        "hostname": peer.hostname,
    }


def _cell(text: str, width: int) -> str:
    if len(text) > width:
        text = text[: width - 1] + "…"
    return text.ljust(width)


def peer_table(peers: Sequence[Peer], own_key: str, style: Style) -> list[str]:
    """The ``peers`` table: a header, then one line per peer, the caller marked ``(you)``.

    ONLINE is ``yes``, ``no`` (closed, still listed for its grace window) or
    ``?`` (the broker does not say, as the real broker does not).
    """
    rows = []
    for peer in peers:
        name = visible(peer.display_name or "-")
        if peer.pubkey == own_key:
            name += " (you)"
        groups = ",".join(visible(g.name) for g in peer.groups or ()) or "-"
        rows.append(
            (
                peer.pubkey[:16],
                name,
                visible(peer.status or "-"),
                _online(peer),
                groups,
                visible(peer.summary or ""),
                peer.online is False,
            )
        )
    name_width = min(32, max([len("NAME"), *(len(r[1]) for r in rows)]))
    group_width = min(24, max([len("GROUPS"), *(len(r[4]) for r in rows)]))
    header = (
        f"{'KEY':<16}  {_cell('NAME', name_width)}  {'STATUS':<8} {'ONLINE':<6}  "
        f"{_cell('GROUPS', group_width)}  SUMMARY"
    )
    lines = [style.bold(header.rstrip())]
    for key, name, status, online, groups, summary, gone in rows:
        line = (
            f"{key:<16}  {_cell(name, name_width)}  {status:<8} {online:<6}  "
            f"{_cell(groups, group_width)}  {summary}"
        ).rstrip()
        lines.append(style.dim(line) if gone else line)
    return lines
