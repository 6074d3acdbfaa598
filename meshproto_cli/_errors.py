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
143   terminated (SIGTERM)
====  ==========================================================================

124 is the status ``timeout(1)`` uses for a command that ran out of time.
Every error is one line on stderr (``meshproto: error: ...``); with
``--json`` it is also one object on stdout, ``{"type": "error", "error":
CODE, "message": ..., "status": STATUS}`` (see :meth:`CommandError.record`).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BROKER_STATUS_HELP",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_STATUS_HELP",
    "EXIT_TERMINATED",
    "EXIT_TIMEOUT",
    "EXIT_UNKNOWN",
    "EXIT_USAGE",
    "CommandError",
    "OutcomeUnknown",
    "Refused",
    "Terminated",
    "TimedOut",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNKNOWN = 3
EXIT_TIMEOUT = 124
EXIT_INTERRUPTED = 130
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


class Terminated(BaseException):
    """SIGTERM arrived (raised by the command's handler, like ``KeyboardInterrupt``)."""
