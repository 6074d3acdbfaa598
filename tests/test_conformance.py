"""Replay the real broker's recorded transcripts through ``ClientConnection``.

The transcripts in ``tests/fixtures/real-broker/*.jsonl`` were recorded
against a running copy of the real claudemesh broker (see the README beside
them, and ``docs/protocol.md``). Each line is one record ``{t, conn, dir, ...}``. The
records are grouped by ``conn`` and every recorded connection drives one fresh
``ClientConnection`` through its public API, in record order:

* ``open``: ``connect(t)``, then ``transport_opened`` for the transport the
  client asked for. The client writes its own hello (signed by a
  ``FakeSigner``); the recorded hello is not replayed.
* ``out``: what the recorded client did, redone through the public API:
  ``send`` becomes ``client.send(targetSpec, body, priority)``, ``list_peers``
  becomes ``client.list_peers()``, ``set_summary``/``set_status`` likewise.
  ``hello``, ``session_hello`` and ``client_ack`` are not replayed: the client
  writes its own, and its client_acks are compared with the recorded ones.
  The client picks its own send and request ids, so the recorded ids are
  mapped to the client's and rewritten in the broker's answers (``ack`` and
  ``error`` ``id``, ``peers_list`` and ``error`` ``_reqId``).
* ``in``: ``receive_text``, then ``take_messages()`` (the replayed application
  takes every message at once, as the recording client did, so that each
  ``client_ack`` follows its push); ``ping``: ``receive_ping``; ``close``:
  ``transport_closed``. ``note`` and ``summary`` records are not inputs.
* Before every record, the client's timers that are due by then run
  (``handle_timer`` at each ``next_deadline()``), as an adapter would run them.

Bodies. A replayed send carries a body of the recorded payload's size: the
recorded ciphertext decoded from base64 (so a broadcast's frame is the recorded
frame, ids and nonce aside), or, for the g_oversize ciphertexts that the
recorder truncated to ``"AAA...<N chars>"``, N*3/4 zero bytes (whose base64 is
N characters of ``A``, as recorded).

Sends the client refuses locally. A send must raise ``LocalProtocolError``
when its body exceeds 65,536 bytes, when the frame as this client writes it
(compact JSON of the same fields, with ids and nonce of the recorded lengths)
exceeds 65,536 bytes, or when its target is not a docs/protocol.md §4.1 target spec.
The broker's answer to such a recorded send is still fed, unchanged (its id
matches nothing the client sent): it must decode and change nothing. In
g_oversize that is the case for frame_1000000_bytes, frame_16777216_bytes,
frame_16777217_bytes and 70000; frame_65536_bytes and frame_65537_bytes carry
a payload whose compact frame is 65,524 bytes, so the client sends those and
the recorded ``queued: true`` acks resolve them. In e_offline the send to a
16-hex prefix is refused locally. The ``payload too large`` ack text itself is
checked by feeding it in answer to a small send
(``test_payload_too_large_ack_fails_the_send_as_permanent``).
"""

from __future__ import annotations

import base64
import json
import math
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from meshproto import (
    FRAME_TYPES,
    BrokerError,
    ClientConfig,
    ClientConnection,
    Closed,
    ConnectionState,
    HandshakeComplete,
    LocalProtocolError,
    MalformedFrame,
    MessageReceived,
    OpenTransport,
    PeersListed,
    ReconnectScheduled,
    RequestFailed,
    SendAcked,
    SendFailed,
    SendHandle,
    SendOutcomeUnknown,
    SystemMessage,
    UnreadableMessage,
    WriteFrame,
    decode,
)
from meshproto.testing import FakeSigner

TRANSCRIPT_DIR = Path(__file__).resolve().parent / "fixtures" / "real-broker"

#: How many recorded transcripts the repository holds. A fixture that goes
#: missing must fail loudly here rather than quietly shrink the suite.
EXPECTED_TRANSCRIPTS = 10

#: docs/protocol.md §1 and §7: the largest frame (and body) a client writes.
MAX_FRAME_BYTES = 65_536

#: docs/protocol.md §4.1: texts of ``ack{queued: false}`` by prefix, with the
#: failure code and whether retrying later can help.
ACK_TEXT_CLASSES = (
    ("rate_limit", "rate_limited", True),
    ("payload too large", "payload_too_large", False),
    ("no connected peer", "no_peer", False),
)

#: docs/protocol.md §3 and §6: hello refusals that mean "our identity is wrong"
#: (stop, report) and those that are transient (reconnect with backoff).
IDENTITY_REFUSALS = frozenset(
    {
        "unauthorized",
        "bad_signature",
        "malformed",
        "bad_session_pubkey",
        "revoked",
        "expired",
        "ttl_too_long",
        "attestation_mismatch",
        "bad_parent_pubkey",
        "parent_member_id_mismatch",
    }
)
TRANSIENT_REFUSALS = frozenset({"timestamp_skew", "capacity"})

#: docs/protocol.md §4.1: ``*``, ``@all``, ``@<group>``, ``#<topicId>`` or a 64-hex key.
_TARGET_SPEC = re.compile(r"[0-9a-f]{64}|\*|@all|[@#][^\s@#*]+")
_DIRECT_TARGET = re.compile(r"[0-9a-f]{64}")
#: How the recorder shortened huge ciphertexts: 60 characters, then the length.
_TRUNCATED = re.compile(r".*\.\.\.<(\d+) chars>", re.DOTALL)
#: A bound on timer firings between two records (there are a handful at most).
_MAX_TIMER_FIRINGS = 1_000

