"""Where a ``ws://`` or ``wss://`` URL points: host, port, TLS and request target."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from meshproto import LocalProtocolError

__all__ = ["DEFAULT_PATH", "WsAddress", "parse_ws_url"]

#: The only path a broker upgrades (docs/protocol.md §1); also the default when a
#: URL names none.
DEFAULT_PATH = "/ws"


@dataclass(frozen=True, slots=True)
class WsAddress:
    """A parsed broker URL.

    ``target`` is the HTTP request target (path and query); ``host_header``
    is what the ``Host`` header carries (the port only when it is not the
    scheme's default).
    """

    host: str
    port: int
    secure: bool
    target: str = DEFAULT_PATH

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.secure else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        scheme = "wss" if self.secure else "ws"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}{self.target}"


def parse_ws_url(url: str) -> WsAddress:
    """Parse ``ws://host[:port][/path]`` or ``wss://…``.

    The port defaults to 80 (``ws``) or 443 (``wss``) and the path to ``/ws``.
    Raises :class:`~meshproto.LocalProtocolError` for any other scheme, a
    missing host or one the resolver cannot take (a part over 63
    characters), a bad port, user info, or a path that an HTTP request
    cannot carry (spaces, control characters).
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise LocalProtocolError(f"not a WebSocket URL: {url!r} ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss"):
        raise LocalProtocolError(f"the URL must start with ws:// or wss://, got {url!r}")
    if not parts.hostname:
        raise LocalProtocolError(f"the URL names no host: {url!r}")
    try:
        parts.hostname.encode("idna")  # what the resolver does with it
    except UnicodeError:
        raise LocalProtocolError(
            f"the host cannot be looked up (each part between dots is 1-63 long): {url!r}"
        ) from None
    if parts.username is not None or parts.password is not None:
        raise LocalProtocolError(f"user info is not supported in a broker URL: {url!r}")
    if parts.fragment:
        raise LocalProtocolError(f"a broker URL has no fragment: {url!r}")
    secure = scheme == "wss"
    target = parts.path or DEFAULT_PATH
    if parts.query:
        target = f"{target}?{parts.query}"
    if not target.isascii():
        raise LocalProtocolError(f"the URL path must be ASCII (percent-encode it): {url!r}")
    if not all("!" <= char <= "~" for char in target):  # what an HTTP request line may carry
        raise LocalProtocolError(
            f"the URL path must be printable ASCII without spaces (percent-encode them): {url!r}"
        )
    return WsAddress(
        host=parts.hostname,
        port=port if port is not None else (443 if secure else 80),
        secure=secure,
        target=target,
    )
