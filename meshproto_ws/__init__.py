"""meshproto_ws: the WebSocket glue shared by meshproto's I/O adapters.

Sans-IO, like the core: it imports wsproto, but no event loop, no socket
module and no threads. Its parts:

* :class:`WsConnection`: one WebSocket (client or server side) over wsproto,
  with the duties wsproto leaves to its user (pings, close echo, fragments,
  a message size cap, EOF) done once.
* :class:`ClientDriver`: a :class:`~meshproto.ClientConnection` over
  WebSockets; turns the core's actions into socket commands and socket
  bytes into core inputs, in order; :func:`client_driver` builds one from
  the parameters of an adapter's ``connect()``.
* :class:`Outcomes`: what a client's callers wait for (the outcome of each
  send and request, system messages, why it closed), with the waiting left
  to the adapter.
* :class:`BrokerDriver`: the reference :class:`~meshproto.Broker` over many
  WebSocket sockets; :class:`CommitGate` holds its commands back until the
  store changes they follow are durable (group commit).
* :class:`Recording`: what ``connect(record=...)`` takes to record a
  client connection to a file for ``python -m meshproto.replay``.

An adapter (``meshproto_anyio``, a blocking-socket one) opens, writes and
closes sockets as the :data:`SocketCommand` values say, feeds back what it
reads, and calls ``handle_timer`` at ``next_deadline()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

try:
    import wsproto as _wsproto  # noqa: F401
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess
    raise ImportError(
        "meshproto_ws needs wsproto, which comes with an adapter extra: "
        "pip install 'meshproto[anyio]' (or 'meshproto[sync]')"
    ) from _exc

from meshproto._lazy import lazy_names

from ._client_driver import DEFAULT_CLOSE_TIMEOUT, ClientDriver, client_driver
from ._commands import CloseSocket, OpenSocket, SocketCommand, WriteBytes
from ._connection import (
    CLIENT_MAX_MESSAGE_BYTES,
    CLOSE_MESSAGE_TOO_BIG,
    SERVER_MAX_MESSAGE_BYTES,
    BinaryReceived,
    Closed,
    Opened,
    PingReceived,
    PongReceived,
    Role,
    TextReceived,
    WsConnection,
    WsEvent,
    WsState,
)
from ._entropy import PooledSystemRandom
from ._outcomes import Outcomes, Waiter, Wake
from ._record import RECORD_BODIES_ENV, RECORD_ENV, Recording, RecordSetting
from ._url import DEFAULT_PATH, WsAddress, parse_ws_url

if TYPE_CHECKING:  # loaded on first use, below; spelled out for type checkers
    from ._broker_driver import (
        CLOSE_INTERNAL_ERROR,
        DEFAULT_HANDSHAKE_TIMEOUT,
        TIMER_RETRY,
        BrokerDriver,
        BrokerMachine,
    )
    from ._commit_gate import CommitGate

#: The broker side, loaded on first use (PEP 562): a client does not import
#: the reference broker through it. Name -> its module.
_LAZY = {
    **dict.fromkeys(
        (
            "CLOSE_INTERNAL_ERROR",
            "DEFAULT_HANDSHAKE_TIMEOUT",
            "TIMER_RETRY",
            "BrokerDriver",
            "BrokerMachine",
        ),
        "_broker_driver",
    ),
    "CommitGate": "_commit_gate",
}

__all__ = [
    "CLIENT_MAX_MESSAGE_BYTES",
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_MESSAGE_TOO_BIG",
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_PATH",
    "RECORD_BODIES_ENV",
    "RECORD_ENV",
    "SERVER_MAX_MESSAGE_BYTES",
    "TIMER_RETRY",
    "BinaryReceived",
    "BrokerDriver",
    "BrokerMachine",
    "ClientDriver",
    "CloseSocket",
    "CommitGate",
    "Closed",
    "OpenSocket",
    "Opened",
    "Outcomes",
    "PingReceived",
    "PooledSystemRandom",
    "PongReceived",
    "RecordSetting",
    "Recording",
    "Role",
    "SocketCommand",
    "TextReceived",
    "Waiter",
    "Wake",
    "WriteBytes",
    "WsAddress",
    "WsConnection",
    "WsEvent",
    "WsState",
    "client_driver",
    "parse_ws_url",
]


__getattr__, __dir__ = lazy_names(globals(), _LAZY)
