"""``meshproto mcp`` as an AI client runs it: a subprocess speaking MCP on its stdin and stdout.

The broker runs in the test's event loop, with real keys; alice is the
subprocess, reached through the SDK's stdio client, and bob an in-process
server. Nothing but protocol may appear on the subprocess's stdout, even
with debug logging on. Runs on asyncio and trio.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio_helpers import anyio_backend
from mcp import Client, StdioServerParameters, types
from mcp.client import ClientExtension, NotificationBinding
from mcp.client.stdio import stdio_client
from mcp_helpers import (
    INITIALIZE_REQUEST,
    ChannelParams,
    SignedMesh,
    eventually_true,
    mcp_session,
    serving,
    signed_broker,
)

from meshproto_cli._mcp_session import lease_session
from meshproto_cli._mcp_tools import CHANNEL_METHOD

pytestmark = pytest.mark.anyio
__all__ = ["anyio_backend"]  # the fixture: run on asyncio and trio

TOOL_NAMES = ["send_message", "check_messages", "list_peers", "set_summary", "set_status"]


def _command(config_dir: Path, url: str, *extra: str) -> list[str]:
    return [
        "-m",
        "meshproto_cli",
        "-vv",  # every log line there is, to show that none reaches stdout
        "mcp",
        "--config-dir",
        str(config_dir),
        "--url",
        url,
        *extra,
    ]


class _Channel(ClientExtension):
    """Collects the server's channel notifications (the SDK delivers vendor ones to bindings)."""

    identifier = "com.example/channel"

    def __init__(self) -> None:
        self.received: list[ChannelParams] = []

    def notifications(self) -> list[NotificationBinding[Any]]:
        async def handler(params: ChannelParams) -> None:
            self.received.append(params)

        return [
            NotificationBinding(method=CHANNEL_METHOD, params_type=ChannelParams, handler=handler)
        ]


def _text(result: types.CallToolResult) -> str:
    (block,) = result.content
    assert isinstance(block, types.TextContent)
    return block.text


async def test_meshproto_mcp_over_stdio_lists_tools_sends_and_checks_messages(
    tmp_path: Path,
) -> None:
    mesh = SignedMesh.create(tmp_path, "alice", "bob")
    stray: list[object] = []  # anything on stdout that is not a JSON-RPC message

    async def on_message(message: object) -> None:
        if isinstance(message, Exception):
            stray.append(message)

    channel = _Channel()
    with anyio.fail_after(60):
        async with serving(signed_broker(mesh)) as server:
            params = StdioServerParameters(
                command=sys.executable,
                args=_command(mesh.members["alice"].config_dir, server.url),
            )
            with (tmp_path / "stderr.txt").open("w+", encoding="utf-8") as errlog:
                async with (
                    mcp_session([mesh.identity("bob")], url=server.url) as bob,
                    Client(
                        stdio_client(params, errlog=errlog),
                        message_handler=on_message,
                        extensions=[channel],
                    ) as alice,
                ):
                    # The SDK's client probes server/discover first, and falls back to
                    # the handshake this server speaks.
                    assert alice.server_capabilities.experimental == {"claude/channel": {}}
                    assert alice.server_info is not None
                    assert alice.server_info.name == "meshproto"
                    listed = await alice.list_tools()
                    assert [tool.name for tool in listed.tools] == TOOL_NAMES
                    for tool in listed.tools:
                        assert tool.description
                        assert tool.input_schema["type"] == "object"

                    await bob.wait_open()
                    sent = await alice.call_tool(
                        "send_message", {"to": "bob", "message": "over stdio", "priority": "now"}
                    )
                    assert not sent.is_error, _text(sent)
                    assert _text(sent).startswith("sent to bob (key ")
                    await eventually_true(lambda: bool(bob.channel))
                    assert bob.channel[0].content.endswith(": over stdio")
                    (message,) = await bob.messages()
                    assert message["text"] == "over stdio"

                    await bob.ok("send_message", to=message["sender_key"], message="and back")
                    with anyio.fail_after(10):
                        while True:
                            checked = await alice.call_tool("check_messages", {})
                            assert not checked.is_error, _text(checked)
                            assert isinstance(checked.structured_content, dict)
                            if checked.structured_content["messages"]:
                                break
                            await anyio.sleep(0.05)
                    (back,) = checked.structured_content["messages"]
                    assert (back["text"], back["sender"]) == ("and back", "bob")
                    assert json.loads(_text(checked)) == checked.structured_content
                    await eventually_true(lambda: bool(channel.received))
                    assert channel.received[0].content == "bob: and back"
                errlog.seek(0)
                logged = errlog.read()
    assert stray == []
    assert "meshproto mcp: session mcp-1 on team" in logged
    assert "INFO meshproto.mcp: mesh team: connected to" in logged  # logs went to stderr


