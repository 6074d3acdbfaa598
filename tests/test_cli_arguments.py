"""Free text on the command line: names that could never be used are bad usage (status 2).

On POSIX a program's arguments are bytes. Python decodes them as UTF-8 and
turns each byte that is not UTF-8 into a lone surrogate (``b"\\xff"`` becomes
``"\\udcff"``), which no hello, no JSON and no file written as UTF-8 can
carry; a name may also hold a control character, be blank, or be longer than
the broker takes (docs/protocol.md §3.2, "Field sizes"). Each is refused while
the arguments are parsed, in one line, before anything is written or
connected to. Paths are not names: they may hold any bytes, as the system's.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cli_helpers import TIMEOUT, command, environment

from meshproto_cli._app import main

#: Every option that names something, with the arguments around it.
NAMES = {
    "mesh init --name": ("mesh", "init", "--members", "a", "--name"),
    "mesh init --members": ("mesh", "init", "--members"),
    "mesh init --group": ("mesh", "init", "--members", "a", "--group"),
    "send --name": ("send", "*", "hi", "--name"),
    "listen --name": ("listen", "--name"),
    "peers --name": ("peers", "--name"),
    "mcp --name": ("mcp", "--name"),
}


@pytest.fixture(autouse=True)
def _in_a_scratch_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``mesh init`` writes to ``./mesh`` by default: never into the checkout."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLAUDEMESH_CONFIG_DIR", str(tmp_path / "config"))


def _usage_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """What argparse said of ``meshproto ARGS``, which must be bad usage, in its one error line."""
    with pytest.raises(SystemExit) as stopped:
        main(list(args))
    assert stopped.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("usage: meshproto")
    errors = [line for line in lines if ": error: " in line]
    assert errors == [lines[-1]], lines  # the usage, then one error line: no traceback
    return lines[-1].split(": error: ", 1)[1]


@pytest.mark.parametrize("where", NAMES)
def test_a_name_with_bytes_that_are_not_utf8_is_bad_usage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    # `meshproto mesh init --name $'\xff'` once made a mesh called '\udcff'.
    args = (*NAMES[where], "caf\udce9", "--dir", str(tmp_path / "m"))
    if not where.startswith("mesh"):
        args = args[:-2]
    error = _usage_error(capsys, *args)
    assert error.endswith(
        "'caf\\xe9' is not UTF-8 text (byte 0xe9); is the shell or script in another encoding?"
    )
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("where", NAMES)
@pytest.mark.parametrize("name", ["a\x01b", "line\nbreak", "tab\there", "\u202eevil", "a\u2028b"])
def test_a_name_that_is_not_one_line_of_printable_text_is_bad_usage(
    capsys: pytest.CaptureFixture[str], where: str, name: str
) -> None:
    error = _usage_error(capsys, *NAMES[where], name)
    assert "holds a control character" in error


@pytest.mark.parametrize("where", NAMES)
@pytest.mark.parametrize("name", ["", "   "])
def test_a_blank_name_is_bad_usage(
    capsys: pytest.CaptureFixture[str], where: str, name: str
) -> None:
    error = _usage_error(capsys, *NAMES[where], name)
    assert error.endswith("is empty" if not name else "is only white space")


@pytest.mark.parametrize(
    ("where", "most"),
    [
        ("mesh init --name", 64),
        ("mesh init --members", 64),
        ("mesh init --group", 32),
        ("send --name", 64),
        ("mcp --name", 64),
    ],
)
def test_a_name_longer_than_the_broker_takes_is_bad_usage(
    capsys: pytest.CaptureFixture[str], where: str, most: int
) -> None:
    error = _usage_error(capsys, *NAMES[where], "x" * (most + 1))
    assert f"is {most + 1} characters long; at most {most}" in error


def test_mesh_init_takes_names_in_any_script(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = "é" * 64  # at the limit, and not ASCII
    args = ["--name", "café ☕ 構築", "--members", f"zoë,{name}", "--group", "équipe"]
    assert main(["mesh", "init", *args, "--dir", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "zoë" / "config.json").exists()
    assert "mesh 'café ☕ 構築'" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args",
    [
        ("send", "*", "caf\udce9"),  # the message
        ("send", "caf\udce9", "hi"),  # the target
        ("send", "*", "hi", "--client-message-id", "caf\udce9"),
        ("send", "*", "hi", "--mesh", "caf\udce9"),
        ("send", "*", "hi", "--url", "ws://caf\udce9/ws"),
        ("send", "*", "hi", "--session", "caf\udce9"),
        ("listen", "--session", "caf\udce9"),
        ("mcp", "--session", "caf\udce9"),
        ("mcp", "--mesh", "caf\udce9"),
        ("mesh", "init", "--members", "a", "--broker-url", "ws://caf\udce9/ws"),
        ("broker", "--open-mesh", "caf\udce9"),
        ("broker", "--host", "caf\udce9"),
    ],
    ids=lambda args: " ".join(a for a in args if a.isascii() and a != "*"),
)
def test_text_with_bytes_that_are_not_utf8_is_bad_usage_before_anything_is_done(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...]
) -> None:
    # Each was refused only later: after connecting, after taking a session, or (broker
    # --open-mesh) never, serving a mesh no client could name.
    error = _usage_error(capsys, *args)
    assert "is not UTF-8 text (byte 0xe9)" in error


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (("send", "*", "hi", "--session", "a b"), "session names may use letters"),
        (("broker", "--open-mesh", "my mesh"), "mesh ids may use letters"),
        (("send", "*", "hi", "--client-message-id", "x" * 129), "1 to 128 printable characters"),
    ],
)
def test_an_id_the_command_could_not_use_is_bad_usage(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...], complaint: str
) -> None:
    assert complaint in _usage_error(capsys, *args)


def test_a_name_from_a_terminal_in_another_encoding_is_refused_as_the_shell_passed_it(
    tmp_path: Path,
) -> None:
    # The bytes as a Latin-1 terminal sends them, through the real argv decoding.
    result = subprocess.run(
        [*map(str.encode, command("mesh", "init", "--members", "a")), b"--name", b"caf\xe9"],
        cwd=tmp_path,
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
        env=environment(),
    )
    assert result.returncode == 2
    assert result.stderr.decode().splitlines()[-1] == (
        "meshproto mesh init: error: argument --name: 'caf\\xe9' is not UTF-8 text (byte 0xe9); "
        "is the shell or script in another encoding?"
    )
    assert list(tmp_path.iterdir()) == []
