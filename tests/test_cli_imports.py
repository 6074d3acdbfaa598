"""The client commands load no part of the broker side (a behaviour test: nothing is timed).

``send``, ``listen`` and ``peers`` run against a real broker in a fresh
interpreter, which then writes down every module it imported. None of the
reference broker (``meshproto._broker*``, presences, the store, the member
registry, the admission checks), the WebSocket broker driver, the anyio
server, SQLite, the broker's log or the MCP server may be among them: a
client has no use for them, and importing them is most of what a short
command costs. The packages still give the broker-side names, on first use.

The one-shot ``send`` and ``peers`` run on the blocking client, with no
event loop: they import neither ``asyncio`` nor ``anyio`` (nor the anyio
client, nor the modules of the commands that run on the loop);
``listen`` runs on the anyio client.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import TIMEOUT, BrokerProcess, Running, environment, make_mesh, member

pytest.importorskip("anyio")
pytest.importorskip("nacl")

#: What no client command may import.
BROKER_SIDE = re.compile(
    r"(meshproto\._broker\w*|meshproto\._presence|meshproto\._store|meshproto\._registry"
    r"|meshproto\._admission|meshproto\._ratelimit"
    r"|meshproto_ws\._broker_driver|meshproto_ws\._commit_gate"
    r"|meshproto_anyio\._server|meshproto_anyio\.sqlite_store"
    r"|meshproto_cli\._broker_command|meshproto_cli\._brokerlog|meshproto_cli\._mcp\w*"
    r"|_?sqlite3(\..*)?|mcp(\..*)?)"
)

#: What a client command loads only once it needs it: JSON log times, listen's
#: clock times, mesh init's creation time (datetime); writing a file (tempfile:
#: a session's first run writes its key file, later runs only read it).
NOT_AT_START = frozenset({"datetime", "_datetime", "tempfile"})

#: What the one-shot commands (send, peers) never import: an event loop and its client.
EVENT_LOOP = re.compile(
    r"(asyncio|anyio|sniffio|meshproto_anyio|meshproto_cli\._commands|meshproto_cli\._running)"
    r"(\..*)?"
)

#: Runs the command as the console script does, then lists what it imported.
RUN_AND_LIST = """
import json, sys
from meshproto_cli import main
status = main(sys.argv[2:])
with open(sys.argv[1], "w", encoding="utf-8") as out:
    json.dump(sorted(sys.modules), out)