def _rpc(*messages: dict[str, Any]) -> bytes:
    return b"".join(json.dumps({"jsonrpc": "2.0", **m}).encode() + b"\n" for m in messages)


async def test_nothing_but_protocol_appears_on_stdout(tmp_path: Path) -> None:
    mesh = SignedMesh.create(tmp_path, "alice")
    initialize = INITIALIZE_REQUEST["params"]
    with anyio.fail_after(60):
        async with serving(signed_broker(mesh)) as server:
            command = [sys.executable, *_command(mesh.members["alice"].config_dir, server.url)]
            async with await anyio.open_process(command) as process:
                assert process.stdin is not None and process.stdout is not None
                await process.stdin.send(
                    _rpc(
                        {"id": 1, "method": "initialize", "params": initialize},
                        {"method": "notifications/initialized"},
                        {"id": 2, "method": "tools/list"},
                        {
                            "id": 3,
                            "method": "tools/call",
                            "params": {
                                "name": "send_message",
                                "arguments": {"to": "*", "message": "hi"},
                            },
                        },
                        {"id": 4, "method": "tools/call", "params": {"name": "check_messages"}},
                    )
                )
                out = b""
                answered: set[int] = set()
                while answered != {1, 2, 3, 4}:
                    out += await process.stdout.receive()
                    for line in out.splitlines()[: -1 if not out.endswith(b"\n") else None]:
                        message = json.loads(line)
                        if "id" in message:
                            answered.add(message["id"])
                await process.stdin.aclose()  # the client goes away: the server ends
                async for chunk in process.stdout:
                    out += chunk
                assert await process.wait() == 0
    lines = out.decode("utf-8").splitlines()
    assert lines, "no output at all"
    for line in lines:
        message = json.loads(line)  # every line is one JSON-RPC message
        assert message["jsonrpc"] == "2.0"
    by_id = {m["id"]: m for m in map(json.loads, lines) if "id" in m}
    assert by_id[1]["result"]["capabilities"]["experimental"] == {"claude/channel": {}}
    assert by_id[3]["result"]["isError"] is False, by_id[3]
    assert by_id[4]["result"]["structuredContent"] == {"messages": []}


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshproto_cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
        env={**os.environ},
    )


def test_without_a_joined_mesh_the_command_says_so_in_one_line(tmp_path: Path) -> None:
    result = _run("mcp", "--config-dir", str(tmp_path))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("meshproto: error: no joined mesh in ")
    assert len(result.stderr.splitlines()) == 1


def test_a_pinned_session_in_use_is_refused_in_one_line(tmp_path: Path) -> None:
    mesh = SignedMesh.create(tmp_path, "alice")
    config = mesh.members["alice"].config_dir
    with lease_session(config, "laptop"):
        result = _run("mcp", "--config-dir", str(config), "--session", "laptop")
    assert result.returncode == 1
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line == (
        f"meshproto: error: session 'laptop' is in use by another 'meshproto mcp' "
        f"(pid {os.getpid()}); choose another --session, or leave it out to get a free one"
    )


