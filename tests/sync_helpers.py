"""Shared pieces of the blocking-client tests: a broker in a background thread, clients.

The broker side runs on anyio in one thread (an anyio blocking portal), the
blocking clients in the test's threads. Everything binds 127.0.0.1 port 0
(or a port the same test bound before) and every wait is bounded.
"""

from __future__ import annotations

import random
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from anyio_helpers import MESH, make_broker, running_broker_on, signer

from meshproto import Backoff, Broker, ClientOptions, Event
from meshproto_anyio import BrokerServer
from meshproto_sync import Client, connect

T = TypeVar("T")

#: Short timers so that no test waits through a real backoff or a real timeout.
FAST = ClientOptions(
    connect_timeout=2.0,
    hello_timeout=2.0,
    ack_timeout=3.0,
    request_timeout=3.0,
    ping_interval=0.2,
    liveness_timeout=1.5,
    backoff=Backoff(caps=(0.01, 0.02, 0.05)),
)


@dataclass(frozen=True, slots=True)
class ServedBroker:
    """A broker served on anyio in a background thread."""

    portal: BlockingPortal
    server: BrokerServer

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port

    def abort_connections(self) -> int:
        """Drop every socket without a close frame (run in the broker's thread)."""
        return self.portal.call(self.server.abort_connections)


@contextmanager
def served(portal: BlockingPortal, broker: Broker, **kwargs: Any) -> Iterator[ServedBroker]:
    """Serve ``broker`` from ``portal``'s thread until the block ends (then close gracefully)."""
    port = kwargs.pop("port", 0)
    with portal.wrap_async_context_manager(running_broker_on(broker, port, **kwargs)) as server:
        yield ServedBroker(portal, server)


@contextmanager
def in_portal(portal: BlockingPortal, manager: AbstractAsyncContextManager[T]) -> Iterator[T]:
    """Enter an async context manager (a fake broker, an anyio client) in ``portal``'s thread."""
    with portal.wrap_async_context_manager(manager) as value:
        yield value


def join(
    url: str,
    name: str,
    *,
    options: ClientOptions = FAST,
    events: list[Event] | None = None,
    close_timeout: float = 0.5,
    **kwargs: Any,
) -> Client:
    """A blocking client as member ``name`` (one session per call unless ``session_id``).

    ``events`` collects every core event (or pass your own ``on_event``).
    """
    if events is not None:
        kwargs["on_event"] = events.append
    return connect(
        url,
        mesh_id=MESH,
        member_id=f"member-{name}",
        signer=signer(name),
        display_name=name,
        options=options,
        rng=random.Random(zlib.crc32(name.encode())),
        close_timeout=close_timeout,
        **kwargs,
    )


def eventually(predicate: Callable[[], bool], *, timeout: float = 5.0) -> None:
    """Wait (polling every 10 ms, at most ``timeout`` seconds) until ``predicate()``."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.01) + 1):
        if predicate():
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    raise AssertionError("condition never became true")


def unused_port() -> int:
    """A loopback port that nothing listens on (bound on port 0, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def io_threads() -> list[threading.Thread]:
    """The blocking clients' I/O threads still alive."""
    return [t for t in threading.enumerate() if t.name == "meshproto-sync-io"]


def later(delay: float, action: Callable[[], object]) -> threading.Thread:
    """Run ``action`` in a new thread after ``delay`` seconds; join the returned thread."""

    def run() -> None:
        time.sleep(delay)
        action()

    thread = threading.Thread(target=run, name="test-later", daemon=True)
    thread.start()
    return thread


# --- fixtures (import them into a test module to use them) ------------------------------


@pytest.fixture
def portal() -> Iterator[BlockingPortal]:
    """An anyio event loop in a background thread, for brokers and anyio clients."""
    with start_blocking_portal() as running:
        yield running


@pytest.fixture
def broker(portal: BlockingPortal) -> Iterator[ServedBroker]:
    """The reference broker (open mesh, default options) in ``portal``'s thread."""
    with served(portal, make_broker()) as served_broker:
        yield served_broker


@pytest.fixture(autouse=True)
def no_io_thread_outlives_the_test() -> Iterator[None]:
    """Every client a test made is closed, and its I/O thread gone, when the test ends."""
    yield
    assert io_threads() == [], "a client's I/O thread outlived the test"
