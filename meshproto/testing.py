"""Tools for testing code built on meshproto, and meshproto itself.

* :class:`FakeSigner` stands in for an ed25519 key where no real signature is
  needed (a broker that verifies signatures will refuse it).
* :class:`ClientOracle` watches a :class:`~meshproto.ClientConnection` from
  the outside and checks the contracts of docs/architecture.md after every step. The
  property tests and the fuzz harness both use it, so they check one oracle.
* :class:`ClientHarness` drives a connection against a scripted broker; the
  property tests and the fuzz harness both turn their inputs into its
  operations.
* :class:`BrokerOracle` stands between a :class:`~meshproto.Broker` and
  whoever feeds it: every input goes through the oracle, which passes it on,
  drains the outputs and checks the broker's invariants (the theory of
  operation in ``meshproto/_broker.py``) before handing them back.
* :class:`BrokerHarness` drives a broker through its oracle with sockets,
  hellos, sends, acks, garbage and time, by small integers and bytes;
  ``tests/test_broker_properties.py`` and ``fuzz/fuzz_broker.py`` both turn
  their inputs into its operations.

A broken contract raises :class:`ContractViolation` (an ``AssertionError``).
"""

from __future__ import annotations

import hashlib
import json
from random import Random
from typing import Any, ClassVar

from ._broker import Broker, BrokerOptions
from ._broker_outputs import BrokerOutput, CloseConnection, SendText
from ._client import ClientConfig, ClientConnection, ClientOptions, SendHandle
from ._codec import decode
from ._errors import RemoteProtocolError
from ._events import (
    Action,
    Closed,
    CloseTransport,
    ConnectionState,
    Event,
    MessageReceived,
    OpenTransport,
    ReconnectScheduled,
    SendAcked,
    SendFailed,
    SystemMessage,
    UnreadableMessage,
    WriteFrame,
)
from ._frames import ClientAck, Group, Hello, ListPeers, Push, Send, SessionHello
from ._registry import AcceptingVerifier, Member, StaticRegistry

__all__ = [
    "ACK_ERROR_TEXTS",
    "PERMANENT_CLOSES",
    "TARGETS",
    "TRANSIENT_CLOSES",
    "BrokerHarness",
    "BrokerOracle",
    "ClientHarness",
    "ClientOracle",
    "ContractViolation",
    "FakeSigner",
]


class FakeSigner:
    """A deterministic stand-in for an ed25519 signer (not a signature scheme)."""

    __slots__ = ("_seed", "public_key")

    def __init__(self, seed: bytes | str = b"meshproto-test") -> None:
        self._seed = seed.encode() if isinstance(seed, str) else bytes(seed)
        self.public_key: str = hashlib.sha256(b"pk:" + self._seed).hexdigest()

    def sign(self, message: bytes) -> bytes:
        return hashlib.sha512(b"sig:" + self._seed + message).digest()

    def verify(self, message: bytes, signature: bytes) -> bool:
        return signature == self.sign(message)

    def __repr__(self) -> str:
        return f"FakeSigner(public_key={self.public_key[:12]}...)"


# ---------------------------------------------------------------------------
# The oracle: the client's contracts, checked from the outside.
# ---------------------------------------------------------------------------


class ContractViolation(AssertionError):
    """The machine under test (client or broker) broke one of its contracts."""


class ClientOracle:
    """Checks a :class:`ClientConnection` against its contracts, step by step.

    Feed it every action and event the connection produces (``observe``), the
    ids of the sends made (``sent``), the pushes fed in (``pushed``), and call
    ``check`` after every step. It checks:

    * no send resolves twice, and (``check_drained``) every send has resolved;
    * no resolved send is ever written afterwards;
    * the outbox and the inbox stay within their bounds;
    * at most one reconnect is pending;
    * no push (by dedupe key) reaches the application twice;
    * every push fed in is answered with a ``client_ack``;
    * after ``handle_timer(now)`` no deadline is at or before ``now``.
    """

    def __init__(self, client: ClientConnection) -> None:
        self.client = client
        self.sends: set[str] = set()
        self.resolved: dict[str, SendAcked | SendFailed] = {}
        self.delivered: set[str] = set()
        self.unacked_pushes: dict[str, int] = {}
        self.reconnect_pending = False
        self.closed = False
        self.writes_after_close = 0

    @staticmethod
    def _fail(message: str) -> None:
        raise ContractViolation(message)

    def sent(self, handle: SendHandle) -> None:
        if handle.id in self.sends:
            self._fail(f"send id {handle.id} handed out twice")
        self.sends.add(handle.id)

    def pushed(self, push: Push) -> None:
        self.unacked_pushes[push.message_id] = self.unacked_pushes.get(push.message_id, 0) + 1

    def observe(self, actions: list[Action], events: list[Event]) -> None:
        for event in events:
            self._observe_event(event)
        for action in actions:
            self._observe_action(action)

    def _observe_event(self, event: Event) -> None:
        if isinstance(event, (SendAcked, SendFailed)):
            if event.send_id not in self.sends:
                self._fail(f"resolution of unknown send {event.send_id}: {event}")
            if event.send_id in self.resolved:
                self._fail(
                    f"send {event.send_id} resolved twice: {self.resolved[event.send_id]} "
                    f"then {event}"
                )
            self.resolved[event.send_id] = event
        elif isinstance(event, (MessageReceived, UnreadableMessage, SystemMessage)):
            key = event.push.dedupe_key
            if key in self.delivered:
                self._fail(f"push {key} reached the application twice")
            self.delivered.add(key)
        elif isinstance(event, ReconnectScheduled):
            if self.reconnect_pending:
                self._fail("a second reconnect was scheduled while one was pending")
            self.reconnect_pending = True
        elif isinstance(event, Closed):
            self.reconnect_pending = False
            self.closed = True

    def _observe_action(self, action: Action) -> None:
        if isinstance(action, OpenTransport):
            if self.closed:
                self._fail("a transport was opened after the connection closed")
            self.reconnect_pending = False
        elif isinstance(action, WriteFrame):
            if self.closed:
                self._fail(f"a frame was written after the connection closed: {action.text}")
            frame = decode(action.text)
            if isinstance(frame, Send) and frame.id in self.resolved:
                self._fail(f"send {frame.id} written after it resolved: {self.resolved[frame.id]}")
            if isinstance(frame, ClientAck) and frame.broker_message_id is not None:
                left = self.unacked_pushes.get(frame.broker_message_id, 0)
                if left <= 1:
                    self.unacked_pushes.pop(frame.broker_message_id, None)
                else:
                    self.unacked_pushes[frame.broker_message_id] = left - 1

    def check(self, *, timer_fired_at: float | None = None) -> None:
        client = self.client
        options = client.options
        if client.pending_sends > options.max_outbox:
            self._fail(f"{client.pending_sends} sends pending > max_outbox {options.max_outbox}")
        if client.inbox_size > options.inbox_limit:
            self._fail(f"inbox holds {client.inbox_size} > inbox_limit {options.inbox_limit}")
        if client.reconnect_pending != self.reconnect_pending:
            self._fail(
                f"reconnect_pending is {client.reconnect_pending}, "
                f"but the events say {self.reconnect_pending}"
            )
        if self.unacked_pushes:
            self._fail(f"pushes not answered with client_ack: {sorted(self.unacked_pushes)}")
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


