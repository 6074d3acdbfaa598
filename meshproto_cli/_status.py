"""The connection's state for a person: one line per change, from the client's events.

:class:`ConnectionReporter` is an ``on_event`` hook for
:func:`meshproto_anyio.connect`. It writes one line when the state of the
connection changes, and never repeats itself:

* ``connecting to URL``;
* ``connected as NAME (KEY)``: KEY is the session key, the one other peers
  see in their peer list and send to;
* ``connection lost: WHY; reconnecting in N s`` after a link that was open,
  ``WHY; retrying in N s`` when an attempt fails (``could not connect to
  URL: Connection refused``, a TLS error, a hello the broker turned down for
  now), once per distinct cause until the next success;
* nothing for a refusal that ends the client (a revoked member, a session
  taken over): the command reports that as its error, and
  :func:`describe_refusal` words it.

With ``announce=False`` (``send``, ``peers``) it stays silent while all goes
well and speaks only about problems, and about the recovery that follows one.
Verbosity 0 (``--quiet``) silences it; 2 (``-v``) adds every attempt, the
broker's error frames and the details of each ``hello_ack``.

It also remembers what a command needs afterwards: the last cause
(:attr:`last_cause`, for a timeout message), how the client ended
(:attr:`closed`) and the outcome events of sends (:attr:`send_outcomes`,
which arrive even after a command stopped waiting for them). Everything
it writes has passed through :func:`~meshproto_cli._output.visible`.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from meshproto import (
    BrokerError,
    Closed,
    ConnectionState,
    Event,
    HandshakeComplete,
    InternalError,
    MalformedFrame,
    ReconnectScheduled,
    SendAcked,
    SendFailed,
    SendOutcomeUnknown,
    StateChanged,
)

from ._output import Style, visible

__all__ = [
    "SLOW_CONNECT",
    "ConnectionReporter",
    "describe_cause",
    "describe_refusal",
    "refusal_code",
]

#: After this many seconds without a connection, a command says it is still trying.
SLOW_CONNECT = 1.0

_TRANSPORT_CLOSED = re.compile(r"transport closed \((\d+) ?(.*)\)\Z", re.S)
_HELLO_REFUSED = re.compile(r"hello refused: (\S+)\Z")
_REFUSAL = re.compile(r"broker refused(?: the hello)?: ([A-Za-z_]+)(?:: (.*))?\Z", re.S)

_SKEW_HINT = "this machine's clock and the broker's are more than 60 s apart"
_TEMPORARY_HINTS = {
    "timestamp_skew": _SKEW_HINT,
    "capacity": "the mesh has as many sessions as the broker allows",
}
_REFUSAL_HINTS = {
    "revoked": "this member was removed from the mesh",
    "banned": "this member was removed from the mesh",
    "kicked": "an admin removed this session",
    "unauthorized": "the broker does not know this member: check --url and --mesh",
    "session_replaced": (
        "another process or machine connected with the same session; "
        "give each one its own --session"
    ),
    "session_key_claimed": "the member that proved this session key took it back",
    "bad_signature": "the broker could not verify the hello: is the joined-mesh record right?",
    "ttl_too_long": "this machine's clock and the broker's disagree: check both",
    "expired": "this machine's clock and the broker's disagree: check both",
    "parent_member_id_mismatch": "the joined-mesh record's memberId is not this key's",
}


def describe_cause(cause: str) -> str:
    """A reconnect cause from the core, as a person would say it."""
    match = _TRANSPORT_CLOSED.match(cause)
    if match:
        code, reason = int(match.group(1)), match.group(2).strip()
        if code == 1006:
            if reason.startswith(("could not connect to ", "TLS handshake with ")):
                text = reason
                if "CERTIFICATE_VERIFY_FAILED" in reason:
                    text += " (--cafile names the CA that signed the broker's certificate)"
                return text
            return f"the connection dropped ({reason})" if reason else "the connection dropped"
        if code == 1001:
            return f"the broker went away ({code} {reason or 'going away'})"
        return f"the broker closed the connection ({code}{' ' + reason if reason else ''})"
    match = _HELLO_REFUSED.match(cause)
    if match:
        code_text = match.group(1)
        hint = _TEMPORARY_HINTS.get(code_text)
        return f"the broker refused the hello for now: {code_text}" + (f" ({hint})" if hint else "")
    if cause == "no hello_ack in time":
        return "the broker did not answer the hello in time"
    if cause == "could not open the transport in time":
        return "could not connect in time"
    return cause


def refusal_code(closed: Closed) -> str | None:
    """The broker's code in a :class:`~meshproto.Closed` refusal: ``revoked`` …"""
    match = _REFUSAL.match(closed.reason)
    if match is None:
        return None
    code = match.group(1)
    if code == "banned" or closed.code == 4002:
        return "revoked"
    return code


def describe_refusal(closed: Closed) -> str:
    """One line for a client the broker stopped for good, with what to do about it."""
    match = _REFUSAL.match(closed.reason)
    code = refusal_code(closed)
    if match is None or code is None:
        return f"the broker closed the connection for good: {visible(closed.reason)}"
    detail = match.group(2)
    hint = _REFUSAL_HINTS.get(code)
    text = f"refused by the broker ({match.group(1)}"
    if closed.code is not None:
        text += f", close {closed.code}"
    text += f": {hint})" if hint else ")"
    return f"{text}: {visible(detail)}" if detail else text


