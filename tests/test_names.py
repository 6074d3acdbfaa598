"""Resolving what a person types into a target: specs as they are, names to live sessions."""

from __future__ import annotations

import pytest

from meshproto import Peer
from meshproto_cli._names import AmbiguousName, NoSuchPeer, is_one_shot_session, resolve_target

ALICE, BOB, CAROL = "a" * 64, "b" * 64, "c" * 64


def peer(key: str, member: str, name: str, at: str, online: bool | None = True) -> Peer:
    return Peer(key, member_pubkey=member, display_name=name, connected_at=at, online=online)


@pytest.mark.parametrize("spec", ["*", "@all", "@ops", "#topic", BOB])
def test_a_target_spec_is_used_as_it_is(spec: str) -> None:
    assert resolve_target(spec, [], own_keys=()).target == spec


def test_a_name_resolves_to_the_session_key_not_the_member_key() -> None:
    peers = [peer("1" * 64, BOB, "bob", "2026-12-01T10:00:00.000Z")]
    resolution = resolve_target("bob", peers, own_keys=())
    assert resolution.target == "1" * 64
    assert resolution.note is None


def test_a_session_waiting_out_its_grace_window_is_never_chosen() -> None:
    peers = [
        peer("1" * 64, BOB, "bob", "2026-12-01T10:00:00.000Z"),
        peer("2" * 64, BOB, "bob", "2026-12-01T10:05:00.000Z", online=False),  # a finished send
    ]
    assert resolve_target("bob", peers, own_keys=()).target == "1" * 64


def test_a_name_whose_only_sessions_are_closing_is_not_online() -> None:
    peers = [peer("2" * 64, BOB, "bob", "2026-12-01T10:05:00.000Z", online=False)]
    with pytest.raises(NoSuchPeer, match="not online"):
        resolve_target("bob", peers, own_keys=())


def test_the_callers_own_session_is_never_a_candidate() -> None:
    own = "9" * 64
    peers = [peer(own, ALICE, "alice", "2026-12-01T10:00:00.000Z")]
    with pytest.raises(NoSuchPeer):
        resolve_target("alice", peers, own_keys=(own, ALICE))


def test_two_members_with_one_name_are_ambiguous() -> None:
    peers = [
        peer("1" * 64, BOB, "bob", "2026-12-01T10:00:00.000Z"),
        peer("3" * 64, CAROL, "bob", "2026-12-01T10:00:00.000Z"),
    ]
    with pytest.raises(AmbiguousName, match="use a pubkey"):
        resolve_target("bob", peers, own_keys=())


def test_several_live_sessions_of_one_member_go_to_the_most_recent_and_say_so() -> None:
    peers = [
        peer("1" * 64, BOB, "bob", "2026-12-01T10:00:00.000Z"),
        peer("2" * 64, BOB, "bob", "2026-12-01T11:00:00.000Z"),
    ]
    resolution = resolve_target("bob", peers, own_keys=())
    assert resolution.target == "2" * 64
    assert resolution.note is not None and "2 sessions online" in resolution.note


def test_without_liveness_from_the_broker_the_most_recent_session_is_chosen() -> None:
    peers = [
        peer("1" * 64, BOB, "bob", "2026-12-01T10:00:00.000Z", online=None),
        peer("2" * 64, BOB, "bob", "2026-12-01T11:00:00.000Z", online=None),
    ]
    resolution = resolve_target("bob", peers, own_keys=())
    assert resolution.target == "2" * 64
    assert resolution.note is not None and "does not say" in resolution.note


def test_an_unknown_name_lists_who_is_online() -> None:
    peers = [peer("1" * 64, BOB, "bob", "2026-12-01T10:00:00.000Z")]
    with pytest.raises(NoSuchPeer, match="'bob'"):
        resolve_target("dave", peers, own_keys=())


def test_a_one_shot_send_or_peers_session_is_never_chosen() -> None:
    # bob's `meshproto send` is running (online) and newer than bob's listen:
    # it takes no messages, so a message to its key would wait forever.
    peers = [
        Peer("1" * 64, BOB, "bob", connected_at="2026-12-01T10:00:00.000Z", session_id="m:listen"),
        Peer("2" * 64, BOB, "bob", connected_at="2026-12-01T10:05:00.000Z", session_id="m:oneshot"),
        Peer(
            "3" * 64, BOB, "bob", connected_at="2026-12-01T10:06:00.000Z", session_id="m:oneshot-3"
        ),
    ]
    resolution = resolve_target("bob", peers, own_keys=())
    assert resolution.target == "1" * 64
    assert resolution.note is None


def test_a_name_with_only_one_shot_sessions_says_so() -> None:
    peers = [Peer("2" * 64, BOB, "bob", session_id="m:oneshot", online=True)]
    with pytest.raises(NoSuchPeer, match="no session that takes messages"):
        resolve_target("bob", peers, own_keys=())


@pytest.mark.parametrize(
    ("session_id", "one_shot"),
    [
        ("member:oneshot", True),
        ("member:oneshot-2", True),
        ("member:oneshot-5f3a9c01", True),
        ("member:listen", False),
        ("member:oneshotter", False),
        ("member:my-oneshot", False),
        (None, False),
    ],
)
def test_one_shot_session_ids(session_id: str | None, one_shot: bool) -> None:
    assert is_one_shot_session(session_id) is one_shot
