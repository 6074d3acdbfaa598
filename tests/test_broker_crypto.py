"""The reference broker with real ed25519 (PyNaCl): signed hellos, session hellos, boxes.

Hellos are crafted by hand and signed with real key pairs, then fed to a
``Broker`` whose verifier is :class:`meshproto_crypto.Ed25519Verifier`; the
session behaviours run ``ClientConnection`` and ``Broker`` wired in memory
(``inmemory.Wire``), with ``Ed25519Signer`` and ``BoxSealer`` on the client
side. The broker's clock is ``T0`` unless a test moves it.
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Callable
from random import Random
from typing import Any

import pytest
from inmemory import T0, Wire

from meshproto import (
    Broker,
    BrokerOptions,
    ClientConfig,
    CloseConnection,
    Closed,
    ConnectionState,
    HandshakeComplete,
    Member,
    MessageReceived,
    SendAcked,
    SendText,
    StaticRegistry,
    SystemMessage,
    UnreadableMessage,
    attestation_signing_payload,
    expand_outputs,
    hello_signing_payload,
    session_hello_signing_payload,
)
from meshproto_crypto import BoxSealer, Ed25519Signer, Ed25519Verifier, KeyPair

MESH = "mesh-crypto"
URL = "ws://broker.test:7900/ws"
NOW_MS = round(T0 * 1000)
HOUR_MS = 3600 * 1000
DAY_MS = 24 * HOUR_MS

KEYS = {
    name: KeyPair.from_seed(bytes([i]) * 32)
    for i, name in enumerate(
        ("alice", "bob", "carol", "stranger", "bob-session", "other-session"), start=1
    )
}
PK = {name: keys.pubkey for name, keys in KEYS.items()}
MEMBERS = ("alice", "bob", "carol")
FIXED_NONCE = bytes(range(24))

_conn_ids = itertools.count(1)


def registry() -> StaticRegistry:
    return StaticRegistry(Member(MESH, f"id-{name}", PK[name], name) for name in MEMBERS)


def new_broker(members: StaticRegistry | None = None) -> Broker:
    return Broker(
        members if members is not None else registry(), verifier=Ed25519Verifier(), rng=Random(7)
    )


def sign(who: str, payload: bytes) -> str:
    return Ed25519Signer(KEYS[who]).sign(payload).hex()


def member_hello(who: str = "alice", *, ts: int = NOW_MS) -> dict[str, Any]:
    """A member hello signed by ``who``'s key."""
    member_id = f"id-{who}"
    return {
        "type": "hello",
        "meshId": MESH,
        "memberId": member_id,
        "pubkey": PK[who],
        "sessionId": f"session-{who}",
        "pid": 4242,
        "cwd": f"/work/{who}",
        "timestamp": ts,
        "signature": sign(who, hello_signing_payload(MESH, member_id, PK[who], ts)),
    }


def session_hello(
    parent: str = "bob",
    session: str = "bob-session",
    *,
    ts: int = NOW_MS,
    expires_at: int = NOW_MS + HOUR_MS,
    mesh: str = MESH,
    attested_session: str | None = None,
    attested_parent: str | None = None,
    attested_by: str | None = None,
    signed_by: str | None = None,
) -> dict[str, Any]:
    """A session hello; by default the attestation names the hello's own keys and is
    signed by ``parent``, and the hello is signed by ``session``."""
    att_session = PK[attested_session or session]
    att_parent = PK[attested_parent or parent]
    attestation = {
        "sessionPubkey": att_session,
        "parentMemberPubkey": att_parent,
        "expiresAt": expires_at,
        "signature": sign(
            attested_by or parent, attestation_signing_payload(att_parent, att_session, expires_at)
        ),
    }
    payload = session_hello_signing_payload(mesh, PK[parent], PK[session], ts)
    return {
        "type": "session_hello",
        "meshId": mesh,
        "parentMemberId": f"id-{parent}",
        "parentMemberPubkey": PK[parent],
        "sessionPubkey": PK[session],
        "parentAttestation": attestation,
        "displayName": f"{parent}-session",
        "sessionId": f"{session}-id",
        "pid": 4343,
        "cwd": f"/work/{session}",
        "timestamp": ts,
        "signature": sign(signed_by or session, payload),
    }


