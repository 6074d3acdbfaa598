"""The reference broker, driven by hand: no sockets, time moved by the test.

Each test plays one or more clients by feeding ``Broker`` text frames and
reading back what it writes to each connection (``Net`` below keeps one inbox
per connection and answers the broker's pings, like a live client would,
unless told not to).
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from random import Random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshproto import (
    AcceptingVerifier,
    Broker,
    BrokerOptions,
    CloseConnection,
    Group,
    LocalProtocolError,
    Member,
    MemoryStore,
    PingConnection,
    SendText,
    SendTextTail,
    StaticRegistry,
    expand_outputs,
    hello_signing_payload,
    without_connection,
)
from meshproto._broker_peers import SOCKETS_PER_WINDOW, SPAN_WINDOWS
from meshproto._brokerwire import iso_ms
from meshproto.testing import FakeSigner

MESH = "mesh-test"
T0 = 1_800_000_000.0  # wall clock, seconds

SIGNERS = {name: FakeSigner(f"member-{name}") for name in ("a", "b", "c", "d", "x")}
PK = {name: s.public_key for name, s in SIGNERS.items()}
MEMBER_ID = {name: f"id-{name}" for name in SIGNERS}
# Session keys: 64 lowercase hex, distinct from every member key.
SK = {name: f"{i:x}" * 64 for i, name in enumerate(("s1", "s2", "s3"), start=10)}

NO_PEER = (
    "no connected peer for target (not online, or targetSpec is your own key "
    "without another session)"
)
RATE_LIMIT = "rate_limit: max 60 msg/min (burst 10) \u2014 slow down"
BASE62_32 = re.compile(r"[0-9A-Za-z]{32}")
BASE62_DIGITS = string.digits + string.ascii_letters
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


class SignatureVerifier:
    """Verifies FakeSigner signatures (the test stand-in for ed25519)."""

    def verify(self, pubkey_hex: str, message: bytes, signature_hex: str) -> bool:
        for signer in SIGNERS.values():
            if signer.public_key == pubkey_hex:
                return signer.sign(message).hex() == signature_hex
        return False


def members() -> list[Member]:
    return [
        Member(MESH, MEMBER_ID["a"], PK["a"], "peer-a"),
        Member(MESH, MEMBER_ID["b"], PK["b"], "peer-b", groups=(Group("ops", "lead"),)),
        Member(MESH, MEMBER_ID["c"], PK["c"], "peer-c"),
        Member(MESH, MEMBER_ID["d"], PK["d"], "peer-d", revoked=True),
    ]


class Net:
    """A broker and the inboxes of the sockets a test opened."""

    def __init__(
        self,
        *,
        options: BrokerOptions | None = None,
        registry: StaticRegistry | None = None,
        store: Any = None,
        verifier: Any = None,
        now: float = T0,
    ) -> None:
        self.now = now
        self.registry = registry if registry is not None else StaticRegistry(members())
        self.broker = Broker(
            self.registry,
            verifier=verifier if verifier is not None else SignatureVerifier(),
            store=store,
            rng=Random(1234),
            options=options,
        )
        self.inbox: dict[int, list[dict[str, Any]]] = defaultdict(list)
        self.pings: dict[int, int] = defaultdict(int)
        self.closed: dict[int, tuple[int, str]] = {}
        self.open_conns: set[int] = set()
        self.deaf: set[int] = set()  # sockets that do not answer pings
        self._next_conn = 1

    # --- plumbing ----------------------------------------------------------------

    def pump(self) -> None:
        """Deliver the broker's outputs; sockets not ``deaf`` answer pings (bounded rounds)."""
        for _ in range(1000):
            if not self._pump_once():
                return
        raise AssertionError("the broker kept writing after 1000 rounds of pongs")

    def _pump_once(self) -> bool:
        """Deliver what the broker wrote, then the pongs; whether any pong went back."""
        pongs = []
        for out in expand_outputs(self.broker.drain_outputs()):
            assert out.conn_id in self.open_conns, f"output for a closed socket: {out}"
            if isinstance(out, SendText):
                self.inbox[out.conn_id].append(json.loads(out.text))
            elif isinstance(out, PingConnection):
                self.pings[out.conn_id] += 1
                if out.conn_id not in self.deaf:
                    pongs.append(out.conn_id)
            else:
                assert isinstance(out, CloseConnection)
                self.closed[out.conn_id] = (out.code, out.reason)
                self.open_conns.discard(out.conn_id)
        answered = False
        for conn in pongs:
            if conn in self.open_conns:
                self.broker.receive_pong(conn, now=self.now)
                answered = True
        return answered

    def open(self) -> int:
        conn = self._next_conn
        self._next_conn += 1
        self.open_conns.add(conn)
        self.broker.connection_opened(conn, now=self.now)
        self.pump()
        return conn

    def close(self, conn: int) -> None:
        self.open_conns.discard(conn)
        self.broker.connection_closed(conn, now=self.now)
        self.pump()

    def text(self, conn: int, text: str) -> None:
        self.broker.receive_text(conn, text, now=self.now)
        self.pump()

    def frame(self, conn: int, frame: dict[str, Any]) -> None:
        self.text(conn, json.dumps(frame))

    def take(self, conn: int) -> list[dict[str, Any]]:
        frames, self.inbox[conn] = self.inbox[conn], []
        return frames

    def advance(self, seconds: float) -> None:
        """Move the clock, running every timer on the way as an adapter would."""
        end = self.now + seconds
        while True:
            deadline = self.broker.next_deadline()
            if deadline is None or deadline > end:
                break
            self.now = max(self.now, deadline)
            self.broker.handle_timer(self.now)
            self.pump()
            after = self.broker.next_deadline()
            assert after is None or after > self.now
        self.now = end

    # --- client frames -------------------------------------------------------------

    def hello_frame(
        self, who: str, *, ts: Any = ..., sig: Any = ..., **fields: Any
    ) -> dict[str, Any]:
        timestamp = round(self.now * 1000) if ts is ... else ts
        frame: dict[str, Any] = {
            "type": "hello",
            "meshId": MESH,
            "memberId": MEMBER_ID[who],
            "pubkey": PK[who],
            "sessionId": f"session-{who}",
            "pid": 4242,
            "cwd": f"/work/{who}",
        }
        frame.update(fields)
        if timestamp is not None:
            frame["timestamp"] = timestamp
        if sig is ...:
            ts_int = timestamp if isinstance(timestamp, int) else 0
            payload = hello_signing_payload(frame["meshId"], frame["memberId"], PK[who], ts_int)
            sig = SIGNERS[who].sign(payload).hex()
        if sig is not None:
            frame["signature"] = sig
        return frame

    def hello(self, who: str, conn: int | None = None, **fields: Any) -> int:
        conn = self.open() if conn is None else conn
        self.frame(conn, self.hello_frame(who, **fields))
        return conn

    def joined(self, who: str, **fields: Any) -> int:
        """A socket whose hello was accepted, inbox emptied."""
        conn = self.hello(who, **fields)
        frames = self.take(conn)
        assert frames and frames[0]["type"] == "hello_ack", frames
        return conn

    def send(
        self,
        conn: int,
        target: str,
        body: str = "hello",
        *,
        priority: str = "next",
        send_id: str | None = None,
        cmid: Any = ...,
        **extra: Any,
    ) -> dict[str, Any]:
        """Send and return the one answer (ack or error) for it."""
        self._send_seq = getattr(self, "_send_seq", 0) + 1
        send_id = send_id or f"send-{self._send_seq:04d}"
        frame: dict[str, Any] = {
            "type": "send",
            "id": send_id,
            "targetSpec": target,
            "priority": priority,
            "nonce": "A" * 32,
            "ciphertext": body,
        }
        if cmid is ...:
            frame["client_message_id"] = send_id
        elif cmid is not None:
            frame["client_message_id"] = cmid
        frame.update(extra)
        self.frame(conn, frame)
        answers = [f for f in self.inbox[conn] if f.get("id") == send_id]
        assert len(answers) == 1, self.inbox[conn]
        self.inbox[conn].remove(answers[0])
        return answers[0]

    def ack(self, conn: int, push: dict[str, Any]) -> None:
        self.frame(
            conn,
            {
                "type": "client_ack",
                "brokerMessageId": push["messageId"],
                "clientMessageId": push.get("client_message_id"),
            },
        )

    def pushes(self, conn: int) -> list[dict[str, Any]]:
        """The user (non-system) pushes in the inbox, taken out."""
        frames = self.take(conn)
        found = [f for f in frames if f["type"] == "push" and f.get("subtype") != "system"]
        self.inbox[conn] = [f for f in frames if f not in found]
        return found

    def system(self, conn: int) -> list[dict[str, Any]]:
        frames = self.take(conn)
        found = [f for f in frames if f.get("subtype") == "system"]
        self.inbox[conn] = [f for f in frames if f not in found]
        return found


