"""``connect()``: join a mesh with a :class:`~meshproto_anyio.Client` that runs for a block.

The client's driver is made from the arguments (:func:`meshproto_ws.client_driver`
checks them), the client's tasks run in a task group of their own for as
long as the block does, and the client is closed on the way out, whatever
ends the block.
"""

from __future__ import annotations

import random
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import anyio

from meshproto import ClientOptions, Event, Group, Sealer, Signer
from meshproto_ws import DEFAULT_CLOSE_TIMEOUT, RecordSetting, client_driver

from ._client import Client

__all__ = ["connect"]


@asynccontextmanager
async def connect(
    url: str,
    *,
    mesh_id: str,
    member_id: str,
    signer: Signer,
    session_id: str | None = None,
    display_name: str | None = None,
    groups: Sequence[Group] | None = None,
    hostname: str | None = None,
    peer_type: str | None = None,
    session_pubkey: str | None = None,
    session_signer: Signer | None = None,
    role: str | None = None,
    sealer: Sealer | None = None,
    options: ClientOptions | None = None,
    ssl_context: ssl.SSLContext | None = None,
    rng: random.Random | None = None,
    max_message_bytes: int | None = None,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    on_event: Callable[[Event], None] | None = None,
    record: RecordSetting = None,
) -> AsyncIterator[Client]:
    """Join a mesh through the broker at ``url`` (``ws://`` or ``wss://``).

    Yields a :class:`Client` at once; it connects (and reconnects) in the
    background, and sends made before the handshake completes wait in the
    outbox. Use ``await client.wait_state(ConnectionState.OPEN)`` to wait for
    the broker's ``hello_ack``. On exit the client is closed (bounded by
    ``close_timeout``).

    ``signer`` holds the member key; with ``session_signer`` every socket
    opens with a ``session_hello`` (docs/protocol.md §3.2). ``session_id``
    defaults to a fresh random id, stable for this client's life. ``rng``
    (ids, nonces, backoff jitter) defaults to a
    :class:`~meshproto_ws.PooledSystemRandom` (the operating system's bytes).
    ``ssl_context`` is used for ``wss://`` (default:
    :func:`ssl.create_default_context`). ``max_message_bytes`` caps a
    received message (see :data:`meshproto_ws.CLIENT_MAX_MESSAGE_BYTES`).
    ``on_event`` is called with every core event, synchronously, from the
    client's tasks: it must not block; an exception it raises is logged and
    changes nothing. A ``MessageReceived`` event says a message is waiting
    in the inbox: it is handed over (and acknowledged) by :meth:`Client.messages`.

    ``record`` records this connection's inputs to a file (JSON lines, no
    secret keys, bodies only when asked) that ``python -m meshproto.replay``
    plays back: a path or a :class:`~meshproto_ws.Recording`; by default only
    when ``MESHPROTO_RECORD`` names a file, and never with ``False``.

    Raises :class:`~meshproto.LocalProtocolError` at once for a URL that is
    not ``ws://`` or ``wss://``.
    """
    driver = client_driver(
        url,
        mesh_id=mesh_id,
        member_id=member_id,
        signer=signer,
        session_id=session_id,
        display_name=display_name,
        groups=groups,
        hostname=hostname,
        peer_type=peer_type,
        session_pubkey=session_pubkey,
        session_signer=session_signer,
        role=role,
        sealer=sealer,
        options=options,
        rng=rng,
        max_message_bytes=max_message_bytes,
        close_timeout=close_timeout,
        record=record,
    )
    body_error: Exception | None = None
    async with anyio.create_task_group() as tasks:
        client = Client(driver, ssl_context=ssl_context, on_event=on_event)
        client._start(tasks)
        try:
            yield client
        except Exception as exc:
            # Re-raised below, outside the task group, so that the caller
            # sees its own exception rather than an exception group.
            body_error = exc
        finally:
            await client.aclose()
            tasks.cancel_scope.cancel()
    if body_error is not None:
        raise body_error
