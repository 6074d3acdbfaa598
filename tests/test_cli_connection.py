"""``send``, ``listen`` and ``peers`` as a person or a script sees them: subprocesses on loopback.

What the connection does is on stderr, one line per change; what the command
got is on stdout; the exit status says how it ended. Every broker binds
127.0.0.1, a client that must reconnect does so within 0.2 s (``--retry-max``),
and every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from anyio.from_thread import start_blocking_portal
from anyio_helpers import WsPeer, fake_broker
from cli_helpers import (
    FAST,
    TIMEOUT,
    BrokerProcess,
    Running,
    environment,
    json_lines,
    make_mesh,
    member,
    run_cli,
)

from meshproto_cli._files import JoinedMesh, load_joined_meshes, save_joined_meshes
from meshproto_crypto import KeyPair

CONNECTED = r"^connected as "


@pytest.fixture
def mesh(tmp_path: Path) -> Path:
    return make_mesh(tmp_path, "alice,bob")


@pytest.fixture
def broker(tmp_path: Path, mesh: Path) -> Iterator[BrokerProcess]:
    process = BrokerProcess(
        tmp_path, "--mesh", str(mesh / "members.json"), "--db", str(tmp_path / "broker.db")
    )
    process.start()
    try:
        yield process
    finally:
        process.kill()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("meshproto: error: ")]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr
    return errors[0]


# --- 1. listen says why it was stopped for good, and exits 1 ---------------------------


def test_listen_reports_an_unknown_member_and_exits_1(
    tmp_path: Path, mesh: Path, broker: BrokerProcess
) -> None:
    real = load_joined_meshes(mesh / "alice")[0]
    stranger = KeyPair.generate()  # a key the members file does not have
    record = JoinedMesh(
        real.mesh_id, "stranger", real.slug, real.name, stranger.pubkey, stranger.secret_key,
        broker.url, real.joined_at,
    )  # fmt: skip
    save_joined_meshes(tmp_path / "stranger", [record])
    result = run_cli("listen", "--config-dir", str(tmp_path / "stranger"), "--timeout", "10")
    assert result.returncode == 1, result
    line = _error_line(result.stderr)
    assert "refused by the broker (unauthorized" in line
    assert "the broker does not know this member" in line


def test_listen_taken_over_by_another_process_reports_it_and_exits_1(
    tmp_path: Path, mesh: Path, broker: BrokerProcess
) -> None:
    with Running("listen", *member(mesh, "bob", broker.url)) as first:
        first.err.wait_for(CONNECTED)
        # The same session key from another machine (a copy of bob's config dir).
        shutil.copytree(mesh / "bob", tmp_path / "bob-elsewhere")
        with Running("listen", *member(tmp_path, "bob-elsewhere", broker.url)) as second:
            second.err.wait_for(CONNECTED)
            assert first.wait() == 1
            second.signal(signal.SIGINT)
            assert second.wait() == 130
    line = _error_line(first.err.text())
    assert "refused by the broker (session_replaced, close 1000" in line
    assert "give each one its own --session" in line


# --- 3. one-shot commands neither take over nor shadow a running listen ----------------


def test_send_and_peers_do_not_take_over_or_shadow_a_running_listen(
    mesh: Path, broker: BrokerProcess
) -> None:
    url = broker.url
    with Running("listen", "--count", "3", "--json", *member(mesh, "alice", url)) as listener:
        listener.err.wait_for(CONNECTED)
        # alice's own one-shot commands, from the same config dir, while she listens ...
        assert run_cli("send", "*", "to everyone", *member(mesh, "alice", url)).returncode == 0
        assert run_cli("peers", *member(mesh, "alice", url)).returncode == 0
        assert run_cli("send", "*", "again", *member(mesh, "alice", url)).returncode == 0
        # ... leave her listen running, and a name still means her listening session.
        sent = run_cli("send", "alice", "still there?", *member(mesh, "bob", url))
        assert sent.returncode == 0, sent.stderr
        assert listener.wait() == 0, listener.err.text()
    # (Her other sessions' broadcasts reach her listen too: only the sending socket is skipped.)
    messages = json_lines(listener.out.text())
    assert [m["text"] for m in messages] == ["to everyone", "again", "still there?"]
    assert messages[-1]["senderName"] == "bob" and messages[-1]["direct"] is True
    assert "session_replaced" not in listener.err.text()


# --- 5. the connection's state, one line per change ------------------------------------


def test_send_to_a_broker_that_is_down_says_connection_refused_within_a_second(
    mesh: Path,
) -> None:
    url = f"ws://127.0.0.1:{_free_port()}/ws"
    started = time.monotonic()
    with Running("send", "*", "hi", "--timeout", "2", *member(mesh, "alice", url)) as send:
        first = send.err.wait_for(r"Connection refused", timeout=5)
        noticed = time.monotonic() - started
        status = send.wait()
    assert noticed < 1.5, noticed  # the interpreter's start included
    assert first.startswith(f"could not connect to {url}: Connection refused; retrying in ")
    assert status == 124
    lines = send.err.text().splitlines()
    assert len(lines) == 2, lines  # one line per change: the cause did not change
    assert lines[-1] == (
        f"meshproto: error: timed out after 2 s without reaching the broker: could not "
        f"connect to {url}: Connection refused; nothing was sent"
    )


@pytest.mark.parametrize(
    ("flags", "problem_lines"),
    [((), 1), (("-v",), None), (("--quiet",), 0)],
    ids=["default", "verbose", "quiet"],
)
def test_verbose_adds_every_attempt_and_quiet_leaves_only_the_error(
    mesh: Path, flags: tuple[str, ...], problem_lines: int | None
) -> None:
    url = f"ws://127.0.0.1:{_free_port()}/ws"
    result = run_cli("peers", *flags, "--timeout", "1", *member(mesh, "alice", url, *FAST))
    assert result.returncode == 124
    lines = result.stderr.splitlines()
    assert lines[-1].startswith("meshproto: error: timed out after 1 s without reaching")
    problems = [line for line in lines[:-1] if "Connection refused" in line]
    if problem_lines is None:
        assert len(problems) >= 3, lines
        assert all("(attempt " in line for line in problems)
        assert any(line == f"connecting to {url}" for line in lines)
    else:
        assert len(lines) == problem_lines + 1, lines


def test_a_certificate_the_client_does_not_trust_is_shown_as_the_cause(
    tmp_path: Path, mesh: Path
) -> None:
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    cert, key, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    broker = BrokerProcess(
        tmp_path, "--mesh", str(mesh / "members.json"), "--tls-cert", str(cert),
        "--tls-key", str(key),
    )  # fmt: skip
    broker.start()
    try:
        url = broker.url.replace("ws://", "wss://")
        untrusted = run_cli("peers", "--timeout", "1.5", *member(mesh, "alice", url))
        trusted = run_cli("peers", "--cafile", str(ca_file), *member(mesh, "alice", url))
    finally:
        broker.kill()
    assert untrusted.returncode == 124
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr.splitlines()[0]
    assert "--cafile" in untrusted.stderr.splitlines()[0]
    assert "CERTIFICATE_VERIFY_FAILED" in _error_line(untrusted.stderr)  # the last cause
    assert trusted.returncode == 0, trusted.stderr
    assert "alice (you)" in trusted.stdout


# --- 6, 7 and 8: what listen and peers show, send from stdin, JSON, exit codes ---------


def _rename(mesh: Path, name: str, new_name: str) -> None:
    """Give member ``name`` the display name ``new_name`` in the members file."""
    members_path = mesh / "members.json"
    data = json.loads(members_path.read_text(encoding="utf-8"))
    for row in data["members"]:
        if row["displayName"] == name:
            row["displayName"] = new_name
    members_path.write_text(json.dumps(data), encoding="utf-8")


def test_listen_names_senders_and_shows_hostile_text_inert(
    mesh: Path, broker: BrokerProcess
) -> None:
    url = broker.url
    with (
        Running("listen", "--count", "3", *member(mesh, "bob", url)) as text,
        Running(
            "listen", "--count", "3", "--json", "--session", "script", *member(mesh, "bob", url)
        ) as script,
    ):
        connected = text.err.wait_for(CONNECTED)
        script.err.wait_for(CONNECTED)
        bob_member = json.loads((mesh / "members.json").read_text())["members"][1]["pubkey"]
        sends = [  # a member key reaches every session of the member
            run_cli(
                "send", bob_member, "-", "-p", "now", *member(mesh, "alice", url),
                input="two\nlines\n",
            ),
            run_cli("send", "*", "\x1b[2Jcleared?", *member(mesh, "alice", url)),
        ]  # fmt: skip
        # The command announces no such --name (bad usage), but another client, or a
        # members file, can: the broker rereads it at the next hello.
        _rename(mesh, "alice", "\x1b]0;pwned\x07eve")
        sends.append(run_cli("send", "*", "from a stranger", *member(mesh, "alice", url)))
        assert [s.returncode for s in sends] == [0, 0, 0], [s.stderr for s in sends]
        assert text.wait() == 0 and script.wait() == 0
        listed = run_cli("peers", *member(mesh, "alice", url))
    # The key bob announces is the key alice's peers list shows for his listen.
    bob_key = re.search(r"connected as bob \(([0-9a-f]{16})\)", connected)
    assert bob_key, connected
    assert any(line.startswith(bob_key.group(1)) for line in listed.stdout.splitlines())
    out = text.out.text()
    assert "\x1b" not in out and "\x07" not in out + listed.stdout
    lines = out.splitlines()
    assert re.fullmatch(r"\d\d:\d\d:\d\d \[local-mesh\] alice \(now!\): two\\nlines", lines[0])
    assert lines[1].endswith("] alice (next): \\x1b[2Jcleared?")
    assert lines[2].endswith("] \\x1b]0;pwned\\x07eve (next): from a stranger")
    direct, broadcast, _ = json_lines(script.out.text())
    assert direct["type"] == "message" and direct["direct"] is True
    assert direct["senderName"] == "alice" and direct["text"] == "two\nlines"
    assert direct["priority"] == "now" and direct["mesh"] == "local-mesh"
    assert broadcast["text"] == "\x1b[2Jcleared?" and broadcast["direct"] is False


def test_send_json_reports_success_and_failure_as_one_object(
    mesh: Path, broker: BrokerProcess
) -> None:
    url = broker.url
    bob_key = json.loads((mesh / "members.json").read_text())["members"][1]["pubkey"]
    sent = run_cli("send", bob_key, "stored for bob", "--json", *member(mesh, "alice", url))
    assert sent.returncode == 0, sent.stderr
    (record,) = json_lines(sent.stdout)
    assert record["type"] == "sent" and re.fullmatch(r"\w{32}", record["messageId"])
    assert record["targetSpec"] == bob_key and record["priority"] == "next"
    assert re.fullmatch(r"[0-9a-f]{16}", record["clientMessageId"])
    nobody = run_cli("send", "nobody", "hi", "--json", *member(mesh, "alice", url))
    assert nobody.returncode == 1
    (error,) = json_lines(nobody.stdout)
    assert error["type"] == "error" and error["error"] == "no_such_peer" and error["status"] == 1
    assert _error_line(nobody.stderr) == f"meshproto: error: {error['message']}"
    empty = run_cli("send", "*", "-", *member(mesh, "alice", url), input="")
    assert empty.returncode == 1 and "stdin was empty" in _error_line(empty.stderr)


def test_peers_has_a_header_and_marks_the_caller_and_closed_sessions(
    mesh: Path, broker: BrokerProcess
) -> None:
    url = broker.url
    assert run_cli("peers", *member(mesh, "bob", url)).returncode == 0  # leaves a closed session
    result = run_cli("peers", *member(mesh, "alice", url))
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["KEY", "NAME", "STATUS", "ONLINE", "GROUPS", "SUMMARY"]
    by_name = {row.split()[1]: row.split() for row in rows}
    assert by_name["alice"][2] == "(you)" and by_name["alice"][4] == "yes"
    assert by_name["bob"][3] == "no"  # closed, listed for its grace window
    records = json_lines(run_cli("peers", "--json", *member(mesh, "alice", url)).stdout)
    assert {(r["displayName"], r["self"], r["online"]) for r in records} == {
        ("alice", True, True),
        ("bob", False, False),
    }
    assert all(r["type"] == "peer" for r in records)


def test_listen_that_gets_nothing_in_time_exits_124(mesh: Path, broker: BrokerProcess) -> None:
    result = run_cli("listen", "--count", "1", "--timeout", "1", *member(mesh, "bob", broker.url))
    assert result.returncode == 124
    assert _error_line(result.stderr) == ("meshproto: error: 0 of 1 messages within --timeout 1 s")
    nothing = run_cli("listen", "--timeout", "0.5", "--json", *member(mesh, "bob", broker.url))
    assert nothing.returncode == 124
    (record,) = json_lines(nothing.stdout)
    assert record["error"] == "timeout" and record["status"] == 124


def test_sigterm_stops_listen_with_143_and_ctrl_c_with_130(
    mesh: Path, broker: BrokerProcess
) -> None:
    for signum, status, word in (
        (signal.SIGTERM, 143, "terminated"),
        (signal.SIGINT, 130, "interrupted"),
    ):
        with Running("listen", *member(mesh, "bob", broker.url)) as listener:
            listener.err.wait_for(CONNECTED)
            listener.signal(signum)
            assert listener.wait() == status
        assert listener.err.text().splitlines()[-1] == word
        assert "Traceback" not in listener.err.text()


@pytest.mark.parametrize("delay", [0.15, 0.3])
def test_ctrl_c_in_the_first_moment_is_not_a_traceback(mesh: Path, delay: float) -> None:
    url = f"ws://127.0.0.1:{_free_port()}/ws"
    with Running("send", "*", "hi", *member(mesh, "alice", url)) as early:
        time.sleep(delay)
        early.signal(signal.SIGINT)
        status = early.wait()
    assert "Traceback" not in early.err.text(), early.err.text()
    assert status == 130, early.err.text()
    assert early.err.text().splitlines()[-1] == "interrupted"


@pytest.fixture
def silent_broker() -> Iterator[str]:
    """A "broker" that accepts every TCP connection and never says a word."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield f"ws://127.0.0.1:{server.getsockname()[1]}/ws"