def answer(
    broker: Broker, frame: dict[str, Any], *, now: float = T0
) -> tuple[int, list[dict[str, Any]], tuple[int, str] | None]:
    """Open a socket, say ``frame`` on it: (conn_id, frames written to it, its close)."""
    conn = next(_conn_ids)
    broker.connection_opened(conn, now=now)
    broker.receive_text(conn, json.dumps(frame), now=now)
    outputs = [o for o in expand_outputs(broker.drain_outputs()) if o.conn_id == conn]
    frames = [json.loads(o.text) for o in outputs if isinstance(o, SendText)]
    closes = [(o.code, o.reason) for o in outputs if isinstance(o, CloseConnection)]
    assert len(closes) <= 1
    return conn, frames, closes[0] if closes else None


def refused(
    frame: dict[str, Any], broker: Broker | None = None
) -> tuple[dict[str, Any], tuple[int, str]]:
    """The one error frame and the close that answer ``frame``."""
    broker = broker if broker is not None else new_broker()
    conn, frames, close = answer(broker, frame)
    assert len(frames) == 1 and close is not None, (frames, close)
    assert not broker.is_open(conn)
    return frames[0], close


def acked(frame: dict[str, Any], broker: Broker | None = None) -> dict[str, Any]:
    """The hello_ack that answers ``frame`` (the socket stays open)."""
    broker = broker if broker is not None else new_broker()
    conn, frames, close = answer(broker, frame)
    assert close is None and frames and frames[0]["type"] == "hello_ack", (frames, close)
    assert broker.is_helloed(conn)
    return frames[0]


def member_config(
    name: str, *, session_id: str | None = None, sealer: BoxSealer | None = None
) -> ClientConfig:
    return ClientConfig(
        url=URL,
        mesh_id=MESH,
        member_id=f"id-{name}",
        signer=Ed25519Signer(KEYS[name]),
        session_id=session_id or f"session-{name}",
        sealer=sealer if sealer is not None else BoxSealer(KEYS[name]),
    )


def session_config(
    parent: str = "bob",
    session: str = "bob-session",
    *,
    session_id: str | None = None,
    sealer: BoxSealer | None = None,
) -> ClientConfig:
    return ClientConfig(
        url=URL,
        mesh_id=MESH,
        member_id=f"id-{parent}",
        signer=Ed25519Signer(KEYS[parent]),
        session_id=session_id or f"{session}-id",
        session_signer=Ed25519Signer(KEYS[session]),
        sealer=sealer if sealer is not None else BoxSealer(KEYS[parent], KEYS[session]),
        display_name=f"{parent}-session",
    )


def presence_of(wire: Wire, name: str) -> str | None:
    acks = wire.of(name, HandshakeComplete)
    assert acks, f"{name} never completed a handshake"
    last = acks[-1]
    assert isinstance(last, HandshakeComplete)
    return last.ack.presence_id


def system_events(wire: Wire, name: str) -> list[str]:
    return [e.event for e in wire.of(name, SystemMessage) if isinstance(e, SystemMessage)]


def received(wire: Wire, name: str) -> list[MessageReceived]:
    return [e for e in wire.of(name, MessageReceived) if isinstance(e, MessageReceived)]


# --- member hello, signed for real ---------------------------------------------------


def test_client_signing_with_ed25519_is_accepted_by_a_verifying_broker() -> None:
    wire = Wire(new_broker())
    alice = wire.connect("alice", member_config("alice"))
    assert alice.state is ConnectionState.OPEN
    assert len(wire.of("alice", HandshakeComplete)) == 1
    (peer,) = wire.broker.peers(MESH)
    assert (peer.pubkey, peer.member_pubkey) == (PK["alice"], PK["alice"])


