"""``meshproto broker`` from the command line: startup problems, limits, logs, stopping.

Each startup problem is one line and status 1 (2 for bad usage), never a
traceback. Its limits are options; each connect, refusal and disconnect is one
INFO log line (JSON with ``--log-format json``); Ctrl-C and SIGTERM close every
client's socket with 1001 before the broker exits.
"""

from __future__ import annotations

import logging
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme
from cli_helpers import (
    FAST,
    BrokerProcess,
    Running,
    json_lines,
    make_mesh,
    member,
    revoke,
    run_cli,
)

from meshproto_cli._brokerlog import JsonFormatter, TextFormatter


@pytest.fixture
def listening_port() -> Iterator[int]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        yield int(taken.getsockname()[1])


def _cert_only(tmp_path: Path) -> Path:
    cert = tmp_path / "cert.pem"
    trustme.CA().issue_cert("127.0.0.1").cert_chain_pems[0].write_to_path(str(cert))
    return cert


def _corrupt(tmp_path: Path) -> Path:
    path = tmp_path / "broken.db"
    path.write_bytes(b"this is not a database at all, just some bytes" * 100)
    return path


Case = Callable[[Path, int], list[str]]

STARTUP_PROBLEMS: dict[str, tuple[Case, int, str]] = {
    "port in use": (
        lambda tmp, port: ["--port", str(port)],
        1,
        "cannot listen on 127.0.0.1:{port}: Address already in use; something listens there",
    ),
    "db in a missing folder": (
        lambda tmp, port: ["--db", str(tmp / "nowhere" / "b.db")],
        1,
        "the folder {tmp}/nowhere does not exist",
    ),
    "db is a folder": (lambda tmp, port: ["--db", str(tmp)], 1, "--db {tmp} is a folder"),
    "db is not a database": (
        lambda tmp, port: ["--db", str(_corrupt(tmp))],
        1,
        "--db {tmp}/broken.db is not a SQLite database",
    ),
    "negative port": (lambda tmp, port: ["--port", "-5"], 2, "a port is 0 to 65535"),
    "port too big": (
        lambda tmp, port: ["--port", "70000"],
        2,
        "0 to 65535 (0: any free one), got 70000",
    ),
    "unresolvable host": (
        lambda tmp, port: ["--host", "nonexistent.invalid", "--port", "0"],
        1,
        "cannot listen on nonexistent.invalid:0: 'nonexistent.invalid' does not resolve",
    ),
    "tls key without cert": (
        lambda tmp, port: ["--tls-key", str(tmp / "key.pem")],
        2,
        "--tls-key needs --tls-cert",
    ),
    "tls cert without its key": (
        lambda tmp, port: ["--tls-cert", str(_cert_only(tmp)), "--port", "0"],
        1,
        "it holds no private key, or is not PEM",
    ),
    "tls cert missing": (
        lambda tmp, port: ["--tls-cert", str(tmp / "none.pem")],
        1,
        "cannot read {tmp}/none.pem: no such file",
    ),
    "limit not positive": (lambda tmp, port: ["--rate-burst", "0"], 2, "must be more than 0"),
    "sqlite synchronous without a db": (
        lambda tmp, port: ["--sqlite-synchronous", "full"],
        2,
        "--sqlite-synchronous needs --db",
    ),
    "sqlite synchronous unknown": (
        lambda tmp, port: ["--db", str(tmp / "b.db"), "--sqlite-synchronous", "off"],
        2,
        "invalid choice: 'off'",
    ),
}


@pytest.mark.parametrize("case", list(STARTUP_PROBLEMS))
def test_broker_startup_problems_are_one_line(
    case: str, tmp_path: Path, listening_port: int
) -> None:
    make_args, status, fragment = STARTUP_PROBLEMS[case]
    result = run_cli("broker", *make_args(tmp_path, listening_port), timeout=15)
    assert result.returncode == status, result
    assert "Traceback" not in result.stderr and "ExceptionGroup" not in result.stderr
    expected = fragment.format(tmp=tmp_path, port=listening_port)
    if status == 1:
        assert result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.startswith("meshproto: error: "), result.stderr
    assert expected in result.stderr.splitlines()[-1], result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(("given", "mode"), [((), "NORMAL"), (("full",), "FULL")])
