"""The connection-state lines, the listen lines and the peers table, from events and frames.

These run in-process: ``ConnectionReporter`` is fed the client's events as
``connect(on_event=...)`` would, and the formats are given what ``listen``
and ``peers`` receive.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from meshproto import (
    Closed,
    ConnectionState,
    Group,
    HandshakeComplete,
    HelloAck,
    MessageReceived,
    Peer,
    Push,
    ReconnectScheduled,
    StateChanged,
    SystemMessage,
    UnreadableMessage,
)
from meshproto_cli._formats import MessageFormat, peer_record, peer_table
from meshproto_cli._output import Style
from meshproto_cli._roster import Roster
from meshproto_cli._status import ConnectionReporter, describe_cause, describe_refusal

URL = "ws://127.0.0.1:7900/ws"
IDLE, CONNECTING, OPEN, RECONNECTING = (
    ConnectionState.IDLE,
    ConnectionState.CONNECTING,
    ConnectionState.OPEN,
    ConnectionState.RECONNECTING,
)
REFUSED = f"transport closed (1006 could not connect to {URL}: Connection refused)"
ALICE, ALICE_MEMBER, BOB = "a1" * 32, "a0" * 32, "b1" * 32


def _reporter(**options: object) -> tuple[ConnectionReporter, list[str]]:
    lines: list[str] = []
    reporter = ConnectionReporter(URL, write=lines.append, name="bob", key=BOB, **options)  # type: ignore[arg-type]
    return reporter, lines


def _attempt_fails(reporter: ConnectionReporter, attempt: int, cause: str = REFUSED) -> None:
    reporter.on_event(StateChanged(RECONNECTING if attempt > 1 else IDLE, CONNECTING))
    reporter.on_event(StateChanged(CONNECTING, RECONNECTING))
    reporter.on_event(ReconnectScheduled(10.0, 0.25, attempt, cause))


def _connects(reporter: ConnectionReporter) -> None:
    reporter.on_event(StateChanged(RECONNECTING, CONNECTING))
    reporter.on_event(StateChanged(CONNECTING, ConnectionState.HANDSHAKING))
    reporter.on_event(StateChanged(ConnectionState.HANDSHAKING, OPEN))
    reporter.on_event(HandshakeComplete(HelloAck(presence_id="p1", member_display_name="bob")))


def test_one_line_per_change_not_per_attempt() -> None:
    reporter, lines = _reporter(suffix="listening (Ctrl-C to stop)")
    for attempt in (1, 2, 3):
        _attempt_fails(reporter, attempt)
    _connects(reporter)
    reporter.on_event(StateChanged(OPEN, RECONNECTING))
    reporter.on_event(
        ReconnectScheduled(20.0, 0.5, 1, "transport closed (1001 broker shutting down)")
    )
    _connects(reporter)
    assert lines == [
        f"connecting to {URL}",
        f"could not connect to {URL}: Connection refused; retrying in 0.2 s",
        f"connected as bob ({BOB[:16]}); listening (Ctrl-C to stop)",
        "connection lost: the broker went away (1001 broker shutting down); reconnecting in 0.5 s",
        f"connected as bob ({BOB[:16]})",
    ]
    assert reporter.last_cause is None and reporter.connections == 2


def test_a_one_shot_command_speaks_only_of_problems_and_their_end() -> None:
    reporter, lines = _reporter(announce=False)
    _connects(reporter)
    assert lines == []
    reporter, lines = _reporter(announce=False)
    _attempt_fails(reporter, 1)
    _connects(reporter)
    assert lines == [
        f"could not connect to {URL}: Connection refused; retrying in 0.2 s",
        f"connected as bob ({BOB[:16]})",
    ]


def test_a_second_without_a_connection_or_a_reason_is_said() -> None:
    reporter, lines = _reporter()
    reporter.on_event(StateChanged(IDLE, CONNECTING))
    reporter.still_connecting()  # a broker that accepted the socket and says nothing
    assert lines == [f"connecting to {URL}", f"still connecting to {URL} …"]


def test_quiet_says_nothing_and_verbose_says_every_attempt() -> None:
    quiet, quiet_lines = _reporter(verbosity=0)
    verbose, verbose_lines = _reporter(verbosity=2, announce=False)
    for reporter in (quiet, verbose):
        for attempt in (1, 2):
            _attempt_fails(reporter, attempt)
        reporter.still_connecting()
    assert quiet_lines == []
    assert verbose_lines[0] == f"connecting to {URL}"
    assert sum("(attempt " in line for line in verbose_lines) == 2
    assert quiet.last_cause == f"could not connect to {URL}: Connection refused"


def test_a_timeout_reports_the_last_cause() -> None:
    reporter, _ = _reporter()
    _attempt_fails(reporter, 1)
    _attempt_fails(reporter, 2, "hello refused: timestamp_skew")
    assert reporter.timeout_message(20, "the peer list") == (
        "timed out after 20 s without reaching the broker: the broker refused the hello for "
        "now: timestamp_skew (this machine's clock and the broker's are more than 60 s apart)"
    )
    _connects(reporter)
    assert reporter.timeout_message(2.5, "the broker's ack") == (
        "timed out after 2.5 s waiting for the broker's ack"
    )


@pytest.mark.parametrize(
    ("cause", "said"),
    [
        ("transport closed (1006 )", "the connection dropped"),
        ("transport closed (1000 bye)", "the broker closed the connection (1000 bye)"),
        ("no hello_ack in time", "the broker did not answer the hello in time"),
        (
            f"transport closed (1006 could not connect to {URL}: [SSL: "
            "CERTIFICATE_VERIFY_FAILED] certificate verify failed)",
            f"could not connect to {URL}: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify "
            "failed (--cafile names the CA that signed the broker's certificate)",
        ),
        ("something new", "something new"),
    ],
)
def test_causes_in_words(cause: str, said: str) -> None:
    assert describe_cause(cause) == said


@pytest.mark.parametrize(
    ("closed", "line"),
    [
        (
            Closed('broker refused the hello: revoked: You\'ve been removed from "m".', None),
            "refused by the broker (revoked: this member was removed from the mesh): "
            'You\'ve been removed from "m".',
        ),
        (
            Closed("broker refused: session_replaced", 1000),
            "refused by the broker (session_replaced, close 1000: another process or machine "
            "connected with the same session; give each one its own --session)",
        ),
        (
            Closed("broker refused: banned", 4002),
            "refused by the broker (banned, close 4002: this member was removed from the mesh)",
        ),
        (
            Closed("broker refused the hello: unauthorized: \x1b[2Jno", None),
            "refused by the broker (unauthorized: the broker does not know this member: check "
            "--url and --mesh): \\x1b[2Jno",
        ),
    ],
)
def test_refusals_in_one_line_with_what_to_do(closed: Closed, line: str) -> None:
    assert describe_refusal(closed) == line


# --- listen's lines ------------------------------------------------------------------------


@pytest.fixture
def utc() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TZ", "UTC")
        time.tzset()
        yield
    time.tzset()


def _push(**fields: object) -> Push:
    base: dict[str, object] = {
        "message_id": "m" * 32,
        "mesh_id": "mesh-1",
        "sender_pubkey": ALICE,
        "priority": "now",
        "nonce": "",
        "ciphertext": "",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
    }
    return Push(**{**base, **fields})  # type: ignore[arg-type]


def _received(push: Push, text: str) -> MessageReceived:
    return MessageReceived(
        push.message_id,
        None,
        push.sender_pubkey,
        push.priority,
        text.encode(),
        push.created_at,
        push,
    )


@pytest.mark.usefixtures("utc")
def test_listen_lines_name_the_sender_and_mark_now() -> None:
    roster = Roster()
    roster.update([Peer(ALICE, ALICE_MEMBER, "alice")])
    formats = MessageFormat("team", "mesh-1", roster, Style(False))
    line = formats.line(_received(_push(), "hello\x1b[2J"))
    assert line.split(" ", 1)[1] == "[team] alice (now!): hello\\x1b[2J"
    stranger = formats.line(_received(_push(sender_pubkey="c" * 64, priority="low"), "hi"))
    assert stranger.split(" ", 1)[1] == f"[team] {'c' * 12} (low): hi"
    broadcast = _push(sender_member_pubkey=ALICE_MEMBER, sender_name="\x1b]0;x\x07al", topic="ci")
    assert formats.line(_received(broadcast, "done")).endswith(
        "] \\x1b]0;x\\x07al #ci (now!): done"
    )
    unreadable = UnreadableMessage("u" * 32, ALICE, "bad box", _push())
    assert formats.line(unreadable).endswith("] alice: [unreadable: bad box]")
    record = formats.record(_received(_push(), "hello"))
    assert record["senderName"] == "alice" and record["direct"] is True
    assert record["type"] == "message" and record["mesh"] == "team" and record["text"] == "hello"


@pytest.mark.usefixtures("utc")
def test_the_roster_follows_joins_and_leaves_and_colour_is_only_on_request() -> None:
    roster = Roster()
    formats = MessageFormat("team", "mesh-1", roster, Style(True))
    joined = SystemMessage(
        "peer_joined", {"name": "carol", "pubkey": "c" * 64}, "s1", _push(subtype="system")
    )
    roster.note(joined)
    assert roster.name_of("c" * 64) == "carol"
    line = formats.system_line(joined)
    assert line.startswith("\x1b[2m") and line.endswith("· carol joined\x1b[0m")
    left = SystemMessage("peer_left", {"name": "carol", "pubkey": "c" * 64}, "s2", _push())
    roster.note(left)
    assert roster.name_of("c" * 64) == "carol"  # a peer that left keeps its name
    coloured = formats.line(_received(_push(sender_pubkey="c" * 64), "hi"))
    assert "\x1b[1mcarol\x1b[0m" in coloured and "\x1b[1;31mnow!\x1b[0m" in coloured


def test_the_peers_table_has_a_header_and_marks_you_and_closed_sessions() -> None:
    peers = [
        Peer(ALICE, ALICE_MEMBER, "alice", "idle", groups=(Group("ops"),), online=True),
        Peer(BOB, "b0" * 32, "bob", "working", "fixing \x1b[31mCI", online=False),
        Peer("c" * 64, "c0" * 32, "carol", "dnd"),  # a broker that does not say
    ]
    lines = peer_table(peers, own_key=ALICE, style=Style(False))
    assert lines[0].split() == ["KEY", "NAME", "STATUS", "ONLINE", "GROUPS", "SUMMARY"]
    assert lines[1].split() == [ALICE[:16], "alice", "(you)", "idle", "yes", "ops"]
    assert lines[2].split()[2:5] == ["working", "no", "-"]
    assert lines[2].endswith("fixing \\x1b[31mCI")
    assert lines[3].split()[3] == "?"
    record = peer_record(peers[0], (ALICE,))
    assert record["self"] is True and record["groups"] == ["ops"] and record["type"] == "peer"