def _flip_last_hex_digit(text: str) -> str:
    return text[:-1] + ("0" if text[-1] != "0" else "1")


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda f: f.update(meshId="another-mesh"), id="meshId"),
        # The broker never compares memberId with the member row; the signature covers it.
        pytest.param(lambda f: f.update(memberId="id-carol"), id="memberId"),
        pytest.param(lambda f: f.update(pubkey=PK["carol"]), id="pubkey-of-another-member"),
        pytest.param(lambda f: f.update(timestamp=f["timestamp"] + 1), id="timestamp-1ms-later"),
        pytest.param(
            lambda f: f.update(signature=_flip_last_hex_digit(f["signature"])),
            id="signature-last-digit-changed",
        ),
    ],
)
def test_member_hello_with_a_tampered_signed_field_is_refused_bad_signature(
    tamper: Callable[[dict[str, Any]], None],
) -> None:
    frame = member_hello("alice")
    tamper(frame)
    error, close = refused(frame)
    assert error == {
        "type": "error",
        "code": "bad_signature",
        "message": "hello rejected: bad_signature",
    }
    assert close == (1008, "bad_signature")


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda f: f.update(pubkey=f["pubkey"].upper()), id="pubkey-uppercased"),
        pytest.param(lambda f: f.update(signature=f["signature"][:-2]), id="signature-cut-short"),
    ],
)
def test_member_hello_tampered_out_of_shape_is_refused_malformed_before_any_signature_check(
    tamper: Callable[[dict[str, Any]], None],
) -> None:
    frame = member_hello("alice")
    tamper(frame)
    error, close = refused(frame)
    assert (error["code"], error["message"]) == ("malformed", "hello rejected: malformed")
    assert close == (1008, "malformed")


def _hello_of_kind(kind: str, ts: int) -> dict[str, Any]:
    return member_hello("alice", ts=ts) if kind == "hello" else session_hello(ts=ts)


@pytest.mark.parametrize("kind", ["hello", "session_hello"])
@pytest.mark.parametrize("offset_ms", [60_000, -60_000], ids=["plus-60000ms", "minus-60000ms"])
def test_hello_timestamp_exactly_60s_off_the_broker_clock_is_accepted(
    kind: str, offset_ms: int
) -> None:
    acked(_hello_of_kind(kind, NOW_MS + offset_ms))


@pytest.mark.parametrize("kind", ["hello", "session_hello"])
@pytest.mark.parametrize("offset_ms", [60_001, -60_001], ids=["plus-60001ms", "minus-60001ms"])
def test_hello_timestamp_60001ms_off_the_broker_clock_is_refused_timestamp_skew(
    kind: str, offset_ms: int
) -> None:
    error, close = refused(_hello_of_kind(kind, NOW_MS + offset_ms))
    assert error == {
        "type": "error",
        "code": "timestamp_skew",
        "message": f"{kind} rejected: timestamp_skew",
    }
    assert close == (1008, "timestamp_skew")


# --- session hello: every refusal, each from a crafted frame ----------------------------


def _set_attestation(**fields: Any) -> Callable[[dict[str, Any]], None]:
    return lambda frame: frame["parentAttestation"].update(fields)


def _refusal(
    case_id: str,
    code: str,
    message: str,
    *,
    tamper: Callable[[dict[str, Any]], None] | None = None,
    **build: Any,
) -> Any:
    return pytest.param(build, tamper, code, message, id=case_id)