def refusal(net: Net, conn: int) -> tuple[dict[str, Any], tuple[int, str]]:
    frames = net.take(conn)
    assert len(frames) == 1, frames
    assert conn in net.closed and not net.broker.is_open(conn)
    return frames[0], net.closed[conn]


# --- hello ------------------------------------------------------------------------


def test_hello_is_acked_with_presence_id_profile_and_policy() -> None:
    net = Net()
    conn = net.hello("b")
    (ack,) = net.take(conn)
    assert ack["type"] == "hello_ack"
    assert BASE62_32.fullmatch(ack["presenceId"])
    assert ack["memberDisplayName"] == "peer-b"
    assert ack["memberProfile"] == {
        "roleTag": None,
        "groups": [{"name": "ops", "role": "lead"}],
        "messageMode": "push",
    }
    assert ack["meshPolicy"] == {}
    assert "restored" not in ack
    assert net.broker.is_helloed(conn)


def test_hello_display_name_overrides_the_registry_name() -> None:
    net = Net()
    conn = net.hello("a", displayName="laptop-a")
    assert net.take(conn)[0]["memberDisplayName"] == "laptop-a"


def test_hello_ack_says_restored_when_the_member_connected_before() -> None:
    net = Net()
    net.close(net.joined("a"))
    net.advance(200)  # past the grace window: a new presence
    conn = net.hello("a")
    (ack,) = net.take(conn)
    assert ack["restored"] is True
    assert ISO.fullmatch(ack["lastSeenAt"])


@pytest.mark.parametrize(
    "ts",
    [
        pytest.param(round((T0 + 61) * 1000), id="plus-61s"),
        pytest.param(round((T0 - 61) * 1000), id="minus-61s"),
        pytest.param(None, id="missing"),
        pytest.param("1800000000000", id="string"),
        pytest.param(1800000000000.5, id="fraction"),
        pytest.param(round(T0), id="seconds-not-ms"),
    ],
)
def test_hello_with_timestamp_skew_is_refused_1008(ts: Any) -> None:
    net = Net()
    conn = net.hello("a", ts=ts)
    error, close = refusal(net, conn)
    assert error == {
        "type": "error",
        "code": "timestamp_skew",
        "message": "hello rejected: timestamp_skew",
    }
    assert close == (1008, "timestamp_skew")


def test_refusal_is_one_error_frame_then_the_close() -> None:
    net = Net()
    conn = net.open()
    net.broker.receive_text(conn, json.dumps(net.hello_frame("a", sig="ab" * 64)), now=net.now)
    outputs = list(expand_outputs(net.broker.drain_outputs()))
    assert [type(o) for o in outputs] == [SendText, CloseConnection]
    assert outputs[1] == CloseConnection(conn, 1008, "bad_signature")
    assert not net.broker.is_open(conn)


def test_a_tail_of_a_batch_is_its_texts_from_its_start_for_each_socket_still_open() -> None:
    outputs = without_connection([SendTextTail((1, 2, 3), ("x", "y", "z"), 1)], 2)

    assert list(expand_outputs(outputs)) == [
        SendText(1, "y"),
        SendText(1, "z"),
        SendText(3, "y"),
        SendText(3, "z"),
    ]
    assert without_connection([SendTextTail((2,), ("x",), 0)], 2) == []


@settings(max_examples=200, deadline=None)
@given(when=st.floats(min_value=-62_135_596_800, max_value=253_402_300_799))
def test_created_at_is_the_millisecond_in_iso_8601_whichever_came_before(when: float) -> None:
    millis = int(when * 1000)
    moment = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=millis)
    if not -62_135_596_800 <= millis // 1000 <= 253_402_300_799:
        moment = datetime(1970, 1, 1, tzinfo=timezone.utc)
    expected = f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"

    assert iso_ms(when) == expected
    assert iso_ms(when) == expected  # the same, from the cache


def test_hello_within_60s_of_the_broker_clock_is_accepted() -> None:
    net = Net()
    conn = net.hello("a", ts=round((T0 + 55) * 1000))
    assert net.take(conn)[0]["type"] == "hello_ack"


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"pubkey": "z" * 64}, id="pubkey-not-hex"),
        pytest.param({"pubkey": "ab" * 16}, id="pubkey-short"),
        pytest.param({"sig": "ab" * 10}, id="signature-short"),
        pytest.param({"sig": "AB" * 64}, id="signature-uppercase"),
        pytest.param({"sig": None}, id="signature-missing"),
        pytest.param({"pid": "not-a-number"}, id="field-of-wrong-type"),
    ],
)
def test_hello_with_bad_hex_shapes_is_refused_malformed_1008(fields: dict[str, Any]) -> None:
    net = Net()
    conn = net.hello("a", **fields)
    error, close = refusal(net, conn)
    assert (error["code"], error["message"]) == ("malformed", "hello rejected: malformed")
    assert "id" not in error
    assert close == (1008, "malformed")


def test_hello_with_bad_signature_is_refused_1008() -> None:
    net = Net()
    conn = net.hello("a", sig="ab" * 64)
    error, close = refusal(net, conn)
    assert error == {
        "type": "error",
        "code": "bad_signature",
        "message": "hello rejected: bad_signature",
    }
    assert close == (1008, "bad_signature")


def test_hello_signature_covers_the_member_id() -> None:
    net = Net()
    frame = net.hello_frame("a")
    frame["memberId"] = "someone-else"
    conn = net.open()
    net.frame(conn, frame)
    assert refusal(net, conn)[1] == (1008, "bad_signature")


def test_verifier_that_raises_counts_as_bad_signature() -> None:
    class Exploding:
        def verify(self, pubkey_hex: str, message: bytes, signature_hex: str) -> bool:
            raise ValueError("boom")

    net = Net(verifier=Exploding())
    conn = net.hello("a")
    assert refusal(net, conn)[1] == (1008, "bad_signature")


@pytest.mark.parametrize("session_pubkey", ["XYZ", "AB" * 32, "ab" * 31])
def test_hello_with_bad_session_pubkey_is_refused_1008(session_pubkey: str) -> None:
    net = Net()
    conn = net.hello("a", sessionPubkey=session_pubkey)
    error, close = refusal(net, conn)
    assert error == {
        "type": "error",
        "code": "bad_session_pubkey",
        "message": "sessionPubkey must be 64 lowercase hex chars",
    }
    assert close == (1008, "bad_session_pubkey")


@pytest.mark.parametrize("mesh", [MESH, "no-such-mesh"])
def test_hello_from_unknown_member_or_mesh_is_refused_unauthorized_1008(mesh: str) -> None:
    net = Net()
    conn = net.hello("x", meshId=mesh)
    error, close = refusal(net, conn)
    assert error == {"type": "error", "code": "unauthorized", "message": "pubkey not found in mesh"}
    assert close == (1008, "unauthorized")


def test_hello_from_revoked_member_is_refused_then_closed_4002_banned() -> None:
    net = Net()
    conn = net.hello("d")
    error, close = refusal(net, conn)
    assert error["code"] == "revoked"
    assert "removed" in error["message"]
    assert close == (4002, "banned")


def test_registry_revoke_between_two_hellos_bans_the_second() -> None:
    net = Net()
    net.close(net.joined("a"))  # its presence is still in the grace window
    net.registry.revoke(MESH, PK["a"])
    error, close = refusal(net, net.hello("a"))
    assert (error["code"], close) == ("revoked", (4002, "banned"))
    net.registry.add(Member(MESH, MEMBER_ID["a"], PK["a"], "peer-a"))  # re-admitted
    assert net.take(net.hello("a"))[0]["type"] == "hello_ack"


