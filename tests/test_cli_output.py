"""What the command prints for a person is safe on a terminal (``meshproto_cli._output``)."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from datetime import datetime, timezone

import pytest

from meshproto_cli._output import Style, json_line, local_time, use_colour, visible


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("\x1b[2Jgotcha", "\\x1b[2Jgotcha"),
        ("\x1b]52;c;ZXZpbA==\x07", "\\x1b]52;c;ZXZpbA==\\x07"),
        ("two\nlines\r\n", "two\\nlines\\r\\n"),
        ("tab\there", "tab\\there"),
        ("del\x7f and nul\x00", "del\\x7f and nul\\x00"),
        ("c1 \x9b31m csi", "c1 \\x9b31m csi"),
        ("line\u2028sep\u2029", "line\\u2028sep\\u2029"),
        ("abc\u202edcb", "abc\\u202edcb"),
        ("iso\u2066late\u2069", "iso\\u2066late\\u2069"),
    ],
)
def test_control_characters_are_made_visible_and_inert(text: str, shown: str) -> None:
    assert visible(text) == shown
    assert visible(shown) == shown  # what it shows is itself inert
    assert all(ch.isprintable() for ch in visible(text))


@pytest.mark.parametrize(
    "text", ["hello, bob", "héllo wörld", "日本語", "👨\u200d👩\u200d👧 ok", ""]
)
def test_ordinary_text_accents_and_emoji_are_unchanged(text: str) -> None:
    assert visible(text) == text


def test_json_lines_are_ascii_and_one_line() -> None:
    line = json_line({"text": "\x1b[2J\nhé\u202e", "n": 1})
    assert line.isascii() and "\n" not in line and "\x1b" not in line
    assert json.loads(line) == {"text": "\x1b[2J\nhé\u202e", "n": 1}


def test_colour_only_on_a_terminal_and_never_with_no_color() -> None:
    assert use_colour(_Tty(), {})
    assert not use_colour(io.StringIO(), {})
    assert not use_colour(_Tty(), {"NO_COLOR": "1"})
    assert use_colour(_Tty(), {"NO_COLOR": ""})  # set but empty does not count (no-color.org)
    assert not use_colour(_Tty(), {"TERM": "dumb"})
    assert Style(True).bold("x") == "\x1b[1mx\x1b[0m"
    assert Style(False).bold("x") == "x"
    assert Style.for_stream(io.StringIO(), {}).red("now") == "now"


@pytest.fixture
def utc() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TZ", "UTC")
        time.tzset()
        yield
    time.tzset()


@pytest.mark.usefixtures("utc")
def test_broker_timestamps_are_shown_in_local_time() -> None:
    now = datetime(2026, 12, 1, 20, 0, tzinfo=timezone.utc)
    assert local_time("2026-12-01T19:21:38.083Z", now=now) == "19:21:38"
    assert local_time("2026-11-30T23:59:59.000Z", now=now) == "2026-11-30 23:59:59"
    assert local_time("garbage", now=now) == "20:00:00"
    assert local_time(None, now=now) == "20:00:00"
