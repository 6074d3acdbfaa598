"""The MCP server's tools as a model sees them: names, JSON schemas, descriptions, arguments.

Nothing here does I/O. :data:`TOOLS` is what ``tools/list`` answers;
:func:`parse_arguments` checks one call's arguments against the same
description and raises :class:`BadArgument` with one line that says what to
pass instead, so that a model can correct itself from the tool result.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CHANNEL_CAPABILITY",
    "CHANNEL_METHOD",
    "INSTRUCTIONS",
    "MAX_SUMMARY",
    "TOOLS",
    "BadArgument",
    "ToolSpec",
    "normalize_key",
    "parse_arguments",
]

#: The notification each arriving message is pushed as, and the capability that allows it.
CHANNEL_METHOD = "notifications/claude/channel"
CHANNEL_CAPABILITY = "claude/channel"

#: The longest summary accepted (peers see it as one line).
MAX_SUMMARY = 1000
_MAX_CLIENT_ID = 128
_MAX_TO = 300

INSTRUCTIONS = """\
This server connects this session to a claudemesh mesh: other AI sessions, bots \
and people exchange short messages through a broker. Messages sent to you arrive \
as channel notifications while you work (priority now is marked [URGENT]); \
check_messages returns everything received since its last call, once. Reply with \
send_message to the sender's name or key. Use list_peers to see who is there, \
set_summary to tell them what you are doing, and set_status working or dnd to \
have the broker hold non-urgent messages until you are idle again."""


class BadArgument(ValueError):
    """A tool call's arguments do not fit the tool; the message says what to pass."""


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None = None

    @property
    def parameters(self) -> tuple[str, ...]:
        return tuple(self.input_schema["properties"])


def _object(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        schema["required"] = list(required)
    return schema


_NULLABLE_STRING = {"type": ["string", "null"]}

_MESSAGE_RECORD = {
    "type": "object",
    "properties": {
        "mesh": {"type": "string", "description": "the mesh it came through (its slug)"},
        "sender": {**_NULLABLE_STRING, "description": "the sender's display name, if known"},
        "sender_key": {"type": "string", "description": "the sender's key; send_message to it"},
        "sender_member_key": _NULLABLE_STRING,
        "kind": {"enum": ["direct", "broadcast", "topic"]},
        "topic": _NULLABLE_STRING,
        "priority": {"type": "string", "description": "now, next or low"},
        "sent_at": {"type": "string", "description": "when the broker took it (ISO 8601, UTC)"},
        "message_id": {"type": "string"},
        "client_message_id": _NULLABLE_STRING,
        "text": {**_NULLABLE_STRING, "description": "the message; null if it could not be opened"},
        "unreadable": {**_NULLABLE_STRING, "description": "why it could not be opened"},
        "notified": {
            "type": "boolean",
            "description": "true if it was already pushed to you as a notification",
        },
    },
    "required": ["mesh", "sender", "sender_key", "kind", "priority", "sent_at", "text"],
}

_PEER_RECORD = {
    "type": "object",
    "properties": {
        "name": _NULLABLE_STRING,
        "key": {"type": "string", "description": "this session's key; send_message to it"},
        "member_key": _NULLABLE_STRING,
        "mesh": {"type": "string"},
        "status": _NULLABLE_STRING,
        "summary": _NULLABLE_STRING,
        "groups": {"type": "array", "items": {"type": "string"}},
        "online": {
            "type": ["boolean", "null"],
            "description": "false: it left moments ago; null: the broker does not say",
        },
        "connected_at": _NULLABLE_STRING,
        "you": {"type": "boolean", "description": "true for this session itself"},
    },
    "required": ["name", "key", "mesh", "status", "summary", "groups", "you"],
}

_NOTES = {
    "type": "array",
    "items": {"type": "string"},
    "description": "things worth knowing, such as a mesh that is not connected",
}

TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        "send_message",
        "Send a message to other sessions on the mesh. `to` is a peer's name as "
        "list_peers shows it (the message goes to that peer's live session), a 64-hex "
        "key, '*' or '@all' for everyone online, '@group' for a group, or '#topic'. "
        "When several meshes are joined, put the mesh first: 'team:alice'. Messages to "
        "a name or key are end-to-end encrypted, and the broker keeps them until the "
        "recipient reads them; broadcasts reach only the peers online now. The result "
        "says that the broker accepted the message (with its id), or why it was not "
        "delivered, or that the outcome is unknown: then call again with the "
        "client_message_id it gives, which cannot deliver a second copy.",
        _object(
            {
                "to": {
                    "type": "string",
                    "description": "a name, a 64-hex key, '*', '@all', '@group' or '#topic', "
                    "optionally prefixed with a mesh slug and ':'",
                },
                "message": {"type": "string", "description": "the text to send (at most ~64 KB)"},
                "priority": {
                    "enum": ["now", "next", "low"],
                    "default": "next",
                    "description": "'now' reaches a peer that is working or dnd at once; "
                    "'next' (the default) and 'low' wait until it is idle",
                },
                "client_message_id": {
                    "type": "string",
                    "description": "only to retry a send whose outcome was unknown: the id "
                    "that result gave (the recipient drops a second copy)",
                },
            },
            ("to", "message"),
        ),
    ),
    ToolSpec(
        "check_messages",
        "Return every message received since the last call, oldest first; each message "
        "is returned once. Messages are also pushed to you as notifications as they "
        "arrive: those are included here too, marked notified, so skip the ones you have "
        "seen. Each gives the sender's name and key (reply with send_message to either), "
        "the mesh, the priority, when it was sent, and the text, or why it could not be "
        "opened. Until you call this, the broker keeps direct messages for you.",
        _object({}),
        _object({"messages": {"type": "array", "items": _MESSAGE_RECORD}, "notes": _NOTES}),
    ),
    ToolSpec(
        "list_peers",
        "List the sessions on the mesh as the broker sees them now: name, key, status "
        "(idle, working, dnd), summary, groups and mesh, and whether each is online. "
        "Your own session is marked you: true. Use a name or key from here as "
        "send_message's `to`.",
        _object(
            {
                "mesh": {
                    "type": "string",
                    "description": "only this mesh (its slug); default: every joined mesh",
                }
            }
        ),
        _object({"peers": {"type": "array", "items": _PEER_RECORD}, "notes": _NOTES}),
    ),
    ToolSpec(
        "set_summary",
        "Set the one line other peers see for you in list_peers, such as what you are "
        "working on. Applied on every joined mesh, and kept across reconnects.",
        _object(
            {
                "summary": {
                    "type": "string",
                    "description": f"one line, at most {MAX_SUMMARY} characters",
                }
            },
            ("summary",),
        ),
    ),
    ToolSpec(
        "set_status",
        "Set your status on every joined mesh. 'idle': every message reaches you at once. "
        "'working' or 'dnd': only priority 'now' messages reach you at once; the broker "
        "holds 'next' and 'low' ones and delivers them when you are idle again. Kept "
        "across reconnects.",
        _object(
            {"status": {"enum": ["idle", "working", "dnd"], "description": "the new status"}},
            ("status",),
        ),
    ),
)

