"""How the command's log lines look on stderr: text, or one JSON object per line.

A record may carry fields (``record.fields``, a dict: ``event``, ``conn``,
``mesh`` …, as :mod:`meshproto_cli._brokerlog` logs them). :class:`JsonFormatter`
puts them into its object; :class:`TextFormatter` adds them as ``key=value``
pairs after the message, each value made visible
(:func:`~meshproto_cli._output.visible`). Kept apart from the broker's log so
that the client commands, which use these formatters too, do not import the
reference broker.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from ._output import visible

__all__ = ["JsonFormatter", "TextFormatter"]


def _iso(created: float) -> str:
    from datetime import datetime, timezone  # noqa: PLC0415 (JSON logs only: not at start)

    stamp = datetime.fromtimestamp(created, timezone.utc)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time``, ``level``, ``logger``, ``message``, its fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                data.setdefault(key, value)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=True, default=str)


def _value(value: object) -> str:
    text = visible(str(value))
    if not text or any(ch.isspace() or ch in '"=' for ch in text):
        return json.dumps(text, ensure_ascii=False)
    return text


class TextFormatter(logging.Formatter):
    """``LEVEL logger: message key=value …``, every value made visible."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            pairs = " ".join(
                f"{key}={_value(value)}" for key, value in fields.items() if key != "event"
            )
            text = f"{text} {pairs}" if pairs else text
        return text
