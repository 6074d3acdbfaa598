"""The ``meshproto`` command line: argument parsing, error handling, exit statuses.

Every error the user can act on is printed as one line, ``meshproto: error:
...`` (with ``--json``, also as one object on stdout), and the exit status
says what kind it was (:mod:`meshproto_cli._errors`: 0 done, 1 error, 2
usage, 3 outcome unknown, 124 timed out with nothing, 130 Ctrl-C, 143
SIGTERM). Nothing the user typed or the network sent ends in a traceback,
not even a Ctrl-C in the first moment, before the event loop runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ._arguments import (
    client_message_id,
    display_name,
    folder_id,
    group_name,
    member_names,
    mesh_name,
    utf8_text,
)
from ._errors import (
    BROKER_STATUS_HELP,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_STATUS_HELP,
    EXIT_TERMINATED,
    EXIT_TIMEOUT,
    CommandError,
    OutputFailed,
    Terminated,
    escape_what_stdout_cannot_encode,
    say,
    silence_stdout,
)

__all__ = ["build_parser", "main"]

_EXTRA_HINT = "pip install 'meshproto[all]'"
_TEXT_LOG = "%(levelname)s %(name)s: %(message)s"
_BROKER_TEXT_LOG = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _installed_version() -> str:
    from meshproto import __version__  # noqa: PLC0415 (the core imports nothing heavy)

    return __version__


# --- argument types ----------------------------------------------------------------------


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535 (0: any free one), got {value}")
    return value


def _positive(kind: type[int] | type[float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"not {'an integer' if kind is int else 'a number'}: {text!r}"
            ) from None
        if not 0 < value < float("inf"):  # also refuses nan
            raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


#: The shortest ``--retry-max``: below it a broker that is down gets thousands of attempts a second.
MIN_RETRY_MAX = 0.1


def _retry_max(text: str) -> float:
    value = _positive(float)(text)
    if value < MIN_RETRY_MAX:
        raise argparse.ArgumentTypeError(
            f"must be at least {MIN_RETRY_MAX:g} s (a shorter wait only hammers the broker), "
            f"got {text}"
        )
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


# --- the parser --------------------------------------------------------------------------


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's table as written."""


