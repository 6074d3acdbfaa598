"""One client socket, non-blocking: connect, TLS, reads, buffered writes, close.

A :class:`SocketLink` is owned by the I/O thread (:mod:`meshproto_sync._io`)
and only ever touched from it. It does the socket work and reports what
happened as :data:`LinkResult` values; it never talks to the driver itself.

States: ``CONNECTING`` (a non-blocking TCP connect, each resolved address
in turn) → ``HANDSHAKING`` (``wss://`` only: a non-blocking TLS handshake,
``server_hostname`` set) → ``OPEN`` → ``CLOSING`` (flushing what was
written, bounded by ``close_timeout``) → ``DONE`` (socket closed). A
failure anywhere closes the socket at once and goes to ``DONE``.

The link registers its own file descriptor with the selector it is given
(by number, so the TLS wrap keeps the registration) and unregisters it
before closing it; :meth:`sync_interest` brings the registration in line
with what the link waits for (TLS may want to read in order to write, and
the other way round).

Name resolution (``getaddrinfo``) is the one blocking step, done once per
connect in the I/O thread; an IP literal or ``localhost`` resolves at once.
"""

from __future__ import annotations

import enum
import errno
import os
import selectors
import socket
import ssl
from dataclasses import dataclass
from typing import Any

from meshproto_ws import WsAddress

__all__ = [
    "READ_BUDGET",
    "READ_SIZE",
    "LinkData",
    "LinkFailed",
    "LinkOpened",
    "LinkResult",
    "LinkState",
    "SocketLink",
]

#: How much one ``recv`` asks for.
READ_SIZE = 65_536
#: Reads per readiness before the other sockets (and the core's back-pressure)
#: get a turn: one, so that the core sees every chunk before the next is read
#: (``read_again`` is set when more may be waiting).
READ_BUDGET = 1
#: Most bytes handed to one TLS ``send`` (a retry after a would-block passes
#: at least as many, as OpenSSL requires).
TLS_WRITE_CHUNK = 262_144

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
_IN_PROGRESS = frozenset({0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN})
#: TLS errors that mean the other end went away, not that it was refused.
_TLS_HANG_UPS = (ssl.SSLEOFError, ssl.SSLZeroReturnError)


def _error_text(error: OSError) -> str:
    """Why a connect failed, for a person (``Connection refused``), as the anyio client says it.

    The system's text for the errno, without ``[Errno 111]``; a resolver's
    message (``Name or service not known``) as it is.
    """
    if isinstance(error, socket.gaierror):
        return error.strerror or str(error)
    return os.strerror(error.errno) if error.errno else str(error)


@dataclass(frozen=True, slots=True)
class LinkOpened:
    """TCP (and TLS) is up."""


@dataclass(frozen=True, slots=True)
class LinkData:
    """Bytes read, or ``None`` at EOF."""

    data: bytes | None


@dataclass(frozen=True, slots=True)
class LinkFailed:
    """Connecting failed or the socket broke; the link is ``DONE``."""

    reason: str


LinkResult = LinkOpened | LinkData | LinkFailed


class LinkState(enum.Enum):
    CONNECTING = "connecting"
    HANDSHAKING = "handshaking"
    OPEN = "open"
    CLOSING = "closing"
    DONE = "done"


