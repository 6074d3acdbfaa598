"""The wire codec: one ``encode(frame) -> str`` and one ``decode(text) -> frame``.

Each WebSocket text message is one JSON object with a string ``type``
(docs/protocol.md §1). ``decode`` checks that shape, the type of every field it
knows and the presence of every required one, and ignores fields it does not
know. A ``type`` it does not know becomes :class:`UnknownFrame`. Anything else
(malformed JSON, a non-object, a wrong field type, a binary payload) raises
:class:`RemoteProtocolError` with a message that says what was wrong.

``decode`` is the one gate between the network and everything else, so it
also refuses text that parses but could not be carried onward:

* a string anywhere in the frame (a key or a value, in a known field or an
  unknown one) that is not valid Unicode, i.e. a lone surrogate such as the
  JSON escape ``"\\ud800"``: no later ``encode``, signature, log line or
  store could write it as UTF-8;
* the literals ``NaN``, ``Infinity`` and ``-Infinity``, which are not JSON;
* an integer outside the signed 64-bit range in a field the codec types as
  an integer, and anywhere an integer of more than 20 digits (which no
  64-bit value has, and whose conversion would cost quadratic time).

Such a frame is malformed as a whole. Duplicate keys are allowed; the last
one wins, as in every common JSON parser. Nesting deep enough to exhaust the
parser is malformed too.

The field tables are derived once, at import, from the dataclass metadata in
:mod:`meshproto._frames`, so a frame's shape is written in one place only.
From each table the codec then writes out, once, a decoder and an encoder
for that class (as :mod:`dataclasses` writes ``__init__``): the same steps as
a loop over the table, without the loop's cost on every frame.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import MISSING, fields
from typing import Any, ParamSpec

from ._errors import LocalProtocolError, RemoteProtocolError
from ._frames import (
    Ack,
    ClientAck,
    ErrorFrame,
    Frame,
    Group,
    Hello,
    HelloAck,
    ListPeers,
    ParentAttestation,
    Peer,
    PeersList,
    Push,
    Send,
    SessionHello,
    SetStatus,
    SetSummary,
    UnknownFrame,
)
from ._quick import slot_setters

__all__ = [
    "FRAME_TYPES",
    "INT64_MAX",
    "INT64_MIN",
    "compact_json",
    "decode",
    "encode",
    "frame_text",
    "is_unicode_text",
    "loads",
]

P = ParamSpec("P")

#: The range of an integer field (JSON numbers beyond it lose precision in
#: most peers, and no store column takes them).
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

# (attribute, wire name, kind, required, default)
_Field = tuple[str, str, str, bool, Any]

_TYPED = (
    Hello,
    SessionHello,
    HelloAck,
    Send,
    Ack,
    ErrorFrame,
    Push,
    ClientAck,
    SetStatus,
    SetSummary,
    ListPeers,
    PeersList,
)

#: Every frame type this version knows, by its wire ``type``.
FRAME_TYPES: dict[str, type[Any]] = {cls.TYPE: cls for cls in _TYPED}


def _table(cls: type[Any]) -> tuple[_Field, ...]:
    return tuple(
        (
            f.name,
            f.metadata["wire"],
            f.metadata["kind"],
            f.default is MISSING,
            None if f.default is MISSING else f.default,
        )
        for f in fields(cls)
    )


_TABLES: dict[type[Any], tuple[_Field, ...]] = {
    cls: _table(cls) for cls in (*_TYPED, Group, Peer, ParentAttestation)
}

_JSON_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    dict: "an object",
    list: "an array",
    type(None): "null",
}


def _wrong(where: str, wire: str, want: str, value: object) -> RemoteProtocolError:
    got = _JSON_NAMES.get(type(value), type(value).__name__)
    return RemoteProtocolError(f"{where}: field {wire!r} must be {want}, got {got}")


def _dec_str(v: object, where: str, wire: str) -> Any:
    if type(v) is str:
        return v
    raise _wrong(where, wire, "a string", v)


def _dec_int(v: object, where: str, wire: str) -> Any:
    if type(v) is int:
        if INT64_MIN <= v <= INT64_MAX:
            return v
        raise RemoteProtocolError(
            f"{where}: field {wire!r} must be a 64-bit integer, got one of {v.bit_length()} bits"
        )
    raise _wrong(where, wire, "an integer", v)


def _dec_bool(v: object, where: str, wire: str) -> Any:
    if type(v) is bool:
        return v
    raise _wrong(where, wire, "a boolean", v)


def _dec_obj(v: object, where: str, wire: str) -> Any:
    if type(v) is dict:
        return v
    raise _wrong(where, wire, "an object", v)


def _dec_list_of(cls: type[Any]) -> Callable[[object, str, str], Any]:
    def dec(v: object, where: str, wire: str) -> Any:
        if type(v) is not list:
            raise _wrong(where, wire, "an array", v)
        out = []
        for i, item in enumerate(v):
            if type(item) is not dict:
                raise _wrong(where, f"{wire}[{i}]", "an object", item)
            out.append(_DECODE[cls](item, f"{where}.{wire}[{i}]"))
        return tuple(out)

    return dec


def _dec_attestation(v: object, where: str, wire: str) -> Any:
    if type(v) is not dict:
        raise _wrong(where, wire, "an object", v)
    return _DECODE[ParentAttestation](v, f"{where}.{wire}")


_DECODERS: dict[str, Callable[[object, str, str], Any]] = {
    "str": _dec_str,
    "int": _dec_int,
    "bool": _dec_bool,
    "obj": _dec_obj,
    "groups": _dec_list_of(Group),
    "peers": _dec_list_of(Peer),
    "attestation": _dec_attestation,
}

_ABSENT = object()


def is_unicode_text(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8 (it holds no lone surrogate)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _not_json(literal: str) -> Any:
    raise ValueError(f"{literal} is not a JSON value")


def _parse_int(digits: str) -> int:
    # Longer than any 64-bit integer: refused before int() does quadratic work.
    if len(digits) > 20:
        raise ValueError(f"an integer of {len(digits)} digits is out of range")
    return int(digits)


_decoder = json.JSONDecoder(parse_constant=_not_json, parse_int=_parse_int)
_strict_loads = _decoder.decode
#: What ``raw_decode`` calls (the C scanner, made once with the decoder; not in typeshed).
_scan_once: Callable[[str, int], tuple[Any, int]] = _decoder.scan_once  # type: ignore[attr-defined]


def _parse(text: str) -> Any:
    """``_strict_loads(text)``, without its two whitespace scans for a frame that has none.

    A frame is one object, and every peer writes it with no whitespace
    around it; anything else (whitespace, junk after the object, an error)
    takes the decoder's own path, which says what was wrong.
    """
    if text[:1] == "{":
        try:
            obj, end = _scan_once(text, 0)
        except StopIteration:
            pass
        else:
            if end == len(text):
                return obj
    return _strict_loads(text)


def _first_lone_surrogate(value: object) -> str | None:
    """A string (key or value) anywhere in ``value`` that is not valid Unicode, or None.

    Iterative, so that a deep document cannot exhaust the stack here.
    """
    stack: list[object] = [value]
    while stack:
        item = stack.pop()
        if type(item) is str:
            if not is_unicode_text(item):
                return item
        elif type(item) is dict:
            for key, inner in item.items():
                if not is_unicode_text(str(key)):
                    return str(key)
                stack.append(inner)
        elif type(item) is list:
            stack.extend(item)
    return None


def loads(text: str) -> Any:
    """Parse ``text`` as strict JSON that can be carried onward; see the module docstring.

    Raises :class:`RemoteProtocolError` for malformed JSON, the non-JSON
    literals ``NaN``/``Infinity``, nesting too deep to parse, and any string
    in the document that is not valid Unicode.
    """
    if not is_unicode_text(text):
        raise RemoteProtocolError("malformed text: it holds a lone surrogate (not valid Unicode)")
    try:
        obj = _parse(text)
    except (ValueError, RecursionError) as exc:
        raise RemoteProtocolError(f"malformed JSON: {exc}") from None
    # Only an escape can make a lone surrogate out of valid text.
    if "\\u" in text:
        bad = _first_lone_surrogate(obj)
        if bad is not None:
            raise RemoteProtocolError(
                f"malformed JSON: the string {bad[:40]!r} holds a lone surrogate "
                "(not valid Unicode)"
            )
    return obj


def _compact_json() -> Callable[[Any], str]:
    """``json.dumps(obj, separators=(",", ":"), ensure_ascii=False)``, made cheaper.

    ``json.dumps`` with options builds a ``JSONEncoder`` per call, and
    ``JSONEncoder.encode`` builds its C encoder again per call: about half
    the cost of encoding a small frame. This builds the C encoder once, with
    the same arguments ``JSONEncoder.iterencode`` gives it, except that it
    keeps no markers to detect a value that contains itself (what is encoded
    here comes from decoded JSON or from a frame's own fields; such a value
    would raise ``RecursionError``, not ``ValueError``). Without the C
    accelerator, or if it does not take those arguments, it is the
    encoder's own ``encode``.
    """
    encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython has it
        return encoder.encode
    try:
        chunks = make(
            None,
            encoder.default,
            json.encoder.encode_basestring,
            None,
            ":",
            ",",
            False,
            False,
            True,
        )
        probe = {"a": [1, -2.5, None, True, "\u00e9\n"], "b": {}}
        if "".join(chunks(probe, 0)) != encoder.encode(probe):  # pragma: no cover
            return encoder.encode
    except Exception:  # pragma: no cover - a C encoder of another signature
        return encoder.encode
    join = "".join

    def dumps(obj: Any) -> str:
        return join(chunks(obj, 0))

    return dumps


#: Compact JSON, as every frame is written (see :func:`_compact_json`).
compact_json = _compact_json()
#: A string as the encoder writes it, quotes and escapes (``ensure_ascii=False``).
_quote: Callable[[str], str] = json.encoder.encode_basestring


def _decode_field(v: object, where: str, spec: _Field) -> Any:
    """One field's value off the fast path: absent, null, or not a plain string."""
    _attr, wire, kind, required, default = spec
    if v is _ABSENT or (v is None and not required):
        if required:
            raise RemoteProtocolError(f"{where}: missing required field {wire!r}")
        return default
    return _DECODERS[kind](v, where, wire)