def test_hello_beyond_mesh_capacity_is_refused_1008_counting_grace() -> None:
    net = Net(options=BrokerOptions(max_connections_per_mesh=2))
    net.joined("a")
    net.close(net.joined("b"))  # in its grace window: still counts
    conn = net.hello("c")
    error, close = refusal(net, conn)
    assert error["code"] == "capacity"
    assert close == (1008, "capacity")
    # A reattach of a known session is not a new presence: it is let in.
    assert net.take(net.hello("b"))[0]["type"] == "hello_ack"


def test_open_mesh_admits_unknown_keys() -> None:
    net = Net(registry=StaticRegistry([], open_mesh=MESH))
    conn = net.hello("x", displayName="newcomer")
    assert net.take(conn)[0]["memberDisplayName"] == "newcomer"
    assert net.registry.lookup(MESH, PK["x"]) is not None


def test_accepting_verifier_takes_any_well_formed_signature() -> None:
    net = Net(verifier=AcceptingVerifier())
    assert net.take(net.hello("a", sig="ab" * 64))[0]["type"] == "hello_ack"
    assert refusal(net, net.hello("b", sig="ab" * 10))[1] == (1008, "malformed")


def test_frame_before_hello_gets_no_hello_and_the_socket_stays_open() -> None:
    net = Net()
    conn = net.open()
    net.frame(conn, {"type": "list_peers"})
    assert net.take(conn) == [
        {"type": "error", "code": "no_hello", "message": "must send hello first"}
    ]
    answer = net.send(conn, "*")
    assert (answer["type"], answer["code"]) == ("error", "no_hello")
    assert net.broker.is_open(conn)
    assert net.take(net.hello("a", conn=conn))[0]["type"] == "hello_ack"


def test_second_hello_on_a_socket_is_answered_and_ignored() -> None:
    net = Net()
    watcher = net.joined("c")
    conn = net.joined("a")
    net.system(watcher)
    presence = net.broker.presence_id(conn)
    net.frame(conn, net.hello_frame("a", sessionId="another-session"))
    (error,) = net.take(conn)
    assert error["code"] == "already_helloed"
    assert net.broker.presence_id(conn) == presence
    assert net.broker.presence_count == 2  # no ghost
    assert net.take(watcher) == []


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        pytest.param({"parentAttestation": None}, "malformed", id="attestation-missing"),
        pytest.param({"parentAttestation": "ab" * 64}, "malformed", id="attestation-not-object"),
        pytest.param({"expiresAt": "tomorrow"}, "malformed", id="expires-at-a-string"),
        pytest.param({"parentMemberId": 7}, "malformed", id="parent-member-id-a-number"),
        pytest.param({"timestamp": "1800000000000"}, "timestamp_skew", id="timestamp-a-string"),
    ],
)
def test_undecodable_session_hello_is_refused_1008(fields: dict[str, Any], code: str) -> None:
    net = Net()
    attestation: dict[str, Any] = {
        "sessionPubkey": SK["s1"],
        "parentMemberPubkey": PK["a"],
        "expiresAt": round(T0 * 1000) + 3_600_000,
        "signature": "ab" * 64,
    }
    if "expiresAt" in fields:
        attestation["expiresAt"] = fields.pop("expiresAt")
    frame: dict[str, Any] = {
        "type": "session_hello",
        "meshId": MESH,
        "parentMemberId": MEMBER_ID["a"],
        "parentMemberPubkey": PK["a"],
        "sessionPubkey": SK["s1"],
        "parentAttestation": attestation,
        "timestamp": round(T0 * 1000),
        "signature": "ab" * 64,
    }
    frame.update(fields)
    conn = net.open()
    net.frame(conn, {k: v for k, v in frame.items() if v is not None})
    error, close = refusal(net, conn)
    assert error == {"type": "error", "code": code, "message": f"session_hello rejected: {code}"}
    assert close == (1008, code)


# --- routing ------------------------------------------------------------------------


def test_direct_send_by_member_pubkey_reaches_that_member_only() -> None:
    net = Net()
    a, b, c = net.joined("a"), net.joined("b"), net.joined("c")
    for conn in (a, b, c):
        net.take(conn)
    ack = net.send(a, PK["b"], "secret", priority="now")
    assert ack["type"] == "ack" and ack["queued"] is True
    assert BASE62_32.fullmatch(ack["messageId"])
    (push,) = net.pushes(b)
    assert push["messageId"] == ack["messageId"]
    assert (push["senderPubkey"], push["ciphertext"], push["priority"]) == (
        PK["a"],
        "secret",
        "now",
    )
    assert push["meshId"] == MESH and ISO.fullmatch(push["createdAt"])
    assert "senderMemberPubkey" not in push
    assert net.take(c) == [] and net.take(a) == []


def test_direct_send_by_session_pubkey_reaches_that_session_only() -> None:
    net = Net()
    a = net.joined("a")
    b1 = net.joined("b", sessionId="b1", sessionPubkey=SK["s1"])
    b2 = net.joined("b", sessionId="b2", sessionPubkey=SK["s2"])
    for conn in (a, b1, b2):
        net.take(conn)
    net.send(a, SK["s2"], "to session 2", priority="now")
    assert net.take(b1) == []
    (push,) = net.pushes(b2)
    assert push["ciphertext"] == "to session 2"


def test_direct_send_to_member_reaches_every_session_of_that_member() -> None:
    net = Net()
    a = net.joined("a")
    b1 = net.joined("b", sessionId="b1")
    b2 = net.joined("b", sessionId="b2")
    net.send(a, PK["b"], priority="now")
    assert len(net.pushes(b1)) == 1 and len(net.pushes(b2)) == 1


def test_direct_push_carries_client_message_id_and_sender_session_key() -> None:
    net = Net()
    a = net.joined("a", sessionPubkey=SK["s1"])
    b = net.joined("b")
    net.send(a, PK["b"], cmid="cm-1", priority="now")
    (push,) = net.pushes(b)
    assert push["client_message_id"] == "cm-1"
    assert push["senderPubkey"] == SK["s1"]
    net.send(a, PK["b"], cmid=None, priority="now")
    (push,) = net.pushes(b)
    assert "client_message_id" not in push


def test_broadcast_star_reaches_everyone_else_with_sender_fields_and_no_cmid() -> None:
    net = Net()
    a, b, c = net.joined("a"), net.joined("b"), net.joined("c")
    for conn in (a, b, c):
        net.take(conn)
    ack = net.send(a, "*", "aGk=", cmid="cm-b")
    for conn in (b, c):
        (push,) = net.pushes(conn)
        assert push["messageId"] == ack["messageId"]
        assert push["senderMemberPubkey"] == PK["a"]
        assert push["senderMemberId"] == MEMBER_ID["a"]
        assert push["senderName"] == "peer-a"
        assert "client_message_id" not in push
    assert net.take(a) == []


def test_broadcast_at_all_reaches_other_sessions_of_the_sender_member() -> None:
    net = Net()
    a1 = net.joined("a", sessionId="a1")
    a2 = net.joined("a", sessionId="a2")
    b = net.joined("b")
    for conn in (a1, a2, b):
        net.take(conn)
    net.send(a1, "@all")
    assert len(net.pushes(a2)) == 1 and len(net.pushes(b)) == 1
    assert net.take(a1) == []


def test_group_send_reaches_members_of_the_group_from_hello_or_registry() -> None:
    net = Net()
    a = net.joined("a")
    b = net.joined("b")  # "ops" from the registry
    c = net.joined("c", groups=[{"name": "ops"}])  # "ops" from its hello
    d_less = net.joined("a", sessionId="a-other", groups=[{"name": "dev"}])
    for conn in (a, b, c, d_less):
        net.take(conn)
    net.send(a, "@ops")
    assert len(net.pushes(b)) == 1 and len(net.pushes(c)) == 1
    assert net.take(d_less) == [] and net.take(a) == []


def test_topic_send_is_delivered_like_a_broadcast_with_its_topic() -> None:
    net = Net()
    a, b = net.joined("a"), net.joined("b")
    net.take(a)
    net.send(a, "#build-42")
    (push,) = net.pushes(b)
    assert push["topic"] == "build-42"
    assert push["senderMemberPubkey"] == PK["a"]