# ---------------------------------------------------------------------------
# The harness: a client driven against a scripted broker.
# ---------------------------------------------------------------------------

#: ``ack{queued:false}`` texts, verbatim from the real broker (docs/protocol.md §4.1).
ACK_ERROR_TEXTS = (
    "rate_limit: max 60 msg/min (burst 10) \u2014 slow down",
    "payload too large: 70096 bytes > MAX_MESSAGE_BYTES=65536",
    "no connected peer for target (not online, or targetSpec is your own key without "
    "another session)",
    "blocked by recipient grants",
)
TARGETS = ("*", "@all", "@team", "#topic", "ab" * 32, "0123456789abcdef" * 4)
TRANSIENT_CLOSES: tuple[tuple[int | None, str], ...] = (
    (None, ""),
    (1000, ""),
    (1001, "going away"),
    (1006, ""),
    (1008, "timestamp_skew"),
    (1008, "capacity"),
    (1009, "too big"),
)
PERMANENT_CLOSES: tuple[tuple[int | None, str], ...] = (
    (1000, "session_replaced"),
    (1008, "unauthorized"),
    (1008, "bad_signature"),
    (4001, "kicked"),
    (4002, "banned"),
)
_TIME_STEPS = (0.25, 1.0, 4.9, 5.0, 9.99, 10.0, 30.0, 75.0)


