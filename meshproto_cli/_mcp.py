"""``meshproto mcp``: the mesh as tools and live messages for an AI session.

Theory of operation
===================

One process serves one AI session over stdio. :class:`McpMesh`
(:mod:`._mcp_mesh`) is the mesh side: one anyio client per joined mesh (or
per ``--mesh``), each opening with a session hello as the session this
process holds (:mod:`._mcp_session`), kept for the life of the process; the
clients reconnect by themselves, re-send what was in flight under the same
``client_message_id``, and re-apply the status and summary after every
``hello_ack``. This module puts it behind one MCP connection on the official
SDK's low-level server, in one anyio event loop (asyncio or trio):
``tools/list`` answers :data:`._mcp_tools.TOOLS`, ``tools/call`` checks the
arguments and runs the tool, and a task turns every arrival into a
``notifications/claude/channel`` notification.

The connection is served in the handshake era (``initialize`` first), which
is what Claude Code speaks: the notifications need a connection that
outlives any one request, and :class:`~mcp.server.connection.Connection`
gives one, with ``initialized`` to wait for. A client that probes
``server/discover`` first gets an error and falls back to ``initialize``.

The delivery contract (docs/howto/mcp.md gives it to users):

* A notification announces a message; it acknowledges nothing. It is sent
  once the MCP client has said ``notifications/initialized`` (arrivals before
  that wait for it), unless ``check_messages`` returned the message first.
* ``check_messages`` takes every waiting message from the inboxes, oldest
  first, and that is when each is acknowledged to the broker (``client_ack``).
  Each message is returned once, notified or not.
* So the broker forgets a message only after a tool result carried it to
  the model. If the server stops first (killed, crashed, restarted), the
  broker still holds every direct message it pushed, and pushes it again at
  the next hello of that session; a restarted server takes its
  predecessor's session (the lease), so it gets them, and notifies and
  returns them again (deduplication lives in the process). Broadcasts are
  stored by no broker: one not yet returned is lost with the process.
* Each inbox holds up to 1,000 messages (``McpOptions.client``). A full
  inbox stops its client reading the socket (nothing is dropped: the broker
  holds direct messages back), and tool calls on that mesh are refused at
  once, saying to call ``check_messages`` first.

Every tool call ends in a result, never in an exception that ends the
server: a bad argument, an unknown peer, a broker that is down or a refused
hello is a result with ``isError: true`` and one line that says what to do.
The process's stdout carries nothing but the protocol: ``stdio_server``
points file descriptor 1 at stderr while it serves, and logs go to stderr
or ``--log-file``. Standard input is read without a worker thread, so that
Ctrl-C and SIGTERM end the server even while its client keeps stdin open,
one line at most 4 MiB, and a line that is no JSON-RPC message (not JSON,
not UTF-8, too long) is answered with a JSON-RPC error (:mod:`._mcp_stdin`).
"""

from __future__ import annotations

import argparse
import logging
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
from mcp import types
from mcp.server.connection import Connection
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.runner import serve_connection
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError
from mcp.shared.jsonrpc_dispatcher import JSONRPCDispatcher

from meshproto import __version__

from ._connecting import client_ssl
from ._errors import CommandError
from ._files import config_dir, load_joined_meshes, select_mesh
from ._identity import Identity, load_identity
from ._mcp_mesh import Arrival, McpMesh, McpOptions, Reply
from ._mcp_session import lease_session
from ._mcp_stdin import StdinLines, answer_bad_lines
from ._mcp_tools import (
    CHANNEL_CAPABILITY,
    CHANNEL_METHOD,
    INSTRUCTIONS,
    TOOLS,
    BadArgument,
    parse_arguments,
)

__all__ = [
    "Arrival",
    "McpMesh",
    "McpOptions",
    "Reply",
    "build_server",
    "cmd_mcp",
    "load_identities",
    "serve_mcp",
]

logger = logging.getLogger("meshproto.mcp")

_TOOL_NAMES = tuple(tool.name for tool in TOOLS)


# --- the MCP side ---------------------------------------------------------------------

_Context = ServerRequestContext[dict[str, Any], Any]


