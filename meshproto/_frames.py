"""Every message of the wire contract (docs/protocol.md §3-4) as a frozen dataclass.

Python names are snake_case; each field records its wire name and its wire
kind in the dataclass field metadata, which is the single source the codec
(:mod:`meshproto._codec`) reads to encode and decode. A field without a default
is required on the wire; a field whose default is ``None`` is optional and is
left out of the encoded frame when it is ``None``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ._quick import quick_init

__all__ = [
    "Ack",
    "ClientAck",
    "ErrorFrame",
    "Frame",
    "Group",
    "Hello",
    "HelloAck",
    "ListPeers",
    "ParentAttestation",
    "Peer",
    "PeersList",
    "Push",
    "Send",
    "SessionHello",
    "SetStatus",
    "SetSummary",
    "UnknownFrame",
]


def _w(wire: str, kind: str, default: Any = ...) -> Any:
    """A dataclass field that knows its wire name and kind."""
    meta = {"wire": wire, "kind": kind}
    if default is ...:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


# Kinds understood by the codec:
#   str, int, bool, obj (a JSON object kept as a dict), groups (list of Group),
#   peers (list of Peer), attestation (ParentAttestation), str? (str or null).


@dataclass(frozen=True, slots=True)
class Group:
    """A group membership, ``{name, role?}``."""

    name: str = _w("name", "str")
    role: str | None = _w("role", "str", None)


@dataclass(frozen=True, slots=True)
class Hello:
    """Member hello (client → broker), docs/protocol.md §3.1."""

    TYPE: ClassVar[str] = "hello"
    mesh_id: str = _w("meshId", "str")
    member_id: str = _w("memberId", "str")
    pubkey: str = _w("pubkey", "str")
    session_id: str | None = _w("sessionId", "str", None)
    pid: int | None = _w("pid", "int", None)
    cwd: str | None = _w("cwd", "str", None)
    timestamp: int | None = _w("timestamp", "int", None)
    signature: str | None = _w("signature", "str", None)
    session_pubkey: str | None = _w("sessionPubkey", "str", None)
    display_name: str | None = _w("displayName", "str", None)
    hostname: str | None = _w("hostname", "str", None)
    peer_type: str | None = _w("peerType", "str", None)
    groups: tuple[Group, ...] | None = _w("groups", "groups", None)


@dataclass(frozen=True, slots=True)
class ParentAttestation:
    """A member's signed statement that a session key belongs to it (§3.2)."""

    session_pubkey: str = _w("sessionPubkey", "str")
    parent_member_pubkey: str = _w("parentMemberPubkey", "str")
    expires_at: int = _w("expiresAt", "int")
    signature: str = _w("signature", "str")


@dataclass(frozen=True, slots=True)
class SessionHello:
    """Session hello (client → broker), docs/protocol.md §3.2."""

    TYPE: ClassVar[str] = "session_hello"
    mesh_id: str = _w("meshId", "str")
    parent_member_id: str = _w("parentMemberId", "str")
    parent_member_pubkey: str = _w("parentMemberPubkey", "str")
    session_pubkey: str = _w("sessionPubkey", "str")
    parent_attestation: ParentAttestation = _w("parentAttestation", "attestation")
    session_id: str | None = _w("sessionId", "str", None)
    pid: int | None = _w("pid", "int", None)
    cwd: str | None = _w("cwd", "str", None)
    timestamp: int | None = _w("timestamp", "int", None)
    signature: str | None = _w("signature", "str", None)
    display_name: str | None = _w("displayName", "str", None)
    hostname: str | None = _w("hostname", "str", None)
    peer_type: str | None = _w("peerType", "str", None)
    groups: tuple[Group, ...] | None = _w("groups", "groups", None)
    role: str | None = _w("role", "str", None)


@dataclass(frozen=True, slots=True)
class HelloAck:
    """The broker accepted the hello (§3.3). Fields we do not use are ignored."""

    TYPE: ClassVar[str] = "hello_ack"
    presence_id: str | None = _w("presenceId", "str", None)
    member_display_name: str | None = _w("memberDisplayName", "str", None)
    restored: bool | None = _w("restored", "bool", None)
    member_profile: Mapping[str, Any] | None = _w("memberProfile", "obj", None)
    mesh_policy: Mapping[str, Any] | None = _w("meshPolicy", "obj", None)


@dataclass(frozen=True, slots=True)
class Send:
    """A message to route (client → broker), §4.1."""

    TYPE: ClassVar[str] = "send"
    id: str = _w("id", "str")
    target_spec: str = _w("targetSpec", "str")
    priority: str = _w("priority", "str")
    nonce: str = _w("nonce", "str")
    ciphertext: str = _w("ciphertext", "str")
    client_message_id: str | None = _w("client_message_id", "str", None)


