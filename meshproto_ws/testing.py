"""The broker harness over WebSockets: a real :class:`BrokerDriver`, its broker observed.

Theory of operation
===================

:class:`SocketBrokerHarness` is :class:`meshproto.testing.BrokerHarness`
with another transport. Every op, table and frame builder of that harness
is kept (hellos, sends, garbage, hostile text, time ...); what changes is how
its inputs reach the broker:

* The broker sits behind a :class:`~meshproto_ws.BrokerDriver`, and the
  driver's broker is an :class:`ObservedBroker`: a
  :class:`~meshproto_ws.BrokerMachine` that passes every input on to the
  harness's :class:`~meshproto.testing.BrokerOracle` (which feeds the real
  broker, checks its invariants and returns its outputs) and hands those
  outputs to the driver when it drains them. So the oracle sees exactly the
  inputs the driver makes, and checks each one.
* Each slot's socket has a client side, a client
  :class:`~meshproto_ws.WsConnection`. What an op sends goes out as that
  client writes it (the handshake, masked text and binary frames, pings,
  pongs, close frames, EOF) into ``driver.receive_data``; the driver's
  commands come back, ``WriteBytes`` into the client's connection and
  ``CloseSocket`` as EOF. After every op the harness carries bytes both
  ways until neither side has anything to say (at most ``_MAX_ROUNDS``
  rounds).
* It adds ops of its own (``op_accept``, ``op_raw``, ``op_hangup``,
  ``op_framing``, ``op_oversize``; ``run_bytes`` reaches them too): sockets
  that never finish the handshake, or botch it (half a request, another
  path, garbage, a plain HTTP GET); raw bytes on any socket; hang-ups (a
  close frame with any code, EOF, ``socket_failed``, a client that goes
  silent: it reads and writes nothing more); reads split into pieces, and
  messages split into fragments (at any byte, inside a UTF-8 character
  too) with a ping between them; messages over the driver's and the
  broker's size caps. A message for a socket whose client cannot send (the
  driver closed it, it never finished its handshake, or it was never
  opened) is written to the driver as raw frame bytes all the same: a late
  read, or garbage, that it must take in its stride.

Besides the oracle's invariants it checks:

* no exception escapes the driver, and its fault containment is never
  needed: ``driver.internal_errors`` stays 0 (a contained bug is still a
  bug), and an exception that went through the observed broker (the
  oracle's :class:`~meshproto.testing.ContractViolation`, or one the broker
  raised) is raised here, though the driver contained it;
* every text a client receives decodes with :func:`meshproto.decode` and is
  the next text the broker wrote for that socket (nothing lost, altered or
  reordered); no client receives a binary message or bytes its WebSocket
  cannot parse;
* a socket the broker closes gets a close frame with the broker's code and
  reason, unless its client went silent;
* the driver names no socket after its ``CloseSocket``, and every socket it
  closes gets EOF (after its close frame, if any);
* at the end (``finish``: the broker's shutdown, as an adapter does it, then
  every timer run out) the driver has no socket and no deadline left, it
  has closed every socket the harness opened, and every text the broker
  wrote was read.

:func:`check_frame_reader` (from ``_frame_oracle``) is the frame layer's
oracle: the frame reader and wsproto's, fed the same reads, must agree.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

from meshproto import (
    BrokerOutput,
    CloseConnection,
    RemoteProtocolError,
    SendText,
    decode,
    expand_outputs,
    without_connection,
)
from meshproto.testing import BrokerHarness, BrokerOracle, ByteSource, ContractViolation

from ._broker_driver import DEFAULT_HANDSHAKE_TIMEOUT, BrokerDriver
from ._commands import CloseSocket, WriteBytes
from ._connection import (
    BinaryReceived,
    Closed,
    TextReceived,
    WsConnection,
    WsEvent,
    WsState,
)
from ._frame_oracle import ReadOutcome, check_frame_reader
from ._url import WsAddress

__all__ = ["ObservedBroker", "ReadOutcome", "SocketBrokerHarness", "check_frame_reader"]

_ADDRESS = WsAddress("broker.test", 7900, False, "/ws")
_ELSEWHERE = WsAddress("broker.test", 7900, False, "/elsewhere")
#: The test's clients read whatever the broker writes, however big.
_CLIENT_CAP = 1 << 26
#: Rounds of carrying bytes both ways after one op before the sockets must be quiet.
_MAX_ROUNDS = 1000
_MASK = b"\x3c\xa5\x0f\x96"
_XOR_TABLE = [bytes(a ^ b for a in range(256)) for b in range(256)]
_XOR = [_XOR_TABLE[b] for b in _MASK]

_OP_CONTINUATION, _OP_TEXT, _OP_BINARY = 0x0, 0x1, 0x2
_OP_CLOSE, _OP_PING, _OP_PONG = 0x8, 0x9, 0xA

#: Sockets that never finish a good handshake (see ``op_accept``).
_ACCEPTS = ("silent", "half", "elsewhere", "garbage", "plain get")
_GARBAGE_REQUEST = b"\x16\x03\x01\x02\x00\x01\x00 this is not HTTP\r\n\r\n"
_PLAIN_GET = b"GET /ws HTTP/1.1\r\nHost: broker.test\r\n\r\n"
#: How a client leaves: a close frame with a code (999: not a valid one), EOF,
#: a broken socket, or silence.
_HANGUPS: tuple[tuple[str, int], ...] = (
    ("close", 1000),
    ("close", 1001),
    ("close", 4000),
    ("close", 1011),
    ("close", 999),
    ("eof", 0),
    ("failed", 0),
    ("silent", 0),
)
#: How a client's writes travel: (size of each of the first three reads the
#: driver gets, 0 for one read; fragments per message).
_FRAMINGS: tuple[tuple[int, int], ...] = ((0, 1), (1, 1), (7, 1), (0, 2), (3, 3), (0, 5))


def _pick(table: tuple[Any, ...], index: int) -> Any:
    return table[index % len(table)]


def _masked_frame(first: int, payload: bytes) -> bytes:
    """One frame as a client writes it (RFC 6455 §5.2), ``first`` its FIN/RSV/opcode byte."""
    size = len(payload)
    head = bytearray([first])
    if size < 126:
        head.append(0x80 | size)
    elif size < 1 << 16:
        head += bytes([0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + size.to_bytes(8, "big")
    body = bytearray(payload)
    for i in range(4):
        body[i::4] = body[i::4].translate(_XOR[i])
    return bytes(head) + _MASK + bytes(body)


def _frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    return _masked_frame((0x80 if fin else 0) | opcode, payload)


def _remasked(data: bytes) -> bytes:
    """A client WebSocket's frames, their random masks replaced by ``_MASK``.

    So that a run replays byte for byte: once raw bytes have put the driver
    out of step with a client, what it makes of the client's next frames
    depends on their every byte, masks included.
    """
    out = bytearray()
    pos, end = 0, len(data)
    while pos < end:  # each frame moves on by at least its 6-byte header
        if end - pos < 6 or not data[pos + 1] & 0x80:
            raise ContractViolation(
                f"a client WebSocket wrote bytes that are not masked frames: {data!r}"
            )
        size, at = data[pos + 1] & 0x7F, pos + 2
        if size >= 126:
            width = 2 if size == 126 else 8
            size, at = int.from_bytes(data[at : at + width], "big"), at + width
        key, body = data[at : at + 4], bytearray(data[at + 4 : at + 4 + size])
        for i in range(4):
            body[i::4] = body[i::4].translate(_XOR_TABLE[key[i]])
        out += _masked_frame(data[pos], bytes(body))
        pos = at + 4 + size
    return bytes(out)


def _message_frames(message: str | bytes, fragments: int) -> bytes:
    """``message`` as frames: in ``fragments`` pieces cut at any byte, a ping after the first."""
    opcode = _OP_TEXT if isinstance(message, str) else _OP_BINARY
    data = message.encode("utf-8") if isinstance(message, str) else message
    step = max(1, -(-len(data) // max(1, fragments)))
    pieces = [data[i : i + step] for i in range(0, len(data), step)] or [b""]
    out = bytearray()
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        out += _frame(opcode if i == 0 else _OP_CONTINUATION, piece, fin=last)
        if i == 0 and not last:
            out += _frame(_OP_PING, b"between fragments")
    return bytes(out)


class ObservedBroker:
    """A :class:`~meshproto_ws.BrokerMachine` feeding every input through a :class:`BrokerOracle`.

    Each input is passed to the oracle (and by it to the broker); the outputs
    the oracle returns, checked, wait here for ``drain_outputs``, as a
    broker's would. ``shutdown`` is passed on too (an adapter calls it on the
    broker). ``failure`` is the first exception an input raised (the driver
    contains it, so the harness raises it again). What the driver drained is
    kept per socket: ``texts``, the texts written and not yet read by the
    socket's client, and ``closes``, the broker's close; ``ended`` holds the
    sockets the driver reported closed.
    """

    def __init__(self, oracle: BrokerOracle) -> None:
        self.oracle = oracle
        self.failure: Exception | None = None
        self.texts: dict[int, deque[str]] = {}
        self.closes: dict[int, CloseConnection] = {}
        self.ended: set[int] = set()
        self._outputs: list[BrokerOutput] = []

    def _run(self, call: Callable[[], list[BrokerOutput]]) -> None:
        try:
            outputs = call()
        except Exception as exc:
            if self.failure is None:
                self.failure = exc
            raise
        self._outputs += outputs

    def connection_opened(self, conn_id: int, *, now: float) -> None:
        self._run(lambda: self.oracle.connection_opened(conn_id, now=now))

    def receive_text(self, conn_id: int, text: str, *, now: float) -> None:
        self._run(lambda: self.oracle.receive_text(conn_id, text, now=now))

    def receive_binary(self, conn_id: int, data: bytes, *, now: float) -> None:
        self._run(lambda: self.oracle.receive_binary(conn_id, data, now=now))

    def receive_ping(self, conn_id: int, *, now: float) -> None:
        self._run(lambda: self.oracle.receive_ping(conn_id, now=now))

    def receive_pong(self, conn_id: int, *, now: float) -> None:
        self._run(lambda: self.oracle.receive_pong(conn_id, now=now))

    def connection_closed(self, conn_id: int, *, now: float) -> None:
        # As the broker does: what was not drained yet for a closed socket is dropped.
        self._outputs = without_connection(self._outputs, conn_id)
        self.ended.add(conn_id)
        self._run(lambda: self.oracle.connection_closed(conn_id, now=now))

    def handle_timer(self, now: float) -> None:
        self._run(lambda: self.oracle.handle_timer(now))

    def shutdown(self, *, now: float) -> None:
        self._run(lambda: self.oracle.shutdown(now=now))

    def next_deadline(self) -> float | None:
        try:
            return self.oracle.broker.next_deadline()
        except Exception as exc:
            if self.failure is None:
                self.failure = exc
            raise

    def drain_outputs(self) -> list[BrokerOutput]:
        outputs, self._outputs = self._outputs, []
        for out in expand_outputs(outputs):
            if isinstance(out, SendText):
                self.texts.setdefault(out.conn_id, deque()).append(out.text)
            elif isinstance(out, CloseConnection):
                self.closes[out.conn_id] = out
        return outputs


@dataclass(frozen=True, slots=True)
class _Peer:
    """The client side of one socket: its id at the driver, its WebSocket (``None``: raw)."""

    socket_id: int
    ws: WsConnection | None


class SocketBrokerHarness(BrokerHarness):
    """:class:`~meshproto.testing.BrokerHarness` through a real :class:`BrokerDriver`.

    See the module docstring. ``small`` also gives the driver short
    handshake and close timeouts and a message cap just over the broker's
    frame cap (so that both caps can be hit); otherwise the driver's cap is
    the broker's, as ``meshproto_anyio`` sets it.
    """

    ACCEPTS: ClassVar[tuple[str, ...]] = _ACCEPTS
    HANGUPS: ClassVar[tuple[tuple[str, int], ...]] = _HANGUPS
    FRAMINGS: ClassVar[tuple[tuple[int, int], ...]] = _FRAMINGS
    #: The ops of ``BrokerHarness`` and five of its own (see ``_byte_op``).
    BYTE_OPS: ClassVar[int] = BrokerHarness.BYTE_OPS + 5

    def __init__(self, *, small: bool = False, seed: int = 0) -> None:
        super().__init__(small=small, seed=seed)
        self.machine = ObservedBroker(self.oracle)
        cap = self.broker.options.hard_frame_cap
        self.driver = BrokerDriver(
            self.machine,
            max_message_bytes=cap + 1024 if small else cap,
            handshake_timeout=2.0 if small else DEFAULT_HANDSHAKE_TIMEOUT,
            close_timeout=1.0 if small else 2.0,
        )
        #: Message sizes ``op_oversize`` chooses from: over each cap.
        self.oversizes = (self.driver.max_message_bytes or cap) + 1, cap + 1
        self.peers: dict[int, _Peer] = {}  # sockets the driver has not closed
        self.silent: set[int] = set()  # sockets whose client reads and writes nothing more
        self.gone: set[int] = set()  # sockets the driver closed
        self.close_frames: set[int] = set()  # sockets whose client got a close frame
        self.client_closed: set[int] = set()  # sockets whose client sent a close frame first
        self.read_size = 0
        self.fragments = 1

    # --- checks -------------------------------------------------------------------

    @contextmanager
    def _driving(self, what: str) -> Iterator[None]:
        """Around one call of the driver: nothing may escape it, nothing may be contained."""
        try:
            yield
        except ContractViolation:
            raise
        except Exception as exc:
            raise ContractViolation(f"an exception escaped BrokerDriver.{what}: {exc!r}") from exc
        self._check_driver()

    def _check_driver(self) -> None:
        failure = self.machine.failure
        if isinstance(failure, ContractViolation):
            raise failure
        if failure is not None:
            raise ContractViolation(
                f"the broker raised {failure!r} (BrokerDriver contained it)"
            ) from failure
        if self.driver.internal_errors:
            raise ContractViolation(
                f"BrokerDriver contained {self.driver.internal_errors} unexpected "
                "exception(s): a bug (its traceback is logged on 'meshproto.ws')"
            )

    # --- the transport: WebSocket bytes through the driver -------------------------

    def _peer(self, slot: int) -> _Peer | None:
        return self.peers.get(self.conn(slot))

    def _client(self, slot: int) -> WsConnection | None:
        """The slot's client WebSocket, if it can send now."""
        peer = self._peer(slot)
        if peer is None or peer.ws is None or peer.socket_id in self.silent:
            return None
        return peer.ws if peer.ws.state is WsState.OPEN else None

    def is_open(self, slot: int) -> bool:
        return self._client(slot) is not None

    def next_deadline(self) -> float | None:
        with self._driving("next_deadline"):
            deadline = self.driver.next_deadline()
        return deadline

    def _accept(self, slot: int, ws: WsConnection | None) -> int:
        """The driver accepts a socket for ``slot``; returns its id."""
        with self._driving("socket_opened"):
            socket_id = self.driver.socket_opened(now=self.now)
        if socket_id in self.peers or socket_id in self.gone:
            raise ContractViolation(f"BrokerDriver gave out socket id {socket_id} twice")
        self.peers[socket_id] = _Peer(socket_id, ws)
        self.slots[slot] = socket_id
        if ws is not None:  # its handshake request: everything it writes later is frames
            self._to_driver(socket_id, bytes(ws.data_to_send()))
        return socket_id

    def _connect(self, slot: int) -> None:
        ws = WsConnection.client(_ADDRESS, max_message_bytes=_CLIENT_CAP)
        socket_id = self._accept(slot, ws)
        self._settle()
        if ws.state is not WsState.OPEN or socket_id not in self.oracle.open:
            raise ContractViolation(f"socket {socket_id}'s handshake did not open it: {ws.state}")

    def _write(self, slot: int, message: str | bytes) -> None:
        """One message from the slot's client, framed as ``op_framing`` said."""
        socket_id = self.conn(slot)
        if socket_id in self.silent:
            return  # a silent client writes nothing
        ws = self._client(slot)
        if ws is None:  # no open WebSocket: the frames reach the driver all the same
            self._to_driver(socket_id, _message_frames(message, 1))
        elif self.fragments > 1:
            self._to_driver(socket_id, _message_frames(message, self.fragments))
        elif isinstance(message, str):
            ws.send_text(message)
        else:
            ws.send_binary(message)
        self._settle()

    def _deliver_text(self, slot: int, text: str) -> None:
        self._write(slot, text)

    def _deliver_binary(self, slot: int, data: bytes) -> None:
        self._write(slot, data)

    def _deliver_ping(self, slot: int, ping: bool) -> None:
        socket_id = self.conn(slot)
        if socket_id in self.silent:
            return
        ws = self._client(slot)
        if ping and ws is not None:
            ws.send_ping(b"ping")
        else:  # an unsolicited pong, or a ping without an open WebSocket
            self._to_driver(socket_id, _frame(_OP_PING if ping else _OP_PONG, b"p"))
        self._settle()

    def _disconnect(self, slot: int) -> None:
        self.op_hangup(slot, 0)

    def _run_timers(self, now: float) -> None:
        with self._driving("handle_timer"):
            self.driver.handle_timer(now)
        self._settle()

    def _shutdown(self) -> None:
        # As an adapter shuts down: the broker first, then the driver carries it out.
        self.machine.shutdown(now=self.now)
        self._settle()

    def _check_finished(self) -> None:
        self._settle()
        self.oracle.check_finished()
        if self.driver.socket_count:
            raise ContractViolation(f"BrokerDriver still has sockets {self.driver.socket_ids()}")
        if self.driver.next_deadline() is not None:
            raise ContractViolation(
                f"BrokerDriver still has a deadline: {self.driver.next_deadline()}"
            )
        if self.peers:
            raise ContractViolation(f"BrokerDriver never closed sockets {sorted(self.peers)}")
        unread = {sid: len(texts) for sid, texts in self.machine.texts.items() if texts}
        if unread:
            raise ContractViolation(f"texts the broker wrote never reached their clients: {unread}")
        self._check_driver()

    # --- carrying bytes -------------------------------------------------------------

    def _to_driver(self, socket_id: int, data: bytes) -> None:
        """Bytes from a client, in reads as ``op_framing`` said."""
        size = self.read_size
        if size == 0:
            pieces = [data]
        else:
            pieces = [data[:size], data[size : 2 * size], data[2 * size : 3 * size]]
            pieces.append(data[3 * size :])
        machine = self.machine
        for piece in pieces:
            if not piece:
                continue
            written = machine.texts.setdefault(socket_id, deque())
            before, ended = len(written), socket_id in machine.ended
            with self._driving("receive_data"):
                self.driver.receive_data(socket_id, piece, now=self.now)
            if socket_id in machine.ended and not ended:
                # The read ended the WebSocket (a close, a bad frame, a message over
                # the cap) before the broker heard what came with it: no frame may
                # follow a close frame, so the driver cannot send the answers.
                for _ in range(len(written) - before):
                    written.pop()

    def _settle(self) -> None:
        """Carry bytes both ways until neither side has anything to say."""
        for _ in range(_MAX_ROUNDS):
            with self._driving("drain_commands"):
                commands = self.driver.drain_commands(now=self.now)
            for command in commands:
                self._to_client(command)
            wrote = False
            for peer in list(self.peers.values()):
                if peer.ws is None or peer.socket_id not in self.peers:
                    continue
                data = bytes(peer.ws.data_to_send())
                if data and peer.socket_id not in self.silent:
                    wrote = True
                    self._to_driver(peer.socket_id, _remasked(data))
            if not commands and not wrote:
                return
        raise ContractViolation(f"the sockets were still busy after {_MAX_ROUNDS} rounds")

    def _to_client(self, command: object) -> None:
        if not isinstance(command, (WriteBytes, CloseSocket)):
            raise ContractViolation(f"BrokerDriver asked for {command}")
        socket_id = command.socket_id
        if socket_id in self.gone:
            raise ContractViolation(
                f"BrokerDriver named socket {socket_id} after closing it: {command}"
            )
        peer = self.peers.get(socket_id)
        if peer is None:
            raise ContractViolation(
                f"BrokerDriver named socket {socket_id}, never opened: {command}"
            )
        reads = peer.ws is not None and socket_id not in self.silent
        if isinstance(command, WriteBytes):
            if reads:
                assert peer.ws is not None
                for event in peer.ws.receive_data(bytes(command.data)):
                    self._client_event(socket_id, event)
            return
        del self.peers[socket_id]
        self.gone.add(socket_id)
        unread = self.machine.texts.pop(socket_id, None)
        if not reads:
            self.silent.discard(socket_id)
            return
        assert peer.ws is not None
        for event in peer.ws.receive_data(None):  # EOF
            self._client_event(socket_id, event)
        close = self.machine.closes.get(socket_id)
        expected = close is not None and socket_id not in self.client_closed
        if expected and socket_id not in self.close_frames:
            raise ContractViolation(
                f"the broker closed socket {socket_id} ({close}), but no close frame"
            )
        if unread:
            raise ContractViolation(
                f"{len(unread)} texts the broker wrote never reached socket {socket_id}'s "
                f"client, the first: {unread[0][:200]!r}"
            )

    def _client_event(self, socket_id: int, event: WsEvent) -> None:
        if isinstance(event, TextReceived):
            text = event.text
            try:
                decode(text)
            except RemoteProtocolError as exc:
                raise ContractViolation(
                    f"socket {socket_id}'s client got a frame that does not decode ({exc}): "
                    f"{text[:200]!r}"
                ) from None
            written = self.machine.texts.get(socket_id)
            if not written:
                raise ContractViolation(
                    f"socket {socket_id}'s client got a text the broker never wrote: {text[:200]!r}"
                )
            expected = written.popleft()
            if text != expected:
                raise ContractViolation(
                    f"socket {socket_id}'s client got {text[:200]!r}, "
                    f"but the broker wrote {expected[:200]!r}"
                )
            self._noticed((json.loads(text),))
        elif isinstance(event, BinaryReceived):
            raise ContractViolation(f"socket {socket_id}'s client got a binary message: {event}")
        elif isinstance(event, Closed):
            if not event.by_peer:
                raise ContractViolation(
                    f"socket {socket_id}'s client could not read the driver: {event}"
                )
            if event.code is not None:
                self.close_frames.add(socket_id)
                close = self.machine.closes.get(socket_id)
                if close is not None and (event.code, event.reason) != (close.code, close.reason):
                    raise ContractViolation(
                        f"the broker closed socket {socket_id} with {close.code} "
                        f"{close.reason!r}, its client got {event.code} {event.reason!r}"
                    )

    # --- ops of the socket level ------------------------------------------------------

    def op_accept(self, slot: int, how: int) -> None:
        """A socket is accepted whose client never finishes a good handshake.

        It says nothing, or half its request and then nothing, or asks for
        another path (404), or sends garbage or a plain HTTP GET (400).
        """
        slot %= self.SLOTS
        kind = _pick(_ACCEPTS, how)
        if kind == "elsewhere":
            self._accept(slot, WsConnection.client(_ELSEWHERE, max_message_bytes=_CLIENT_CAP))
        else:
            socket_id = self._accept(slot, None)
            if kind == "half":
                request = bytes(WsConnection.client(_ADDRESS).data_to_send())
                self._to_driver(socket_id, request[: len(request) // 2])
            elif kind == "garbage":
                self._to_driver(socket_id, _GARBAGE_REQUEST)
            elif kind == "plain get":
                self._to_driver(socket_id, _PLAIN_GET)
        self._settle()

    def op_raw(self, slot: int, data: bytes) -> None:
        """Raw bytes on the slot's socket, whatever state it is in."""
        self._to_driver(self.conn(slot), data)
        self._settle()

    def op_hangup(self, slot: int, how: int) -> None:
        """The slot's client leaves: a close frame (any code), EOF, a broken socket, silence."""
        socket_id = self.conn(slot)
        kind, code = _pick(_HANGUPS, how)
        known = socket_id in self.peers
        if kind == "close":
            ws = self._client(slot)
            if ws is not None:
                ws.close(code, "bye")
                self.client_closed.add(socket_id)
            elif socket_id not in self.silent:  # a close frame all the same
                self._to_driver(socket_id, _frame(_OP_CLOSE, code.to_bytes(2, "big") + b"bye"))
        elif kind == "eof":
            if known:
                self.silent.add(socket_id)  # it reads nothing more
            with self._driving("receive_data"):
                self.driver.receive_data(socket_id, None, now=self.now)
        elif kind == "failed":
            if known:
                self.silent.add(socket_id)
            with self._driving("socket_failed"):
                self.driver.socket_failed(socket_id, now=self.now, reason="connection reset")
        elif known:
            self.silent.add(socket_id)
        self._settle()

    def op_framing(self, how: int) -> None:
        """From now on, clients' bytes arrive in small reads, or messages in fragments."""
        self.read_size, self.fragments = _pick(_FRAMINGS, how)

    def op_oversize(self, slot: int, which: int) -> None:
        """A message just over the driver's cap, or the broker's (the same unless small)."""
        size = _pick(self.oversizes, which)
        head, tail = '{"type":"set_summary","summary":"', '"}'
        self._write(slot, head + "x" * (size - len(head) - len(tail)) + tail)

    # --- fuzzing ----------------------------------------------------------------------

    def _byte_op(self, op: int, source: ByteSource) -> None:
        base = BrokerHarness.BYTE_OPS
        if op < base:
            super()._byte_op(op, source)
            return
        take = source.take
        op -= base
        if op == 0:
            self.op_accept(take(), take())
        elif op == 1:
            slot = take()
            self.op_raw(slot, source.chunk(64))
        elif op == 2:
            self.op_hangup(take(), take())
        elif op == 3:
            self.op_framing(take())
        else:
            slot, which = take(), take()
            if take() % 4 == 0:  # rare: a megabyte in the default limits
                self.op_oversize(slot, which)
