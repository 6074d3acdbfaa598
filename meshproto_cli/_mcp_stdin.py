"""The MCP server's standard input, read as lines for the SDK's ``stdio_server``."""

from __future__ import annotations

import io
import os

import anyio
import anyio.lowlevel

__all__ = ["StdinLines"]


class StdinLines(anyio.AsyncFile[str]):
    """Standard input as lines for ``stdio_server``, read without a worker thread.

    The SDK reads stdin in a worker thread, and a cancellation has to wait for
    that thread: Ctrl-C or SIGTERM would not end a server whose client keeps
    stdin open. This waits for the descriptor to be readable instead, which a
    cancellation ends at once. (POSIX only; elsewhere the SDK reads stdin.)
    """

    def __init__(self, fd: int = 0) -> None:
        super().__init__(io.StringIO())  # only to be an AsyncFile; reads go to ``fd``
        self._fd = fd
        self._pending = b""
        self._eof = False

    async def readline(self) -> str:
        while b"\n" not in self._pending and not self._eof:
            try:
                await anyio.wait_readable(self._fd)
            except OSError:  # a regular file cannot be polled, and never blocks
                await anyio.lowlevel.checkpoint()
            chunk = os.read(self._fd, 65_536)
            self._eof = not chunk
            self._pending += chunk
        line, newline, self._pending = self._pending.partition(b"\n")
        return (line + newline).decode("utf-8", errors="replace")
