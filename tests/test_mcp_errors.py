"""Bad input and bad times: every one is a tool result with ``isError`` and one line.

A bad argument, an unknown or departed peer, a broker that is down, a
refused hello, a rate limit, an unanswered send, a full inbox: each call
answers with a line that says what happened and what to do, and the server
goes on serving. Runs on asyncio and trio.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio_helpers import WsPeer, anyio_backend, fake_broker
from mcp.shared.exceptions import MCPError
from mcp_helpers import (
    FAST_CLIENT,
    McpPeer,
    SignedMesh,
    eventually_true,
    mcp_session,
    serving,
    signed_broker,
    text,
)

from meshproto import ClientOptions, ConnectionState
from meshproto_cli._mcp import McpOptions
from meshproto_crypto import KeyPair

pytestmark = pytest.mark.anyio
__all__ = ["anyio_backend"]  # the fixture: run on asyncio and trio


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def _open(*peers: McpPeer) -> None:
    for peer in peers:
        await peer.wait_open()


@pytest.mark.parametrize(
    ("tool", "arguments", "fragment"),
    [
        ("send_message", {"message": "hi"}, "send_message needs 'to' (a string)"),
        ("send_message", {"to": "bob"}, "send_message needs 'message' (a string)"),
        ("send_message", {"to": 7, "message": "hi"}, "'to' must be a string, got int"),
        ("send_message", {"to": "bob", "message": ""}, "'message' is empty"),
        ("send_message", {"to": "  ", "message": "hi"}, "'to' is empty"),
        (
            "send_message",
            {"to": "bob", "message": "hi", "priority": "urgent"},
            "'priority' must be one of 'now', 'next', 'low', got 'urgent'",
        ),
        (
            "send_message",
            {"to": "bob", "text": "hi"},
            "send_message takes to, message, priority, client_message_id; unexpected: text",
        ),
        ("send_message", {"to": "team:", "message": "hi"}, "nothing after 'team:'"),
        ("set_status", {"status": "busy"}, "'status' must be one of 'idle', 'working', 'dnd'"),
        ("set_status", {}, "set_status needs 'status'"),
        ("set_summary", {"summary": "x" * 1001}, "the summary is 1001 characters"),
        ("list_peers", {"mesh": "nope"}, "no joined mesh is called 'nope'; joined: team"),
        ("check_messages", {"all": True}, "check_messages takes no arguments; unexpected: all"),
    ],
)
async def test_a_bad_argument_is_an_error_result_that_says_what_to_pass(
    tmp_path: Path, tool: str, arguments: dict[str, Any], fragment: str
) -> None:
    mesh = SignedMesh.create(tmp_path, "alice")
    async with (
        serving(signed_broker(mesh)) as server,
        mcp_session([mesh.identity("alice")], url=server.url) as alice,
    ):
        line = await alice.error(tool, **arguments)
        assert fragment in line
        await alice.ok("check_messages")  # and the server goes on


async def test_an_unknown_peer_is_an_error_result_that_names_who_is_online(
    tmp_path: Path,
) -> None:
    mesh = SignedMesh.create(tmp_path, "alice", "bob")
    async with (
        serving(signed_broker(mesh)) as server,
        mcp_session([mesh.identity("alice")], url=server.url) as alice,
        mcp_session([mesh.identity("bob")], url=server.url) as bob,
    ):
        await _open(alice, bob)
        line = await alice.error("send_message", to="carol", message="hi")
        assert line.startswith("not sent: 'carol' is neither a target")
        assert line.endswith("(online: 'bob')")  # every peer online but the caller
        # A key the broker knows nothing of: the broker's own refusal.
        stranger = KeyPair.generate().pubkey
        line = await alice.error("send_message", to=stranger, message="hi")
        assert line.startswith(
            f"not delivered: no peer online for key {stranger[:12]} in mesh team (broker: "
        )
        assert "see list_peers" in line
        # 64 hex that is no key at all cannot even be sealed.
        line = await alice.error("send_message", to="ab" * 32, message="hi")
        assert line.startswith("not sent: target abababababababab... is not an ed25519 public key")


async def test_a_peer_that_just_left_is_not_online_and_the_error_says_so(
    tmp_path: Path,
) -> None:
    mesh = SignedMesh.create(tmp_path, "alice", "bob")
    async with (
        serving(signed_broker(mesh)) as server,
        mcp_session([mesh.identity("alice")], url=server.url) as alice,
    ):
        async with mcp_session([mesh.identity("bob")], url=server.url) as bob:
            await _open(alice, bob)
        # bob's session waits out its grace window: listed, but not a live peer.
        line = await alice.error("send_message", to="bob", message="are you there?")
        assert "'bob' is not online now" in line


async def test_a_broker_that_is_down_is_an_error_result_that_says_it_is_retrying(
    tmp_path: Path,
) -> None:
    mesh = SignedMesh.create(tmp_path, "alice")
    url = f"ws://127.0.0.1:{_free_port()}/ws"
    options = McpOptions(connect_wait=0.5, client=FAST_CLIENT, close_timeout=0.5)
    async with mcp_session([mesh.identity("alice")], url=url, options=options) as alice:
        started = time.monotonic()
        line = await alice.error("list_peers")
        assert time.monotonic() - started < 5, "a call waits only briefly"
        assert line.startswith(f"mesh team: connecting to {url}: could not connect: ")
        assert "retrying" in line
        line = await alice.error("send_message", to="*", message="hi")
        assert line.startswith(f"not sent: mesh team: connecting to {url}")
        line = await alice.error("check_messages")
        assert line.startswith(f"no messages, and mesh team: connecting to {url}")
        line = await alice.error("set_status", status="working")
        assert line.startswith("status set to working nowhere yet; mesh team: connecting")
        assert "it is kept, and sent once the mesh connects" in line


async def test_a_refused_hello_is_an_error_result_that_says_why(tmp_path: Path) -> None:
    mesh = SignedMesh.create(tmp_path, "alice")
    mesh.revoked.add("alice")
    async with (
        serving(signed_broker(mesh)) as server,
        mcp_session([mesh.identity("alice")], url=server.url) as alice,
    ):
        client = alice.mesh.links[0].client
        assert client is not None
        with anyio.fail_after(10):
            await client.wait_state(ConnectionState.CLOSED)
        line = await alice.error("list_peers")
        assert line.startswith("mesh team: refused for good: revoked: ")
        assert "this member was removed from the mesh: ask its owner" in line
        line = await alice.error("send_message", to="*", message="hi")
        assert line.startswith("not sent: mesh team: refused for good: revoked")
        line = await alice.error("set_summary", summary="here")
        assert "refused for good: revoked" in line


async def test_calls_before_the_first_connection_wait_briefly_for_it(tmp_path: Path) -> None:
    mesh = SignedMesh.create(tmp_path, "alice")
    port = _free_port()
    async with (
        mcp_session([mesh.identity("alice")], url=f"ws://127.0.0.1:{port}/ws") as alice,
        anyio.create_task_group() as tasks,
    ):

        async def broker_a_moment_later() -> None:
            await anyio.sleep(0.3)
            async with serving(signed_broker(mesh), port=port):
                await anyio.sleep(30)

        tasks.start_soon(broker_a_moment_later)
        result = await alice.ok("list_peers")  # waited for the connection, then answered
        assert isinstance(result.structured_content, dict)
        assert [p["name"] for p in result.structured_content["peers"]] == ["alice"]
        tasks.cancel_scope.cancel()


async def test_a_rate_limited_send_says_when_to_retry(tmp_path: Path) -> None:
    mesh = SignedMesh.create(tmp_path, "alice")
    async with (
        serving(signed_broker(mesh, rate_burst=1, rate_per_minute=30.0)) as server,
        mcp_session([mesh.identity("alice")], url=server.url) as alice,
    ):
        await alice.ok("send_message", to="*", message="one")
        line = await alice.error("send_message", to="*", message="two")
        assert line.startswith(
            "rate limited: the broker allows 30 messages a minute per member (bursts of 1); "
            "wait about 2 s, then send it again"
        )


def _answers_hello_then(frames: list[dict[str, Any]], *, ack_after: float | None) -> Any:
    """A broker that accepts the hello, then acks sends ``ack_after`` s late, or never."""

    async def handler(peer: WsPeer) -> None:
        hello = await peer.next_frame()
        assert hello["type"] == "session_hello"
        await peer.send_json({"type": "hello_ack", "presenceId": "p-1"})
        while True:
            frame = await peer.next_frame(timeout=60)
            frames.append(frame)
            if frame["type"] == "send" and ack_after is not None:
                await anyio.sleep(ack_after)
                ack = {"type": "ack", "id": frame["id"], "messageId": "L" * 32, "queued": True}
                await peer.send_json(ack)

    return handler


async def test_a_late_ack_is_learned_by_asking_again_under_the_same_id(tmp_path: Path) -> None:
    mesh = SignedMesh.create(tmp_path, "alice")
    options = McpOptions(connect_wait=2.0, send_wait=0.2, client=FAST_CLIENT, close_timeout=0.5)
    frames: list[dict[str, Any]] = []
    async with (
        fake_broker(_answers_hello_then(frames, ack_after=0.5)) as (url, _),
        mcp_session([mesh.identity("alice")], url=url, options=options) as alice,
    ):
        await alice.wait_open()
        key = KeyPair.generate().pubkey
        line = await alice.error("send_message", to=key, message="hi")
        assert line.startswith("outcome unknown: no answer within 0.2 s (the broker has not")
        assert "the message is still queued" in line
        cmid = line.rsplit("client_message_id=", 1)[1].split("'")[1]
        with anyio.fail_after(5):
            while True:
                result = await alice.call(
                    "send_message", to=key, message="hi", client_message_id=cmid
                )
                if not result.is_error:
                    break
        assert text(result).startswith(
            f"sent to key {key[:12]} in mesh team: the broker accepted it as LLL"
        )
        again = await alice.ok("send_message", to=key, message="hi", client_message_id=cmid)
        assert "accepted it as " + "L" * 32 in text(again)
        assert [f["client_message_id"] for f in frames if f["type"] == "send"] == [cmid]


async def test_an_unanswered_send_is_outcome_unknown_with_the_id_to_retry_with(
    tmp_path: Path,
) -> None:
    mesh = SignedMesh.create(tmp_path, "alice")
    client = ClientOptions(ack_timeout=0.6, backoff=FAST_CLIENT.backoff)
    options = McpOptions(connect_wait=2.0, send_wait=0.2, client=client, close_timeout=0.5)
    frames: list[dict[str, Any]] = []
    async with (
        fake_broker(_answers_hello_then(frames, ack_after=None)) as (url, _),
        mcp_session([mesh.identity("alice")], url=url, options=options) as alice,
    ):
        await alice.wait_open()
        key = KeyPair.generate().pubkey
        # No answer within send_wait: the send is still pending; say how to follow it up.
        line = await alice.error("send_message", to=key, message="hi")
        assert line.startswith("outcome unknown: no answer within 0.2 s")
        cmid = line.rsplit("client_message_id=", 1)[1].split("'")[1]
        # Asking again under that id waits for the same send (no second copy), until
        # it ends without an ack.
        with anyio.fail_after(5):
            while line.startswith("outcome unknown: no answer within"):
                line = await alice.error(
                    "send_message", to=key, message="hi", client_message_id=cmid
                )
        assert line.startswith(f"outcome unknown: the message to key {key[:12]} was sent but")
        assert "ack_timeout" in line
        assert line.endswith(f"client_message_id={cmid!r}")
        sends = [f for f in frames if f["type"] == "send"]
        assert [f["client_message_id"] for f in sends] == [cmid]
        # Told how it ended, a call under that id is the retry: written again, same id.
        line = await alice.error("send_message", to=key, message="hi", client_message_id=cmid)
        assert line.startswith("outcome unknown: no answer within")
        await eventually_true(lambda: len([f for f in frames if f["type"] == "send"]) == 2)
        assert {f["client_message_id"] for f in frames if f["type"] == "send"} == {cmid}


async def test_a_message_too_large_is_not_sent(tmp_path: Path) -> None:
    mesh = SignedMesh.create(tmp_path, "alice")
    async with (
        serving(signed_broker(mesh)) as server,
        mcp_session([mesh.identity("alice")], url=server.url) as alice,
    ):
        line = await alice.error("send_message", to="*", message="x" * 70_000)
        assert line.startswith("not sent: the message is too large")
        assert "shorten it or send it in several parts" in line


async def test_an_unknown_tool_is_a_protocol_error_and_the_server_goes_on(
    tmp_path: Path,
) -> None:
    mesh = SignedMesh.create(tmp_path, "alice")
    async with (
        serving(signed_broker(mesh)) as server,
        mcp_session([mesh.identity("alice")], url=server.url) as alice,
    ):
        with pytest.raises(MCPError, match="Unknown tool: 'delete_mesh'"):
            await alice.session.call_tool("delete_mesh", {})
        await alice.ok("list_peers")


async def test_a_bug_in_a_tool_costs_that_call_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mesh = SignedMesh.create(tmp_path, "alice")
    async with (
        serving(signed_broker(mesh)) as server,
        mcp_session([mesh.identity("alice")], url=server.url) as alice,
    ):

        async def broken(mesh: str | None = None) -> Any:
            raise RuntimeError("a bug")

        with monkeypatch.context() as patch:
            patch.setattr(alice.mesh, "list_peers", broken)
            line = await alice.error("list_peers")
        assert line.startswith("list_peers failed inside meshproto mcp (RuntimeError: a bug)")
        await alice.ok("list_peers")


async def test_a_full_inbox_says_to_call_check_messages_and_loses_nothing(
    tmp_path: Path,
) -> None:
    mesh = SignedMesh.create(tmp_path, "alice", "bob")
    small = McpOptions(
        connect_wait=2.0,
        client=ClientOptions(inbox_limit=2, backoff=FAST_CLIENT.backoff),
        close_timeout=0.5,
    )
    async with (
        serving(signed_broker(mesh)) as server,
        mcp_session([mesh.identity("alice")], url=server.url) as alice,
        mcp_session([mesh.identity("bob")], url=server.url, options=small) as bob,
    ):
        await _open(alice, bob)
        for i in range(4):
            await alice.ok("send_message", to="bob", message=f"m{i}", priority="now")
        # At least the limit: what was read in the same chunk as the last one
        # that fitted is kept too (nothing is ever dropped).
        await eventually_true(lambda: len(bob.mesh.links[0].waiting) >= 2)
        waiting = len(bob.mesh.links[0].waiting)
        line = await bob.error("list_peers")
        assert line == (
            f"mesh team: {waiting} messages are waiting to be read, so this session has stopped "
            "reading from the broker; call check_messages, then try again"
        )
        seen = [m["text"] for m in await bob.messages()]
        with anyio.fail_after(10):
            while len(seen) < 4:
                seen += [m["text"] for m in await bob.messages()]
                await anyio.sleep(0.02)
        assert seen == ["m0", "m1", "m2", "m3"]
        await bob.ok("list_peers")


async def test_with_several_meshes_the_target_names_its_mesh_when_it_must(
    tmp_path: Path,
) -> None:
    team = SignedMesh.create(tmp_path, "alice", "bob", mesh_id="mesh-team", slug="team")
    ops = SignedMesh.create(tmp_path, "alice", "carol", mesh_id="mesh-ops", slug="ops")
    async with (
        serving(signed_broker(team, ops)) as server,
        mcp_session([team.identity("alice"), ops.identity("alice")], url=server.url) as alice,
        mcp_session([team.identity("bob")], url=server.url) as bob,
        mcp_session([ops.identity("carol")], url=server.url) as carol,
    ):
        await _open(alice, bob, carol)
        line = await alice.error("send_message", to="*", message="hi all")
        assert line == (
            "not sent: several meshes are joined (team, ops); put the mesh first, e.g. 'team:*'"
        )
        # A name found on one mesh only needs no prefix.
        sent = await alice.ok("send_message", to="carol", message="hi carol")
        assert "in mesh ops" in text(sent)
        await alice.ok("send_message", to="team:*", message="hi team")
        await eventually_true(lambda: bool(bob.mesh.links[0].waiting))
        (message,) = await bob.messages()
        assert (message["text"], message["kind"], message["mesh"]) == (
            "hi team",
            "broadcast",
            "team",
        )
        await eventually_true(lambda: bool(carol.mesh.links[0].waiting))
        assert [m["text"] for m in await carol.messages()] == ["hi carol"]
        line = await alice.error("send_message", to="dave", message="hi")
        assert line.startswith("not sent: no peer called 'dave' is on any joined mesh")
        result = await alice.ok("list_peers")
        assert isinstance(result.structured_content, dict)
        meshes = sorted({p["mesh"] for p in result.structured_content["peers"]})
        assert meshes == ["ops", "team"]
