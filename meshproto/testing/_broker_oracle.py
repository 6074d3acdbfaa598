"""The broker's invariants, checked around every input."""

from __future__ import annotations

import json
import re
from typing import Any

from .._broker import Broker
from .._broker_outputs import BrokerOutput, CloseConnection, SendText, expand_outputs
from .._codec import decode
from .._errors import RemoteProtocolError
from .._frames import Hello, ListPeers, Send, SessionHello
from ._fakes import ContractViolation

# ---------------------------------------------------------------------------
# The broker's oracle: its invariants, checked around every input.
# ---------------------------------------------------------------------------

_Written = list[tuple[int, dict[str, Any]]]
#: A well-formed key; a hello naming any other ``sessionPubkey`` is refused as malformed.
_KEY = re.compile(r"[0-9a-f]{64}")


class BrokerOracle:
    """A :class:`~meshproto.Broker` whose every input is checked against its invariants.

    Feed the broker through the oracle: its methods have the broker's input
    names and arguments (``connection_opened``, ``receive_text``, ...,
    ``handle_timer``, ``shutdown``); each passes the input on, drains the
    outputs, checks them and the broker's state, and returns them. The
    frames the last input wrote are in ``written`` as ``(conn_id, object)``,
    and ``heard`` keeps, per socket, the system pushes it was sent, as
    ``(event, pubkey of the peer)``, in order.
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
      proven its key (or the key is another member's own member key, or is
      not a key at all: not 64 lowercase hex), and no hello is accepted with
      a key that another member has proven.

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
        self.heard: dict[int, list[tuple[str, str]]] = {}

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
        for out in expand_outputs(outputs):
            if out.conn_id not in self.open:
                self._fail(f"output for a socket that is not open: {out}")
            if isinstance(out, SendText):
                try:
                    decode(out.text)
                except RemoteProtocolError as exc:
                    self._fail(f"the broker wrote a frame that does not decode ({exc}): {out}")
                frame = json.loads(out.text)
                written.append((out.conn_id, frame))
                if frame.get("subtype") == "system":
                    data = frame.get("eventData") or {}
                    self.heard.setdefault(out.conn_id, []).append(
                        (str(frame.get("event")), str(data.get("pubkey")))
                    )
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
        if proof and refused and proven_by in (None, member) and _KEY.fullmatch(key or ""):
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
