"""What a client connection is told at birth: who it is, its timers and bounds.

:class:`ClientConfig` (the identity and the broker's URL) and
:class:`ClientOptions` (timers, bounds and policies) are checked once, here,
when they are made, so the connection never meets a bad value later. Every
string that will travel in a hello must be valid Unicode: a lone surrogate
(as ``os.fsdecode`` makes of an undecodable byte) could never be written as
UTF-8, so it is refused at once with :class:`LocalProtocolError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._backoff import Backoff
from ._codec import is_unicode_text
from ._errors import LocalProtocolError
from ._frames import Group
from ._quick import quick_init
from ._seams import PlaintextSealer, Sealer, Signer

__all__ = [
    "ATTESTATION_DEFAULT_TTL_MS",
    "ATTESTATION_MAX_TTL_MS",
    "MAX_FRAME_BYTES",
    "PRIORITIES",
    "STATUSES",
    "ClientConfig",
    "ClientOptions",
    "Counters",
    "SendHandle",
]

#: A parent attestation lives at most 24 hours (docs/protocol.md §3.2).
ATTESTATION_MAX_TTL_MS = 24 * 3600 * 1000
#: What the client mints by default: 12 hours, as the claudemesh command line
#: does. The 24 h bound is measured on the broker's clock, so an attestation
#: minted for the full 24 h is refused (``ttl_too_long``, for good) as soon as
#: the client's clock runs ahead of the broker's by a millisecond.
ATTESTATION_DEFAULT_TTL_MS = 12 * 3600 * 1000

#: The largest frame a client writes and the largest body it accepts (§1, §7).
MAX_FRAME_BYTES = 65_536
PRIORITIES = frozenset({"now", "next", "low"})
STATUSES = frozenset({"idle", "working", "dnd"})

# ClientConfig's string fields, checked to be valid Unicode.
_TEXT_FIELDS = (
    "url",
    "mesh_id",
    "member_id",
    "session_id",
    "cwd",
    "display_name",
    "hostname",
    "peer_type",
    "session_pubkey",
    "role",
)


def check_text(value: object, what: str) -> None:
    """Raise :class:`LocalProtocolError` unless ``value`` is a ``str`` of valid Unicode."""
    if not isinstance(value, str):
        raise LocalProtocolError(f"{what} must be a str, got {type(value).__name__}")
    if not is_unicode_text(value):
        raise LocalProtocolError(
            f"{what} is not valid Unicode text (it holds a lone surrogate): {value!r}"
        )


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Who this peer is and where its broker is.

    ``signer`` holds the member key. With ``session_signer`` (a session key,
    docs/protocol.md §3.2) every transport opens with ``session_hello``: a parent
    attestation minted afresh, valid ``attestation_ttl_ms`` (12 h by default,
    at most 24 h), signed by the member key, and the hello signed by the
    session key.
    Without it, the transport opens with a member ``hello``, which may still
    name a ``session_pubkey`` so that the broker can reattach the session.

    ``pid`` and ``cwd`` are reported in the hello; the core does not read them
    from the process, the adapters fill them in.

    Raises :class:`LocalProtocolError` for an attestation TTL out of range or
    a string field (the optional ones included, and group names and roles)
    that is not a ``str`` of valid Unicode.
    """

    url: str
    mesh_id: str
    member_id: str
    signer: Signer
    session_id: str
    pid: int = 0
    cwd: str = ""
    display_name: str | None = None
    hostname: str | None = None
    peer_type: str | None = None
    groups: tuple[Group, ...] | None = None
    session_pubkey: str | None = None
    sealer: Sealer = field(default_factory=PlaintextSealer)
    session_signer: Signer | None = None
    attestation_ttl_ms: int = ATTESTATION_DEFAULT_TTL_MS
    role: str | None = None

    def __post_init__(self) -> None:
        if not 0 < self.attestation_ttl_ms <= ATTESTATION_MAX_TTL_MS:
            raise LocalProtocolError(
                f"attestation_ttl_ms must be in (0, {ATTESTATION_MAX_TTL_MS}], "
                f"got {self.attestation_ttl_ms!r}"
            )
        for name in _TEXT_FIELDS:
            value = getattr(self, name)
            if value is not None:
                check_text(value, name)
        for group in self.groups or ():
            check_text(group.name, "a group name")
            if group.role is not None:
                check_text(group.role, "a group role")


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """Timers (seconds), bounds and policies. The defaults are docs/protocol.md §7's.

    ``inbox_limit`` chooses how pushed messages reach the application (see
    the theory of operation in :mod:`meshproto._client`): above 0, they wait
    in the inbox until taken, each acknowledged to the broker only when it is
    taken, and the connection asks its adapter to stop reading while the
    inbox holds ``inbox_limit`` or more; 0 hands each message over as an
    event and acknowledges it at once. ``dedupe_window`` is how many keys of
    the messages handed over last are remembered, so that the broker pushing
    one again does not deliver it twice; the keys of messages waiting or held
    unacknowledged are remembered besides, and ``dedupe_window -
    inbox_limit`` held at once stop the reading. ``accept_messages=False`` is for a
    peer that only sends: it takes no message at all and leaves every push
    unacknowledged, so that the broker keeps it for the member's other
    sessions. ``proven_after`` is how long a connection must stay open after
    ``hello_ack`` (unless a send is acknowledged on it sooner) before a later
    reconnect starts the backoff again from its first step.
    """

    connect_timeout: float = 10.0
    hello_timeout: float = 5.0
    ack_timeout: float = 10.0
    request_timeout: float = 10.0
    ping_interval: float = 30.0
    liveness_timeout: float = 75.0
    max_outbox: int = 100
    inbox_limit: int = 500
    dedupe_window: int = 4096
    max_requests: int = 64
    resend_in_flight: bool = True
    accept_messages: bool = True
    proven_after: float = 10.0
    backoff: Backoff = field(default_factory=Backoff)

    def __post_init__(self) -> None:
        for name in (
            "connect_timeout",
            "hello_timeout",
            "ack_timeout",
            "request_timeout",
            "ping_interval",
            "liveness_timeout",
            "proven_after",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and value > 0):
                raise LocalProtocolError(
                    f"{name} must be a positive number of seconds, got {value!r}"
                )
        for name in ("max_outbox", "dedupe_window", "max_requests"):
            value = getattr(self, name)
            if isinstance(value, bool) or not (isinstance(value, int) and value >= 1):
                raise LocalProtocolError(f"{name} must be a positive integer, got {value!r}")
        limit = self.inbox_limit
        if isinstance(limit, bool) or not (isinstance(limit, int) and limit >= 0):
            raise LocalProtocolError(f"inbox_limit must be >= 0, got {self.inbox_limit!r}")
        if limit * 2 > self.dedupe_window:
            # Keys of messages still in the inbox must stay in the dedupe window.
            raise LocalProtocolError(
                f"inbox_limit ({limit}) must be at most half of dedupe_window "
                f"({self.dedupe_window})"
            )


@dataclass(frozen=True, slots=True)
class Counters:
    """A snapshot of what the connection has done so far.

    ``declined_pushes`` counts messages left unacknowledged because the
    connection takes none (``accept_messages=False``).
    """

    frames_in: int = 0
    frames_out: int = 0
    reconnects: int = 0
    resends: int = 0
    duplicate_pushes: int = 0
    declined_pushes: int = 0


@quick_init
@dataclass(frozen=True, slots=True)
class SendHandle:
    """What ``send()`` returns at once; the outcome arrives as an event with ``id``.

    ``client_message_id`` is the idempotency key the receiver deduplicates
    on. It is ``id`` unless the send retries an earlier one under that
    earlier send's key (``send(..., client_message_id=...)``).
    """

    id: str
    target_spec: str
    priority: str
    client_message_id: str
