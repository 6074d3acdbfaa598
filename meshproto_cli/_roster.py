"""Who is who: display names by key, from ``peers_list`` and the mesh's system pushes.

A direct message names its sender only by key (its session key, or its
member key). ``listen`` keeps a :class:`Roster`: filled from ``list_peers()``
once connected (and again after a reconnect, when it may have missed
pushes), and kept current by the ``peer_joined``, ``peer_returned`` and
``peer_left`` system pushes. A peer that left keeps its name, since its
messages may still arrive (held by the broker) after it has gone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from meshproto import Peer, SystemMessage

__all__ = ["Roster", "describe_system_message"]


def _text(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) and value else None


class Roster:
    """Display names of a mesh's peers, by session key and by member key."""

    def __init__(self) -> None:
        self._by_key: dict[str, str] = {}
        self._by_member: dict[str, str] = {}
        self._online: dict[str, bool] = {}
        #: Set when the roster may be out of date (a reconnect): refresh before use.
        self.stale = True
        #: When it was last asked to refresh (the caller's clock), or ``None``.
        self.refreshed_at: float | None = None

    def __len__(self) -> int:
        return len(self._by_key)

    def update(self, peers: Iterable[Peer]) -> None:
        """Learn (or relearn) every peer of a ``peers_list``."""
        for peer in peers:
            self._online[peer.pubkey] = peer.online is not False
            if not peer.display_name:
                continue
            self._by_key[peer.pubkey] = peer.display_name
            if peer.member_pubkey:
                self._by_member[peer.member_pubkey] = peer.display_name
        self.stale = False

    def note(self, message: SystemMessage) -> None:
        """Follow a system push: a peer joined, came back, or left."""
        data = message.data
        key = _text(data, "pubkey")
        if key is None:
            return
        name = _text(data, "displayName") or _text(data, "name")
        if name is not None:
            self._by_key[key] = name
        self._online[key] = message.event != "peer_left"

    def knows(self, key: str) -> bool:
        return key in self._by_key or key in self._by_member

    def name_of(self, key: str, member_key: str | None = None) -> str | None:
        """The display name for a sender's ``key`` (or its ``member_key``), if known."""
        name = self._by_key.get(key) or self._by_member.get(key)
        if name is None and member_key:
            name = self._by_member.get(member_key)
        return name


def describe_system_message(message: SystemMessage, roster: Roster) -> str:
    """``bob joined``, ``bob is back``, ``bob left``, or the event's name and data."""
    data = message.data
    key = _text(data, "pubkey")
    name = _text(data, "displayName") or _text(data, "name")
    if name is None and key is not None:
        name = roster.name_of(key) or key[:12]
    who = name or "a peer"
    if message.event == "peer_joined":
        return f"{who} joined"
    if message.event == "peer_returned":
        return f"{who} is back"
    if message.event == "peer_left":
        return f"{who} left"
    return f"{message.event or 'system event'}: {dict(data)}"