@pytest.mark.parametrize("target", ["unknown", "own-member", "own-session", "revoked"])
def test_direct_send_nobody_can_take_is_refused_no_connected_peer(target: str) -> None:
    net = Net()
    a = net.joined("a", sessionPubkey=SK["s1"])
    spec = {"unknown": PK["x"], "own-member": PK["a"], "own-session": SK["s1"], "revoked": PK["d"]}
    answer = net.send(a, spec[target])
    assert answer == {
        "type": "ack",
        "id": answer["id"],
        "messageId": "",
        "queued": False,
        "error": NO_PEER,
    }


def test_send_to_own_member_key_reaches_the_other_session_only() -> None:
    net = Net()
    a1 = net.joined("a", sessionId="a1")
    a2 = net.joined("a", sessionId="a2")
    net.take(a1)
    assert net.send(a1, PK["a"], priority="now")["queued"] is True
    assert len(net.pushes(a2)) == 1
    assert net.take(a1) == []


# --- priority gating -------------------------------------------------------------------


@pytest.mark.parametrize("status", ["working", "dnd"])
def test_busy_receiver_gets_now_at_once_and_next_low_held(status: str) -> None:
    net = Net()
    a, b = net.joined("a"), net.joined("b")
    net.frame(b, {"type": "set_status", "status": status})
    net.take(b)
    for priority in ("next", "now", "low"):
        assert net.send(a, PK["b"], priority, priority=priority)["queued"] is True
    assert [p["ciphertext"] for p in net.pushes(b)] == ["now"]


def test_held_messages_are_released_oldest_first_when_status_becomes_idle() -> None:
    net = Net()
    a, b = net.joined("a"), net.joined("b")
    net.frame(b, {"type": "set_status", "status": "dnd"})
    net.take(b)
    for body in ("first", "second", "third"):
        net.send(a, PK["b"], body, priority="low")
    net.frame(b, {"type": "set_status", "status": "working"})
    assert net.pushes(b) == []
    net.frame(b, {"type": "set_status", "status": "idle"})
    assert [p["ciphertext"] for p in net.pushes(b)] == ["first", "second", "third"]


def test_broadcasts_are_not_gated_by_status() -> None:
    net = Net()
    a, b = net.joined("a"), net.joined("b")
    net.frame(b, {"type": "set_status", "status": "dnd"})
    net.take(b)
    net.send(a, "*", priority="low")
    assert len(net.pushes(b)) == 1


def test_unknown_status_is_answered_malformed() -> None:
    net = Net()
    a = net.joined("a")
    net.frame(a, {"type": "set_status", "status": "asleep"})
    (error,) = net.take(a)
    assert error["code"] == "malformed" and "asleep" in error["message"]


# --- store and forward ------------------------------------------------------------------


def test_send_to_offline_member_is_queued_and_pushed_after_its_next_hello_ack() -> None:
    net = Net()
    a = net.joined("a")
    ack = net.send(a, PK["c"], "while you were out", cmid="cm-off")
    assert ack["queued"] is True and ack["messageId"]
    net.advance(5)
    c = net.hello("c")
    frames = net.take(c)
    assert [f["type"] for f in frames] == ["hello_ack", "push"]
    push = frames[1]
    assert (push["messageId"], push["client_message_id"]) == (ack["messageId"], "cm-off")
    assert push["ciphertext"] == "while you were out"


def test_stored_message_expires_after_store_ttl() -> None:
    net = Net(options=BrokerOptions(store_ttl=600.0))
    a = net.joined("a")
    net.send(a, PK["c"], "too late")
    store = net.broker.store
    assert store.count_for(MESH, PK["c"]) == 1
    net.advance(601)
    assert store.count_for(MESH, PK["c"]) == 0
    c = net.hello("c")
    assert [f["type"] for f in net.take(c)] == ["hello_ack"]


def test_store_is_bounded_per_member_and_refuses_beyond_the_bound() -> None:
    net = Net(options=BrokerOptions(store_limit_per_member=3, rate_burst=100))
    a = net.joined("a")
    for i in range(3):
        assert net.send(a, PK["c"], f"m{i}")["queued"] is True
    refused = net.send(a, PK["c"], "one too many")
    assert refused["queued"] is False and refused["messageId"] == ""
    assert refused["error"].startswith("store full:")
    assert "store_limit_per_member=3" in refused["error"]
    # Other members' stores are unaffected.
    assert net.send(a, PK["b"], "fine")["queued"] is True


def test_a_client_that_never_acks_gets_each_message_once_per_connection() -> None:
    net = Net()
    a, b = net.joined("a"), net.joined("b")
    acks = [net.send(a, PK["b"], f"m{i}", priority="now") for i in range(3)]
    first = net.pushes(b)
    assert [p["messageId"] for p in first] == [ack["messageId"] for ack in acks]

    for _ in range(20):  # ten minutes of driven time on the same connection
        net.advance(30)
        assert net.pushes(b) == []
    net.send(a, PK["b"], "a new one", priority="now")  # a new message re-pushes nothing
    assert [p["ciphertext"] for p in net.pushes(b)] == ["a new one"]

    net.close(b)  # the connection goes: its claims go with it
    b = net.hello("b")
    again = net.pushes(b)
    assert [p["messageId"] for p in again][:3] == [ack["messageId"] for ack in acks]
    assert again[0] == first[0]  # the same messageId, client_message_id and createdAt
    assert len(again) == 4
    net.advance(600)
    assert net.pushes(b) == []


def _backlog(net: Net, count: int) -> list[str]:
    """``count`` messages of about 300 bytes stored for b while it is away; their ids."""
    a = net.joined("a")
    return [net.send(a, PK["b"], f"{i:03d}" + "x" * 200)["messageId"] for i in range(count)]


WINDOWED = BrokerOptions(push_window=2000, rate_burst=100)


def test_a_backlog_larger_than_the_push_window_goes_out_a_window_per_pong() -> None:
    net = Net(options=WINDOWED)
    ids = _backlog(net, 30)
    net.deaf.add(net._next_conn)  # b's socket does not answer pings by itself
    b = net.hello("b")
    got = [p["messageId"] for p in net.pushes(b)]
    assert 0 < len(got) < 30 and net.pings[b] == 1  # one window, then a probe
    for _ in range(30):
        if len(got) == 30:
            break
        assert net.pushes(b) == []  # nothing more until the probe is answered
        net.broker.receive_pong(b, now=net.now)
        net.pump()
        window = [p["messageId"] for p in net.pushes(b)]
        assert window and len(window) <= 10
        got += window
    assert got == ids  # every message once, oldest first


def test_a_client_that_never_acks_still_gets_its_whole_backlog() -> None:
    net = Net(options=WINDOWED)
    ids = _backlog(net, 30)
    b = net.hello("b")  # answers pings, never sends client_ack
    assert [p["messageId"] for p in net.pushes(b)] == ids
    assert net.pings[b] >= 3


def test_a_new_message_waits_behind_a_starved_backlog() -> None:
    net = Net(options=WINDOWED)
    ids = _backlog(net, 12)
    net.deaf.add(net._next_conn)
    b = net.hello("b")
    got = [p["messageId"] for p in net.pushes(b)]
    c = net.joined("c")
    late = net.send(c, PK["b"], "the newest", priority="now")["messageId"]
    assert net.pushes(b) == []  # it queues behind the backlog, never ahead of it
    for _ in range(12):
        net.broker.receive_pong(b, now=net.now)
        net.pump()
        got += [p["messageId"] for p in net.pushes(b)]
    assert got == [*ids, late]


def test_a_client_that_dies_unacked_gets_the_message_again_on_its_next_hello_only() -> None:
    net = Net()
    a, b = net.joined("a"), net.joined("b")
    net.send(a, PK["b"], "catch me", priority="now")
    (push,) = net.pushes(b)
    net.close(b)
    assert net.broker.claimed_count == 0  # released with the connection

    b = net.hello("b")
    (again,) = net.pushes(b)
    assert again["messageId"] == push["messageId"]
    net.ack(b, again)
    net.close(b)
    b = net.hello("b")
    assert net.pushes(b) == []


