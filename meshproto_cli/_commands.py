"""The subcommands other than ``demo``: broker, send, listen, peers, keygen, mesh init.

Each is an ``async`` function of parsed arguments that returns an exit
status. Problems the user can fix raise :class:`CommandError` with a one-line
message; the entry point prints it and exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import secrets
import ssl
import string
import sys
from datetime import datetime, timezone
from pathlib import Path

import anyio

from meshproto import (
    Broker,
    BrokerOptions,
    ClientOptions,
    ConnectionState,
    MessageReceived,
    Peer,
    SendError,
    SendOutcomeUnknownError,
    StaticRegistry,
)
from meshproto_anyio import Client, connect, serve_broker
from meshproto_anyio.sqlite_store import SqliteStore
from meshproto_crypto import Ed25519Verifier, KeyPair

from ._files import (
    JoinedMesh,
    MemberRow,
    MembersFile,
    config_dir,
    save_joined_meshes,
    save_members_file,
    write_private_json,
)
from ._identity import Identity, load_identity
from ._names import NameProblem, is_target_spec, resolve_target
from ._registry import FileRegistry

__all__ = [
    "CommandError",
    "cmd_broker",
    "cmd_keygen",
    "cmd_listen",
    "cmd_mesh_init",
    "cmd_peers",
    "cmd_send",
]

logger = logging.getLogger("meshproto.cli")
_BASE62 = string.ascii_letters + string.digits


class CommandError(Exception):
    """A problem the user can fix; its message is shown as one line."""


def _new_id() -> str:
    return "".join(secrets.choice(_BASE62) for _ in range(32))


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _identity(args: argparse.Namespace) -> Identity:
    return load_identity(config_dir(args.config_dir), args.mesh, args.session)


def _client_ssl(args: argparse.Namespace) -> ssl.SSLContext | None:
    if getattr(args, "cafile", None):
        return ssl.create_default_context(cafile=args.cafile)
    return None


# --- broker ------------------------------------------------------------------


async def cmd_broker(args: argparse.Namespace) -> int:
    registry: FileRegistry | StaticRegistry
    if args.mesh_file:
        file_registry = FileRegistry(Path(args.mesh_file))
        registry = file_registry
        mesh_note = f"mesh {file_registry.mesh_id} from {args.mesh_file}"
    else:
        registry = StaticRegistry(open_mesh=args.open_mesh)
        mesh_note = f"open mesh {args.open_mesh!r}: any key that signs its hello may join"
    store = SqliteStore(args.db) if args.db else None
    broker = Broker(
        registry,
        verifier=Ed25519Verifier(),
        store=store,
        rng=random.SystemRandom(),
        options=BrokerOptions(),
    )
    ssl_context = None
    if args.tls_cert:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(args.tls_cert, args.tls_key)
    try:
        async with anyio.create_task_group() as tasks:
            server = await tasks.start(
                lambda task_status: serve_broker(
                    broker,
                    host=args.host,
                    port=args.port,
                    ssl_context=ssl_context,
                    task_status=task_status,
                )
            )
            print(f"meshproto broker listening on {server.url}", flush=True)
            print(f"  {mesh_note}", flush=True)
            print(f"  store: {args.db or 'in memory (lost on exit)'}", flush=True)
    finally:
        if store is not None:
            store.close()
    return 0


# --- clients -----------------------------------------------------------------


async def _resolve_target(client: Client, identity: Identity, target: str) -> str:
    """A target spec as given, or the live session key of the peer with that display name."""
    if is_target_spec(target):
        return target
    peers = await client.list_peers()
    try:
        resolution = resolve_target(
            target, peers, own_keys=(identity.session.pubkey, identity.member.pubkey)
        )
    except NameProblem as exc:
        raise CommandError(str(exc)) from None
    if resolution.note:
        logger.info("%s", resolution.note)
    return resolution.target


#: A command that only sends takes no message: pushes stay with the broker,
#: unacknowledged, for the member's sessions that do listen.
_SEND_ONLY = ClientOptions(accept_messages=False)


async def cmd_send(args: argparse.Namespace) -> int:
    identity = _identity(args)
    try:
        with anyio.fail_after(args.timeout):
            async with connect(
                **identity.connect_kwargs(args.url, args.name),
                ssl_context=_client_ssl(args),
                options=_SEND_ONLY,
            ) as client:
                await client.wait_state(ConnectionState.OPEN, ConnectionState.CLOSED)
                target = await _resolve_target(client, identity, args.target)
                message_id = await client.send(
                    target, args.message, args.priority, client_message_id=args.client_message_id
                )
    except SendOutcomeUnknownError as exc:
        raise CommandError(
            f"outcome unknown ({exc.reason.code}: {exc.reason.detail}); the message may have "
            "been delivered. "
            f"To retry without risking a second copy: --client-message-id {exc.client_message_id}"
        ) from None
    except SendError as exc:
        raise CommandError(f"not delivered: {exc.reason}") from None
    print(f"sent {message_id}")
    return 0


def _format_message(message: object, as_json: bool) -> str:
    if isinstance(message, MessageReceived):
        push = message.push
        sender = push.sender_name or message.sender_pubkey[:12]
        if as_json:
            return json.dumps(
                {
                    "messageId": message.message_id,
                    "sender": message.sender_pubkey,
                    "senderName": push.sender_name,
                    "priority": message.priority,
                    "createdAt": message.created_at,
                    "text": message.text,
                }
            )
        return f"[{message.created_at}] {sender} ({message.priority}): {message.text}"
    reason = getattr(message, "reason", "unreadable")
    sender = getattr(message, "sender_pubkey", "?")
    if as_json:
        return json.dumps({"unreadable": True, "sender": sender, "reason": reason})
    return f"[unreadable message from {sender[:12]}: {reason}]"


async def cmd_listen(args: argparse.Namespace) -> int:
    identity = _identity(args)
    received = 0
    async with connect(
        **identity.connect_kwargs(args.url, args.name), ssl_context=_client_ssl(args)
    ) as client:
        if args.status:
            await client.set_status(args.status)
        print(f"listening as {client.public_key[:12]}... (Ctrl-C to stop)", file=sys.stderr)
        with anyio.move_on_after(args.timeout):
            async for message in client.messages():
                print(_format_message(message, args.json), flush=True)
                received += 1
                if args.count and received >= args.count:
                    break
    return 0


async def cmd_peers(args: argparse.Namespace) -> int:
    identity = _identity(args)
    with anyio.fail_after(args.timeout):
        async with connect(
            **identity.connect_kwargs(args.url, args.name),
            ssl_context=_client_ssl(args),
            options=_SEND_ONLY,
        ) as client:
            await client.wait_state(ConnectionState.OPEN, ConnectionState.CLOSED)
            peers = await client.list_peers()
    if args.json:
        print(json.dumps([_peer_record(p) for p in peers], indent=2))
        return 0
    if not peers:
        print("no peers")
    for peer in peers:
        groups = ",".join(g.name for g in peer.groups or ())
        print(
            f"{peer.pubkey[:16]}  {peer.display_name or '-':<16} {peer.status or '-':<8} "
            f"{groups or '-':<12} {peer.summary or ''}"
        )
    return 0


def _peer_record(peer: Peer) -> dict[str, object]:
    return {
        "pubkey": peer.pubkey,
        "memberPubkey": peer.member_pubkey,
        "displayName": peer.display_name,
        "status": peer.status,
        "summary": peer.summary,
        "groups": [g.name for g in peer.groups or ()],
        "sessionId": peer.session_id,
        "connectedAt": peer.connected_at,
    }


# --- identities --------------------------------------------------------------


async def cmd_keygen(args: argparse.Namespace) -> int:
    path = Path(args.out) if args.out else config_dir(args.config_dir) / "identity.json"
    if path.exists() and not args.force:
        raise CommandError(f"{path} exists; pass --force to replace it")
    keys = KeyPair.generate()
    write_private_json(path, {"pubkey": keys.pubkey, "secretKey": keys.secret_key})
    print(keys.pubkey)
    print(f"secret key written to {path} (mode 0600)", file=sys.stderr)
    return 0


async def cmd_mesh_init(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.members.split(",") if n.strip()]
    if not names or len(set(names)) != len(names):
        raise CommandError("--members needs distinct names, separated by commas")
    directory = Path(args.dir)
    members_path = directory / "members.json"
    if members_path.exists() and not args.force:
        raise CommandError(f"{members_path} exists; pass --force to replace it")
    mesh_id = _new_id()
    slug = args.name.lower().replace(" ", "-")
    rows = []
    for name in names:
        keys = KeyPair.generate()
        member_id = _new_id()
        rows.append(MemberRow(member_id, keys.pubkey, name, tuple(args.group or ())))
        record = JoinedMesh(
            mesh_id,
            member_id,
            slug,
            args.name,
            keys.pubkey,
            keys.secret_key,
            args.broker_url,
            _now_iso(),
        )
        save_joined_meshes(directory / name, [record])
    save_members_file(members_path, MembersFile(mesh_id, args.name, tuple(rows)))
    print(f"mesh {args.name!r} ({mesh_id}) with {len(rows)} members")
    print(f"  members file: {members_path}")
    for name in names:
        print(f"  {name}: CLAUDEMESH_CONFIG_DIR={directory / name}")
    print(f"serve it with: meshproto broker --mesh {members_path}")
    return 0