def build_server(mesh: McpMesh) -> Server[dict[str, Any]]:
    """The low-level MCP server whose tools are ``mesh``'s."""
    tools = [
        types.Tool(
            name=spec.name,
            description=spec.description,
            input_schema=spec.input_schema,
            output_schema=spec.output_schema,
        )
        for spec in TOOLS
    ]

    async def list_tools(
        ctx: _Context, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tools)

    async def call_tool(ctx: _Context, params: types.CallToolRequestParams) -> types.CallToolResult:
        name = params.name
        if name not in _TOOL_NAMES:
            raise MCPError(
                code=types.INVALID_PARAMS,
                message=f"Unknown tool: {name!r} (the tools are {', '.join(_TOOL_NAMES)})",
            )
        try:
            reply = await mesh.call(name, parse_arguments(name, params.arguments))
        except BadArgument as exc:
            reply = Reply(str(exc), is_error=True)
        except Exception as exc:  # a bug: it costs this call, never the server
            logger.exception("tool %s failed", name)
            reply = Reply(
                f"{name} failed inside meshproto mcp ({type(exc).__name__}: {exc}); the server "
                "keeps running, so try again (its log has the details)",
                is_error=True,
            )
        return reply.result()

    return Server(
        "meshproto",
        version=__version__,
        title="meshproto: claudemesh broker",
        instructions=INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


async def _push_arrivals(mesh: McpMesh, connection: Connection) -> None:
    """Send a channel notification for every arriving message, once the client is ready."""
    await connection.initialized.wait()
    while True:
        arrival = await mesh.next_arrival()
        if arrival.returned:
            continue
        await mesh.learn_sender(arrival)
        if arrival.returned:  # check_messages handed it over meanwhile
            continue
        await connection.notify(CHANNEL_METHOD, mesh.channel_params(arrival))
        arrival.notified = True


async def serve_mcp(
    mesh: McpMesh,
    read_stream: Any,
    write_stream: Any,
    stdin: StdinLines | None = None,
) -> None:
    """Serve one MCP connection over a stream pair until the client goes away.

    ``read_stream`` and ``write_stream`` are the SDK's ``SessionMessage``
    streams (from ``stdio_server()``, or the in-memory pair in tests).
    ``mesh`` must be running. A line that is no JSON-RPC message is answered
    with an error (``stdin``, if given, is the file whose refused lines are
    answered with its reasons: :mod:`._mcp_stdin`).
    """
    server = build_server(mesh)
    options = server.create_initialization_options(
        experimental_capabilities={CHANNEL_CAPABILITY: {}}
    )
    dispatcher: JSONRPCDispatcher[Any] = JSONRPCDispatcher(
        read_stream,
        write_stream,
        # The handshake is handled in the read loop, so that a request the
        # client pipelines right behind it sees an initialized connection.
        inline_methods=frozenset({"initialize"}),
        on_stream_exception=answer_bad_lines(write_stream, stdin),
    )
    connection = Connection.for_loop(dispatcher)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(_push_arrivals, mesh, connection)
        await serve_connection(
            server, dispatcher, connection=connection, lifespan_state={}, init_options=options
        )
        tasks.cancel_scope.cancel()


# --- the command ----------------------------------------------------------------------


def load_identities(directory: Path, wanted: Sequence[str] | None, session: str) -> list[Identity]:
    """One identity per mesh to join: every joined mesh, or those named (slug or id)."""
    meshes = load_joined_meshes(directory)
    if not meshes:
        select_mesh(meshes, None, directory)  # raises the "no joined mesh" problem
    chosen = [select_mesh(meshes, name, directory) for name in wanted] if wanted else meshes
    seen: set[str] = set()
    identities = []
    for mesh in chosen:
        if mesh.mesh_id not in seen:
            seen.add(mesh.mesh_id)
            identities.append(load_identity(directory, mesh.mesh_id, session))
    return identities


def _log_to_file(path: str) -> None:
    """Send every log record to ``path`` instead of stderr."""
    root = logging.getLogger()
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)


def _stdio_failure(error: BaseException) -> OSError | None:
    """The ``OSError`` of stdin or stdout that ended the server, if that is what did."""
    if isinstance(error, OSError):
        return error
    for inner in getattr(error, "exceptions", ()):
        found = _stdio_failure(inner)
        if found is not None:
            return found
    return None


def _check_stdio() -> None:
    """Refuse to start without a stdin and a stdout (``<&-``, ``>&-``): there is no client."""
    for name, stream in (("stdin", sys.stdin), ("stdout", sys.stdout)):
        if stream is None:
            raise CommandError(
                f"{name} is closed: meshproto mcp speaks MCP on its stdin and stdout, as an "
                "MCP client runs it"
            )


async def cmd_mcp(args: argparse.Namespace) -> int:
    """``meshproto mcp``: serve the joined meshes to one AI session over stdio.

    It ends with status 0 when the client goes away: stdin reaches its end,
    or stdout's reader closes it. Any other failure of stdin or stdout (a
    full disk) is one error line.
    """
    _check_stdio()
    directory = config_dir(args.config_dir)
    if args.log_file:
        try:
            _log_to_file(args.log_file)
        except OSError as exc:
            raise CommandError(f"cannot write --log-file {args.log_file}: {exc.strerror}") from None
    ssl_context = client_ssl(args)
    try:
        return await _serve(args, directory, ssl_context)
    except Exception as exc:
        failure = _stdio_failure(exc)
        if failure is None:
            raise
        if isinstance(failure, BrokenPipeError):
            logger.info("the client closed the server's stdout: it has gone")
            return 0
        why = failure.strerror or str(failure)
        raise CommandError(f"cannot serve MCP on stdin and stdout: {why}") from None


async def _serve(
    args: argparse.Namespace, directory: Path, ssl_context: ssl.SSLContext | None
) -> int:
    with lease_session(directory, args.session) as lease:
        identities = load_identities(directory, args.mesh, lease.name)
        mesh = McpMesh(identities, url=args.url, display_name=args.name, ssl_context=ssl_context)
        labels = ", ".join(f"{link.label} ({link.url})" for link in mesh.links)
        print(
            f"meshproto mcp: session {lease.name} on {labels}; serving MCP over stdio",
            file=sys.stderr,
            flush=True,
        )
        stdin = None if sys.platform == "win32" else StdinLines()
        async with mesh.running(), stdio_server(stdin=stdin) as (read_stream, write_stream):
            await serve_mcp(mesh, read_stream, write_stream, stdin)
    return 0
