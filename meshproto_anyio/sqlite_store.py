"""A persistent :class:`meshproto.Store` on SQLite (standard library ``sqlite3``), in batches.

``Broker(registry, verifier=..., rng=..., store=SqliteStore("broker.db"))``
makes the reference broker's durable state survive a restart: stored and
unacknowledged direct messages, dedupe records and members' last-seen times.
A new ``Broker`` on the same file re-pushes every stored message on its
recipient's next hello and still acknowledges a re-sent
``client_message_id`` with the original ``messageId``.

Theory of operation
===================

The store is two things: a :class:`~meshproto.MemoryStore`, which answers
every read and takes every change at once, and a journal of the changes not
yet written to the database. Opening the store loads the database into the
memory store (the one time whole tables are read). After that the broker's
thread never touches SQLite: a change is applied in memory and appended to
the journal, in a few microseconds.

:meth:`SqliteStore.commit` is the batch boundary (group commit): it takes
the journal as it stands and writes it in **one** transaction, however many
sends, acknowledgements and dedupe records it holds. It may run in a worker
thread, and changes made while it runs go to the next batch. The anyio
server commits once per turn of its event loop: inline when the commit does
not wait on the disk (``synchronous="NORMAL"``, see
:attr:`SqliteStore.commit_may_block`), in a worker thread when it fsyncs
(``"FULL"``), so that the loop is never blocked by the disk. ``changes`` and
``committed`` count the changes made and those made durable, which is all a
server needs to release, after each commit, exactly the frames whose
changes it covers (the write-through promise: nothing is acknowledged
``queued: true``, or pushed, before it is durable).

Every statement a batch runs finds its rows through an index: inserts,
deletes by ``message_id`` or by ``(mesh, sender, client_message_id)``, and
the expiry sweeps by ``expires_at``. No per-send cost grows with the size of
a table. A sender's dedupe records may exceed ``dedupe_limit_per_member`` by
a tenth before its oldest are dropped, all in one statement, so that a
sender at the limit does not pay a delete on every send. The statements are
listed in :data:`STATEMENTS`; tests check each one's query plan, and that its
cost does not grow with a sender's history.

Durability: the database runs in WAL mode. ``synchronous="NORMAL"`` (the
default) survives a crash of the process, which is the case the broker
cares about; ``"FULL"`` also survives a power cut or an OS crash, at the
price of an fsync at every commit. Memory: everything stored is held in
memory as well (the reference broker bounds it per member).

This module needs nothing but the standard library and does not depend on
anyio.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from meshproto import MemoryStore, StoredMessage

__all__ = ["STATEMENTS", "SqliteStore"]

_SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL UNIQUE,
    mesh_id TEXT NOT NULL,
    recipient TEXT NOT NULL,
    recipient_session TEXT,
    sender_pubkey TEXT NOT NULL,
    sender_member_pubkey TEXT NOT NULL,
    sender_session TEXT NOT NULL,
    priority TEXT NOT NULL,
    nonce TEXT NOT NULL,
    ciphertext TEXT NOT NULL,
    client_message_id TEXT,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_recipient ON messages (mesh_id, recipient, seq);
CREATE INDEX IF NOT EXISTS messages_by_expiry ON messages (expires_at);
CREATE TABLE IF NOT EXISTS dedupe (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    mesh_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    client_message_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    expires_at REAL NOT NULL,
    UNIQUE (mesh_id, sender, client_message_id)
);
CREATE INDEX IF NOT EXISTS dedupe_by_sender ON dedupe (mesh_id, sender, seq);
CREATE INDEX IF NOT EXISTS dedupe_by_expiry ON dedupe (expires_at);
CREATE TABLE IF NOT EXISTS members (
    mesh_id TEXT NOT NULL,
    member TEXT NOT NULL,
    last_seen REAL NOT NULL,
    PRIMARY KEY (mesh_id, member)
);
"""

_COLUMNS = (
    "message_id, mesh_id, recipient, recipient_session, sender_pubkey, sender_member_pubkey, "
    "sender_session, priority, nonce, ciphertext, client_message_id, created_at, expires_at"
)

