"""Recordings of one client connection, and ``python -m meshproto.replay FILE``.

An adapter records a connection when asked (``connect(record=PATH)``, or
``MESHPROTO_RECORD=PATH`` in the environment; see
:class:`RecordingConnection` and ``meshproto/_record.py`` for the format).
This module feeds such a file back into a fresh
:class:`~meshproto.ClientConnection`, with no network, no clock, no keys and
no dependencies, and prints the events it produces, one per line. The same
file gives the same events on every run; where the recording also holds the
events the application saw, the replay compares them and says whether they
are the same (``modulo bodies`` when the bodies were left out: every body
and ciphertext compares by its length).

Exit status: 0 when the events are the ones recorded, 1 when they differ,
2 when the file cannot be replayed (not a recording, or one this version of
meshproto cannot replay: the message says which version wrote it and what
to do).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from random import Random
from typing import Any

from . import __version__
from ._backoff import Backoff
from ._client import ClientConfig, ClientConnection, ClientOptions
from ._errors import LocalProtocolError
from ._frames import Group, Push
from ._inbox import Message
from ._record import (
    FORMAT,
    FORMAT_VERSION,
    PLACEHOLDER,
    Record,
    RecordingConnection,
    Sink,
    body_from_field,
    describe_event,
)
from ._seams import OpenError

__all__ = [
    "FORMAT_VERSION",
    "Recording",
    "RecordingConnection",
    "Replay",
    "ReplayError",
    "Sink",
    "describe_event",
    "load",
    "main",
    "replay",
]


class ReplayError(Exception):
    """The file cannot be replayed by this meshproto; the message says why and what to do."""


@dataclass
class Recording:
    """A recording read from a file: its header and its records, with their line numbers."""

    path: str
    header: Record
    records: list[tuple[int, Record]]
    notes: list[str] = field(default_factory=list)

    @property
    def made_by(self) -> str:
        return str(self.header.get("meshproto", "an unknown version"))

    @property
    def bodies(self) -> bool:
        return bool(self.header.get("bodies"))


@dataclass
class Replay:
    """What replaying a recording gave."""

    inputs: int = 0
    #: (input number, the input's name, the event described) in order.
    events: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    #: How many recorded batches of events were compared.
    compared: int = 0
    #: The first difference from the recorded events, if any.
    difference: str | None = None

    @property
    def same(self) -> bool:
        return self.difference is None


# --- reading -------------------------------------------------------------------------


def _old_or_new(path: str, header: Mapping[str, Any]) -> ReplayError:
    version = header.get("version")
    made_by = header.get("meshproto", "an unknown version")
    if isinstance(version, int) and not isinstance(version, bool) and version < FORMAT_VERSION:
        return ReplayError(
            f"{path} was recorded by meshproto {made_by} in recording format {version}; "
            f"this meshproto ({__version__}) replays format {FORMAT_VERSION} only. Replay it "
            f"with meshproto {made_by} (pip install 'meshproto=={made_by}'), or record the "
            "session again."
        )
    return ReplayError(
        f"{path} was recorded by meshproto {made_by} in recording format {version!r}, which "
        f"this meshproto ({__version__}) does not know (it replays format {FORMAT_VERSION}). "
        f"Replay it with meshproto {made_by} or later."
    )


def load(path: str | Path) -> Recording:
    """Read a recording; raise :class:`ReplayError` if it is not one this version replays."""
    name = str(path)
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ReplayError(f"cannot read {name}: {exc}") from None
    if not lines:
        raise ReplayError(f"{name} is empty: not a meshproto recording")
    try:
        header = json.loads(lines[0])
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ReplayError(
            f"{name} is not a meshproto recording (its first line is not a "
            f'{{"format": "{FORMAT}", ...}} header)'
        )
    if header.get("version") != FORMAT_VERSION:
        raise _old_or_new(name, header)
    recording = Recording(name, header, [])
    last = len(lines)
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            if number == last:  # the process stopped while writing it
                recording.notes.append(f"line {number} is cut short and was left out")
                continue
            raise ReplayError(f"{name}, line {number}: not JSON") from None
        if not isinstance(record, dict) or not ("in" in record or "out" in record):
            raise ReplayError(f"{name}, line {number}: not a record of an input or an output")
        recording.records.append((number, record))
    return recording


# --- stand-ins for what the recording left out ----------------------------------------------


class _RecordedKey:
    """A signer known only by its public key: the replay's hellos carry no real signature."""

    __slots__ = ("public_key",)

    def __init__(self, public_key: str) -> None:
        self.public_key = public_key

    def sign(self, message: bytes) -> bytes:
        return bytes(64)


