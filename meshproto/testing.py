"""Tools for testing code built on meshproto, and meshproto itself.

* :class:`FakeSigner` stands in for an ed25519 key where no real signature is
  needed (a broker that verifies signatures will refuse it).
* :class:`ClientOracle` watches a :class:`~meshproto.ClientConnection` from
  the outside and checks the contracts of DESIGN.md after every step. The
  property tests and the fuzz harness both use it, so they check one oracle.
* :class:`ClientHarness` drives a connection against a scripted broker; the
  property tests and the fuzz harness both turn their inputs into its
  operations.
"""

from __future__ import annotations

import hashlib
import json
from random import Random
from typing import Any

from ._client import ClientConfig, ClientConnection, ClientOptions, SendHandle
from ._codec import decode
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
from ._frames import ClientAck, ListPeers, Push, Send

__all__ = [
    "ACK_ERROR_TEXTS",
    "PERMANENT_CLOSES",
    "TARGETS",
    "TRANSIENT_CLOSES",
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
    """The client broke one of its contracts."""


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

#: ``ack{queued:false}`` texts, verbatim from the real broker (PROTOCOL.md §4.1).
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
