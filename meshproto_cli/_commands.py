"""The subcommands that run on the event loop: listen, keygen, mesh init.

Each is an ``async`` function of parsed arguments that returns an exit
status. Problems the user can fix raise :class:`CommandError` (or one of
its kinds in :mod:`meshproto_cli._errors`, which carry their exit status);
the entry point prints it as one line and exits with that status.

``listen`` runs on the anyio client: it waits on messages, system pushes
and the peer list at once. It acknowledges each message to the broker only
after its line is printed and flushed, so a message it could not print
(stdout closed or full, the command stopped) is delivered again to the
next ``listen``. The one-shot ``send`` and ``peers`` need none of
that and run on the blocking client (:mod:`meshproto_cli._oneshot`); all
three connect the same way (:mod:`meshproto_cli._connecting`): the identity
and session of :func:`~meshproto_cli._identity.command_identity`, a
:class:`~meshproto_cli._status.ConnectionReporter` on stderr, a reconnect
backoff capped at ``--retry-max``, and a refusal reported as
:class:`~meshproto_cli._errors.Refused` (status 1).
"""

from __future__ import annotations

import argparse
import logging
import secrets
import string
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from meshproto import (
    ConnectionState,
    Event,
    HandshakeComplete,
    LocalProtocolError,
    MessageReceived,
    RequestError,
    UnreadableMessage,
)
from meshproto_anyio import Client, connect
from meshproto_crypto import KeyPair
from meshproto_ws import parse_ws_url

from ._connecting import (
    client_options,
    client_ssl,
    new_reporter,
    print_line,
    refused,
    stderr_line,
    verbosity,
)
from ._errors import CommandError, TimedOut
from ._files import (
    FileProblem,
    JoinedMesh,
    MemberRow,
    MembersFile,
    config_dir,
    load_joined_meshes,
    load_members_file,
    merge_joined_mesh,
    save_members_file,
    write_private_json,
)
from ._formats import MessageFormat
from ._identity import Identity, command_identity
from ._output import Style, json_line
from ._roster import Roster
from ._status import SLOW_CONNECT, ConnectionReporter

__all__ = ["CommandError", "cmd_keygen", "cmd_listen", "cmd_mesh_init"]

logger = logging.getLogger("meshproto.cli")
_BASE62 = string.ascii_letters + string.digits
#: How often, at most, ``listen`` asks for the peer list to name an unknown sender.
_ROSTER_RETRY = 5.0


def _new_id() -> str:
    return "".join(secrets.choice(_BASE62) for _ in range(32))


def _now_iso() -> str:
    from datetime import datetime, timezone  # noqa: PLC0415 (mesh init only: not at start)

    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- connecting ------------------------------------------------------------------------


@asynccontextmanager
async def _connected(
    args: argparse.Namespace,
    identity: Identity,
    *,
    suffix: str,
    also: Callable[[Event], None],
) -> AsyncIterator[tuple[Client, ConnectionReporter]]:
    """A client of ``identity`` that takes messages, its connection state reported on stderr."""
    kwargs = identity.connect_kwargs(args.url, args.name)
    reporter = new_reporter(args, identity, kwargs["url"], announce=True, suffix=suffix)

    def on_event(event: Event) -> None:
        reporter.on_event(event)
        also(event)

    async with connect(
        **kwargs,
        ssl_context=client_ssl(args),
        options=client_options(args, accept_messages=True),
        on_event=on_event,
    ) as client:
        yield client, reporter


async def _wait_open(client: Client, reporter: ConnectionReporter) -> None:
    """Wait for the broker's ``hello_ack``; say so after a second; a refusal raises."""
    with anyio.move_on_after(SLOW_CONNECT) as scope:
        state = await client.wait_state(ConnectionState.OPEN, ConnectionState.CLOSED)
    if scope.cancelled_caught:
        reporter.still_connecting()
        state = await client.wait_state(ConnectionState.OPEN, ConnectionState.CLOSED)
    if state is ConnectionState.CLOSED:
        assert reporter.closed is not None
        raise refused(reporter.closed)


# --- listen ----------------------------------------------------------------------------


def _stop_on_signal(args: argparse.Namespace, scope: anyio.CancelScope) -> None:
    """End ``scope`` at the first Ctrl-C or SIGTERM (``_running.StopRequest``)."""
    stop = getattr(args, "stop_requested", None)
    if stop is not None:
        stop.watch(scope)


async def _refresh_roster(client: Client, roster: Roster) -> None:
    """Ask for the peer list (bounded); a failure only leaves names unknown."""
    roster.refreshed_at = anyio.current_time()
    if client.state is not ConnectionState.OPEN:
        return
    with anyio.move_on_after(_ROSTER_RETRY):
        try:
            roster.update(await client.list_peers())
        except RequestError as exc:
            logger.info("could not list the peers to name senders: %s", exc)


async def _know_sender(
    client: Client, roster: Roster, message: MessageReceived | UnreadableMessage
) -> None:
    if message.push.sender_name:
        return
    last = roster.refreshed_at
    unknown = not roster.knows(message.sender_pubkey) and (
        last is None or anyio.current_time() - last >= _ROSTER_RETRY
    )
    if roster.stale or unknown:
        await _refresh_roster(client, roster)


async def _follow_system_messages(
    client: Client, roster: Roster, formats: MessageFormat, *, show: bool, as_json: bool
) -> None:
    async for system in client.system_messages():
        roster.note(system)
        if show:
            print_line(
                json_line(formats.system_record(system)) if as_json else formats.system_line(system)
            )


