"""The anyio and the blocking clients, signed and encrypted, through a verifying broker."""

from __future__ import annotations

import base64
import random
from collections.abc import Iterator

import pytest
from anyio.from_thread import BlockingPortal
from sync_helpers import FAST, in_portal, no_io_thread_outlives_the_test, portal, served

from meshproto import Broker, ConnectionState, Member, MessageReceived, StaticRegistry
from meshproto.testing import FakeSigner
from meshproto_anyio import Client as AnyioClient
from meshproto_anyio import connect as anyio_connect
from meshproto_crypto import BoxSealer, Ed25519Signer, Ed25519Verifier, KeyPair
from meshproto_sync import connect as sync_connect

__all__ = ["no_io_thread_outlives_the_test", "portal"]  # fixtures

MESH = "signed-mesh"


@pytest.fixture
def keys() -> dict[str, KeyPair]:
    return {name: KeyPair.generate() for name in ("thread", "task")}


@pytest.fixture
def verifying_broker(portal: BlockingPortal, keys: dict[str, KeyPair]) -> Iterator[str]:
    registry = StaticRegistry(
        Member(MESH, f"member-{name}", pair.pubkey, name) for name, pair in keys.items()
    )
    broker = Broker(registry, verifier=Ed25519Verifier(), rng=random.Random())
    with served(portal, broker) as server:
        yield server.url


async def _next_message(client: AnyioClient) -> MessageReceived:
    async for message in client.messages():
        assert isinstance(message, MessageReceived), message
        return message
    raise AssertionError("the anyio client closed before a message arrived")


async def _send(client: AnyioClient, target: str, body: str) -> str:
    return await client.send(target, body, "now")


async def _wait_open(client: AnyioClient) -> None:
    await client.wait_state(ConnectionState.OPEN)


def test_sync_and_anyio_clients_exchange_sealed_direct_messages_with_signed_hellos(
    portal: BlockingPortal, verifying_broker: str, keys: dict[str, KeyPair]
) -> None:
    thread_keys, task_keys = keys["thread"], keys["task"]
    task_side = anyio_connect(
        verifying_broker,
        mesh_id=MESH,
        member_id="member-task",
        signer=Ed25519Signer(task_keys),
        sealer=BoxSealer(task_keys),
        options=FAST,
    )
    thread_side = sync_connect(
        verifying_broker,
        mesh_id=MESH,
        member_id="member-thread",
        signer=Ed25519Signer(thread_keys),
        sealer=BoxSealer(thread_keys),
        options=FAST,
        close_timeout=0.5,
    )
    with in_portal(portal, task_side) as task, thread_side as thread:
        portal.call(_wait_open, task)
        assert thread.wait_state(ConnectionState.OPEN, timeout=5) is ConnectionState.OPEN

        message_id = thread.send(task_keys.pubkey, "from a thread", "now", timeout=5)
        received = portal.call(_next_message, task)
        assert (received.message_id, received.text) == (message_id, "from a thread")
        assert b"from a thread" not in base64.b64decode(received.push.ciphertext)

        message_id = portal.call(_send, task, thread_keys.pubkey, "from a task")
        answer = thread.receive(timeout=5)
        assert isinstance(answer, MessageReceived)
        assert (answer.message_id, answer.text) == (message_id, "from a task")
        assert b"from a task" not in base64.b64decode(answer.push.ciphertext)
        assert answer.sender_pubkey == task_keys.pubkey


def test_an_unsigned_client_is_refused_by_the_verifying_broker(verifying_broker: str) -> None:
    impostor = sync_connect(
        verifying_broker,
        mesh_id=MESH,
        member_id="member-thread",
        signer=FakeSigner("not ed25519"),
        options=FAST,
        close_timeout=0.5,
    )
    with impostor as client:
        assert client.wait_state(ConnectionState.CLOSED, timeout=5) is ConnectionState.CLOSED
        assert client.closed is not None
        assert "unauthorized" in client.closed.reason or "bad_signature" in client.closed.reason