class ClientHarness:
    """A :class:`ClientConnection` wired to a scripted broker and a :class:`ClientOracle`.

    Each ``op_*`` method is one input to the client, chosen by small integers
    so that hypothesis rules and fuzzer bytes can both drive it; every op that
    makes no sense in the current state does nothing. After every op the
    oracle checks the contracts.
    """

    def __init__(self, *, seed: int = 0, options: ClientOptions | None = None) -> None:
        config = ClientConfig(
            url="ws://127.0.0.1:7900/ws",
            mesh_id="mesh",
            member_id="member",
            signer=FakeSigner(),
            session_id="harness",
        )
        self.now = 0.0
        self.client = ClientConnection(config, rng=Random(seed), options=options)
        self.oracle = ClientOracle(self.client)
        self.opening: int | None = None
        self.transport: int | None = None
        self.unanswered: list[str] = []
        self.requests: list[str] = []
        self.client.connect(self.now)
        self._step()

    # --- plumbing -------------------------------------------------------------

    def _step(self, *, timer: bool = False) -> None:
        client = self.client
        actions = client.drain_actions()
        events = client.drain_events()
        self.oracle.observe(actions, events)
        for action in actions:
            if isinstance(action, OpenTransport):
                self.opening, self.transport = action.transport_id, None
                self.unanswered.clear()
                self.requests.clear()
            elif isinstance(action, CloseTransport):
                self.opening = self.transport = None
                self.unanswered.clear()
                self.requests.clear()
            elif isinstance(action, WriteFrame):
                frame = decode(action.text)
                if isinstance(frame, Send):
                    self.unanswered.append(frame.id)
                elif isinstance(frame, ListPeers) and frame.req_id is not None:
                    self.requests.append(frame.req_id)
        self.oracle.check(timer_fired_at=self.now if timer else None)

    def _feed(self, frame: dict[str, Any]) -> None:
        self.client.receive_text(json.dumps(frame), now=self.now)
        self._step()

    @property
    def closed(self) -> bool:
        return self.client.state is ConnectionState.CLOSED

    # --- operations -------------------------------------------------------------

    def op_send(self, target: int, priority: int, size: int) -> None:
        if self.closed:
            return
        body = "x" * (size % 300)
        handle = self.client.send(
            TARGETS[target % len(TARGETS)], body, ("now", "next", "low")[priority % 3], now=self.now
        )
        self.oracle.sent(handle)
        self._step()

    def op_open(self) -> None:
        if self.opening is not None:
            self.transport, self.opening = self.opening, None
            self.client.transport_opened(
                self.transport, now=self.now, wall_time_ms=1_790_000_000_000 + int(self.now * 1000)
            )
            self._step()

    def op_open_fails(self) -> None:
        if self.opening is not None:
            failed, self.opening = self.opening, None
            self.client.transport_closed(failed, now=self.now, code=None)
            self._step()

    def op_hello_ack(self) -> None:
        if self.transport is not None:
            self._feed({"type": "hello_ack", "presenceId": "presence"})

    def op_answer(self, index: int, how: int) -> None:
        if self.transport is None or not self.unanswered:
            return
        send_id = self.unanswered.pop(index % len(self.unanswered))
        choice = how % (len(ACK_ERROR_TEXTS) + 2)
        if choice == 0:
            self._feed({"type": "ack", "id": send_id, "messageId": f"M{send_id}", "queued": True})
        elif choice == 1:
            self._feed({"type": "error", "code": "malformed", "message": "bad send", "id": send_id})
        else:
            text = ACK_ERROR_TEXTS[choice - 2]
            self._feed(
                {"type": "ack", "id": send_id, "messageId": "", "queued": False, "error": text}
            )

    def op_stale_ack(self, index: int) -> None:
        if self.transport is not None:
            self._feed({"type": "ack", "id": f"stale{index}", "messageId": "X", "queued": True})

    def op_push(self, key: int, flags: int) -> None:
        if self.transport is None:
            return
        fields: dict[str, Any] = {
            "type": "push",
            "messageId": f"msg-{key % 16}",
            "meshId": "mesh",
            "senderPubkey": "cd" * 32,
            "priority": "next",
            "nonce": "",
            "ciphertext": "!!not base64" if flags & 4 else "aGVsbG8=",
            "createdAt": "2026-11-27T00:00:00.000Z",
        }
        if flags & 1:
            fields["client_message_id"] = f"cmid-{key % 16}"
        if flags & 2:
            fields.update(subtype="system", event="peer_joined", eventData={"name": "p"})
        push = decode(json.dumps(fields))
        assert isinstance(push, Push)
        self.oracle.pushed(push)
        self._feed(fields)

    def op_link_drop(self, which: int) -> None:
        self._close_with(TRANSIENT_CLOSES[which % len(TRANSIENT_CLOSES)])

    def op_refuse(self, which: int) -> None:
        self._close_with(PERMANENT_CLOSES[which % len(PERMANENT_CLOSES)])

    def _close_with(self, close: tuple[int | None, str]) -> None:
        current = self.transport if self.transport is not None else self.opening
        if current is not None:
            code, reason = close
            self.opening = self.transport = None
            self.client.transport_closed(current, now=self.now, code=code, reason=reason)
            self._step()

    def op_garbage(self, data: bytes, binary: bool) -> None:
        if self.transport is None:
            return
        if binary:
            self.client.receive_binary(data, now=self.now)
        else:
            self.client.receive_text(data.decode("utf-8", errors="replace"), now=self.now)
        self._step()

    def op_advance(self, step: int) -> None:
        self.now += _TIME_STEPS[step % len(_TIME_STEPS)]
        self.client.handle_timer(self.now)
        self._step(timer=True)

    def op_fire_next_deadline(self) -> None:
        deadline = self.client.next_deadline()
        if deadline is not None:
            self.now = max(self.now, deadline)
            self.client.handle_timer(self.now)
            self._step(timer=True)

    def op_ping(self, pong: bool) -> None:
        if pong:
            self.client.receive_pong(now=self.now)
        else:
            self.client.receive_ping(now=self.now)
        self._step()

    def op_set_status(self, which: int) -> None:
        if not self.closed:
            self.client.set_status(("idle", "working", "dnd")[which % 3], now=self.now)
            self._step()

    def op_list_peers(self) -> None:
        if not self.closed:
            self.client.list_peers(now=self.now)
            self._step()

    def op_answer_peers(self, index: int) -> None:
        if self.transport is not None and self.requests:
            req_id = self.requests.pop(index % len(self.requests))
            self._feed({"type": "peers_list", "_reqId": req_id, "peers": [{"pubkey": "ab" * 32}]})

    def op_close(self) -> None:
        self.client.close(now=self.now)
        self._step()

    # --- endings --------------------------------------------------------------

    def settle(self, *, max_rounds: int = 500) -> None:
        """Play a broker that accepts everything until no send is pending."""
        for _ in range(max_rounds):
            if self.closed or self.client.pending_sends == 0:
                return
            if self.opening is not None:
                self.op_open()
            elif self.transport is not None and self.client.state is ConnectionState.HANDSHAKING:
                self.op_hello_ack()
            elif self.transport is not None and self.unanswered:
                while self.transport is not None and self.unanswered:
                    self.op_answer(0, 0)
            else:
                self.op_fire_next_deadline()
        raise ContractViolation(f"still {self.client.pending_sends} sends pending after settling")

    def finish(self) -> None:
        """Settle, close, and check that every send resolved exactly once."""
        self.settle()
        self.op_close()
        self.oracle.check_drained()

    # --- fuzzing ------------------------------------------------------------------

    def run_bytes(self, data: bytes) -> None:
        """Interpret ``data`` as a sequence of operations (the fuzz entry point)."""
        pos = 0

        def take() -> int:
            nonlocal pos
            value = data[pos] if pos < len(data) else 0
            pos += 1
            return value

        while pos < len(data):
            op = take() % 18
            if op == 0:
                self.op_send(take(), take(), take())
            elif op == 1:
                self.op_open()
            elif op == 2:
                self.op_open_fails()
            elif op == 3:
                self.op_hello_ack()
            elif op == 4:
                self.op_answer(take(), take())
            elif op == 5:
                self.op_stale_ack(take())
            elif op == 6:
                self.op_push(take(), take())
            elif op == 7:
                self.op_link_drop(take())
            elif op == 8:
                if take() % 8 == 0:  # rare: a refusal ends the run
                    self.op_refuse(take())
            elif op == 9:
                size = take() % 32
                chunk, pos = data[pos : pos + size], pos + size
                self.op_garbage(chunk, take() % 2 == 1)
            elif op == 10:
                self.op_advance(take())
            elif op == 11:
                self.op_fire_next_deadline()
            elif op == 12:
                self.op_ping(take() % 2 == 1)
            elif op == 13:
                self.op_set_status(take())
            elif op == 14:
                self.op_list_peers()
            elif op == 15:
                self.op_answer_peers(take())
            elif op == 16:
                if take() % 16 == 0:  # rare: closing ends the run
                    self.op_close()
            else:
                self.op_send(take(), take(), take())
        self.finish()


