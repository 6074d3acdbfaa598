"""What the reference broker asks its adapter to do, one socket (or many) at a time.

After every input the adapter takes ``Broker.drain_outputs()`` and carries the
outputs out in order: write a text frame, send a WebSocket ping, or close a
socket. After a :class:`CloseConnection` the broker has already forgotten the
socket; anything the adapter still reports for it is ignored.

One text for many sockets (a broadcast, a system push, a stored message for
several sessions) is one :class:`SendTextMany`, so that an adapter can frame
it once and hand the same bytes to every socket, and a consumer that wants
one output per socket can :func:`expand_outputs`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

__all__ = [
    "BrokerOutput",
    "CloseConnection",
    "PingConnection",
    "SendText",
    "SendTextMany",
    "expand_outputs",
    "without_connection",
]


@dataclass(frozen=True, slots=True)
class SendText:
    """Write ``text`` as one WebSocket text message on socket ``conn_id``."""

    conn_id: int
    text: str


@dataclass(frozen=True, slots=True)
class SendTextMany:
    """Write the same ``text`` as one WebSocket text message on each of ``conn_ids``.

    The same as a :class:`SendText` for each socket, in that order, at this
    point of the outputs.
    """

    conn_ids: tuple[int, ...]
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


BrokerOutput = SendText | SendTextMany | PingConnection | CloseConnection


def without_connection(outputs: list[BrokerOutput], conn_id: int) -> list[BrokerOutput]:
    """``outputs`` with nothing left for socket ``conn_id`` (which has closed)."""
    kept: list[BrokerOutput] = []
    for output in outputs:
        if type(output) is SendTextMany:
            if conn_id in output.conn_ids:
                rest = tuple(c for c in output.conn_ids if c != conn_id)
                if rest:
                    kept.append(SendTextMany(rest, output.text))
                continue
        elif output.conn_id == conn_id:  # type: ignore[union-attr]
            continue
        kept.append(output)
    return kept


def expand_outputs(
    outputs: Iterable[BrokerOutput],
) -> Iterator[SendText | PingConnection | CloseConnection]:
    """The outputs with every :class:`SendTextMany` as one :class:`SendText` per socket."""
    for output in outputs:
        if type(output) is SendTextMany:
            text = output.text
            for conn_id in output.conn_ids:
                yield SendText(conn_id, text)
        else:
            yield output  # type: ignore[misc]
