"""What the network sends never takes a process down: the inputs that once did, over sockets.

A lone surrogate written as a JSON escape (``"\\ud800"``) is valid UTF-8 on the
wire and parses, but can never be written out again. Once it killed the
broker (through the hello's signed fields, an echoed id, a stored body) and
every client (through a pushed id or name). Each test here sends one such
frame over a real loopback socket and checks that the peer answers or drops
it as malformed, and that everything else goes on: the other sockets, the
next connection, the next message.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio_helpers import (
    FAST,
    WsPeer,
    answer_hello,
    eventually,
    fake_broker,
    hello_text,
    join,
    make_broker,
    signer,
)

from meshproto import Event, MalformedFrame, MessageReceived
from meshproto_anyio import running_broker
from meshproto_anyio.sqlite_store import SqliteStore

pytestmark = pytest.mark.anyio

BAD = "\\ud800"  # as it travels: six ASCII characters of JSON escape


def _with(frame: dict[str, Any], field: str, escaped: str = BAD) -> str:
    """``frame`` as JSON text, with ``field``'s string value replaced by a raw escape."""
    marker = "\u0001marker\u0001"
    return json.dumps({**frame, field: marker}).replace(json.dumps(marker), f'"{escaped}"')


def _hello(name: str, url: str) -> dict[str, Any]:
    hello: dict[str, Any] = json.loads(hello_text(name, url))
    hello["displayName"] = name
    return hello


HELLO_FIELDS = ("meshId", "memberId", "displayName", "sessionId", "cwd")


@pytest.mark.parametrize("field", HELLO_FIELDS)
async def test_broker_refuses_a_hello_with_a_lone_surrogate_and_keeps_serving(
    field: str,
) -> None:
    async with (
        running_broker(make_broker(), port=0) as server,
        join(server.url, "bystander") as bystander,
    ):
        await eventually(lambda: bystander.state == "open")
        hostile = await WsPeer.open(server.url)
        await hostile.send_text(_with(_hello("mallory", server.url), field))
        refusal = await hostile.next_frame()
        assert refusal["type"] == "error"
        assert refusal["code"] == "malformed"
        await hostile.aclose()

        # Everyone else is served as before, and so is the next connection.
        message_id = await bystander.send("*", "still here")
        assert message_id
        fresh = await WsPeer.open(server.url)
        await fresh.send_text(hello_text("fresh", server.url))
        assert (await fresh.next_frame())["type"] == "hello_ack"
        await fresh.aclose()


def _after_hello_frames(receiver_key: str) -> list[tuple[str, str]]:
    send = {
        "type": "send",
        "id": "s1",
        "targetSpec": receiver_key,
        "priority": "now",
        "nonce": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "ciphertext": "aGk=",
    }
    return [
        ("send id", _with(send, "id")),
        ("send ciphertext", _with(send, "ciphertext")),
        ("send nonce", _with(send, "nonce")),
        ("send client_message_id", _with(send, "client_message_id")),
        ("list_peers _reqId", _with({"type": "list_peers"}, "_reqId")),
        ("set_summary", _with({"type": "set_summary"}, "summary")),
        ("set_status", _with({"type": "set_status"}, "status")),
        ("client_ack", _with({"type": "client_ack"}, "brokerMessageId")),
        ("unknown frame", _with({"type": "whatever"}, "id")),
    ]


@pytest.mark.parametrize("store_kind", ["memory", "sqlite"])
async def test_broker_answers_every_hostile_frame_as_malformed_and_keeps_serving(
    store_kind: str, tmp_path: Path
) -> None:
    broker = make_broker("bob")
    if store_kind == "sqlite":
        broker.store = SqliteStore(str(tmp_path / "broker.db"))
    async with running_broker(broker, port=0) as server, join(server.url, "bob") as bob:
        await eventually(lambda: bob.state == "open")
        hostile = await WsPeer.open(server.url)
        await hostile.send_text(hello_text("mallory", server.url))
        assert (await hostile.next_frame())["type"] == "hello_ack"
        for name, text in _after_hello_frames(signer("bob").public_key):
            await hostile.send_text(text)
            answer = await hostile.next_frame()
            while answer.get("subtype") == "system":
                answer = await hostile.next_frame()
            assert answer["type"] == "error", name
            assert answer["code"] == "malformed", name
            assert answer.get("id") in (None, "s1"), name  # only a clean id is echoed
        # The hostile socket itself is still served, and so is bob.
        await hostile.send_json({"type": "list_peers", "_reqId": "r1"})
        answer = await hostile.next_frame()
        while answer.get("subtype") == "system":
            answer = await hostile.next_frame()
        assert answer["type"] == "peers_list"
        await hostile.aclose()
        assert await bob.send("*", "after the storm")