SESSION_REFUSALS = [
    _refusal(
        "signature-cut-short",
        "malformed",
        "session_hello rejected: malformed",
        tamper=lambda f: f.update(signature=f["signature"][:-2]),
    ),
    _refusal(
        "parent-pubkey-uppercased",
        "bad_parent_pubkey",
        "parentMemberPubkey must be 64 lowercase hex chars",
        tamper=lambda f: f.update(parentMemberPubkey=f["parentMemberPubkey"].upper()),
    ),
    _refusal(
        "parent-pubkey-cut-short",
        "bad_parent_pubkey",
        "parentMemberPubkey must be 64 lowercase hex chars",
        tamper=lambda f: f.update(parentMemberPubkey=f["parentMemberPubkey"][:62]),
    ),
    _refusal(
        "session-pubkey-uppercased",
        "bad_session_pubkey",
        "sessionPubkey must be 64 lowercase hex chars",
        tamper=lambda f: f.update(sessionPubkey=f["sessionPubkey"].upper()),
    ),
    _refusal(
        "attestation-for-another-session",
        "attestation_mismatch",
        "parentAttestation does not bind the claimed session+parent pubkeys",
        attested_session="other-session",
    ),
    _refusal(
        "attestation-by-another-parent",
        "attestation_mismatch",
        "parentAttestation does not bind the claimed session+parent pubkeys",
        attested_parent="carol",
        attested_by="carol",
    ),
    _refusal(
        "attestation-signature-cut-short",
        "malformed",
        "attestation rejected: malformed",
        tamper=lambda f: _set_attestation(signature=f["parentAttestation"]["signature"][:-2])(f),
    ),
    _refusal(
        "attestation-expired-1ms-ago",
        "expired",
        "attestation rejected: expired",
        expires_at=NOW_MS - 1,
    ),
    _refusal(
        "attestation-expiring-now",
        "expired",
        "attestation rejected: expired",
        expires_at=NOW_MS,
    ),
    _refusal(
        "attestation-24h-and-1ms-ahead",
        "ttl_too_long",
        "attestation rejected: ttl_too_long",
        expires_at=NOW_MS + DAY_MS + 1,
    ),
    _refusal(
        "hello-signed-by-the-parent-not-the-session-key",
        "bad_signature",
        "session_hello rejected: bad_signature",
        signed_by="bob",
    ),
    _refusal(
        "hello-meshId-tampered",
        "bad_signature",
        "session_hello rejected: bad_signature",
        tamper=lambda f: f.update(meshId="another-mesh"),
    ),
    _refusal(
        "hello-timestamp-1ms-later",
        "bad_signature",
        "session_hello rejected: bad_signature",
        tamper=lambda f: f.update(timestamp=f["timestamp"] + 1),
    ),
    _refusal(
        "attestation-signed-by-the-session-key",
        "bad_signature",
        "attestation rejected: bad_signature",
        attested_by="bob-session",
    ),
    _refusal(
        "attestation-signed-by-another-member",
        "bad_signature",
        "attestation rejected: bad_signature",
        attested_by="carol",
    ),
    _refusal(
        "attestation-expiresAt-tampered",
        "bad_signature",
        "attestation rejected: bad_signature",
        tamper=lambda f: _set_attestation(expiresAt=f["parentAttestation"]["expiresAt"] + 1)(f),
    ),
    _refusal(
        "parent-not-a-member",
        "unauthorized",
        "pubkey not found in mesh",
        parent="stranger",
    ),
    _refusal(
        "unknown-mesh",
        "unauthorized",
        "pubkey not found in mesh",
        mesh="another-mesh",
    ),
    _refusal(
        "parentMemberId-of-another-member",
        "parent_member_id_mismatch",
        "parentMemberId does not match parentMemberPubkey",
        tamper=lambda f: f.update(parentMemberId="id-carol"),
    ),
    _refusal(
        "session-key-is-another-members-key",
        "bad_session_pubkey",
        "sessionPubkey is already in use by another member of this mesh",
        session="carol",
    ),
]


@pytest.mark.parametrize(("build", "tamper", "code", "message"), SESSION_REFUSALS)
def test_crafted_session_hello_is_refused_with_its_code_then_closed_1008(
    build: dict[str, Any],
    tamper: Callable[[dict[str, Any]], None] | None,
    code: str,
    message: str,
) -> None:
    frame = session_hello(**build)
    if tamper is not None:
        tamper(frame)
    error, close = refused(frame)
    assert error == {"type": "error", "code": code, "message": message}
    assert close == (1008, code)


