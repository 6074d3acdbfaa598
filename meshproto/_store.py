"""What the reference broker must not forget: its storage interface and an in-memory store.

The broker keeps presence (sockets, statuses, grace windows) in memory and
writes everything that must survive a restart through a :class:`Store`:

* **direct messages** (:class:`StoredMessage`), from the moment a send is
  accepted until the recipient's ``client_ack`` (``remove_acked``) or the
  message's time to live (``expire``). A message the broker has pushed but
  that is not yet acknowledged is still stored: a restart re-pushes it on the
  recipient's next hello. Which messages are *claimed* (pushed to a socket
  that is still open) is in-memory state of the broker, since no socket
  survives a restart anyway;
* **dedupe records** ``(mesh, sender member, client_message_id) -> messageId``
  so that a re-sent ``client_message_id`` is acknowledged with the original
  ``messageId`` and creates no second copy, even across a restart;
* **last-seen times** of members, for ``hello_ack.restored`` and the choice
  between ``peer_joined`` and ``peer_returned``.

Every method is a complete change on return: a later read sees it. When it
becomes *durable* is the store's to say. A store that writes through (it is
durable on return) is a plain :class:`Store`. A store that commits in batches
is also a :class:`BatchedStore`: it counts the changes made (``changes``) and
the changes durable (``committed``), and ``commit()`` makes every change made
so far durable at once, in one transaction. The broker itself never waits
for durability (it stays pure); whoever serves it must hold back every frame
the broker produced after a change until that change is committed, so that
nothing is acknowledged, or pushed, before it would survive a crash (see
``meshproto_ws.CommitGate``). Times are the broker's wall clock (Unix
seconds). Messages come back oldest first (the order in which they were
added).

:class:`MemoryStore` is the default; a SQLite store lives outside the pure
core (``meshproto_anyio.sqlite_store.SqliteStore``, a :class:`BatchedStore`).
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ._quick import quick_init

__all__ = ["BatchedStore", "MemoryStore", "Store", "StoredMessage"]


@quick_init
@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A direct message accepted by the broker and not yet acknowledged by its recipient.

    ``recipient`` is always the recipient's *member* pubkey (the bound and the
    acknowledgements are per member); ``recipient_session`` is set when the
    sender addressed one session of that member by its session pubkey.
    ``sender_session`` names the sending session (so a message a member sends
    to its own member key never comes back to the session that sent it).
    """

    message_id: str
    mesh_id: str
    recipient: str
    recipient_session: str | None
    sender_pubkey: str
    sender_member_pubkey: str
    sender_session: str
    priority: str
    nonce: str
    ciphertext: str
    client_message_id: str | None
    created_at: float
    expires_at: float


@runtime_checkable
class Store(Protocol):
    """The broker's durable state. See the module docstring."""

    # --- direct messages -----------------------------------------------------

    def add_message(self, message: StoredMessage) -> None:
        """Keep ``message`` until it is acknowledged or expires."""
        ...

    def messages_for(self, mesh_id: str, recipient: str) -> list[StoredMessage]:
        """Every stored message for the member ``recipient``, oldest first."""
        ...

    def count_for(self, mesh_id: str, recipient: str) -> int:
        """How many messages are stored for the member ``recipient``."""
        ...

    def remove_acked(
        self,
        mesh_id: str,
        recipient: str,
        *,
        message_id: str | None,
        client_message_id: str | None,
    ) -> list[str]:
        """Delete what ``recipient`` acknowledged; return the deleted message ids.

        Matches ``message_id`` if given and stored for this recipient, else
        the recipient's messages whose ``client_message_id`` matches.
        """
        ...

    def expire(self, now: float) -> int:
        """Delete messages and dedupe records with ``expires_at <= now``; count the messages."""
        ...

    def next_expiry(self) -> float | None:
        """The earliest ``expires_at`` of a stored message, or ``None``."""
        ...

    # --- dedupe records --------------------------------------------------------

    def dedupe_get(
        self, mesh_id: str, sender: str, client_message_id: str, *, now: float
    ) -> str | None:
        """The ``messageId`` recorded for this sender's ``client_message_id``, if not expired."""
        ...

    def dedupe_put(
        self,
        mesh_id: str,
        sender: str,
        client_message_id: str,
        message_id: str,
        *,
        now: float,
        expires_at: float,
        limit: int,
    ) -> None:
        """Record ``client_message_id -> message_id`` for ``sender``.

        Also drops this sender's expired records, and its oldest ones beyond ``limit``.
        """
        ...

    # --- members ----------------------------------------------------------------

    def last_seen(self, mesh_id: str, member: str) -> float | None:
        """When the member was last seen (connected or disconnected), or ``None`` if never."""
        ...

    def set_last_seen(self, mesh_id: str, member: str, when: float) -> None:
        """Record that the member was seen at ``when``."""
        ...


@runtime_checkable
class BatchedStore(Store, Protocol):
    """A :class:`Store` whose changes become durable in batches (group commit).

    ``commit`` may run in another thread than the one making changes: changes
    made while it runs belong to the next batch.
    """

    @property
    def changes(self) -> int:
        """How many changes have been made since the store was opened."""
        ...

    @property
    def committed(self) -> int:
        """How many of those changes are durable."""
        ...

    @property
    def commit_may_block(self) -> bool:
        """Whether ``commit`` may wait on the disk (an fsync); if not, it may run inline."""
        ...

    def commit(self) -> int:
        """Make every change made so far durable, in one transaction; return ``committed``."""
        ...


