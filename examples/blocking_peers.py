"""Two peers on blocking sockets: direct messages, pipelined sends, a reader thread, a reply.

Run it as is, and it serves a reference broker of its own on a free loopback
port (from a background thread: the broker runs on anyio, the clients do not).
Or give it the URL of a running broker whose open mesh is ``local``, which is
what ``meshproto broker`` serves by default:

    meshproto broker &
    python examples/blocking_peers.py ws://127.0.0.1:7900/ws

Every wait is bounded; Ctrl-C stops it cleanly (exit status 130).
"""

from __future__ import annotations

import random
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import wait
from contextlib import ExitStack, contextmanager

from anyio.from_thread import start_blocking_portal

from meshproto import Broker, ConnectionState, MessageReceived, SendError, StaticRegistry
from meshproto_anyio import running_broker
from meshproto_crypto import BoxSealer, Ed25519Signer, Ed25519Verifier, KeyPair
from meshproto_sync import Client, connect

MESH = "local"  # the open mesh of `meshproto broker` (and of the broker started here)
PIPELINED = 5
TIMEOUT = 10.0  # seconds; the most any single step may take


@contextmanager
def reference_broker() -> Iterator[str]:
    """Serve a reference broker on 127.0.0.1 (a free port) until the block ends; yield its URL."""
    broker = Broker(
        StaticRegistry(open_mesh=MESH),  # admits any key that signs its hello into MESH
        verifier=Ed25519Verifier(),
        rng=random.SystemRandom(),
    )
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(running_broker(broker, port=0)) as server,
    ):
        yield server.url


def join(url: str, name: str, keys: KeyPair) -> Client:
    """A started blocking client for member ``name`` (close it, or use it in ``with``)."""
    return connect(
        url,
        mesh_id=MESH,
        member_id=name,
        display_name=name,
        signer=Ed25519Signer(keys),  # signs every hello with the member key
        sealer=BoxSealer(keys),  # seals direct messages end to end, opens the ones we get
    )


def answer(bob: Client, expected: int, received: list[str], done: threading.Event) -> None:
    """Bob's reader thread: take messages in order; reply to the first one."""
    for message in bob.messages():  # ends when bob is closed
        # A MessageReceived, or an UnreadableMessage whose body could not be opened.
        received.append(message.text if isinstance(message, MessageReceived) else "<unreadable>")
        if len(received) == 1:
            bob.send(message.sender_pubkey, "hi alice, from bob", timeout=TIMEOUT)
        if len(received) == expected:
            done.set()


def main(argv: Sequence[str]) -> int:
    alice_keys, bob_keys = KeyPair.generate(), KeyPair.generate()
    with ExitStack() as stack:
        if argv:
            url = argv[0]
            print(f"broker: {url}")
        else:
            url = stack.enter_context(reference_broker())
            print(f"broker: {url} (started here)")
        alice = stack.enter_context(join(url, "alice", alice_keys))
        bob = stack.enter_context(join(url, "bob", bob_keys))
        for client in (alice, bob):
            client.wait_state(ConnectionState.OPEN, timeout=TIMEOUT)
        print("alice and bob are open")

        received: list[str] = []
        all_in = threading.Event()
        reader = threading.Thread(
            target=answer, args=(bob, 1 + PIPELINED, received, all_in), daemon=True
        )
        reader.start()

        # One send, waiting for the broker's ack.
        message_id = alice.send(bob_keys.pubkey, "hello, bob", "now", timeout=TIMEOUT)
        print(f"alice -> bob: acked as {message_id}")

        # Pipelined: start several sends at once, then wait for all their acks.
        futures = [
            alice.send_nowait(bob_keys.pubkey, f"message {i}", "now") for i in range(PIPELINED)
        ]
        acked, pending = wait(futures, timeout=TIMEOUT)
        ids = [f.result() for f in acked]  # result() raises SendError for a failed send
        print(f"alice -> bob: {len(ids)} more sent without waiting, {len(pending)} not acked")

        # A send that fails: nobody holds this key.
        try:
            alice.send(KeyPair.generate().pubkey, "anyone there?", timeout=TIMEOUT)
        except SendError as exc:
            print(f"alice -> nobody: refused, {exc.reason.code} (retryable: {exc.retryable})")

        # Bob's reply, taken with a bounded receive().
        reply = alice.receive(timeout=TIMEOUT)
        if isinstance(reply, MessageReceived):
            print(f"alice received: {reply.text}")

        if not all_in.wait(TIMEOUT):
            print(f"bob received only {len(received)} messages in time")
            return 1
        for text in received:
            print(f"bob received: {text}")

        names = sorted(p.display_name or p.pubkey[:8] for p in bob.list_peers(timeout=TIMEOUT))
        print(f"peers: {', '.join(names)}")
        print(f"alice's counters: {alice.counters}")
    # Leaving the block closed both clients (ending bob's reader) and the broker.
    reader.join(TIMEOUT)
    print("done" if not reader.is_alive() else "bob's reader did not end")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:  # Ctrl-C: the with blocks above have closed everything
        print("interrupted", file=sys.stderr)
        sys.exit(130)