def _compile(name: str, lines: list[str], namespace: dict[str, Any]) -> Any:
    exec("\n".join(lines), namespace)  # our own field tables, never input
    return namespace[name]


#: The kinds whose values are checked by their type alone (``_dec_str``, ``_dec_bool``).
_PLAIN_KINDS = {"str": "str", "bool": "bool"}


def _make_decoder(cls: type[Any]) -> Callable[[dict[str, Any], str], Any]:
    """A function ``(obj, where) -> cls(...)`` written out for ``cls``'s table.

    What a loop over the table would do, field by field and in the same
    order (so the same first error), without the loop: a string (or boolean)
    field that holds one, the common case, costs one ``get`` and one type
    check.
    """
    table = _TABLES[cls]
    namespace: dict[str, Any] = {"cls": cls, "ABSENT": _ABSENT, "field": _decode_field}
    lines = ["def decode(obj, where):", "    get = obj.get"]
    for i, spec in enumerate(table):
        _attr, wire, kind, required, default = spec
        namespace[f"f{i}"], namespace[f"d{i}"] = spec, default
        plain = _PLAIN_KINDS.get(kind)  # a kind whose whole rule is its type
        if plain is None and required:  # checked by its kind's decoder, always
            lines.append(f"    v{i} = field(get({wire!r}, ABSENT), where, f{i})")
        elif plain is None:  # absent and null are the same: the default
            lines.append(f"    v{i} = get({wire!r})")
            lines.append(f"    v{i} = d{i} if v{i} is None else field(v{i}, where, f{i})")
        elif required:
            lines.append(f"    v{i} = get({wire!r}, ABSENT)")
            lines.append(f"    if type(v{i}) is not {plain}: v{i} = field(v{i}, where, f{i})")
        elif default is None:  # absent and null are the same: None
            lines.append(f"    v{i} = get({wire!r})")
            lines.append(
                f"    if v{i} is not None and type(v{i}) is not {plain}: "
                f"v{i} = field(v{i}, where, f{i})"
            )
        else:  # absent and null are the same: the default
            lines.append(f"    v{i} = get({wire!r})")
            lines.append(f"    if v{i} is None: v{i} = d{i}")
            lines.append(f"    elif type(v{i}) is not {plain}: v{i} = field(v{i}, where, f{i})")
    lines.extend(_construction(cls, namespace))
    return _compile("decode", lines, namespace)  # type: ignore[no-any-return]


