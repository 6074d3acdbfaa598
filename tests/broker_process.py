"""A reference broker on SQLite, in a process of its own, for tests that kill it.

``python tests/broker_process.py DB PORT`` serves the mesh ``mesh-test``
(members ``sender`` and ``receiver``, as the test helpers sign for them, known
across restarts as a members file would make them; any other key that signs
its hello is admitted too), with no rate limit to speak of, on
127.0.0.1:PORT (0: any free port) with ``SqliteStore(DB)``, prints
``listening PORT`` on one line once it accepts connections, and serves until
killed.
"""

from __future__ import annotations

import random
import sys

import anyio
from anyio_helpers import BIND_ATTEMPTS, MESH, address_in_use, member

from meshproto import AcceptingVerifier, Broker, BrokerOptions, StaticRegistry
from meshproto_anyio import serve_broker
from meshproto_anyio.sqlite_store import SqliteStore


async def main(db: str, port: int) -> None:
    broker = Broker(
        StaticRegistry([member("sender"), member("receiver")], open_mesh=MESH),
        verifier=AcceptingVerifier(),
        store=SqliteStore(db),
        rng=random.SystemRandom(),
        options=BrokerOptions(rate_burst=100_000, rate_per_minute=6e6),
    )
    serving = False
    for attempt in range(BIND_ATTEMPTS):  # a restart binds its predecessor's port again
        try:
            async with anyio.create_task_group() as tasks:
                server = await tasks.start(
                    lambda task_status: serve_broker(broker, port=port, task_status=task_status)
                )
                serving = True
                print(f"listening {server.port}", flush=True)
            return
        except Exception as exc:
            last = attempt == BIND_ATTEMPTS - 1
            if serving or port == 0 or last or not address_in_use(exc):
                raise
        await anyio.sleep(0.05)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], int(sys.argv[2]))