def test_a_broker_that_never_answers_is_reported_within_a_second(
    mesh: Path, silent_broker: str
) -> None:
    started = time.monotonic()
    with Running("peers", "--timeout", "2", *member(mesh, "alice", silent_broker)) as peers:
        first = peers.err.wait_for("still connecting", timeout=10)
        noticed = time.monotonic() - started
        status = peers.wait()
    assert first == f"still connecting to {silent_broker} …"
    assert noticed < 2.0, noticed
    assert status == 124
    assert _error_line(peers.err.text()) == (
        f"meshproto: error: timed out after 2 s without reaching the broker: no answer from "
        f"{silent_broker}"
    )


@pytest.mark.parametrize("command", ["send", "peers"])
def test_sigterm_and_ctrl_c_end_a_one_shot_command_while_it_waits(
    mesh: Path, silent_broker: str, command: str
) -> None:
    # send and peers wait in the main thread (the blocking client): a signal
    # raises there, the client closes on the way out, and no traceback shows.
    target = ("*", "hi") if command == "send" else ()
    for signum, status, word in (
        (signal.SIGTERM, 143, "terminated"),
        (signal.SIGINT, 130, "interrupted"),
    ):
        with Running(command, *target, *member(mesh, "alice", silent_broker)) as waiting:
            waiting.err.wait_for("still connecting")
            waiting.signal(signum)
            assert waiting.wait() == status
        assert waiting.err.text().splitlines()[-1] == word
        assert "Traceback" not in waiting.err.text()