#: Every statement a commit may run, by name. Each must use an index (tested).
STATEMENTS = {
    "add_message": f"INSERT INTO messages ({_COLUMNS}) VALUES "
    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "delete_message": "DELETE FROM messages WHERE message_id = ?",
    "expire_messages": "DELETE FROM messages WHERE expires_at <= ?",
    "put_dedupe": "INSERT OR REPLACE INTO dedupe "
    "(mesh_id, sender, client_message_id, message_id, expires_at) VALUES (?, ?, ?, ?, ?)",
    "delete_dedupe": "DELETE FROM dedupe WHERE mesh_id = ? AND sender = ? "
    "AND client_message_id = ?",
    "expire_dedupe": "DELETE FROM dedupe WHERE expires_at <= ?",
    "set_last_seen": "INSERT INTO members (mesh_id, member, last_seen) VALUES (?, ?, ?) "
    "ON CONFLICT (mesh_id, member) DO UPDATE SET last_seen = excluded.last_seen",
}

#: What opening the store reads, once: whole tables, in the order they were written.
LOAD_STATEMENTS = {
    "messages": f"SELECT {_COLUMNS} FROM messages ORDER BY seq",
    "dedupe": "SELECT mesh_id, sender, client_message_id, message_id, expires_at "
    "FROM dedupe ORDER BY seq",
    "members": "SELECT mesh_id, member, last_seen FROM members",
}

#: A journal entry: a statement's name and its parameters, or a list of them.
_Change = tuple[str, tuple[object, ...] | list[tuple[object, ...]]]