@pytest.mark.parametrize(
    "expires_at", [NOW_MS + 1, NOW_MS + DAY_MS], ids=["1ms-ahead", "exactly-24h-ahead"]
)
def test_attestation_expiring_up_to_exactly_24h_ahead_is_accepted(expires_at: int) -> None:
    acked(session_hello(expires_at=expires_at))


def test_parent_revoked_between_two_session_hellos_refuses_the_second_4002_banned() -> None:
    members = registry()
    broker = new_broker(members)
    conn, _, _ = answer(broker, session_hello())
    assert broker.is_helloed(conn)
    broker.connection_closed(conn, now=T0)
    members.revoke(MESH, PK["bob"])
    error, close = refused(session_hello(), broker)
    assert error == {
        "type": "error",
        "code": "revoked",
        "message": f'You\'ve been removed from "{MESH}". Contact the mesh owner to rejoin.',
    }
    assert close == (4002, "banned")


# --- session presences, end to end with clients ---------------------------------------------


def test_session_client_is_acked_and_a_boxed_direct_message_reaches_that_session_only() -> None:
    wire = Wire(new_broker())
    alice = wire.connect("alice", member_config("alice"))
    wire.connect("bob", member_config("bob"))
    session = wire.connect("bob-s", session_config())
    assert session.state is ConnectionState.OPEN
    assert wire.of("bob-s", HandshakeComplete)

    handle = alice.send(PK["bob-session"], "for the session only", "now", now=wire.now)
    wire.pump()
    (ack,) = wire.of("alice", SendAcked)
    assert isinstance(ack, SendAcked) and ack.send_id == handle.id
    (got,) = received(wire, "bob-s")
    assert got.body == b"for the session only"
    assert got.sender_pubkey == PK["alice"]
    assert base64.b64decode(got.push.ciphertext) != got.body  # a box, not plaintext
    assert received(wire, "bob") == []
    assert wire.broker.claimed_count == 0  # the session's client_ack arrived


def test_session_presence_is_known_by_its_session_key_under_its_parent_member() -> None:
    wire = Wire(new_broker())
    wire.connect("alice", member_config("alice"))
    wire.connect("bob-s", session_config())
    session_peer = next(p for p in wire.broker.peers(MESH) if p.pubkey == PK["bob-session"])
    assert session_peer.member_pubkey == PK["bob"]
    assert session_peer.display_name == "bob-session"
    (joined,) = [e for e in wire.of("alice", SystemMessage) if isinstance(e, SystemMessage)]
    assert (joined.event, joined.data["pubkey"]) == ("peer_joined", PK["bob-session"])


def test_direct_push_from_a_session_carries_its_session_key_and_opens_at_the_receiver() -> None:
    wire = Wire(new_broker())
    wire.connect("alice", member_config("alice"))
    session = wire.connect("bob-s", session_config())
    session.send(PK["alice"], "from the session", "now", now=wire.now)
    wire.pump()
    (got,) = received(wire, "alice")
    assert got.sender_pubkey == PK["bob-session"]
    assert got.body == b"from the session"


def test_box_opened_with_the_wrong_key_is_an_unreadable_message_not_an_exception() -> None:
    wire = Wire(new_broker())
    alice_sealer = BoxSealer(KEYS["alice"], nonce_source=lambda n: FIXED_NONCE[:n])
    alice = wire.connect("alice", member_config("alice", sealer=alice_sealer))
    # The session's client holds only the member key: the box was sealed to the session key.
    session = wire.connect("bob-s", session_config(sealer=BoxSealer(KEYS["bob"])))
    alice.send(PK["bob-session"], "sealed to the session key", "now", now=wire.now)
    wire.pump()
    (unreadable,) = wire.of("bob-s", UnreadableMessage)
    assert isinstance(unreadable, UnreadableMessage)
    assert unreadable.sender_pubkey == PK["alice"]
    assert "no key of ours" in unreadable.reason
    assert received(wire, "bob-s") == []
    assert session.state is ConnectionState.OPEN
    assert wire.broker.claimed_count == 0  # acknowledged all the same