class _Subparser(argparse.ArgumentParser):
    """A subcommand's parser that adds its arguments only once it is used.

    Every subcommand's arguments are added when ``meshproto COMMAND ...``
    (or ``COMMAND --help``) is parsed: a run builds its own command's
    options, not all eight commands'. ``broker``'s limits, added last, take
    their defaults from :class:`~meshproto.BrokerOptions`, which keeps the
    reference broker out of every other command's imports.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deferred: list[Callable[[_Subparser], None]] = []

    def complete(self) -> None:
        """Add the deferred arguments now (parsing does it first)."""
        while self.deferred:
            self.deferred.pop(0)(self)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self.complete()
        return super().parse_known_args(args, namespace)


#: BrokerOptions fields the command sets: (field, what it is). The flag is the
#: field's name with dashes; the default is the field's, shown in --help.
BROKER_LIMITS: tuple[tuple[str, str], ...] = (
    ("max_connections_per_mesh", "presences per mesh, live or in their grace window"),
    ("rate_burst", "sends a member may make at once"),
    ("rate_per_minute", "how fast a member's allowance of sends refills"),
    ("grace", "seconds a presence outlives its socket, still listed and reattached silently"),
    ("store_ttl", "seconds an undelivered direct message is kept"),
    ("store_limit_per_member", "undelivered direct messages held per recipient member"),
    ("dedupe_ttl", "seconds a sender's client_message_id is remembered"),
    ("dedupe_limit_per_member", "client_message_ids remembered per sending member"),
    ("max_payload", "bytes of ciphertext, nonce and target one send may carry"),
    ("hard_frame_cap", "bytes of a text frame above which the socket is closed (1009)"),
    ("ping_interval", "seconds between pings to each socket"),
    ("liveness_timeout", "seconds of silence after which a socket is closed (1001)"),
    ("hello_timeout", "seconds a socket may stay open without an accepted hello"),
    ("skew", "seconds a hello's timestamp may be from the broker's clock"),
    ("presence_batch", "seconds system pushes wait to go out together (per 500 sockets)"),
    ("presence_batch_chars", "characters of system pushes a batch holds before it goes out"),
    ("push_window", "bytes of held messages in flight to one socket before a ping"),
)


def _add_output_options(parser: argparse.ArgumentParser, *, server: bool = False) -> None:
    """``-v``/``-q`` after the subcommand too (they do not override the ones before it)."""
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS,
        help="log debug lines too"
        if server
        else "say more: every connection attempt, details (-vv: debug log)",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS,
        help="log warnings and errors only" if server else "no connection-state lines; errors only",
    )


def _add_identity_options(parser: argparse.ArgumentParser, *, default_session: str) -> None:
    group = parser.add_argument_group("identity")
    group.add_argument(
        "--config-dir",
        metavar="DIR",
        help="claudemesh config dir (default: $CLAUDEMESH_CONFIG_DIR or ~/.claudemesh)",
    )
    group.add_argument(
        "--mesh", type=utf8_text, metavar="SLUG", help="which joined mesh (slug or id)"
    )
    group.add_argument(
        "--session",
        type=folder_id("session name"),
        metavar="NAME",
        help=f"session name; its key pair is kept, so every run is one peer ({default_session})",
    )
    group.add_argument("--name", type=display_name, metavar="NAME", help="display name to announce")
    group.add_argument(
        "--url", type=utf8_text, metavar="URL", help="broker URL (default: the mesh's brokerUrl)"
    )
    group.add_argument("--cafile", metavar="PEM", help="CA certificates for a wss:// broker")
    group.add_argument(
        "--retry-max",
        type=_retry_max,
        default=30.0,
        metavar="S",
        help="longest wait between reconnect attempts (default: %(default)g s)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The parser of the command line.

    Each subcommand's own arguments are added when that subcommand is parsed
    (:class:`_Subparser`), so a run builds the options of its command only;
    ``meshproto --help`` lists every command all the same.
    """
    parser = argparse.ArgumentParser(
        prog="meshproto",
        description="Join a mesh through a broker: send, listen, list peers, or run a broker.",
        epilog=EXIT_STATUS_HELP,
        formatter_class=_Formatter,
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="say more (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="errors only")
    parser.add_argument(
        "-V", "--version", action="version", version=f"meshproto {_installed_version()}"
    )
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_Subparser
    )

    def command(
        name: str,
        help_text: str,
        add: Callable[[_Subparser], None],
        epilog: str | None = EXIT_STATUS_HELP,
        *,
        server: bool = False,
    ) -> None:
        made = sub.add_parser(
            name, help=help_text, description=help_text, epilog=epilog, formatter_class=_Formatter
        )
        made.deferred += [lambda parser: _add_output_options(parser, server=server), add]

    command(
        "demo",
        "run a broker and three peers on this machine and show it all working",
        lambda demo: demo.set_defaults(run="demo"),
        None,
    )
    command("broker", "run the reference broker", _add_broker, BROKER_STATUS_HELP, server=True)
    command("send", "send one message and wait for the broker's ack", _add_send)
    command("listen", "print messages as they arrive", _add_listen)
    command("peers", "list the peers of the mesh", _add_peers)
    command("keygen", "create an ed25519 key pair (to register in a members file)", _add_keygen)
    command("mesh", "manage local meshes for the reference broker", _add_mesh, None)
    command(
        "mcp",
        "serve the joined meshes to an AI session: MCP tools and live messages on stdio",
        _add_mcp,
    )
    return parser


def _add_send(send: argparse.ArgumentParser) -> None:
    send.add_argument(
        "target",
        type=utf8_text,
        help="a peer's display name or pubkey, '*', '@all', '@group' or '#topic'",
    )
    send.add_argument("message", type=utf8_text, help="the text to send; '-' reads it from stdin")
    send.add_argument(
        "-p", "--priority", choices=("now", "next", "low"), default="next", help="(default: next)"
    )
    send.add_argument(
        "--timeout",
        type=_positive(float),
        default=20.0,
        metavar="S",
        help="give up after this many seconds, connecting included (default: %(default)g)",
    )
    send.add_argument(
        "--client-message-id",
        type=client_message_id,
        metavar="ID",
        help="retry an earlier send whose outcome was unknown, under its key (the receiver "
        "deduplicates on it, so the retry cannot deliver a second copy)",
    )
    send.add_argument("--json", action="store_true", help="print the outcome as one JSON object")
    _add_identity_options(send, default_session="default: a one-shot session of its own")
    send.set_defaults(run="send")


def _add_listen(listen: argparse.ArgumentParser) -> None:
    listen.add_argument(
        "--count", type=_count, default=0, metavar="N", help="stop after N messages"
    )
    listen.add_argument(
        "--timeout",
        type=_positive(float),
        default=None,
        metavar="S",
        help="stop after this many seconds (status 124 if nothing, or fewer than --count, came)",
    )
    listen.add_argument("--status", choices=("idle", "working", "dnd"), help="presence to set")
    listen.add_argument("--json", action="store_true", help="one JSON object per line")
    _add_identity_options(listen, default_session="default: listen")
    listen.set_defaults(run="listen")