class ConnectionReporter:
    """Writes the connection's state changes as lines; see the module docstring.

    ``write`` takes one line (no newline). ``name`` is the display name to
    announce (else the broker's ``memberDisplayName``), ``key`` the key other
    peers see. ``suffix`` is added to the first ``connected`` line.
    """

    def __init__(
        self,
        url: str,
        *,
        write: Callable[[str], None],
        verbosity: int = 1,
        announce: bool = True,
        name: str | None = None,
        key: str | None = None,
        suffix: str = "",
        style: Style | None = None,
    ) -> None:
        self.url = url
        self._write = write
        self.verbosity = verbosity
        self.announce = announce
        self.name = name
        self.key = key
        self.suffix = suffix
        self._style = style or Style(False)
        self._printed_cause: str | None = None  # the problem last reported, until a success
        self._open = False
        self._lost_open = False
        self.connections = 0
        self.last_cause: str | None = None
        self.closed: Closed | None = None
        self.send_outcomes: list[SendAcked | SendFailed | SendOutcomeUnknown] = []

    # --- what the command asks -----------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether the connection is open now."""
        return self._open

    def still_connecting(self) -> None:
        """The command has waited :data:`SLOW_CONNECT` without a connection: say so.

        Unless a problem was reported already (it says more).
        """
        if self.verbosity and self._printed_cause is None and not self._open:
            self._say(f"still connecting to {visible(self.url)} …")

    def timeout_message(self, seconds: float, waiting_for: str) -> str:
        """Why ``--timeout`` ran out, with the last cause if the broker was never reached."""
        text = f"timed out after {seconds:g} s"
        if self.connections == 0:
            cause = self.last_cause or f"no answer from {visible(self.url)}"
            return f"{text} without reaching the broker: {cause}"
        if not self._open and self.last_cause:
            return f"{text} waiting for {waiting_for}; the connection was lost: {self.last_cause}"
        return f"{text} waiting for {waiting_for}"

    # --- the hook --------------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        """Pass as ``connect(on_event=...)``."""
        if isinstance(event, StateChanged):
            self._on_state(event)
        elif isinstance(event, HandshakeComplete):
            self._on_connected(event)
        elif isinstance(event, ReconnectScheduled):
            self._on_reconnect(event)
        elif isinstance(event, Closed):
            self._open = False
            if not event.by_user:
                self.closed = event
        elif isinstance(event, (SendAcked, SendFailed, SendOutcomeUnknown)):
            self.send_outcomes.append(event)
        elif isinstance(event, InternalError):
            if self.verbosity >= 2:  # the reconnect that follows says it too
                self._say(
                    f"internal error while {visible(event.during)}: {visible(repr(event.error))}"
                )
        elif isinstance(event, BrokerError):
            if self.verbosity >= 2:
                self._say(f"broker error: {visible(event.code)}: {visible(event.message)}")
        elif isinstance(event, MalformedFrame) and self.verbosity >= 2:
            self._say(f"dropped a malformed frame: {visible(str(event.error))}")

    def _on_state(self, event: StateChanged) -> None:
        if event.old is ConnectionState.OPEN:
            self._lost_open = True  # the ReconnectScheduled that follows is a lost link
        if event.new is not ConnectionState.OPEN:
            self._open = False
        if event.new is ConnectionState.CONNECTING:
            first = event.old is ConnectionState.IDLE
            if self.verbosity >= 2 or (first and self.announce):
                self._say(f"connecting to {visible(self.url)}")

    def _on_connected(self, event: HandshakeComplete) -> None:
        self._open = True
        self.connections += 1
        recovering = self._printed_cause is not None
        self._printed_cause = None
        self.last_cause = None
        if not (self.announce or recovering or self.verbosity >= 2):
            return
        name = self.name or event.ack.member_display_name or "?"
        text = f"connected as {self._style.bold(visible(name))}"
        if self.key:
            text += f" ({self.key[:16]})"
        if self.verbosity >= 2:
            ack = event.ack
            details = [f"to {visible(self.url)}"]
            if ack.presence_id:
                details.append(f"presence {visible(ack.presence_id)}")
            if ack.restored:
                details.append("restored")
            text += f" [{', '.join(details)}]"
        if self.suffix and self.connections == 1:
            text += f"; {self.suffix}"
        self._say(text)

    def _on_reconnect(self, event: ReconnectScheduled) -> None:
        was_open, self._lost_open = self._lost_open, False
        self._open = False
        cause = visible(describe_cause(event.cause))
        self.last_cause = cause
        if cause == self._printed_cause and self.verbosity < 2:
            return
        self._printed_cause = cause
        if was_open:
            text = f"connection lost: {cause}; reconnecting in {event.delay:.1f} s"
        else:
            text = f"{cause}; retrying in {event.delay:.1f} s"
        if self.verbosity >= 2:
            text += f" (attempt {event.attempt}; {visible(event.cause)})"
        self._say(text, problem=True)

    def _say(self, text: str, *, problem: bool = False) -> None:
        if not self.verbosity:
            return
        self._write(self._style.yellow(text) if problem else text)
