"""The delivery ledger: what was sent, what reached which application, and the promise.

Every message the simulated applications send is a :class:`LogicalMessage`,
named by its *lid* (``s3.17``: session 3's 17th message), which is also its
body, so a receiver can tell which message it holds whatever the broker did
to it. A logical message may take several ``send()`` calls (retries after an
unknown outcome, re-sends after a crash), always under one
``client_message_id``.

The ledger is told four things and checks them as they happen:

* a send was acknowledged (``acked``): a second acknowledgement of the same
  message must carry the same ``messageId`` (the broker's dedupe promise);
* the broker wrote a direct push (``broker_pushed``) or received a
  ``client_ack`` (``ack_reached_broker``): a direct message is never pushed
  again once its recipient's acknowledgement has reached the broker;
* an application took a message (``delivered``): never twice in one process,
  a broadcast never twice in one session and never to the sending session,
  a direct message only to a session of its recipient (and not back to the
  session that sent it), a group message only to the group;
* the run settled (``settle_problems``): every direct message acknowledged
  ``queued: true`` reached at least one entitled session.

Violations are recorded, not raised, so that a failed run still counts how
many messages were lost and how many duplicated; the simulation reports the
first one with the trace around it.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["BROADCAST", "DIRECT", "GROUP", "Ledger", "LogicalMessage"]

DIRECT = "direct"
BROADCAST = "broadcast"  # *, @all and #topic
GROUP = "group"

# LogicalMessage.state
PENDING = "pending"  # a send is pending in some process
RETRY = "retry"  # waiting for the application's next attempt
ACKED = "acked"  # the broker acknowledged it queued: true
ABANDONED = "abandoned"  # the application gave up (it may still have been delivered)


class LogicalMessage:
    """One message an application meant to send, across all its attempts."""

    __slots__ = (
        "acked_at",
        "cmid",
        "delivered",
        "group",
        "kind",
        "lid",
        "maybe",
        "mid",
        "pending_in",
        "priority",
        "recipient_member",
        "recipient_sid",
        "sender",
        "sender_member",
        "sender_sids",
        "sessions",
        "state",
        "target",
    )

    def __init__(
        self,
        lid: str,
        kind: str,
        target: str,
        priority: str,
        *,
        sender: str,
        sender_sid: str,
        sender_member: str,
        recipient_member: str | None = None,
        recipient_sid: str | None = None,
        group: str | None = None,
    ) -> None:
        self.lid = lid
        self.kind = kind
        self.target = target
        self.priority = priority
        self.sender = sender  # the session slot's name
        # The session ids it was sent from (a restarted process may have a new one).
        self.sender_sids = {sender_sid}
        self.sender_member = sender_member
        self.recipient_member = recipient_member  # direct: the member it is stored for
        self.recipient_sid = recipient_sid  # direct to a session key: that session only
        self.group = group
        self.cmid: str | None = None
        self.mid: str | None = None
        self.state = RETRY
        self.maybe = False  # an attempt may have reached the broker unanswered
        self.delivered = False  # reached an entitled application at least once
        self.acked_at: float | None = None
        self.pending_in: object | None = None  # the process with a send pending for it
        self.sessions: dict[str, int] = {}  # session id -> deliveries to it

    def describe(self) -> str:
        to = self.target if len(self.target) < 20 else f"{self.target[:8]}..."
        return f"{self.lid} ({self.kind} {self.priority} to {to}, cmid {self.cmid})"


class Ledger:
    """Every logical message and the invariants on its delivery; see the module docstring."""

    def __init__(self, on_violation: Callable[[str, str], None]) -> None:
        self._on_violation = on_violation
        self.messages: dict[str, LogicalMessage] = {}
        self.by_mid: dict[str, LogicalMessage] = {}
        #: messageId -> when a client_ack for it first reached the broker.
        self.broker_acked: dict[str, float] = {}
        self.undelivered = 0  # acked direct messages not yet delivered
        self.violations: list[tuple[str, str]] = []
        self.acked_count = 0
        self.deliveries = 0
        self.redeliveries = 0  # a later process of a session took it again (allowed)
        self.lost = 0
        self.duplicated = 0

    def violation(self, kind: str, text: str) -> None:
        if kind == "duplicated":
            self.duplicated += 1
        elif kind == "lost":
            self.lost += 1
        self.violations.append((kind, text))
        self._on_violation(kind, text)

    # --- sending ------------------------------------------------------------

    def add(self, message: LogicalMessage) -> None:
        self.messages[message.lid] = message

    def acked(self, message: LogicalMessage, mid: str, now: float, *, resend: bool) -> None:
        """The broker acknowledged a send of ``message`` as ``mid``."""
        if message.mid is not None and mid != message.mid:
            self.violation(
                "duplicated",
                f"{message.describe()} acknowledged as {mid} after {message.mid}: the broker "
                "made a second copy of a re-sent client_message_id",
            )
            return
        if resend:
            return
        if message.mid is None:
            message.mid = mid
            self.by_mid[mid] = message
        if message.state != ACKED:
            message.state = ACKED
            message.acked_at = now
            self.acked_count += 1
            if message.kind == DIRECT and not message.delivered:
                self.undelivered += 1

    def abandon(self, message: LogicalMessage) -> None:
        if message.state != ACKED:
            message.state = ABANDONED

    # --- the broker's side ----------------------------------------------------

    def ack_reached_broker(self, mid: str, now: float) -> None:
        self.broker_acked.setdefault(mid, now)

    def broker_pushed(self, mid: str, conn: str, now: float) -> None:
        """The broker wrote a direct push of ``mid`` to ``conn``."""
        acked_at = self.broker_acked.get(mid)
        if acked_at is not None and acked_at < now:
            message = self.by_mid.get(mid)
            what = message.describe() if message is not None else mid
            self.violation(
                "duplicated",
                f"the broker pushed {what} to {conn} at {now:.6f}, after its recipient's "
                f"client_ack reached it at {acked_at:.6f}",
            )

    # --- receiving ------------------------------------------------------------

    def delivered(
        self,
        message: LogicalMessage,
        *,
        proc: str,
        sid: str,
        member: str,
        groups: frozenset[str],
        mid: str,
        cmid: str | None,
    ) -> None:
        """An application (process ``proc`` of session ``sid``) took ``message``."""
        self.deliveries += 1
        where = f"{proc} (session {sid}, member {member[:8]})"
        if message.mid is None:
            message.mid = mid
            self.by_mid[mid] = message
        elif mid != message.mid:
            self.violation(
                "duplicated",
                f"{message.describe()} reached {where} as {mid}, but it was acknowledged as "
                f"{message.mid}: two copies of one message",
            )
        count = message.sessions.get(sid, 0)
        message.sessions[sid] = count + 1
        if message.kind == DIRECT:
            if cmid != message.cmid:
                self.violation(
                    "misrouted",
                    f"{message.describe()} reached {where} with client_message_id {cmid}",
                )
            # A message to the sender's own member key goes to its *other* sessions:
            # not back to the session whose copy the broker accepted. When attempts
            # came from several session ids (a restart with a new one), any of them
            # may be that session, so only a single one is checked.
            senders = message.sender_sids
            entitled = member == message.recipient_member and not (
                len(senders) == 1 and sid in senders
            )
            if message.recipient_sid is not None:
                entitled = sid == message.recipient_sid
            if not entitled:
                self.violation("misrouted", f"{message.describe()} reached {where}")
            elif not message.delivered:
                message.delivered = True
                if message.state == ACKED:
                    self.undelivered -= 1
            if count:
                # An earlier process of this session took it and ended before its
                # client_ack reached the broker: at least once across processes.
                self.redeliveries += 1
        else:
            if count:
                self.violation(
                    "duplicated",
                    f"{message.describe()} reached session {sid} a second time, at {where}: "
                    "a broadcast is pushed once",
                )
            if sid in message.sender_sids:
                self.violation(
                    "duplicated", f"{message.describe()} came back to its sender at {where}"
                )
            if message.kind == GROUP and message.group not in groups:
                self.violation(
                    "misrouted", f"{message.describe()} reached {where}, outside the group"
                )
            message.delivered = True

    # --- the end --------------------------------------------------------------------

    def unsettled(self) -> list[LogicalMessage]:
        """Messages still waiting for an attempt or an answer."""
        return [m for m in self.messages.values() if m.state in (PENDING, RETRY)]

    def report_lost(self) -> None:
        """At quiescence: every acknowledged direct message must have been delivered."""
        for message in self.messages.values():
            if message.kind == DIRECT and message.state == ACKED and not message.delivered:
                self.violation(
                    "lost",
                    f"{message.describe()} was acknowledged as {message.mid} at "
                    f"{message.acked_at:.6f} and never reached member "
                    f"{(message.recipient_member or '?')[:8]}",
                )
            elif message.state in (PENDING, RETRY):
                self.violation(
                    "lost",
                    f"{message.describe()} never settled: its application was never told "
                    f"its outcome (state {message.state})",
                )
