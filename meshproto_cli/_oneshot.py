"""``send`` and ``peers``: one request, one answer, on the blocking client.

A one-shot command connects, asks one thing and leaves; it has no use for
an event loop. It runs on :mod:`meshproto_sync` (one I/O thread, the main
thread waiting on its answers), so that it never imports ``asyncio`` nor
``anyio``: their imports were most of what ``meshproto send`` cost before
it even connected. The main thread's waits are cut into short slices
(:mod:`meshproto_sync._wait`), so Ctrl-C (``KeyboardInterrupt``) and
SIGTERM (``_errors.Terminated``, raised by the handler ``_app`` installs)
end the command at once; leaving ``with connect(...)`` then closes the
client (a goodbye, bounded by its close timeout) and the session's lock is
released on the way out, as under the event loop.

``--timeout`` bounds the whole conversation, connecting included
(:class:`_OneShot`), and what is said when it runs out, or when the broker
refuses, is the same as for ``listen``: :mod:`meshproto_cli._connecting`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from meshproto import (
    ConnectionState,
    Event,
    Peer,
    SendAcked,
    SendError,
    SendOutcomeUnknown,
    SendOutcomeUnknownError,
)
from meshproto_sync import Client, connect

from ._connecting import client_options, client_ssl, new_reporter, print_line, refused
from ._errors import CommandError, OutcomeUnknown, TimedOut
from ._files import config_dir
from ._formats import peer_record, peer_table
from ._identity import Identity, command_identity
from ._names import NameProblem, is_target_spec, resolve_target
from ._output import Style, json_line, visible
from ._status import SLOW_CONNECT, ConnectionReporter

__all__ = ["cmd_peers", "cmd_send"]

logger = logging.getLogger("meshproto.cli")


class _OneShot:
    """A connected blocking client, its reporter, and the time ``--timeout`` leaves.

    The client's ``on_event`` hook runs in its I/O thread, while
    :meth:`wait_open` may speak from the main thread: both hold ``speaking``
    while they use the reporter, so that their lines stay whole. Every wait
    raises :class:`TimeoutError` once the time is up (:meth:`left`).
    """

    def __init__(
        self,
        client: Client,
        reporter: ConnectionReporter,
        speaking: threading.Lock,
        timeout: float,
    ) -> None:
        self.client = client
        self.reporter = reporter
        self._speaking = speaking
        self._ends_at = time.monotonic() + timeout

    def left(self) -> float:
        """Seconds until ``--timeout``; :class:`TimeoutError` once it has passed."""
        left = self._ends_at - time.monotonic()
        if left <= 0:
            raise TimeoutError
        return left

    def wait_open(self) -> None:
        """Wait for the broker's ``hello_ack``; say so after a second; a refusal raises."""
        wanted = (ConnectionState.OPEN, ConnectionState.CLOSED)
        try:
            state = self.client.wait_state(*wanted, timeout=min(SLOW_CONNECT, self.left()))
        except TimeoutError:
            left = self.left()
            with self._speaking:
                self.reporter.still_connecting()
            state = self.client.wait_state(*wanted, timeout=left)
        if state is ConnectionState.CLOSED:
            closed = self.client.closed  # noted before the state could be seen
            assert closed is not None
            raise refused(closed)

    def list_peers(self) -> tuple[Peer, ...]:
        return self.client.list_peers(timeout=self.left())


@contextmanager
def _connected(args: argparse.Namespace, identity: Identity) -> Iterator[_OneShot]:
    """A client of ``identity`` that takes no messages, its problems reported on stderr."""
    kwargs = identity.connect_kwargs(args.url, args.name)
    reporter = new_reporter(args, identity, kwargs["url"], announce=False)
    speaking = threading.Lock()

    def on_event(event: Event) -> None:  # in the client's I/O thread
        with speaking:
            reporter.on_event(event)

    with connect(
        **kwargs,
        ssl_context=client_ssl(args),
        options=client_options(args, accept_messages=False),
        on_event=on_event,
    ) as client:
        yield _OneShot(client, reporter, speaking, args.timeout)


# --- send ------------------------------------------------------------------------------


