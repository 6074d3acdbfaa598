"""Property test of the reference broker: arbitrary interleavings, checked invariants.

A hypothesis state machine opens and closes sockets, says hello (good and
bad), sends to every kind of target (and to nonsense), acknowledges, changes
status, asks for peers, feeds garbage and binary, and moves time. After every
step it checks the broker's invariants (``meshproto/_broker.py``):

* no input raises;
* every ``send`` on an open socket is answered exactly once (an ``ack`` or an
  ``error`` carrying its id), in the outputs of that very input;
* every output addresses a socket that is open when it is produced, and every
  text output decodes with :func:`meshproto.decode`;
* after ``handle_timer(now)``, ``next_deadline()`` is ``None`` or ``> now``;
* once time has moved, no open socket without an accepted hello is older
  than ``hello_timeout``, and no socket that said hello is ever closed
  ``hello timeout``;
* a session key names at most one peer, and an accepted hello (member or
  session) that names one leaves it with that member;
* a session hello is refused ``bad_session_pubkey`` only while a presence
  of another member made by a session hello holds its key, and a member
  hello's unproven claim never takes a key from such a presence.
"""

from __future__ import annotations

import json
from random import Random
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from meshproto import (
    AcceptingVerifier,
    Broker,
    BrokerOptions,
    BrokerOutput,
    CloseConnection,
    Group,
    Member,
    SendText,
    StaticRegistry,
    decode,
)

MESH = "mesh-prop"
T0 = 1_800_000_000.0
PK = {name: f"{i:x}" * 64 for i, name in enumerate(("a", "b", "c", "d", "x"), start=1)}
SK = {"s1": "e" * 64, "s2": "f" * 64}
TARGETS = [
    PK["a"],
    PK["b"],
    PK["c"],
    PK["x"],
    SK["s1"],
    SK["s2"],
    "*",
    "@all",
    "@ops",
    "#topic",
    "nobody",
    "AB" * 32,
]
GARBAGE = [
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
]

conn_ids = st.integers(min_value=0, max_value=3)


