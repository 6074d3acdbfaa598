"""meshproto_sync: the client on blocking sockets and one background I/O thread.

* :func:`connect` joins a mesh and returns a started :class:`Client`
  (``with connect(...) as client:``): ``send()``, ``receive()``,
  ``messages()``, ``list_peers()``, ``wait_state()`` … all blocking, all
  with a ``timeout``, callable from any thread.

Thin, like the anyio adapter: the decisions are the core's
(:mod:`meshproto`), the WebSocket duties and the order of operations the
shared glue's (:mod:`meshproto_ws`); this package owns the sockets, TLS,
the I/O thread and the clock. Needs the ``sync`` extra:
``pip install 'meshproto[sync]'``.
"""

from __future__ import annotations

try:
    import wsproto as _wsproto  # noqa: F401
except ImportError as _exc:
    raise ImportError(
        f"meshproto_sync needs the 'sync' extra ({_exc.name} is missing): "
        "pip install 'meshproto[sync]'"
    ) from _exc

from ._client import SYSTEM_MESSAGE_LIMIT, Client, Message, connect
from ._io import MAX_SEND_BUFFER

__all__ = ["MAX_SEND_BUFFER", "SYSTEM_MESSAGE_LIMIT", "Client", "Message", "connect"]