class SocketLink:
    """A non-blocking TCP (or TLS) socket with a bounded write buffer."""

    def __init__(
        self,
        socket_id: int,
        address: WsAddress,
        selector: selectors.BaseSelector,
        *,
        ssl_context: ssl.SSLContext | None,
        max_buffered: int,
        close_timeout: float,
    ) -> None:
        self.socket_id = socket_id
        self.address = address
        self.state = LinkState.CONNECTING
        #: Set when the read budget ran out with data possibly left to read.
        self.read_again = False
        #: The owner's inbox is full: read nothing until this is cleared.
        self.paused = False
        #: While ``CLOSING``: when to give up flushing.
        self.close_deadline: float | None = None
        self._selector = selector
        self._ssl_context = ssl_context
        self._max_buffered = max_buffered
        self._close_timeout = close_timeout
        self._sock: socket.socket | None = None
        self._fd = -1
        self._registered = 0  # the events registered for self._fd, 0 if none
        self._addresses: list[tuple[int, Any]] = []
        self._buffer = bytearray()
        self._eof = False
        self._handshake_wants = _WRITE
        self._read_wants_write = False  # TLS: a read must wait for writability
        self._write_wants_read = False  # TLS: a write must wait for readability

    @property
    def done(self) -> bool:
        return self.state is LinkState.DONE

    @property
    def closing(self) -> bool:
        return self.state in (LinkState.CLOSING, LinkState.DONE)

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    # --- opening ---------------------------------------------------------------

    def begin(self) -> LinkFailed | None:
        """Resolve the host and start connecting; a failure is reported at once."""
        host, port = self.address.host, self.address.port
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            return self._could_not_connect(_error_text(exc))
        except ValueError as exc:  # the idna codec refused the name (UnicodeError)
            return self._could_not_connect(str(exc))
        self._addresses = [(info[0], info[4]) for info in infos]
        return self._next_address("no address")

    def _next_address(self, error: str) -> LinkFailed | None:
        self._close_socket()
        while self._addresses:
            family, sockaddr = self._addresses.pop(0)
            try:
                sock = socket.socket(family, socket.SOCK_STREAM)
            except OSError as exc:
                error = _error_text(exc)
                continue
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                code = sock.connect_ex(sockaddr)
            except OSError as exc:
                sock.close()
                error = _error_text(exc)
                continue
            if code in _IN_PROGRESS:
                self._sock = sock
                self._fd = sock.fileno()
                return None
            sock.close()
            error = os.strerror(code)
        return self._could_not_connect(error)

    def _connected(self) -> list[LinkResult]:
        assert self._sock is not None
        code = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code not in _IN_PROGRESS:
            failed = self._next_address(os.strerror(code))
            return [failed] if failed is not None else []
        if code != 0:
            return []  # spurious wake-up: still connecting
        if not self.address.secure:
            self.state = LinkState.OPEN
            return [LinkOpened()]
        context = self._ssl_context
        if context is None:
            context = self._ssl_context = ssl.create_default_context()
        try:
            self._sock = context.wrap_socket(
                self._sock, server_hostname=self.address.host, do_handshake_on_connect=False
            )
        except (OSError, ValueError) as exc:
            return [self._tls_failed(exc)]
        self.state = LinkState.HANDSHAKING
        return self._handshake()

    def _handshake(self) -> list[LinkResult]:
        sock = self._sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._handshake_wants = _READ
            return []
        except ssl.SSLWantWriteError:
            self._handshake_wants = _WRITE
            return []
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            return [self._tls_failed(exc)]
        self.state = LinkState.OPEN
        return [LinkOpened()]

    # --- readiness -------------------------------------------------------------

    def interest(self) -> int:
        """The selector events this link waits for (0: none)."""
        state = self.state
        if state is LinkState.CONNECTING:
            return _WRITE if self._sock is not None else 0
        if state is LinkState.HANDSHAKING:
            return self._handshake_wants
        events = 0
        if state is LinkState.OPEN and not self._eof and not self.paused:
            events |= _WRITE if self._read_wants_write else _READ
        if self._buffer and state in (LinkState.OPEN, LinkState.CLOSING):
            events |= _READ if self._write_wants_read else _WRITE
        return events

    def sync_interest(self) -> None:
        """Register, modify or unregister the socket as :meth:`interest` says."""
        wanted = self.interest() if self._fd >= 0 else 0
        if wanted == self._registered:
            return
        if self._registered == 0:
            self._selector.register(self._fd, wanted, self)
        elif wanted == 0:
            self._selector.unregister(self._fd)
        else:
            self._selector.modify(self._fd, wanted, self)
        self._registered = wanted

    def handle(self, events: int) -> list[LinkResult]:
        """Act on readiness ``events`` (or on ``read_again`` with ``events`` 0)."""
        state = self.state
        if state is LinkState.CONNECTING:
            return self._connected() if events else []
        if state is LinkState.HANDSHAKING:
            return self._handshake()
        results: list[LinkResult] = []
        if state is LinkState.OPEN and not self._eof and not self.paused:
            wanted = _WRITE if self._read_wants_write else _READ
            if events & wanted or self.read_again:
                results += self._read()
        if self._buffer and not self.done:
            failed = self.flush()
            if failed is not None:
                results.append(failed)
        return results

    def _read(self) -> list[LinkResult]:
        sock = self._sock
        assert sock is not None
        self.read_again = False
        self._read_wants_write = False
        chunks: list[bytes] = []
        failure: LinkFailed | None = None
        for _ in range(READ_BUDGET):
            try:
                data = sock.recv(READ_SIZE)
            except (BlockingIOError, ssl.SSLWantReadError):
                break
            except ssl.SSLWantWriteError:
                self._read_wants_write = True
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                data = b""
            except OSError as exc:
                failure = self._fail(f"read failed: {exc!r}")
                break
            if not data:
                self._eof = True
                break
            chunks.append(data)
        else:
            self.read_again = True
        results: list[LinkResult] = []
        if chunks:
            results.append(LinkData(b"".join(chunks) if len(chunks) > 1 else chunks[0]))
        if self._eof:
            results.append(LinkData(None))
        if failure is not None:
            results.append(failure)
        return results

    # --- writing and closing -----------------------------------------------------

    def write(self, data: bytes | memoryview) -> bool:
        """Buffer ``data``; ``False`` if closing, or if the buffer would overflow."""
        if self.closing or len(self._buffer) + len(data) > self._max_buffered:
            return False
        self._buffer += data
        return True

    def flush(self) -> LinkFailed | None:
        """Write what the socket takes now, without blocking."""
        sock = self._sock
        buffer = self._buffer
        if sock is None or not buffer or self.state not in (LinkState.OPEN, LinkState.CLOSING):
            return None
        self._write_wants_read = False
        secure = isinstance(sock, ssl.SSLSocket)
        while buffer:
            try:
                # TLS copies at most a chunk; a plain socket takes the buffer as is.
                sent = sock.send(bytes(buffer[:TLS_WRITE_CHUNK]) if secure else buffer)
            except (BlockingIOError, ssl.SSLWantWriteError):
                break
            except ssl.SSLWantReadError:
                self._write_wants_read = True
                break
            except OSError as exc:
                return self._fail(f"write failed: {exc!r}")
            del buffer[:sent]
        if not buffer and self.state is LinkState.CLOSING:
            self._finish()
        return None

    def close(self, now: float) -> None:
        """Flush what is buffered (until ``now + close_timeout``), then close."""
        if self.state is LinkState.OPEN:
            self.state = LinkState.CLOSING
            self.close_deadline = now + self._close_timeout
            if not self._buffer:
                self._finish()
        elif self.state is not LinkState.CLOSING:
            self._finish()  # still opening: abandon it

    def abort(self) -> None:
        """Close now; whatever is buffered is dropped."""
        self._buffer.clear()
        self._finish()

    def _could_not_connect(self, why: str) -> LinkFailed:
        return self._fail(f"could not connect to {self.address.url}: {why}")

    def _tls_failed(self, exc: Exception) -> LinkFailed:
        """A certificate refused or a protocol mismatch, worded as the anyio client does.

        Those are OpenSSL's verdicts on the broker, said as they are; anything
        else (the broker hung up during the handshake) names the handshake.
        """
        if isinstance(exc, ssl.SSLError) and not isinstance(exc, _TLS_HANG_UPS):
            return self._could_not_connect(str(exc))
        return self._fail(f"TLS handshake with {self.address.url} failed: {exc!r}")

    def _fail(self, reason: str) -> LinkFailed:
        self.abort()
        return LinkFailed(reason)

    def _finish(self) -> None:
        self._close_socket()
        self._addresses.clear()
        self.read_again = False
        self.state = LinkState.DONE

    def _close_socket(self) -> None:
        sock, self._sock = self._sock, None
        if self._registered:
            self._selector.unregister(self._fd)
            self._registered = 0
        self._fd = -1
        if sock is not None:
            sock.close()