class MemoryStore:
    """A :class:`Store` in memory: the default, fast, and forgotten on restart."""

    __slots__ = ("_by_recipient", "_dedupe", "_expiries", "_messages", "_seen")

    def __init__(self) -> None:
        self._messages: dict[str, StoredMessage] = {}
        self._by_recipient: dict[tuple[str, str], dict[str, None]] = {}
        self._expiries: list[tuple[float, str]] = []  # heap; entries of deleted ids are stale
        self._dedupe: dict[tuple[str, str], OrderedDict[str, tuple[str, float]]] = {}
        self._seen: dict[tuple[str, str], float] = {}

    def __len__(self) -> int:
        return len(self._messages)

    def add_message(self, message: StoredMessage) -> None:
        self._messages[message.message_id] = message
        key = (message.mesh_id, message.recipient)
        self._by_recipient.setdefault(key, {})[message.message_id] = None
        expiries = self._expiries
        if len(expiries) > 2 * len(self._messages) + 1024:
            # Entries of acknowledged messages outnumber the live ones: rebuild,
            # so that the heap is bounded by what is stored, not by the TTL.
            expiries[:] = [(m.expires_at, m.message_id) for m in self._messages.values()]
            heapq.heapify(expiries)
        else:
            heapq.heappush(expiries, (message.expires_at, message.message_id))

    def messages_for(self, mesh_id: str, recipient: str) -> list[StoredMessage]:
        ids = self._by_recipient.get((mesh_id, recipient))
        if not ids:
            return []
        messages = self._messages
        return [messages[i] for i in ids]

    def count_for(self, mesh_id: str, recipient: str) -> int:
        return len(self._by_recipient.get((mesh_id, recipient), ()))

    def _delete(self, message_id: str) -> None:
        message = self._messages.pop(message_id)
        key = (message.mesh_id, message.recipient)
        ids = self._by_recipient[key]
        del ids[message_id]
        if not ids:
            del self._by_recipient[key]

    def remove_acked(
        self,
        mesh_id: str,
        recipient: str,
        *,
        message_id: str | None,
        client_message_id: str | None,
    ) -> list[str]:
        if message_id is not None:
            message = self._messages.get(message_id)
            if (
                message is not None
                and message.mesh_id == mesh_id
                and message.recipient == recipient
            ):
                self._delete(message_id)
                return [message_id]
        if client_message_id is None:
            return []
        gone = [
            m.message_id
            for m in self.messages_for(mesh_id, recipient)
            if m.client_message_id == client_message_id
        ]
        for mid in gone:
            self._delete(mid)
        return gone

    def expire(self, now: float) -> int:
        count = 0
        heap = self._expiries
        while heap and heap[0][0] <= now:
            _, mid = heapq.heappop(heap)
            message = self._messages.get(mid)
            if message is not None and message.expires_at <= now:
                self._delete(mid)
                count += 1
        for key in list(self._dedupe):
            records = self._dedupe[key]
            self._prune(records, now, None)
            if not records:
                del self._dedupe[key]
        return count

    def next_expiry(self) -> float | None:
        heap = self._expiries
        while heap and heap[0][1] not in self._messages:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    @staticmethod
    def _prune(records: OrderedDict[str, tuple[str, float]], now: float, limit: int | None) -> None:
        if limit is not None:
            while len(records) > limit:
                records.popitem(last=False)
        for cmid in [c for c, (_, exp) in records.items() if exp <= now]:
            del records[cmid]

    def dedupe_get(
        self, mesh_id: str, sender: str, client_message_id: str, *, now: float
    ) -> str | None:
        records = self._dedupe.get((mesh_id, sender))
        if records is None:
            return None
        record = records.get(client_message_id)
        if record is None or record[1] <= now:
            return None
        return record[0]

    def dedupe_put(
        self,
        mesh_id: str,
        sender: str,
        client_message_id: str,
        message_id: str,
        *,
        now: float,
        expires_at: float,
        limit: int,
        dropped: Callable[[str], None] | None = None,
        slack: int = 0,
    ) -> None:
        """As :meth:`Store.dedupe_put`; ``dropped`` hears each ``client_message_id`` let go.

        With ``slack``, the records may exceed ``limit`` by that many before
        the oldest are dropped, all at once, back down to ``limit`` (so that a
        store on disk trims in batches rather than on every send).
        """
        records = self._dedupe.get((mesh_id, sender))
        if records is None:
            records = self._dedupe[(mesh_id, sender)] = OrderedDict()
        records.pop(client_message_id, None)
        records[client_message_id] = (message_id, expires_at)
        keep = limit if len(records) > limit + slack else limit + slack
        # Records are added with non-decreasing expiry in practice, so the
        # expired ones sit at the front: drop them there, then trim.
        while records:
            cmid, first = next(iter(records.items()))
            if first[1] > now and len(records) <= keep:
                break
            records.popitem(last=False)
            if dropped is not None:
                dropped(cmid)

    def last_seen(self, mesh_id: str, member: str) -> float | None:
        return self._seen.get((mesh_id, member))

    def set_last_seen(self, mesh_id: str, member: str, when: float) -> None:
        self._seen[(mesh_id, member)] = when

    def __repr__(self) -> str:
        return f"MemoryStore({len(self._messages)} messages)"