def _add_peers(peers: argparse.ArgumentParser) -> None:
    peers.add_argument("--json", action="store_true", help="one JSON object per peer and line")
    peers.add_argument(
        "--timeout",
        type=_positive(float),
        default=20.0,
        metavar="S",
        help="give up after this many seconds (default: %(default)g)",
    )
    _add_identity_options(peers, default_session="default: a one-shot session of its own")
    peers.set_defaults(run="peers")


def _add_keygen(keygen: argparse.ArgumentParser) -> None:
    keygen.add_argument("--out", metavar="FILE", help="where (default: <config dir>/identity.json)")
    keygen.add_argument("--config-dir", metavar="DIR", help="claudemesh config dir")
    keygen.add_argument("--force", action="store_true", help="replace an existing file")
    keygen.add_argument("--json", action="store_true", help="print the result as one JSON object")
    keygen.set_defaults(run="keygen")


def _add_mesh(mesh: argparse.ArgumentParser) -> None:
    mesh_sub = mesh.add_subparsers(dest="mesh_command", metavar="ACTION", required=True)
    init = mesh_sub.add_parser(
        "init",
        help="create a mesh: a members file and a joined-mesh record per member",
        description="create a mesh: a members file and a joined-mesh record per member",
        epilog=EXIT_STATUS_HELP,
        formatter_class=_Formatter,
    )
    _add_output_options(init)
    init.add_argument(
        "--name",
        type=mesh_name,
        default="local mesh",
        help="the mesh's name (default: %(default)s)",
    )
    init.add_argument(
        "--members",
        type=member_names,
        required=True,
        metavar="A,B,...",
        help="member names, comma separated",
    )
    init.add_argument(
        "--group", type=group_name, action="append", metavar="NAME", help="put every member in it"
    )
    init.add_argument(
        "--broker-url",
        type=utf8_text,
        default="ws://127.0.0.1:7900/ws",
        help="(default: %(default)s)",
    )
    init.add_argument("--dir", default="mesh", help="output folder (default: %(default)s)")
    init.add_argument(
        "--force",
        action="store_true",
        help="replace an existing members file (each member's other meshes are kept)",
    )
    init.add_argument("--json", action="store_true", help="print the result as one JSON object")
    init.set_defaults(run="mesh-init")


def _add_mcp(mcp: argparse.ArgumentParser) -> None:
    mcp.add_argument("--config-dir", metavar="DIR", help="claudemesh config dir")
    mcp.add_argument(
        "--mesh",
        type=utf8_text,
        action="append",
        metavar="SLUG",
        help="join only this mesh (repeat for several)",
    )
    mcp.add_argument(
        "--session",
        type=folder_id("session name"),
        metavar="NAME",
        help="pin the session name (default: the first free of mcp-1, mcp-2, ...)",
    )
    mcp.add_argument("--name", type=display_name, metavar="NAME", help="display name to announce")
    mcp.add_argument(
        "--url",
        type=utf8_text,
        metavar="URL",
        help="broker URL for every mesh (default: brokerUrl)",
    )
    mcp.add_argument("--cafile", metavar="PEM", help="CA certificates for a wss:// broker")
    mcp.add_argument("--log-file", metavar="PATH", help="log here instead of to stderr")
    mcp.set_defaults(run="mcp")


def _add_broker(broker: _Subparser) -> None:
    broker.add_argument(
        "--host", type=utf8_text, default="127.0.0.1", help="address to bind (default: %(default)s)"
    )
    broker.add_argument(
        "--port", type=_port, default=7900, help="port, 0 for a free one (default: %(default)s)"
    )
    source = broker.add_mutually_exclusive_group()
    source.add_argument(
        "--mesh", dest="mesh_file", metavar="FILE", help="members file from 'meshproto mesh init'"
    )
    source.add_argument(
        "--open-mesh",
        type=folder_id("mesh id"),
        default="local",
        metavar="ID",
        help="without --mesh: admit any key that signs its hello into this mesh "
        "(default: %(default)s)",
    )
    broker.add_argument("--db", metavar="PATH", help="SQLite store, kept across restarts")
    broker.add_argument(
        "--sqlite-synchronous",
        choices=("normal", "full"),
        help="with --db: 'normal' survives a crash of the process, 'full' also a power cut "
        "(an fsync per commit, in a worker thread) (default: normal)",
    )
    broker.add_argument(
        "--tls-cert", metavar="PEM", help="serve wss:// with this certificate chain"
    )
    broker.add_argument(
        "--tls-key", metavar="PEM", help="its private key (if not in the --tls-cert file)"
    )
    broker.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="log lines on stderr as text or one JSON object each (default: %(default)s)",
    )
    broker.deferred.append(_add_broker_limits)
    broker.set_defaults(run="broker")


