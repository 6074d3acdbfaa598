"""meshproto: a sans-IO implementation of the claudemesh broker protocol.

The core is pure: state machines that take frames, timers and user calls
(each with ``now``) and give back frames to write, transport actions,
application events and the next deadline. It performs no I/O, reads no clock,
starts no thread and depends on nothing outside the standard library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._backoff import BACKOFF_CAPS, Backoff
from ._client import (
    MAX_FRAME_BYTES,
    PERMANENT_REFUSALS,
    PRIORITIES,
    STATUSES,
    ClientConfig,
    ClientConnection,
    ClientOptions,
    Counters,
    SendHandle,
    is_permanent_close,
)
from ._codec import FRAME_TYPES, decode, encode, is_unicode_text
from ._errors import (
    ConnectionClosedError,
    LocalProtocolError,
    MeshProtoError,
    RemoteProtocolError,
    RequestError,
    SendError,
    SendOutcomeUnknownError,
)
from ._events import (
    Action,
    BrokerError,
    Closed,
    CloseTransport,
    ConnectionState,
    Event,
    HandshakeComplete,
    InternalError,
    MalformedFrame,
    MessageReceived,
    OpenTransport,
    PeersListed,
    ReconnectScheduled,
    RequestFailed,
    SendAcked,
    SendFailed,
    SendOutcomeUnknown,
    SendPing,
    StateChanged,
    SystemMessage,
    UnreadableMessage,
    WriteFrame,
)
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
from ._lazy import lazy_names
from ._reasons import FailureReason, classify_ack_error, classify_error_frame
from ._seams import (
    OpenError,
    PlaintextSealer,
    Sealer,
    Signer,
    attestation_signing_payload,
    b64decode,
    b64encode,
    hello_signing_payload,
    session_hello_signing_payload,
)
from ._targets import check_target, is_direct_target, is_pubkey

if TYPE_CHECKING:  # loaded on first use, below; spelled out for type checkers
    from ._broker import NO_PEER_TEXT, Broker, BrokerOptions
    from ._broker_outputs import (
        BrokerOutput,
        CloseConnection,
        PingConnection,
        SendText,
        SendTextMany,
        SendTextTail,
        expand_outputs,
        without_connection,
    )
    from ._registry import (
        AcceptingVerifier,
        AdmittingRegistry,
        Member,
        MemberRegistry,
        StaticRegistry,
        Verifier,
    )
    from ._store import BatchedStore, MemoryStore, Store, StoredMessage

#: The broker side, loaded on first use (PEP 562), so that a client, which
#: has no use for it, does not pay for importing it: name -> its module.
_LAZY = {
    **dict.fromkeys(("NO_PEER_TEXT", "Broker", "BrokerOptions"), "_broker"),
    **dict.fromkeys(
        (
            "BrokerOutput",
            "CloseConnection",
            "PingConnection",
            "SendText",
            "SendTextMany",
            "SendTextTail",
            "expand_outputs",
            "without_connection",
        ),
        "_broker_outputs",
    ),
    **dict.fromkeys(
        (
            "AcceptingVerifier",
            "AdmittingRegistry",
            "Member",
            "MemberRegistry",
            "StaticRegistry",
            "Verifier",
        ),
        "_registry",
    ),
    **dict.fromkeys(("BatchedStore", "MemoryStore", "Store", "StoredMessage"), "_store"),
}

__version__ = "0.2.0"

__all__ = [
    "BACKOFF_CAPS",
    "FRAME_TYPES",
    "MAX_FRAME_BYTES",
    "NO_PEER_TEXT",
    "PERMANENT_REFUSALS",
    "PRIORITIES",
    "STATUSES",
    "AcceptingVerifier",
    "Ack",
    "Action",
    "AdmittingRegistry",
    "Backoff",
    "BatchedStore",
    "Broker",
    "BrokerError",
    "BrokerOptions",
    "BrokerOutput",
    "ClientAck",
    "ClientConfig",
    "ClientConnection",
    "ClientOptions",
    "CloseConnection",
    "CloseTransport",
    "Closed",
    "ConnectionClosedError",
    "ConnectionState",
    "Counters",
    "ErrorFrame",
    "Event",
    "FailureReason",
    "Frame",
    "Group",
    "HandshakeComplete",
    "Hello",
    "HelloAck",
    "InternalError",
    "ListPeers",
    "LocalProtocolError",
    "MalformedFrame",
    "Member",
    "MemberRegistry",
    "MemoryStore",
    "MeshProtoError",
    "MessageReceived",
    "OpenError",
    "OpenTransport",
    "ParentAttestation",
    "Peer",
    "PeersList",
    "PeersListed",
    "PingConnection",
    "PlaintextSealer",
    "Push",
    "ReconnectScheduled",
    "RemoteProtocolError",
    "RequestError",
    "RequestFailed",
    "Sealer",
    "Send",
    "SendAcked",
    "SendError",
    "SendFailed",
    "SendHandle",
    "SendOutcomeUnknown",
    "SendOutcomeUnknownError",
    "SendPing",
    "SendText",
    "SendTextMany",
    "SendTextTail",
    "SessionHello",
    "SetStatus",
    "SetSummary",
    "Signer",
    "StateChanged",
    "StaticRegistry",
    "Store",
    "StoredMessage",
    "SystemMessage",
    "UnknownFrame",
    "UnreadableMessage",
    "Verifier",
    "WriteFrame",
    "__version__",
    "attestation_signing_payload",
    "b64decode",
    "b64encode",
    "check_target",
    "classify_ack_error",
    "classify_error_frame",
    "decode",
    "encode",
    "expand_outputs",
    "hello_signing_payload",
    "is_direct_target",
    "is_permanent_close",
    "is_unicode_text",
    "is_pubkey",
    "session_hello_signing_payload",
    "without_connection",
]


__getattr__, __dir__ = lazy_names(globals(), _LAZY)