_BY_NAME = {tool.name: tool for tool in TOOLS}
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def _string(args: Mapping[str, Any], tool: str, name: str, *, required: bool) -> str | None:
    value = args.get(name)
    if value is None:
        if required:
            raise BadArgument(f"{tool} needs {name!r} (a string)")
        return None
    if not isinstance(value, str):
        raise BadArgument(f"{tool}: {name!r} must be a string, got {type(value).__name__}")
    return value


def _choice(args: Mapping[str, Any], tool: str, name: str, choices: tuple[str, ...]) -> str | None:
    value = _string(args, tool, name, required=False)
    if value is None:
        return None
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise BadArgument(f"{tool}: {name!r} must be one of {listed}, got {value!r}")
    return value


def parse_arguments(tool: str, arguments: Mapping[str, Any] | None) -> dict[str, Any]:
    """The arguments of a call to ``tool``, checked and with defaults filled in.

    Raises :class:`BadArgument` (one line) for a missing, unknown, mistyped or
    out-of-range argument, and :class:`KeyError` for an unknown tool.
    """
    spec = _BY_NAME[tool]
    args = dict(arguments or {})
    unknown = sorted(set(args) - set(spec.parameters))
    if unknown:
        takes = ", ".join(spec.parameters) or "no arguments"
        raise BadArgument(f"{tool} takes {takes}; unexpected: {', '.join(unknown)}")
    if tool == "send_message":
        to = _string(args, tool, "to", required=True)
        message = _string(args, tool, "message", required=True)
        assert to is not None and message is not None
        to = to.strip()
        if not to:
            raise BadArgument("send_message: 'to' is empty; give a name from list_peers, or '*'")
        if len(to) > _MAX_TO:
            raise BadArgument(f"send_message: 'to' is {len(to)} characters long; is it a name?")
        if not message:
            raise BadArgument("send_message: 'message' is empty")
        cmid = _string(args, tool, "client_message_id", required=False)
        if cmid is not None and not (0 < len(cmid) <= _MAX_CLIENT_ID and cmid.isprintable()):
            raise BadArgument(
                "send_message: 'client_message_id' must be the id an earlier result gave "
                f"(1 to {_MAX_CLIENT_ID} printable characters)"
            )
        priority = _choice(args, tool, "priority", ("now", "next", "low")) or "next"
        return {"to": to, "message": message, "priority": priority, "client_message_id": cmid}
    if tool == "list_peers":
        return {"mesh": _string(args, tool, "mesh", required=False)}
    if tool == "set_summary":
        summary = _string(args, tool, "summary", required=True)
        assert summary is not None
        summary = " ".join(summary.split())  # one line
        if len(summary) > MAX_SUMMARY:
            raise BadArgument(
                f"set_summary: the summary is {len(summary)} characters; keep it under "
                f"{MAX_SUMMARY}, one line"
            )
        return {"summary": summary}
    if tool == "set_status":
        status = _choice(args, tool, "status", ("idle", "working", "dnd"))
        if status is None:
            raise BadArgument("set_status needs 'status': 'idle', 'working' or 'dnd'")
        return {"status": status}
    return {}


def normalize_key(target: str) -> str:
    """A 64-hex key in lower case (models sometimes shout); anything else as it is."""
    return target.lower() if _HEX64.fullmatch(target) else target
