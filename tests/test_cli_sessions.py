"""Which session each subcommand speaks as, and the folders that hold the keys.

``listen`` keeps one session across runs; ``send`` and ``peers`` use one-shot
sessions of their own, so they never take over a running ``listen`` (the
broker closes the older of two connections of one session for good) nor
each other. A session in use by a running command is locked.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshproto_cli._files import (
    FileProblem,
    JoinedMesh,
    load_joined_meshes,
    lock_session,
    make_private_dirs,
    merge_joined_mesh,
    save_joined_meshes,
    write_private_json,
)
from meshproto_cli._identity import ONE_SHOT_SLOTS, command_identity
from meshproto_crypto import KeyPair


def _record(mesh_id: str = "mesh-1", slug: str = "team") -> JoinedMesh:
    keys = KeyPair.generate()
    return JoinedMesh(
        mesh_id, "member-1", slug, slug.title(), keys.pubkey, keys.secret_key,
        "ws://127.0.0.1:7900/ws", "2026-12-01T00:00:00.000Z",
    )  # fmt: skip


@pytest.fixture
def config(tmp_path: Path) -> Path:
    save_joined_meshes(tmp_path / "cfg", [_record()])
    return tmp_path / "cfg"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_listen_keeps_one_session_across_runs(config: Path) -> None:
    with command_identity(config, None, command="listen") as first:
        pass
    with command_identity(config, None, command="listen") as second:
        pass
    assert first.session_name == second.session_name == "listen"
    assert first.session.pubkey == second.session.pubkey
    assert first.connect_kwargs()["session_id"] == "member-1:listen"


def test_send_and_peers_never_use_the_listen_session(config: Path) -> None:
    with (
        command_identity(config, None, command="listen") as listening,
        command_identity(config, None, command="send") as sending,
        command_identity(config, None, command="peers") as listing,
    ):
        keys = {listening.session.pubkey, sending.session.pubkey, listing.session.pubkey}
    assert len(keys) == 3
    assert sending.session_name == "oneshot" and listing.session_name == "oneshot-2"


def test_one_shot_sessions_are_reused_one_after_another(config: Path) -> None:
    with command_identity(config, None, command="send") as first:
        pass
    with command_identity(config, None, command="peers") as second:
        pass
    assert first.session.pubkey == second.session.pubkey  # one presence, reattached


def test_concurrent_sends_each_get_a_session_of_their_own(config: Path) -> None:
    held = []
    for _ in range(ONE_SHOT_SLOTS + 2):
        context = command_identity(config, None, command="send")
        held.append((context, context.__enter__()))
    try:
        names = [identity.session_name for _, identity in held]
        keys = {identity.session.pubkey for _, identity in held}
        assert len(keys) == len(held)
        assert names[:3] == ["oneshot", "oneshot-2", "oneshot-3"]
        assert all(name.startswith("oneshot-") for name in names[ONE_SHOT_SLOTS:])
        sessions = config / "meshproto-sessions" / "mesh-1"
        assert len(list(sessions.glob("oneshot*.json"))) == ONE_SHOT_SLOTS  # the rest not kept
    finally:
        for context, _ in reversed(held):
            context.__exit__(None, None, None)


def test_a_session_in_use_is_an_error_not_a_takeover(config: Path) -> None:
    held = rf"in use by another meshproto command.*pid {os.getpid()}"
    with command_identity(config, None, command="listen"):
        with (
            pytest.raises(FileProblem, match=held),
            command_identity(config, None, command="listen"),
        ):
            pass
        with (
            pytest.raises(FileProblem, match="in use"),
            command_identity(config, None, command="send", session="listen"),
        ):
            pass
    with command_identity(config, None, command="send", session="listen") as explicit:
        assert explicit.session_name == "listen"


def test_listen_may_not_take_a_one_shot_session_name(config: Path) -> None:
    with (
        pytest.raises(FileProblem, match="send's and peers'"),
        command_identity(config, None, command="listen", session="oneshot-2"),
    ):
        pass


def test_a_lock_is_released_when_its_command_ends(config: Path) -> None:
    lock = lock_session(config, "mesh-1", "x")
    assert not isinstance(lock, str)
    assert isinstance(lock_session(config, "mesh-1", "x"), str)
    lock.release()
    again = lock_session(config, "mesh-1", "x")
    assert not isinstance(again, str)
    again.release()


@pytest.fixture
def usual_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.usefixtures("usual_umask")
def test_every_folder_made_for_secrets_is_0700(tmp_path: Path) -> None:
    save_joined_meshes(tmp_path / "a" / "b" / "cfg", [_record()])
    for folder in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "cfg"):
        assert _mode(folder) == 0o700, folder
    config = tmp_path / "a" / "b" / "cfg"
    with command_identity(config, None, command="listen"):
        pass
    for folder in (config / "meshproto-sessions", config / "meshproto-sessions" / "mesh-1"):
        assert _mode(folder) == 0o700, folder
    assert _mode(config / "meshproto-sessions" / "mesh-1" / "listen.json") == 0o600
    existing = tmp_path / "shared"
    existing.mkdir(mode=0o755)
    write_private_json(existing / "k.json", {})
    assert _mode(existing) == 0o755  # a folder that was there is left alone
    make_private_dirs(existing)
    assert _mode(existing) == 0o755


def test_merging_a_mesh_keeps_the_other_meshes(tmp_path: Path) -> None:
    other, old = _record("other-mesh", "other"), _record("old-mesh", "local-mesh")
    save_joined_meshes(tmp_path, [other, old])
    new = _record("new-mesh", "local-mesh")
    merge_joined_mesh(tmp_path, new, replaces=frozenset({"old-mesh"}))
    assert [m.mesh_id for m in load_joined_meshes(tmp_path)] == ["other-mesh", "new-mesh"]
    with pytest.raises(FileProblem, match="already has a mesh called 'other'"):
        merge_joined_mesh(tmp_path, _record("third", "other"))
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(FileProblem, match="not valid JSON"):
        merge_joined_mesh(tmp_path, _record("fourth", "fourth"))
    assert (tmp_path / "config.json").read_text() == "{broken"  # left as it was