def test_a_reattach_within_the_grace_window_brings_back_what_was_not_acked() -> None:
    net = Net()
    a, b = net.joined("a"), net.joined("b", sessionPubkey=SK["s1"])
    net.send(a, PK["b"], "across the reattach", priority="now")
    (push,) = net.pushes(b)
    net.close(b)
    net.advance(30)  # within the 90 s grace window
    b = net.hello("b", sessionPubkey=SK["s1"])
    (again,) = net.pushes(b)
    assert again["messageId"] == push["messageId"]


def test_each_session_of_the_recipient_gets_a_member_message_once() -> None:
    net = Net()
    a = net.joined("a")
    b1 = net.joined("b", sessionId="one")
    b2 = net.joined("b", sessionId="two")
    net.send(a, PK["b"], "for both", priority="now")
    assert len(net.pushes(b1)) == 1 and len(net.pushes(b2)) == 1
    net.frame(b2, {"type": "set_status", "status": "working"})
    net.frame(b2, {"type": "set_status", "status": "idle"})  # idle again: nothing new
    assert net.pushes(b2) == [] and net.pushes(b1) == []
    b3 = net.hello("b", sessionId="three")  # a new session gets what is unacked
    assert len(net.pushes(b3)) == 1


def test_client_ack_stops_re_push_and_deletes_from_the_store() -> None:
    net = Net()
    a, b = net.joined("a"), net.joined("b")
    net.send(a, PK["b"], priority="now")
    (push,) = net.pushes(b)
    net.ack(b, push)
    assert net.broker.store.count_for(MESH, PK["b"]) == 0
    assert net.broker.claimed_count == 0
    net.advance(100)
    assert net.pushes(b) == []


def test_client_ack_by_client_message_id_alone_is_enough() -> None:
    net = Net()
    a, b = net.joined("a"), net.joined("b")
    net.send(a, PK["b"], priority="now", cmid="only-cmid")
    net.pushes(b)
    net.frame(b, {"type": "client_ack", "clientMessageId": "only-cmid"})
    assert net.broker.store.count_for(MESH, PK["b"]) == 0


def test_client_ack_from_another_member_deletes_nothing() -> None:
    net = Net()
    a, b, c = net.joined("a"), net.joined("b"), net.joined("c")
    net.send(a, PK["b"], priority="now")
    (push,) = net.pushes(b)
    net.ack(c, push)
    assert net.broker.store.count_for(MESH, PK["b"]) == 1


def test_unacked_push_is_re_pushed_on_the_recipients_next_hello() -> None:
    net = Net()
    a, b = net.joined("a"), net.joined("b")
    net.send(a, PK["b"], "again", priority="now")
    (first,) = net.pushes(b)
    net.close(b)
    net.advance(1)
    b2 = net.hello("b")
    frames = net.take(b2)
    assert [f["type"] for f in frames] == ["hello_ack", "push"]
    assert frames[1]["messageId"] == first["messageId"]


def test_message_sent_during_the_grace_window_is_delivered_on_reattach() -> None:
    net = Net()
    a, b = net.joined("a"), net.joined("b", sessionId="back-soon")
    net.close(b)
    ack = net.send(a, PK["b"], "are you there", priority="now")
    assert ack["queued"] is True
    net.advance(20)
    b2 = net.hello("b", sessionId="back-soon")
    frames = net.take(b2)
    assert [f["type"] for f in frames] == ["hello_ack", "push"]
    assert frames[1]["messageId"] == ack["messageId"]


# --- deduplication ---------------------------------------------------------------------


def test_resent_client_message_id_is_acked_with_the_original_message_id_once() -> None:
    net = Net()
    a, b = net.joined("a"), net.joined("b")
    first = net.send(a, PK["b"], priority="now", cmid="same")
    net.close(a)
    a2 = net.joined("a")
    again = net.send(a2, PK["b"], priority="now", cmid="same", send_id="resend")
    assert again["queued"] is True
    assert again["messageId"] == first["messageId"]
    assert len(net.pushes(b)) == 1
    assert net.broker.store.count_for(MESH, PK["b"]) == 1


def test_resent_broadcast_client_message_id_is_not_broadcast_twice() -> None:
    net = Net()
    a, b = net.joined("a"), net.joined("b")
    first = net.send(a, "*", cmid="bc")
    again = net.send(a, "*", cmid="bc")
    assert again["messageId"] == first["messageId"]
    assert len(net.pushes(b)) == 1


def test_dedupe_is_per_sending_member() -> None:
    net = Net()
    a, c, _b = net.joined("a"), net.joined("c"), net.joined("b")
    one = net.send(a, PK["b"], cmid="shared")
    two = net.send(c, PK["b"], cmid="shared")
    assert one["messageId"] != two["messageId"]


def test_dedupe_record_expires_after_dedupe_ttl() -> None:
    net = Net(options=BrokerOptions(dedupe_ttl=60.0))
    a, b = net.joined("a"), net.joined("b")
    one = net.send(a, "*", cmid="x")
    net.advance(61)
    two = net.send(a, "*", cmid="x")
    assert one["messageId"] != two["messageId"]
    assert net.broker.is_open(b)


# --- presence ----------------------------------------------------------------------------


def test_list_peers_says_which_presences_are_online_and_which_wait_out_their_grace() -> None:
    net = Net()
    a = net.joined("a")
    b = net.joined("b", hostname="box", peerType="ai")
    net.close(b)
    net.frame(a, {"type": "list_peers"})
    (answer,) = [f for f in net.take(a) if f["type"] == "peers_list"]
    online = {p["memberPubkey"]: p["online"] for p in answer["peers"]}
    assert online == {PK["a"]: True, PK["b"]: False}
    (entry,) = [p for p in answer["peers"] if p["memberPubkey"] == PK["b"]]
    assert (entry["hostname"], entry["peerType"]) == ("box", "ai")


def test_list_peers_echoes_req_id_only_when_sent() -> None:
    net = Net()
    a = net.joined("a")
    net.frame(a, {"type": "list_peers", "_reqId": "req-1"})
    (with_id,) = net.take(a)
    assert with_id["type"] == "peers_list" and with_id["_reqId"] == "req-1"
    net.frame(a, {"type": "list_peers"})
    (without,) = net.take(a)
    assert set(without) == {"type", "peers"}


def test_list_peers_entries_have_the_protocol_shape_and_summary() -> None:
    net = Net()
    a = net.joined("a")
    b = net.joined("b", sessionPubkey=SK["s1"], sessionId="sess-b", cwd="/src/b")
    net.frame(b, {"type": "set_summary", "summary": "fixing tests"})
    net.frame(b, {"type": "set_status", "status": "working"})
    net.frame(a, {"type": "list_peers", "_reqId": "r"})
    (answer,) = [f for f in net.take(a) if f["type"] == "peers_list"]
    peers = {p["memberPubkey"]: p for p in answer["peers"]}
    assert peers[PK["a"]]["summary"] is None  # the caller itself is listed too
    entry = peers[PK["b"]]
    assert entry == {
        "pubkey": SK["s1"],
        "memberPubkey": PK["b"],
        "displayName": "peer-b",
        "status": "working",
        "summary": "fixing tests",
        "groups": [{"name": "ops", "role": "lead"}],
        "sessionId": "sess-b",
        "connectedAt": entry["connectedAt"],
        "cwd": "/src/b",
        "peerRole": "session",
        "visible": True,
        "online": True,  # [reference broker]: a live socket, not a grace window
    }
    assert ISO.fullmatch(entry["connectedAt"])


def test_first_connection_announces_peer_joined_and_later_ones_peer_returned() -> None:
    net = Net()
    a = net.joined("a")
    b = net.joined("b")
    (joined,) = net.system(a)
    assert joined["event"] == "peer_joined"
    assert joined["eventData"] == {
        "name": "peer-b",
        "displayName": "peer-b",  # what claudemesh's clients read
        "pubkey": PK["b"],
        "groups": [{"name": "ops", "role": "lead"}],
    }
    assert (joined["senderPubkey"], joined["priority"]) == ("system", "low")
    assert (joined["nonce"], joined["ciphertext"]) == ("", "")
    assert UUID.fullmatch(joined["messageId"]) and ISO.fullmatch(joined["createdAt"])
    assert joined["meshId"] == MESH
    net.close(b)
    net.advance(91)
    net.system(a)
    net.hello("b")
    (returned,) = net.system(a)
    assert returned["event"] == "peer_returned"
    assert returned["eventData"]["pubkey"] == PK["b"]


