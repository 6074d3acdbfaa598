"""What the command writes to a terminal: text made safe, colour when it helps.

Everything a peer or a broker chose (a display name, a message body, a
summary, a refusal's message, a close reason) may hold bytes that a terminal
obeys: ``ESC [ 2 J`` clears the screen, ``ESC ] 52`` writes the clipboard, a
right-to-left override reorders what follows. :func:`visible` turns each such
character into an inert escape that shows what was there (``\\x1b``,
``\\n``, ``\\u202e``), and leaves everything else, accents and emoji
included, as it is. The command passes every such string through it before
printing it for a person; JSON output needs nothing more, since
:func:`json_line` escapes everything outside ASCII.

:class:`Style` adds colour only when the stream is a terminal, and never when
``NO_COLOR`` is set (https://no-color.org) or ``TERM`` is ``dumb``.

Used by the command's subcommands and by the MCP server alike; the API is
:func:`visible`, :func:`json_line`, :func:`local_time` and :class:`Style`.
"""

from __future__ import annotations

import json
import os
import unicodedata
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from datetime import datetime

__all__ = ["Style", "json_line", "local_time", "use_colour", "visible"]

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Characters that reorder text (Trojan Source): Unicode category Cf, like the
# zero-width joiner of emoji sequences, which is harmless and kept.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_UNSAFE_CATEGORIES = frozenset({"Cc", "Zl", "Zp", "Cs"})


def _escape(char: str) -> str:
    if char in _ESCAPES:
        return _ESCAPES[char]
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def visible(text: str) -> str:
    """``text`` with every control, separator and bidi character shown as an escape.

    C0 and C1 controls and DEL become ``\\xNN`` (``\\n``, ``\\r``, ``\\t`` for
    those three), line and paragraph separators, lone surrogates and the
    bidirectional overrides and isolates ``\\uNNNN``. Nothing else changes,
    so ordinary text, accents and emoji print as they are. The result holds no
    character a terminal acts on, and is always one line.
    """
    if text.isprintable():
        return text  # the common case: nothing that a terminal acts on
    return "".join(
        _escape(char) if char in _BIDI or unicodedata.category(char) in _UNSAFE_CATEGORIES else char
        for char in text
    )


def json_line(record: Mapping[str, Any]) -> str:
    """``record`` as one line of JSON, ASCII only (so it is safe on a terminal too)."""
    return json.dumps(record, ensure_ascii=True, separators=(", ", ": "))


def use_colour(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Whether to colour what goes to ``stream``: a terminal, no ``NO_COLOR``, not ``dumb``."""
    env = os.environ if environ is None else environ
    if env.get("NO_COLOR") or env.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class Style:
    """ANSI styles for one stream, or none at all (see :func:`use_colour`)."""

    __slots__ = ("enabled",)

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    @classmethod
    def for_stream(cls, stream: TextIO, environ: Mapping[str, str] | None = None) -> Style:
        return cls(use_colour(stream, environ))

    def _wrap(self, code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.enabled and text else text

    def dim(self, text: str) -> str:
        return self._wrap("2", text)

    def bold(self, text: str) -> str:
        return self._wrap("1", text)

    def red(self, text: str) -> str:
        return self._wrap("1;31", text)

    def yellow(self, text: str) -> str:
        return self._wrap("33", text)

    def green(self, text: str) -> str:
        return self._wrap("32", text)

    def cyan(self, text: str) -> str:
        return self._wrap("36", text)


def local_time(iso: str | None, *, now: datetime | None = None) -> str:
    """A broker timestamp (``2026-12-01T19:21:38.083Z``) in this machine's local time.

    ``19:21:38`` if it falls on today's local date, else ``2026-12-01
    19:21:38``. A missing or unreadable timestamp, or one that this machine's
    time zone would carry past year 1 or 9999, gives the current local time.
    """
    from datetime import datetime, timezone  # noqa: PLC0415 (listen's lines only: not at start)

    local_now = (now or datetime.now(timezone.utc)).astimezone()
    when = local_now
    if iso:
        try:
            parsed = datetime.fromisoformat(iso.replace("Z", "+00:00"))
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=timezone.utc)
            when = parsed.astimezone()
        except (ValueError, OverflowError):  # not a time, or past the calendar's ends here
            when = local_now
    if when.date() == local_now.date():
        return when.strftime("%H:%M:%S")
    return when.strftime("%Y-%m-%d %H:%M:%S")
