"""The pieces of ``meshproto mcp``'s mesh side: options, links, arrivals, replies.

And the words a send's outcome is reported in (:func:`send_failure`,
:func:`send_notes`), written once for :class:`~meshproto_cli._mcp_mesh.McpMesh`.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from mcp import types

from meshproto import (
    ClientOptions,
    Closed,
    ConnectionClosedError,
    LocalProtocolError,
    MessageReceived,
    Peer,
    SendError,
    SendOutcomeUnknownError,
    UnreadableMessage,
)
from meshproto_anyio import Client

from ._identity import Identity
from ._names import Resolution

__all__ = [
    "Arrival",
    "McpOptions",
    "MeshLink",
    "Reply",
    "describe_target",
    "send_failure",
    "send_notes",
]

Message = MessageReceived | UnreadableMessage

#: What a send may raise, each reported in words (``ValueError``: a key the sealer refuses).
_EXPECTED_SEND_ERRORS = (SendError, LocalProtocolError, ConnectionClosedError, ValueError)
#: Send outcomes remembered by ``client_message_id``, so a retry can learn one.
_SEND_RECORDS = 256


@dataclass(frozen=True, slots=True)
class McpOptions:
    """How long tool calls wait, and the options of each mesh's client."""

    #: How long a call waits for a mesh that has not connected (yet, or again).
    connect_wait: float = 5.0
    #: How long ``send_message`` waits for the broker's answer before saying
    #: the outcome is unknown (the send itself goes on).
    send_wait: float = 15.0
    #: How long ``list_peers`` waits for the broker.
    request_wait: float = 12.0
    #: How long a notification may wait for its sender's name to be looked up.
    name_wait: float = 2.0
    #: Options of every mesh client; the inbox holds what check_messages has not taken.
    client: ClientOptions = field(default_factory=lambda: ClientOptions(inbox_limit=1000))
    #: How long closing each client may take when the server stops.
    close_timeout: float = 2.0


@dataclass(frozen=True, slots=True)
class Reply:
    """What a tool call answers: a text for the model, and structured content."""

    text: str
    is_error: bool = False
    data: dict[str, Any] | None = None

    def result(self) -> types.CallToolResult:
        text = " ".join(self.text.split()) if self.is_error else self.text
        return types.CallToolResult(
            content=[types.TextContent(text=text)],
            structured_content=self.data,
            is_error=self.is_error,
        )


def _error(text: str) -> Reply:
    return Reply(text, is_error=True)


def _inert(text: str | None) -> str | None:
    """A peer's name with control and formatting characters made visible, never acted on."""
    if text is None:
        return None
    return "".join(
        f"\\u{ord(c):04x}" if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") else c
        for c in text
    )


def _short(key: str) -> str:
    return key[:12]


def _dump(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False, indent=2)


class MeshLink:
    """One joined mesh: its identity, its client, and what is known of its connection."""

    def __init__(self, identity: Identity, label: str, url: str) -> None:
        self.identity = identity
        self.label = label
        self.url = url
        self.client: Client | None = None
        self.cause: str | None = None
        self.retry_at: float | None = None
        self.closed: Closed | None = None
        self.ever_open = False
        #: Messages in the client's inbox, in its order (each an :class:`Arrival`).
        self.waiting: deque[Arrival] = deque()
        #: Display names and member keys by presence key, from peer lists and pushes.
        self.names: dict[str, str] = {}
        self.members: dict[str, str] = {}
        self.peers: dict[str, Peer] = {}
        self.learned_at = -math.inf

    @property
    def session_key(self) -> str:
        return self.identity.session.pubkey

    @property
    def own_keys(self) -> tuple[str, str]:
        return self.identity.session.pubkey, self.identity.member.pubkey

    def learn(self, peers: Sequence[Peer]) -> None:
        self.learned_at = anyio.current_time()
        for peer in peers:
            self.peers[peer.pubkey] = peer
            if peer.display_name:
                self.names[peer.pubkey] = peer.display_name
                if peer.member_pubkey:
                    self.names.setdefault(peer.member_pubkey, peer.display_name)
            if peer.member_pubkey:
                self.members[peer.pubkey] = peer.member_pubkey


@dataclass(eq=False)
class Arrival:
    """A message that reached a mesh client: waiting, notified, returned."""

    seq: int
    link: MeshLink
    message: Message
    notified: bool = False
    returned: bool = False

    @property
    def sender_key(self) -> str:
        return self.message.push.sender_pubkey

    @property
    def sender_name(self) -> str | None:
        push = self.message.push
        return push.sender_name or self.link.names.get(push.sender_pubkey)

    @property
    def kind(self) -> str:
        push = self.message.push
        if push.topic is not None:
            return "topic"
        # Only broadcast, group and topic pushes carry the sender's member key
        # (docs/protocol.md §4.2).
        return "broadcast" if push.sender_member_pubkey is not None else "direct"