# ---------------------------------------------------------------------------
# The broker's oracle: its invariants, checked around every input.
# ---------------------------------------------------------------------------

_Written = list[tuple[int, dict[str, Any]]]


class BrokerOracle:
    """A :class:`~meshproto.Broker` whose every input is checked against its invariants.

    Feed the broker through the oracle: its methods have the broker's input
    names and arguments (``connection_opened``, ``receive_text``, ...,
    ``handle_timer``, ``shutdown``); each passes the input on, drains the
    outputs, checks them and the broker's state, and returns them. The
    frames the last input wrote are in ``written`` as ``(conn_id, object)``.
    It checks, after every input (see ``meshproto/_broker.py``):

    * no input raises (whatever raises goes through);
    * every ``send`` on an open socket is answered exactly once (an ``ack``
      or an ``error`` carrying its ``id``) in that very input's outputs, and
      a ``list_peers`` answered at all is answered once, echoing ``_reqId``
      exactly when it was given;
    * every output addresses a socket that is open when it is produced, and
      every text output decodes with :func:`~meshproto.decode`;
    * the broker knows exactly the sockets that are open;
    * after ``handle_timer(now)``, ``next_deadline()`` is ``None`` or ``> now``;
    * no open socket without an accepted hello is older than
      ``hello_timeout`` at the last ``handle_timer``, and no socket whose
      hello was accepted is ever closed ``hello timeout``;
    * a session key names at most one peer of a mesh, and an accepted hello
      (member or session) that names one leaves it with that hello's member;
    * it keeps a model of *proven* keys (the key of an accepted session
      hello, for as long as a presence of that member holds it): a session
      hello is refused ``bad_session_pubkey`` only while another member has
      proven its key (or the key is another member's own member key), and no
      hello is accepted with a key that another member has proven.

    ``check_finished`` (once every socket is closed and every timer has run)
    checks that nothing is left behind: no socket, presence, claim, stored
    message or timer.
    """

    def __init__(self, broker: Broker, *, meshes: tuple[str, ...] = ()) -> None:
        self.broker = broker
        self.open: dict[int, float] = {}  # open sockets -> when they opened
        self.helloed: set[int] = set()  # open sockets whose hello was accepted
        self.meshes: set[str] = set(meshes)  # meshes a hello was accepted for
        self.proven: dict[tuple[str, str], str] = {}  # (mesh, session key) -> member
        self.timer_now: float | None = None  # the last handle_timer's now
        self.written: _Written = []

    @staticmethod
    def _fail(message: str) -> None:
        raise ContractViolation(message)

    # --- inputs, passed on and checked -----------------------------------------

    def connection_opened(self, conn_id: int, *, now: float) -> list[BrokerOutput]:
        self.broker.connection_opened(conn_id, now=now)
        self.open[conn_id] = now
        self.helloed.discard(conn_id)
        return self._observe()

    def receive_text(self, conn_id: int, text: str, *, now: float) -> list[BrokerOutput]:
        was_open = conn_id in self.open
        frame = self._frame(text)
        self._forget_lost_keys()
        proven_before = dict(self.proven)
        self.broker.receive_text(conn_id, text, now=now)
        outputs = self._observe(check=False)
        if isinstance(frame, Send):
            self._check_send_answered(conn_id, frame, was_open=was_open)
        elif isinstance(frame, (Hello, SessionHello)):
            self._check_hello_answer(conn_id, frame, proven_before)
        elif isinstance(frame, ListPeers):
            self._check_peers_answer(conn_id, frame)
        self.check()
        return outputs

    def receive_binary(self, conn_id: int, data: bytes, *, now: float) -> list[BrokerOutput]:
        self.broker.receive_binary(conn_id, data, now=now)
        return self._observe()

    def receive_ping(self, conn_id: int, *, now: float) -> list[BrokerOutput]:
        self.broker.receive_ping(conn_id, now=now)
        return self._observe()

    def receive_pong(self, conn_id: int, *, now: float) -> list[BrokerOutput]:
        self.broker.receive_pong(conn_id, now=now)
        return self._observe()

    def connection_closed(self, conn_id: int, *, now: float) -> list[BrokerOutput]:
        self.broker.connection_closed(conn_id, now=now)
        self._forget(conn_id)
        return self._observe()

    def handle_timer(self, now: float) -> list[BrokerOutput]:
        self.broker.handle_timer(now)
        self.timer_now = now if self.timer_now is None else max(self.timer_now, now)
        outputs = self._observe()
        deadline = self.broker.next_deadline()
        if deadline is not None and deadline <= now:
            self._fail(f"after handle_timer({now}) the next deadline is {deadline}")
        return outputs

    def shutdown(self, *, now: float) -> list[BrokerOutput]:
        self.broker.shutdown(now=now)
        return self._observe()

    # --- the checks ---------------------------------------------------------------

    def _forget(self, conn_id: int) -> None:
        self.open.pop(conn_id, None)
        self.helloed.discard(conn_id)

    def _frame(self, text: str) -> object:
        """The frame ``text`` is, if the broker will read it as one (else ``None``)."""
        cap = self.broker.options.hard_frame_cap
        if len(text.encode("utf-8", "surrogatepass")) > cap:
            return None  # closed 1009 unread
        try:
            return decode(text)
        except RemoteProtocolError:
            return None

    def _observe(self, *, check: bool = True) -> list[BrokerOutput]:
        """Check and apply the broker's pending outputs; remember the frames written."""
        outputs = self.broker.drain_outputs()
        written: _Written = []
        for out in outputs:
            if out.conn_id not in self.open:
                self._fail(f"output for a socket that is not open: {out}")
            if isinstance(out, SendText):
                try:
                    decode(out.text)
                except RemoteProtocolError as exc:
                    self._fail(f"the broker wrote a frame that does not decode ({exc}): {out}")
                written.append((out.conn_id, json.loads(out.text)))
            elif isinstance(out, CloseConnection):
                if out.reason == "hello timeout" and out.conn_id in self.helloed:
                    self._fail(f"a socket whose hello was accepted timed out its hello: {out}")
                self._forget(out.conn_id)
        self.written = written
        if check:
            self.check()
        return outputs

    def _check_send_answered(self, conn_id: int, send: Send, *, was_open: bool) -> None:
        answers = [
            frame
            for to, frame in self.written
            if to == conn_id
            and frame.get("type") in ("ack", "error")
            and frame.get("id") == send.id
        ]
        if len(answers) != (1 if was_open else 0):
            state = "open" if was_open else "closed"
            self._fail(
                f"send {send.id!r} on a {state} socket answered {len(answers)} times: "
                f"{self.written}"
            )

    def _check_peers_answer(self, conn_id: int, request: ListPeers) -> None:
        answers = [frame for _to, frame in self.written if frame.get("type") == "peers_list"]
        if conn_id not in self.open or not answers:
            return
        if len(answers) != 1:
            self._fail(f"list_peers answered {len(answers)} times: {answers}")
        if ("_reqId" in answers[0]) != (request.req_id is not None):
            self._fail(f"peers_list for _reqId={request.req_id!r}: {answers[0]}")

    def _holder(self, mesh_id: str, key: str) -> str | None:
        """The member whose peer is known by ``key`` in ``mesh_id``, if any."""
        for peer in self.broker.peers(mesh_id):
            if peer.pubkey == key:
                return peer.member_pubkey
        return None

    def _forget_lost_keys(self) -> None:
        """A proven key whose presence is gone (grace ran out, or displaced) is proven no longer."""
        for (mesh_id, key), member in list(self.proven.items()):
            if self._holder(mesh_id, key) != member:
                del self.proven[(mesh_id, key)]

    def _check_hello_answer(
        self, conn_id: int, hello: Hello | SessionHello, proven: dict[tuple[str, str], str]
    ) -> None:
        """Check the answer to ``hello``; ``proven`` is the model as it was before it."""
        proof = isinstance(hello, SessionHello)
        member = hello.parent_member_pubkey if isinstance(hello, SessionHello) else hello.pubkey
        mesh_id, key = hello.mesh_id, hello.session_pubkey
        proven_by = proven.get((mesh_id, key)) if key is not None else None
        mine = [frame for to, frame in self.written if to == conn_id]
        if any(frame.get("type") == "hello_ack" for frame in mine):
            self.helloed.add(conn_id)
            self.meshes.add(mesh_id)
            if key is not None:
                holder = self._holder(mesh_id, key)
                if holder != member:
                    self._fail(f"hello of {member} naming {key} accepted, but {holder} holds it")
                if proven_by not in (None, member):
                    self._fail(f"{member} took session key {key} that {proven_by} proved")
                if proof:
                    self.proven[(mesh_id, key)] = member
        refused = any(
            frame.get("type") == "error" and frame.get("code") == "bad_session_pubkey"
            for frame in mine
        )
        if proof and refused and proven_by in (None, member):
            assert key is not None
            row = self.broker.registry.lookup(mesh_id, key)
            if row is None or row.pubkey == member:
                self._fail(
                    f"session hello of {member} proving {key} refused bad_session_pubkey, "
                    f"but no proven presence of another member holds it"
                )

    def check(self) -> None:
        """The broker's state invariants (run after every input, and at any time)."""
        broker = self.broker
        if broker.connection_count != len(self.open):
            self._fail(f"the broker has {broker.connection_count} sockets, {len(self.open)} open")
        timeout = broker.options.hello_timeout
        for conn_id, opened_at in self.open.items():
            if not broker.is_open(conn_id):
                self._fail(f"the broker forgot open socket {conn_id}")
            if broker.is_helloed(conn_id):
                self.helloed.add(conn_id)
            elif self.timer_now is not None and self.timer_now >= opened_at + timeout:
                self._fail(
                    f"socket {conn_id} opened at {opened_at} has no accepted hello "
                    f"at {self.timer_now} (hello_timeout {timeout})"
                )
        for mesh_id in self.meshes:
            keys = [p.pubkey for p in broker.peers(mesh_id) if p.pubkey != p.member_pubkey]
            if len(keys) != len(set(keys)):
                self._fail(f"a session key names more than one peer in {mesh_id}: {keys}")

    def check_finished(self) -> None:
        """Once every socket is closed and every timer has run: nothing is left behind."""
        self.check()
        broker = self.broker
        left = {
            "open sockets": broker.connection_count,
            "presences": broker.presence_count,
            "claims": broker.claimed_count,
        }
        for what, count in left.items():
            if count:
                self._fail(f"{count} {what} left after every socket closed and every timer ran")
        if broker.next_deadline() is not None:
            self._fail(f"a timer is still pending at {broker.next_deadline()}")
        if broker.store.next_expiry() is not None:
            self._fail(f"a stored message outlived its time to live: {broker.store.next_expiry()}")