class BrokerMachine(RuleBasedStateMachine):
    @initialize(small=st.booleans())
    def start(self, small: bool) -> None:
        registry = StaticRegistry(
            [
                Member(MESH, "id-a", PK["a"], "a"),
                Member(MESH, "id-b", PK["b"], "b", groups=(Group("ops"),)),
                Member(MESH, "id-c", PK["c"], "c"),
                Member(MESH, "id-d", PK["d"], "d", revoked=True),
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
        self.options = options
        self.broker = Broker(registry, verifier=AcceptingVerifier(), rng=Random(0), options=options)
        self.now = T0
        self.open: set[int] = set()
        self.next_conn = 0
        self.slots: dict[int, int] = {}  # slot (what rules name) -> conn_id
        self.message_ids: list[str] = ["unknown-id"]
        self.sends = 0
        self.opened_at: dict[int, float] = {}
        self.helloed: set[int] = set()  # sockets whose hello was accepted at some point
        self.proven: dict[str, str] = {}  # session key -> member whose session hello holds it

    # --- helpers -------------------------------------------------------------------

    def conn(self, slot: int) -> int:
        """The conn_id behind a slot; closed slots keep naming their old, closed socket."""
        if slot not in self.slots:
            self.slots[slot] = -1 - slot  # never opened: inputs for it are ignored
        return self.slots[slot]

    def check_outputs(self, outputs: list[BrokerOutput]) -> list[dict[str, Any]]:
        """Check and apply outputs; return the frames written to every socket."""
        written: list[dict[str, Any]] = []
        for out in outputs:
            assert out.conn_id in self.open, f"output for a closed socket: {out}"
            if isinstance(out, SendText):
                decode(out.text)
                frame = json.loads(out.text)
                frame["_to"] = out.conn_id
                written.append(frame)
                if frame["type"] in ("push", "ack") and frame.get("messageId"):
                    self.message_ids.append(frame["messageId"])
            elif isinstance(out, CloseConnection):
                if out.reason == "hello timeout":
                    assert out.conn_id not in self.helloed, out
                self.open.discard(out.conn_id)
        return written

    def holder(self, session_key: str) -> str | None:
        """The member whose peer is known by ``session_key``, if any."""
        found = [p.member_pubkey for p in self.broker.peers(MESH) if p.pubkey == session_key]
        return found[0] if found else None

    def check_hello_answer(
        self, slot: int, who: str, key: str | None, written: Any, *, proof: bool
    ) -> None:
        """Check the answer to a hello of ``who`` naming session key ``key``.

        ``proof``: it was a session hello. ``self.proven`` is as it was before it.
        """
        conn_id = self.conn(slot)
        proven_by = self.proven.get(key) if key is not None else None
        if any(f["_to"] == conn_id and f["type"] == "hello_ack" for f in written):
            self.helloed.add(conn_id)
            if key is not None:
                assert self.holder(key) == PK[who]
                assert proven_by in (None, PK[who]), "took a proven key from another member"
                if proof:
                    self.proven[key] = PK[who]
        refused = [f for f in written if f["_to"] == conn_id and f["type"] == "error"]
        if proof and any(f["code"] == "bad_session_pubkey" for f in refused):
            assert proven_by not in (None, PK[who]), "a proven key lost to an unproven claim"

    def feed(self, slot: int, text: str) -> list[dict[str, Any]]:
        # Keys whose proven presence is gone (its grace ran out, or it was
        # displaced) are proven no longer.
        for key, member in list(self.proven.items()):
            if self.holder(key) != member:
                del self.proven[key]
        self.broker.receive_text(self.conn(slot), text, now=self.now)
        return self.check_outputs(self.broker.drain_outputs())

    # --- rules ----------------------------------------------------------------------

    @rule(slot=conn_ids)
    def open_socket(self, slot: int) -> None:
        if self.slots.get(slot) in self.open:
            return
        conn_id = self.next_conn
        self.next_conn += 1
        self.slots[slot] = conn_id
        self.open.add(conn_id)
        self.opened_at[conn_id] = self.now
        self.broker.connection_opened(conn_id, now=self.now)
        self.check_outputs(self.broker.drain_outputs())

    @rule(
        slot=conn_ids,
        who=st.sampled_from(["a", "b", "c", "d", "x"]),
        session=st.tuples(
            st.sampled_from([None, "one", "two"]), st.sampled_from([None, "s1", "s2", "bad"])
        ),
        skew=st.sampled_from([0.0, 30.0, -61.0, 61.0]),
        good_signature=st.booleans(),
        groups=st.sampled_from([None, [{"name": "ops"}], [{"name": "dev", "role": "x"}]]),
    )
    def hello(
        self,
        slot: int,
        who: str,
        session: tuple[str | None, str | None],
        skew: float,
        *,
        good_signature: bool,
        groups: Any,
    ) -> None:
        session_id, session_key = session
        if self.conn(slot) not in self.open and slot % 2 == 0:
            self.open_socket(slot)  # a client opens a socket to say hello (mostly)
        frame: dict[str, Any] = {
            "type": "hello",
            "meshId": MESH,
            "memberId": f"id-{who}",
            "pubkey": PK[who],
            "timestamp": round((self.now + skew) * 1000),
            "signature": "ab" * 64 if good_signature else "xyz",
        }
        if session_id is not None:
            frame["sessionId"] = session_id
        if session_key is not None:
            frame["sessionPubkey"] = SK.get(session_key, "BAD")
        if groups is not None:
            frame["groups"] = groups
        written = self.feed(slot, json.dumps(frame))
        self.check_hello_answer(slot, who, SK.get(session_key or ""), written, proof=False)

    @rule(
        slot=conn_ids,
        who=st.sampled_from(["a", "b", "c", "x"]),
        session_key=st.sampled_from(["s1", "s2"]),
        session_id=st.sampled_from([None, "one", "two"]),
        expires_in=st.sampled_from([3600.0, 24 * 3600.0, 0.0, 24 * 3600.0 + 1]),
    )
    def session_hello(
        self, slot: int, who: str, session_key: str, session_id: str | None, expires_in: float
    ) -> None:
        """A session hello: it proves its session key (the verifier accepts any signature)."""
        if self.conn(slot) not in self.open:
            self.open_socket(slot)
        key = SK[session_key]
        frame: dict[str, Any] = {
            "type": "session_hello",
            "meshId": MESH,
            "parentMemberId": f"id-{who}",
            "parentMemberPubkey": PK[who],
            "sessionPubkey": key,
            "parentAttestation": {
                "sessionPubkey": key,
                "parentMemberPubkey": PK[who],
                "expiresAt": round((self.now + expires_in) * 1000),
                "signature": "cd" * 64,
            },
            "timestamp": round(self.now * 1000),
            "signature": "ab" * 64,
        }
        if session_id is not None:
            frame["sessionId"] = session_id
        written = self.feed(slot, json.dumps(frame))
        self.check_hello_answer(slot, who, key, written, proof=True)

    @rule(
        slot=conn_ids,
        who=st.sampled_from(["a", "b", "c"]),
        session=st.tuples(
            st.sampled_from([None, "one", "two"]), st.sampled_from([None, "s1", "s2"])
        ),
    )
    def good_hello(self, slot: int, who: str, session: tuple[str | None, str | None]) -> None:
        """A hello that the registry decides on (the common case)."""
        if self.conn(slot) not in self.open:
            self.open_socket(slot)
        self.hello(slot, who, session, 0.0, good_signature=True, groups=None)

    @rule(
        slot=conn_ids,
        spec=st.sampled_from(TARGETS),
        priority=st.sampled_from(["now", "next", "low", "urgent"]),
        cmid=st.sampled_from([None, "c1", "c2", "c3"]),
        big=st.booleans(),
    )
    def send(self, slot: int, spec: str, priority: str, cmid: str | None, big: bool) -> None:
        self.sends += 1
        send_id = f"send-{self.sends}"
        frame: dict[str, Any] = {
            "type": "send",
            "id": send_id,
            "targetSpec": spec,
            "priority": priority,
            "nonce": "bm9uY2U=",
            "ciphertext": "A" * (70_000 if big else 8),
        }
        if cmid is not None:
            frame["client_message_id"] = cmid
        conn_id = self.conn(slot)
        was_open = conn_id in self.open
        written = self.feed(slot, json.dumps(frame))
        answers = [
            f
            for f in written
            if f["_to"] == conn_id and f["type"] in ("ack", "error") and f.get("id") == send_id
        ]
        assert len(answers) == (1 if was_open else 0), (frame, written)

    @rule(slot=conn_ids, data=st.data(), by_cmid=st.booleans())
    def client_ack(self, slot: int, data: st.DataObject, by_cmid: bool) -> None:
        frame: dict[str, Any] = {"type": "client_ack"}
        if by_cmid:
            frame["clientMessageId"] = data.draw(st.sampled_from(["c1", "c2", "c3"]))
        else:
            frame["brokerMessageId"] = data.draw(st.sampled_from(self.message_ids))
        self.feed(slot, json.dumps(frame))

    @rule(slot=conn_ids, status=st.sampled_from(["idle", "working", "dnd", "asleep"]))
    def set_status(self, slot: int, status: str) -> None:
        self.feed(slot, json.dumps({"type": "set_status", "status": status}))

    @rule(slot=conn_ids, req_id=st.sampled_from([None, "r1"]))
    def list_peers(self, slot: int, req_id: str | None) -> None:
        frame: dict[str, Any] = {"type": "list_peers"}
        if req_id is not None:
            frame["_reqId"] = req_id
        written = self.feed(slot, json.dumps(frame))
        if self.conn(slot) in self.open and any(f["type"] == "peers_list" for f in written):
            (answer,) = [f for f in written if f["type"] == "peers_list"]
            assert ("_reqId" in answer) == (req_id is not None)

    @rule(slot=conn_ids, summary=st.text(max_size=20))
    def set_summary(self, slot: int, summary: str) -> None:
        self.feed(slot, json.dumps({"type": "set_summary", "summary": summary}))

    @rule(slot=conn_ids, text=st.sampled_from(GARBAGE) | st.text(max_size=40))
    def garbage(self, slot: int, text: str) -> None:
        self.feed(slot, text)

    @rule(slot=conn_ids, data=st.binary(max_size=16))
    def binary(self, slot: int, data: bytes) -> None:
        self.broker.receive_binary(self.conn(slot), data, now=self.now)
        self.check_outputs(self.broker.drain_outputs())

    @rule(slot=conn_ids, ping=st.booleans())
    def ping_or_pong(self, slot: int, ping: bool) -> None:
        if ping:
            self.broker.receive_ping(self.conn(slot), now=self.now)
        else:
            self.broker.receive_pong(self.conn(slot), now=self.now)
        self.check_outputs(self.broker.drain_outputs())

    @rule(slot=conn_ids)
    def close(self, slot: int) -> None:
        conn_id = self.conn(slot)
        self.open.discard(conn_id)
        self.broker.connection_closed(conn_id, now=self.now)
        self.check_outputs(self.broker.drain_outputs())

    @rule(seconds=st.sampled_from([0.0, 0.5, 1.0, 10.0, 29.0, 31.0, 61.0, 76.0, 91.0, 4000.0]))
    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.broker.handle_timer(self.now)
        self.check_outputs(self.broker.drain_outputs())
        deadline = self.broker.next_deadline()
        assert deadline is None or deadline > self.now

    @rule()
    def run_next_timer(self) -> None:
        deadline = self.broker.next_deadline()
        if deadline is not None:
            self.now = max(self.now, deadline)
            self.broker.handle_timer(self.now)
            self.check_outputs(self.broker.drain_outputs())
            after = self.broker.next_deadline()
            assert after is None or after > self.now

    @invariant()
    def unhelloed_sockets_are_younger_than_the_hello_timeout(self) -> None:
        if hasattr(self, "broker"):
            timeout = self.options.hello_timeout
            for conn_id in self.open:
                if self.broker.is_helloed(conn_id):
                    self.helloed.add(conn_id)
                else:
                    assert self.now < self.opened_at[conn_id] + timeout, conn_id

    @invariant()
    def a_session_key_names_at_most_one_peer(self) -> None:
        if hasattr(self, "broker"):
            keys = [p.pubkey for p in self.broker.peers(MESH) if p.pubkey != p.member_pubkey]
            assert len(keys) == len(set(keys)), keys

    @invariant()
    def broker_knows_exactly_the_open_sockets(self) -> None:
        if hasattr(self, "broker"):
            assert self.broker.connection_count == len(self.open)
            assert all(self.broker.is_open(c) for c in self.open)


TestBrokerProperties = BrokerMachine.TestCase
TestBrokerProperties.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