def _construction(cls: type[Any], namespace: dict[str, Any]) -> list[str]:
    """The lines that make a ``cls`` of the checked values ``v0``, ``v1`` ...

    A frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__``; with slots and nothing to run after ``__init__``,
    setting the slots directly makes the same frame in about 60% of the time
    (a push: 1.0 us instead of 1.6 us). Any other class is called.
    """
    attrs = [spec[0] for spec in _TABLES[cls]]
    setters = slot_setters(cls, attrs)
    if setters is None:
        return [f"    return cls({', '.join(f'v{i}' for i in range(len(attrs)))})"]
    namespace["new"] = object.__new__
    lines = ["    frame = new(cls)"]
    for i, setter in enumerate(setters):
        namespace[f"s{i}"] = setter  # the slot's own setter
        lines.append(f"    s{i}(frame, v{i})")
    lines.append("    return frame")
    return lines


def _make_encoder(cls: type[Any]) -> Callable[[Any, dict[str, Any]], None]:
    """A function ``(frame, out)`` that writes ``cls``'s fields into ``out``, written out.

    A field left ``None`` is left out unless it is required; a nested value
    (groups, peers, an attestation, an object) is converted on its way.
    """
    namespace: dict[str, Any] = {"value": _enc_value}
    lines = ["def encode(frame, out):"]
    for attr, wire, kind, required, _default in _TABLES[cls]:
        written = "v" if kind in ("str", "int", "bool") else f"value({kind!r}, v)"
        lines.append(f"    v = frame.{attr}")
        if required:
            lines.append(f"    out[{wire!r}] = {written}")
        else:
            lines.append(f"    if v is not None: out[{wire!r}] = {written}")
    return _compile("encode", lines, namespace)  # type: ignore[no-any-return]


