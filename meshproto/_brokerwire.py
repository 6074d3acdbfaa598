"""The reference broker's ids, timestamps and the frames it builds by hand.

Ids come from the injected ``random.Random``: message and presence ids are
32 base62 characters, system messages carry a UUID-4-shaped id (docs/protocol.md
§3.3, §4.1, §4.2). Timestamps are ISO-8601 in UTC with milliseconds and a
``Z``. ``hello_ack`` and ``peers_list`` are built here rather than with
:func:`meshproto.encode` because the broker sends fields the client-side frame
classes do not model (``lastSeenAt``) or must send as ``null``
(``summary``, ``roleTag``); the texts stay compact JSON like ``encode``'s.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone
from random import Random
from typing import Any

from ._codec import compact_json
from ._frames import Group

__all__ = [
    "group_dicts",
    "hello_ack_text",
    "iso_ms",
    "peers_list_text",
    "random_id",
    "random_uuid",
    "to_json",
]

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


#: A random byte as a base62 digit (its value modulo 62) ...
_BYTE_TO_DIGIT = bytes(_BASE62.encode("ascii")[b % 62] for b in range(256))
#: ... except the bytes from 248 up, which are dropped: 256 = 4 * 62 + 8, so
#: keeping them would make the first eight digits likelier than the rest.
_UNEVEN_BYTES = bytes(range(4 * 62, 256))


def random_id(rng: Random, length: int = 32) -> str:
    """``length`` base62 characters drawn from ``rng``, each digit equally likely.

    Random bytes, each mapped to a digit by one ``bytes.translate``; the few
    that would skew the digits are dropped, and more drawn if too few are left.
    """
    digits = b""
    while len(digits) < length:  # one draw of length + 8 bytes almost always suffices
        digits += rng.randbytes(length + 8).translate(_BYTE_TO_DIGIT, _UNEVEN_BYTES)
    return digits[:length].decode("ascii")


def random_uuid(rng: Random) -> str:
    """A UUID-4-shaped string drawn from ``rng``."""
    value = rng.getrandbits(128)
    value = (value & ~(0xF000 << 64)) | (0x4000 << 64)  # version 4
    value = (value & ~(0xC000 << 48)) | (0x8000 << 48)  # RFC 4122 variant
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def iso_ms(when: float) -> str:
    """Unix seconds as ``2026-11-27T00:20:27.982Z``; out-of-range times clamp to the epoch."""
    try:
        millis = int(when * 1000)
    except (OverflowError, ValueError):
        millis = 0
    return _iso_millis(millis)


@functools.lru_cache(maxsize=16)
def _iso_millis(millis: int) -> str:
    """:func:`iso_ms` of a whole millisecond; a busy broker stamps many pushes in each."""
    seconds, fraction = divmod(millis, 1000)
    if not _FIRST_SECOND <= seconds <= _LAST_SECOND:
        seconds, fraction = 0, 0
    return f"{_iso_seconds(seconds)}.{fraction:03d}Z"


# The seconds datetime can represent (years 1 to 9999), relative to the epoch.
_FIRST_SECOND = -62_135_596_800
_LAST_SECOND = 253_402_300_799


@functools.lru_cache(maxsize=4)
def _iso_seconds(seconds: int) -> str:
    """The ``YYYY-MM-DDTHH:MM:SS`` part; consecutive pushes share a second, so it is cached."""
    moment = _EPOCH + timedelta(seconds=seconds)
    return f"{moment:%Y-%m-%dT%H:%M:%S}"


def to_json(obj: Mapping[str, Any]) -> str:
    """Compact JSON, as :func:`meshproto.encode` writes it."""
    return compact_json(obj)


def group_dicts(groups: Iterable[Group]) -> list[dict[str, str]]:
    """Groups as the wire writes them, ``[{name, role?}]``."""
    return [
        {"name": g.name} if g.role is None else {"name": g.name, "role": g.role} for g in groups
    ]


def hello_ack_text(
    *,
    presence_id: str,
    display_name: str,
    profile_groups: Iterable[Group],
    last_seen: float | None,
) -> str:
    """``hello_ack`` (docs/protocol.md §3.3); ``restored``/``lastSeenAt`` when seen before."""
    ack: dict[str, Any] = {
        "type": "hello_ack",
        "presenceId": presence_id,
        "memberDisplayName": display_name,
        "memberProfile": {
            "roleTag": None,
            "groups": group_dicts(profile_groups),
            "messageMode": "push",
        },
        "meshPolicy": {},
    }
    if last_seen is not None:
        ack["restored"] = True
        ack["lastSeenAt"] = iso_ms(last_seen)
    return to_json(ack)


def peers_list_text(peers: list[dict[str, Any]], req_id: str | None) -> str:
    """``peers_list``; ``_reqId`` only when the request had one (§4.4)."""
    out: dict[str, Any] = {"type": "peers_list", "peers": peers}
    if req_id is not None:
        out["_reqId"] = req_id
    return to_json(out)