def test_broadcast_from_a_session_opens_by_the_plaintext_fallback() -> None:
    wire = Wire(new_broker())
    wire.connect("alice", member_config("alice"))
    session = wire.connect("bob-s", session_config())
    session.send("*", "hello, everyone", now=wire.now)
    wire.pump()
    (got,) = received(wire, "alice")
    assert got.body == b"hello, everyone"
    assert got.sender_pubkey == PK["bob-session"]
    assert got.push.sender_member_pubkey == PK["bob"]
    assert base64.b64decode(got.push.ciphertext) == b"hello, everyone"


def test_session_reattaching_within_grace_keeps_its_presence_and_nobody_is_told() -> None:
    wire = Wire(new_broker())
    wire.connect("alice", member_config("alice"))
    session = wire.connect("bob-s", session_config())
    first = presence_of(wire, "bob-s")
    assert system_events(wire, "alice") == ["peer_joined"]
    wire.drop_link("bob-s")
    wire.advance(30)  # the client reconnects with a fresh attestation, inside the grace
    assert session.state is ConnectionState.OPEN
    assert len(wire.of("bob-s", HandshakeComplete)) == 2
    assert presence_of(wire, "bob-s") == first
    wire.advance(120)  # past the grace the first socket started
    assert system_events(wire, "alice") == ["peer_joined"]  # no peer_left, no peer_joined
    assert wire.broker.presence_count == 2


def test_second_socket_with_the_same_session_key_closes_the_first_1000_session_replaced() -> None:
    wire = Wire(new_broker())
    wire.connect("alice", member_config("alice"))
    first = wire.connect("bob-s1", session_config(session_id="laptop"))
    presence = presence_of(wire, "bob-s1")
    second = wire.connect("bob-s2", session_config(session_id="desktop"))
    assert first.state is ConnectionState.CLOSED
    (closed,) = wire.of("bob-s1", Closed)
    assert isinstance(closed, Closed)
    assert (closed.code, "session_replaced" in closed.reason) == (1000, True)
    assert second.state is ConnectionState.OPEN
    assert presence_of(wire, "bob-s2") == presence
    assert system_events(wire, "alice") == ["peer_joined"]
    assert wire.broker.presence_count == 2


@pytest.mark.parametrize("session_first", [True, False], ids=["session-first", "member-first"])
def test_member_and_session_sharing_a_session_id_stay_two_presences(session_first: bool) -> None:
    wire = Wire(new_broker())
    configs = {
        "bob-s": session_config(session_id="shared"),
        "bob": member_config("bob", session_id="shared"),
    }
    for name in ("bob-s", "bob") if session_first else ("bob", "bob-s"):
        wire.connect(name, configs[name])
    assert all(c.state is ConnectionState.OPEN for c in wire.clients.values())
    assert presence_of(wire, "bob") != presence_of(wire, "bob-s")
    assert wire.broker.presence_count == 2


# --- session keys: a proven session beats an unproven claim ----------------------------------


class Sockets:
    """A verifying broker driven socket by socket, keeping what it wrote to each one."""

    def __init__(self, broker: Broker | None = None) -> None:
        self.broker = broker if broker is not None else new_broker()
        self.frames: dict[int, list[dict[str, Any]]] = {}
        self.closes: dict[int, tuple[int, str]] = {}

    def pump(self) -> None:
        for out in expand_outputs(self.broker.drain_outputs()):
            if isinstance(out, SendText):
                self.frames.setdefault(out.conn_id, []).append(json.loads(out.text))
            elif isinstance(out, CloseConnection):
                self.closes[out.conn_id] = (out.code, out.reason)

    def say(self, frame: dict[str, Any], *, at: float, conn: int | None = None) -> int:
        """Say ``frame`` at time ``at`` on ``conn`` (by default a new socket); return the socket."""
        if conn is None:
            conn = next(_conn_ids)
            self.broker.connection_opened(conn, now=at)
        self.broker.receive_text(conn, json.dumps(frame), now=at)
        self.pump()
        return conn

    def drop(self, conn: int, *, at: float) -> None:
        self.broker.connection_closed(conn, now=at)
        self.pump()

    def run_timers(self, at: float) -> None:
        self.broker.handle_timer(at)
        self.pump()

    def acked(self, conn: int) -> dict[str, Any]:
        frames = self.frames.get(conn, [])
        assert frames and frames[0]["type"] == "hello_ack", (frames, self.closes.get(conn))
        assert self.broker.is_helloed(conn)
        return frames[0]

    def holder(self, session: str) -> str | None:
        """The member whose presence is known by the session key ``session``, if any."""
        found = [p.member_pubkey for p in self.broker.peers(MESH) if p.pubkey == PK[session]]
        assert len(found) <= 1
        return found[0] if found else None

    def events(self, conn: int) -> list[tuple[str, str, str]]:
        return [
            (f["event"], f["eventData"]["name"], f["eventData"]["pubkey"])
            for f in self.frames.get(conn, [])
            if f.get("subtype") == "system"
        ]


