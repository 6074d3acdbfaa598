"""Recording what one client connection is told, so that it can be replayed exactly.

Theory of operation
===================

A :class:`~meshproto.ClientConnection` is a pure function of its inputs:
its configuration, every call made to it (each with its ``now``) and every
number it draws from its random generator. :class:`RecordingConnection` is
a ``ClientConnection`` that writes all of that down, one *record* (a JSON
object) per input, to a *sink* (a callable; the adapters' sink writes JSON
lines to a file and stamps each record with the wall time). Feeding the
records back into a fresh connection (:mod:`meshproto.replay`) gives the
same events, in the same order, every time.

The records, in order:

* a header: ``{"format": "meshproto-recording", "version": 1, "meshproto":
  ..., "bodies": ..., "config": ..., "options": ...}``: the configuration
  without its keys (the signers' public keys, the sealer's class name);
* one record per input: ``{"in": NAME, "now": ..., ...arguments}`` for
  ``connect``, ``transport_opened``, ``transport_closed``, ``receive_text``,
  ``receive_binary``, ``receive_ping``, ``receive_pong``, ``handle_timer``,
  ``report_internal_error``, and the user calls ``send``, ``set_status``,
  ``set_summary``, ``list_peers``, ``take_messages`` (when the inbox holds
  something: taking from an empty one changes nothing; ``"acknowledge":
  false`` when it took without acknowledging), ``acknowledge`` (the
  message by its dedupe key, ``"key"``; ``"copy": true`` when it was
  another connection's copy of a message this one holds) and ``close``. A call that raised
  says so (``"raised"``);
* ``{"out": "events", "events": [...]}`` each time the adapter drained
  events: what the application saw, to compare a replay against.

What an input record also carries, so that nothing outside the core is
needed to replay it:

* ``"rng"``: every number the connection drew during that input (ids,
  backoff jitter): ``[k, value]`` for ``getrandbits(k)``, a float for
  ``random()``;
* ``"seal"`` and ``"open"``: what the sealer returned (a send's nonce and
  ciphertext, a push's opened body, or its error). The sealer draws its
  nonces from the caller's generator directly, not through the recorded one.

**Secrets never appear.** Keys stay in the signers and the sealer; a
recording holds their public keys only. Hello signatures are not recorded
either: the replay signs with a stand-in, and hellos are frames, not events,
so the events do not change. **Bodies are left out** unless asked for
(``bodies=True``): a send's body, a push's ``ciphertext`` and an opened
body are recorded by their length only, and the replay puts placeholders of
that length in their place; events are then compared with every body and
ciphertext reduced to its length (:func:`describe_event`). A pushed frame
whose ``ciphertext`` cannot be replaced without changing how it decodes (a
frame that is malformed anyway) is kept as it came.

Recording is the adapter's choice and costs one sink call per input; a
recording connection behaves exactly like a plain one.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
from collections.abc import Callable, Mapping
from random import Random
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from . import __version__
from ._client import ClientConfig, ClientConnection, ClientOptions, SendHandle
from ._codec import decode
from ._errors import LocalProtocolError, RemoteProtocolError
from ._events import Event
from ._frames import Push
from ._inbox import Message
from ._seams import OpenError, Sealer

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "Record",
    "RecordingConnection",
    "Sink",
    "body_from_field",
    "body_to_field",
    "config_record",
    "describe_event",
]

#: The ``format`` of a recording's header.
FORMAT = "meshproto-recording"
#: The version of the records written here; :mod:`meshproto.replay` reads this one.
FORMAT_VERSION = 1
#: What a left-out body is replaced with on replay, byte for byte.
PLACEHOLDER = "."

Record = dict[str, Any]
Sink = Callable[[Record], None]


# --- bodies -------------------------------------------------------------------


def body_to_field(data: bytes, bodies: bool) -> dict[str, Any]:
    """``data`` as a record field: with ``bodies`` as text (else base64), else only its length."""
    if not bodies:
        return {"len": len(data)}
    try:
        return {"text": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(data).decode("ascii")}


def body_from_field(field: Mapping[str, Any]) -> bytes:
    """The bytes a field stands for: the recorded body, or a placeholder as long."""
    if "text" in field:
        return str(field["text"]).encode("utf-8")
    if "b64" in field:
        return base64.b64decode(field["b64"], validate=True)
    return PLACEHOLDER.encode() * int(field["len"])


def _text_field(text: str, bodies: bool) -> Any:
    return text if bodies else {"len": len(text)}


def _decoded_as(text: str) -> str:
    try:
        frame = decode(text)
    except RemoteProtocolError as exc:
        return f"malformed: {exc}"
    return repr(dataclasses.replace(frame, ciphertext="")) if isinstance(frame, Push) else "other"


def redact_push(text: str) -> tuple[str, bool]:
    """``text`` with a push's ``ciphertext`` replaced by placeholders, if that changes nothing else.

    Returns the text to record and whether it was redacted.
    """
    if '"ciphertext"' not in text:
        return text, False
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return text, False
    if type(obj) is not dict or obj.get("type") != "push":
        return text, False
    ciphertext = obj.get("ciphertext")
    if not isinstance(ciphertext, str):
        return text, False
    obj["ciphertext"] = PLACEHOLDER * len(ciphertext)
    redacted = json.dumps(obj, separators=(",", ":"))
    if _decoded_as(redacted) != _decoded_as(text):
        return text, False
    return redacted, True


# --- events as data --------------------------------------------------------------


def _describe(value: Any, bodies: bool) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, BaseException):
        return {"error": repr(value)}
    if isinstance(value, (bytes, bytearray)):
        return body_to_field(bytes(value), bodies)
    if isinstance(value, Mapping):
        return {str(k): _describe(v, bodies) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_describe(v, bodies) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for field in dataclasses.fields(value):
            item = getattr(value, field.name)
            if field.name == "ciphertext" and isinstance(item, str):
                out[field.name] = _text_field(item, bodies)
            else:
                out[field.name] = _describe(item, bodies)
        return out
    return repr(value)


def describe_event(event: Event, bodies: bool = True) -> dict[str, Any]:
    """An event as JSON-ready data: its type and fields, recursively.

    Without ``bodies``, message bodies and push ciphertexts are reduced to
    their lengths, so that a recording made without them compares equal.
    Exceptions are described by their ``repr``.
    """
    described = _describe(event, bodies)
    assert isinstance(described, dict)
    return {"event": type(event).__name__, **described}


# --- the configuration ---------------------------------------------------------------


def _url_without_secrets(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def config_record(config: ClientConfig, options: ClientOptions, *, bodies: bool) -> Record:
    """The header of a recording: everything but the keys and the bodies."""
    session_signer = config.session_signer
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "meshproto": __version__,
        "bodies": bodies,
        "config": {
            "url": _url_without_secrets(config.url),
            "mesh_id": config.mesh_id,
            "member_id": config.member_id,
            "session_id": config.session_id,
            "pid": config.pid,
            "cwd": config.cwd,
            "display_name": config.display_name,
            "hostname": config.hostname,
            "peer_type": config.peer_type,
            "groups": (
                None if config.groups is None else [[g.name, g.role] for g in config.groups]
            ),
            "session_pubkey": config.session_pubkey,
            "attestation_ttl_ms": config.attestation_ttl_ms,
            "role": config.role,
            "public_key": config.signer.public_key,
            "session_public_key": None if session_signer is None else session_signer.public_key,
            "sealer": type(config.sealer).__name__,
        },
        "options": {
            field.name: (
                {"caps": list(options.backoff.caps), "jitter": options.backoff.jitter}
                if field.name == "backoff"
                else getattr(options, field.name)
            )
            for field in dataclasses.fields(options)
        },
    }


# --- the tapes: what the core draws and what the sealer says --------------------------


class _Tape:
    __slots__ = ("draws", "opens", "seals")

    def __init__(self) -> None:
        self.draws: list[Any] = []
        self.seals: list[dict[str, Any]] = []
        self.opens: list[dict[str, Any]] = []

    def take(self, record: Record) -> None:
        """Move what was taped during one input into its record."""
        if self.draws:
            record["rng"], self.draws = self.draws, []
        if self.seals:
            record["seal"], self.seals = self.seals, []
        if self.opens:
            record["open"], self.opens = self.opens, []


class _TapeRandom(Random):
    """Draws from ``inner`` and tapes every number drawn."""

    def __new__(cls, inner: Random, tape: _Tape) -> _TapeRandom:
        return super().__new__(cls)  # Python 3.10's Random.__new__ takes a seed at most

    def __init__(self, inner: Random, tape: _Tape) -> None:
        self._inner = inner
        self._tape = tape
        super().__init__(0)

    def random(self) -> float:
        value = self._inner.random()
        self._tape.draws.append(value)
        return value

    def getrandbits(self, k: int) -> int:
        value = self._inner.getrandbits(k)
        self._tape.draws.append([k, value])
        return value


class _TapeSealer:
    """The connection's sealer, with what it returns taped (bodies only when asked)."""

    __slots__ = ("_bodies", "_inner", "_rng", "_tape")

    def __init__(self, inner: Sealer, tape: _Tape, rng: Random, bodies: bool) -> None:
        self._inner = inner
        self._tape = tape
        self._rng = rng
        self._bodies = bodies

    def seal(self, target_spec: str, body: bytes, rng: Random) -> tuple[str, str]:
        # The caller's generator, not the taped one: a sealer's draws are its own.
        nonce, ciphertext = self._inner.seal(target_spec, body, self._rng)
        self._tape.seals.append(
            {"nonce": nonce, "ciphertext": _text_field(ciphertext, self._bodies)}
        )
        return nonce, ciphertext

    def open(self, push: Push) -> bytes:
        try:
            body = self._inner.open(push)
        except OpenError as exc:
            self._tape.opens.append({"error": str(exc)})
            raise
        except Exception as exc:
            self._tape.opens.append({"bug": repr(exc)})
            raise
        self._tape.opens.append(body_to_field(body, self._bodies))
        return body

    def __repr__(self) -> str:
        return repr(self._inner)