async def cmd_listen(args: argparse.Namespace) -> int:
    directory = config_dir(args.config_dir)
    with command_identity(directory, args.mesh, command="listen", session=args.session) as identity:
        roster = Roster()
        style = Style(False) if args.json else Style.for_stream(sys.stdout)
        formats = MessageFormat(identity.mesh.slug, identity.mesh.mesh_id, roster, style)
        received = 0

        def on_event(event: Event) -> None:
            if isinstance(event, HandshakeComplete):
                roster.stale = True  # pushes may have been missed while away

        async with _connected(
            args, identity, suffix="listening (Ctrl-C to stop)", also=on_event
        ) as (client, reporter):
            if args.status:
                await client.set_status(args.status)
            with anyio.move_on_after(args.timeout) as timer, anyio.CancelScope() as listening:
                _stop_on_signal(args, listening)
                await _wait_open(client, reporter)
                await _refresh_roster(client, roster)
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(
                        lambda: _follow_system_messages(
                            client, roster, formats, show=verbosity(args) >= 2, as_json=args.json
                        )
                    )
                    # Acknowledged once printed: a message whose line could not be
                    # written stays with the broker, for the next listen.
                    async for message in client.messages(acknowledge=False):
                        await _know_sender(client, roster, message)
                        print_line(
                            json_line(formats.record(message))
                            if args.json
                            else formats.line(message)
                        )
                        await client.acknowledge(message)
                        received += 1
                        if args.count and received >= args.count:
                            break
                    tasks.cancel_scope.cancel()
            if reporter.closed is not None:
                raise refused(reporter.closed)
        if timer.cancelled_caught and (received == 0 or received < args.count):
            if not reporter.connections:
                raise TimedOut(reporter.timeout_message(args.timeout, "a message"))
            wanted = f"{received} of {args.count} messages" if args.count else "no message"
            raise TimedOut(f"{wanted} within --timeout {args.timeout:g} s", received=received)
    return 0


# --- identities --------------------------------------------------------------------------


async def cmd_keygen(args: argparse.Namespace) -> int:
    path = Path(args.out) if args.out else config_dir(args.config_dir) / "identity.json"
    if path.is_dir():
        raise CommandError(f"--out {path} is a folder; name a file, such as {path / 'me.json'}")
    if path.exists() and not args.force:
        raise CommandError(f"{path} exists; pass --force to replace it")
    keys = KeyPair.generate()
    write_private_json(path, {"pubkey": keys.pubkey, "secretKey": keys.secret_key})
    if args.json:
        print_line(json_line({"type": "key", "pubkey": keys.pubkey, "path": str(path)}))
    else:
        print_line(keys.pubkey)
    stderr_line(
        f"secret key written to {path} (mode 0600). No other subcommand reads it: put the "
        "pubkey in a row of a members file, or both keys in a joined-mesh record "
        "(docs/howto/command.md, 'keygen')"
    )
    return 0


async def cmd_mesh_init(args: argparse.Namespace) -> int:
    try:
        parse_ws_url(args.broker_url)  # every member would fail to connect to it
    except LocalProtocolError as exc:
        raise CommandError(f"--broker-url: {exc}") from None
    names: list[str] = args.members  # distinct, each a name and a folder (_arguments)
    directory = Path(args.dir)
    members_path = directory / "members.json"
    replaces: frozenset[str] = frozenset()
    if members_path.exists():
        if not args.force:
            raise CommandError(f"{members_path} exists; pass --force to replace it")
        try:
            replaces = frozenset({load_members_file(members_path).mesh_id})
        except FileProblem:
            replaces = frozenset()  # a broken members file: its mesh is not known
    mesh_id = _new_id()
    slug = args.name.lower().replace(" ", "-")
    records = []
    for name in names:
        keys = KeyPair.generate()
        record = JoinedMesh(
            mesh_id, _new_id(), slug, args.name, keys.pubkey, keys.secret_key,
            args.broker_url, _now_iso(),
        )  # fmt: skip
        records.append((name, record))
    # Check every member's config first, so that a problem writes nothing.
    for name, _ in records:
        for mesh in load_joined_meshes(directory / name):
            if mesh.slug == slug and mesh.mesh_id not in replaces:
                raise CommandError(
                    f"{directory / name / 'config.json'} already has a mesh called {slug!r} "
                    f"({mesh.mesh_id}); choose another --name, or remove that record"
                )
    for name, record in records:
        merge_joined_mesh(directory / name, record, replaces=replaces)
    rows = tuple(
        MemberRow(record.member_id, record.pubkey, name, tuple(args.group or ()))
        for name, record in records
    )
    save_members_file(members_path, MembersFile(mesh_id, args.name, rows))
    if args.json:
        print_line(_mesh_record(args, slug, members_path, directory, records))
        return 0
    print_line(f"mesh {args.name!r} ({mesh_id}) with {len(rows)} members")
    print_line(f"  members file: {members_path}")
    for name in names:
        print_line(f"  {name}: CLAUDEMESH_CONFIG_DIR={directory / name}")
    print_line(f"serve it with: meshproto broker --mesh {members_path}")
    return 0


def _mesh_record(
    args: argparse.Namespace,
    slug: str,
    members_path: Path,
    directory: Path,
    records: list[tuple[str, JoinedMesh]],
) -> str:
    record: dict[str, Any] = {
        "type": "mesh",
        "meshId": records[0][1].mesh_id,
        "name": args.name,
        "slug": slug,
        "brokerUrl": args.broker_url,
        "membersFile": str(members_path),
        "members": [
            {
                "name": name,
                "memberId": joined.member_id,
                "pubkey": joined.pubkey,
                "configDir": str(directory / name),
            }
            for name, joined in records
        ],
    }
    return json_line(record)