def _resolve_target(oneshot: _OneShot, identity: Identity, target: str) -> str:
    """A target spec as given, or the live session key of the peer with that display name."""
    if is_target_spec(target):
        return target
    peers = oneshot.list_peers()
    try:
        resolution = resolve_target(
            target, peers, own_keys=(identity.session.pubkey, identity.member.pubkey)
        )
    except NameProblem as exc:
        raise CommandError(visible(str(exc)), code="no_such_peer") from None
    if resolution.note:
        logger.info("%s", visible(resolution.note))
    return resolution.target


def _unknown_outcome(
    client_message_id: str, code: str, detail: str, *, after: str = ""
) -> OutcomeUnknown:
    why = f"{code}: {visible(detail)}" if detail else code
    return OutcomeUnknown(
        f"outcome unknown{after} ({why}): the message may have been delivered; to retry "
        f"without risking a second copy, send it again with --client-message-id "
        f"{client_message_id}",
        reason=code,
        detail=detail,
        clientMessageId=client_message_id,
    )


def cmd_send(args: argparse.Namespace) -> int:
    body: str = getattr(args, "body", args.message)
    directory = config_dir(args.config_dir)
    with command_identity(directory, args.mesh, command="send", session=args.session) as identity:
        target: str | None = None
        message_id: str | None = None
        failure: SendError | None = None
        with _connected(args, identity) as oneshot:
            try:
                oneshot.wait_open()
                target = _resolve_target(oneshot, identity, args.target)
                message_id = oneshot.client.send(
                    target,
                    body,
                    args.priority,
                    timeout=oneshot.left(),
                    client_message_id=args.client_message_id,
                )
            except SendError as exc:
                failure = exc
            except TimeoutError:  # --timeout ran out: message_id stays None
                pass
        # The client has closed: every event about the send has arrived.
        reporter = oneshot.reporter
        outcome = reporter.send_outcomes[-1] if reporter.send_outcomes else None
    if isinstance(failure, SendOutcomeUnknownError):
        reason = failure.reason
        raise _unknown_outcome(failure.client_message_id, reason.code, reason.detail)
    if failure is not None:
        reason = failure.reason
        raise CommandError(
            f"not delivered: {visible(str(reason))}",
            code="not_delivered",
            reason=reason.code,
            retryable=reason.retryable,
            detail=reason.detail,
        )
    if message_id is None:  # --timeout ran out
        if isinstance(outcome, SendAcked):  # acknowledged as the client closed
            message_id = outcome.message_id
        elif isinstance(outcome, SendOutcomeUnknown):
            raise _unknown_outcome(
                outcome.client_message_id,
                "timeout",
                f"no ack within --timeout {args.timeout:g} s",
                after=f" after {args.timeout:g} s",
            )
        else:
            waiting_for = "the broker's ack" if target is not None else "the peer list"
            raise TimedOut(
                reporter.timeout_message(args.timeout, waiting_for) + "; nothing was sent"
            )
    acked = [o for o in reporter.send_outcomes if isinstance(o, SendAcked)]
    client_message_id = args.client_message_id or (acked[-1].send_id if acked else None)
    if args.json:
        print_line(
            json_line(
                {
                    "type": "sent",
                    "messageId": message_id,
                    "clientMessageId": client_message_id,
                    "target": args.target,
                    "targetSpec": target,
                    "priority": args.priority,
                    "mesh": identity.mesh.slug,
                    "meshId": identity.mesh.mesh_id,
                }
            )
        )
    else:
        print_line(f"sent {message_id}")
    return 0


# --- peers -----------------------------------------------------------------------------


def cmd_peers(args: argparse.Namespace) -> int:
    directory = config_dir(args.config_dir)
    with command_identity(directory, args.mesh, command="peers", session=args.session) as identity:
        peers = None
        with _connected(args, identity) as oneshot:
            try:
                oneshot.wait_open()
                peers = oneshot.list_peers()
            except TimeoutError:  # --timeout ran out
                pass
        if peers is None:
            raise TimedOut(oneshot.reporter.timeout_message(args.timeout, "the peer list"))
        own = identity.session.pubkey
    if args.json:
        for peer in peers:
            print_line(json_line(peer_record(peer, (own,))))
    elif not peers:
        print_line("no peers")
    else:
        for line in peer_table(peers, own, Style.for_stream(sys.stdout)):
            print_line(line)
    return 0
