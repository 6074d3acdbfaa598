"""Two AI sessions' MCP servers, alice's and bob's, talking through the reference broker.

Each server is the real ``meshproto mcp`` server (:mod:`meshproto_cli._mcp`),
reached through the SDK's in-memory client/server session, with members
whose hellos are signed with real keys and checked by the broker. Runs on
asyncio and trio.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

import anyio
import pytest
from anyio_helpers import anyio_backend, serve_until
from mcp_helpers import (
    FAST,
    SignedMesh,
    eventually_true,
    mcp_client,
    mcp_session,
    serving,
    signed_broker,
    text,
)

from meshproto import Backoff, Broker, ConnectionState, Store
from meshproto_cli._mcp import McpMesh
from meshproto_cli._mcp_session import lease_session

pytestmark = pytest.mark.anyio
__all__ = ["anyio_backend"]  # the fixture: run on asyncio and trio


def _mesh(tmp_path: Path) -> SignedMesh:
    return SignedMesh.create(tmp_path, "alice", "bob")


async def test_send_message_from_alice_reaches_bobs_check_messages_once(tmp_path: Path) -> None:
    mesh = _mesh(tmp_path)
    async with (
        serving(signed_broker(mesh)) as server,
        mcp_session([mesh.identity("alice")], url=server.url) as alice,
        mcp_session([mesh.identity("bob")], url=server.url) as bob,
    ):
        await alice.wait_open()
        await bob.wait_open()
        sent = await alice.ok("send_message", to="bob", message="the build is green")
        assert text(sent).startswith("sent to bob (key ")
        assert "the broker accepted it as " in text(sent)

        await eventually_true(lambda: bool(bob.mesh.links[0].waiting))
        reminded = text(await bob.ok("set_summary", summary="reading"))
        assert reminded.endswith("\n1 new message waiting: call check_messages.")
        (message,) = await bob.messages()
        assert message["text"] == "the build is green"
        assert message["sender"] == "alice"
        assert message["sender_key"] == alice.mesh.links[0].session_key
        assert message["sender_member_key"] == mesh.members["alice"].keys.pubkey
        assert message["mesh"] == "team"
        assert message["priority"] == "next"
        assert message["kind"] == "direct"
        assert message["sent_at"].endswith("Z")
        assert await bob.messages() == [], "a message was handed over twice"

        # bob replies to the key he was given; alice gets it once too.
        await bob.ok("send_message", to=message["sender_key"], message="thanks")
        await eventually_true(lambda: bool(alice.mesh.links[0].waiting))
        assert [m["text"] for m in await alice.messages()] == ["thanks"]
        assert await alice.messages() == []


async def test_bobs_client_session_receives_the_channel_notification(tmp_path: Path) -> None:
    mesh = _mesh(tmp_path)
    async with (
        serving(signed_broker(mesh)) as server,
        mcp_session([mesh.identity("alice")], url=server.url) as alice,
        mcp_session([mesh.identity("bob")], url=server.url) as bob,
    ):
        assert bob.initialize is not None
        assert bob.initialize.capabilities.experimental == {"claude/channel": {}}
        await alice.wait_open()
        await bob.wait_open()
        await alice.ok("send_message", to="bob", message="the build is green", priority="now")
        await eventually_true(lambda: bool(bob.channel))
        (note,) = bob.channel
        assert note.content == "[URGENT] alice: the build is green"
        assert note.meta["sender"] == "alice"
        assert note.meta["sender_key"] == alice.mesh.links[0].session_key
        assert note.meta["mesh"] == "team"
        assert note.meta["priority"] == "now"
        assert len(note.meta["message_id"]) == 32
        assert note.meta["client_message_id"]
        # The notification announced it; check_messages still hands it over, once.
        (message,) = await bob.messages()
        assert message["notified"] is True
        assert message["message_id"] == note.meta["message_id"]
        assert message["client_message_id"] == note.meta["client_message_id"]
        await anyio.sleep(0.1)
        assert len(bob.channel) == 1


async def test_a_message_that_arrives_before_the_handshake_is_notified_right_after_it(
    tmp_path: Path,
) -> None:
    mesh = _mesh(tmp_path)
    async with (
        serving(signed_broker(mesh)) as server,
        mcp_session([mesh.identity("alice")], url=server.url) as alice,
    ):
        bob_mesh = McpMesh([mesh.identity("bob")], url=server.url, options=FAST)
        async with bob_mesh.running():
            bob_client = bob_mesh.links[0].client
            assert bob_client is not None
            with anyio.fail_after(10):
                await bob_client.wait_state(ConnectionState.OPEN)
            await alice.ok("send_message", to="bob", message="early")
            await eventually_true(lambda: bool(bob_mesh.links[0].waiting))
            async with mcp_client(bob_mesh, initialize=False) as bob:
                await anyio.sleep(0.2)
                assert bob.channel == [], "nothing may be pushed before the handshake"
                with anyio.fail_after(10):
                    await bob.session.initialize()
                await eventually_true(lambda: bool(bob.channel))
                assert bob.channel[0].content == "alice: early"
                assert [m["notified"] for m in await bob.messages()] == [True]


async def test_list_peers_shows_both_with_their_summaries(tmp_path: Path) -> None:
    mesh = _mesh(tmp_path)
    async with (
        serving(signed_broker(mesh)) as server,
        mcp_session([mesh.identity("alice")], url=server.url) as alice,
        mcp_session([mesh.identity("bob")], url=server.url) as bob,
    ):
        assert text(await alice.ok("set_summary", summary="reviewing the parser")) == (
            "summary set to 'reviewing the parser' on team"
        )
        await bob.ok("set_summary", summary="fixing\nthe build")  # kept to one line

        def both_summaries(peers: list[dict[str, object]]) -> bool:
            return {p["name"]: p["summary"] for p in peers} == {
                "alice": "reviewing the parser",
                "bob": "fixing the build",
            }

        peers: list[dict[str, object]] = []
        with anyio.fail_after(10):
            while not both_summaries(peers):
                result = await alice.ok("list_peers")
                assert isinstance(result.structured_content, dict)
                peers = result.structured_content["peers"]
                await anyio.sleep(0.02)
        by_name = {p["name"]: p for p in peers}
        assert by_name["alice"]["you"] is True
        assert by_name["bob"]["you"] is False
        assert by_name["alice"]["key"] == alice.mesh.links[0].session_key
        assert by_name["bob"]["member_key"] == mesh.members["bob"].keys.pubkey
        for peer in peers:
            assert peer["mesh"] == "team"
            assert peer["status"] == "idle"
            assert peer["online"] is True
        # Filtered by mesh, the same list; an unknown mesh is a bad argument.
        only = await alice.ok("list_peers", mesh="team")
        assert isinstance(only.structured_content, dict)
        assert len(only.structured_content["peers"]) == 2


async def test_a_next_message_to_a_working_peer_is_held_until_it_turns_idle(
    tmp_path: Path,
) -> None:
    mesh = _mesh(tmp_path)
    async with (
        serving(signed_broker(mesh)) as server,
        mcp_session([mesh.identity("alice")], url=server.url) as alice,
        mcp_session([mesh.identity("bob")], url=server.url) as bob,
    ):
        await alice.wait_open()
        await bob.wait_open()
        assert text(await bob.ok("set_status", status="working")) == (
            "status set to working on team"
        )
        with anyio.fail_after(10):
            while True:  # until alice's view of bob says working
                result = await alice.ok("list_peers")
                assert isinstance(result.structured_content, dict)
                status = {p["name"]: p["status"] for p in result.structured_content["peers"]}
                if status["bob"] == "working":
                    break
                await anyio.sleep(0.02)
        sent = text(await alice.ok("send_message", to="bob", message="when you have a minute"))
        assert "bob is working, so the broker holds this 'next' message until bob is idle" in (sent)
        await anyio.sleep(0.3)
        assert await bob.messages() == []
        assert bob.channel == []

        await bob.ok("set_status", status="idle")
        await eventually_true(lambda: bool(bob.channel))
        assert bob.channel[0].content == "alice: when you have a minute"
        assert [m["text"] for m in await bob.messages()] == ["when you have a minute"]


def _serve_until(mesh: SignedMesh) -> Callable[..., Awaitable[None]]:
    """``serve_until`` with the signed broker of ``mesh``."""

    def make(store: Store) -> Broker:
        return signed_broker(mesh, store=store, rate_burst=1000, rate_per_minute=60_000.0)

    return partial(serve_until, make=make)


#: Reconnect exactly 0.25 s after a drop: never while the stopping broker's
#: listener is closing (asyncio on Python 3.11 can then fail an accept
#: callback with InvalidStateError, inside the event loop).
STEADY = replace(FAST, client=replace(FAST.client, backoff=Backoff(caps=(0.25,), jitter=False)))


async def test_a_broker_restart_in_the_middle_loses_nothing(tmp_path: Path) -> None:
    mesh = _mesh(tmp_path)
    db = tmp_path / "broker.db"
    received: Counter[str] = Counter()
    with anyio.fail_after(45):
        async with anyio.create_task_group() as brokers:
            first_stop = anyio.Event()
            server = await brokers.start(_serve_until(mesh), db, 0, first_stop)
            async with (
                mcp_session([mesh.identity("alice")], url=server.url, options=STEADY) as alice,
                mcp_session([mesh.identity("bob")], url=server.url, options=STEADY) as bob,
            ):
                await alice.wait_open()
                await bob.wait_open()
                for i in range(6):
                    await alice.ok("send_message", to="bob", message=f"m{i}", priority="now")
                # bob reads some before the restart, and leaves the rest waiting.
                await eventually_true(lambda: len(bob.mesh.links[0].waiting) == 6)
                received.update(m["text"] for m in await bob.messages())

                for i in range(6, 9):
                    await alice.ok("send_message", to="bob", message=f"m{i}", priority="now")
                await eventually_true(lambda: len(bob.mesh.links[0].waiting) == 3)
                first_stop.set()  # m6..m8 were pushed but never acknowledged
                await eventually_true(
                    lambda: (
                        bob.mesh.links[0].client is not None
                        and bob.mesh.links[0].client.state is not ConnectionState.OPEN
                    )
                )
                second_stop = anyio.Event()
                await brokers.start(_serve_until(mesh), db, server.port, second_stop)
                await bob.wait_open()  # "bob" names a live session again
                for i in range(9, 12):  # each waits briefly for alice's reconnect
                    await alice.ok("send_message", to="bob", message=f"m{i}", priority="now")

                with anyio.fail_after(20):
                    while sum(received.values()) < 12:
                        received.update(m["text"] for m in await bob.messages())
                        await anyio.sleep(0.05)
                await anyio.sleep(0.3)  # room for a duplicate to show up
                received.update(m["text"] for m in await bob.messages())
                second_stop.set()
    assert sorted(received) == sorted(f"m{i}" for i in range(12))
    assert set(received.values()) == {1}, f"a message arrived twice: {received}"


async def test_a_restarted_server_gets_what_its_predecessor_never_handed_over(
    tmp_path: Path,
) -> None:
    """The delivery contract: nothing the broker was told we had is lost with the process."""
    mesh = _mesh(tmp_path)
    bob_dir = mesh.members["bob"].config_dir
    async with (
        serving(signed_broker(mesh)) as server,
        mcp_session([mesh.identity("alice")], url=server.url) as alice,
    ):
        await alice.wait_open()
        with lease_session(bob_dir) as lease:
            async with mcp_session([mesh.identity("bob", lease.name)], url=server.url) as first_bob:
                await first_bob.wait_open()
                for word in ("one", "two"):
                    await alice.ok("send_message", to="bob", message=word)
                await eventually_true(lambda: len(first_bob.channel) == 2)
                # Notified, never returned by check_messages: not acknowledged.
        with lease_session(bob_dir) as lease:  # the freed slot, and its key, again
            assert lease.name == "mcp-1"
            async with mcp_session(
                [mesh.identity("bob", lease.name)], url=server.url
            ) as second_bob:
                # Pushed again at this session's hello, and notified again by this process.
                await eventually_true(lambda: len(second_bob.channel) == 2)
                messages = await second_bob.messages()
                assert [m["text"] for m in messages] == ["one", "two"]
        with lease_session(bob_dir) as lease:
            async with mcp_session([mesh.identity("bob", lease.name)], url=server.url) as third_bob:
                await third_bob.wait_open()
                await anyio.sleep(0.3)
                assert await third_bob.messages() == [], "acknowledged, so gone"


async def test_two_servers_of_one_member_are_two_peers(tmp_path: Path) -> None:
    mesh = _mesh(tmp_path)
    bob_dir = mesh.members["bob"].config_dir
    async with serving(signed_broker(mesh)) as server:
        with lease_session(bob_dir) as first, lease_session(bob_dir) as second:
            assert (first.name, second.name) == ("mcp-1", "mcp-2")
            async with (
                mcp_session([mesh.identity("bob", first.name)], url=server.url) as one,
                mcp_session([mesh.identity("bob", second.name)], url=server.url) as two,
            ):
                await one.wait_open()
                await two.wait_open()
                await anyio.sleep(0.2)
                for peer in (one, two):  # neither displaced the other
                    client = peer.mesh.links[0].client
                    assert client is not None and client.state is ConnectionState.OPEN
                result = await one.ok("list_peers")
                assert isinstance(result.structured_content, dict)
                peers = result.structured_content["peers"]
                assert [p["name"] for p in peers] == ["bob", "bob"]
                assert sorted(p["you"] for p in peers) == [False, True]
                # A name never means "me": "bob" from one bob session is the other one.
                await one.ok("send_message", to="bob", message="hello, other me")
                await eventually_true(lambda: bool(two.mesh.links[0].waiting))
                assert [m["text"] for m in await two.messages()] == ["hello, other me"]