def ms(at: float) -> int:
    return round(at * 1000)


def proven(parent: str = "bob", session: str = "bob-session", *, at: float) -> dict[str, Any]:
    """A session hello at time ``at``: it proves ``session`` belongs to ``parent``."""
    return session_hello(parent, session, ts=ms(at), expires_at=ms(at) + HOUR_MS)


def claim(who: str, session: str, *, at: float) -> dict[str, Any]:
    """A member hello of ``who`` naming the session key ``session`` without proving it."""
    frame = member_hello(who, ts=ms(at))
    frame["sessionPubkey"] = PK[session]
    return frame


def session_gone(net: Sockets) -> float:
    """Bob's proven session says hello at T0, leaves at T0+1 and is dropped after its grace."""
    conn = net.say(proven(at=T0), at=T0)
    net.acked(conn)
    net.drop(conn, at=T0 + 1)
    net.run_timers(T0 + 100)
    assert net.holder("bob-session") is None
    return T0 + 100


@pytest.mark.parametrize("in_grace", [False, True], ids=["live", "in-grace"])
def test_unproven_claim_of_a_key_another_members_proven_session_holds_is_refused(
    in_grace: bool,
) -> None:
    net = Sockets()
    bob = net.say(proven(at=T0), at=T0)
    net.acked(bob)
    if in_grace:
        net.drop(bob, at=T0 + 1)
    carol = net.say(claim("carol", "bob-session", at=T0 + 2), at=T0 + 2)
    assert net.frames[carol] == [
        {
            "type": "error",
            "code": "bad_session_pubkey",
            "message": "sessionPubkey is already in use by another member of this mesh",
        }
    ]
    assert net.closes[carol] == (1008, "bad_session_pubkey")
    assert net.holder("bob-session") == PK["bob"]


@pytest.mark.parametrize("squatter_live", [True, False], ids=["squatter-live", "squatter-in-grace"])
def test_proven_session_hello_displaces_another_members_unproven_claim_of_its_key(
    squatter_live: bool,
) -> None:
    net = Sockets()
    now = session_gone(net)
    carol = net.say(claim("carol", "bob-session", at=now), at=now)
    net.acked(carol)  # nothing proves the key is not Carol's: the claim is let in
    assert net.holder("bob-session") == PK["carol"]
    if not squatter_live:
        net.drop(carol, at=now + 1)
    bob = net.say(proven(at=now + 2), at=now + 2)
    net.acked(bob)
    assert net.holder("bob-session") == PK["bob"]
    assert net.broker.presence_count == 1  # Carol's claim is gone, grace or not
    assert net.closes.get(carol) == ((1008, "session_key_claimed") if squatter_live else None)