_DELIVERIES = (MessageReceived, UnreadableMessage, SystemMessage)
_OUTCOMES = (SendAcked, SendFailed, SendOutcomeUnknown)


# --- transcripts -------------------------------------------------------------


def _transcript_paths() -> list[Path]:
    paths = sorted(TRANSCRIPT_DIR.glob("*.jsonl"))
    # A missing directory must fail, not skip: one placeholder parameter that
    # load_transcript() reports as missing.
    return paths or [TRANSCRIPT_DIR / "*.jsonl"]


TRANSCRIPTS = _transcript_paths()


def load_transcript(path: Path | str) -> list[dict[str, Any]]:
    """The records of one transcript, in order; fails clearly if it is missing."""
    path = TRANSCRIPT_DIR / path if isinstance(path, str) else path
    if not path.is_file():
        pytest.fail(
            f"conformance transcript {path} is missing: these tests replay the real "
            f"broker's recordings from tests/fixtures/real-broker/ (looked in {TRANSCRIPT_DIR})",
            pytrace=False,
        )
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def by_connection(records: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The records of each recorded connection, in order (``conn`` ``-`` is the recorder)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        if record["conn"] != "-":
            groups.setdefault(record["conn"], []).append(record)
    return groups


def frames(records: Iterable[dict[str, Any]], direction: str, kind: str) -> list[dict[str, Any]]:
    return [
        r["frame"]
        for r in records
        if r["dir"] == direction and r.get("frame", {}).get("type") == kind
    ]


# --- oracles, from docs/protocol.md ---------------------------------------------------


def classify_ack_text(text: str) -> tuple[str, bool] | None:
    """(code, retryable) for an ``ack.error`` text the protocol names, else ``None``."""
    for prefix, code, retryable in ACK_TEXT_CLASSES:
        if text.startswith(prefix):
            return code, retryable
    return None


def expected_state_after_close(
    code: int | None, reason: str, refusal: str | None
) -> ConnectionState:
    """Where a client is after a close (§6), given the hello refusal before it, if any."""
    if refusal in IDENTITY_REFUSALS:
        return ConnectionState.CLOSED
    if refusal in TRANSIENT_REFUSALS:
        return ConnectionState.RECONNECTING
    if code in (4001, 4002):
        return ConnectionState.CLOSED
    if code == 1000 and reason == "session_replaced":
        return ConnectionState.CLOSED
    if code == 1008 and reason in IDENTITY_REFUSALS:
        return ConnectionState.CLOSED
    return ConnectionState.RECONNECTING


def recorded_payload(frame: dict[str, Any]) -> bytes:
    """A body the size of the recorded send's payload (see the module docstring)."""
    ciphertext = frame["ciphertext"]
    truncated = _TRUNCATED.fullmatch(ciphertext)
    if truncated:
        return bytes(int(truncated.group(1)) * 3 // 4)
    return base64.b64decode(ciphertext, validate=True)


def client_frame_size(frame: dict[str, Any], body: bytes) -> int:
    """Bytes of the send frame this client writes for ``body`` (compact JSON, §4.1 fields)."""
    shape = dict(frame, ciphertext="")
    encoded = json.dumps(shape, separators=(",", ":"), ensure_ascii=False).encode()
    return len(encoded) + 4 * math.ceil(len(body) / 3)


def local_refusal(frame: dict[str, Any], body: bytes) -> str | None:
    """Why the client must refuse this send before writing it, or ``None``."""
    if not _TARGET_SPEC.fullmatch(frame["targetSpec"]):
        return f"target {frame['targetSpec']!r} is not a target spec"
    if len(body) > MAX_FRAME_BYTES:
        return f"body of {len(body)} bytes"
    size = client_frame_size(frame, body)
    if size > MAX_FRAME_BYTES:
        return f"frame of {size} bytes"
    return None


# --- the replay ------------------------------------------------------------------


@dataclass
class Step:
    """One input to the client and everything it produced."""

    record: dict[str, Any]
    state_before: ConnectionState
    state_after: ConnectionState = ConnectionState.IDLE
    events: list[Any] = field(default_factory=list)
    actions: list[Any] = field(default_factory=list)
    written: list[dict[str, Any]] = field(default_factory=list)
    fed: dict[str, Any] | None = None  # the frame fed, ids rewritten
    handle: SendHandle | None = None
    refused: LocalProtocolError | None = None
    expected_refusal: str | None = None
    request_id: str | None = None

    @property
    def kind(self) -> str | None:
        frame = self.record.get("frame")
        return frame.get("type") if isinstance(frame, dict) else None


class ConnReplay:
    """Drives one ``ClientConnection`` through the records of one recorded connection."""

    def __init__(
        self,
        name: str,
        records: list[dict[str, Any]],
        payload: Callable[[dict[str, Any]], bytes] = recorded_payload,
    ) -> None:
        self.name = name
        self.records = records
        self.payload = payload
        self.client: ClientConnection | None = None
        self.steps: list[Step] = []
        self.send_ids: dict[str, str] = {}  # recorded send id -> client send id
        self.req_ids: dict[str, str] = {}  # recorded _reqId -> client request id
        self.recorded_client_acks: list[dict[str, Any]] = []
        self.transport_id: int | None = None
        self.pending_open: int | None = None
        self.now = 0.0

    def run(self) -> ConnReplay:
        for record in self.records:
            self.feed(record)
        return self

    @property
    def conn(self) -> ClientConnection:
        assert self.client is not None, f"{self.name}: a record came before 'open'"
        return self.client

    def _config(self, url: str) -> ClientConfig:
        hellos = [
            r["frame"]
            for r in self.records
            if r["dir"] == "out" and r["frame"].get("type") in ("hello", "session_hello")
        ]
        hello = hellos[0] if hellos else {}
        return ClientConfig(
            url=url,
            mesh_id=hello.get("meshId", "mesh"),
            member_id=hello.get("memberId") or hello.get("parentMemberId") or "member",
            signer=FakeSigner(self.name),
            session_id=hello.get("sessionId", self.name),
        )

    def _wall_time_ms(self) -> int:
        for r in self.records:
            stamp = r.get("frame", {}).get("timestamp") if r["dir"] == "out" else None
            if isinstance(stamp, int):
                return stamp
        return 0

    def _collect(self, step: Step) -> Step:
        client = self.conn
        step.state_after = client.state
        step.actions = client.drain_actions()
        step.events = client.drain_events()
        for action in step.actions:
            if isinstance(action, WriteFrame):
                step.written.append(json.loads(action.text))
            elif isinstance(action, OpenTransport):
                self.pending_open = action.transport_id
        self.steps.append(step)
        return step

    def _run_timers(self, until: float) -> None:
        client = self.conn
        for _ in range(_MAX_TIMER_FIRINGS):
            deadline = client.next_deadline()
            if deadline is None or deadline > until:
                return
            self.now = max(self.now, deadline)
            step = Step({"t": self.now, "conn": self.name, "dir": "timer"}, client.state)
            client.handle_timer(self.now)
            self._collect(step)
        pytest.fail(f"{self.name}: timers still due after {_MAX_TIMER_FIRINGS} firings")

    def _open(self, record: dict[str, Any], t: float) -> None:
        if self.client is None:
            self.client = ClientConnection(self._config(record["url"]), rng=random.Random(0))
            step = Step(record, self.client.state)
            self.client.connect(t)
            self._collect(step)
        else:
            # A later 'open' of the same client: its reconnect timer opens it.
            self._run_timers(t)
            deadline = self.conn.next_deadline()
            if self.pending_open is None and deadline is not None:
                self._run_timers(deadline)
                t = max(t, deadline)
        assert self.pending_open is not None, f"{self.name}: the client opened no transport"
        self.transport_id, self.pending_open = self.pending_open, None
        step = Step(record, self.conn.state)
        self.conn.transport_opened(self.transport_id, now=t, wall_time_ms=self._wall_time_ms())
        self._collect(step)

    def feed(self, record: dict[str, Any]) -> None:
        direction = record["dir"]
        if direction in ("note", "summary"):
            return
        t = max(self.now, float(record["t"]))
        if direction == "open":
            self._open(record, t)
            self.now = t
            return
        self._run_timers(t)
        self.now = t
        client = self.conn
        step = Step(record, client.state)
        if direction == "in":
            step.fed = self._rewrite(record["frame"])
            client.receive_text(json.dumps(step.fed, ensure_ascii=False), now=t)
            # The recorded client was an eager reader: it took every message
            # at once, so its client_ack followed the push (ours is written
            # only when the application takes the message).
            client.take_messages()
        elif direction == "out":
            self._out(step, record["frame"], t)
        elif direction == "ping":
            client.receive_ping(now=t)
        elif direction == "close":
            assert self.transport_id is not None
            client.transport_closed(
                self.transport_id, now=t, code=record.get("code"), reason=record.get("reason") or ""
            )
        else:
            pytest.fail(f"{self.name}: unknown record direction {direction!r}")
        self._collect(step)

    def _rewrite(self, frame: dict[str, Any]) -> dict[str, Any]:
        frame = dict(frame)
        kind = frame.get("type")
        if kind in ("ack", "error") and frame.get("id") in self.send_ids:
            frame["id"] = self.send_ids[frame["id"]]
        if kind in ("peers_list", "error") and frame.get("_reqId") in self.req_ids:
            frame["_reqId"] = self.req_ids[frame["_reqId"]]
        return frame

    def _out(self, step: Step, frame: dict[str, Any], t: float) -> None:
        client = self.conn
        kind = frame.get("type")
        if kind == "send":
            body = self.payload(frame)
            step.expected_refusal = local_refusal(frame, body)
            try:
                step.handle = client.send(frame["targetSpec"], body, frame["priority"], now=t)
            except LocalProtocolError as exc:
                step.refused = exc
            else:
                self.send_ids[frame["id"]] = step.handle.id
        elif kind == "list_peers":
            step.request_id = client.list_peers(now=t)
            if "_reqId" in frame:
                self.req_ids[frame["_reqId"]] = step.request_id
        elif kind == "set_summary":
            client.set_summary(frame["summary"], now=t)
        elif kind == "set_status":
            client.set_status(frame["status"], now=t)
        elif kind == "client_ack":
            self.recorded_client_acks.append(frame)
        # hello / session_hello: the client wrote its own on transport_opened.

    # --- views used by the tests ---------------------------------------------

    def events(self, *types: type) -> list[Any]:
        return [e for s in self.steps for e in s.events if not types or isinstance(e, types)]

    def written(self, kind: str) -> list[dict[str, Any]]:
        return [w for s in self.steps for w in s.written if w.get("type") == kind]

    def steps_for(self, direction: str, kind: str | None = None) -> list[Step]:
        return [
            s
            for s in self.steps
            if s.record["dir"] == direction and (kind is None or s.kind == kind)
        ]


def replay_transcript(
    name: str | Path, payload: Callable[[dict[str, Any]], bytes] = recorded_payload
) -> dict[str, ConnReplay]:
    records = load_transcript(name)
    return {
        conn: ConnReplay(conn, recs, payload).run() for conn, recs in by_connection(records).items()
    }


# --- the checker: what every replayed connection must show ------------------------


def _where(replay: ConnReplay, step: Step) -> str:
    return f"{replay.name} t={step.record['t']} {step.record['dir']} {step.kind or ''}".rstrip()


def _delivery_problem(step: Step, frame: dict[str, Any], fresh: bool) -> str | None:
    """What is wrong with the deliveries a push produced, or ``None``."""
    deliveries = [e for e in step.events if isinstance(e, _DELIVERIES)]
    if not fresh:
        return f"a duplicate push was delivered again: {deliveries}" if deliveries else None
    if len(deliveries) != 1 or deliveries[0].message_id != frame["messageId"]:
        return f"expected one delivery of {frame['messageId']}, got {deliveries}"
    delivered = deliveries[0]
    if frame.get("subtype") == "system":
        if not (isinstance(delivered, SystemMessage) and delivered.event == frame.get("event")):
            return f"expected SystemMessage {frame.get('event')!r}, got {delivered}"
    elif isinstance(delivered, SystemMessage):
        return f"a message push became a SystemMessage: {delivered}"
    elif "senderMemberPubkey" in frame:
        # Broadcast bodies are base64 of the UTF-8 text (§5): readable.
        body = base64.b64decode(frame["ciphertext"])
        if not (isinstance(delivered, MessageReceived) and delivered.body == body):
            return f"broadcast body {body!r} not delivered as sent: {delivered}"
    return None


def _check_in(replay: ConnReplay, step: Step, ctx: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    frame = step.fed
    assert frame is not None
    kind = frame.get("type")
    outcomes = [e for e in step.events if isinstance(e, _OUTCOMES)]
    if kind == "ack":
        send_id = frame["id"]
        if send_id in ctx["in_flight"]:
            ctx["in_flight"].discard(send_id)
            if len(outcomes) != 1 or outcomes[0].send_id != send_id:
                problems.append(f"expected one outcome for send {send_id}, got {outcomes}")
            elif frame["queued"]:
                if not (
                    isinstance(outcomes[0], SendAcked)
                    and outcomes[0].message_id == frame["messageId"]
                ):
                    problems.append(f"expected SendAcked {frame['messageId']}, got {outcomes[0]}")
            else:
                failed = outcomes[0]
                known = classify_ack_text(frame["error"])
                if not (isinstance(failed, SendFailed) and failed.reason.detail == frame["error"]):
                    problems.append(f"expected SendFailed with {frame['error']!r}, got {failed}")
                elif known and (failed.reason.code, failed.reason.retryable) != known:
                    problems.append(f"{frame['error']!r} classified {failed.reason}, not {known}")
        elif outcomes:
            problems.append(f"an ack for no send in flight resolved something: {outcomes}")
    elif kind == "push":
        acks = [w for w in step.written if w.get("type") == "client_ack"]
        want = {"brokerMessageId": frame["messageId"]}
        if "client_message_id" in frame:
            want["clientMessageId"] = frame["client_message_id"]
        if len(acks) != 1 or {k: v for k, v in acks[0].items() if k != "type"} != want:
            problems.append(f"expected one client_ack {want}, wrote {acks}")
        key = frame.get("client_message_id") or frame["messageId"]
        problem = _delivery_problem(step, frame, key not in ctx["seen"])
        if problem:
            problems.append(problem)
        ctx["seen"].add(key)
    elif kind == "hello_ack" and step.state_before is ConnectionState.HANDSHAKING:
        if step.state_after is not ConnectionState.OPEN or not any(
            isinstance(e, HandshakeComplete) for e in step.events
        ):
            problems.append(f"hello_ack did not open the connection: {step.events}")
    elif kind == "error":
        answers = outcomes or [e for e in step.events if isinstance(e, RequestFailed)]
        reported = [e for e in step.events if isinstance(e, BrokerError)]
        if not answers and [(e.code, e.message) for e in reported] != [
            (frame["code"], frame.get("message", ""))
        ]:
            problems.append(f"error frame not reported as BrokerError: {step.events}")
        if step.state_before is ConnectionState.HANDSHAKING and frame["code"] != "no_hello":
            ctx["refusal"] = frame["code"]
            problems.extend(_refusal_problems(step, frame["code"]))
        elif frame["code"] == "no_hello" and step.state_after is not step.state_before:
            problems.append(f"no_hello changed the state to {step.state_after}")
    elif kind == "peers_list":
        listed = [e for e in step.events if isinstance(e, PeersListed)]
        recorded_req = step.record["frame"].get("_reqId")
        if recorded_req in replay.req_ids:
            if len(listed) != 1 or (listed[0].request_id, len(listed[0].peers)) != (
                frame["_reqId"],
                len(frame["peers"]),
            ):
                problems.append(f"expected PeersListed for {frame['_reqId']}, got {listed}")
        elif step.events:
            problems.append(f"an untagged or unknown peers_list produced {step.events}")
    return problems


def _refusal_problems(step: Step, code: str) -> list[str]:
    if code in IDENTITY_REFUSALS:
        closed = [e for e in step.events if isinstance(e, Closed)]
        if step.state_after is not ConnectionState.CLOSED or not closed:
            return [f"refusal {code!r} must end CLOSED, got {step.state_after} {step.events}"]
        if code not in closed[0].reason:
            return [f"Closed does not say why ({code!r}): {closed[0]}"]
    elif code in TRANSIENT_REFUSALS and (
        step.state_after is not ConnectionState.RECONNECTING
        or not any(isinstance(e, ReconnectScheduled) for e in step.events)
    ):
        return [f"refusal {code!r} must reconnect, got {step.state_after} {step.events}"]
    return []


def _check_out(step: Step, ctx: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    frame = step.record["frame"]
    if step.kind == "send":
        if step.expected_refusal is not None:
            if step.refused is None:
                problems.append(f"send accepted, but must be refused: {step.expected_refusal}")
            elif step.events or step.actions:
                problems.append(f"a refused send changed things: {step.events} {step.actions}")
            return problems
        if step.refused is not None:
            return [f"send refused locally: {step.refused}"]
        assert step.handle is not None
        sent = [w for w in step.written if w.get("type") == "send"]
        if step.state_before is not ConnectionState.OPEN:
            return [f"a send was written before hello_ack: {sent}"] if sent else []
        want = {
            "id": step.handle.id,
            "client_message_id": step.handle.id,
            "targetSpec": frame["targetSpec"],
            "priority": frame["priority"],
        }
        if len(sent) != 1 or {k: sent[0].get(k) for k in want} != want:
            problems.append(f"expected one send frame {want}, wrote {sent}")
        elif (
            not _DIRECT_TARGET.fullmatch(frame["targetSpec"])
            and not _TRUNCATED.fullmatch(frame["ciphertext"])
            and sent[0]["ciphertext"] != frame["ciphertext"]
        ):
            # Broadcast/group/topic bodies are plain base64 (§5): the same bytes.
            problems.append(f"ciphertext {sent[0]['ciphertext']!r} != {frame['ciphertext']!r}")
        ctx["in_flight"].add(step.handle.id)
    elif step.kind == "list_peers" and step.state_before is ConnectionState.OPEN:
        asked = [w for w in step.written if w.get("type") == "list_peers"]
        if [w.get("_reqId") for w in asked] != [step.request_id]:
            problems.append(f"expected list_peers {step.request_id}, wrote {asked}")
    return problems


def check_replay(replay: ConnReplay) -> list[str]:
    """Every problem with one replayed connection, as readable lines."""
    problems: list[str] = []
    ctx: dict[str, Any] = {"in_flight": set(), "seen": set(), "refusal": None}
    resolved: dict[str, int] = {}
    for step in replay.steps:
        found: list[str] = []
        found += [
            f"MalformedFrame: {e.error}" for e in step.events if isinstance(e, MalformedFrame)
        ]
        direction = step.record["dir"]
        if direction == "in":
            found += _check_in(replay, step, ctx)
        elif direction == "out":
            found += _check_out(step, ctx)
        elif direction == "close":
            code, reason = step.record.get("code"), step.record.get("reason") or ""
            want = expected_state_after_close(code, reason, ctx["refusal"])
            if step.state_after is not want:
                found.append(f"close {code} {reason!r} left {step.state_after}, expected {want}")
            if want is ConnectionState.CLOSED and not replay.events(Closed):
                found.append("CLOSED without a Closed event")
            if want is ConnectionState.RECONNECTING and not replay.events(ReconnectScheduled):
                found.append("RECONNECTING without a ReconnectScheduled event")
        for event in step.events:
            if isinstance(event, _OUTCOMES):
                resolved[event.send_id] = resolved.get(event.send_id, 0) + 1
                ctx["in_flight"].discard(event.send_id)
        problems += [f"{_where(replay, step)}: {p}" for p in found]
    problems += [
        f"{replay.name}: send {i} resolved {n} times" for i, n in resolved.items() if n > 1
    ]
    ours = [{k: v for k, v in a.items() if k != "type"} for a in replay.written("client_ack")]
    for recorded in replay.recorded_client_acks:
        mine = {k: v for k, v in recorded.items() if k != "type"}
        if mine not in ours:
            problems.append(f"{replay.name}: recorded client_ack {mine} was never written")
    return problems


def assert_clean(replays: dict[str, ConnReplay]) -> None:
    problems = [p for replay in replays.values() for p in check_replay(replay)]
    assert not problems, "\n".join(problems)


# --- tests: every transcript -----------------------------------------------------


def test_every_recorded_transcript_is_in_the_repository() -> None:
    assert TRANSCRIPT_DIR.is_dir(), f"conformance transcripts not found at {TRANSCRIPT_DIR}"
    found = sorted(p.name for p in TRANSCRIPT_DIR.glob("*.jsonl"))
    assert len(found) == EXPECTED_TRANSCRIPTS, (
        f"expected {EXPECTED_TRANSCRIPTS} transcripts in {TRANSCRIPT_DIR}, found {len(found)}: "
        f"{found}"
    )


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=lambda p: p.stem)
def test_every_broker_frame_decodes_to_its_type(path: Path) -> None:
    records = load_transcript(path)
    received = [r["frame"] for r in records if r["dir"] == "in"]
    assert received, "a transcript with no frame from the broker"
    for frame in received:
        decoded = decode(json.dumps(frame, ensure_ascii=False))
        assert type(decoded) is FRAME_TYPES[frame["type"]], frame


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=lambda p: p.stem)
def test_transcript_replays_as_recorded(path: Path) -> None:
    """Every check of ``check_replay`` holds for every connection of the transcript."""
    replays = replay_transcript(path)
    assert replays, "a transcript with no connection"
    assert_clean(replays)


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=lambda p: p.stem)
def test_every_push_is_answered_with_one_client_ack(path: Path) -> None:
    for name, replay in replay_transcript(path).items():
        pushes = [s.fed for s in replay.steps_for("in", "push")]
        acks = replay.written("client_ack")
        assert [a.get("brokerMessageId") for a in acks] == [p["messageId"] for p in pushes], name


# --- tests: sends and their acks -------------------------------------------------


def test_queued_acks_resolve_sends_with_the_broker_message_id() -> None:
    records = load_transcript("d_broadcast.jsonl")
    replay = replay_transcript("d_broadcast.jsonl")["A"]
    recorded = {a["id"]: a["messageId"] for a in frames(records, "in", "ack") if a["queued"]}
    assert recorded, "d_broadcast has no queued ack"
    acked = {e.send_id: e.message_id for e in replay.events(SendAcked)}
    assert acked == {replay.send_ids[i]: m for i, m in recorded.items()}
    assert not replay.events(SendFailed)


def test_rate_limit_ack_fails_the_send_as_retryable() -> None:
    records = load_transcript("f_rate_limit.jsonl")
    replay = replay_transcript("f_rate_limit.jsonl")["C"]
    acks = frames(records, "in", "ack")
    limited = {a["id"] for a in acks if not a["queued"]}
    assert {a["error"] for a in acks if not a["queued"]} == {
        "rate_limit: max 60 msg/min (burst 10) \u2014 slow down"
    }
    failed = {e.send_id: e.reason for e in replay.events(SendFailed)}
    assert set(failed) == {replay.send_ids[i] for i in limited}
    for reason in failed.values():
        assert reason.code == "rate_limited"
        assert reason.retryable
        assert reason.detail == "rate_limit: max 60 msg/min (burst 10) \u2014 slow down"
    acked = {e.send_id for e in replay.events(SendAcked)}
    assert acked == {replay.send_ids[a["id"]] for a in acks if a["queued"]}
    assert replay.conn.pending_sends == 0


def test_no_peer_ack_fails_the_send_as_permanent() -> None:
    text = (
        "no connected peer for target (not online, or targetSpec is your own key "
        "without another session)"
    )
    records = load_transcript("e_offline.jsonl")
    replay = replay_transcript("e_offline.jsonl")["A"]
    refused_by_broker = {a["id"] for a in frames(records, "in", "ack") if not a["queued"]}
    assert {a["error"] for a in frames(records, "in", "ack") if not a["queued"]} == {text}
    # The send to a 16-hex prefix never leaves the client (not a target spec).
    made = refused_by_broker & set(replay.send_ids)
    assert len(made) == len(refused_by_broker) - 1
    failed = {e.send_id: e.reason for e in replay.events(SendFailed)}
    assert set(failed) == {replay.send_ids[i] for i in made}
    for reason in failed.values():
        assert (reason.code, reason.retryable, reason.detail) == ("no_peer", False, text)


def test_payload_too_large_ack_fails_the_send_as_permanent() -> None:
    """The recorded 70000-byte send is refused locally, so its ack answers a small one."""
    text = "payload too large: 70096 bytes > MAX_MESSAGE_BYTES=65536"
    records = by_connection(load_transcript("g_oversize.jsonl"))["A:70000"]
    assert [a["error"] for a in frames(records, "in", "ack")] == [text]
    replay = ConnReplay("A:70000", records, payload=lambda frame: b"small body").run()
    assert_clean({"A:70000": replay})
    (failed,) = replay.events(SendFailed)
    assert failed.send_id == next(iter(replay.send_ids.values()))
    assert (failed.reason.code, failed.reason.retryable) == ("payload_too_large", False)
    assert failed.reason.detail == text


def test_oversize_sends_are_refused_locally_and_their_answers_ignored() -> None:
    replays = replay_transcript("g_oversize.jsonl")
    assert_clean(replays)
    refused: dict[str, str] = {}
    sent: list[str] = []
    for name, replay in replays.items():
        for step in replay.steps_for("out", "send"):
            if step.refused is not None:
                refused[name] = str(step.refused)
            else:
                sent.append(name)
    # The sizes come from the recording (frame_<N>_bytes, "<N chars>").
    assert set(refused) == {
        "A:frame_1000000_bytes",
        "A:frame_16777216_bytes",
        "A:frame_16777217_bytes",
        "A:70000",
    }, refused
    assert sorted(sent) == ["A:frame_65536_bytes", "A:frame_65537_bytes"]
    for name in refused:
        replay = replays[name]
        answers = replay.steps_for("in", "ack")
        assert all(not s.events and not s.actions for s in answers), name
        assert not replay.events(SendAcked, SendFailed, MalformedFrame), name
        assert replay.conn.pending_sends == 0, name
    for name in sent:
        (acked,) = replays[name].events(SendAcked)
        assert acked.message_id == frames(replays[name].records, "in", "ack")[0]["messageId"]


# --- tests: refusals and closes ----------------------------------------------------


@pytest.mark.parametrize("name", ["b_hello_errors.jsonl", "k_session_hello.jsonl"])
def test_hello_refusals_end_closed_or_reconnecting_as_the_protocol_says(name: str) -> None:
    replays = replay_transcript(name)
    assert_clean(replays)
    outcomes: dict[str, tuple[str, str]] = {}
    expected: dict[str, tuple[str, str]] = {}
    for conn, replay in replays.items():
        refusals = [f["code"] for f in frames(replay.records, "in", "error")]
        refusals = [c for c in refusals if c != "no_hello"]
        if not refusals:
            continue
        assert refusals[0] in IDENTITY_REFUSALS | TRANSIENT_REFUSALS, refusals
        permanent = refusals[0] in IDENTITY_REFUSALS
        expected[conn] = (refusals[0], "closed" if permanent else "reconnecting")
        outcomes[conn] = (refusals[0], str(replay.conn.state))
        if permanent:
            assert len(replay.events(Closed)) == 1, conn
            assert not replay.events(ReconnectScheduled), conn
        else:
            assert not replay.events(Closed), conn
    assert outcomes == expected
    assert outcomes, f"{name} has no hello refusal"


def test_recorded_hello_refusals_cover_the_protocol_codes() -> None:
    codes = {f["code"] for f in frames(load_transcript("b_hello_errors.jsonl"), "in", "error")}
    assert {
        "bad_signature",
        "timestamp_skew",
        "malformed",
        "unauthorized",
        "bad_session_pubkey",
        "revoked",
    } <= codes
    closes = by_connection(load_transcript("b_hello_errors.jsonl"))["b:revoked_member"]
    assert [(r["code"], r["reason"]) for r in closes if r["dir"] == "close"] == [(4002, "banned")]


def test_refusal_close_without_the_error_frame_ends_the_same() -> None:
    """The close alone (1008 reason, 4002 banned) decides as the error frame would."""
    records = load_transcript("b_hello_errors.jsonl")
    for conn, recs in by_connection(records).items():
        errors = frames(recs, "in", "error")
        if not errors or errors[0]["code"] == "no_hello":
            continue
        closes = [r for r in recs if r["dir"] == "close"]
        stripped = [r for r in recs if not (r["dir"] == "in" and r["frame"]["type"] == "error")]
        replay = ConnReplay(conn, stripped).run()
        assert_clean({conn: replay})
        want = expected_state_after_close(closes[-1]["code"], closes[-1]["reason"], None)
        assert replay.conn.state is want, (conn, closes[-1])


def test_session_replaced_close_ends_closed() -> None:
    replays = replay_transcript("k_session_hello.jsonl")
    replaced = [
        conn
        for conn, replay in replays.items()
        if any(r.get("reason") == "session_replaced" for r in replay.records)
    ]
    assert replaced, "k_session_hello has no session_replaced close"
    for conn in replaced:
        replay = replays[conn]
        assert replay.conn.state is ConnectionState.CLOSED, conn
        (closed,) = replay.events(Closed)
        assert (closed.code, "session_replaced" in closed.reason) == (1000, True), closed
        assert not replay.events(ReconnectScheduled), conn
    assert_clean(replays)


def test_normal_close_and_1006_reconnect() -> None:
    replays = replay_transcript("g_oversize.jsonl")
    dropped = replays["A:frame_16777217_bytes"]
    assert [r["code"] for r in dropped.records if r["dir"] == "close"] == [None]
    assert dropped.conn.state is ConnectionState.RECONNECTING
    normal = replays["B"]
    assert [(r["code"], r["reason"]) for r in normal.records if r["dir"] == "close"] == [(1000, "")]
    assert normal.conn.state is ConnectionState.RECONNECTING
    assert len(normal.events(ReconnectScheduled)) == 1


# --- tests: pushes ---------------------------------------------------------------


def _repeated_keys(pushes: list[dict[str, Any]]) -> list[str]:
    keys = [p.get("client_message_id") or p["messageId"] for p in pushes]
    return [k for i, k in enumerate(keys) if k in keys[:i]]


def test_repushed_direct_message_is_acked_again_but_delivered_once() -> None:
    replay = replay_transcript("c_direct_ack_lease.jsonl")["B"]
    pushes = frames(replay.records, "in", "push")
    repeated = _repeated_keys(pushes)
    assert repeated == ["ebace5f2a4e29a14"], "the recording has one re-push on B"
    assert replay.conn.counters.duplicate_pushes == len(repeated)
    delivered = [e for e in replay.events(MessageReceived, UnreadableMessage)]
    keys = [e.push.client_message_id or e.message_id for e in delivered]
    assert keys.count("ebace5f2a4e29a14") == 1
    assert len(replay.written("client_ack")) == len(pushes)
    assert_clean({"B": replay})


def test_dedupe_key_is_the_client_message_id_when_present() -> None:
    """A re-push under a new messageId but the same client_message_id is a duplicate."""
    records = by_connection(load_transcript("c_direct_ack_lease.jsonl"))["B"]
    seen: set[str] = set()
    changed = []
    for record in records:
        frame = record.get("frame", {})
        if record["dir"] == "in" and frame.get("type") == "push" and "client_message_id" in frame:
            if frame["messageId"] in seen:
                frame = dict(frame, messageId="Z" * 32)
                record = dict(record, frame=frame)
            seen.add(frame["messageId"])
        changed.append(record)
    replay = ConnReplay("B", changed).run()
    assert_clean({"B": replay})
    assert replay.conn.counters.duplicate_pushes == 1
    assert "Z" * 32 not in [e.message_id for e in replay.events(*_DELIVERIES)]
    assert {"brokerMessageId": "Z" * 32, "clientMessageId": "ebace5f2a4e29a14"} in [
        {k: v for k, v in a.items() if k != "type"} for a in replay.written("client_ack")
    ]


def test_repushed_broadcast_is_deduplicated_by_message_id() -> None:
    records = by_connection(load_transcript("d_broadcast.jsonl"))["B"]
    pushes = [r for r in records if r["dir"] == "in" and "senderMemberPubkey" in r["frame"]]
    assert pushes and all("client_message_id" not in r["frame"] for r in pushes)
    again = [dict(r, t=r["t"] + 0.0005) for r in pushes]
    doubled = sorted(records + again, key=lambda r: r["t"])
    replay = ConnReplay("B", doubled).run()
    assert_clean({"B": replay})
    assert replay.conn.counters.duplicate_pushes == len(pushes)
    bodies = [e.text for e in replay.events(MessageReceived)]
    assert bodies == ["broadcast to *", "broadcast to @all"]


def test_repush_after_reattach_is_not_delivered_again() -> None:
    """B and B#2 are one client across a reconnect: the re-push after reattach is a duplicate."""
    groups = by_connection(load_transcript("c_direct_ack_lease.jsonl"))
    merged = groups["B"] + groups["B#2"]
    replay = ConnReplay("B+B#2", merged).run()
    assert_clean({"B+B#2": replay})
    assert replay.conn.counters.reconnects == 1
    later = frames(groups["B#2"], "in", "push")
    assert [p["client_message_id"] for p in later] == ["ebace5f2a4e29a14"]
    deliveries = [e.push.client_message_id for e in replay.events(MessageReceived)]
    assert deliveries.count("ebace5f2a4e29a14") == 1
    assert replay.conn.counters.duplicate_pushes == 2  # once on B, once after reattach
    assert len(replay.written("client_ack")) == len(frames(merged, "in", "push"))


def test_push_before_hello_ack_is_taken_and_acked() -> None:
    """§3: the broker drains queued messages before it acks the hello."""
    records = list(by_connection(load_transcript("c_direct_ack_lease.jsonl"))["B#2"])
    kinds = [r.get("frame", {}).get("type") if r["dir"] == "in" else None for r in records]
    hello_ack, push = kinds.index("hello_ack"), kinds.index("push")
    assert hello_ack < push
    moved = records.pop(push)
    records.insert(hello_ack, dict(moved, t=records[hello_ack]["t"]))
    replay = ConnReplay("B#2", records).run()
    assert_clean({"B#2": replay})
    (early,) = [s for s in replay.steps if s.fed is not None and s.kind == "push"]
    assert early.state_before is ConnectionState.HANDSHAKING
    assert [type(e) for e in early.events] == [MessageReceived]
    assert [w["type"] for w in early.written] == ["client_ack"]


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=lambda p: p.stem)
def test_system_pushes_become_system_messages_named_by_event(path: Path) -> None:
    for name, replay in replay_transcript(path).items():
        recorded = [
            (f["event"], f["messageId"])
            for f in frames(replay.records, "in", "push")
            if f.get("subtype") == "system"
        ]
        got = [(e.event, e.message_id) for e in replay.events(SystemMessage)]
        assert got == recorded, name


