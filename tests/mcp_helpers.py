"""Shared pieces of the ``meshproto mcp`` tests: signed meshes, brokers, MCP sessions.

A :class:`SignedMesh` is a mesh whose members have real ed25519 keys and a
claudemesh config dir each (written as ``meshproto mesh init`` would), served
by a reference broker that verifies every hello. :func:`mcp_session` runs
one member's MCP server (:class:`meshproto_cli._mcp.McpMesh` behind
:func:`~meshproto_cli._mcp.serve_mcp`) over the SDK's in-memory streams and
yields an initialized SDK ``ClientSession`` to call its tools, with every
``notifications/claude/channel`` it pushes collected.

Everything binds 127.0.0.1 port 0, and every wait is bounded.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from anyio_helpers import running_broker_on
from mcp import types
from mcp.client.extension import NotificationBinding
from mcp.client.session import ClientSession
from mcp.shared.memory import create_client_server_memory_streams
from pydantic import BaseModel

from meshproto import Backoff, Broker, BrokerOptions, ClientOptions, Group, Member, StaticRegistry
from meshproto._store import Store
from meshproto_anyio import BrokerServer
from meshproto_cli._files import JoinedMesh, save_joined_meshes
from meshproto_cli._identity import Identity, load_identity
from meshproto_cli._mcp import McpMesh, McpOptions, serve_mcp
from meshproto_cli._mcp_tools import CHANNEL_METHOD
from meshproto_crypto import Ed25519Verifier, KeyPair

#: The first request of an MCP client, as a test that speaks JSON-RPC itself writes it.
INITIALIZE_REQUEST: dict[str, Any] = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "edge", "version": "1"},
    },
}

#: Short waits and fast reconnects: no test sits through a real backoff or timeout.
FAST_CLIENT = ClientOptions(
    connect_timeout=2.0,
    hello_timeout=2.0,
    ack_timeout=3.0,
    request_timeout=3.0,
    ping_interval=0.5,
    liveness_timeout=3.0,
    inbox_limit=1000,
    backoff=Backoff(caps=(0.02, 0.05, 0.1)),
)
FAST = McpOptions(
    connect_wait=3.0,
    send_wait=5.0,
    request_wait=4.0,
    name_wait=1.0,
    client=FAST_CLIENT,
    close_timeout=0.5,
)


@dataclass(frozen=True)
class SignedMember:
    name: str
    member_id: str
    keys: KeyPair
    config_dir: Path


@dataclass
class SignedMesh:
    """Members with real keys and config dirs; :meth:`broker` makes a broker that knows them."""

    mesh_id: str
    slug: str
    members: dict[str, SignedMember]
    groups: tuple[str, ...] = ()
    revoked: set[str] = field(default_factory=set)

    @classmethod
    def create(
        cls,
        root: Path,
        *names: str,
        mesh_id: str = "mcp-test-mesh",
        slug: str = "team",
        url: str = "ws://127.0.0.1:9/ws",
        groups: tuple[str, ...] = (),
    ) -> SignedMesh:
        members = {}
        for name in names:
            keys = KeyPair.generate()
            config = root / name
            record = JoinedMesh(
                mesh_id,
                f"id-{name}",
                slug,
                f"{slug} mesh",
                keys.pubkey,
                keys.secret_key,
                url,
                "2026-12-01T00:00:00.000Z",
            )
            existing = _read_records(config)
            save_joined_meshes(config, [*existing, record])
            members[name] = SignedMember(name, f"id-{name}", keys, config)
        return cls(mesh_id, slug, members, groups)

    def registry_rows(self) -> list[Member]:
        return [
            Member(
                self.mesh_id,
                m.member_id,
                m.keys.pubkey,
                m.name,
                tuple(Group(g) for g in self.groups),
                m.name in self.revoked,
            )
            for m in self.members.values()
        ]

    def identity(self, name: str, session: str = "mcp-test") -> Identity:
        return load_identity(self.members[name].config_dir, self.mesh_id, session)


def _read_records(config: Path) -> list[JoinedMesh]:
    path = config / "config.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    return [JoinedMesh.from_record(r, str(path)) for r in data["meshes"]]


def signed_broker(*meshes: SignedMesh, store: Store | None = None, **options: Any) -> Broker:
    """A reference broker that verifies hellos, for the members of ``meshes``."""
    rows = [row for mesh in meshes for row in mesh.registry_rows()]
    return Broker(
        StaticRegistry(rows),
        verifier=Ed25519Verifier(),
        store=store,
        rng=random.Random(),
        options=BrokerOptions(**options),
    )


@asynccontextmanager
async def serving(broker: Broker, port: int = 0) -> AsyncIterator[BrokerServer]:
    async with running_broker_on(broker, port) as server:
        yield server


class ChannelParams(BaseModel):
    """The ``params`` of a ``notifications/claude/channel``."""

    content: str
    meta: dict[str, str]


@dataclass
class McpPeer:
    """One member's MCP server and the SDK client session in front of it."""

    session: ClientSession
    mesh: McpMesh
    channel: list[ChannelParams]
    initialize: types.InitializeResult | None

    async def call(self, tool: str, **arguments: Any) -> types.CallToolResult:
        with anyio.fail_after(30):
            return await self.session.call_tool(tool, arguments)

    async def ok(self, tool: str, **arguments: Any) -> types.CallToolResult:
        """Call ``tool`` and insist that it succeeded."""
        result = await self.call(tool, **arguments)
        assert not result.is_error, text(result)
        return result

    async def error(self, tool: str, **arguments: Any) -> str:
        """Call ``tool``, insist that it failed in one line, and return that line."""
        result = await self.call(tool, **arguments)
        assert result.is_error, text(result)
        line = text(result)
        assert "\n" not in line, line
        return line

    async def messages(self) -> list[dict[str, Any]]:
        result = await self.ok("check_messages")
        assert isinstance(result.structured_content, dict)
        messages: list[dict[str, Any]] = result.structured_content["messages"]
        return messages

    async def wait_open(self, timeout: float = 10.0) -> None:
        from meshproto import ConnectionState  # noqa: PLC0415

        with anyio.fail_after(timeout):
            for link in self.mesh.links:
                assert link.client is not None
                await link.client.wait_state(ConnectionState.OPEN)


