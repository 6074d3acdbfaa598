"""The ``meshproto`` command line: argument parsing and error handling.

Every error the user can act on is printed as one line, ``meshproto: error:
...``, with exit status 1 (2 for bad usage, as argparse does); Ctrl-C stops
cleanly with status 130. Nothing the user typed or the network sent ends in a
traceback.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence

__all__ = ["build_parser", "main"]

_EXTRA_HINT = "pip install 'meshproto[all]'"


def _installed_version() -> str:
    from meshproto import __version__  # noqa: PLC0415 (the core imports nothing heavy)

    return __version__


def _add_identity_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("identity")
    group.add_argument(
        "--config-dir",
        metavar="DIR",
        help="claudemesh config dir (default: $CLAUDEMESH_CONFIG_DIR or ~/.claudemesh)",
    )
    group.add_argument("--mesh", metavar="SLUG", help="which joined mesh (slug or id)")
    group.add_argument(
        "--session",
        default="meshproto",
        metavar="NAME",
        help="session name; its key pair is kept so reconnects are one peer (%(default)s)",
    )
    group.add_argument("--name", metavar="NAME", help="display name to announce")
    group.add_argument("--url", metavar="URL", help="broker URL (default: the mesh's brokerUrl)")
    group.add_argument("--cafile", metavar="PEM", help="CA certificates for a wss:// broker")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshproto",
        description="Join a mesh through a broker: send, listen, list peers, or run a broker.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv: debug)")
    parser.add_argument(
        "-V", "--version", action="version", version=f"meshproto {_installed_version()}"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser(
        "demo", help="run a broker and three peers on this machine and show it all working"
    )
    demo.set_defaults(run="demo")

    broker = sub.add_parser("broker", help="run the reference broker")
    broker.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: %(default)s)"
    )
    broker.add_argument("--port", type=int, default=7900, help="port (default: %(default)s)")
    source = broker.add_mutually_exclusive_group()
    source.add_argument(
        "--mesh", dest="mesh_file", metavar="FILE", help="members file from 'meshproto mesh init'"
    )
    source.add_argument(
        "--open-mesh",
        default="local",
        metavar="ID",
        help="without --mesh: admit any key that signs its hello into this mesh "
        "(default: %(default)s)",
    )
    broker.add_argument("--db", metavar="PATH", help="SQLite store, kept across restarts")
    broker.add_argument("--tls-cert", metavar="PEM", help="serve wss:// with this certificate")
    broker.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
    broker.set_defaults(run="broker")

    send = sub.add_parser("send", help="send one message and wait for the broker's ack")
    send.add_argument(
        "target", help="a peer's display name or pubkey, '*', '@all', '@group' or '#topic'"
    )
    send.add_argument("message", help="the text to send")
    send.add_argument("-p", "--priority", choices=("now", "next", "low"), default="next")
    send.add_argument("--timeout", type=float, default=20.0, help="give up after this many s")
    send.add_argument(
        "--client-message-id",
        metavar="ID",
        help="retry an earlier send whose outcome was unknown, under its key (the receiver "
        "deduplicates on it, so the retry cannot deliver a second copy)",
    )
    _add_identity_options(send)
    send.set_defaults(run="send")

    listen = sub.add_parser("listen", help="print messages as they arrive")
    listen.add_argument("--count", type=int, default=0, help="stop after this many messages")
    listen.add_argument("--timeout", type=float, default=None, help="stop after this many s")
    listen.add_argument("--status", choices=("idle", "working", "dnd"), help="presence to set")
    listen.add_argument("--json", action="store_true", help="one JSON object per line")
    _add_identity_options(listen)
    listen.set_defaults(run="listen")

    peers = sub.add_parser("peers", help="list the peers of the mesh")
    peers.add_argument("--json", action="store_true", help="print JSON")
    peers.add_argument("--timeout", type=float, default=20.0, help="give up after this many s")
    _add_identity_options(peers)
    peers.set_defaults(run="peers")

    keygen = sub.add_parser("keygen", help="create an ed25519 identity")
    keygen.add_argument("--out", metavar="FILE", help="where (default: <config dir>/identity.json)")
    keygen.add_argument("--config-dir", metavar="DIR", help="claudemesh config dir")
    keygen.add_argument("--force", action="store_true", help="replace an existing file")
    keygen.set_defaults(run="keygen")

    mesh = sub.add_parser("mesh", help="manage local meshes for the reference broker")
    mesh_sub = mesh.add_subparsers(dest="mesh_command", metavar="ACTION", required=True)
    init = mesh_sub.add_parser(
        "init", help="create a mesh: a members file and a joined-mesh record per member"
    )
    init.add_argument("--name", default="local mesh", help="the mesh's name")
    init.add_argument(
        "--members", required=True, metavar="A,B,...", help="member names, comma separated"
    )
    init.add_argument("--group", action="append", metavar="NAME", help="put every member in it")
    init.add_argument(
        "--broker-url", default="ws://127.0.0.1:7900/ws", help="(default: %(default)s)"
    )
    init.add_argument("--dir", default="mesh", help="output folder (default: %(default)s)")
    init.add_argument("--force", action="store_true", help="replace an existing members file")
    init.set_defaults(run="mesh-init")

    mcp = sub.add_parser(
        "mcp", help="serve the joined meshes to an AI session: MCP tools and live messages on stdio"
    )
    mcp.add_argument("--config-dir", metavar="DIR", help="claudemesh config dir")
    mcp.add_argument(
        "--mesh", action="append", metavar="SLUG", help="join only this mesh (repeat for several)"
    )
    mcp.add_argument(
        "--session",
        metavar="NAME",
        help="pin the session name (default: the first free of mcp-1, mcp-2, ...)",
    )
    mcp.add_argument("--name", metavar="NAME", help="display name to announce")
    mcp.add_argument("--url", metavar="URL", help="broker URL for every mesh (default: brokerUrl)")
    mcp.add_argument("--cafile", metavar="PEM", help="CA certificates for a wss:// broker")
    mcp.add_argument("--log-file", metavar="PATH", help="log here instead of to stderr")
    mcp.set_defaults(run="mcp")
    return parser


def _runner(name: str) -> Callable[[argparse.Namespace], Awaitable[int]]:
    from . import _commands  # noqa: PLC0415 (needs the optional extras)

    if name == "demo":
        from ._demo import run_demo  # noqa: PLC0415

        async def demo(_: argparse.Namespace) -> int:
            return await run_demo()

        return demo
    if name == "mcp":
        from ._mcp import cmd_mcp  # noqa: PLC0415 (needs the mcp extra)

        return cmd_mcp
    return {
        "broker": _commands.cmd_broker,
        "send": _commands.cmd_send,
        "listen": _commands.cmd_listen,
        "peers": _commands.cmd_peers,
        "keygen": _commands.cmd_keygen,
        "mesh-init": _commands.cmd_mesh_init,
    }[name]


async def _until_interrupted(
    runner: Callable[[argparse.Namespace], Awaitable[int]], args: argparse.Namespace
) -> int:
    """Run the command; SIGINT or SIGTERM cancels it and raises ``KeyboardInterrupt``.

    Handling the signals here, inside the event loop, makes Ctrl-C behave the
    same on asyncio and trio and on every Python (3.10's asyncio would
    otherwise surface it as a bare ``CancelledError``).
    """
    import anyio  # noqa: PLC0415 (needs the optional extras)

    outcome: list[int] = []
    failure: list[BaseException] = []
    interrupted = False
    async with anyio.create_task_group() as tasks:

        async def watch_signals() -> None:
            nonlocal interrupted
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    interrupted = True
                    tasks.cancel_scope.cancel()
                    return

        async def work() -> None:
            try:
                outcome.append(await runner(args))
            except Exception as exc:  # re-raised below, outside the task group
                failure.append(exc)
            tasks.cancel_scope.cancel()

        tasks.start_soon(watch_signals)
        tasks.start_soon(work)
    if interrupted:
        raise KeyboardInterrupt
    if failure:
        raise failure[0]
    return outcome[0]


def _fail(message: str, status: int = 1) -> int:
    print(f"meshproto: error: {message}", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        import anyio  # noqa: PLC0415

        runner = _runner(args.run)
    except ImportError as exc:
        return _fail(f"{exc.msg if hasattr(exc, 'msg') else exc}; install with: {_EXTRA_HINT}")
    from meshproto import MeshProtoError  # noqa: PLC0415

    from ._commands import CommandError  # noqa: PLC0415
    from ._files import FileProblem  # noqa: PLC0415

    try:
        return anyio.run(_until_interrupted, runner, args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (CommandError, FileProblem, MeshProtoError) as exc:
        return _fail(str(exc))
    except TimeoutError:
        return _fail(f"timed out after {getattr(args, 'timeout', '?')} s")
    except OSError as exc:
        return _fail(exc.strerror or str(exc))
    except ValueError as exc:
        return _fail(str(exc))
