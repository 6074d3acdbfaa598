"""What ``send``, ``listen`` and ``peers`` share about connecting, whichever client runs them.

``listen`` runs on the anyio client (:mod:`meshproto_cli._commands`), ``send``
and ``peers`` on the blocking one (:mod:`meshproto_cli._oneshot`); both
connect the same way, and this module, which imports neither client nor any
event loop, holds that way once:

* the TLS context of ``--cafile`` (:func:`client_ssl`) and the reconnect
  backoff capped at ``--retry-max`` (:func:`client_options`);
* the :class:`~meshproto_cli._status.ConnectionReporter` that writes the
  connection's state on stderr at the verbosity of ``-v``/``--quiet``
  (:func:`new_reporter`);
* a refusal, reported as :class:`~meshproto_cli._errors.Refused` (status 1)
  (:func:`refused`);
* the lines of the command's output (:func:`print_line`) and of its
  notices (:func:`stderr_line`), each flushed at once.
"""

from __future__ import annotations

import argparse
import ssl
import sys

from meshproto import BACKOFF_CAPS, Backoff, ClientOptions, Closed

from ._errors import CommandError, OutputFailed, Refused, say
from ._identity import Identity
from ._output import Style
from ._status import ConnectionReporter, describe_refusal, refusal_code

__all__ = [
    "client_options",
    "client_ssl",
    "new_reporter",
    "print_line",
    "refused",
    "stderr_line",
    "verbosity",
]


def client_ssl(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The context of ``--cafile``; ``None`` leaves the client's default (the system's CAs)."""
    if getattr(args, "cafile", None):
        try:
            return ssl.create_default_context(cafile=args.cafile)
        except (OSError, ssl.SSLError) as exc:
            raise CommandError(f"cannot read --cafile {args.cafile}: {exc}") from None
    return None


def verbosity(args: argparse.Namespace) -> int:
    """0 with ``--quiet``, 1 by default, 2 and more with ``-v``."""
    if getattr(args, "quiet", False):
        return 0
    return 1 + getattr(args, "verbose", 0)


def stderr_line(text: str) -> None:
    """One notice on stderr (dropped if there is no stderr to take it: :func:`~._errors.say`)."""
    say(text)


def print_line(text: str) -> None:
    """One line of the command's output on stdout, flushed (a pipe sees it at once).

    Raises :class:`~meshproto_cli._errors.OutputFailed` if stdout cannot take it.
    """
    try:
        print(text, flush=True)
    except OSError as exc:
        raise OutputFailed(exc) from None


def client_options(args: argparse.Namespace, *, accept_messages: bool) -> ClientOptions:
    caps = tuple(min(cap, args.retry_max) for cap in BACKOFF_CAPS)
    return ClientOptions(accept_messages=accept_messages, backoff=Backoff(caps=caps))


def new_reporter(
    args: argparse.Namespace, identity: Identity, url: str, *, announce: bool, suffix: str = ""
) -> ConnectionReporter:
    """The reporter of a command's connection to ``url``, on stderr."""
    return ConnectionReporter(
        url,
        write=stderr_line,
        verbosity=verbosity(args),
        announce=announce,
        name=args.name,
        key=identity.session.pubkey,
        suffix=suffix,
        style=Style.for_stream(sys.stderr),
    )


def refused(closed: Closed) -> Refused:
    """The error of a client the broker stopped for good, ``closed`` saying why."""
    return Refused(describe_refusal(closed), reason=refusal_code(closed), closeCode=closed.code)
