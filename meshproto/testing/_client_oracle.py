"""The client's contracts, checked from the outside: :class:`ClientOracle`."""

from __future__ import annotations

from collections import OrderedDict

from .._client import ClientConnection, SendHandle
from .._codec import decode
from .._events import (
    Action,
    Closed,
    ConnectionState,
    Event,
    InternalError,
    MessageReceived,
    OpenTransport,
    ReconnectScheduled,
    SendAcked,
    SendFailed,
    SendOutcomeUnknown,
    SystemMessage,
    UnreadableMessage,
    WriteFrame,
)
from .._frames import ClientAck, Push, Send
from ._fakes import ContractViolation


class ClientOracle:
    """Checks a :class:`ClientConnection` against its contracts, step by step.

    Feed it every action and event the connection produces (``observe``), the
    sends made (``sent``), the pushes fed in (``pushed``), the messages the
    application took (``took``), and call ``check`` after every step. It
    checks:

    * no send resolves twice, and (``check_drained``) every send has resolved;
      a send is reported "outcome unknown" only if it was written, and
      "failed" (not delivered) only if it was written at most once;
    * no resolved send is ever written afterwards;
    * the outbox stays within its bound, and the inbox within its bound plus
      what arrived while reading was paused (what one read may carry);
    * at most one reconnect is pending;
    * no message (by dedupe key) is announced twice or handed over twice
      (taken with or without acknowledging), and no new message is lost:
      each is announced when it first arrives;
    * a ``client_ack`` is written for a message only once the application
      has it and said so (taken from the inbox acknowledging, taken without
      and then acknowledged, or handed over as the event when there is no
      inbox), and while the connection is open every push of such a message
      is answered with one; a message taken without acknowledging gets none
      until acknowledged; a connection that accepts no messages acknowledges
      none;
    * the messages taken and not acknowledged are the ones the connection
      counts (``unacknowledged``); the messages waiting stay within
      ``inbox_limit``, and those waiting and held together within
      ``dedupe_window`` (each plus what arrived while reading was paused);
      reading is paused exactly while ``inbox_limit`` wait or ``dedupe_window
      - inbox_limit`` are held;
    * no :class:`~meshproto.InternalError` (a bug) ever happens;
    * after ``handle_timer(now)`` no deadline is at or before ``now``.
    """

    def __init__(self, client: ClientConnection) -> None:
        self.client = client
        self.sends: set[str] = set()
        self.writes: dict[str, int] = {}
        self.resolved: dict[str, SendAcked | SendFailed | SendOutcomeUnknown] = {}
        self.announced: set[str] = set()
        self.handed: set[str] = set()
        # Handed-over keys in the order handed over: what the connection's dedupe
        # window remembers is the last dedupe_window of them (see _handed_over).
        self.handed_order: OrderedDict[str, None] = OrderedDict()
        # Handed over, then forgotten, and not pushed since: the ack written as a
        # take hands one over may follow its forgetting in the same step.
        self.forgotten: set[str] = set()
        self.unacknowledged: set[str] = set()  # taken without acknowledging, not since
        self.system: set[str] = set()
        self.seen_keys: set[str] = set()
        # (messageId, dedupe key) of the pushes fed since their last client_ack.
        self.unanswered: set[tuple[str, str]] = set()
        self.paused_arrivals = 0
        self.pending_new: str | None = None  # a new message just fed, to be announced
        self.reconnect_pending = False
        self.closed = False

    @staticmethod
    def _fail(message: str) -> None:
        raise ContractViolation(message)

    def sent(self, handle: SendHandle) -> None:
        if handle.id in self.sends:
            self._fail(f"send id {handle.id} handed out twice")
        self.sends.add(handle.id)

    def pushed(self, push: Push) -> None:
        """``push`` is about to be fed to the connection (decoded as the client will)."""
        if self.client.reading_paused:
            self.paused_arrivals += 1
        key = push.dedupe_key
        system = push.subtype == "system"
        accepted = system or self.client.options.accept_messages
        if key not in self.seen_keys and accepted:
            # What a key is, is decided by the first push the client keeps (one
            # that a send-only client declines leaves no trace).
            self.forgotten.discard(key)
            self.seen_keys.add(key)
            if system:
                self.system.add(key)
            else:
                self.pending_new = key
        if accepted or key in self.seen_keys:  # a declined push is owed nothing
            self.unanswered.add((push.message_id, key))

    def took(
        self, messages: list[MessageReceived | UnreadableMessage], *, acknowledge: bool = True
    ) -> None:
        """The application took ``messages`` from the inbox (acknowledging them, or not)."""
        for message in messages:
            key = message.push.dedupe_key
            if key in self.handed or key in self.unacknowledged:
                self._fail(f"message {key} handed to the application twice")
            if key not in self.announced:
                self._fail(f"message {key} taken but never announced")
            if acknowledge:
                self._handed_over(key)
            else:
                self.unacknowledged.add(key)

    def acknowledged(self, message: MessageReceived | UnreadableMessage) -> None:
        """The application acknowledged ``message``, which it took without acknowledging."""
        key = message.push.dedupe_key
        if key not in self.unacknowledged:
            self._fail(f"message {key} acknowledged, but it was not taken unacknowledged")
        self.unacknowledged.discard(key)
        self._handed_over(key)

    def _handed_over(self, key: str) -> None:
        """``key`` is handed over; past ``dedupe_window`` such keys, the oldest is forgotten.

        The connection then treats a push of a forgotten key as a new
        message, rightly: announcing it again is no fault. Any earlier, a
        second announcement is.
        """
        self.handed.add(key)
        self.handed_order[key] = None
        while len(self.handed_order) > self.client.options.dedupe_window:
            old, _ = self.handed_order.popitem(last=False)
            for keys in (self.seen_keys, self.announced, self.handed, self.system):
                keys.discard(old)
            self.unanswered = {pair for pair in self.unanswered if pair[1] != old}
            self.forgotten.add(old)

    def observe(self, actions: list[Action], events: list[Event]) -> None:
        for event in events:
            self._observe_event(event)
        for action in actions:
            self._observe_action(action)

    def _observe_event(self, event: Event) -> None:
        if isinstance(event, (SendAcked, SendFailed, SendOutcomeUnknown)):
            send_id = event.send_id
            if send_id not in self.sends:
                self._fail(f"resolution of unknown send {send_id}: {event}")
            if send_id in self.resolved:
                self._fail(f"send {send_id} resolved twice: {self.resolved[send_id]} then {event}")
            writes = self.writes.get(send_id, 0)
            if isinstance(event, SendOutcomeUnknown) and writes == 0:
                self._fail(f"send {send_id} never written, yet its outcome is unknown: {event}")
            if isinstance(event, SendFailed) and writes > 1:
                self._fail(f"send {send_id} written {writes} times, yet failed for sure: {event}")
            self.resolved[send_id] = event
        elif isinstance(event, (MessageReceived, UnreadableMessage)):
            key = event.push.dedupe_key
            if key in self.announced:
                self._fail(f"message {key} announced to the application twice")
            if not self.client.options.accept_messages:
                self._fail(f"message {key} announced by a connection that accepts none")
            self.announced.add(key)
            if self.client.options.inbox_limit == 0:
                self._handed_over(key)  # the event is the hand-over
        elif isinstance(event, SystemMessage):
            key = event.push.dedupe_key
            if key in self.announced:
                self._fail(f"system message {key} announced twice")
            self.announced.add(key)
            self._handed_over(key)
        elif isinstance(event, ReconnectScheduled):
            if self.reconnect_pending:
                self._fail("a second reconnect was scheduled while one was pending")
            self.reconnect_pending = True
        elif isinstance(event, Closed):
            self.reconnect_pending = False
            self.closed = True
        elif isinstance(event, InternalError):
            self._fail(f"an unexpected exception while {event.during}: {event.error!r}")

    def _observe_action(self, action: Action) -> None:
        if isinstance(action, OpenTransport):
            if self.closed:
                self._fail("a transport was opened after the connection closed")
            self.reconnect_pending = False
        elif isinstance(action, WriteFrame):
            if self.closed:
                self._fail(f"a frame was written after the connection closed: {action.text}")
            frame = decode(action.text)
            if isinstance(frame, Send):
                if frame.id in self.resolved:
                    self._fail(
                        f"send {frame.id} written after it resolved: {self.resolved[frame.id]}"
                    )
                self.writes[frame.id] = self.writes.get(frame.id, 0) + 1
            elif isinstance(frame, ClientAck) and frame.broker_message_id is not None:
                # An ack names its push as the push named itself: the key is the same.
                key = frame.client_message_id or frame.broker_message_id
                if key in self.forgotten:
                    pass  # handed over (and acknowledged) as it was forgotten
                elif key not in self.seen_keys:
                    self._fail(f"client_ack for a message never pushed: {frame}")
                elif key not in self.handed and key not in self.system:
                    self._fail(f"client_ack for {key} before the application had it")
                self.unanswered.discard((frame.broker_message_id, key))

    def check(self, *, timer_fired_at: float | None = None) -> None:
        client = self.client
        options = client.options
        if client.pending_sends > options.max_outbox:
            self._fail(f"{client.pending_sends} sends pending > max_outbox {options.max_outbox}")
        if client.unacknowledged != len(self.unacknowledged):
            self._fail(
                f"the client counts {client.unacknowledged} messages unacknowledged, "
                f"the application {len(self.unacknowledged)}"
            )
        if client.inbox_size > options.inbox_limit + self.paused_arrivals:
            self._fail(
                f"inbox holds {client.inbox_size} waiting > inbox_limit {options.inbox_limit} "
                f"+ {self.paused_arrivals} arrivals while paused"
            )
        if options.inbox_limit:
            held_limit = options.dedupe_window - options.inbox_limit
            full = client.inbox_size >= options.inbox_limit or client.unacknowledged >= held_limit
            if client.reading_paused != full:
                self._fail(
                    f"reading_paused is {client.reading_paused} with {client.inbox_size} "
                    f"waiting (inbox_limit {options.inbox_limit}) and {client.unacknowledged} "
                    f"held (room for {held_limit})"
                )
        # A message is read only while fewer than inbox_limit wait and fewer than
        # dedupe_window - inbox_limit are held; a take moves one from one to the other.
        held = client.inbox_size + client.unacknowledged
        if options.inbox_limit and held > options.dedupe_window + self.paused_arrivals:
            self._fail(
                f"inbox holds {client.inbox_size} waiting and {client.unacknowledged} "
                f"unacknowledged > dedupe_window {options.dedupe_window} "
                f"+ {self.paused_arrivals} arrivals while paused"
            )
        if client.reconnect_pending != self.reconnect_pending:
            self._fail(
                f"reconnect_pending is {client.reconnect_pending}, "
                f"but the events say {self.reconnect_pending}"
            )
        if self.pending_new is not None:
            if self.pending_new not in self.announced:
                self._fail(f"new message {self.pending_new} was neither announced nor kept")
            self.pending_new = None
        if client.state is ConnectionState.OPEN:
            owed = sorted(
                pair for pair in self.unanswered if pair[1] in self.handed or pair[1] in self.system
            )
            if owed:
                self._fail(f"pushes of messages the application has, never acked: {owed}")
        unresolved = len(self.sends) - len(self.resolved)
        if unresolved != client.pending_sends:
            self._fail(
                f"{unresolved} sends unresolved by the events, "
                f"but the client reports {client.pending_sends} pending"
            )
        if timer_fired_at is not None:
            deadline = client.next_deadline()
            if deadline is not None and deadline <= timer_fired_at:
                self._fail(f"after handle_timer({timer_fired_at}) the next deadline is {deadline}")

    def check_drained(self) -> None:
        missing = self.sends - set(self.resolved)
        if missing:
            self._fail(f"sends never resolved: {sorted(missing)}")
