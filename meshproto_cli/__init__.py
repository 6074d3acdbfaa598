"""The ``meshproto`` command: a reference broker, send, listen, peers, and a demo."""

from __future__ import annotations

from ._app import main

__all__ = ["main"]