def test_reattach_by_session_id_within_grace_is_silent_and_keeps_presence_id() -> None:
    net = Net()
    a = net.joined("a")
    b = net.hello("b", sessionId="keep-me")
    presence = net.take(b)[0]["presenceId"]
    net.system(a)
    net.close(b)
    net.advance(60)
    b2 = net.hello("b", sessionId="keep-me")
    assert net.take(b2)[0]["presenceId"] == presence
    net.advance(120)
    assert net.take(a) == []  # no peer_left, no peer_joined/returned
    assert net.broker.presence_count == 2


def test_reattach_by_session_pubkey_within_grace_keeps_presence_id() -> None:
    net = Net()
    a = net.joined("a")
    b = net.hello("b", sessionId="one", sessionPubkey=SK["s1"])
    presence = net.take(b)[0]["presenceId"]
    net.system(a)
    net.close(b)
    b2 = net.hello("b", sessionId="two", sessionPubkey=SK["s1"])
    assert net.take(b2)[0]["presenceId"] == presence
    assert net.system(a) == []


def test_peer_left_is_announced_when_the_grace_window_runs_out() -> None:
    net = Net()
    a, b = net.joined("a"), net.joined("b", sessionPubkey=SK["s1"])
    net.system(a)
    net.close(b)
    net.advance(89)
    assert net.system(a) == []
    net.advance(2)
    (left,) = net.system(a)
    assert left["event"] == "peer_left"
    assert left["eventData"] == {"name": "peer-b", "pubkey": SK["s1"]}
    assert net.broker.presence_count == 1


@pytest.mark.parametrize(
    "same", [{"sessionId": "dup"}, {"sessionPubkey": SK["s2"]}], ids=["sessionId", "sessionPubkey"]
)
def test_second_socket_for_the_same_session_replaces_the_first(same: dict[str, str]) -> None:
    net = Net()
    a = net.joined("a")
    first = net.hello("b", sessionId="dup", sessionPubkey=SK["s2"])
    presence = net.take(first)[0]["presenceId"]
    net.system(a)
    fields: dict[str, Any] = {"sessionId": "other", **same}
    second = net.hello("b", **fields)
    assert net.closed[first] == (1000, "session_replaced")
    assert net.take(second)[0]["presenceId"] == presence
    assert net.system(a) == []
    net.send(a, PK["b"], priority="now")
    assert len(net.pushes(second)) == 1


def test_session_pubkey_that_is_another_members_key_is_refused() -> None:
    net = Net()
    a = net.joined("a")
    conn = net.hello("b", sessionPubkey=PK["a"])
    error, close = refusal(net, conn)
    assert error == {
        "type": "error",
        "code": "bad_session_pubkey",
        "message": "sessionPubkey is already in use by another member of this mesh",
    }
    assert close == (1008, "bad_session_pubkey")
    c = net.joined("c")
    net.send(c, PK["a"], priority="now")
    assert len(net.pushes(a)) == 1


def test_session_pubkey_held_by_another_member_is_refused() -> None:
    net = Net()
    net.joined("a", sessionPubkey=SK["s3"])
    conn = net.hello("b", sessionPubkey=SK["s3"])
    error, close = refusal(net, conn)
    assert error["code"] == "bad_session_pubkey"
    assert close == (1008, "bad_session_pubkey")


# --- liveness and limits ------------------------------------------------------------------


def test_broker_pings_every_30s() -> None:
    net = Net()
    a = net.joined("a")
    net.advance(29.9)
    assert net.pings[a] == 0
    net.advance(0.2)
    assert net.pings[a] == 1
    net.advance(30)
    assert net.pings[a] == 2
    assert net.broker.is_open(a)


def test_sockets_that_opened_within_one_second_are_pinged_by_one_timer() -> None:
    net = Net()
    conns = []
    for offset in (0.1, 0.5, 0.9):
        net.advance(offset - (net.now - T0))
        conns.append(net.joined("a", sessionId=f"s{offset}"))
    net.advance(29 - (net.now - T0))
    assert net.broker.next_deadline() == T0 + 30  # 30 s after each, on the whole second
    net.broker.handle_timer(T0 + 30)
    net.pump()
    assert [net.pings[c] for c in conns] == [1, 1, 1]
    assert T0 + 59 <= net.broker.next_deadline() <= T0 + 60  # never more than 30 s apart


def test_silent_connection_is_dropped_after_75s_with_1001() -> None:
    net = Net()
    a = net.joined("a")
    net.deaf.add(a)
    net.advance(74.9)
    assert net.broker.is_open(a)
    net.advance(0.2)
    assert net.closed[a] == (1001, "liveness timeout")
    assert not net.broker.is_open(a)


def test_any_inbound_frame_counts_as_life() -> None:
    net = Net()
    a = net.joined("a")
    net.deaf.add(a)
    for _ in range(5):
        net.advance(50)
        net.frame(a, {"type": "set_status", "status": "idle"})
    net.broker.receive_ping(a, now=net.now)
    net.advance(50)
    net.broker.receive_binary(a, b"\x00", now=net.now)
    net.advance(50)
    assert net.broker.is_open(a)


def test_unhelloed_socket_is_also_dropped_after_75s_of_silence() -> None:
    # A hello timeout longer than the liveness timeout, so that silence is what closes it.
    net = Net(options=BrokerOptions(hello_timeout=300.0))
    conn = net.open()
    net.deaf.add(conn)
    net.advance(76)
    assert net.closed[conn] == (1001, "liveness timeout")


def test_socket_that_only_answers_pings_is_closed_1008_hello_timeout() -> None:
    net = Net(options=BrokerOptions(hello_timeout=100.0))
    conn = net.open()
    net.advance(99.9)
    assert net.pings[conn] == 3  # answered every time: liveness alone keeps it open
    assert net.broker.is_open(conn)
    net.advance(0.2)
    assert net.closed[conn] == (1008, "hello timeout")
    assert not net.broker.is_open(conn)


def test_non_hello_frames_do_not_hold_off_the_hello_timeout() -> None:
    net = Net()
    conn = net.open()
    for _ in range(4):
        net.advance(2.4)
        net.frame(conn, {"type": "list_peers"})
        assert net.take(conn)[0]["code"] == "no_hello"
    net.advance(0.3)  # 9.9 s after the socket opened
    assert net.broker.is_open(conn)
    net.advance(0.2)  # past hello_timeout (10 s by default)
    assert net.closed[conn] == (1008, "hello timeout")


def test_accepted_hello_cancels_the_hello_timeout() -> None:
    net = Net()
    conn = net.open()
    net.advance(9.9)
    net.hello("a", conn=conn)
    assert net.take(conn)[0]["type"] == "hello_ack"
    assert net.broker.next_deadline() == T0 + 30  # the first ping; no hello timer left
    net.advance(300)
    assert net.broker.is_open(conn)
    assert conn not in net.closed


def test_hello_timeout_is_validated_like_the_other_timers() -> None:
    for bad in (0, -1.0, float("nan"), float("inf"), "10"):
        with pytest.raises(LocalProtocolError, match="hello_timeout"):
            BrokerOptions(hello_timeout=bad)  # type: ignore[arg-type]
    assert BrokerOptions().hello_timeout == 10.0


def test_rate_limit_allows_a_burst_of_10_then_refills_one_per_second() -> None:
    net = Net()
    a, _b = net.joined("a"), net.joined("b")
    answers = [net.send(a, "*") for _ in range(12)]
    assert [x["queued"] for x in answers] == [True] * 10 + [False, False]
    assert answers[10] == {
        "type": "ack",
        "id": answers[10]["id"],
        "messageId": "",
        "queued": False,
        "error": RATE_LIMIT,
    }
    net.advance(1.0)
    assert net.send(a, "*")["queued"] is True
    assert net.send(a, "*")["queued"] is False