@dataclass(frozen=True, slots=True)
class Ack:
    """The broker's answer to a send (§4.1); ``queued`` false means rejected."""

    TYPE: ClassVar[str] = "ack"
    id: str = _w("id", "str")
    message_id: str = _w("messageId", "str")
    queued: bool = _w("queued", "bool")
    error: str | None = _w("error", "str", None)


@dataclass(frozen=True, slots=True)
class ErrorFrame:
    """``error{code, message, id?, _reqId?}``: a refusal, of a hello or a request."""

    TYPE: ClassVar[str] = "error"
    code: str = _w("code", "str")
    message: str = _w("message", "str", "")
    id: str | None = _w("id", "str", None)
    req_id: str | None = _w("_reqId", "str", None)


@dataclass(frozen=True, slots=True)
class Push:
    """A message delivered by the broker (§4.2): direct, broadcast or system."""

    TYPE: ClassVar[str] = "push"
    message_id: str = _w("messageId", "str")
    mesh_id: str = _w("meshId", "str")
    sender_pubkey: str = _w("senderPubkey", "str")
    priority: str = _w("priority", "str")
    nonce: str = _w("nonce", "str")
    ciphertext: str = _w("ciphertext", "str")
    created_at: str = _w("createdAt", "str")
    client_message_id: str | None = _w("client_message_id", "str", None)
    request_fingerprint: str | None = _w("request_fingerprint", "str", None)
    sender_member_pubkey: str | None = _w("senderMemberPubkey", "str", None)
    sender_member_id: str | None = _w("senderMemberId", "str", None)
    sender_name: str | None = _w("senderName", "str", None)
    topic: str | None = _w("topic", "str", None)
    reply_to_id: str | None = _w("replyToId", "str", None)
    subtype: str | None = _w("subtype", "str", None)
    event: str | None = _w("event", "str", None)
    event_data: Mapping[str, Any] | None = _w("eventData", "obj", None)

    @property
    def dedupe_key(self) -> str:
        """The key receivers deduplicate on: ``client_message_id``, else ``messageId``."""
        return self.client_message_id or self.message_id


@quick_init
@dataclass(frozen=True, slots=True)
class ClientAck:
    """The client has taken a push (§4.3)."""

    TYPE: ClassVar[str] = "client_ack"
    client_message_id: str | None = _w("clientMessageId", "str", None)
    broker_message_id: str | None = _w("brokerMessageId", "str", None)


@dataclass(frozen=True, slots=True)
class SetStatus:
    """Presence status, ``idle``, ``working`` or ``dnd`` (§4.4). No reply."""

    TYPE: ClassVar[str] = "set_status"
    status: str = _w("status", "str")


@dataclass(frozen=True, slots=True)
class SetSummary:
    """A one-line summary of what this peer is doing. No reply."""

    TYPE: ClassVar[str] = "set_summary"
    summary: str = _w("summary", "str")


@dataclass(frozen=True, slots=True)
class ListPeers:
    """Ask for the peers of the mesh (§4.4)."""

    TYPE: ClassVar[str] = "list_peers"
    req_id: str | None = _w("_reqId", "str", None)


@dataclass(frozen=True, slots=True)
class Peer:
    """One entry of ``peers_list``.

    ``online`` is the reference broker's (docs/protocol.md §4.4): whether the
    presence has a live socket now, as opposed to waiting out its grace
    window. The real broker does not send it (``None``).
    """

    pubkey: str = _w("pubkey", "str")
    member_pubkey: str | None = _w("memberPubkey", "str", None)
    display_name: str | None = _w("displayName", "str", None)
    status: str | None = _w("status", "str", None)
    summary: str | None = _w("summary", "str", None)
    groups: tuple[Group, ...] | None = _w("groups", "groups", None)
    session_id: str | None = _w("sessionId", "str", None)
    connected_at: str | None = _w("connectedAt", "str", None)
    cwd: str | None = _w("cwd", "str", None)
    peer_role: str | None = _w("peerRole", "str", None)
    visible: bool | None = _w("visible", "bool", None)
    hostname: str | None = _w("hostname", "str", None)
    peer_type: str | None = _w("peerType", "str", None)
    online: bool | None = _w("online", "bool", None)


@dataclass(frozen=True, slots=True)
class PeersList:
    """The answer to ``list_peers``."""

    TYPE: ClassVar[str] = "peers_list"
    peers: tuple[Peer, ...] = _w("peers", "peers")
    req_id: str | None = _w("_reqId", "str", None)


@dataclass(frozen=True, slots=True)
class UnknownFrame:
    """A frame whose ``type`` this version does not know; kept whole, never an error."""

    type: str
    fields: Mapping[str, Any]


Frame = (
    Hello
    | SessionHello
    | HelloAck
    | Send
    | Ack
    | ErrorFrame
    | Push
    | ClientAck
    | SetStatus
    | SetSummary
    | ListPeers
    | PeersList
    | UnknownFrame
)