def test_a_send_written_and_never_acknowledged_exits_3_with_the_key_to_retry_under(
    mesh: Path,
) -> None:
    async def hello_then_silence(peer: WsPeer) -> None:
        hello = await peer.next_frame()
        assert hello["type"] == "session_hello"
        await peer.send_json({"type": "hello_ack", "presenceId": "p" * 32})
        while True:  # read every frame, acknowledge none
            await peer.next_frame(timeout=30)

    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(fake_broker(hello_then_silence)) as (url, _),
    ):
        bob = KeyPair.generate().pubkey  # a direct message: sealed, written, never acknowledged
        result = run_cli("send", bob, "hi", "--timeout", "2", "--json", *member(mesh, "alice", url))
    assert result.returncode == 3, result
    line = _error_line(result.stderr)
    (record,) = json_lines(result.stdout)
    assert record["error"] == "outcome_unknown" and record["status"] == 3
    cmid = record["clientMessageId"]
    assert line.startswith("meshproto: error: outcome unknown after 2 s (timeout: ")
    assert "the message may have been delivered" in line
    assert line.endswith(f"send it again with --client-message-id {cmid}")


def test_an_interrupt_raised_inside_generated_code_still_exits_130(tmp_path: Path) -> None:
    # A Ctrl-C can land while dataclasses or typing run generated code (any
    # lazy import): CPython then marks the process as interrupted and, unless
    # the command clears the mark, kills itself with SIGINT at exit.
    (tmp_path / "interrupted_command.py").write_text(
        "import sys\n"
        "from meshproto_cli import _app\n"
        "def interrupted(argv):\n"
        "    exec('raise KeyboardInterrupt')\n"
        "_app._main = interrupted\n"
        "sys.exit(_app.main(['peers']))\n"
    )
    env = environment({"PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])})
    result = subprocess.run(
        [sys.executable, "-m", "interrupted_command"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
        check=False,
    )
    assert result.returncode == 130, result.stderr
    assert result.stderr.splitlines()[-1] == "interrupted"
