"""The simulated client processes, and the workload their applications run."""

from __future__ import annotations

from random import Random
from typing import Any

from ... import (
    BrokerError,
    ClientConfig,
    ClientConnection,
    ClientOptions,
    Closed,
    CloseTransport,
    ConnectionState,
    Event,
    LocalProtocolError,
    MessageReceived,
    OpenTransport,
    PeersListed,
    ReconnectScheduled,
    RequestFailed,
    SendAcked,
    SendFailed,
    SendOutcomeUnknown,
    SendPing,
    UnreadableMessage,
    WriteFrame,
)
from ._core import _SimCore
from ._ledger import ACKED, BROADCAST, DIRECT, GROUP, PENDING, RETRY, LogicalMessage
from ._model import (
    _CLOSE,
    _OPEN,
    _PING,
    _TEXT,
    MESH,
    URL,
    Message,
    _Link,
    _Process,
    _Session,
)

__all__ = ["_Clients"]


class _Clients(_SimCore):
    """The client processes (start, feed, route their actions, crash) and the workload."""

    # --- the clients ------------------------------------------------------------------

    def _start_process(self, session: _Session, *, fresh_id: bool = False) -> None:
        rng = self.rng
        session.generation += 1
        session.restarting = False
        if fresh_id:
            self._retired.append((self.now, session.sid))
            session.sid = f"{session.name}.{session.generation}"
        member = session.member
        inbox = rng.choice((0, 1, 3, 16, 500))
        options = ClientOptions(inbox_limit=inbox, resend_in_flight=rng.random() < 0.85)
        config = ClientConfig(
            url=URL,
            mesh_id=MESH,
            member_id=member.member.member_id,
            signer=member.signer,
            session_id=session.sid,
            display_name=f"{session.name}",
            groups=session.hello_groups or None,
            session_signer=session.session_signer,
            attestation_ttl_ms=12 * 3600 * 1000,  # a clock may run ahead (protocol.md §3.2)
        )
        core = ClientConnection(config, rng=Random(rng.getrandbits(64)), options=options)
        name = f"c{session.index}#{session.generation}"
        proc = _Process(session, core, name, mono=rng.uniform(0.0, 1e6), oracle=self.use_oracle)
        proc.skew = rng.uniform(-5.0, 5.0)
        session.procs.append(proc)
        session.current = proc
        self._note(name, f"process starts: session {session.sid}, inbox {inbox}")
        core.connect(self._cnow(proc))
        # The application says its status on every start: a process that takes a
        # session over (or reattaches it after a crash) inherits the presence's.
        core.set_status(session.status, now=self._cnow(proc))
        self._client_after(proc)
        journal, session.journal = session.journal, []
        for message in journal:
            self._retry_later(message, rng.uniform(0.0, 1.0))

    def _client_after(self, proc: _Process, *, timer_at: float | None = None) -> None:
        """Carry out what the core decided, hand its events to the application, re-arm."""
        core = proc.core
        oracle = proc.oracle
        while True:
            actions = core.drain_actions()
            events = core.drain_events()
            if not actions and not events:
                break
            if oracle is not None:
                oracle.observe(actions, events)
                oracle.check(timer_fired_at=timer_at)
            timer_at = None
            for action in actions:
                self._route(proc, action)
            for event in events:
                self._on_event(proc, event)
            if (
                proc.ended is None
                and core.inbox_size
                and core.options.inbox_limit
                and proc.session.slow_until <= self.now
            ):
                taken = core.take_messages()
                if oracle is not None:
                    oracle.took(taken)
                for message in taken:
                    self._delivered(proc, message)
        if proc.ended is None:
            deadline = core.next_deadline()
            if deadline != proc.armed:
                proc.armed = deadline
                proc.timer_token += 1
                if deadline is not None:
                    when = max(self.now, deadline - proc.mono)
                    self._at(when, self._client_timer, proc, proc.timer_token)
            link = proc.link
            if link is not None and link.backlog and not link.draining and not core.reading_paused:
                link.draining = True
                self._at(self.now, self._drain_backlog, link)

    def _client_timer(self, proc: _Process, token: int) -> None:
        if token != proc.timer_token or proc.ended is not None:
            return
        deadline = proc.armed
        proc.armed = None
        now = self._cnow(proc)
        if deadline is not None and now < deadline:
            now = proc.last_now = deadline
        proc.core.handle_timer(now)
        self._client_after(proc, timer_at=now)

    def _route(self, proc: _Process, action: Any) -> None:
        if isinstance(action, WriteFrame):
            link = proc.link
            assert link is not None and link.client_attached
            text = action.text
            if (
                not self.healing
                and self.rng.random() < self.params.targeted
                and (text.startswith('{"type":"send"') or '"hello"' in text[:30])
            ):
                gap = self.rng.uniform(0.0, 3.0 * self.params.latency)
                self._at(self.now + gap, self._targeted_cut, link)
            if self._trace is not None:
                self._note(proc.name, f"-> {text[:110]}")
            self._c2b(link, _TEXT, text)
        elif isinstance(action, SendPing):
            assert proc.link is not None
            self._c2b(proc.link, _PING)
        elif isinstance(action, OpenTransport):
            link = _Link(proc, action.transport_id)
            proc.link = link
            if proc.partition_until > self.now:
                link.stalled = True  # the network is down: the connect hangs
            self._note(proc.name, f"opens transport {action.transport_id}")
            self._c2b(link, _OPEN)
            if not self.healing and self.rng.random() < self.params.targeted:
                self._at(self.now + self.rng.uniform(0.0, 0.2), self._targeted_cut, link)
        elif isinstance(action, CloseTransport):
            link = proc.link
            assert link is not None
            link.client_attached = False
            link.backlog.clear()
            link.unread = 0
            proc.link = None
            self._note(proc.name, f"closes transport {link.transport_id}: {action.code}")
            self._c2b(link, _CLOSE)

    def _on_event(self, proc: _Process, event: Event) -> None:
        if isinstance(event, (SendAcked, SendFailed, SendOutcomeUnknown)):
            self._outcome(proc, event)
        elif isinstance(event, (MessageReceived, UnreadableMessage)):
            if proc.core.options.inbox_limit == 0:
                self._delivered(proc, event)  # the event is the hand-over
        elif isinstance(event, PeersListed):
            self._request_done(proc, event.request_id)
            if not any(p.session_id == proc.sid for p in event.peers):
                self.ledger.violation(
                    "contract", f"{proc.name}: peers_list lacks the caller's own session"
                )
        elif isinstance(event, RequestFailed):
            self._request_done(proc, event.request_id)
        elif isinstance(event, Closed):
            self._closed(proc, event)
        elif isinstance(event, BrokerError):
            induced = self.stats.induced
            induced[event.code] = induced.get(event.code, 0) + 1
        elif isinstance(event, ReconnectScheduled) and self._trace is not None:
            self._note(proc.name, f"reconnect #{event.attempt} in {event.delay:.3f} s")

    def _request_done(self, proc: _Process, request_id: str) -> None:
        if request_id not in proc.requests:
            self.ledger.violation("contract", f"{proc.name}: request {request_id} resolved twice")
        proc.requests.discard(request_id)

    def _delivered(self, proc: _Process, message: Message) -> None:
        if isinstance(message, UnreadableMessage):
            self.ledger.violation("contract", f"{proc.name}: unreadable message {message}")
            return
        lid = message.body.decode("utf-8", "replace")
        logical = self.ledger.messages.get(lid)
        if self._trace is not None:
            self._note(proc.name, f"app takes {lid} ({message.message_id})")
        if logical is None:
            self.ledger.violation("misrouted", f"{proc.name} took {lid!r}, which nobody sent")
            return
        if lid in proc.taken:
            self.ledger.violation(
                "duplicated",
                f"{logical.describe()} reached the application of {proc.name} twice "
                f"(messageId {message.message_id})",
            )
            return
        proc.taken.add(lid)
        session = proc.session
        self.ledger.delivered(
            logical,
            proc=proc.name,
            sid=proc.sid,
            member=session.member.pubkey,
            groups=session.group_names,
            mid=message.message_id,
            cmid=message.client_message_id,
        )

    def _closed(self, proc: _Process, event: Closed) -> None:
        """The process's connection stopped for good; the application ends it."""
        self._note(proc.name, f"closed for good: {event.reason}")
        if not (event.code == 1000 and "session_replaced" in event.reason):
            self.ledger.violation(
                "refused", f"{proc.name} was refused for good: {event.reason} ({event.code})"
            )
        # Messages still in the inbox are handed over, unacknowledged (as the adapters do).
        if proc.core.options.inbox_limit:
            taken = proc.core.take_messages()
            if proc.oracle is not None:
                proc.oracle.took(taken)
            for message in taken:
                self._delivered(proc, message)
        self._end(proc, "closed")

    def _end(self, proc: _Process, how: str) -> None:
        proc.ended = how
        session = proc.session
        session.procs.remove(proc)
        if session.current is proc:
            session.current = session.procs[-1] if session.procs else None
        if session.current is None and not session.restarting:
            session.restarting = True
            self._at(self.now + self.rng.uniform(0.05, 15.0), self._restart_session, session)

    def _restart_session(self, session: _Session) -> None:
        if session.current is not None:
            session.restarting = False
            return
        fresh = session.session_signer is None and self.rng.random() < 0.2
        self._start_process(session, fresh_id=fresh)

    def _crash(self, proc: _Process) -> None:
        self._note(proc.name, "process crashes")
        link = proc.link
        if link is not None:
            self._kill(link, tell_client=False)
        for message, resend in proc.sends.values():
            if resend:
                continue
            message.pending_in = None
            message.maybe = True
            if self.rng.random() < self.params.journal:
                # Its application kept a journal: the next process re-sends it.
                self._retry_later(message, self.rng.uniform(0.0, 1.0))
            else:
                self.ledger.abandon(message)
        proc.sends.clear()
        self._end(proc, "crashed")

    # --- the applications ---------------------------------------------------------------

    def _schedule_workload(self, session: _Session) -> None:
        rng = self.rng
        self._at(rng.expovariate(self.params.send_rate), self._app_send, session)
        self._at(rng.uniform(5.0, 120.0), self._app_status, session)
        self._at(rng.uniform(5.0, 60.0), self._app_peers, session)
        self._at(rng.uniform(5.0, 300.0), self._app_summary, session)

    def _live(self, session: _Session) -> _Process | None:
        proc = session.current
        if proc is None or proc.ended is not None or proc.core.state is ConnectionState.CLOSED:
            return None
        return proc

    def _app_send(self, session: _Session) -> None:
        if self.healing:
            return
        rng = self.rng
        self._at(self.now + rng.expovariate(self.params.send_rate), self._app_send, session)
        session.counter += 1
        lid = f"{session.name}.{session.counter}"
        priority = rng.choice(("now", "next", "low"))
        member = session.member
        roll = rng.random()
        common = {"sender": session.name, "sender_sid": session.sid, "sender_member": member.pubkey}
        if roll < 0.62:
            others = [m for m in self.members if m is not member]
            if len(member.sessions) > 1 and rng.random() < 0.1:
                others = [member]  # to the member's other sessions
            to = rng.choice(others)
            message = LogicalMessage(
                lid, DIRECT, to.pubkey, priority, recipient_member=to.pubkey, **common
            )
        elif roll < 0.72:
            keyed = [s for s in self.sessions if s.key is not None and s is not session]
            if not keyed:
                return
            to_session = rng.choice(keyed)
            key = to_session.key
            assert key is not None
            message = LogicalMessage(
                lid,
                DIRECT,
                key,
                priority,
                recipient_member=to_session.member.pubkey,
                recipient_sid=to_session.sid,
                **common,
            )
        elif roll < 0.9:
            target = rng.choice(("*", "@all", "#news"))
            message = LogicalMessage(lid, BROADCAST, target, priority, **common)
        else:
            group = rng.choice(("ops", "dev"))
            message = LogicalMessage(lid, GROUP, f"@{group}", priority, group=group, **common)
        self.ledger.add(message)
        self._attempt(message)

    def _attempt(self, message: LogicalMessage) -> None:
        """One ``send()`` of ``message`` from its session's current process."""
        if message.state != RETRY:
            return
        session = self.sessions[int(message.sender[1:])]
        proc = self._live(session)
        if proc is None:
            session.journal.append(message)  # sent when a process runs again
            return
        if message.pending_in is not None:
            self._retry_later(message, 1.0)
            return
        try:
            handle = proc.core.send(
                message.target,
                message.lid,
                message.priority,
                now=self._cnow(proc),
                client_message_id=message.cmid,
            )
        except LocalProtocolError as exc:
            self.ledger.violation("contract", f"{proc.name}: send of {message.lid} raised {exc}")
            self.ledger.abandon(message)
            return
        if proc.oracle is not None:
            proc.oracle.sent(handle)
        if message.cmid is None:
            message.cmid = handle.client_message_id
        message.state = PENDING
        message.pending_in = proc
        message.sender_sids.add(proc.sid)
        proc.sends[handle.id] = (message, False)
        if self._trace is not None:
            self._note(proc.name, f"app sends {message.describe()} as {handle.id}")
        self._client_after(proc)

    def _retry_later(self, message: LogicalMessage, delay: float) -> None:
        message.state = RETRY
        self._at(self.now + delay, self._attempt, message)

    def _outcome(self, proc: _Process, event: SendAcked | SendFailed | SendOutcomeUnknown) -> None:
        entry = proc.sends.pop(event.send_id, None)
        if entry is None:
            self.ledger.violation(
                "resolution", f"{proc.name}: send {event.send_id} resolved again: {event}"
            )
            return
        message, resend = entry
        if message.pending_in is proc:
            message.pending_in = None
        if self._trace is not None:
            self._note(proc.name, f"app hears {type(event).__name__} for {message.lid}")
        if isinstance(event, SendAcked):
            self.ledger.acked(message, event.message_id, self.now, resend=resend)
            return
        if resend or message.state == ACKED:
            return
        rng = self.rng
        if isinstance(event, SendOutcomeUnknown):
            message.maybe = True
            self._retry_later(message, rng.uniform(0.1, 3.0))
            return
        code = event.reason.code
        if code == "no_peer":
            self.ledger.abandon(message)
        elif code in ("refused", "closed"):
            self._retry_later(message, rng.uniform(0.1, 2.0))  # its process stopped
        elif code == "store_full":
            self._retry_later(message, rng.uniform(5.0, 30.0))
        elif event.reason.retryable:
            self._retry_later(message, rng.uniform(0.5, 4.0))
        else:
            self.ledger.violation("refused", f"{message.describe()} refused: {event.reason}")
            self.ledger.abandon(message)

    def _app_status(self, session: _Session) -> None:
        if self.healing:
            return
        rng = self.rng
        if session.status == "idle":
            session.status = rng.choice(("working", "dnd"))
            self._at(self.now + rng.uniform(2.0, 60.0), self._app_status, session)
        else:
            session.status = "idle"
            self._at(self.now + rng.uniform(10.0, 150.0), self._app_status, session)
        for proc in session.procs:
            if proc.core.state is not ConnectionState.CLOSED:
                proc.core.set_status(session.status, now=self._cnow(proc))
                self._client_after(proc)

    def _app_peers(self, session: _Session) -> None:
        if self.healing:
            return
        self._at(self.now + self.rng.uniform(10.0, 60.0), self._app_peers, session)
        proc = self._live(session)
        if proc is not None:
            proc.requests.add(proc.core.list_peers(now=self._cnow(proc)))
            self._client_after(proc)

    def _app_summary(self, session: _Session) -> None:
        if self.healing:
            return
        self._at(self.now + self.rng.uniform(30.0, 300.0), self._app_summary, session)
        proc = self._live(session)
        if proc is not None:
            proc.core.set_summary(f"{session.name} at {self.now:.0f}", now=self._cnow(proc))
            self._client_after(proc)

    def _resume_consumer(self, session: _Session) -> None:
        for proc in list(session.procs):
            if proc.ended is None:
                self._client_after(proc)
