"""A broker that accepts the hello and drops the link at once: the reconnect delays grow.

Once, every ``hello_ack`` reset the backoff, and such a broker saw about 32
reconnects in 12 seconds. Now the attempt count starts again only after a
link has proved itself (``ClientOptions.proven_after``, or an acknowledged
send). The backoff caps here are milliseconds, so nothing sleeps for long.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from anyio.from_thread import start_blocking_portal
from anyio_helpers import FAST, WsPeer, fake_broker, join
from sync_helpers import eventually, in_portal, no_io_thread_outlives_the_test
from sync_helpers import join as sync_join

from meshproto import Backoff, ClientOptions, Event, ReconnectScheduled

__all__ = ["no_io_thread_outlives_the_test"]  # a fixture used here

CAPS = (0.01, 0.02, 0.04, 0.08, 0.16)
FLAPPING = ClientOptions(
    connect_timeout=FAST.connect_timeout,
    hello_timeout=FAST.hello_timeout,
    backoff=Backoff(caps=CAPS, jitter=False),
)
RECONNECTS = 6


async def _accept_and_drop(peer: WsPeer) -> None:
    hello = await peer.next_frame()
    await peer.send_json({"type": "hello_ack", "presenceId": f"p-{hello['sessionId']}"})
    await peer.aclose()  # and gone, at once


def _delays(events: list[Event]) -> list[float]:
    return [e.delay for e in events if isinstance(e, ReconnectScheduled)]


def _assert_growing(delays: list[float]) -> None:
    assert len(delays) >= RECONNECTS
    assert delays[:RECONNECTS] == [*CAPS, CAPS[-1]][:RECONNECTS]


@pytest.mark.anyio
async def test_anyio_client_backs_off_further_from_a_broker_that_drops_it_after_every_hello() -> (
    None
):
    events: list[Event] = []
    async with (
        fake_broker(_accept_and_drop) as (url, accepted),
        join(url, "flapper", options=FLAPPING, events=events),
    ):
        with anyio.fail_after(10):
            while len(_delays(events)) < RECONNECTS:
                await anyio.sleep(0.01)
        assert len(accepted) >= RECONNECTS
    _assert_growing(_delays(events))


def test_blocking_client_backs_off_further_from_a_broker_that_drops_it_after_every_hello() -> None:
    events: list[Event] = []
    kwargs: dict[str, Any] = {"options": FLAPPING, "events": events}
    with (
        start_blocking_portal() as portal,
        in_portal(portal, fake_broker(_accept_and_drop)) as (url, _),
        sync_join(url, "flapper", **kwargs),
    ):
        eventually(lambda: len(_delays(events)) >= RECONNECTS, timeout=10)
    _assert_growing(_delays(events))