def test_rate_limit_is_per_member_across_its_sockets_and_charged_first() -> None:
    net = Net()
    a1 = net.joined("a", sessionId="1")
    a2 = net.joined("a", sessionId="2")
    for _ in range(5):
        net.send(a1, "*")
    for _ in range(5):
        net.send(a2, "*", priority="bogus")  # malformed, but charged first
    assert net.send(a1, "*")["error"] == RATE_LIMIT
    c = net.joined("c")
    assert net.send(c, "*")["queued"] is True


def test_payload_over_64k_is_refused_with_an_ack_and_the_socket_stays_open() -> None:
    net = Net()
    a, _b = net.joined("a"), net.joined("b")
    answer = net.send(a, PK["b"], "A" * 70_000)
    assert answer["queued"] is False and answer["messageId"] == ""
    assert answer["error"] == "payload too large: 70096 bytes > MAX_MESSAGE_BYTES=65536"
    assert net.broker.is_open(a)


def test_payload_of_exactly_64k_is_accepted() -> None:
    net = Net()
    a, _b = net.joined("a"), net.joined("b")
    assert net.send(a, "*", "A" * (65_536 - 32 - 1))["queued"] is True


def test_frame_over_the_hard_cap_closes_the_socket_with_1009() -> None:
    net = Net()
    a, b = net.joined("a"), net.joined("b")
    net.take(a)
    net.text(a, json.dumps({"type": "send", "ciphertext": "A" * 1_048_577}))
    assert net.closed[a][0] == 1009
    assert net.take(a) == []
    assert net.broker.is_open(b)


# --- bad input ----------------------------------------------------------------------------

GARBAGE = [
    "",
    "not json",
    "[1, 2, 3]",
    "null",
    '"a string"',
    "{}",
    '{"type": 7}',
    '{"type": "send", "id": 5}',
    '{"type": "list_peers", "_reqId": 12}',
    '{"type": "client_ack", "brokerMessageId": []}',
    "[" * 100_000,
    '{"type": "set_status"}',
]


