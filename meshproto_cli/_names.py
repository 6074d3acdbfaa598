"""From what a person types to what the broker routes: target specs and display names.

A target is either a target spec (a 64-hex key, ``*``, ``@all``, ``@group``,
``#topic``: docs/protocol.md §4.1), used as it is, or a peer's display name,
resolved against a ``peers_list``:

* the caller's own session is never a candidate (a name never means "me");
* nor is a one-shot session of ``meshproto send`` or ``peers`` (session id
  ``<memberId>:oneshot…``, see :func:`is_one_shot_session`): it takes no
  messages, so a message sent to its key would wait for it forever;
* a presence known to be waiting out its grace window (``online: false``,
  which the reference broker says) is never a candidate: at the real broker
  a message to a session in its grace window waits, and one to a *member*
  key may be taken by such a session while the live one gets nothing (§4.6);
* the candidates must all belong to one member, else the name is ambiguous;
* of that member's sessions, the one that connected last is chosen, and the
  message goes to its session key, never to the member key. When the broker
  does not say which presences are live (the real broker), the choice is the
  most recent session, and :attr:`Resolution.note` says so.

Used by ``meshproto send`` and by the MCP server's ``send_message`` alike.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from meshproto import LocalProtocolError, Peer, check_target

__all__ = [
    "ONE_SHOT_SESSION",
    "AmbiguousName",
    "NameProblem",
    "NoSuchPeer",
    "Resolution",
    "is_one_shot_session",
    "is_target_spec",
    "resolve_target",
]

#: The session name (and prefix) of the sessions that ``meshproto send`` and
#: ``peers`` open for one command: ``oneshot``, ``oneshot-2`` …
ONE_SHOT_SESSION = "oneshot"
_ONE_SHOT_ID = re.compile(rf"(?:\A|:){ONE_SHOT_SESSION}(?:-[0-9a-f]+)?\Z")


class NameProblem(Exception):
    """A name that cannot be resolved; the message says what to do instead."""


class NoSuchPeer(NameProblem):
    """No live peer has that name."""


class AmbiguousName(NameProblem):
    """Peers of several members have that name."""


@dataclass(frozen=True, slots=True)
class Resolution:
    """Where a message to ``target`` goes."""

    target: str
    #: The peer a name resolved to, or ``None`` for a target spec.
    peer: Peer | None = None
    #: Something the user may want to know about the choice, or ``None``.
    note: str | None = None


def is_target_spec(text: str) -> bool:
    """Whether ``text`` is a target spec rather than a name."""
    try:
        check_target(text)
    except LocalProtocolError:
        return False
    return True


def is_one_shot_session(session_id: str | None) -> bool:
    """Whether ``session_id`` is one of ``meshproto send``'s or ``peers``' own sessions.

    Those take no messages (``ClientOptions(accept_messages=False)``): a name
    never resolves to one.
    """
    return session_id is not None and _ONE_SHOT_ID.search(session_id) is not None


def _member(peer: Peer) -> str:
    return peer.member_pubkey or peer.pubkey


def _short(key: str) -> str:
    return key[:12]


def resolve_target(target: str, peers: Sequence[Peer], *, own_keys: Iterable[str]) -> Resolution:
    """Resolve ``target`` (a spec or a display name) against ``peers``.

    ``own_keys`` are the caller's session (and member) keys: the caller's own
    presence is never chosen. Raises :class:`NoSuchPeer` or
    :class:`AmbiguousName` with a one-line message.
    """
    if is_target_spec(target):
        return Resolution(target)
    own = frozenset(own_keys)
    named = [
        p
        for p in peers
        if p.display_name == target
        and p.pubkey not in own
        and not is_one_shot_session(p.session_id)
    ]
    live = [p for p in named if p.online is not False]
    if not live:
        others = sorted(
            {
                p.display_name
                for p in peers
                if p.display_name
                and p.online is not False
                and p.pubkey not in own
                and not is_one_shot_session(p.session_id)
            }
        )
        if named:
            raise NoSuchPeer(
                f"{target!r} is not online now (its session left less than a grace window "
                "ago); try again when it is back, or send to its member key to have the "
                "broker keep the message"
            )
        if any(
            p.display_name == target and p.online is not False and p.pubkey not in own
            for p in peers
        ):
            raise NoSuchPeer(
                f"{target!r} has no session that takes messages online now (only "
                "'meshproto send' or 'peers'); send to its member key to have the broker "
                "keep the message"
            )
        known = ", ".join(repr(name) for name in others[:10]) or "nobody else"
        raise NoSuchPeer(
            f"{target!r} is neither a target (a 64-hex pubkey, '*', '@all', '@group', "
            f"'#topic') nor the name of a peer online now (online: {known})"
        )
    members = {_member(p) for p in live}
    if len(members) > 1:
        listed = "; ".join(
            f"{_short(p.pubkey)} (member {_short(_member(p))})"
            for p in sorted(live, key=_member)[:6]
        )
        raise AmbiguousName(
            f"{len(members)} members have peers called {target!r}: {listed}; use a pubkey"
        )
    chosen = max(live, key=lambda p: p.connected_at or "")
    note = None
    if len(live) > 1:
        which = (
            f"{target!r} has {len(live)} sessions online"
            if chosen.online
            else f"the broker does not say which of {target!r}'s {len(live)} sessions are live"
        )
        note = f"{which}; sent to the most recent ({_short(chosen.pubkey)})"
    return Resolution(chosen.pubkey, chosen, note)