sys.exit(status)
"""


def imported_by(tmp_path: Path, *args: str) -> tuple[int, list[str], str]:
    listing = tmp_path / "modules.json"
    listing.unlink(missing_ok=True)
    result = subprocess.run(
        [sys.executable, "-c", RUN_AND_LIST, str(listing), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        env=environment(),
    )
    assert "Traceback" not in result.stderr, result.stderr
    modules: list[str] = json.loads(listing.read_text(encoding="utf-8"))
    return result.returncode, modules, result.stderr


def broker_side(modules: list[str]) -> list[str]:
    return [name for name in modules if BROKER_SIDE.fullmatch(name)]


def event_loop(modules: list[str]) -> list[str]:
    return [name for name in modules if EVENT_LOOP.fullmatch(name)]


@pytest.fixture
def mesh(tmp_path: Path) -> Path:
    return make_mesh(tmp_path, "alice,bob")


@pytest.fixture
def url(tmp_path: Path, mesh: Path) -> Iterator[str]:
    process = BrokerProcess(tmp_path, "--mesh", str(mesh / "members.json"))
    try:
        yield process.start()
    finally:
        process.kill()


def test_send_to_a_listening_peer_imports_nothing_of_the_broker(
    tmp_path: Path, mesh: Path, url: str
) -> None:
    with Running("listen", *member(mesh, "bob", url)) as bob:
        bob.err.wait_for(r"^connected as bob")
        for _ in range(2):  # the first run writes the session's key file
            status, modules, stderr = imported_by(
                tmp_path, "send", "bob", "hi", *member(mesh, "alice", url)
            )
            assert status == 0, stderr
        bob.out.wait_for(r": hi$")
    assert "meshproto_sync._client" in modules  # it did connect, on the blocking client
    assert event_loop(modules) == []
    assert broker_side(modules) == []
    assert NOT_AT_START.isdisjoint(modules), sorted(NOT_AT_START & {*modules})


@pytest.mark.parametrize(
    ("args", "expected", "client"),
    [
        (("peers",), 0, "meshproto_sync._client"),
        (("listen", "--timeout", "0.5"), 124, "meshproto_anyio._client"),
    ],
    ids=["peers", "listen"],
)
def test_peers_and_listen_import_nothing_of_the_broker(
    tmp_path: Path, mesh: Path, url: str, *, args: tuple[str, ...], expected: int, client: str
) -> None:
    for _ in range(2):  # the first run writes the session's key file
        status, modules, stderr = imported_by(tmp_path, *args, *member(mesh, "alice", url))
        assert status == expected, stderr
    assert client in modules
    if args[0] == "peers":
        assert event_loop(modules) == []
    assert broker_side(modules) == []
    assert NOT_AT_START.isdisjoint(modules), sorted(NOT_AT_START & {*modules})


def test_a_send_that_cannot_connect_imports_no_event_loop_either(
    tmp_path: Path, mesh: Path
) -> None:
    # Its error path (the timeout, the last cause) needs no loop either.
    url = "ws://127.0.0.1:9/ws"
    status, modules, stderr = imported_by(
        tmp_path, "send", "bob", "hi", "--timeout", "0.3", *member(mesh, "alice", url)
    )
    assert status == 124, stderr
    assert "without reaching the broker" in stderr
    assert event_loop(modules) == []


def test_the_broker_side_names_still_load_on_first_use(tmp_path: Path) -> None:
    code = (
        "import json, sys\n"
        "import meshproto, meshproto_ws, meshproto_anyio\n"
        "before = sorted(sys.modules)\n"
        "from meshproto import Broker, BrokerOptions, MemoryStore, StaticRegistry\n"
        "from meshproto_ws import BrokerDriver, CommitGate\n"
        "from meshproto_anyio import running_broker\n"
        "assert Broker.__module__ == 'meshproto._broker', Broker.__module__\n"
        "assert meshproto.Broker is Broker and 'Broker' in dir(meshproto)\n"
        "assert running_broker.__module__ == 'meshproto_anyio._server'\n"
        "for package in (meshproto, meshproto_ws, meshproto_anyio):\n"
        "    name = 'Brokr'\n"
        "    try:\n"
        "        getattr(package, name)\n"
        "    except AttributeError:\n"
        "        pass\n"
        "    else:\n"
        "        raise SystemExit(f'{package.__name__}.{name} exists')\n"
        "print(json.dumps([before, sorted(sys.modules)]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        env=environment(),
    )
    assert result.returncode == 0, result.stderr
    before, after = json.loads(result.stdout)
    assert broker_side(before) == []
    assert {"meshproto._broker", "meshproto_ws._broker_driver", "meshproto_anyio._server"} <= {
        *broker_side(after)
    }


#: Runs the command as the console script does, then says how it left the collector.
RUN_AND_SAY_GC = """
import gc, json, sys
from meshproto_cli import main
try:
    status = main(sys.argv[1:])
except SystemExit as exc:
    status = exc.code
print(json.dumps({"enabled": gc.isenabled(), "frozen": gc.get_freeze_count()}))
sys.exit(status)
"""


@pytest.mark.parametrize(
    ("args", "expected", "frozen"),
    [(("peers",), 0, True), (("send",), 2, False)],
    ids=["ran", "usage-error"],
)
def test_the_collector_is_on_again_once_the_modules_have_loaded(
    mesh: Path, url: str, args: tuple[str, ...], expected: int, frozen: bool
) -> None:
    # Off while the modules load, then on, with what they made frozen; a
    # command that stops before (here: a usage error) turns it back on too.
    result = subprocess.run(
        [sys.executable, "-c", RUN_AND_SAY_GC, *args, *member(mesh, "alice", url)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        env=environment(),
    )
    assert result.returncode == expected, result.stderr
    said = json.loads(result.stdout.splitlines()[-1])
    assert said["enabled"] is True
    assert (said["frozen"] > 0) is frozen