def test_system_events_seen_include_joined_returned_and_left() -> None:
    events: set[str] = set()
    for path in TRANSCRIPTS:
        for replay in replay_transcript(path).values():
            events |= {e.event for e in replay.events(SystemMessage)}
    assert {"peer_joined", "peer_returned", "peer_left"} <= events


# --- tests: peers ------------------------------------------------------------------


def test_peers_list_answers_correlate_by_req_id() -> None:
    replay = replay_transcript("i_list_peers.jsonl")["A"]
    assert_clean({"A": replay})
    asked = replay.steps_for("out", "list_peers")
    assert len(asked) == 2
    tagged, untagged = asked
    assert "_reqId" in tagged.record["frame"] and "_reqId" not in untagged.record["frame"]
    answers = frames(replay.records, "in", "peers_list")
    (listed,) = replay.events(PeersListed)
    assert listed.request_id == tagged.request_id != tagged.record["frame"]["_reqId"]
    assert len(listed.peers) == len(answers[0]["peers"])
    assert [p.pubkey for p in listed.peers] == [p["pubkey"] for p in answers[0]["peers"]]


def test_untagged_peers_list_is_ignored_without_error() -> None:
    replay = replay_transcript("i_list_peers.jsonl")["A"]
    (untagged,) = [s for s in replay.steps_for("in", "peers_list") if "_reqId" not in s.fed]
    assert untagged.events == [] and untagged.actions == []
    assert untagged.state_after is ConnectionState.OPEN
    assert not replay.events(MalformedFrame, BrokerError)
