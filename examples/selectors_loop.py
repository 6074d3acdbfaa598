"""A meshproto client on the standard library's ``selectors``: an adapter in one file.

    meshproto broker &                       # an open mesh "local" on port 7900
    python examples/selectors_loop.py ws://127.0.0.1:7900/ws --ed25519 --to '*' --count 1

joins a mesh, sends one message (queued until the handshake is done), prints
the events, and exits once the send is acknowledged and ``--count`` messages
have arrived (status 0), or when ``--timeout`` passes or the broker refuses
us (status 1). The identity is a ``FakeSigner`` unless ``--ed25519`` (a fresh
key; needs ``meshproto[crypto]``): a reference broker with
``AcceptingVerifier`` takes either, ``meshproto broker`` verifies signatures.

Plain ``ws://`` only: no TLS here. Needs wsproto (``pip install 'meshproto[sync]'``).
``meshproto_ws.ClientDriver`` decides everything; this file carries out its
socket commands, feeds back what the sockets did, and calls ``handle_timer``
at ``next_deadline()``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import selectors
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from meshproto import (
    ClientOptions,
    Closed,
    Counters,
    Event,
    MessageReceived,
    ReconnectScheduled,
    Sealer,
    SendAcked,
    SendFailed,
    SendOutcomeUnknown,
    Signer,
    StateChanged,
    UnreadableMessage,
)
from meshproto.testing import FakeSigner
from meshproto_ws import ClientDriver, CloseSocket, OpenSocket, WriteBytes, client_driver

READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


@dataclass
class _Sock:
    sock: socket.socket
    out: bytearray = field(default_factory=bytearray)  # written, not yet taken by the socket
    connecting: bool = True
    registered: int = 0  # the selector events it is registered for (0: not registered)


class SelectorsAdapter:
    """Carries out one driver's commands with non-blocking sockets and a selector."""

    def __init__(self, driver: ClientDriver, on_event: Callable[[Event], None]) -> None:
        self.driver = driver
        self.on_event = on_event
        self.selector = selectors.DefaultSelector()
        self.socks: dict[int, _Sock] = {}

    def apply(self) -> None:
        """After every input: carry out the commands in order, then hand over the events.

        An event handler may call the core (``take_messages``, ``send``): what
        that produces is carried out in the next round, until nothing is left.
        """
        while True:
            commands = self.driver.drain_commands(now=time.monotonic())
            events = self.driver.drain_events()
            if not commands and not events:
                break
            for command in commands:
                if isinstance(command, OpenSocket):
                    self._open(command)
                elif isinstance(command, WriteBytes) and command.socket_id in self.socks:
                    self.socks[command.socket_id].out += command.data
                    self._flush(command.socket_id)
                elif isinstance(command, CloseSocket):
                    self.close(command.socket_id)
            for event in events:
                self.on_event(event)
        paused = self.driver.paused_socket  # the core's inbox is full: stop reading
        for socket_id, s in self.socks.items():  # EOF always ends in CloseSocket
            wanted = WRITE if s.connecting or s.out else 0
            if not s.connecting and socket_id != paused:
                wanted |= READ
            if wanted != s.registered:  # a selector cannot wait for nothing: unregister
                if s.registered:
                    self.selector.unregister(s.sock)
                if wanted:
                    self.selector.register(s.sock, wanted, socket_id)
                s.registered = wanted

    def poll(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the sockets; feed back what happened."""
        for key, mask in self.selector.select(max(0.0, timeout)):
            socket_id: int = key.data
            s = self.socks.get(socket_id)
            if s is None:
                continue  # closed by an earlier input of this round
            if s.connecting:  # the non-blocking connect finished, one way or the other
                error = s.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error:
                    self._fail(socket_id, f"could not connect: {os.strerror(error)}")
                else:
                    s.connecting = False
                    self.driver.socket_opened(socket_id, now=time.monotonic())
            if mask & READ and not s.connecting:
                self._read(socket_id, s)
            if mask & WRITE and socket_id in self.socks:
                self._flush(socket_id)
            self.apply()

    def close(self, socket_id: int, *, flush: bool = True) -> None:
        s = self.socks.pop(socket_id, None)
        if s is None:
            return
        if flush and s.out and not s.connecting:
            # One try. A production adapter keeps flushing until a deadline,
            # as meshproto_sync's I/O thread does.
            with contextlib.suppress(OSError):
                s.sock.send(s.out)
        if s.registered:
            self.selector.unregister(s.sock)
        s.sock.close()

    def _open(self, command: OpenSocket) -> None:
        host, port = command.address.host, command.address.port
        try:  # getaddrinfo blocks (briefly, for an IP literal or localhost)
            family, kind, proto, _, address = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )[0]
            sock = socket.socket(family, kind, proto)
        except OSError as exc:
            self.driver.socket_failed(command.socket_id, now=time.monotonic(), reason=str(exc))
            return
        sock.setblocking(False)
        code = sock.connect_ex(address)  # EINPROGRESS: the outcome shows as writability
        if code not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            sock.close()
            reason = f"could not connect: {os.strerror(code)}"
            self.driver.socket_failed(command.socket_id, now=time.monotonic(), reason=reason)
            return
        self.socks[command.socket_id] = _Sock(sock)  # registered at the end of apply()

    def _read(self, socket_id: int, s: _Sock) -> None:
        try:
            data = s.sock.recv(65_536)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(socket_id, f"read failed: {exc}")
            return
        wall_time_ms = time.time_ns() // 1_000_000  # Unix ms, for the signed hello
        now = time.monotonic()  # b"" is EOF, which the driver hears as None
        self.driver.receive_data(socket_id, data or None, now=now, wall_time_ms=wall_time_ms)

    def _flush(self, socket_id: int) -> None:
        s = self.socks[socket_id]
        if s.connecting or not s.out:
            return
        try:
            del s.out[: s.sock.send(s.out)]
        except BlockingIOError:
            pass  # the selector says when to try again
        except OSError as exc:
            self._fail(socket_id, f"write failed: {exc}")

    def _fail(self, socket_id: int, reason: str) -> None:
        self.close(socket_id, flush=False)
        self.driver.socket_failed(socket_id, now=time.monotonic(), reason=reason)

    def drive(self, stop_at: float, finished: Callable[[], bool]) -> bool:
        """Run until ``finished()`` (then ``True``) or ``time.monotonic() >= stop_at``."""
        driver = self.driver
        while not finished():
            now = time.monotonic()
            if now >= stop_at:
                return False
            deadline = driver.next_deadline()
            if deadline is not None and now >= deadline:
                driver.handle_timer(now)
                self.apply()
            else:
                self.poll(min(stop_at, stop_at if deadline is None else deadline) - now)
        return True


@dataclass
class Report:
    """What one :func:`run` did."""

    public_key: str
    sent: SendAcked | SendFailed | SendOutcomeUnknown | None = None
    received: list[MessageReceived] = field(default_factory=list)
    refused: Closed | None = None  # why the broker stopped us for good, if it did
    timed_out: bool = False
    counters: Counters = field(default_factory=Counters)

    @property
    def ok(self) -> bool:
        failed = isinstance(self.sent, (SendFailed, SendOutcomeUnknown))
        return not (self.timed_out or failed or self.refused is not None)


def describe(event: Event) -> str | None:
    """One line for a person. A peer's text goes through ``repr``: its controls stay inert."""
    if isinstance(event, MessageReceived):
        return f"received from {event.sender_pubkey[:12]}: {event.text!r}"
    if isinstance(event, StateChanged):
        return f"state: {event.old} -> {event.new}"
    if isinstance(event, SendAcked):
        return f"acked as {event.message_id}"
    if isinstance(event, SendFailed):
        return f"send failed (not delivered): {event.reason}"
    if isinstance(event, SendOutcomeUnknown):  # retry with client_message_id=... to dedupe
        return f"send outcome unknown: {event.reason}"
    if isinstance(event, ReconnectScheduled):
        return f"reconnecting in {event.delay:.2f} s: {event.cause}"
    if isinstance(event, Closed):
        return f"closed: {event.reason!r}"
    return None


def run(
    url: str,
    *,
    mesh_id: str = "local",
    member_id: str = "selectors",
    signer: Signer | None = None,
    sealer: Sealer | None = None,
    send_to: str | None = "*",
    text: str = "hello from a selectors loop",
    count: int = 0,
    timeout: float = 10.0,
    options: ClientOptions | None = None,
    on_event: Callable[[Event], None] | None = None,
    log: Callable[[str], None] | None = print,
) -> Report:
    """Join; send ``text`` to ``send_to`` (unless ``None``); wait for ``count`` messages; close.

    Returns after at most ``timeout`` seconds plus the bounded close, whatever happens.
    """
    if not url.startswith("ws://"):
        raise ValueError("this example speaks plain ws:// only (no TLS)")
    driver = client_driver(
        url,
        mesh_id=mesh_id,
        member_id=member_id,
        signer=signer if signer is not None else FakeSigner(member_id),
        sealer=sealer,
        display_name=member_id,
        options=options,
    )
    core = driver.connection
    report = Report(core.config.signer.public_key)
    send_id: str | None = None

    def handle(event: Event) -> None:
        if (
            isinstance(event, (SendAcked, SendFailed, SendOutcomeUnknown))
            and event.send_id == send_id
        ):
            report.sent = event
        elif isinstance(event, (MessageReceived, UnreadableMessage)):
            # The message waits in the core's inbox; taking it is the hand-over,
            # and only now does its client_ack go out (in apply's next round).
            taken = core.take_messages()
            report.received += [m for m in taken if isinstance(m, MessageReceived)]
        elif isinstance(event, Closed) and not event.by_user:
            report.refused = event
        line = describe(event)
        if log is not None and line is not None:
            log(line)
        if on_event is not None:
            on_event(event)

    def finished() -> bool:
        sent = send_id is None or report.sent is not None
        return report.refused is not None or (sent and len(report.received) >= count)

    adapter = SelectorsAdapter(driver, handle)
    try:
        now = time.monotonic()
        if send_to is not None:  # waits in the core's outbox; written after hello_ack
            send_id = core.send(send_to, text, "next", now=now).id
        driver.start(now)
        adapter.apply()
        report.timed_out = not adapter.drive(now + timeout, finished)
        # A close frame, then the broker's echo (the driver gives up after close_timeout).
        core.close(now=time.monotonic())
        adapter.apply()
        adapter.drive(time.monotonic() + driver.close_timeout + 0.5, lambda: not adapter.socks)
    finally:  # whatever is left (the broker never answered, or an exception)
        for socket_id in list(adapter.socks):
            adapter.close(socket_id, flush=False)
        adapter.selector.close()
    report.counters = core.counters
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A meshproto client on selectors (ws:// only).")
    parser.add_argument("url", help="broker URL, e.g. ws://127.0.0.1:7900/ws")
    parser.add_argument("--mesh", default="local", help="mesh id (%(default)s)")
    parser.add_argument("--member", default="selectors", help="member id (%(default)s)")
    parser.add_argument("--to", default="*", help="'*', @group, #topic or a pubkey (%(default)s)")
    parser.add_argument("--text", default="hello from a selectors loop", help="what to send")
    parser.add_argument("--no-send", action="store_true", help="only wait for messages")
    parser.add_argument("--ed25519", action="store_true", help="sign with a fresh ed25519 key")
    parser.add_argument("--count", type=int, default=0, help="messages to wait for (%(default)s)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds (%(default)s)")
    args = parser.parse_args(argv)
    signer: Signer | None = None
    sealer: Sealer | None = None
    if args.ed25519:
        from meshproto_crypto import BoxSealer, Ed25519Signer, KeyPair  # noqa: PLC0415

        keys = KeyPair.generate()
        signer, sealer = Ed25519Signer(keys), BoxSealer(keys)
    report = run(
        args.url,
        mesh_id=args.mesh,
        member_id=args.member,
        signer=signer,
        sealer=sealer,
        send_to=None if args.no_send else args.to,
        text=args.text,
        count=args.count,
        timeout=args.timeout,
    )
    outcome = "ok" if report.ok else "timed out" if report.timed_out else "failed"
    print(f"{outcome}: received {len(report.received)} as {report.public_key}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