def test_the_sqlite_store_syncs_as_sqlite_synchronous_says(
    tmp_path: Path, given: tuple[str, ...], mode: str
) -> None:
    from meshproto_cli._app import build_parser  # noqa: PLC0415
    from meshproto_cli._broker_command import open_store  # noqa: PLC0415

    flags = ["--sqlite-synchronous", *given] if given else []
    args = build_parser().parse_args(["broker", "--db", str(tmp_path / "b.db"), *flags])
    store = open_store(args)
    try:
        assert store.synchronous == mode
        assert store.commit_may_block is (mode == "FULL")  # FULL commits in a worker thread
    finally:
        store.close()


def test_broker_limits_are_options_with_their_defaults_in_the_help(tmp_path: Path) -> None:
    help_text = run_cli("broker", "--help").stdout
    for flag, default in (("--rate-burst", "10"), ("--grace", "90"), ("--store-ttl", "604800")):
        assert flag in help_text
        assert f"(default: {default})" in help_text
    mesh = make_mesh(tmp_path, "alice")
    broker = BrokerProcess(
        tmp_path, "--mesh", str(mesh / "members.json"), "--rate-burst", "1",
        "--rate-per-minute", "1",
    )  # fmt: skip
    broker.start()
    try:
        first = run_cli("send", "*", "one", "--json", *member(mesh, "alice", broker.url))
        second = run_cli("send", "*", "two", "--json", *member(mesh, "alice", broker.url))
    finally:
        broker.kill()
    assert first.returncode == 0, first.stderr
    assert second.returncode == 1
    (error,) = json_lines(second.stdout)
    assert (error["error"], error["reason"], error["retryable"]) == (
        "not_delivered",
        "rate_limited",
        True,
    )


def test_broker_logs_each_connect_refusal_and_disconnect(tmp_path: Path) -> None:
    mesh = make_mesh(tmp_path, "alice,bob")
    broker = BrokerProcess(tmp_path, "--mesh", str(mesh / "members.json"), "--log-format", "json")
    broker.start()
    try:
        with Running("listen", *member(mesh, "alice", broker.url, *FAST)) as listener:
            listener.err.wait_for("^connected as ")
            assert run_cli("peers", *member(mesh, "bob", broker.url)).returncode == 0
            revoke(mesh, "bob")
            assert run_cli("peers", *member(mesh, "bob", broker.url)).returncode == 1
            assert broker.stop(signal.SIGTERM) == 143
            listener.signal(signal.SIGINT)
            listener.wait()
    finally:
        broker.kill()
    records = broker.records()
    assert all(r["level"] in ("INFO", "WARNING") and r["time"].endswith("Z") for r in records)
    events = [(r.get("event"), r.get("member") or r.get("code")) for r in records if "event" in r]
    assert events == [
        ("connect", "alice"),
        ("connect", "bob"),
        ("disconnect", "bob"),
        ("refuse", "revoked"),
        ("stop", None),
        ("disconnect", "alice"),
    ], records
    refusal = next(r for r in records if r.get("event") == "refuse")
    assert refusal["close"] == 4002 and refusal["memberPubkey"]
    last = records[-1]
    assert last["reason"] == "closed by the broker: 1001 broker shutting down"
    assert "1001 broker shutting down" in listener.err.text()  # the client heard the close


def test_ctrl_c_on_the_broker_closes_every_client_with_1001(tmp_path: Path) -> None:
    mesh = make_mesh(tmp_path, "alice")
    broker = BrokerProcess(tmp_path, "--mesh", str(mesh / "members.json"))
    broker.start()
    try:
        with Running("listen", *member(mesh, "alice", broker.url, *FAST)) as listener:
            listener.err.wait_for("^connected as ")
            assert broker.stop(signal.SIGINT) == 130
            line = listener.err.wait_for("^connection lost: ")
            listener.signal(signal.SIGINT)
            listener.wait()
    finally:
        broker.kill()
    assert line.startswith("connection lost: the broker went away (1001 broker shutting down);")


def test_log_lines_show_what_peers_chose_inert() -> None:
    record = logging.LogRecord(
        "meshproto.cli.broker", logging.INFO, __file__, 1, "connect", (), None
    )
    record.fields = {"event": "connect", "conn": 3, "member": "ev\x1b[2Jil", "reason": "a b"}
    text = TextFormatter("%(levelname)s %(name)s: %(message)s").format(record)
    assert text == 'INFO meshproto.cli.broker: connect conn=3 member=ev\\x1b[2Jil reason="a b"'
    as_json = JsonFormatter().format(record)
    assert "\x1b" not in as_json and '"member": "ev\\u001b[2Jil"' in as_json
