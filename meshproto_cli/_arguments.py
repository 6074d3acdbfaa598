"""The command's free-text arguments, checked as they are parsed: names, ids, and UTF-8 text.

On POSIX a program's arguments are bytes. Python decodes them as UTF-8 and
turns each byte that is not UTF-8 into a lone surrogate (``b"\\xff"``
becomes ``"\\udcff"``, PEP 383), which no hello, no JSON and no file written
as UTF-8 can carry: such a name would be refused later (after connecting, or
after taking a session), or, for a mesh's name, written into its files as
an escape no other program can read. So each type here refuses it at once,
as bad usage (status 2, argparse's one error line after the usage), saying
which byte it was: usually a terminal or a script in another encoding.

Names are one line of printable text (no control, line separator or bidi
character: :func:`~meshproto_cli._output.visible` would have to show them as
escapes), not blank, and no longer than a broker takes: a display name 64
characters, a group name 32 (docs/protocol.md §3.2, "Field sizes"). A mesh's
name has no limit in the protocol; it is held to 64 as well, since its slug
is what ``--mesh`` takes and what every ``listen`` line shows. Session names
and the open mesh's id name folders: letters, digits, ``.``, ``_`` and ``-``.

Paths are not checked: they may hold any bytes the system's paths hold, and
``os`` gives them back as they came.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable

from ._output import visible

__all__ = [
    "CLIENT_MESSAGE_ID_MAX",
    "DISPLAY_NAME_MAX",
    "GROUP_NAME_MAX",
    "MESH_NAME_MAX",
    "client_message_id",
    "display_name",
    "folder_id",
    "group_name",
    "member_names",
    "mesh_name",
    "utf8_text",
]

#: The longest ``displayName`` the reference broker takes in a hello.
DISPLAY_NAME_MAX = 64
#: The longest group name the reference broker takes.
GROUP_NAME_MAX = 32
#: The longest mesh name ``mesh init`` writes (the protocol sets none).
MESH_NAME_MAX = 64
#: The longest ``client_message_id`` a client sends (``meshproto.MAX_CLIENT_MESSAGE_ID``,
#: not imported: parsing the arguments loads no part of the client).
CLIENT_MESSAGE_ID_MAX = 128

_FOLDER_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_GROUP = re.compile(r"[^\s@#*]+")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _not_unicode(text: str) -> str | None:
    """Why ``text`` is not valid Unicode (it holds a lone surrogate), or ``None``."""
    found = _SURROGATE.search(text)
    if found is None:
        return None
    try:  # the bytes as they came, where Python made surrogates of them
        shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate of another kind (not from POSIX argv)
        shown = text.encode("utf-8", "backslashreplace").decode("utf-8")
    shown = visible(shown)
    bad = ord(found.group())
    if 0xDC80 <= bad <= 0xDCFF:  # a byte that was not UTF-8, as Python decoded argv
        return (
            f"'{shown}' is not UTF-8 text (byte 0x{bad - 0xDC00:02x}); "
            "is the shell or script in another encoding?"
        )
    return f"'{shown}' is not valid Unicode text (it holds a lone surrogate, U+{bad:04X})"


def utf8_text(text: str) -> str:
    """Any text, as long as it is valid Unicode (a message, a target, a URL, a host)."""
    problem = _not_unicode(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def _name_type(what: str, most: int, why: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        problem = _name_problem(text, what, most, why)
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
        return text

    parse.__name__ = what  # argparse names the type in its messages
    return parse


def _name_problem(text: str, what: str, most: int, why: str) -> str | None:
    problem = _not_unicode(text)
    if problem is not None:
        return problem
    if not text:
        return f"the {what} is empty"
    if not text.strip():
        return f"the {what} {text!r} is only white space"
    if visible(text) != text:
        return (
            f"the {what} '{visible(text)}' holds a control character; a name is one line "
            "of printable text"
        )
    if len(text) > most:
        return f"the {what} is {len(text)} characters long; at most {most} ({why})"
    return None


display_name = _name_type("display name", DISPLAY_NAME_MAX, "a broker refuses a longer one")
mesh_name = _name_type("mesh name", MESH_NAME_MAX, "its slug is what --mesh takes")


def group_name(text: str) -> str:
    """A group's name: what ``@NAME`` reaches, so no white space, ``@``, ``#`` or ``*``."""
    problem = _name_problem(text, "group name", GROUP_NAME_MAX, "a broker refuses a longer one")
    if problem is None and not _GROUP.fullmatch(text):
        problem = f"the group name {text!r} may not hold white space, '@', '#' or '*'"
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def member_names(text: str) -> list[str]:
    """``A,B,...``: distinct display names, each also the name of a folder."""
    problem = _not_unicode(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    if not text.strip():
        problem = "the member list is empty" if not text else f"{text!r} is only white space"
        raise argparse.ArgumentTypeError(problem)
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError("--members needs distinct names, separated by commas")
    for name in names:
        problem = _name_problem(
            name, "member name", DISPLAY_NAME_MAX, "it becomes the member's display name"
        )
        if problem is None and (name in (".", "..") or "/" in name or "\\" in name):
            problem = f"{name!r} cannot be a member name (it names a folder)"
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
    return names


def folder_id(what: str) -> Callable[[str], str]:
    """A session name or a mesh id: it names a folder, so letters, digits, ``.``, ``_``, ``-``."""

    def parse(text: str) -> str:
        problem = _not_unicode(text)
        if problem is None and not _FOLDER_ID.fullmatch(text):
            problem = f"{what}s may use letters, digits, '.', '_' and '-' (1-64), got {text!r}"
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
        return text

    parse.__name__ = what
    return parse


def client_message_id(text: str) -> str:
    """The id of an earlier send, as its outcome line gave it."""
    problem = _not_unicode(text)
    if problem is None and not (0 < len(text) <= CLIENT_MESSAGE_ID_MAX and text.isprintable()):
        problem = (
            f"a client message id is 1 to {CLIENT_MESSAGE_ID_MAX} printable characters, as "
            "the line of the send to retry gave it"
        )
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text