def _add_broker_limits(broker: argparse.ArgumentParser) -> None:
    from meshproto import BrokerOptions  # noqa: PLC0415 (only broker needs the broker)

    limits = broker.add_argument_group("limits (BrokerOptions)")
    defaults = BrokerOptions()
    kinds = {f.name: f.type for f in dataclasses.fields(BrokerOptions)}
    for name, what in BROKER_LIMITS:
        kind = int if kinds[name] in (int, "int") else float
        limits.add_argument(
            f"--{name.replace('_', '-')}",
            dest=f"limit_{name}",
            type=_positive(kind),
            default=getattr(defaults, name),
            metavar="S" if "seconds" in what else "N",
            help=f"{what} (default: %(default){'s' if kind is int else 'g'})",
        )


# --- running -----------------------------------------------------------------------------


def _command(name: str) -> Callable[[argparse.Namespace], int]:
    """Command ``name``, its modules imported (:class:`ImportError` for a missing extra).

    ``send`` and ``peers`` run in the main thread, on the blocking client:
    no event loop, so neither ``asyncio`` nor ``anyio`` is imported, and a
    Ctrl-C or SIGTERM (:func:`_terminate_cleanly`) raises where the command
    waits. Every other command runs under ``anyio.run``
    (:mod:`meshproto_cli._running`).
    """
    if name in ("send", "peers"):
        from . import _oneshot  # noqa: PLC0415 (needs the optional extras)

        return _oneshot.cmd_send if name == "send" else _oneshot.cmd_peers
    from ._running import loop_command  # noqa: PLC0415 (needs the optional extras)

    return loop_command(name)


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


@contextmanager
def _terminate_cleanly() -> Iterator[None]:
    """Until the event loop takes over, SIGTERM raises :class:`Terminated` (status 143)."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: leave the signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold a Ctrl-C back until the block ends, then raise ``KeyboardInterrupt``.

    For the imports: CPython marks a ``KeyboardInterrupt`` that escapes
    ``exec`` of a string (as ``dataclasses`` does for every class it makes)
    as unhandled, and then ends the process with SIGINT even after the
    command caught it; raised here, outside any import, it is an ordinary
    exception.
    """
    pending: list[int] = []

    def hold(signum: int, frame: object) -> None:
        pending.append(signum)

    try:
        previous = signal.signal(signal.SIGINT, hold)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        raise KeyboardInterrupt


def _interrupt_handled() -> None:
    """Tell CPython that the ``KeyboardInterrupt`` it saw was handled.

    A ``KeyboardInterrupt`` that escapes code run by ``exec`` of a string
    (``dataclasses`` and ``typing`` make methods that way, so any import can
    be such a place) leaves the interpreter marked as interrupted, and at
    exit it then kills itself with SIGINT whatever status the command chose.
    Running one more string clears that mark (each run starts by resetting
    it), so the command's own status, 130, is what the shell sees.
    """
    exec("None")  # a constant: the point is the run, not the code


def _loaded() -> None:
    """The command's modules have loaded: freeze what they made, collect garbage again.

    ``meshproto_cli.main`` turned the collector off for the imports.
    Everything made so far (modules, classes, functions: tens of thousands
    of objects) lives until exit, where the interpreter's final collections
    would walk all of it, only to free memory the system takes back anyway.
    Frozen, those objects are left out of every collection from now on, the
    ones at exit included; the command's own objects are collected as usual.
    """
    gc.freeze()
    gc.enable()


def _configure_logging(args: argparse.Namespace) -> None:
    verbose = 0 if getattr(args, "quiet", False) else getattr(args, "verbose", 0)
    if args.run == "broker":
        # A server logs its connections by default: INFO, -q WARNING, -v DEBUG.
        level = logging.WARNING if args.quiet else (logging.DEBUG if verbose else logging.INFO)
        text_format = _BROKER_TEXT_LOG
    else:
        level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
        text_format = _TEXT_LOG
    from ._logformat import JsonFormatter, TextFormatter  # noqa: PLC0415

    handler = logging.StreamHandler(sys.stderr)
    if getattr(args, "log_format", "text") == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter(text_format))
    logging.basicConfig(level=level, handlers=[handler])