@dataclass(eq=False)
class _SendRecord:
    """One ``client_message_id``'s latest send and its outcome, once settled."""

    link: MeshLink
    who: str
    done: anyio.Event = field(default_factory=anyio.Event)
    message_id: str | None = None
    error: Exception | None = None
    #: Whether a result has told the model how the send ended (after which
    #: a call under the same id is a retry, not a follow-up).
    reported: bool = False


_COULD_NOT_CONNECT = re.compile(r"^transport closed \(1006 could not connect to \S+: (.*)\)$")
_REFUSED_PREFIX = re.compile(r"^broker refused(?: the hello)?: ")
_RATE = re.compile(r"max ([0-9.]+) msg/min(?: \(burst (\d+)\))?")


def _humane_cause(cause: str) -> str:
    """The client's reason for reconnecting, in fewer words."""
    match = _COULD_NOT_CONNECT.match(cause)
    if match:
        detail = match.group(1)
        return f"could not connect: {detail[:1].lower()}{detail[1:]}"
    return cause


def describe_target(link: MeshLink, resolution: Resolution) -> str:
    """Whom a send goes to, in words (with a name where one is known)."""
    target = resolution.target
    if target in ("*", "@all"):
        return "everyone online"
    if target.startswith("@"):
        return f"group {target}"
    if target.startswith("#"):
        return f"topic {target}"
    name = resolution.peer.display_name if resolution.peer else link.names.get(target)
    if name:
        return f"{_inert(name)} (key {_short(target)})"
    return f"key {_short(target)}"


def send_notes(link: MeshLink, resolution: Resolution, priority: str) -> list[str]:
    """What a model should know about a send the broker accepted."""
    notes = []
    target = resolution.target
    if not re.fullmatch(r"[0-9a-f]{64}", target):
        notes.append("A broadcast reaches only the peers online now; it is not kept for later.")
    else:
        peer = resolution.peer or link.peers.get(target)
        if peer is not None and priority != "now" and peer.status in ("working", "dnd"):
            name = _inert(peer.display_name) or _short(target)
            notes.append(
                f"{name} is {peer.status}, so the broker holds this {priority!r} message "
                f"until {name} is idle; send with priority 'now' to reach it at once."
            )
    if resolution.note:
        notes.append(f"({resolution.note})")
    return notes


def send_failure(
    link: MeshLink, who: str, error: Exception | None, cmid: str, closed_words: str
) -> Reply:
    """A failed send in words: what happened, and what to do about it."""
    if isinstance(error, SendOutcomeUnknownError):
        return _error(
            f"outcome unknown: the message to {who} was sent but no answer settled it "
            f"({error.reason.code}: {error.reason.detail}); it may have been delivered. "
            "To retry without risking a second copy, call send_message again with "
            f"client_message_id={error.client_message_id!r}"
        )
    if isinstance(error, SendError):
        reason = error.reason
        detail = reason.detail or reason.code
        if reason.code == "rate_limited":
            match = _RATE.search(detail)
            if match:
                per_minute = float(match.group(1))
                burst = f" (bursts of {match.group(2)})" if match.group(2) else ""
                pause = max(1, math.ceil(60.0 / per_minute)) if per_minute > 0 else 60
                return _error(
                    f"rate limited: the broker allows {per_minute:g} messages a minute per "
                    f"member{burst}; wait about {pause} s, then send it again (not "
                    "delivered, so a new send makes no copy)"
                )
            return _error(
                f"rate limited ({detail}); wait a few seconds, then send it again (not delivered)"
            )
        if reason.code == "no_peer":
            return _error(
                f"not delivered: no peer online for {who} in mesh {link.label} "
                f"(broker: {detail}); see list_peers for who is there"
            )
        if reason.code == "payload_too_large":
            return _error(
                f"not delivered: the message is too large ({detail}); shorten it or send it "
                "in several parts"
            )
        if reason.code == "store_full":
            return _error(f"not delivered: {detail}")
        if reason.code == "queue_full":
            return _error(
                f"not delivered: too many sends are waiting ({detail}); wait for their "
                "results, then try again"
            )
        return _error(f"not delivered: {reason}")
    if isinstance(error, LocalProtocolError):
        text = str(error)
        if "bytes" in text and ("at most" in text or "accepts" in text):
            return _error(
                f"not sent: the message is too large ({text}); shorten it or send it in "
                "several parts"
            )
        return _error(f"not sent: {text}")
    if isinstance(error, ConnectionClosedError):
        return _error(f"not delivered: {closed_words}")
    if isinstance(error, ValueError):  # the sealer: a key that is no ed25519 key
        return _error(f"not sent: {error}; use a key as list_peers shows it")
    return _error(
        f"not sent: unexpected error ({type(error).__name__}: {error}); the server goes on, "
        f"try again (client_message_id={cmid!r})"
    )