def test_unproven_claim_is_refused_once_the_proven_session_took_its_key_back() -> None:
    net = Sockets()
    now = session_gone(net)
    carol = net.say(claim("carol", "bob-session", at=now), at=now)
    net.acked(bob := net.say(proven(at=now + 1), at=now + 1))
    assert net.closes[carol] == (1008, "session_key_claimed")
    net.drop(bob, at=now + 2)  # in grace: the key is still Bob's
    again = net.say(claim("carol", "bob-session", at=now + 3), at=now + 3)
    assert net.frames[again][0]["code"] == "bad_session_pubkey"
    assert net.closes[again] == (1008, "bad_session_pubkey")
    assert net.holder("bob-session") == PK["bob"]


def test_messages_stored_for_a_displaced_claim_go_to_the_proven_session() -> None:
    net = Sockets()
    now = session_gone(net)
    alice = net.say(member_hello("alice", ts=ms(now)), at=now)
    carol = net.say(claim("carol", "bob-session", at=now), at=now)
    send = {
        "type": "send",
        "id": "s1",
        "targetSpec": PK["bob-session"],
        "priority": "now",
        "nonce": "A" * 32,
        "ciphertext": "sealed to the session key",
        "client_message_id": "m1",
    }
    net.say(send, at=now, conn=alice)
    (ack,) = [f for f in net.frames[alice] if f["type"] == "ack"]
    (pushed,) = [f for f in net.frames[carol] if f["type"] == "push" and "subtype" not in f]
    assert pushed["messageId"] == ack["messageId"]  # the squatter got it (and cannot open it)
    bob = net.say(proven(at=now + 1), at=now + 1)
    net.acked(bob)
    (pushed_again,) = [f for f in net.frames[bob] if f["type"] == "push"]
    assert pushed_again["messageId"] == ack["messageId"]
    assert pushed_again["ciphertext"] == "sealed to the session key"
    store = net.broker.store
    assert [m.message_id for m in store.messages_for(MESH, PK["bob"])] == [ack["messageId"]]
    assert store.messages_for(MESH, PK["carol"]) == []


def test_displaced_claim_is_announced_peer_left_before_the_proven_session_returns() -> None:
    net = Sockets()
    now = session_gone(net)
    alice = net.say(member_hello("alice", ts=ms(now)), at=now)
    net.say(claim("carol", "bob-session", at=now), at=now)
    net.say(proven(at=now + 1), at=now + 1)
    net.run_timers(now + 2)  # system pushes close together go out as one batch
    assert net.events(alice) == [
        ("peer_joined", "carol", PK["bob-session"]),
        ("peer_left", "carol", PK["bob-session"]),
        ("peer_returned", "bob-session", PK["bob-session"]),
    ]


def test_displacing_a_claim_frees_its_place_for_the_capacity_check() -> None:
    net = Sockets(
        Broker(
            registry(),
            verifier=Ed25519Verifier(),
            rng=Random(7),
            options=BrokerOptions(max_connections_per_mesh=2),
        )
    )
    now = session_gone(net)
    net.acked(net.say(member_hello("alice", ts=ms(now)), at=now))
    net.acked(net.say(claim("carol", "bob-session", at=now), at=now))
    net.acked(net.say(proven(at=now + 1), at=now + 1))
    assert net.holder("bob-session") == PK["bob"]


def test_session_hello_for_a_key_another_members_proven_session_holds_is_refused() -> None:
    net = Sockets()
    net.acked(net.say(proven(at=T0), at=T0))
    # Carol attests Bob's session key, and that key signs her session hello: proven twice.
    carol = net.say(proven("carol", "bob-session", at=T0 + 1), at=T0 + 1)
    assert net.frames[carol][0]["code"] == "bad_session_pubkey"
    assert net.closes[carol] == (1008, "bad_session_pubkey")
    assert net.holder("bob-session") == PK["bob"]


def test_member_hello_reusing_its_own_proven_session_key_reattaches_that_session() -> None:
    net = Sockets()
    first = net.say(proven(at=T0), at=T0)
    presence = net.acked(first)["presenceId"]
    net.drop(first, at=T0 + 1)
    again = net.say(claim("bob", "bob-session", at=T0 + 2), at=T0 + 2)
    assert net.acked(again)["presenceId"] == presence
    assert net.holder("bob-session") == PK["bob"]
