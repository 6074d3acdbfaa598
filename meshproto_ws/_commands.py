"""What a driver asks its adapter to do with sockets.

The drivers (:mod:`meshproto_ws._client_driver`, :mod:`meshproto_ws._broker_driver`)
are sans-IO: they decide, and an adapter carries out these commands, in the
order they are drained. Each names its socket by the id the driver gave it.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshproto._quick import quick_init

from ._url import WsAddress

__all__ = ["CloseSocket", "OpenSocket", "SocketCommand", "WriteBytes"]


@dataclass(frozen=True, slots=True)
class OpenSocket:
    """Open a TCP connection (with TLS when ``address.secure``) and report back
    with ``socket_opened(socket_id)`` or ``socket_failed(socket_id)``."""

    socket_id: int
    address: WsAddress


@quick_init
@dataclass(frozen=True, slots=True)
class WriteBytes:
    """Write ``data`` on the socket, after everything written before.

    ``data`` is bytes, or, from a broker's fan-out, a :class:`memoryview` of
    bytes that other sockets are sent part of too: write it as it is (a
    socket's ``send`` takes either), and copy it only if it must be kept.
    """

    socket_id: int
    data: bytes | memoryview


@dataclass(frozen=True, slots=True)
class CloseSocket:
    """Flush what was written before, then close the socket (or stop opening it).

    The driver has forgotten the socket: nothing more read from it may be fed back.
    """

    socket_id: int


SocketCommand = OpenSocket | WriteBytes | CloseSocket