class _RecordedError(Exception):
    """An exception as the recording described it (by its ``repr``)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __repr__(self) -> str:
        return self.text


class _Diverged(ReplayError):
    pass


class _Tapes:
    """What the recording says the core drew and the sealer returned, input by input."""

    def __init__(self) -> None:
        self.draws: list[Any] = []
        self.seals: list[dict[str, Any]] = []
        self.opens: list[dict[str, Any]] = []
        self.where = ""

    def load(self, record: Mapping[str, Any], where: str) -> None:
        self.draws = list(record.get("rng", ()))
        self.seals = list(record.get("seal", ()))
        self.opens = list(record.get("open", ()))
        self.where = where

    def next(self, tape: list[Any], what: str) -> Any:
        if not tape:
            raise _Diverged(
                f"{self.where}: the core asked for {what} that the recording does not hold"
            )
        return tape.pop(0)

    def left(self) -> str | None:
        for tape, what in (
            (self.draws, "random numbers"),
            (self.seals, "seals"),
            (self.opens, "opened bodies"),
        ):
            if tape:
                return f"{len(tape)} recorded {what} were never asked for"
        return None


class _PlaybackRandom(Random):
    def __init__(self, tapes: _Tapes) -> None:
        self._tapes = tapes
        super().__init__(0)

    def random(self) -> float:
        value = self._tapes.next(self._tapes.draws, "a random float")
        if not isinstance(value, float):
            raise _Diverged(
                f"{self._tapes.where}: the core drew a float where the recording has {value!r}"
            )
        return value

    def getrandbits(self, k: int) -> int:
        value = self._tapes.next(self._tapes.draws, f"{k} random bits")
        if not (isinstance(value, list) and len(value) == 2 and value[0] == k):
            raise _Diverged(
                f"{self._tapes.where}: the core drew {k} random bits where the recording has "
                f"{value!r}"
            )
        bits = value[1]
        assert isinstance(bits, int)
        return bits


class _PlaybackSealer:
    __slots__ = ("_tapes",)

    def __init__(self, tapes: _Tapes) -> None:
        self._tapes = tapes

    def seal(self, target_spec: str, body: bytes, rng: Random) -> tuple[str, str]:
        sealed = self._tapes.next(self._tapes.seals, "a sealed body")
        ciphertext = sealed["ciphertext"]
        if isinstance(ciphertext, dict):
            ciphertext = PLACEHOLDER * int(ciphertext["len"])
        return str(sealed["nonce"]), str(ciphertext)

    def open(self, push: Push) -> bytes:
        opened = self._tapes.next(self._tapes.opens, "an opened body")
        if "error" in opened:
            raise OpenError(str(opened["error"]))
        if "bug" in opened:
            raise _RecordedError(str(opened["bug"]))
        return body_from_field(opened)


class _Replayed(ClientConnection):
    """A fresh connection that remembers each message it hands over, to acknowledge it by key."""

    def __init__(self, config: ClientConfig, *, rng: Random, options: ClientOptions) -> None:
        super().__init__(config, rng=rng, options=options)
        self.handed: dict[str, Message] = {}

    def take_messages(self, limit: int | None = None, *, acknowledge: bool = True) -> list[Message]:
        messages = super().take_messages(limit, acknowledge=acknowledge)
        for message in messages:
            self.handed[message.push.dedupe_key] = message
        return messages

    def acknowledge_key(self, key: object, *, copy: bool = False) -> None:
        """``acknowledge()`` of the message handed over under ``key`` (it raises as recorded).

        With ``copy``, of an equal copy of it, as another connection's would be.
        """
        message = self.handed.get(key) if isinstance(key, str) else None
        if message is None:
            raise LocalProtocolError(f"cannot acknowledge message {key}: never taken")
        self.acknowledge(dataclasses.replace(message) if copy else message)


def _acknowledge(core: ClientConnection, record: Mapping[str, Any]) -> None:
    assert isinstance(core, _Replayed)
    core.acknowledge_key(record["key"], copy=record.get("copy", False) is True)


def _connection(recording: Recording, tapes: _Tapes) -> ClientConnection:
    header = recording.header
    try:
        config = header["config"]
        options = dict(header["options"])
        backoff = options.pop("backoff")
        known = {f for f in ClientOptions.__dataclass_fields__}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ReplayError(
                f"{recording.path} sets options this meshproto ({__version__}) does not know "
                f"({', '.join(unknown)}): it was recorded by meshproto {recording.made_by}"
            )
        groups = config.get("groups")
        session_key = config.get("session_public_key")
        return _Replayed(
            ClientConfig(
                url=config["url"],
                mesh_id=config["mesh_id"],
                member_id=config["member_id"],
                signer=_RecordedKey(config["public_key"]),
                session_id=config["session_id"],
                pid=config.get("pid", 0),
                cwd=config.get("cwd", ""),
                display_name=config.get("display_name"),
                hostname=config.get("hostname"),
                peer_type=config.get("peer_type"),
                groups=None if groups is None else tuple(Group(n, r) for n, r in groups),
                session_pubkey=config.get("session_pubkey"),
                sealer=_PlaybackSealer(tapes),
                session_signer=None if session_key is None else _RecordedKey(session_key),
                attestation_ttl_ms=config["attestation_ttl_ms"],
                role=config.get("role"),
            ),
            rng=_PlaybackRandom(tapes),
            options=ClientOptions(
                **options, backoff=Backoff(tuple(backoff["caps"]), bool(backoff["jitter"]))
            ),
        )
    except ReplayError:
        raise
    except (KeyError, TypeError, ValueError, LocalProtocolError) as exc:
        raise ReplayError(
            f"{recording.path}: its header does not describe a connection this meshproto "
            f"({__version__}) can make ({exc!r}); it was recorded by meshproto "
            f"{recording.made_by}"
        ) from None


# --- the inputs ------------------------------------------------------------------------------


def _send_body(field: Mapping[str, Any]) -> Any:
    if field.get("invalid") == "text":
        return "\ud800"  # text the core refuses, as the recorded one was
    if "invalid" in field:
        return None  # not str or bytes, as the recorded one was not
    data = body_from_field(field)
    return data.decode("utf-8") if field.get("str") else data


_Call = Callable[[ClientConnection, Mapping[str, Any]], Any]

_CALLS: dict[str, _Call] = {
    "connect": lambda c, r: c.connect(r["now"]),
    "transport_opened": lambda c, r: c.transport_opened(
        r["transport_id"], now=r["now"], wall_time_ms=r["wall_time_ms"]
    ),
    "transport_closed": lambda c, r: c.transport_closed(
        r["transport_id"], now=r["now"], code=r["code"], reason=r["reason"]
    ),
    "receive_text": lambda c, r: c.receive_text(r["text"], now=r["now"]),
    "receive_binary": lambda c, r: c.receive_binary(body_from_field(r["data"]), now=r["now"]),
    "receive_ping": lambda c, r: c.receive_ping(now=r["now"]),
    "receive_pong": lambda c, r: c.receive_pong(now=r["now"]),
    "handle_timer": lambda c, r: c.handle_timer(r["now"]),
    "report_internal_error": lambda c, r: c.report_internal_error(
        _RecordedError(r["error"]), during=r["during"], now=r["now"]
    ),
    "send": lambda c, r: c.send(
        r["target"],
        _send_body(r["body"]),
        r["priority"],
        now=r["now"],
        client_message_id=r["client_message_id"],
    ),
    "set_status": lambda c, r: c.set_status(r["status"], now=r["now"]),
    "set_summary": lambda c, r: c.set_summary(r["summary"], now=r["now"]),
    "list_peers": lambda c, r: c.list_peers(now=r["now"]),
    "take_messages": lambda c, r: c.take_messages(
        r["limit"], acknowledge=r.get("acknowledge", True)
    ),
    "acknowledge": _acknowledge,
    "close": lambda c, r: c.close(now=r["now"]),
}


def _normal(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(value))


def replay(recording: Recording) -> Replay:
    """Feed every recorded input to a fresh connection; collect and compare the events.

    Raises :class:`ReplayError` if the recording cannot be replayed (an input
    this version does not know, or a core that draws differently from the one
    that recorded it).
    """
    tapes = _Tapes()
    core = _connection(recording, tapes)
    result = Replay()
    bodies = recording.bodies
    pending: list[dict[str, Any]] = []
    for number, record in recording.records:
        if "out" in record:
            if record["out"] == "events":
                recorded = _normal(record.get("events", []))
                replayed = _normal(pending)
                pending = []
                result.compared += 1
                if replayed != recorded and result.difference is None:
                    result.difference = _difference(number, recorded, replayed)
            continue
        name = record["in"]
        call = _CALLS.get(name)
        where = f"{recording.path}, line {number} ({name})"
        if call is None:
            raise ReplayError(
                f"{where}: an input this meshproto ({__version__}) does not know; it was "
                f"recorded by meshproto {recording.made_by}"
            )
        result.inputs += 1
        tapes.load(record, where)
        raised: str | None = None
        try:
            call(core, record)
        except _Diverged as exc:
            raise ReplayError(
                f"{exc}. This core draws differently from the one that recorded the file "
                f"(meshproto {recording.made_by}); replay it with that version."
            ) from None
        except LocalProtocolError as exc:
            raised = str(exc)
        except (KeyError, TypeError, ValueError) as exc:
            raise ReplayError(f"{where}: a record this meshproto cannot read: {exc!r}") from None
        if raised is not None and "raised" not in record and result.difference is None:
            result.difference = f"{where}: the call raised on replay ({raised}), not when recorded"
        elif raised is None and "raised" in record and result.difference is None:
            result.difference = (
                f"{where}: the call raised when recorded ({record['raised']}), not on replay"
            )
        left = tapes.left()
        if left is not None:
            raise ReplayError(
                f"{where}: {left}. This core behaves differently from the one that recorded "
                f"the file (meshproto {recording.made_by}); replay it with that version."
            )
        for event in core.drain_events():
            described = describe_event(event, bodies)
            pending.append(described)
            result.events.append((result.inputs, name, described))
    return result


def _difference(line: int, recorded: list[Any], replayed: list[Any]) -> str:
    for index, (a, b) in enumerate(zip(recorded, replayed, strict=False)):
        if a != b:
            return (
                f"line {line}: event {index + 1} of the batch differs:\n"
                f"  recorded: {json.dumps(a, sort_keys=True)}\n"
                f"  replayed: {json.dumps(b, sort_keys=True)}"
            )
    return (
        f"line {line}: {len(recorded)} events recorded, {len(replayed)} replayed:\n"
        f"  recorded: {json.dumps(recorded[len(replayed) :], sort_keys=True)}\n"
        f"  replayed: {json.dumps(replayed[len(recorded) :], sort_keys=True)}"
    )


# --- the command ---------------------------------------------------------------------------


def _line(number: int, name: str, event: Mapping[str, Any]) -> str:
    fields = {k: v for k, v in event.items() if k != "event"}
    return f"{number:>6} {name:<21} {event['event']} {json.dumps(fields, sort_keys=True)}"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m meshproto.replay FILE``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m meshproto.replay",
        description="Feed a recorded client connection back into a fresh ClientConnection "
        "and print the events it produces.",
    )
    parser.add_argument("file", help="a recording (JSON lines), from connect(record=...)")
    parser.add_argument("--json", action="store_true", help="print each event as a JSON line")
    parser.add_argument("--quiet", action="store_true", help="print only the verdict")
    args = parser.parse_args(argv)
    try:
        recording = load(args.file)
        result = replay(recording)
    except ReplayError as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        for number, name, event in result.events:
            if args.json:
                print(json.dumps({"input": number, "call": name, **event}, sort_keys=True))
            else:
                print(_line(number, name, event))
    for note in recording.notes:
        print(f"replay: note: {note}")
    modulo = " (modulo bodies, which were not recorded)" if not recording.bodies else ""
    summary = (
        f"replay: {result.inputs} inputs, {len(result.events)} events, recorded by meshproto "
        f"{recording.made_by}"
    )
    if result.difference is not None:
        print(f"{summary}: the events DIFFER from the recording{modulo}")
        print(result.difference)
        return 1
    if result.compared:
        print(f"{summary}: the same events as recorded{modulo}")
    else:
        print(f"{summary}: no recorded events to compare with")
    return 0


if __name__ == "__main__":
    sys.exit(main())