def text(result: types.CallToolResult) -> str:
    (block,) = result.content
    assert isinstance(block, types.TextContent)
    return block.text


@asynccontextmanager
async def mcp_client(mesh: McpMesh, *, initialize: bool = True) -> AsyncIterator[McpPeer]:
    """An SDK client session to an MCP server for the running ``mesh`` (initialized, or not)."""
    channel: list[ChannelParams] = []

    async def on_channel(params: ChannelParams) -> None:
        channel.append(params)

    binding = NotificationBinding(
        method=CHANNEL_METHOD, params_type=ChannelParams, handler=on_channel
    )
    async with (
        create_client_server_memory_streams() as ((client_read, client_write), server_streams),
        anyio.create_task_group() as tasks,
    ):
        served = anyio.Event()

        async def serve() -> None:
            try:
                await serve_mcp(mesh, *server_streams)
            finally:
                served.set()

        tasks.start_soon(serve)
        async with ClientSession(
            client_read, client_write, notification_bindings=[binding]
        ) as session:
            result = None
            if initialize:
                with anyio.fail_after(10):
                    result = await session.initialize()
            yield McpPeer(session, mesh, channel, result)
        # The end of the client's stream ends the server's connection.
        await client_write.aclose()
        with anyio.move_on_after(5):
            await served.wait()
        tasks.cancel_scope.cancel()


@asynccontextmanager
async def mcp_session(
    identities: Sequence[Identity],
    *,
    url: str | None = None,
    options: McpOptions = FAST,
    display_name: str | None = None,
) -> AsyncIterator[McpPeer]:
    """Run an MCP server for ``identities`` and yield an initialized client session to it."""
    mesh = McpMesh(identities, url=url, display_name=display_name, options=options)
    async with mesh.running(), mcp_client(mesh) as peer:
        yield peer


async def eventually_true(predicate: Any, *, timeout: float = 10.0) -> None:
    """Wait (polling every 10 ms, at most ``timeout`` seconds) until ``predicate()``."""
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.01)
