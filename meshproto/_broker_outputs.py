"""What the reference broker asks its adapter to do, one socket at a time.

After every input the adapter takes ``Broker.drain_outputs()`` and carries the
outputs out in order: write a text frame, send a WebSocket ping, or close a
socket. After a :class:`CloseConnection` the broker has already forgotten the
socket; anything the adapter still reports for it is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BrokerOutput", "CloseConnection", "PingConnection", "SendText"]


@dataclass(frozen=True, slots=True)
class SendText:
    """Write ``text`` as one WebSocket text message on socket ``conn_id``."""

    conn_id: int
    text: str


@dataclass(frozen=True, slots=True)
class PingConnection:
    """Send a WebSocket ping (empty payload) on socket ``conn_id``."""

    conn_id: int


@dataclass(frozen=True, slots=True)
class CloseConnection:
    """Close socket ``conn_id`` with ``code`` and ``reason``; the broker has forgotten it."""

    conn_id: int
    code: int
    reason: str


BrokerOutput = SendText | PingConnection | CloseConnection
