"""The command's exit statuses, and the errors that carry them.

A script can rely on these (they are in ``meshproto --help`` and in
docs/howto/command.md):

====  ==========================================================================
0     done
1     an error: a refusal, a message not delivered, a missing or malformed file
2     bad usage (argparse's status)
3     ``send``: the outcome is unknown, the message **may have been delivered**;
      retry only with ``--client-message-id``
124   timed out with nothing: no connection or no answer within ``--timeout``
      (nothing was sent); ``listen``: no message, or fewer than ``--count``
130   interrupted (Ctrl-C, SIGINT)
141   standard output was closed by its reader (``| head -1``), said by nothing
143   terminated (SIGTERM)
====  ==========================================================================

124 is the status ``timeout(1)`` uses for a command that ran out of time.
Every error is one line on stderr (``meshproto: error: ...``); with
``--json`` it is also one object on stdout, ``{"type": "error", "error":
CODE, "message": ..., "status": STATUS}`` (see :meth:`CommandError.record`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from typing import Any

__all__ = [
    "BROKER_STATUS_HELP",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_PIPE",
    "EXIT_STATUS_HELP",
    "EXIT_TERMINATED",
    "EXIT_TIMEOUT",
    "EXIT_UNKNOWN",
    "EXIT_USAGE",
    "CommandError",
    "OutcomeUnknown",
    "OutputFailed",
    "Refused",
    "Terminated",
    "TimedOut",
    "escape_what_stdout_cannot_encode",
    "say",
    "silence_stdout",
    "sole_exception",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNKNOWN = 3
EXIT_TIMEOUT = 124
EXIT_INTERRUPTED = 130
EXIT_PIPE = 141
EXIT_TERMINATED = 143

#: The table above, as ``--help`` shows it.
EXIT_STATUS_HELP = """\
exit status:
  0    done
  1    an error (a refusal, a message not delivered, a bad file), one line on stderr
  2    bad usage
  3    send: outcome unknown, the message may have been delivered
       (retry only with --client-message-id, which cannot make a second copy)
  124  timed out with nothing: no connection or no answer within --timeout;
       for listen, no message (or fewer than --count) within --timeout
  130  interrupted (Ctrl-C)
  141  stdout was closed by its reader (such as head), with nothing said
  143  terminated (SIGTERM)"""


#: ``meshproto broker``'s, as its ``--help`` shows them.
BROKER_STATUS_HELP = """\
exit status:
  1    it could not start (a port in use, a bad --db or certificate), one line on stderr
  2    bad usage
  130  stopped by Ctrl-C, 143 by SIGTERM: each client's socket is closed with 1001 first"""


class CommandError(Exception):
    """A problem the user can act on; its message is shown as one line.

    ``code`` names the kind of problem in ``--json`` output; ``status`` is
    the exit status; ``fields`` are extra keys of the JSON error record.
    """

    code = "error"
    status = EXIT_ERROR

    def __init__(
        self, message: str, *, code: str | None = None, status: int | None = None, **fields: Any
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.fields = fields

    @property
    def message(self) -> str:
        return str(self)

    def record(self) -> dict[str, Any]:
        """The ``--json`` error object."""
        return {
            "type": "error",
            "error": self.code,
            "message": self.message,
            "status": self.status,
            **self.fields,
        }


class Refused(CommandError):
    """The broker stopped this client for good (a revoked member, a session taken over …)."""

    code = "refused"


class TimedOut(CommandError):
    """``--timeout`` passed with nothing done."""

    code = "timeout"
    status = EXIT_TIMEOUT


class OutcomeUnknown(CommandError):
    """A message was written and nothing settled it: it may have been delivered."""

    code = "outcome_unknown"
    status = EXIT_UNKNOWN


class OutputFailed(CommandError):
    """Standard output could not be written: its reader went away, or its disk is full.

    A closed pipe (``meshproto listen | head -1``) is the reader's way to say
    it has what it wanted: the command stops with :data:`EXIT_PIPE`, the
    status a shell shows for a command that ``SIGPIPE`` ended, and says
    nothing. Any other failure (``ENOSPC``, ``EIO``) is an error line.
    Neither can be reported on standard output, even with ``--json``.
    """

    code = "output"

    def __init__(self, error: OSError) -> None:
        self.broken_pipe = isinstance(error, BrokenPipeError) or error.errno == errno.EPIPE
        super().__init__(
            f"cannot write to stdout: {error.strerror or error}",
            status=EXIT_PIPE if self.broken_pipe else EXIT_ERROR,
        )


def say(text: str) -> None:
    """``text`` as one line on stderr, if there is a stderr that takes it.

    With stderr closed (``2>&-``) Python has no ``sys.stderr``, and
    ``print`` would write to stdout instead, into ``--json`` output; with
    stderr on a full disk, there is nobody to tell. Either way the line is
    dropped, and the command's status still says what happened.
    """
    stream = sys.stderr
    if stream is None:
        return
    with contextlib.suppress(OSError, ValueError):  # ValueError: a closed stream
        print(text, file=stream, flush=True)


def escape_what_stdout_cannot_encode() -> None:
    """Let stdout write what its encoding cannot take as Python escapes, as stderr does.

    A path that is not UTF-8 (its bytes kept as surrogates) or a name on a
    stdout of another encoding (``PYTHONIOENCODING=ascii``) would otherwise
    fail the command in its last line, after its work was done. They are
    shown instead as ``\\udcff`` or ``\\xe9``. ``--json`` lines are ASCII anyway.
    """
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        with contextlib.suppress(Exception):  # a stdout that is not a text file
            reconfigure(errors="backslashreplace")


def silence_stdout() -> None:
    """Point stdout at the null device, so that nothing more is lost in writing to it.

    Python flushes ``sys.stdout`` once more at exit; into a closed pipe or a
    full disk that flush would fail again, and print a report of its own.
    """
    try:
        fd = sys.stdout.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
    except (AttributeError, OSError, ValueError):  # no stdout, or not a file
        return
    try:
        os.dup2(devnull, fd)
    except OSError:
        pass
    finally:
        os.close(devnull)


def sole_exception(error: BaseException) -> BaseException:
    """``error``, or the one exception inside it if it is a group of one (recursively).

    A task group wraps what its body raises: a command's own error, raised
    where it waits on several things at once, is still that error.
    """
    while True:
        inner = getattr(error, "exceptions", None)
        if not (isinstance(inner, tuple) and len(inner) == 1):
            return error
        error = inner[0]


class Terminated(BaseException):
    """SIGTERM arrived (raised by the command's handler, like ``KeyboardInterrupt``)."""
