"""Recording a client connection to a file: ``connect(record=...)`` and ``MESHPROTO_RECORD``.

Both adapters' ``connect()`` take ``record=``, which :func:`client_driver`
turns into a :class:`~meshproto.replay.RecordingConnection` writing to a
:class:`RecordFile`: one JSON object per line, each stamped with the wall
time (``"wall"``, Unix seconds) besides the core's own ``now``. Replay a
file with ``python -m meshproto.replay FILE``.

``record`` is one of:

* ``None`` (the default): record only if the environment variable
  ``MESHPROTO_RECORD`` names a file;
* ``False``: never record;
* a path: record to it;
* a :class:`Recording`: a path, and whether to record message bodies.

Bodies are left out unless asked for: ``Recording(path, bodies=True)``, or
``MESHPROTO_RECORD_BODIES=1`` for a recording turned on by a path or by the
environment. Secret keys are never written (see ``meshproto/_record.py``).

A path may hold ``{pid}`` (this process's id) and ``{n}`` (1 for the
first client recording to that path in this process, 2 for the next ...);
without ``{n}``, a second client recording to the same path in one process
writes to ``NAME.2.jsonl`` instead of taking the first one's file.

If writing fails (a full disk), the recording stops with one warning on the
``meshproto.ws`` logger; the connection goes on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

__all__ = ["RECORD_BODIES_ENV", "RECORD_ENV", "RecordFile", "RecordSetting", "Recording"]

#: The environment variable that turns recording on: the file to write.
RECORD_ENV = "MESHPROTO_RECORD"
#: Set to ``1`` to record message bodies too.
RECORD_BODIES_ENV = "MESHPROTO_RECORD_BODIES"

logger = logging.getLogger("meshproto.ws")


@dataclass(frozen=True, slots=True)
class Recording:
    """Record a connection to ``path``; with ``bodies``, message bodies too."""

    path: str | os.PathLike[str]
    bodies: bool = False


#: What ``connect(record=...)`` takes.
RecordSetting = Recording | str | os.PathLike[str] | bool | None


def _bodies_from_env() -> bool:
    return os.environ.get(RECORD_BODIES_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def recording_for(record: RecordSetting) -> Recording | None:
    """What ``record=`` (and the environment) ask for: a :class:`Recording`, or ``None``."""
    if record is False:
        return None
    if isinstance(record, Recording):
        return record
    if record is None or record is True:
        path = os.environ.get(RECORD_ENV, "").strip()
        if not path:
            if record is True:
                raise ValueError(f"record=True needs {RECORD_ENV} to name a file")
            return None
        return Recording(path, _bodies_from_env())
    return Recording(record, _bodies_from_env())


# How many clients of this process have recorded to each path.
_USED: dict[str, int] = {}


def _claim(path: str | os.PathLike[str]) -> Path:
    template = os.fspath(path)
    key = template.replace("{pid}", str(os.getpid()))
    number = _USED.get(key, 0) + 1
    _USED[key] = number
    if "{n}" in key:
        return Path(key.replace("{n}", str(number)))
    chosen = Path(key)
    if number > 1:
        chosen = chosen.with_name(f"{chosen.stem}.{number}{chosen.suffix}")
    return chosen


class RecordFile:
    """A sink that writes each record as a JSON line, stamped with the wall time, and flushes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = _claim(path)
        self._file: IO[str] | None = self.path.open("w", encoding="utf-8")
        weakref.finalize(self, self._file.close)

    def __call__(self, record: dict[str, Any]) -> None:
        file = self._file
        if file is None:
            return
        record["wall"] = round(time.time(), 6)
        try:
            file.write(json.dumps(record) + "\n")
            file.flush()
        except (OSError, ValueError) as exc:
            logger.warning("recording to %s stopped: %s", self.path, exc)
            self._file = None
            with contextlib.suppress(OSError, ValueError):
                file.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __repr__(self) -> str:
        return f"RecordFile({str(self.path)!r})"
