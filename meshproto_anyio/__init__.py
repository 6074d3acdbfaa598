"""meshproto_anyio: the client and the reference broker on anyio (asyncio or trio).

* :func:`connect` joins a mesh and yields a :class:`Client`
  (``await send()``, ``messages()``, ``list_peers()``, ``wait_state()`` …);
* :func:`serve_broker` / :func:`running_broker` serve the reference
  :class:`~meshproto.Broker` over WebSockets.

Both are thin: the decisions are the core's (:mod:`meshproto`), the
WebSocket duties and the order of operations are the shared glue's
(:mod:`meshproto_ws`); this package owns sockets, TLS, tasks and the clock.
Needs the ``anyio`` extra: ``pip install 'meshproto[anyio]'``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

try:
    import anyio as _anyio  # noqa: F401
    import wsproto as _wsproto  # noqa: F401
except ImportError as _exc:
    raise ImportError(
        f"meshproto_anyio needs the 'anyio' extra ({_exc.name} is missing): "
        "pip install 'meshproto[anyio]'"
    ) from _exc

from meshproto._lazy import lazy_names

from ._client import SYSTEM_MESSAGE_LIMIT, Client
from ._connect import connect

if TYPE_CHECKING:  # loaded on first use, below; spelled out for type checkers
    from ._server import (
        BrokerAddress,
        BrokerServer,
        ServerOptions,
        running_broker,
        serve_broker,
    )

#: The server side, loaded on first use (PEP 562): a client does not import
#: the reference broker through it.
_SERVER_NAMES = frozenset(
    ("BrokerAddress", "BrokerServer", "ServerOptions", "running_broker", "serve_broker")
)

__all__ = [
    "SYSTEM_MESSAGE_LIMIT",
    "BrokerAddress",
    "BrokerServer",
    "Client",
    "ServerOptions",
    "connect",
    "running_broker",
    "serve_broker",
]


__getattr__, __dir__ = lazy_names(globals(), dict.fromkeys(_SERVER_NAMES, "_server"))