# --- clients ----------------------------------------------------------------------------


def _push(**fields: Any) -> dict[str, Any]:
    frame = {
        "type": "push",
        "messageId": "m-good",
        "meshId": "mesh-test",
        "senderPubkey": "ab" * 32,
        "priority": "now",
        "nonce": "",
        "ciphertext": "aGVsbG8=",
        "createdAt": "2026-12-01T00:00:00.000Z",
    }
    frame.update(fields)
    return frame


HOSTILE_PUSHES = (
    _with(_push(messageId="m1"), "messageId"),
    _with(_push(messageId="m2"), "client_message_id"),
    _with(_push(messageId="m3"), "senderName"),
    json.dumps(_push(messageId="m4", subtype="system", event="peer_joined", senderPubkey="system"))[
        :-1
    ]
    + ', "eventData": {"name": "\\ud800", "pubkey": "cd"}}',
    _with(_push(messageId="m5"), "ciphertext"),
    json.dumps(_push(messageId="m6")).replace('"priority"', '"\\udfff": 1, "priority"'),
)


async def _hostile_then_good(peer: WsPeer) -> None:
    await answer_hello(peer)
    for text in HOSTILE_PUSHES:
        await peer.send_text(text)
    await peer.send_json(_push())
    while True:  # keep the socket open; answer what comes
        await peer.next_frame(timeout=60)


async def test_anyio_client_survives_pushes_that_once_killed_it() -> None:
    events: list[Event] = []
    async with (
        fake_broker(_hostile_then_good) as (url, _),
        join(url, "victim", events=events) as client,
    ):
        with anyio.fail_after(5):
            async for message in client.messages():
                assert isinstance(message, MessageReceived)
                assert message.message_id == "m-good"
                break
        malformed = [e for e in events if isinstance(e, MalformedFrame)]
        assert len(malformed) == len(HOSTILE_PUSHES)
        assert client.state == "open"


def test_sync_client_survives_pushes_that_once_killed_it() -> None:
    from anyio.from_thread import start_blocking_portal  # noqa: PLC0415
    from sync_helpers import in_portal  # noqa: PLC0415
    from sync_helpers import join as sync_join  # noqa: PLC0415

    events: list[Event] = []
    with (
        start_blocking_portal() as portal,
        in_portal(portal, fake_broker(_hostile_then_good)) as (url, _),
        sync_join(url, "victim", events=events) as client,
    ):
        message = client.receive(timeout=5)
        assert isinstance(message, MessageReceived)
        assert message.message_id == "m-good"
        assert client.state == "open"
        assert any(isinstance(e, MalformedFrame) for e in events)


def test_hostile_pushes_list_is_what_it_claims() -> None:
    for text in HOSTILE_PUSHES:
        assert "\\ud800" in text or "\\udfff" in text
    assert FAST.inbox_limit > 0


# --- the command ------------------------------------------------------------------------


async def _any_hello_then_hostile(peer: WsPeer) -> None:
    hello = await peer.next_frame()
    assert hello["type"] in ("hello", "session_hello")
    await peer.send_json({"type": "hello_ack", "presenceId": "p-cli"})
    for text in HOSTILE_PUSHES:
        await peer.send_text(text)
    await peer.send_text(
        json.dumps(_push(senderName="peer"))[:-1] + ', "displayName": "\\ud800x"}'
    )  # an unknown field: the whole frame is malformed
    await peer.send_json(_push(messageId="m-after", senderName="peer"))
    while True:
        await peer.next_frame(timeout=60)


def test_listen_survives_pushes_that_once_killed_it(tmp_path: Path) -> None:
    import os  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from anyio.from_thread import start_blocking_portal  # noqa: PLC0415
    from sync_helpers import in_portal  # noqa: PLC0415

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "meshproto_cli", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "CLAUDEMESH_CONFIG_DIR": str(tmp_path / "mesh" / "bob")},
        )

    made = cli("mesh", "init", "--members", "alice,bob", "--dir", str(tmp_path / "mesh"))
    assert made.returncode == 0, made.stderr
    with (
        start_blocking_portal() as portal,
        in_portal(portal, fake_broker(_any_hello_then_hostile)) as (url, _),
    ):
        result = cli("listen", "--url", url, "--count", "1", "--timeout", "20")
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert "hello" in result.stdout
    assert result.stdout.count("\n") == 1  # m-after: every hostile push was dropped