class SqliteStore:
    """A :class:`meshproto.BatchedStore` kept in the SQLite database at ``path``.

    ``path`` may be ``":memory:"`` (useful in tests; forgotten on close).
    ``synchronous`` is ``"NORMAL"`` (survives a process crash) or ``"FULL"``
    (also a power cut); ``"OFF"`` and ``"EXTRA"`` are SQLite's too. Raises
    ``ValueError`` for an unknown mode or a database of another schema
    version, and ``sqlite3.DatabaseError`` for a file that is not a database.
    """

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "NORMAL") -> None:
        mode = synchronous.upper() if isinstance(synchronous, str) else ""
        if mode not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, got {synchronous!r}")
        self.path = os.fspath(path)
        self.synchronous = mode
        # Autocommit mode: transactions are explicit. Used by one thread at a
        # time (the one that commits), under the commit lock.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self._open()
        except BaseException:
            self._db.close()
            raise
        self._memory = MemoryStore()
        self._load()
        self._journal: list[_Change] = []
        self._lock = threading.Lock()  # guards the journal and the counters
        self._commit_lock = threading.Lock()  # one commit at a time
        self._changes = 0
        self._committed = 0

    def _open(self) -> None:
        db = self._db
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.synchronous}")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, _SCHEMA_VERSION):
            raise ValueError(
                f"{self.path}: schema version {version}, this SqliteStore knows {_SCHEMA_VERSION}"
            )
        with self._tx():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")

    def _load(self) -> None:
        db, memory = self._db, self._memory
        for row in db.execute(LOAD_STATEMENTS["messages"]):
            memory.add_message(StoredMessage(*row))
        for mesh_id, sender, cmid, message_id, expires_at in db.execute(LOAD_STATEMENTS["dedupe"]):
            # Loaded as written; the per-sender limit was kept when they were.
            memory.dedupe_put(
                mesh_id, sender, cmid, message_id, now=0.0, expires_at=expires_at, limit=1 << 62
            )
        for mesh_id, member, last_seen in db.execute(LOAD_STATEMENTS["members"]):
            memory.set_last_seen(mesh_id, member, last_seen)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _log(self, *changes: _Change) -> None:
        with self._lock:
            self._journal.extend(changes)
            self._changes += 1

    # --- group commit ----------------------------------------------------------------

    @property
    def changes(self) -> int:
        """Changes made since the store was opened (each store call that changes something)."""
        return self._changes

    @property
    def committed(self) -> int:
        """How many of ``changes`` are durable."""
        return self._committed

    @property
    def commit_may_block(self) -> bool:
        """Whether a commit waits on the disk: with ``FULL`` or ``EXTRA`` it fsyncs.

        With ``NORMAL`` a commit writes to the WAL without an fsync (tens of
        microseconds, more when SQLite checkpoints the WAL now and then), so a
        server may run it inline on its loop.
        """
        return self.synchronous in ("FULL", "EXTRA")

    def commit(self) -> int:
        """Write every change made so far in one transaction; return ``committed``.

        Safe to call from a worker thread while the broker's thread goes on
        making changes (they join the next batch). A failure leaves the
        batch in the journal, to be tried again by the next commit.
        """
        with self._commit_lock:
            with self._lock:
                batch, self._journal = self._journal, []
                target = self._changes
            if batch:
                try:
                    with self._tx() as db:
                        for name, params in batch:
                            if isinstance(params, list):
                                db.executemany(STATEMENTS[name], params)
                            else:
                                db.execute(STATEMENTS[name], params)
                except BaseException:
                    with self._lock:
                        self._journal[:0] = batch
                    raise
            with self._lock:
                self._committed = max(self._committed, target)
                return self._committed

    def close(self) -> None:
        """Commit what is left, then close the database."""
        try:
            self.commit()
        finally:
            self._db.close()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SqliteStore({self.path!r})"

    # --- direct messages ---------------------------------------------------------

    def add_message(self, message: StoredMessage) -> None:
        self._memory.add_message(message)
        self._log(
            (
                "add_message",
                (
                    message.message_id,
                    message.mesh_id,
                    message.recipient,
                    message.recipient_session,
                    message.sender_pubkey,
                    message.sender_member_pubkey,
                    message.sender_session,
                    message.priority,
                    message.nonce,
                    message.ciphertext,
                    message.client_message_id,
                    message.created_at,
                    message.expires_at,
                ),
            )
        )

    def messages_for(self, mesh_id: str, recipient: str) -> list[StoredMessage]:
        return self._memory.messages_for(mesh_id, recipient)

    def count_for(self, mesh_id: str, recipient: str) -> int:
        return self._memory.count_for(mesh_id, recipient)

    def remove_acked(
        self,
        mesh_id: str,
        recipient: str,
        *,
        message_id: str | None,
        client_message_id: str | None,
    ) -> list[str]:
        gone = self._memory.remove_acked(
            mesh_id, recipient, message_id=message_id, client_message_id=client_message_id
        )
        if gone:
            self._log(*(("delete_message", (mid,)) for mid in gone))
        return gone

    def expire(self, now: float) -> int:
        count = self._memory.expire(now)
        self._log(("expire_messages", (now,)), ("expire_dedupe", (now,)))
        return count

    def next_expiry(self) -> float | None:
        return self._memory.next_expiry()

    # --- dedupe records ------------------------------------------------------------

    def dedupe_get(
        self, mesh_id: str, sender: str, client_message_id: str, *, now: float
    ) -> str | None:
        return self._memory.dedupe_get(mesh_id, sender, client_message_id, now=now)

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
        dropped: list[str] = []
        self._memory.dedupe_put(
            mesh_id,
            sender,
            client_message_id,
            message_id,
            now=now,
            expires_at=expires_at,
            limit=limit,
            dropped=dropped.append,
            slack=limit // 10,  # trim in batches, not one record per send
        )
        put: _Change = ("put_dedupe", (mesh_id, sender, client_message_id, message_id, expires_at))
        if dropped:
            self._log(put, ("delete_dedupe", [(mesh_id, sender, cmid) for cmid in dropped]))
        else:
            self._log(put)

    # --- members ----------------------------------------------------------------------

    def last_seen(self, mesh_id: str, member: str) -> float | None:
        return self._memory.last_seen(mesh_id, member)

    def set_last_seen(self, mesh_id: str, member: str, when: float) -> None:
        self._memory.set_last_seen(mesh_id, member, when)
        self._log(("set_last_seen", (mesh_id, member, when)))