# ---------------------------------------------------------------------------
# The broker harness: a broker driven through its oracle.
# ---------------------------------------------------------------------------

_MESH = "mesh-prop"
_T0 = 1_800_000_000.0
_SLOTS = 4
#: Members by name: ``d`` is revoked, ``x`` is not in the registry.
_PK = {name: f"{i:x}" * 64 for i, name in enumerate(("a", "b", "c", "d", "x"), start=1)}
_SK = ("e" * 64, "f" * 64)
_WHO = ("a", "b", "c", "d", "x")
_SESSION_IDS = (None, "one", "two")
#: A member hello's ``sessionPubkey``: none, a session key, not hex, another member's key.
_HELLO_KEYS = (None, _SK[0], _SK[1], "BAD", _PK["c"])
_SKEWS = (0.0, 30.0, -61.0, 61.0)
_GROUPS: tuple[list[dict[str, str]] | None, ...] = (
    None,
    [{"name": "ops"}],
    [{"name": "dev", "role": "x"}],
)
#: A session hello's key: a session key, or a member's own key.
_SESSION_KEYS = (_SK[0], _SK[1], _PK["c"])
_EXPIRIES = (3600.0, 24 * 3600.0, 0.0, 24 * 3600.0 + 1)
_BROKER_TARGETS = (
    _PK["a"],
    _PK["b"],
    _PK["c"],
    _PK["x"],
    _SK[0],
    _SK[1],
    "*",
    "@all",
    "@ops",
    "#topic",
    "nobody",
    "AB" * 32,
)
_SEND_PRIORITIES = ("now", "next", "low", "urgent")
_CMIDS = (None, "c1", "c2", "c3")
_SET_STATUSES = ("idle", "working", "dnd", "asleep")
_BROKER_GARBAGE = (
    "",
    "nope",
    "[]",
    "{}",
    '{"type": 1}',
    '{"type": "send", "id": "g1"}',
    '{"type": "hello"}',
    '{"type": "hello", "meshId": 5}',
    '{"type": "session_hello"}',
    '{"type": "client_ack", "brokerMessageId": 3}',
    '{"type": "list_peers", "_reqId": {}}',
    '{"type": "whatever", "id": "g2"}',
    "[" * 2000,
)
_BROKER_STEPS = (0.0, 0.5, 1.0, 10.0, 29.0, 31.0, 61.0, 76.0, 91.0, 4000.0)


