"""Bugs planted in the client core, to show that the simulation catches them.

Each plant is a context manager that swaps one method of
:class:`~meshproto.ClientConnection` (on the class that defines it: the
connection, the link part it inherits, or its inbox) for a broken one, for
the duration of the ``with`` block, in this process. They reach into private
state on purpose: a plant is the kind of slip a change to the core could
make. The simulation applies one when asked (``Simulation(plant=...)``, or
``python -m meshproto.testing.sim --plant NAME``), so that the replay command
it prints for a failure reproduces the failure exactly.

* ``double-ack``: an acknowledged send stays pending, so it resolves a
  second time (its ack timeout turns it into an unknown outcome);
* ``dropped-resend``: sends in flight when the link drops are forgotten
  instead of going back to the outbox: never written again, never resolved;
* ``duplicate-delivery``: the inbox forgets the keys of messages already
  handed over, so a re-push of one (its ``client_ack`` lost in a cut) reaches
  the application again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from ... import ClientConnection, SendAcked
from ..._client_link import _ClientLink
from ..._inbox import Inbox

__all__ = ["PLANTS", "planted"]


def _double_ack() -> tuple[type, str, Callable[..., Any]]:
    original = ClientConnection._resolve

    def _resolve(self: ClientConnection, send_id: str, outcome: Any) -> None:
        record = self._sends.get(send_id)
        original(self, send_id, outcome)
        if isinstance(outcome, SendAcked) and record is not None:
            # The bug: the acknowledged send is left pending and in flight.
            self._sends[send_id] = record
            self._in_flight[send_id] = record

    return ClientConnection, "_resolve", _resolve


def _dropped_resend() -> tuple[type, str, Callable[..., Any]]:
    original = _ClientLink._link_lost

    def _link_lost(self: ClientConnection, now: float, cause: str) -> None:
        if self.options.resend_in_flight:
            # The bug: what was in flight is dropped, not put back in the outbox.
            for send_id in self._in_flight:
                del self._sends[send_id]
            self._in_flight.clear()
        original(self, now, cause)

    return _ClientLink, "_link_lost", _link_lost


def _duplicate_delivery() -> tuple[type, str, Callable[..., Any]]:
    original = Inbox.duplicate

    def duplicate(self: Inbox, push: Any) -> Any:
        if push.dedupe_key in self._handed:
            return False, None  # the bug: a handed-over key counts as new
        return original(self, push)

    return Inbox, "duplicate", duplicate


#: The plants by name.
PLANTS: dict[str, Callable[[], tuple[type, str, Callable[..., Any]]]] = {
    "double-ack": _double_ack,
    "dropped-resend": _dropped_resend,
    "duplicate-delivery": _duplicate_delivery,
}


@contextlib.contextmanager
def planted(name: str | None) -> Iterator[None]:
    """Plant the bug ``name`` (one of :data:`PLANTS`) for the ``with`` block; ``None``: none."""
    if name is None:
        yield
        return
    if name not in PLANTS:
        raise ValueError(f"no such plant {name!r}; the plants are {', '.join(PLANTS)}")
    owner, attribute, replacement = PLANTS[name]()
    saved = owner.__dict__[attribute]
    setattr(owner, attribute, replacement)
    try:
        yield
    finally:
        setattr(owner, attribute, saved)
