"""``meshproto broker``: the reference broker from the command line.

Everything that can go wrong before it serves is one line and status 1: a
port in use, an address it cannot bind or resolve, a ``--db`` in a missing
folder, a folder, or a file that is not a SQLite database, a certificate
that will not load (``--tls-key`` without ``--tls-cert`` is a usage error,
status 2, rather than a silent ``ws://``). Ctrl-C or SIGTERM closes every
client's socket with 1001 (:meth:`~meshproto_anyio.BrokerServer.aclose`),
so clients hear that the broker went away and reconnect to the next one.
Each connect, refusal and disconnect is one INFO log line
(:mod:`meshproto_cli._brokerlog`).
"""

from __future__ import annotations

import argparse
import errno
import logging
import socket
import sqlite3
import ssl
from pathlib import Path

import anyio

from meshproto import BrokerOptions, LocalProtocolError, StaticRegistry
from meshproto_anyio import running_broker
from meshproto_anyio.sqlite_store import SqliteStore
from meshproto_crypto import Ed25519Verifier
from meshproto_ws import PooledSystemRandom

from ._brokerlog import LoggingBroker
from ._errors import CommandError, silence_stdout
from ._registry import FileRegistry

__all__ = ["broker_options", "cmd_broker", "open_store"]

logger = logging.getLogger("meshproto.cli.broker")

_LISTEN_HINTS = {
    errno.EADDRINUSE: "something listens there already (another broker?); --port 0 picks one",
    errno.EACCES: "not allowed (ports below 1024 need privileges)",
    errno.EADDRNOTAVAIL: "that is not an address of this machine",
}


def broker_options(args: argparse.Namespace) -> BrokerOptions:
    """The ``BrokerOptions`` of ``--rate-burst`` and the other limits."""
    from ._app import BROKER_LIMITS  # noqa: PLC0415 (one table, kept beside the parser)

    values = {name: getattr(args, f"limit_{name}") for name, _ in BROKER_LIMITS}
    try:
        return BrokerOptions(**values)
    except LocalProtocolError as exc:
        raise CommandError(str(exc)) from None


def open_store(args: argparse.Namespace) -> SqliteStore:
    """The SQLite store of ``--db`` and ``--sqlite-synchronous``; a problem is one line."""
    path = Path(args.db)
    synchronous = args.sqlite_synchronous or "normal"
    if path.is_dir():
        raise CommandError(f"--db {path} is a folder; name a file, such as {path / 'broker.db'}")
    if not path.parent.is_dir():
        raise CommandError(f"--db {path}: the folder {path.parent} does not exist")
    try:
        return SqliteStore(path, synchronous=synchronous)
    except sqlite3.OperationalError as exc:
        raise CommandError(f"cannot open --db {path}: {exc}") from None
    except sqlite3.DatabaseError as exc:
        raise CommandError(f"--db {path} is not a SQLite database ({exc})") from None
    except ValueError as exc:  # a newer, incompatible schema
        raise CommandError(f"cannot use --db {path}: {exc}") from None


def _server_ssl(args: argparse.Namespace) -> ssl.SSLContext | None:
    cert, key = args.tls_cert, args.tls_key
    if not cert:
        return None
    for path in (cert, key):
        if path and not Path(path).is_file():
            raise CommandError(f"cannot read {path}: no such file")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        why = exc.reason or str(exc)
        if key is None:
            raise CommandError(
                f"cannot load --tls-cert {cert}: it holds no private key, or is not PEM "
                f"({why}); pass the key with --tls-key"
            ) from None
        raise CommandError(
            f"cannot load --tls-cert {cert} with --tls-key {key}: not PEM, or the key is not "
            f"the certificate's ({why})"
        ) from None
    except OSError as exc:
        raise CommandError(f"cannot read the certificate: {exc.strerror or exc}") from None
    return context


def _os_error(exc: BaseException) -> OSError | None:
    """The one ``OSError`` inside ``exc`` (which may be an exception group), if any."""
    if isinstance(exc, OSError):
        return exc
    inner = getattr(exc, "exceptions", None)
    if isinstance(inner, tuple) and len(inner) == 1:
        return _os_error(inner[0])
    return None


def _listen_problem(exc: OSError, host: str, port: int) -> CommandError:
    where = f"{host}:{port}"
    if isinstance(exc, socket.gaierror):
        return CommandError(f"cannot listen on {where}: {host!r} does not resolve ({exc.strerror})")
    number = exc.errno if exc.errno is not None else 0
    why = exc.strerror or str(exc)
    hint = _LISTEN_HINTS.get(number)
    return CommandError(f"cannot listen on {where}: {why}" + (f"; {hint}" if hint else ""))


def _announce(*lines: str) -> None:
    """Say where the broker serves, on stdout; a stdout that fails does not stop it.

    ``meshproto broker --port 0 | head -1`` reads the URL and goes: the
    lines after it find the pipe closed, and the broker serves on.
    """
    for line in lines:
        try:
            print(line, flush=True)
        except OSError as exc:
            logger.warning("cannot write to stdout (%s); serving all the same", exc.strerror)
            silence_stdout()
            return


async def cmd_broker(args: argparse.Namespace) -> int:
    registry: FileRegistry | StaticRegistry
    if args.mesh_file:
        file_registry = FileRegistry(Path(args.mesh_file))
        registry = file_registry
        mesh_note = f"mesh {file_registry.mesh_id} from {args.mesh_file}"
    else:
        registry = StaticRegistry(open_mesh=args.open_mesh)
        mesh_note = f"open mesh {args.open_mesh!r}: any key that signs its hello may join"
    options = broker_options(args)
    ssl_context = _server_ssl(args)
    store = open_store(args) if args.db else None
    try:
        broker = LoggingBroker(
            registry,
            verifier=Ed25519Verifier(),
            store=store,
            rng=PooledSystemRandom(),
            options=options,
        )
        started = False
        try:
            async with running_broker(
                broker, host=args.host, port=args.port, ssl_context=ssl_context
            ) as server:
                started = True
                _announce(
                    f"meshproto broker listening on {server.url}",
                    f"  {mesh_note}",
                    f"  store: {args.db or 'in memory (lost on exit)'}",
                )
                stop = getattr(args, "stop_requested", None)
                try:
                    if stop is None:
                        await anyio.sleep_forever()
                    else:
                        await stop.wait()  # the first Ctrl-C or SIGTERM
                finally:
                    logger.info(
                        "stop: closing the %d connections with 1001",
                        server.socket_count,
                        extra={"fields": {"event": "stop", "connections": server.socket_count}},
                    )
        except BaseException as exc:
            problem = None if started else _os_error(exc)
            if problem is None:
                raise
            raise _listen_problem(problem, args.host, args.port) from None
    finally:
        if store is not None:
            store.close()
    return 0
