"""A client connection driven against a scripted broker, watched by its oracle."""

from __future__ import annotations

import dataclasses
import json
from random import Random
from typing import Any

from .._client import ClientConfig, ClientConnection, ClientOptions
from .._codec import decode, encode
from .._errors import LocalProtocolError, RemoteProtocolError
from .._events import (
    CloseTransport,
    ConnectionState,
    MessageReceived,
    OpenTransport,
    UnreadableMessage,
    WriteFrame,
)
from .._frames import ListPeers, Push, Send
from ._client_oracle import ClientOracle
from ._fakes import ContractViolation, FakeSigner
from ._hostile import Draw, hostile_text

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
        self.read_while_paused = 0
        # Taken without acknowledging, oldest first; and some already acknowledged.
        self.unacknowledged: list[MessageReceived | UnreadableMessage] = []
        self.acknowledged: list[MessageReceived | UnreadableMessage] = []
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
        self._feed_text(json.dumps(frame))

    def _feed_text(self, text: str) -> None:
        """Feed one message as a socket would; a push is announced to the oracle first."""
        try:
            frame = decode(text)
        except RemoteProtocolError:
            frame = None
        if isinstance(frame, Push):
            self.oracle.pushed(frame)
        self.client.receive_text(text, now=self.now)
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

    def _may_read(self) -> bool:
        """Whether an adapter would read now: not while paused, but for what one read held."""
        if self.transport is None:
            return False
        if not self.client.reading_paused:
            self.read_while_paused = 0
            return True
        self.read_while_paused += 1
        return self.read_while_paused <= 2

    def _push_fields(self, key: int, flags: int) -> dict[str, Any]:
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
        if flags & 8:
            fields.update(
                senderName="peer", senderMemberPubkey="cd" * 32, senderMemberId="id", topic="t"
            )
        return fields

    def op_push(self, key: int, flags: int) -> None:
        if self._may_read():
            self._feed(self._push_fields(key, flags))

    def op_take(self, how_many: int, *, acknowledge: bool = True) -> None:
        """The application takes messages from the inbox (``how_many`` 0: all of them)."""
        if self.client.options.inbox_limit == 0:
            return
        limit = None if how_many % 4 == 0 else how_many % 4
        taken = self.client.take_messages(limit, acknowledge=acknowledge)
        self.oracle.took(taken, acknowledge=acknowledge)
        if not acknowledge:
            self.unacknowledged.extend(taken)
        self._step()

    def op_acknowledge(self, index: int, how: int) -> None:
        """The application acknowledges a message it took without acknowledging.

        One ``how`` in four, it acknowledges one it acknowledged already
        instead: the connection refuses that, and nothing changes.
        """
        if how % 4 == 0 and self.acknowledged:
            again = self.acknowledged[index % len(self.acknowledged)]
            if again.push.dedupe_key in self.oracle.unacknowledged:
                return  # the same key, pushed anew after it was forgotten: not a second ack
            try:
                self.client.acknowledge(again)
            except LocalProtocolError:
                pass
            else:
                raise ContractViolation(f"message {again.push.dedupe_key} acknowledged twice")
            if self.client.drain_actions() or self.client.drain_events():
                raise ContractViolation("a refused acknowledge() changed the connection")
            return
        if not self.unacknowledged:
            return
        message = self.unacknowledged.pop(index % len(self.unacknowledged))
        self.client.acknowledge(message)
        self.oracle.acknowledged(message)
        self.acknowledged.append(message)
        del self.acknowledged[:-16]
        self._step()

    def op_push_again(self, index: int, fresh_id: bool) -> None:
        """The broker pushes again a message the application took (acknowledged or not).

        With ``fresh_id`` under a new ``messageId`` (same ``client_message_id``,
        so the same dedupe key, if it has one), as a broker that stored it again.
        """
        held = self.unacknowledged + self.acknowledged
        if not held or not self._may_read():
            return
        push = held[index % len(held)].push
        if fresh_id and push.client_message_id is not None:
            push = dataclasses.replace(push, message_id=f"again-{index}")
        self._feed_text(encode(push))

    def op_hostile(self, draw: Draw) -> None:
        """A frame from the broker, written as text with hostile mutations (see ``_hostile``)."""
        if not self._may_read():
            return
        kind = draw(6)
        if kind == 0:
            template = self._push_fields(draw(256), draw(256))
        elif kind == 1 and self.unanswered:
            send_id = self.unanswered[draw(len(self.unanswered))]
            template = {"type": "ack", "id": send_id, "messageId": f"M{send_id}", "queued": True}
        elif kind == 2:
            template = {
                "type": "hello_ack",
                "presenceId": "presence",
                "memberDisplayName": "me",
                "memberProfile": {"groups": [{"name": "g"}], "roleTag": None},
                "meshPolicy": {},
            }
        elif kind == 3 and self.requests:
            template = {
                "type": "peers_list",
                "_reqId": self.requests[draw(len(self.requests))],
                "peers": [
                    {"pubkey": "ab" * 32, "displayName": "p", "groups": [{"name": "g"}]},
                ],
            }
        elif kind == 4:
            template = {"type": "error", "code": "no_hello", "message": "m", "id": "x"}
        else:
            template = self._push_fields(draw(256), draw(256) | 2)
        self._feed_text(hostile_text(template, draw))

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
        """Settle, acknowledge and take what is waiting, close; every send resolved once?"""
        self.settle()
        while self.unacknowledged:
            self.op_acknowledge(0, 1)
        self.op_take(0)
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

        draw: Draw = lambda n: take() % n if n > 0 else 0  # noqa: E731

        while pos < len(data):
            op = take() % 20
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
            elif op == 17:
                self.op_take(take())
            elif op == 18:
                self.op_hostile(draw)
            else:
                which = take() % 3
                if which == 0:
                    self.op_take(take(), acknowledge=False)
                elif which == 1:
                    self.op_acknowledge(take(), take())
                else:
                    self.op_push_again(take(), take() % 2 == 1)
        self.finish()