#: The most of stdin ``send TARGET -`` reads: far more than a message may hold, and bounded.
_STDIN_MOST = 1 << 20


def _read_body(args: argparse.Namespace) -> None:
    """``send TARGET -``: the body is stdin (read before the event loop, so Ctrl-C works)."""
    if args.message != "-":
        if not args.message.strip("\r\n"):
            raise CommandError("nothing to send: the message is empty")
        args.body = args.message
        return
    if sys.stdin is None:  # `<&-`: Python has no stdin at all
        raise CommandError("nothing to send: stdin is closed")
    data = sys.stdin.buffer.read(_STDIN_MOST + 1)  # never to the end of /dev/zero
    if len(data) > _STDIN_MOST:
        from meshproto import MAX_FRAME_BYTES  # noqa: PLC0415 (loaded by now)

        raise CommandError(
            f"stdin holds more than {_STDIN_MOST >> 20} MiB; a message is at most "
            f"{MAX_FRAME_BYTES} bytes"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CommandError(f"stdin is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if text.endswith("\n"):  # what `echo` and here-documents add
        text = text[:-2] if text.endswith("\r\n") else text[:-1]
    if not text:
        raise CommandError("nothing to send: stdin was empty")
    args.body = text


def _check_usage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.run == "broker" and args.tls_key and not args.tls_cert:
        parser.error("--tls-key needs --tls-cert (without a certificate the broker serves ws://)")
    if args.run == "broker" and args.sqlite_synchronous and not args.db:
        parser.error("--sqlite-synchronous needs --db (without it the broker keeps nothing)")


def _say(text: str) -> None:
    say(text)


def _fail(args: argparse.Namespace | None, error: CommandError) -> int:
    if isinstance(error, OutputFailed):
        silence_stdout()
        if not error.broken_pipe:
            _say(f"meshproto: error: {error.message}")
        return error.status
    _say(f"meshproto: error: {error.message}")
    if args is not None and getattr(args, "json", False):
        from ._output import json_line  # noqa: PLC0415

        try:
            print(json_line(error.record()), flush=True)
        except OSError:  # the line on stderr has said it; the status says it too
            silence_stdout()
    return error.status


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status (see :mod:`meshproto_cli._errors`)."""
    escape_what_stdout_cannot_encode()
    try:
        with _terminate_cleanly():
            return _main(argv)
    except KeyboardInterrupt:
        _interrupt_handled()
        _say("interrupted")
        return EXIT_INTERRUPTED
    except Terminated:
        _say("terminated")
        return EXIT_TERMINATED


def _main(argv: Sequence[str] | None) -> int:
    with _interrupts_deferred():
        parser = build_parser()
    args = parser.parse_args(argv)
    _check_usage(parser, args)
    with _interrupts_deferred():
        _configure_logging(args)
        try:
            run = _command(args.run)
        except ImportError as exc:
            message = exc.msg if hasattr(exc, "msg") else str(exc)
            return _fail(args, CommandError(f"{message}; install with: {_EXTRA_HINT}"))
        from meshproto import MeshProtoError, RequestError  # noqa: PLC0415

        from ._files import FileProblem  # noqa: PLC0415
        from ._names import NameProblem  # noqa: PLC0415

    _loaded()
    try:
        if args.run == "send":
            _read_body(args)
        return run(args)
    except CommandError as exc:
        return _fail(args, exc)
    except FileProblem as exc:
        return _fail(args, CommandError(str(exc), code="file"))
    except NameProblem as exc:
        return _fail(args, CommandError(str(exc), code="no_such_peer"))
    except RequestError as exc:
        status = EXIT_TIMEOUT if exc.reason.code == "timeout" else EXIT_ERROR
        return _fail(args, CommandError(str(exc), code=exc.reason.code, status=status))
    except MeshProtoError as exc:
        return _fail(args, CommandError(str(exc)))
    except TimeoutError:
        timeout = getattr(args, "timeout", "?")
        return _fail(args, CommandError(f"timed out after {timeout} s", status=EXIT_TIMEOUT))
    except OSError as exc:
        if exc.filename is not None:  # a file or folder the command could not use
            why = f"cannot use {exc.filename}: {exc.strerror or exc}"
            return _fail(args, CommandError(why, code="file"))
        return _fail(args, CommandError(exc.strerror or str(exc)))
    except ValueError as exc:
        return _fail(args, CommandError(str(exc)))