def _pick(table: tuple[Any, ...], index: int) -> Any:
    return table[index % len(table)]


class BrokerHarness:
    """A :class:`~meshproto.Broker` of one mesh, driven through a :class:`BrokerOracle`.

    The registry holds members ``a``, ``b`` (in group ``ops``), ``c`` and a
    revoked ``d``; ``x`` is unknown. Rules name one of four socket *slots*; a
    slot keeps naming its last socket after that socket closed, and names a
    socket that was never opened until it is first opened, so inputs for
    closed and unknown sockets (which an adapter may deliver late) are fed
    too, and the broker must ignore them. Each ``op_*`` method is one input
    (or a socket opened, then one input), chosen by small integers (indices,
    taken modulo the length, into the tables below) or bytes, so that
    hypothesis rules and fuzzer bytes can both drive it; an op that makes no
    sense in the current state does nothing. The oracle checks every input,
    and ``finish`` checks that nothing outlives the broker's shutdown.
    ``small`` gives tight limits (3 sockets, 2 stored messages per member, a
    burst of 3 sends, a 1 s hello timeout).
    """

    #: What the ``op_*`` integers choose from (each taken modulo the length).
    SLOTS: ClassVar[int] = _SLOTS
    WHO: ClassVar[tuple[str, ...]] = _WHO
    SESSION_IDS: ClassVar[tuple[str | None, ...]] = _SESSION_IDS
    HELLO_KEYS: ClassVar[tuple[str | None, ...]] = _HELLO_KEYS
    SKEWS: ClassVar[tuple[float, ...]] = _SKEWS
    GROUPS: ClassVar[tuple[list[dict[str, str]] | None, ...]] = _GROUPS
    SESSION_KEYS: ClassVar[tuple[str, ...]] = _SESSION_KEYS
    EXPIRIES: ClassVar[tuple[float, ...]] = _EXPIRIES
    TARGETS: ClassVar[tuple[str, ...]] = _BROKER_TARGETS
    PRIORITIES: ClassVar[tuple[str, ...]] = _SEND_PRIORITIES
    CLIENT_MESSAGE_IDS: ClassVar[tuple[str | None, ...]] = _CMIDS
    STATUSES: ClassVar[tuple[str, ...]] = _SET_STATUSES
    GARBAGE: ClassVar[tuple[str, ...]] = _BROKER_GARBAGE
    TIME_STEPS: ClassVar[tuple[float, ...]] = _BROKER_STEPS

    def __init__(self, *, small: bool = False, seed: int = 0) -> None:
        registry = StaticRegistry(
            [
                Member(_MESH, "id-a", _PK["a"], "a"),
                Member(_MESH, "id-b", _PK["b"], "b", groups=(Group("ops"),)),
                Member(_MESH, "id-c", _PK["c"], "c"),
                Member(_MESH, "id-d", _PK["d"], "d", revoked=True),
            ]
        )
        options = (
            BrokerOptions(
                max_connections_per_mesh=3,
                store_limit_per_member=2,
                rate_burst=3,
                hello_timeout=1.0,
            )
            if small
            else BrokerOptions()
        )
        self.broker = Broker(
            registry, verifier=AcceptingVerifier(), rng=Random(seed), options=options
        )
        self.oracle = BrokerOracle(self.broker, meshes=(_MESH,))
        self.now = _T0
        self.slots: dict[int, int] = {}  # slot -> conn_id of its last socket
        self.next_conn = 0
        self.sends = 0
        self.message_ids: list[str] = ["unknown-id"]  # for client_ack to name

    # --- plumbing ---------------------------------------------------------------

    def conn(self, slot: int) -> int:
        """The conn_id behind a slot; a never-opened slot names a socket never opened."""
        slot %= _SLOTS
        return self.slots.get(slot, -1 - slot)

    def is_open(self, slot: int) -> bool:
        return self.conn(slot) in self.oracle.open

    def _feed(self, slot: int, text: str) -> None:
        self.oracle.receive_text(self.conn(slot), text, now=self.now)
        for _to, frame in self.oracle.written:
            if frame.get("type") in ("push", "ack") and frame.get("messageId"):
                self.message_ids.append(frame["messageId"])

    def _feed_frame(self, slot: int, frame: dict[str, Any]) -> None:
        self._feed(slot, json.dumps(frame))

    # --- sockets ------------------------------------------------------------------

    def op_open(self, slot: int) -> None:
        """A socket opens in ``slot`` (nothing if the slot's socket is open)."""
        if self.is_open(slot):
            return
        conn_id, self.next_conn = self.next_conn, self.next_conn + 1
        self.slots[slot % _SLOTS] = conn_id
        self.oracle.connection_opened(conn_id, now=self.now)

    def op_close(self, slot: int) -> None:
        """The adapter reports the slot's socket closed (even if it is closed already)."""
        self.oracle.connection_closed(self.conn(slot), now=self.now)

    def op_ping(self, slot: int, ping: bool) -> None:
        if ping:
            self.oracle.receive_ping(self.conn(slot), now=self.now)
        else:
            self.oracle.receive_pong(self.conn(slot), now=self.now)

    # --- hellos ---------------------------------------------------------------------

    def op_hello(
        self,
        slot: int,
        who: int,
        session_id: int,
        session_key: int,
        skew: int,
        *,
        good_signature: bool,
        groups: int,
    ) -> None:
        """A member hello, good or bad; on a closed even slot a socket opens first."""
        if not self.is_open(slot) and slot % 2 == 0:
            self.op_open(slot)  # a client opens a socket to say hello (mostly)
        name = _pick(_WHO, who)
        frame: dict[str, Any] = {
            "type": "hello",
            "meshId": _MESH,
            "memberId": f"id-{name}",
            "pubkey": _PK[name],
            "timestamp": round((self.now + _pick(_SKEWS, skew)) * 1000),
            "signature": "ab" * 64 if good_signature else "xyz",
        }
        sid = _pick(_SESSION_IDS, session_id)
        if sid is not None:
            frame["sessionId"] = sid
        key = _pick(_HELLO_KEYS, session_key)
        if key is not None:
            frame["sessionPubkey"] = key
        group_list = _pick(_GROUPS, groups)
        if group_list is not None:
            frame["groups"] = group_list
        self._feed_frame(slot, frame)

    def op_good_hello(self, slot: int, who: int, session_id: int, session_key: int) -> None:
        """A hello of a, b or c the registry decides on (the common case), socket opened."""
        self.op_open(slot)
        self.op_hello(slot, who % 3, session_id, session_key % 3, 0, good_signature=True, groups=0)

    def op_session_hello(
        self, slot: int, who: int, session_key: int, session_id: int, expires: int
    ) -> None:
        """A session hello (socket opened): it proves its key (any signature is accepted)."""
        self.op_open(slot)
        name = _pick(_WHO, who)
        key = _pick(_SESSION_KEYS, session_key)
        frame: dict[str, Any] = {
            "type": "session_hello",
            "meshId": _MESH,
            "parentMemberId": f"id-{name}",
            "parentMemberPubkey": _PK[name],
            "sessionPubkey": key,
            "parentAttestation": {
                "sessionPubkey": key,
                "parentMemberPubkey": _PK[name],
                "expiresAt": round((self.now + _pick(_EXPIRIES, expires)) * 1000),
                "signature": "cd" * 64,
            },
            "timestamp": round(self.now * 1000),
            "signature": "ab" * 64,
        }
        sid = _pick(_SESSION_IDS, session_id)
        if sid is not None:
            frame["sessionId"] = sid
        self._feed_frame(slot, frame)

    # --- frames of a helloed socket ------------------------------------------------

    def op_send(self, slot: int, target: int, priority: int, cmid: int, big: bool) -> None:
        self.sends += 1
        frame: dict[str, Any] = {
            "type": "send",
            "id": f"send-{self.sends}",
            "targetSpec": _pick(_BROKER_TARGETS, target),
            "priority": _pick(_SEND_PRIORITIES, priority),
            "nonce": "bm9uY2U=",
            "ciphertext": "A" * (70_000 if big else 8),
        }
        client_message_id = _pick(_CMIDS, cmid)
        if client_message_id is not None:
            frame["client_message_id"] = client_message_id
        self._feed_frame(slot, frame)

    def op_client_ack(self, slot: int, pick: int, by_cmid: bool) -> None:
        """Acknowledge a message id seen so far (most recent first), or a client id."""
        frame: dict[str, Any] = {"type": "client_ack"}
        if by_cmid:
            frame["clientMessageId"] = _pick(_CMIDS[1:], pick)
        else:
            frame["brokerMessageId"] = self.message_ids[-1 - pick % len(self.message_ids)]
        self._feed_frame(slot, frame)

    def op_set_status(self, slot: int, status: int) -> None:
        self._feed_frame(slot, {"type": "set_status", "status": _pick(_SET_STATUSES, status)})

    def op_set_summary(self, slot: int, summary: bytes) -> None:
        text = summary.decode("utf-8", errors="replace")
        self._feed_frame(slot, {"type": "set_summary", "summary": text})

    def op_list_peers(self, slot: int, with_req_id: bool) -> None:
        frame: dict[str, Any] = {"type": "list_peers"}
        if with_req_id:
            frame["_reqId"] = "r1"
        self._feed_frame(slot, frame)

    # --- garbage ----------------------------------------------------------------------

    def op_malformed(self, slot: int, which: int) -> None:
        """One of a list of near misses (bad JSON, wrong types, missing fields)."""
        self._feed(slot, _pick(_BROKER_GARBAGE, which))

    def op_text(self, slot: int, data: bytes) -> None:
        """Arbitrary text (``data`` as UTF-8, bad bytes replaced)."""
        self._feed(slot, data.decode("utf-8", errors="replace"))

    def op_binary(self, slot: int, data: bytes) -> None:
        self.oracle.receive_binary(self.conn(slot), data, now=self.now)

    # --- time -------------------------------------------------------------------------

    def op_advance(self, step: int) -> None:
        self.now += _pick(_BROKER_STEPS, step)
        self.oracle.handle_timer(self.now)

    def op_fire_next_deadline(self) -> None:
        deadline = self.broker.next_deadline()
        if deadline is not None:
            self.now = max(self.now, deadline)
            self.oracle.handle_timer(self.now)

    # --- endings ------------------------------------------------------------------------

    def finish(self, *, max_rounds: int = 100_000) -> None:
        """Shut the broker down, run every timer out, and check nothing is left behind."""
        self.oracle.shutdown(now=self.now)
        for _ in range(max_rounds):
            if self.broker.next_deadline() is None:
                break
            self.op_fire_next_deadline()
        self.oracle.check_finished()

    # --- fuzzing ---------------------------------------------------------------------------

    def run_bytes(self, data: bytes) -> None:
        """Interpret ``data`` as a sequence of operations, then ``finish`` (the fuzz entry)."""
        pos = 0

        def take() -> int:
            nonlocal pos
            value = data[pos] if pos < len(data) else 0
            pos += 1
            return value

        def chunk() -> bytes:
            nonlocal pos
            size = take() % 32
            piece, pos = data[pos : pos + size], pos + size
            return piece

        while pos < len(data):
            op = take() % 18
            if op == 0:
                self.op_open(take())
            elif op == 1:
                slot, who, session_id, session_key, skew = (take() for _ in range(5))
                self.op_hello(
                    slot,
                    who,
                    session_id,
                    session_key,
                    skew,
                    good_signature=take() % 4 != 0,
                    groups=take(),
                )
            elif op == 2:
                self.op_session_hello(take(), take(), take(), take(), take())
            elif op == 3:
                self.op_good_hello(take(), take(), take(), take())
            elif op in (4, 17):
                self.op_send(take(), take(), take(), take(), take() % 8 == 0)
            elif op == 5:
                self.op_client_ack(take(), take(), take() % 2 == 1)
            elif op == 6:
                self.op_set_status(take(), take())
            elif op == 7:
                self.op_list_peers(take(), take() % 2 == 1)
            elif op == 8:
                slot = take()
                self.op_set_summary(slot, chunk())
            elif op == 9:
                self.op_malformed(take(), take())
            elif op == 10:
                slot = take()
                self.op_text(slot, chunk())
            elif op == 11:
                slot = take()
                self.op_binary(slot, chunk())
            elif op == 12:
                self.op_ping(take(), take() % 2 == 1)
            elif op == 13:
                self.op_close(take())
            elif op == 14:
                self.op_advance(take())
            elif op == 15:
                self.op_fire_next_deadline()
            else:
                self.op_good_hello(take(), take(), take(), take())
        self.finish()
