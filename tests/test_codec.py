"""The wire codec: ``encode(frame) -> str`` and ``decode(text) -> frame`` (protocol.md §1-4)."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshproto import (
    FRAME_TYPES,
    Ack,
    ClientAck,
    ErrorFrame,
    Frame,
    Group,
    Hello,
    HelloAck,
    ListPeers,
    LocalProtocolError,
    ParentAttestation,
    Peer,
    PeersList,
    Push,
    RemoteProtocolError,
    Send,
    SessionHello,
    SetStatus,
    SetSummary,
    UnknownFrame,
    decode,
    encode,
)
from meshproto import _codec as codec
from meshproto._codec import compact_json, frame_text
from meshproto._targets import check_target, is_direct_target

# --- strategies ------------------------------------------------------------------

texts = st.text(max_size=24)
ints = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def opt(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


json_values = st.recursive(
    st.none()
    | st.booleans()
    | ints
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
json_objects = st.dictionaries(texts, json_values, max_size=4)
groups = st.lists(st.builds(Group, name=texts, role=opt(texts)), max_size=3).map(tuple)
peers = st.lists(
    st.builds(
        Peer,
        pubkey=texts,
        member_pubkey=opt(texts),
        display_name=opt(texts),
        status=opt(texts),
        summary=opt(texts),
        groups=opt(groups),
        session_id=opt(texts),
        connected_at=opt(texts),
        cwd=opt(texts),
        peer_role=opt(texts),
        visible=opt(st.booleans()),
    ),
    max_size=3,
).map(tuple)

FRAME_STRATEGIES: dict[type[Any], st.SearchStrategy[Any]] = {
    Hello: st.builds(
        Hello,
        mesh_id=texts,
        member_id=texts,
        pubkey=texts,
        session_id=opt(texts),
        pid=opt(ints),
        cwd=opt(texts),
        timestamp=opt(ints),
        signature=opt(texts),
        session_pubkey=opt(texts),
        display_name=opt(texts),
        hostname=opt(texts),
        peer_type=opt(texts),
        groups=opt(groups),
    ),
    SessionHello: st.builds(
        SessionHello,
        mesh_id=texts,
        parent_member_id=texts,
        parent_member_pubkey=texts,
        session_pubkey=texts,
        parent_attestation=st.builds(
            ParentAttestation,
            session_pubkey=texts,
            parent_member_pubkey=texts,
            expires_at=ints,
            signature=texts,
        ),
        session_id=opt(texts),
        pid=opt(ints),
        cwd=opt(texts),
        timestamp=opt(ints),
        signature=opt(texts),
        display_name=opt(texts),
        hostname=opt(texts),
        peer_type=opt(texts),
        groups=opt(groups),
        role=opt(texts),
    ),
    HelloAck: st.builds(
        HelloAck,
        presence_id=opt(texts),
        member_display_name=opt(texts),
        restored=opt(st.booleans()),
        member_profile=opt(json_objects),
        mesh_policy=opt(json_objects),
    ),
    Send: st.builds(
        Send,
        id=texts,
        target_spec=texts,
        priority=texts,
        nonce=texts,
        ciphertext=texts,
        client_message_id=opt(texts),
    ),
    Ack: st.builds(Ack, id=texts, message_id=texts, queued=st.booleans(), error=opt(texts)),
    ErrorFrame: st.builds(ErrorFrame, code=texts, message=texts, id=opt(texts), req_id=opt(texts)),
    Push: st.builds(
        Push,
        message_id=texts,
        mesh_id=texts,
        sender_pubkey=texts,
        priority=texts,
        nonce=texts,
        ciphertext=texts,
        created_at=texts,
        client_message_id=opt(texts),
        request_fingerprint=opt(texts),
        sender_member_pubkey=opt(texts),
        sender_member_id=opt(texts),
        sender_name=opt(texts),
        topic=opt(texts),
        reply_to_id=opt(texts),
        subtype=opt(texts),
        event=opt(texts),
        event_data=opt(json_objects),
    ),
    ClientAck: st.builds(ClientAck, client_message_id=opt(texts), broker_message_id=opt(texts)),
    SetStatus: st.builds(SetStatus, status=texts),
    SetSummary: st.builds(SetSummary, summary=texts),
    ListPeers: st.builds(ListPeers, req_id=opt(texts)),
    PeersList: st.builds(PeersList, peers=peers, req_id=opt(texts)),
}

any_frame = st.one_of(*FRAME_STRATEGIES.values())

# One minimal valid frame of each type, as the broker or client would write it,
# with the fields docs/protocol.md makes required.
MINIMAL: dict[str, dict[str, Any]] = {
    "hello": {"type": "hello", "meshId": "m", "memberId": "u", "pubkey": "p"},
    "session_hello": {
        "type": "session_hello",
        "meshId": "m",
        "parentMemberId": "u",
        "parentMemberPubkey": "p",
        "sessionPubkey": "s",
        "parentAttestation": {
            "sessionPubkey": "s",
            "parentMemberPubkey": "p",
            "expiresAt": 1795738827449,
            "signature": "sig",
        },
    },
    "send": {
        "type": "send",
        "id": "496976ea78625ce3",
        "targetSpec": "*",
        "priority": "next",
        "nonce": "AAAA",
        "ciphertext": "aGk=",
    },
    "ack": {"type": "ack", "id": "496976ea78625ce3", "messageId": "GBGf", "queued": True},
    "error": {"type": "error", "code": "no_hello"},
    "push": {
        "type": "push",
        "messageId": "m1",
        "meshId": "m",
        "senderPubkey": "p",
        "priority": "now",
        "nonce": "AAAA",
        "ciphertext": "aGk=",
        "createdAt": "2026-11-27T00:20:21.345Z",
    },
    "set_status": {"type": "set_status", "status": "idle"},
    "set_summary": {"type": "set_summary", "summary": "reviewing"},
    "peers_list": {"type": "peers_list", "peers": []},
}

REQUIRED_FIELDS = [
    (frame_type, wire) for frame_type, frame in MINIMAL.items() for wire in frame if wire != "type"
]


def rejection(data: str | bytes | bytearray) -> str:
    with pytest.raises(RemoteProtocolError) as info:
        decode(data)
    return str(info.value)


def with_fields(frame_type: str, **changes: Any) -> str:
    frame = dict(MINIMAL[frame_type])
    frame.update(changes)
    return json.dumps(frame)


# --- round trips ---------------------------------------------------------------------


def test_every_known_frame_type_has_a_round_trip_strategy() -> None:
    assert set(FRAME_TYPES.values()) == set(FRAME_STRATEGIES)
    assert {cls.TYPE for cls in FRAME_STRATEGIES} == set(FRAME_TYPES)


@pytest.mark.parametrize("cls", list(FRAME_STRATEGIES), ids=lambda cls: cls.__name__)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_every_frame_round_trips_through_encode_and_decode(cls: type[Any], data: Any) -> None:
    frame = data.draw(FRAME_STRATEGIES[cls])

    text = encode(frame)

    assert isinstance(text, str)
    assert json.loads(text)["type"] == cls.TYPE
    assert decode(text) == frame


@pytest.mark.parametrize("cls", list(FRAME_STRATEGIES), ids=lambda cls: cls.__name__)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_a_decoded_frame_is_the_frame_its_constructor_makes(cls: type[Any], data: Any) -> None:
    frame = data.draw(FRAME_STRATEGIES[cls])
    made = cls(**{f.name: getattr(frame, f.name) for f in dataclasses.fields(frame)})

    decoded = decode(encode(frame))

    assert type(decoded) is cls
    assert (decoded, repr(decoded)) == (made, repr(made))
    name = dataclasses.fields(decoded)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(decoded, name, getattr(decoded, name))


@pytest.mark.parametrize("cls", list(FRAME_STRATEGIES), ids=lambda cls: cls.__name__)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_a_frame_text_made_from_its_fields_is_the_text_of_the_frame(
    cls: type[Any], data: Any
) -> None:
    frame = data.draw(FRAME_STRATEGIES[cls])
    values = {f.name: getattr(frame, f.name) for f in dataclasses.fields(frame)}

    assert frame_text(cls)(**values) == encode(frame)
    assert frame_text(cls)(*values.values()) == encode(frame)


@settings(max_examples=50, deadline=None)
@given(type_name=st.text(max_size=20), extra=json_objects)
def test_unknown_type_decodes_to_unknown_frame(type_name: str, extra: dict[str, Any]) -> None:
    if type_name in FRAME_TYPES:
        type_name += "_v2"
    obj = {**extra, "type": type_name}

    frame = decode(json.dumps(obj))

    assert isinstance(frame, UnknownFrame)
    assert frame.type == type_name
    assert dict(frame.fields) == obj


any_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(value=any_json)
def test_frames_are_written_as_compact_json_dumps_writes_them(value: Any) -> None:
    expected = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    assert compact_json(value) == expected


def _outcome(parse: Any, text: str) -> tuple[str, Any]:
    try:
        return "value", parse(text)
    except (ValueError, RecursionError) as exc:
        return "error", str(exc)


@given(
    text=st.text(max_size=60)
    | st.builds(json.dumps, any_json)
    | st.builds(
        lambda head, value, tail: head + json.dumps(value) + tail,
        st.sampled_from(["", " ", "\n", "{"]),
        json_objects,
        st.sampled_from(["", " ", "\t", "}", "x", "{}"]),
    )
)
def test_a_frame_parses_to_what_the_strict_decoder_makes_of_it(text: str) -> None:
    # The codec's fast path for an object with nothing around it must agree
    # with the decoder in every value and every error message.
    assert _outcome(codec._parse, text) == _outcome(codec._strict_loads, text)


def test_unknown_frame_is_kept_whole_through_encode() -> None:
    frame = decode('{"type": "topic_update", "topic": "t1", "members": [1, 2]}')
    again = decode(encode(frame))

    assert isinstance(again, UnknownFrame)
    assert again.type == "topic_update"
    assert again.fields["topic"] == "t1"
    assert again.fields["members"] == [1, 2]


@settings(max_examples=60, deadline=None)
@given(frame=any_frame, extra=json_objects)
def test_unknown_extra_fields_are_ignored(frame: Frame, extra: dict[str, Any]) -> None:
    obj = json.loads(encode(frame))
    for key, value in extra.items():
        obj.setdefault(f"x-future-{key}", value)

    assert decode(json.dumps(obj)) == frame


def test_unknown_nested_fields_are_ignored() -> None:
    text = json.dumps(
        {
            "type": "peers_list",
            "peers": [{"pubkey": "p", "groups": [{"name": "g", "since": 3}], "mood": "ok"}],
            "total": 1,
        }
    )
    assert decode(text) == PeersList((Peer("p", groups=(Group("g"),)),))


def test_optional_fields_set_to_none_are_left_out() -> None:
    text = encode(Hello("m", "u", "p", groups=(Group("devs"),)))

    assert json.loads(text) == {
        "type": "hello",
        "meshId": "m",
        "memberId": "u",
        "pubkey": "p",
        "groups": [{"name": "devs"}],
    }
    assert "null" not in text


@settings(max_examples=100, deadline=None)
@given(frame=any_frame)
def test_no_encoded_frame_carries_a_null_field(frame: Frame) -> None:
    obj = json.loads(encode(frame))
    nested = [
        item
        for key in ("groups", "peers")
        for item in (obj.get(key) or [])
        if isinstance(item, dict)
    ]
    nested += [g for peer in obj.get("peers", []) for g in (peer.get("groups") or [])]

    for o in (obj, *nested):
        assert None not in o.values(), o


def test_null_optional_field_decodes_as_absent() -> None:
    text = with_fields("ack", queued=False, messageId="", error=None)
    assert decode(text) == Ack("496976ea78625ce3", "", False, None)


# --- wire names: what the broker actually sends and expects -------------------------------


def test_send_is_encoded_with_the_wire_names_of_the_protocol() -> None:
    frame = Send("496976ea78625ce3", "*", "now", "AAAA", "aGk=", "496976ea78625ce3")
    assert json.loads(encode(frame)) == {
        "type": "send",
        "id": "496976ea78625ce3",
        "targetSpec": "*",
        "priority": "now",
        "nonce": "AAAA",
        "ciphertext": "aGk=",
        "client_message_id": "496976ea78625ce3",
    }


def test_client_requests_are_encoded_with_the_wire_names_of_the_protocol() -> None:
    assert json.loads(encode(ClientAck("c1", "m1"))) == {
        "type": "client_ack",
        "clientMessageId": "c1",
        "brokerMessageId": "m1",
    }
    assert json.loads(encode(ListPeers("req-1"))) == {"type": "list_peers", "_reqId": "req-1"}
    assert json.loads(encode(SetStatus("dnd"))) == {"type": "set_status", "status": "dnd"}


def test_hello_is_encoded_with_the_wire_names_of_the_protocol() -> None:
    frame = Hello(
        mesh_id="m",
        member_id="u",
        pubkey="p",
        session_id="s",
        pid=40065,
        cwd="/w",
        timestamp=1795738827449,
        signature="sig",
        session_pubkey="sp",
        display_name="d",
        hostname="h",
        peer_type="ai",
        groups=(Group("g", "lead"),),
    )
    assert json.loads(encode(frame)) == {
        "type": "hello",
        "meshId": "m",
        "memberId": "u",
        "pubkey": "p",
        "sessionId": "s",
        "pid": 40065,
        "cwd": "/w",
        "timestamp": 1795738827449,
        "signature": "sig",
        "sessionPubkey": "sp",
        "displayName": "d",
        "hostname": "h",
        "peerType": "ai",
        "groups": [{"name": "g", "role": "lead"}],
    }


def test_frames_recorded_from_the_real_broker_decode() -> None:
    # Verbatim (trimmed) from conformance/real-broker/*.jsonl.
    hello_ack = decode(
        '{"type": "hello_ack", "presenceId": "bhpa2oo4", "memberDisplayName": "peer-a", '
        '"memberProfile": {"roleTag": null, "groups": [], "messageMode": "push"}, '
        '"meshPolicy": {"selfEditable": {"groups": true}}, "restored": true, '
        '"lastSeenAt": "2026-11-27T00:20:27.421Z", "restoredStats": {"errors": 0}}'
    )
    nack = decode(
        '{"type": "ack", "id": "4c1406c4a2d82865", "messageId": "", "queued": false, '
        '"error": "no connected peer for target"}'
    )
    system = decode(
        '{"type": "push", "subtype": "system", "event": "peer_joined", "eventData": '
        '{"name": "c", "pubkey": "b33f", "groups": [{"name": "probe", "role": "lead"}]}, '
        '"messageId": "0a55c05e", "meshId": "Cop", "senderPubkey": "system", '
        '"priority": "low", "nonce": "", "ciphertext": "", '
        '"createdAt": "2026-11-27T00:20:21.345Z"}'
    )
    listed = decode(
        '{"type": "peers_list", "peers": [{"pubkey": "4892", "memberPubkey": "4892", '
        '"displayName": "peer-b", "status": "idle", "summary": null, "groups": '
        '[{"name": "probe", "role": "lead"}], "sessionId": "B", "connectedAt": "2026", '
        '"cwd": "/w/B", "peerRole": "control-plane", "visible": true}]}'
    )
    error = decode('{"type": "error", "code": "no_hello", "message": "must send hello first"}')

    assert hello_ack == HelloAck(
        "bhpa2oo4",
        "peer-a",
        True,
        {"roleTag": None, "groups": [], "messageMode": "push"},
        {"selfEditable": {"groups": True}},
    )
    assert nack == Ack("4c1406c4a2d82865", "", False, "no connected peer for target")
    assert isinstance(system, Push)
    assert (system.subtype, system.event, system.sender_pubkey) == (
        "system",
        "peer_joined",
        "system",
    )
    assert system.event_data is not None and system.event_data["name"] == "c"
    assert listed == PeersList(
        (
            Peer(
                "4892",
                "4892",
                "peer-b",
                "idle",
                None,
                (Group("probe", "lead"),),
                "B",
                "2026",
                "/w/B",
                "control-plane",
                True,
            ),
        )
    )
    assert error == ErrorFrame("no_hello", "must send hello first")


# --- malformed input ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["", "{", '{"type": "ack",}', "{'type': 'ack'}", '{"type": "ack"} trailing', "nul"],
)
def test_malformed_json_is_rejected(text: str) -> None:
    assert "malformed JSON" in rejection(text)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ('[{"type": "ack"}]', "array"),
        ('"ack"', "string"),
        ("42", "integer"),
        ("4.2", "number"),
        ("true", "boolean"),
        ("null", "null"),
    ],
)
def test_json_that_is_not_an_object_is_rejected(text: str, kind: str) -> None:
    message = rejection(text)
    assert "object" in message
    assert kind in message


def test_object_without_type_is_rejected() -> None:
    assert "'type'" in rejection('{"id": "496976ea78625ce3", "queued": true}')


def test_object_without_type_is_reported_as_missing_type() -> None:
    message = rejection('{"id": "496976ea78625ce3"}')
    assert "missing" in message
    assert "null" not in message


@pytest.mark.parametrize("value", [7, None, True, ["ack"], {"name": "ack"}])
def test_non_string_type_is_rejected(value: Any) -> None:
    message = rejection(json.dumps({"type": value}))
    assert "'type'" in message
    assert "string" in message


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (with_fields("ack", id=12), "id"),
        (with_fields("ack", queued="true"), "queued"),
        (with_fields("ack", queued=1), "queued"),
        (with_fields("ack", error=False), "error"),
        (with_fields("push", createdAt=1795738827449), "createdAt"),
        (with_fields("push", eventData=["peer_joined"]), "eventData"),
        (with_fields("hello", pid="40065"), "pid"),
        (with_fields("hello", pid=True), "pid"),
        (with_fields("hello", timestamp=1795738827.449), "timestamp"),
        (with_fields("hello", groups={"name": "g"}), "groups"),
        (with_fields("hello", groups=["g"]), "groups[0]"),
        (with_fields("hello", groups=[{"name": 1}]), "name"),
        (with_fields("session_hello", parentAttestation="sig"), "parentAttestation"),
        (
            with_fields(
                "session_hello",
                parentAttestation={
                    **MINIMAL["session_hello"]["parentAttestation"],
                    "expiresAt": "1",
                },
            ),
            "expiresAt",
        ),
        (with_fields("peers_list", peers={"p": {}}), "peers"),
        (with_fields("peers_list", peers=[{"pubkey": "p", "visible": "yes"}]), "visible"),
        (with_fields("error", code=None), "code"),
        (with_fields("set_status", status=["idle"]), "status"),
        ('{"type": "hello_ack", "memberProfile": []}', "memberProfile"),
        ('{"type": "list_peers", "_reqId": 5}', "_reqId"),
    ],
)
def test_field_of_the_wrong_type_is_rejected(text: str, field: str) -> None:
    message = rejection(text)
    assert f"'{field}'" in message
    assert "must be" in message


@pytest.mark.parametrize(("frame_type", "field"), REQUIRED_FIELDS)
def test_missing_required_field_is_rejected(frame_type: str, field: str) -> None:
    frame = dict(MINIMAL[frame_type])
    del frame[field]

    message = rejection(json.dumps(frame))

    assert "missing" in message
    assert f"'{field}'" in message


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('{"type": "peers_list", "peers": [{"displayName": "x"}]}', "pubkey"),
        (
            '{"type": "hello", "meshId": "m", "memberId": "u", "pubkey": "p", "groups": [{}]}',
            "name",
        ),
        (
            with_fields("session_hello", parentAttestation={"sessionPubkey": "s"}),
            "parentMemberPubkey",
        ),
    ],
)
def test_missing_required_nested_field_is_rejected(text: str, field: str) -> None:
    message = rejection(text)
    assert "missing" in message
    assert f"'{field}'" in message


def test_minimal_frames_used_above_are_valid() -> None:
    for frame_type, frame in MINIMAL.items():
        assert frame_type == type(decode(json.dumps(frame))).TYPE  # type: ignore[union-attr]


@pytest.mark.parametrize("data", [MINIMAL["ack"], b"", b"\xff\xfe"])
def test_bytes_input_is_rejected_as_binary(data: Any) -> None:
    raw = json.dumps(data).encode() if isinstance(data, dict) else data
    for payload in (raw, bytearray(raw)):
        message = rejection(payload)
        assert "binary" in message


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000,
        "[" * 100_000 + "]" * 100_000,
        '{"type": "push", "eventData": ' + '{"a": ' * 100_000,
        '{"type": "x", "a": ' + "[" * 100_000 + "]" * 100_000 + "}",
    ],
    ids=["open-arrays", "closed-arrays", "open-objects", "inside-unknown-frame"],
)
def test_deeply_nested_json_is_rejected_not_crashed(text: str) -> None:
    assert "JSON" in rejection(text)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=60) | st.builds(json.dumps, json_values))
def test_decode_of_any_text_returns_a_frame_or_raises_remote_protocol_error(text: str) -> None:
    try:
        decode(text)
    except RemoteProtocolError as exc:
        assert str(exc)


@settings(max_examples=60, deadline=None)
@given(
    frame_type=st.sampled_from(sorted(FRAME_TYPES)),
    fields=st.dictionaries(
        st.sampled_from(
            [
                *("id", "messageId", "queued", "error", "peers", "groups", "pid", "code"),
                *("_reqId", "meshId", "memberId", "pubkey", "parentAttestation", "eventData"),
                "status",
            ]
        ),
        json_values,
        max_size=6,
    ),
)
def test_decode_of_known_type_with_random_fields_never_raises_anything_else(
    frame_type: str, fields: dict[str, Any]
) -> None:
    try:
        frame = decode(json.dumps({**fields, "type": frame_type}))
    except RemoteProtocolError:
        return
    assert frame_type == type(frame).TYPE  # type: ignore[union-attr]


@pytest.mark.parametrize("thing", [Group("g"), Peer("p"), "hello", {"type": "ack"}, None])
def test_encoding_something_that_is_not_a_frame_is_a_local_error(thing: Any) -> None:
    with pytest.raises(LocalProtocolError):
        encode(thing)


# --- target specs --------------------------------------------------------------------

_PUBKEY_LIKE = st.one_of(
    st.text(alphabet="0123456789abcdefABCDEF \n\u0663g", min_size=62, max_size=66),
    st.text(max_size=70),
    st.sampled_from(["*", "@all", "@ops", "#topic", "a" * 64 + "\n", "\u0663" * 64]),
)


@given(_PUBKEY_LIKE)
def test_a_target_is_a_pubkey_exactly_when_it_is_64_lowercase_hex_digits(target: str) -> None:
    hex64 = re.fullmatch(r"[0-9a-f]{64}", target) is not None
    assert is_direct_target(target) == hex64
    if hex64:
        check_target(target)  # accepted without a word
    elif len(target) == 64 and re.fullmatch(r"[0-9a-fA-F]{64}", target):
        with pytest.raises(LocalProtocolError, match="lowercase hex"):
            check_target(target)
