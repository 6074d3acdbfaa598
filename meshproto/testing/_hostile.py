"""Hostile frame text: what a peer might send, written as JSON text, for tests and fuzzers.

A *template* is a well-formed frame, as a ``dict``. :func:`hostile_text`
writes it out as the text of a WebSocket message with a few *mutations*
applied, each chosen by ``draw(n)`` (an integer in ``range(n)``): the
property tests draw with hypothesis, the fuzzers from their bytes, so both
explore one input model. The text then goes through the real codec, as a
socket's message would; nothing here builds frame objects.

Mutations, any of them at any depth of the frame (known fields, nested
objects such as ``groups``, ``peers``, ``eventData`` or
``parentAttestation``, and keys):

* a string replaced by a hostile one: lone surrogates written as JSON
  escapes (``"\\ud800"``, a high surrogate at the end, a low one alone), a
  valid surrogate pair, a character outside the BMP, NUL, terminal escape
  sequences, the empty string, strings at the size caps;
* any value replaced by a hostile number (past 2**63, a float where an
  integer belongs, ``1e400``, the ``NaN``/``Infinity`` literals, 30 digits)
  or by another kind of value (``null``, a boolean, an array, an object,
  deep nesting);
* a key replaced by a hostile string;
* a duplicate of an existing top-level key, with another value;
* an unknown field holding any of the above, deep nesting included.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

__all__ = [
    "NUMBER_TOKENS",
    "OTHER_TOKENS",
    "STRING_TOKENS",
    "Draw",
    "draw_from_bytes",
    "hostile_text",
]

#: ``draw(n)`` returns an integer in ``range(n)``.
Draw = Callable[[int], int]

#: JSON string literals a peer may send, escapes written as on the wire.
STRING_TOKENS: tuple[str, ...] = (
    '"\\ud800"',  # a lone high surrogate
    '"\\udfff"',  # a lone low surrogate
    '"a\\udc80b"',  # a low surrogate inside text
    '"ok\\ud83d"',  # a high surrogate at the end (half an emoji)
    '"\\ude00\\ud83d"',  # a pair in the wrong order
    '"\\ud83d\\ude00"',  # a valid pair: one character outside the BMP
    '"\U0001f600 raw astral"',
    '"\\u0000"',
    '"nul\\u0000inside"',
    '"\\u001b[2J\\u001b[31mred\\u0007"',  # terminal control
    '"\\u202egnp.exe"',  # bidirectional override
    '""',
    '"' + "x" * 65_536 + '"',  # at the payload cap
    '"' + "\u00e9" * 40_000 + '"',  # 80,000 bytes of UTF-8
)

#: JSON numbers (and the literals Python's parser accepts) that no field should take.
NUMBER_TOKENS: tuple[str, ...] = (
    "9223372036854775808",  # 2**63
    "-9223372036854775809",  # -(2**63) - 1
    "1" + "0" * 30,
    "1.5",
    "1795738827449.0",
    "1e400",
    "-0",
    "NaN",
    "Infinity",
    "-Infinity",
)

#: Other kinds of value, nesting included.
OTHER_TOKENS: tuple[str, ...] = (
    "null",
    "true",
    "[]",
    "{}",
    '[{"name": 1}]',
    '{"a": {"b": {"c": []}}}',
    "[" * 64 + "]" * 64,
    '{"x": ' * 64 + "1" + "}" * 64,
    "[" * 3000 + "]" * 3000,
)

_ALL_TOKENS = STRING_TOKENS + NUMBER_TOKENS + OTHER_TOKENS


def draw_from_bytes(data: bytes, start: int = 0) -> tuple[Draw, Callable[[], int]]:
    """A ``draw`` that consumes ``data`` from ``start`` (zeros past the end).

    Returns it with a function that tells how far it has read.
    """
    pos = start

    def draw(n: int) -> int:
        nonlocal pos
        value = data[pos] if pos < len(data) else 0
        pos += 1
        return value % n if n > 0 else 0

    def position() -> int:
        return pos

    return draw, position


def _marker(i: int) -> str:
    return f"\u0001hostile{i}\u0001"


def _slots(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths to every value in ``value``; a path ending in a 1-tuple ``(key,)`` is a key."""
    found: list[tuple[Any, ...]] = []
    if isinstance(value, dict):
        for key, inner in value.items():
            if key.startswith("\u0001"):
                continue  # already replaced
            found.append((*path, key))
            found.append((*path, (key,)))
            found += _slots(inner, (*path, key))
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            found.append((*path, i))
            found += _slots(inner, (*path, i))
    return found


def _place(frame: dict[str, Any], path: tuple[Any, ...], marker: str) -> None:
    """Put ``marker`` at ``path``: as the value, or in place of the key."""
    parent: Any = frame
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if isinstance(last, tuple):
        (key,) = last
        items = list(parent.items())
        parent.clear()
        for k, v in items:
            parent[marker if k == key else k] = v
    else:
        parent[last] = marker


def hostile_text(template: dict[str, Any], draw: Draw, *, mutations: int | None = None) -> str:
    """``template`` written as JSON text with hostile mutations chosen by ``draw``.

    ``template`` is not changed. ``mutations`` (default: drawn, 1 to 3)
    says how many are applied.
    """
    frame: dict[str, Any] = json.loads(json.dumps(template))
    count = mutations if mutations is not None else 1 + draw(3)
    placed: list[tuple[str, str]] = []  # (marker, token)
    extra: list[str] = []
    for _ in range(count):
        kind = draw(5)
        slots = _slots(frame)
        values = [p for p in slots if not isinstance(p[-1], tuple) and p[-1] != "type"]
        keys = [p for p in slots if isinstance(p[-1], tuple)]
        marker = _marker(len(placed))
        if kind == 0 and values:  # a string, anywhere
            _place(frame, values[draw(len(values))], marker)
            placed.append((marker, STRING_TOKENS[draw(len(STRING_TOKENS))]))
        elif kind == 1 and values:  # any value, any token
            _place(frame, values[draw(len(values))], marker)
            placed.append((marker, _ALL_TOKENS[draw(len(_ALL_TOKENS))]))
        elif kind == 2 and keys:  # a key
            _place(frame, keys[draw(len(keys))], marker)
            placed.append((marker, STRING_TOKENS[draw(len(STRING_TOKENS))]))
        elif kind == 3 and frame:  # a duplicate of a top-level key
            names = list(frame)
            token = _ALL_TOKENS[draw(len(_ALL_TOKENS))]
            extra.append(f"{json.dumps(names[draw(len(names))])}: {token}")
        else:  # an unknown field
            extra.append(f'"unknownField{len(extra)}": {_ALL_TOKENS[draw(len(_ALL_TOKENS))]}')
    text = json.dumps(frame, ensure_ascii=False)
    for marker, token in placed:
        text = text.replace(json.dumps(marker, ensure_ascii=False), token, 1)
    if extra:
        text = text[:-1] + (", " if len(text) > 2 else "") + ", ".join(extra) + "}"
    return text
