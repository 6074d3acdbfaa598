"""Group commit for a broker server: no frame leaves before the changes it follows are durable.

Theory of operation
===================

The broker writes what must survive a restart through its store *before* it
produces the frame that depends on it (an ``ack{queued: true}`` after the
message is stored, a push after that), and stays pure: it never waits for a
disk. A :class:`~meshproto.BatchedStore` makes changes durable in batches
(``changes`` counts the changes made, ``committed`` the durable ones, and
``commit()`` writes a whole batch in one transaction). Between the two sits
:class:`CommitGate`, which a server puts between the broker driver's socket
commands and the sockets:

* ``admit(commands)``, after every input: if every change the broker has
  made is durable and nothing is held, the commands go out at once;
  otherwise they are held, stamped with the number of changes made so far
  (their *barrier*). Once anything is held, everything after it is held
  too, so that each socket's bytes keep their order;
* ``needs_commit``: a change is not durable yet: the server should commit
  (in a worker thread, so that the event loop goes on serving; inputs that
  arrive meanwhile make changes that join the next batch);
* ``release()``, after each commit: the held commands whose barrier is now
  durable, in the order they were produced.

So one commit covers every send, acknowledgement and dedupe record of every
socket since the last one, and an acknowledgement is released only after
the commit that made its message durable. If the process dies before a
commit, the frames that depended on it were never sent: a sender that saw no
ack sends again (under the same ``client_message_id``), and nothing was
pushed that the store does not have.

Sans-IO: no thread, no clock, no socket.
"""

from __future__ import annotations

from collections import deque

from meshproto import BatchedStore

from ._commands import SocketCommand

__all__ = ["CommitGate"]


class CommitGate:
    """Holds socket commands back until the store has committed what they follow."""

    __slots__ = ("_held", "_store", "held_most")

    def __init__(self, store: BatchedStore) -> None:
        self._store = store
        self._held: deque[tuple[int, list[SocketCommand]]] = deque()
        #: The most commands held at once so far (for the curious and the benches).
        self.held_most = 0

    @property
    def held(self) -> int:
        """Commands held back now."""
        return sum(len(commands) for _, commands in self._held)

    @property
    def needs_commit(self) -> bool:
        """Whether a change is not durable yet."""
        store = self._store
        return store.changes > store.committed

    def admit(self, commands: list[SocketCommand]) -> list[SocketCommand]:
        """Commands the driver produced now: those that may go at once (the rest are held)."""
        if not commands:
            return commands
        store = self._store
        if not self._held and store.changes <= store.committed:
            return commands
        self._held.append((store.changes, commands))
        held = self.held
        self.held_most = max(self.held_most, held)
        return []

    def release(self) -> list[SocketCommand]:
        """After a commit: the held commands whose changes are durable now, in order."""
        committed = self._store.committed
        held = self._held
        out: list[SocketCommand] = []
        while held and held[0][0] <= committed:
            out.extend(held.popleft()[1])
        return out
