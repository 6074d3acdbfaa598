"""What ``meshproto mcp`` makes of stdin that is not JSON-RPC: an error answer, never more.

A JSON-RPC server answers a line it cannot read with an error whose ``id``
is ``null`` (``-32700`` parse error, ``-32600`` invalid request; JSON-RPC 2.0
§5.1), and reads on: the next newline starts the next message. A line is
read up to :data:`~meshproto_cli._mcp_stdin.LINE_LIMIT` bytes and no further,
however long the client goes on without a newline; a line that is not UTF-8
(which MCP's stdio transport requires) is refused, not read with its bytes
replaced. Each test runs the server as a subprocess, bounded in time.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio_helpers import anyio_backend
from cli_helpers import TIMEOUT, Lines
from mcp_helpers import INITIALIZE_REQUEST, SignedMesh

from meshproto_cli._mcp_stdin import LINE_LIMIT, StdinLines

__all__ = ["anyio_backend"]  # the fixture: the reader runs on asyncio and trio

_INITIALIZE = INITIALIZE_REQUEST
_LIST_TOOLS = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}


def _line(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode() + b"\n"


class _Server:
    """``meshproto mcp`` in a subprocess: bytes in, JSON-RPC messages out, each awaited."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self.proc = proc
        self.stdin = proc.stdin
        self.out = Lines(io.TextIOWrapper(proc.stdout, encoding="utf-8"))
        self.seen = 0

    def send(self, data: bytes) -> None:
        self.stdin.write(data)
        self.stdin.flush()

    def next_message(self) -> dict[str, Any]:
        line = self.out.wait_for(r"^\{", start=self.seen)
        self.seen = self.out.lines.index(line, self.seen) + 1
        message: dict[str, Any] = json.loads(line)
        return message


@contextmanager
def _server(tmp_path: Path) -> Iterator[_Server]:
    mesh = SignedMesh.create(tmp_path, "alice")
    config = mesh.members["alice"].config_dir
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshproto_cli", "mcp", "--config-dir", str(config),
         "--url", "ws://127.0.0.1:1/ws"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        server = _Server(proc)
        server.send(_line(_INITIALIZE))
        assert server.next_message()["id"] == 1
        yield server
        proc.stdin.close()  # type: ignore[union-attr]
        assert proc.wait(timeout=TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=TIMEOUT)


def test_an_over_long_line_is_answered_with_a_parse_error_and_the_server_reads_on(
    tmp_path: Path,
) -> None:
    with _server(tmp_path) as server:
        # Once buffered without end: no answer came until a newline did, if ever.
        server.send(b'{"jsonrpc": "2.0", "id": 7, "method": "' + b"x" * (LINE_LIMIT + 1))
        refusal = server.next_message()  # before any newline
        assert refusal["id"] is None
        assert refusal["error"]["code"] == -32700
        assert refusal["error"]["message"] == (
            f"Parse error: the line is longer than {LINE_LIMIT} bytes (4 MiB), the most this "
            "server reads as one message; it was dropped up to its newline"
        )
        server.send(b"x" * LINE_LIMIT + b'"}\n' + _line(_LIST_TOOLS))
        assert server.next_message()["id"] == 2  # the end of the long line is no message


def test_a_line_that_is_not_utf8_is_answered_with_an_error_for_its_request(
    tmp_path: Path,
) -> None:
    with _server(tmp_path) as server:
        # Once read with U+FFFD for each bad byte, so that a message went out altered.
        server.send(b'{"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": '
                    b'{"cursor": "caf\xe9"}}\n')  # fmt: skip
        refusal = server.next_message()
        assert refusal["id"] == 2
        assert refusal["error"] == {
            "code": -32700,
            "message": "Parse error: the line is not UTF-8 text (invalid continuation byte at "
            "byte 77); MCP's stdio transport carries UTF-8 only",
        }


@pytest.mark.parametrize(
    ("line", "answer"),
    [
        (b"{oops\n", {"id": None, "error": {"code": -32700, "message": "Parse error: not JSON"}}),
        (
            b'{"jsonrpc": "2.0", "id": 3, "method": 5}\n',
            {"id": 3, "error": {"code": -32600, "message": "Invalid Request: not a JSON-RPC "
                                "2.0 request, notification or response"}},
        ),
    ],
    ids=["not json", "not json-rpc"],
)  # fmt: skip
def test_a_line_that_is_no_json_rpc_message_is_answered_with_an_error(
    tmp_path: Path, line: bytes, answer: dict[str, Any]
) -> None:
    with _server(tmp_path) as server:
        # Once dropped without a word: a client waiting on its request waited for ever.
        server.send(b"\n  \n" + line + _line(_LIST_TOOLS))  # blank lines are no messages
        assert server.next_message() == {"jsonrpc": "2.0", **answer}
        assert server.next_message()["id"] == 2


@pytest.mark.anyio
async def test_what_follows_the_limit_on_an_over_long_line_is_not_kept() -> None:
    read_end, write_end = os.pipe()
    stdin = StdinLines(read_end, limit=1000)

    def write() -> None:
        with os.fdopen(write_end, "wb") as out:
            out.write(b"x" * 1_000_000)  # a megabyte without a newline
            out.write(b"\n" + _line(_LIST_TOOLS))

    writer = threading.Thread(target=write)
    writer.start()
    try:
        with anyio.fail_after(TIMEOUT):
            first = await stdin.readline()
            assert stdin.refusal(first) is not None
            assert json.loads(await stdin.readline()) == _LIST_TOOLS
            assert stdin.most_buffered <= 1000 + StdinLines.CHUNK
            assert await stdin.readline() == ""  # the end
    finally:
        writer.join(TIMEOUT)
        os.close(read_end)