def decode(data: str | bytes | bytearray) -> Frame:
    """Decode one WebSocket message into a frame.

    Raises :class:`RemoteProtocolError` for a binary payload, malformed JSON, a
    JSON value that is not an object, a missing or non-string ``type``, or a
    known frame whose fields have the wrong types or are missing.
    """
    # The frame nearly every message is: ASCII (so valid Unicode), with no
    # escape that could make a lone surrogate, one object and nothing around
    # it, of a known type. Anything else, including every error, takes the
    # full path below, which parses it again and says what was wrong.
    if type(data) is str and data[:1] == "{" and data.isascii() and "\\u" not in data:
        try:
            obj, end = _scan_once(data, 0)
        except (StopIteration, ValueError, RecursionError):
            pass
        else:
            if end == len(data):
                frame_type = obj.get("type")
                if type(frame_type) is str:
                    decoder = _DECODE_BY_TYPE.get(frame_type)
                    if decoder is not None:
                        return decoder(obj, frame_type)  # type: ignore[no-any-return]
    return _decode_in_full(data)


def _decode_in_full(data: str | bytes | bytearray) -> Frame:
    if not isinstance(data, str):
        raise RemoteProtocolError(
            f"binary message of {len(data)} bytes: the protocol allows only text messages"
        )
    obj = loads(data)
    if type(obj) is not dict:
        got = _JSON_NAMES.get(type(obj), type(obj).__name__)
        raise RemoteProtocolError(f"a frame must be a JSON object, got {got}")
    frame_type = obj.get("type", _ABSENT)
    if frame_type is _ABSENT:
        raise RemoteProtocolError("frame: missing required field 'type'")
    if type(frame_type) is not str:
        raise _wrong("frame", "type", "a string", frame_type)
    cls = FRAME_TYPES.get(frame_type)
    if cls is None:
        return UnknownFrame(frame_type, obj)
    frame: Frame = _DECODE[cls](obj, frame_type)
    return frame


