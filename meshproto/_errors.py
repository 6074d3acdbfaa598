"""The two exception families, named for who erred.

``LocalProtocolError`` means *the caller* misused the API (a bad priority, a
body that is too large, a send after ``close()``). It is raised before any
state changes, so the connection is exactly as it was.

``RemoteProtocolError`` means *the peer* sent something the protocol does not
allow (malformed JSON, a binary message, a field of the wrong type). The codec
raises it; the client connection never lets it escape and turns it into a
:class:`~meshproto.MalformedFrame` event instead.
"""

from __future__ import annotations

__all__ = ["LocalProtocolError", "MeshProtoError", "RemoteProtocolError"]


class MeshProtoError(Exception):
    """Base class of every error meshproto raises on purpose."""


class LocalProtocolError(MeshProtoError):
    """The caller asked for something the protocol or the API forbids."""


class RemoteProtocolError(MeshProtoError):
    """The remote side sent something the protocol forbids."""