def test_sigterm_stops_the_server_while_its_client_keeps_stdin_open(tmp_path: Path) -> None:
    mesh = SignedMesh.create(tmp_path, "alice")
    config = mesh.members["alice"].config_dir
    server = subprocess.Popen(
        [sys.executable, "-m", "meshproto_cli", "mcp", "--config-dir", str(config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stderr is not None
        assert server.stderr.readline().startswith("meshproto mcp: session mcp-1 on team")
        server.send_signal(signal.SIGTERM)  # stdin stays open: no EOF to end on
        out, err = server.communicate(timeout=15)
    finally:
        server.kill()
        server.wait(timeout=10)
    assert server.returncode == 143  # SIGTERM's status, as for every command
    assert out == ""
    assert err.strip() == "terminated"


_INITIALIZE = json.dumps(INITIALIZE_REQUEST) + "\n"


@pytest.mark.parametrize("closed", ["<&-", ">&-"])
def test_a_closed_stdin_or_stdout_is_one_line_before_anything_is_served(
    tmp_path: Path, closed: str
) -> None:
    mesh = SignedMesh.create(tmp_path, "alice")
    config = mesh.members["alice"].config_dir
    script = f'exec "$0" -m meshproto_cli mcp --config-dir "$1" --url ws://127.0.0.1:1/ws {closed}'
    result = subprocess.run(
        ["/bin/sh", "-c", script, sys.executable, str(config)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    stream = "stdin" if closed == "<&-" else "stdout"
    assert result.returncode == 1
    assert result.stderr == (
        f"meshproto: error: {stream} is closed: meshproto mcp speaks MCP on its stdin and "
        "stdout, as an MCP client runs it\n"
    )
    with lease_session(config) as lease:  # nothing was held, nothing is left held
        assert lease.name == "mcp-1"


def test_a_stdout_on_a_full_disk_stops_the_server_in_one_line(tmp_path: Path) -> None:
    mesh = SignedMesh.create(tmp_path, "alice")
    config = mesh.members["alice"].config_dir
    with open("/dev/full", "wb") as full:
        result = subprocess.run(
            [sys.executable, "-m", "meshproto_cli", "mcp", "--config-dir", str(config),
             "--url", "ws://127.0.0.1:1/ws"],
            input=_INITIALIZE.encode(),
            stdout=full,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )  # fmt: skip
    assert result.returncode == 1
    banner, error = result.stderr.decode().splitlines()
    assert banner.startswith("meshproto mcp: session mcp-1 on team")
    assert error == (
        "meshproto: error: cannot serve MCP on stdin and stdout: No space left on device"
    )


def test_a_client_that_closes_the_servers_stdout_has_gone_and_the_server_ends(
    tmp_path: Path,
) -> None:
    mesh = SignedMesh.create(tmp_path, "alice")
    config = mesh.members["alice"].config_dir
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will read the answer: the client has gone
    try:
        result = subprocess.run(
            [sys.executable, "-m", "meshproto_cli", "mcp", "--config-dir", str(config),
             "--url", "ws://127.0.0.1:1/ws"],
            input=(_INITIALIZE + "\n" * 10).encode(),
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert result.returncode == 0, result.stderr
    (banner,) = result.stderr.decode().splitlines()
    assert banner.startswith("meshproto mcp: session mcp-1 on team")


@pytest.mark.parametrize(
    ("option", "complaint"),
    [
        ("--cafile", "cannot read --cafile {path}: [Errno 2] No such file or directory"),
        ("--log-file", "cannot write --log-file {path}: No such file or directory"),
    ],
)
def test_a_file_option_the_server_cannot_use_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, complaint: str
) -> None:
    from meshproto_cli._app import main  # noqa: PLC0415

    mesh = SignedMesh.create(tmp_path, "alice")
    path = tmp_path / "missing" / "file"
    status = main(["mcp", "--config-dir", str(mesh.members["alice"].config_dir), option, str(path)])
    assert status == 1
    assert capsys.readouterr().err == f"meshproto: error: {complaint.format(path=path)}\n"