@pytest.mark.parametrize("text", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_gets_a_malformed_error_and_harms_nobody(text: str) -> None:
    net = Net()
    a, b = net.joined("a"), net.joined("b")
    net.take(a)
    net.text(a, text)
    (error,) = net.take(a)
    assert error["type"] == "error" and error["code"] == "malformed"
    assert error["message"]
    assert net.broker.is_open(a) and net.broker.is_open(b)
    net.send(a, PK["b"], priority="now")
    assert len(net.pushes(b)) == 1


def test_malformed_frame_echoes_its_string_id() -> None:
    net = Net()
    a = net.joined("a")
    net.frame(a, {"type": "send", "id": "s-1", "targetSpec": "*", "priority": "now"})
    (error,) = net.take(a)
    assert (error["code"], error["id"]) == ("malformed", "s-1")
    assert "nonce" in error["message"]


def test_binary_message_gets_a_malformed_error_and_the_socket_stays_open() -> None:
    net = Net()
    a = net.joined("a")
    net.broker.receive_binary(a, b'{"type":"list_peers"}', now=net.now)
    net.pump()
    (error,) = net.take(a)
    assert error["code"] == "malformed" and "binary" in error["message"]
    assert net.broker.is_open(a)


@pytest.mark.parametrize(
    ("target", "priority", "word"),
    [("*", "urgent", "priority"), ("nobody", "now", "target"), ("AB" * 32, "now", "lowercase")],
)
def test_malformed_send_gets_an_error_with_its_id(target: str, priority: str, word: str) -> None:
    net = Net()
    a = net.joined("a")
    answer = net.send(a, target, priority=priority)
    assert answer["type"] == "error" and answer["code"] == "malformed"
    assert word in answer["message"]


def test_unknown_frame_types_are_ignored() -> None:
    net = Net()
    a = net.joined("a")
    net.frame(a, {"type": "from_the_future", "x": 1})
    net.frame(a, {"type": "hello_ack"})
    assert net.take(a) == []
    assert net.broker.is_open(a)


def test_opening_a_connection_id_twice_is_a_local_protocol_error() -> None:
    net = Net()
    a = net.open()
    with pytest.raises(LocalProtocolError):
        net.broker.connection_opened(a, now=net.now)


def test_inputs_for_unknown_connections_are_ignored() -> None:
    net = Net()
    broker = net.broker
    broker.receive_text(99, "{}", now=T0)
    broker.receive_binary(99, b"", now=T0)
    broker.receive_ping(99, now=T0)
    broker.receive_pong(99, now=T0)
    broker.connection_closed(99, now=T0)
    assert broker.drain_outputs() == []


def test_outputs_queued_for_a_socket_are_dropped_when_it_closes() -> None:
    net = Net()
    a = net.joined("a")
    net.broker.receive_text(a, '{"type":"list_peers"}', now=net.now)
    net.broker.connection_closed(a, now=net.now)
    assert net.broker.drain_outputs() == []


def test_shutdown_closes_every_socket_with_1001() -> None:
    net = Net()
    a, b = net.joined("a"), net.open()
    net.broker.shutdown(now=net.now)
    net.pump()
    assert net.closed == {a: (1001, "broker shutting down"), b: (1001, "broker shutting down")}
    assert net.broker.connection_count == 0


def test_next_deadline_is_none_for_an_idle_broker_and_the_store_is_memory() -> None:
    net = Net()
    assert net.broker.next_deadline() is None
    assert isinstance(net.broker.store, MemoryStore)


def test_broker_options_are_validated() -> None:
    with pytest.raises(LocalProtocolError):
        BrokerOptions(grace=0)
    with pytest.raises(LocalProtocolError):
        BrokerOptions(rate_burst=0)


# --- sizes a peer can make others carry --------------------------------------------------


@pytest.mark.parametrize(
    ("field", "length"),
    [("displayName", 65), ("sessionId", 129), ("cwd", 513), ("hostname", 129)],
)
def test_a_hello_field_longer_than_its_limit_is_refused_malformed(field: str, length: int) -> None:
    net = Net()
    conn = net.hello("a", **{field: "x" * length})
    error, close = refusal(net, conn)
    assert error["code"] == "malformed"
    assert close == (1008, "malformed")


def test_a_hello_with_too_many_groups_is_refused_malformed() -> None:
    net = Net()
    conn = net.hello("a", groups=[{"name": f"g{i}"} for i in range(17)])
    error, _ = refusal(net, conn)
    assert error["code"] == "malformed"


def test_a_summary_longer_than_512_characters_is_refused_and_changes_nothing() -> None:
    net = Net()
    a = net.joined("a")
    net.frame(a, {"type": "set_summary", "summary": "ok"})
    net.frame(a, {"type": "set_summary", "summary": "x" * 513})
    (error,) = net.take(a)
    assert (error["type"], error["code"]) == ("error", "malformed")
    assert [p.summary for p in net.broker.peers(MESH)] == ["ok"]


def test_the_largest_peer_list_a_full_mesh_can_make_fits_every_client() -> None:
    from meshproto import AcceptingVerifier as Accepting  # noqa: PLC0415
    from meshproto_ws import CLIENT_MAX_MESSAGE_BYTES  # noqa: PLC0415

    # Every field at its limit, in two-byte characters. A peer list grows by
    # one entry per peer, so 50 peers show what a full mesh (1,000) would send.
    sample = 50
    net = Net(registry=StaticRegistry(open_mesh=MESH), verifier=Accepting())
    for i in range(sample):
        conn = net.open()
        hello = {
            "type": "hello",
            "meshId": MESH,
            "memberId": "m" * 128,
            "pubkey": f"{i:064x}",
            "sessionId": f"{i:0128d}",
            "displayName": "\u00e9" * 64,
            "cwd": "\u00e9" * 512,
            "hostname": "h" * 128,
            "peerType": "p" * 32,
            "groups": [{"name": f"{g:032d}", "role": "r" * 32} for g in range(16)],
            "timestamp": round(net.now * 1000),
            "signature": "0" * 128,
        }
        net.frame(conn, hello)
        net.frame(conn, {"type": "set_summary", "summary": "\u00e9" * 512})
        net.take(conn)
    net.frame(conn, {"type": "list_peers", "_reqId": "r" * 64})
    (answer,) = [f for f in net.take(conn) if f["type"] == "peers_list"]
    assert len(answer["peers"]) == sample
    size = len(json.dumps(answer, ensure_ascii=False, separators=(",", ":")).encode())
    full_mesh = size * net.broker.options.max_connections_per_mesh / sample
    assert full_mesh < CLIENT_MAX_MESSAGE_BYTES * 0.6, full_mesh


# --- system pushes in batches ----------------------------------------------------------------


def test_a_join_in_a_quiet_mesh_is_announced_at_once() -> None:
    net = Net()
    a = net.joined("a")
    net.joined("b")
    assert [e["eventData"]["name"] for e in net.system(a)] == ["peer-b"]


def test_joins_inside_a_batch_window_are_announced_together_in_order_when_it_ends() -> None:
    net = Net()
    a = net.joined("a")
    net.joined("b")  # at once: the mesh was quiet; a window of presence_batch opens
    net.system(a)
    net.joined("c")
    net.joined("b", sessionId="second")
    assert net.system(a) == []  # waiting in the window
    net.advance(net.broker.options.presence_batch)
    events = [(e["event"], e["eventData"]["name"]) for e in net.system(a)]
    assert events == [("peer_joined", "peer-c"), ("peer_returned", "peer-b")]


def test_a_batch_window_stays_open_while_arrivals_keep_coming_up_to_its_span() -> None:
    net = Net()
    window = net.broker.options.presence_batch
    a = net.joined("a")
    net.joined("b")  # at once: a window opens, to close after at most SPAN_WINDOWS windows
    net.system(a)
    span = SPAN_WINDOWS * window
    opened, names = net.now, []
    while net.now + 0.6 * window < opened + span:  # each arrival sooner than a window
        net.advance(0.6 * window)
        names.append(f"s{len(names)}")
        net.joined("c", sessionId=names[-1])
        assert net.system(a) == []  # still waiting: the mesh has not been quiet
    net.advance(opened + span - net.now)
    heard = [e["event"] for e in net.system(a)]
    assert heard == ["peer_joined"] + ["peer_returned"] * (len(names) - 1)


def test_a_batch_window_opened_in_a_small_mesh_grows_with_the_storm_that_fills_it() -> None:
    net = Net(options=BrokerOptions(max_connections_per_mesh=4 * SOCKETS_PER_WINDOW))
    window = net.broker.options.presence_batch
    a = net.joined("a")
    net.joined("b")  # a window opens in a small mesh: at most SPAN_WINDOWS windows long
    net.system(a)
    joins = 2 * SOCKETS_PER_WINDOW  # past its span as it was opened, not as the mesh grew
    step = 1.5 * SPAN_WINDOWS * window / joins
    for i in range(joins):
        net.advance(step)
        # Gone at once, its presence kept for the grace window: the mesh grows
        # as a storm grows it, and only a and b hear of each arrival.
        net.close(net.joined("c", sessionId=f"s{i}"))
    assert net.system(a) == []  # the storm is still on
    net.advance(SPAN_WINDOWS * window)
    assert len(net.system(a)) == joins


def test_a_batch_window_goes_out_once_the_mesh_is_quiet_for_a_window() -> None:
    net = Net()
    window = net.broker.options.presence_batch
    a = net.joined("a")
    net.joined("b")
    net.system(a)
    net.advance(0.5 * window)
    net.joined("c")  # moves the end of the window to a whole window from now
    net.advance(0.9 * window)
    assert net.system(a) == []
    net.advance(0.1 * window)
    assert [e["eventData"]["name"] for e in net.system(a)] == ["peer-c"]


def test_a_batch_that_reaches_its_size_cap_goes_out_at_once() -> None:
    net = Net(options=BrokerOptions(presence_batch_chars=600))  # about two texts
    a = net.joined("a")
    net.joined("b")
    net.system(a)
    net.joined("c")
    assert net.system(a) == []  # waiting in the window
    net.joined("b", sessionId="second")  # the batch reaches its cap
    assert [e["eventData"]["name"] for e in net.system(a)] == ["peer-c", "peer-b"]


def test_a_batched_event_goes_only_to_the_sockets_live_when_it_happened() -> None:
    net = Net()
    a = net.joined("a")
    net.joined("b")
    c = net.joined("c")  # batched: a and b hear of it when the window ends
    late = net.joined("b", sessionId="late")  # after c: it must not hear of c
    net.advance(net.broker.options.presence_batch)
    assert [e["eventData"]["name"] for e in net.system(late)] == []
    assert "peer-c" in [e["eventData"]["name"] for e in net.system(a)]
    assert c in net.open_conns


def test_each_socket_hears_the_same_arrivals_in_the_same_order_batched_or_not() -> None:
    def heard(batch: float) -> list[list[str]]:
        net = Net(options=BrokerOptions(presence_batch=batch))
        conns = [net.joined("a")]
        for i in range(12):  # a storm: most of these land inside one window or the next
            conns.append(net.joined("b" if i % 2 else "c", sessionId=f"s{i}"))
            net.advance(0.01)
        net.advance(10 * max(batch, 0.01))
        return [[e["eventData"]["pubkey"] + e["event"] for e in net.system(c)] for c in conns]

    batched, at_once = heard(0.05), heard(0)
    assert batched == at_once
    assert [len(h) for h in at_once] == list(range(12, -1, -1))  # never its own arrival


def test_an_event_after_a_window_whose_timer_is_late_loses_nothing() -> None:
    net = Net()
    a = net.joined("a")
    net.joined("b")  # at once; a window opens
    net.joined("c")  # waits in the window
    net.now += 1.0  # the window is over, but the adapter has not run the timer yet
    net.joined("b", sessionId="late")
    net.advance(1.0)
    names = [(e["event"], e["eventData"]["name"]) for e in net.system(a)]
    assert names == [
        ("peer_joined", "peer-b"),
        ("peer_joined", "peer-c"),
        ("peer_returned", "peer-b"),
    ]


def test_a_socket_that_closes_before_its_batch_goes_out_gets_nothing_of_it() -> None:
    net = Net()
    net.joined("a")
    b = net.joined("b")
    net.joined("c")  # batched
    net.close(b)
    net.advance(net.broker.options.presence_batch)  # no output for the closed socket
    assert b not in net.open_conns


def test_with_no_batch_window_every_event_goes_out_at_once() -> None:
    net = Net(options=BrokerOptions(presence_batch=0))
    a = net.joined("a")
    net.joined("b")
    net.joined("c")
    assert [e["eventData"]["name"] for e in net.system(a)] == ["peer-b", "peer-c"]


def test_a_negative_batch_window_is_refused() -> None:
    with pytest.raises(LocalProtocolError):
        BrokerOptions(presence_batch=-1)


@pytest.mark.parametrize("chars", [0, -1, 1.5, True])
def test_a_batch_cap_that_is_not_a_positive_integer_is_refused(chars: object) -> None:
    with pytest.raises(LocalProtocolError, match="presence_batch_chars"):
        BrokerOptions(presence_batch_chars=chars)  # type: ignore[arg-type]


@pytest.mark.parametrize("length", [1, 2, 7, 32])
def test_broker_ids_are_base62_strings_of_the_length_asked_for(length: int) -> None:
    from meshproto._brokerwire import random_id  # noqa: PLC0415 - a private helper

    rng = Random(7)
    for _ in range(200):
        assert re.fullmatch(f"[0-9A-Za-z]{{{length}}}", random_id(rng, length))


def test_every_base62_digit_is_equally_likely_in_a_broker_id() -> None:
    from meshproto._brokerwire import random_id  # noqa: PLC0415 - a private helper

    rng = Random(11)
    counts = Counter("".join(random_id(rng) for _ in range(4_000)))  # 128,000 digits
    expected = 128_000 / 62
    chi_square = sum((counts[d] - expected) ** 2 / expected for d in BASE62_DIGITS)
    # 61 degrees of freedom: 100 is beyond the 99.8th percentile. Keeping the
    # bytes 248..255 (each digit its byte modulo 62) gives about 800 here.
    assert len(counts) == 62
    assert chi_square < 100


def test_broker_ids_follow_from_the_broker_seed() -> None:
    from meshproto._brokerwire import random_id  # noqa: PLC0415 - a private helper

    assert random_id(Random(3)) == random_id(Random(3))
    assert random_id(Random(3)) != random_id(Random(4))
