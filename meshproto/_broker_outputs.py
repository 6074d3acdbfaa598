"""What the reference broker asks its adapter to do, one socket (or many) at a time.

After every input the adapter takes ``Broker.drain_outputs()`` and carries the
outputs out in order: write a text frame, send a WebSocket ping, or close a
socket. After a :class:`CloseConnection` the broker has already forgotten the
socket; anything the adapter still reports for it is ignored.

The same texts for many sockets (a broadcast, a batch of system pushes, a
stored message for several sessions) are one :class:`SendTextMany`, so that
an adapter can frame them once and hand the same bytes to every socket. A
batch that sockets heard from different points on is one :class:`SendTextTail`
per point, all sharing the batch's tuple of texts. A consumer that wants one
output per socket and text can :func:`expand_outputs`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ._quick import quick_init

__all__ = [
    "BrokerOutput",
    "CloseConnection",
    "PingConnection",
    "SendText",
    "SendTextMany",
    "SendTextTail",
    "expand_outputs",
    "without_connection",
]


@quick_init
@dataclass(frozen=True, slots=True)
class SendText:
    """Write ``text`` as one WebSocket text message on socket ``conn_id``."""

    conn_id: int
    text: str


@dataclass(frozen=True, slots=True)
class SendTextMany:
    """Write each of ``texts``, in order, as WebSocket text messages on each of ``conn_ids``.

    The same as a :class:`SendText` for each socket and text (socket by
    socket, each socket's texts in order) at this point of the outputs.
    """

    conn_ids: tuple[int, ...]
    texts: tuple[str, ...]


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


@dataclass(frozen=True, slots=True)
class SendTextTail:
    """Write each of ``texts[start:]``, in order, as WebSocket text messages on each of
    ``conn_ids``.

    A :class:`SendTextMany` of ``texts[start:]``, without that tuple: the
    outputs of one batch share ``texts`` (the same object), so that a batch
    for thousands of sockets that joined at different moments holds its
    texts once, and an adapter frames them once for all.
    """

    conn_ids: tuple[int, ...]
    texts: tuple[str, ...]
    start: int


BrokerOutput = SendText | SendTextMany | SendTextTail | PingConnection | CloseConnection


def without_connection(outputs: list[BrokerOutput], conn_id: int) -> list[BrokerOutput]:
    """``outputs`` with nothing left for socket ``conn_id`` (which has closed)."""
    kept: list[BrokerOutput] = []
    for output in outputs:
        if type(output) is SendTextMany or type(output) is SendTextTail:
            if conn_id in output.conn_ids:
                rest = tuple(c for c in output.conn_ids if c != conn_id)
                if rest:
                    kept.append(dataclasses.replace(output, conn_ids=rest))
                continue
        elif output.conn_id == conn_id:  # type: ignore[union-attr]
            continue
        kept.append(output)
    return kept


def expand_outputs(
    outputs: Iterable[BrokerOutput],
) -> Iterator[SendText | PingConnection | CloseConnection]:
    """The outputs with every :class:`SendTextMany` and :class:`SendTextTail` as one
    :class:`SendText` per socket and text."""
    for output in outputs:
        if isinstance(output, (SendTextMany, SendTextTail)):
            texts = (
                output.texts[output.start :] if isinstance(output, SendTextTail) else output.texts
            )
            for conn_id in output.conn_ids:
                for text in texts:
                    yield SendText(conn_id, text)
        else:
            yield output
