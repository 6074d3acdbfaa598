"""``meshproto broker``'s log: one INFO line per connect, refusal and disconnect.

:class:`LoggingBroker` is the reference :class:`~meshproto.Broker` with an
eye on its inputs and outputs (public methods only): a hello that is
accepted logs ``connect``, a hello that is refused (an ``error`` and a close
on a socket that never got a presence) logs ``refuse``, and a socket of a
presence that closes, from either side, logs ``disconnect`` with why. Each
record carries its fields (``event``, ``conn``, ``mesh``, ``member``,
``pubkey`` …) as ``record.fields``; :class:`JsonFormatter` prints them as one
JSON object per line (``--log-format json``), the text format as
``key=value`` pairs after the message. Values a peer chose are shown through
:func:`~meshproto_cli._output.visible` in the text format. (The formatters
live in :mod:`meshproto_cli._logformat`; they are re-exported here.)
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from meshproto import Broker, BrokerOutput, CloseConnection, SendText

from ._logformat import JsonFormatter, TextFormatter

__all__ = ["JsonFormatter", "LoggingBroker", "TextFormatter"]

logger = logging.getLogger("meshproto.cli.broker")


@dataclass(slots=True)
class _Conn:
    mesh: str | None
    member_key: str | None
    session_key: str | None
    session_id: str | None
    name: str | None = None
    since: float = 0.0
    fields: dict[str, Any] = field(default_factory=dict)


def _hello_claim(text: str) -> _Conn | None:
    """Who a hello says it is (before the broker checks it), or ``None`` for another frame."""
    if '"hello"' not in text and '"session_hello"' not in text:
        return None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("type") not in ("hello", "session_hello"):
        return None

    def text_field(name: str) -> str | None:
        value = data.get(name)
        return value[:128] if isinstance(value, str) else None

    member = text_field("pubkey") if data["type"] == "hello" else text_field("parentMemberPubkey")
    return _Conn(
        mesh=text_field("meshId"),
        member_key=member,
        session_key=text_field("sessionPubkey"),
        session_id=text_field("sessionId"),
    )


def _log(event: str, message: str, **fields: Any) -> None:
    fields = {k: v for k, v in fields.items() if v is not None}
    logger.info(message, extra={"fields": {"event": event, **fields}})


class LoggingBroker(Broker):
    """A :class:`~meshproto.Broker` that logs each connect, refusal and disconnect."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._live: dict[int, _Conn] = {}
        self._claims: dict[int, _Conn] = {}

    def receive_text(self, conn_id: int, text: str, *, now: float) -> None:
        if conn_id in self._live or not self.is_open(conn_id):
            super().receive_text(conn_id, text, now=now)
            return
        claim = _hello_claim(text)
        super().receive_text(conn_id, text, now=now)
        if claim is None:
            return
        if self.is_helloed(conn_id):
            self._connected(conn_id, claim, now)
        else:
            self._claims[conn_id] = claim  # a refusal: its error and close are in the outputs

    def connection_closed(self, conn_id: int, *, now: float) -> None:
        super().connection_closed(conn_id, now=now)
        self._claims.pop(conn_id, None)
        info = self._live.pop(conn_id, None)
        if info is not None:
            self._disconnected(conn_id, info, now, "closed by the client or the network")

    def drain_outputs(self) -> list[BrokerOutput]:
        outputs = super().drain_outputs()
        errors: dict[int, tuple[str, str]] = {}
        for output in outputs:
            if isinstance(output, SendText) and output.conn_id in self._claims:
                error = _error_frame(output.text)
                if error is not None:
                    errors[output.conn_id] = error
            elif isinstance(output, CloseConnection):
                self._closing(output, errors.get(output.conn_id))
        return outputs

    # --- what is logged --------------------------------------------------------------

    def _connected(self, conn_id: int, claim: _Conn, now: float) -> None:
        claim.since = now
        key = claim.session_key or claim.member_key
        if claim.mesh is not None:
            for peer in self.peers(claim.mesh):
                if peer.pubkey == key:
                    claim.name = peer.display_name
                    break
        self._live[conn_id] = claim
        _log(
            "connect",
            "connect",
            conn=conn_id,
            mesh=claim.mesh,
            member=claim.name,
            memberPubkey=claim.member_key,
            pubkey=key,
            sessionId=claim.session_id,
        )

    def _closing(self, close: CloseConnection, error: tuple[str, str] | None) -> None:
        conn_id = close.conn_id
        info = self._live.pop(conn_id, None)
        if info is not None:
            reason = f"closed by the broker: {close.code} {close.reason}".rstrip()
            self._disconnected(conn_id, info, time.time(), reason, code=close.code)
            return
        claim = self._claims.pop(conn_id, None)
        if error is None and claim is None:
            _log(
                "disconnect",
                "closed before any hello",
                conn=conn_id,
                code=close.code,
                reason=close.reason,
            )
            return
        code, message = error or (close.reason or "refused", "")
        _log(
            "refuse",
            "refuse",
            conn=conn_id,
            code=code,
            reason=message or None,
            close=close.code,
            mesh=claim.mesh if claim else None,
            memberPubkey=claim.member_key if claim else None,
            sessionId=claim.session_id if claim else None,
        )

    def _disconnected(
        self, conn_id: int, info: _Conn, now: float, why: str, code: int | None = None
    ) -> None:
        _log(
            "disconnect",
            "disconnect",
            conn=conn_id,
            mesh=info.mesh,
            member=info.name,
            pubkey=info.session_key or info.member_key,
            reason=why,
            code=code,
            seconds=round(max(0.0, now - info.since), 1),
        )


def _error_frame(text: str) -> tuple[str, str] | None:
    if '"error"' not in text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("type") != "error":
        return None
    code, message = data.get("code"), data.get("message")
    return (str(code), str(message) if message is not None else "")
