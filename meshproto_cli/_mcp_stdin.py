"""The MCP server's standard input: lines for the SDK's ``stdio_server``, bounded and checked.

MCP's stdio transport is one JSON-RPC message per line, in UTF-8. The SDK
reads stdin with a text wrapper that keeps a line until its newline, however
long (a client that never sends one grows the server without end), and
replaces bytes that are not UTF-8 with U+FFFD (so a message would go out
altered). :class:`StdinLines` is the file the SDK reads instead:

* A line is at most :data:`LINE_LIMIT` bytes, 4 MiB. The largest message a
  tool call carries is a body of 64 KiB (``meshproto.MAX_FRAME_BYTES``),
  at most 6 times that once JSON escapes every character (``\\u0001``):
  384 KiB. 4 MiB is ten times as much, and small enough for any machine.
  Once a line passes it, the client is answered at once, and the rest of
  that line is read and dropped as it comes, up to its newline, where the
  next message starts.
* A line that is not UTF-8 is refused as it is; a line that is only white
  space is no message, and is skipped.

A refused line reaches the SDK as a *refusal marker*, a line no JSON parser
takes, so the SDK hands its parse error to the dispatcher's
``on_stream_exception``; :func:`answer_bad_lines` makes that observer, which
answers every line that is no JSON-RPC message as JSON-RPC 2.0 (§5.1) says:
``-32700`` (parse error) or ``-32600`` (invalid request), with the request's
``id`` where one can be read, else ``null``. The server then reads on.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
from mcp import types
from mcp.shared.message import SessionMessage
from pydantic import ValidationError

__all__ = ["LINE_LIMIT", "StdinLines", "answer_bad_lines"]

logger = logging.getLogger("meshproto.mcp")

#: The longest line read as one message (see the module docstring for why 4 MiB).
LINE_LIMIT = 4 * 1024 * 1024
_MARK = "\x00meshproto refused line "


class StdinLines(anyio.AsyncFile[str]):
    """Standard input as lines for ``stdio_server``, read without a worker thread.

    The SDK reads stdin in a worker thread, and a cancellation has to wait for
    that thread: Ctrl-C or SIGTERM would not end a server whose client keeps
    stdin open. This waits for the descriptor to be readable instead, which a
    cancellation ends at once. (POSIX only; elsewhere the SDK reads stdin.)
    Lines are bounded and checked as the module docstring says.
    """

    #: How much one read takes.
    CHUNK = 65_536

    def __init__(self, fd: int = 0, *, limit: int = LINE_LIMIT) -> None:
        super().__init__(io.StringIO())  # only to be an AsyncFile; reads go to ``fd``
        self._fd = fd
        self.limit = limit
        self._pending = b""
        self._scanned = 0  # how much of ``_pending`` is known to hold no newline
        self._eof = False
        self._dropping = False  # inside an over-long line, up to its newline
        self._serials = itertools.count(1)
        self._refusals: dict[str, tuple[str, Any]] = {}
        #: The most that was ever held at once (for tests: it stays near ``limit``).
        self.most_buffered = 0

    def refusal(self, line: str) -> tuple[str, Any] | None:
        """The (reason, request id) of a refusal marker :meth:`readline` returned, once."""
        return self._refusals.pop(line, None)

    def _refuse(self, reason: str, request_id: Any = None) -> str:
        marker = f"{_MARK}{next(self._serials)}\n"
        self._refusals[marker] = (reason, request_id)
        return marker

    async def _read(self) -> None:
        try:
            await anyio.wait_readable(self._fd)
        except OSError:  # a regular file cannot be polled, and never blocks
            await anyio.lowlevel.checkpoint()
        chunk = os.read(self._fd, self.CHUNK)
        self._eof = not chunk
        self._pending += chunk
        self.most_buffered = max(self.most_buffered, len(self._pending))

    async def readline(self) -> str:
        while True:
            newline = self._pending.find(b"\n", self._scanned)
            if newline < 0:
                if self._dropping:
                    self._pending = b""  # what follows the limit is never kept
                elif len(self._pending) > self.limit:
                    self._pending, self._scanned, self._dropping = b"", 0, True
                    return self._refuse(
                        f"the line is longer than {self.limit} bytes "
                        f"({self.limit / 1048576:g} MiB), the most this server reads as one "
                        "message; it was dropped up to its newline"
                    )
                self._scanned = len(self._pending)
                if self._eof:
                    line, self._pending, self._scanned = self._pending, b"", 0
                    return "" if self._dropping or not line.strip() else self._decoded(line)
                await self._read()
                continue
            line = self._pending[: newline + 1]
            self._pending, self._scanned = self._pending[newline + 1 :], 0
            if self._dropping:
                self._dropping = False  # the end of an over-long line: no message
                continue
            if len(line) > self.limit + 1:
                return self._refuse(
                    f"the line is longer than {self.limit} bytes "
                    f"({self.limit / 1048576:g} MiB), the most this server reads as one message"
                )
            if line.strip():  # a line of white space only is no message
                return self._decoded(line)

    def _decoded(self, line: bytes) -> str:
        try:
            return line.decode("utf-8")
        except UnicodeDecodeError as exc:
            return self._refuse(
                f"the line is not UTF-8 text ({exc.reason} at byte {exc.start}); MCP's stdio "
                "transport carries UTF-8 only",
                _request_id(line.decode("utf-8", "replace")),
            )


def _request_id(text: str) -> Any:
    """The ``id`` of the request ``text`` holds, if it can be read."""
    try:
        return _id_of(json.loads(text))
    except (ValueError, RecursionError):
        return None


def _id_of(message: object) -> Any:
    """The ``id`` of a decoded message, if it has one a response may carry (string, integer)."""
    request_id = message.get("id") if isinstance(message, dict) else None
    if isinstance(request_id, str) or (
        isinstance(request_id, int) and not isinstance(request_id, bool)
    ):
        return request_id
    return None


def _answer(error: Exception, stdin: StdinLines | None) -> types.JSONRPCError:
    """The JSON-RPC error that answers the line ``error`` was raised for."""
    code, message, request_id = types.PARSE_ERROR, "Parse error: not JSON", None
    if isinstance(error, ValidationError):
        problems = error.errors()
        text = problems[0].get("input") if problems else None
        refused = stdin.refusal(text) if stdin is not None and isinstance(text, str) else None
        if refused is not None:
            reason, request_id = refused
            message = f"Parse error: {reason}"
        elif not any(problem["type"] == "json_invalid" for problem in problems):
            code = types.INVALID_REQUEST
            message = "Invalid Request: not a JSON-RPC 2.0 request, notification or response"
            # Each problem holds the part it is about; the message itself is among them.
            ids = (_id_of(problem.get("input")) for problem in problems)
            request_id = next((found for found in ids if found is not None), None)
    return types.JSONRPCError(
        jsonrpc="2.0", id=request_id, error=types.ErrorData(code=code, message=message)
    )


def answer_bad_lines(
    write_stream: Any, stdin: StdinLines | None
) -> Callable[[Exception], Awaitable[None]]:
    """The dispatcher's ``on_stream_exception``: answer a line that is no message, read on."""

    async def answer(error: Exception) -> None:
        reply = _answer(error, stdin)
        logger.warning("the MCP client sent a line that is no message: %s", reply.error.message)
        await write_stream.send(SessionMessage(reply))

    return answer