def _enc_value(kind: str, v: Any) -> Any:
    if kind in ("groups", "peers"):
        return [_encode_object(item) for item in v]
    if kind == "attestation":
        return _encode_object(v)
    if kind == "obj":
        return dict(v)
    return v


def frame_text(cls: Callable[P, Any]) -> Callable[P, str]:
    """A function that takes what ``cls`` takes and returns the frame's text.

    ``frame_text(Ack)(send_id, message_id, True)`` is
    ``encode(Ack(send_id, message_id, True))``, without making the frame:
    for the frames the broker and the client write per message, whose
    instances nobody reads. Written out once from ``cls``'s table, with its
    constructor's parameters, in order, and their defaults.

    The text is joined from pieces rather than dumped from a dict: each key
    with its punctuation is a constant, a string value goes through the same
    C escaper the encoder uses, and any other value is dumped on its own
    (the encoder writes a value inside an object exactly as it writes it
    alone). So the text is byte for byte what :func:`encode` writes, in about
    half the time.
    """
    table = _TABLES[cls]  # type: ignore[index]
    namespace: dict[str, Any] = {
        "value": _enc_value,
        "dumps": compact_json,
        "quote": _quote,
        "join": "".join,
    }
    params = []
    body: list[str] = []
    # The pieces since the last optional field: a constant (True) or an expression.
    run: list[tuple[bool, str]] = [(True, '{"type":' + json.dumps(cls.TYPE))]  # type: ignore[attr-defined]

    def add_constant(text: str) -> None:
        if run and run[-1][0]:
            run[-1] = (True, run[-1][1] + text)
        else:
            run.append((True, text))

    def flush_run() -> None:
        if run:
            items = ", ".join(repr(text) if constant else text for constant, text in run)
            body.append(f"    parts += ({items},)" if body else f"    parts = [{items}]")
            run.clear()

    for i, (attr, wire, kind, required, default) in enumerate(table):
        if required:
            params.append(attr)
        else:
            namespace[f"d{i}"] = default
            params.append(f"{attr}=d{i}")
        if kind == "str":
            written = f"(quote({attr}) if type({attr}) is str else dumps({attr}))"
        elif kind == "bool":
            written = f"('true' if {attr} is True else 'false' if {attr} is False else "
            written += f"dumps({attr}))"
        elif kind == "int":
            written = f"dumps({attr})"
        else:
            written = f"dumps(value({kind!r}, {attr}))"
        key = "," + json.dumps(wire) + ":"
        if required:
            add_constant(key)
            run.append((False, written))
        else:
            flush_run()
            body.append(f"    if {attr} is not None: parts += ({key!r}, {written})")
    add_constant("}")
    flush_run()
    body.append("    return join(parts)")
    return _compile("text", [f"def text({', '.join(params)}):", *body], namespace)  # type: ignore[no-any-return]


def _encode_object(obj: Any, into: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {} if into is None else into
    _ENCODE[type(obj)](obj, out)
    return out


#: Per class: its decoder and its encoder, written out once from its table.
_DECODE = {cls: _make_decoder(cls) for cls in _TABLES}
_ENCODE = {cls: _make_encoder(cls) for cls in _TABLES}
#: Per frame type on the wire: its decoder.
_DECODE_BY_TYPE = {name: _DECODE[cls] for name, cls in FRAME_TYPES.items()}


def encode(frame: Frame) -> str:
    """Encode a frame as the text of one WebSocket message (compact JSON)."""
    if isinstance(frame, UnknownFrame):
        body = dict(frame.fields)
        body["type"] = frame.type
        return compact_json(body)
    if type(frame) not in _TABLES or not hasattr(frame, "TYPE"):
        raise LocalProtocolError(f"cannot encode {type(frame).__name__}: not a frame")
    out = _encode_object(frame, {"type": frame.TYPE})
    return compact_json(out)