class RecordingConnection(ClientConnection):
    """A :class:`~meshproto.ClientConnection` that records every input to ``sink``.

    It behaves exactly like a plain connection. The header is written at
    once; then one record per input (see the module docstring) and one per
    non-empty ``drain_events()``. ``bodies`` puts message bodies in the
    recording; without it only their lengths are kept.
    """

    def __init__(
        self,
        config: ClientConfig,
        *,
        rng: Random,
        options: ClientOptions | None = None,
        sink: Sink,
        bodies: bool = False,
    ) -> None:
        tape = _Tape()
        taped = dataclasses.replace(config, sealer=_TapeSealer(config.sealer, tape, rng, bodies))
        super().__init__(taped, rng=_TapeRandom(rng, tape), options=options)
        self._tape = tape
        self._sink = sink
        self._bodies = bodies
        self._depth = 0
        sink(config_record(config, self.options, bodies=bodies))

    @property
    def bodies(self) -> bool:
        """Whether bodies are recorded."""
        return self._bodies

    def _record(self, record: Record, call: Callable[[], Any]) -> Any:
        if self._depth:  # an input made by another input (an internal error)
            return call()
        self._depth += 1
        try:
            return call()
        except LocalProtocolError as exc:
            record["raised"] = str(exc)
            raise
        except Exception as exc:
            record["raised"] = repr(exc)
            raise
        finally:
            self._depth -= 1
            self._tape.take(record)
            self._sink(record)

    # --- the inputs -----------------------------------------------------------

    def connect(self, now: float) -> None:
        self._record({"in": "connect", "now": now}, lambda: ClientConnection.connect(self, now))

    def transport_opened(self, transport_id: int, *, now: float, wall_time_ms: int) -> None:
        record = {
            "in": "transport_opened",
            "now": now,
            "transport_id": transport_id,
            "wall_time_ms": wall_time_ms,
        }
        self._record(
            record,
            lambda: ClientConnection.transport_opened(
                self, transport_id, now=now, wall_time_ms=wall_time_ms
            ),
        )

    def transport_closed(
        self, transport_id: int, *, now: float, code: int | None = None, reason: str = ""
    ) -> None:
        record = {
            "in": "transport_closed",
            "now": now,
            "transport_id": transport_id,
            "code": code,
            "reason": reason,
        }
        self._record(
            record,
            lambda: ClientConnection.transport_closed(
                self, transport_id, now=now, code=code, reason=reason
            ),
        )

    def receive_text(self, text: str, *, now: float) -> None:
        record: Record = {"in": "receive_text", "now": now, "text": text}
        if not self._bodies:
            record["text"], redacted = redact_push(text)
            if redacted:
                record["redacted"] = True
        self._record(record, lambda: ClientConnection.receive_text(self, text, now=now))

    def receive_binary(self, data: bytes, *, now: float) -> None:
        record = {"in": "receive_binary", "now": now, "data": body_to_field(data, self._bodies)}
        self._record(record, lambda: ClientConnection.receive_binary(self, data, now=now))

    def receive_ping(self, *, now: float) -> None:
        self._record(
            {"in": "receive_ping", "now": now},
            lambda: ClientConnection.receive_ping(self, now=now),
        )

    def receive_pong(self, *, now: float) -> None:
        self._record(
            {"in": "receive_pong", "now": now},
            lambda: ClientConnection.receive_pong(self, now=now),
        )

    def handle_timer(self, now: float) -> None:
        self._record(
            {"in": "handle_timer", "now": now}, lambda: ClientConnection.handle_timer(self, now)
        )

    def report_internal_error(self, error: BaseException, *, during: str, now: float) -> None:
        record = {"in": "report_internal_error", "now": now, "error": repr(error), "during": during}
        self._record(
            record,
            lambda: ClientConnection.report_internal_error(self, error, during=during, now=now),
        )

    # --- the user calls ---------------------------------------------------------------

    def send(
        self,
        target: str,
        body: str | bytes,
        priority: str = "next",
        *,
        now: float,
        client_message_id: str | None = None,
    ) -> SendHandle:
        field: dict[str, Any]
        if isinstance(body, str):
            try:
                field = {"str": True, **body_to_field(body.encode("utf-8"), self._bodies)}
            except UnicodeEncodeError:
                field = {"invalid": "text"}  # the core refuses it
        elif isinstance(body, (bytes, bytearray, memoryview)):
            field = body_to_field(bytes(body), self._bodies)
        else:
            field = {"invalid": type(body).__name__}
        record = {
            "in": "send",
            "now": now,
            "target": target,
            "body": field,
            "priority": priority,
            "client_message_id": client_message_id,
        }
        handle: SendHandle = self._record(
            record,
            lambda: ClientConnection.send(
                self, target, body, priority, now=now, client_message_id=client_message_id
            ),
        )
        return handle

    def set_status(self, status: str, *, now: float) -> None:
        self._record(
            {"in": "set_status", "now": now, "status": status},
            lambda: ClientConnection.set_status(self, status, now=now),
        )

    def set_summary(self, summary: str, *, now: float) -> None:
        self._record(
            {"in": "set_summary", "now": now, "summary": summary},
            lambda: ClientConnection.set_summary(self, summary, now=now),
        )

    def list_peers(self, *, now: float) -> str:
        request_id: str = self._record(
            {"in": "list_peers", "now": now}, lambda: ClientConnection.list_peers(self, now=now)
        )
        return request_id

    def take_messages(self, limit: int | None = None, *, acknowledge: bool = True) -> list[Message]:
        if not self.inbox_size:  # nothing to take: nothing changes, nothing to record
            return ClientConnection.take_messages(self, limit, acknowledge=acknowledge)
        record: dict[str, Any] = {"in": "take_messages", "limit": limit}
        if not acknowledge:
            record["acknowledge"] = False
        messages: list[Message] = self._record(
            record, lambda: ClientConnection.take_messages(self, limit, acknowledge=acknowledge)
        )
        return messages

    def acknowledge(self, message: Message) -> None:
        push = getattr(message, "push", None)
        key = push.dedupe_key if isinstance(push, Push) else None
        record: dict[str, Any] = {"in": "acknowledge", "key": key}
        if self._inbox.holds_another_copy(message):
            record["copy"] = True  # another connection's copy of a message this one holds
        self._record(record, lambda: ClientConnection.acknowledge(self, message))

    def close(self, *, now: float) -> None:
        self._record({"in": "close", "now": now}, lambda: ClientConnection.close(self, now=now))

    # --- what the application saw ------------------------------------------------------

    def drain_events(self) -> list[Event]:
        events = ClientConnection.drain_events(self)
        if events and not self._depth:
            self._sink(
                {"out": "events", "events": [describe_event(e, self._bodies) for e in events]}
            )
        return events
