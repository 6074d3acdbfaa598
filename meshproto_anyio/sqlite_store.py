"""A persistent :class:`meshproto.Store` on SQLite (standard library ``sqlite3``).

``Broker(registry, verifier=..., rng=..., store=SqliteStore("broker.db"))``
makes the reference broker's durable state survive a restart: stored and
unacknowledged direct messages, dedupe records and members' last-seen times.
A new ``Broker`` on the same file re-pushes every stored message on its
recipient's next hello and still acknowledges a re-sent
``client_message_id`` with the original ``messageId``.

Every method is one transaction, committed before it returns (the broker's
write-through contract). The database runs in WAL mode; ``synchronous``
defaults to ``NORMAL``, which survives a crash of the process (the case the
broker cares about) but may lose the last commits on a power cut; pass
``synchronous="FULL"`` to survive that too, at the price of an fsync per
commit.

The store is not thread-safe by itself; the broker is single-threaded and
calls it from one thread at a time. This module needs nothing but the
standard library and does not depend on anyio.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from meshproto import StoredMessage

__all__ = ["SqliteStore"]

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

_Row = tuple[str, str, str, str | None, str, str, str, str, str, str, str | None, float, float]


def _message(row: _Row) -> StoredMessage:
    return StoredMessage(*row)


class SqliteStore:
    """A :class:`meshproto.Store` kept in the SQLite database at ``path``.

    ``path`` may be ``":memory:"`` (useful in tests; forgotten on close).
    """

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "NORMAL") -> None:
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, got {synchronous!r}")
        self.path = os.fspath(path)
        # Autocommit mode: transactions are explicit (see _tx).
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db = self._db
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, _SCHEMA_VERSION):
            db.close()
            raise ValueError(
                f"{self.path}: schema version {version}, this SqliteStore knows {_SCHEMA_VERSION}"
            )
        with self._tx():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")

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

    def close(self) -> None:
        """Close the database (every change is already committed)."""
        self._db.close()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SqliteStore({self.path!r})"

    # --- direct messages ---------------------------------------------------------

    def add_message(self, message: StoredMessage) -> None:
        with self._tx() as db:
            db.execute(
                f"INSERT INTO messages ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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

    def messages_for(self, mesh_id: str, recipient: str) -> list[StoredMessage]:
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM messages WHERE mesh_id = ? AND recipient = ? ORDER BY seq",
            (mesh_id, recipient),
        ).fetchall()
        return [_message(row) for row in rows]

    def count_for(self, mesh_id: str, recipient: str) -> int:
        row = self._db.execute(
            "SELECT COUNT(*) FROM messages WHERE mesh_id = ? AND recipient = ?",
            (mesh_id, recipient),
        ).fetchone()
        return int(row[0])

    def remove_acked(
        self,
        mesh_id: str,
        recipient: str,
        *,
        message_id: str | None,
        client_message_id: str | None,
    ) -> list[str]:
        db = self._db
        if message_id is not None:
            found = db.execute(
                "SELECT 1 FROM messages WHERE message_id = ? AND mesh_id = ? AND recipient = ?",
                (message_id, mesh_id, recipient),
            ).fetchone()
            if found is not None:
                with self._tx():
                    db.execute("DELETE FROM messages WHERE message_id = ?", (message_id,))
                return [message_id]
        if client_message_id is None:
            return []
        where = "mesh_id = ? AND recipient = ? AND client_message_id = ?"
        params = (mesh_id, recipient, client_message_id)
        gone = [r[0] for r in db.execute(f"SELECT message_id FROM messages WHERE {where}", params)]
        if gone:
            with self._tx():
                db.execute(f"DELETE FROM messages WHERE {where}", params)
        return gone

    def expire(self, now: float) -> int:
        with self._tx() as db:
            count = db.execute("DELETE FROM messages WHERE expires_at <= ?", (now,)).rowcount
            db.execute("DELETE FROM dedupe WHERE expires_at <= ?", (now,))
        return int(count)

    def next_expiry(self) -> float | None:
        row = self._db.execute("SELECT MIN(expires_at) FROM messages").fetchone()
        return None if row[0] is None else float(row[0])

    # --- dedupe records ------------------------------------------------------------

    def dedupe_get(
        self, mesh_id: str, sender: str, client_message_id: str, *, now: float
    ) -> str | None:
        row = self._db.execute(
            "SELECT message_id FROM dedupe WHERE mesh_id = ? AND sender = ? "
            "AND client_message_id = ? AND expires_at > ?",
            (mesh_id, sender, client_message_id, now),
        ).fetchone()
        return None if row is None else str(row[0])

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
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO dedupe "
                "(mesh_id, sender, client_message_id, message_id, expires_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (mesh_id, sender, client_message_id, message_id, expires_at),
            )
            # This sender's expired records, and its oldest beyond ``limit``.
            db.execute(
                "DELETE FROM dedupe WHERE mesh_id = ? AND sender = ? AND (expires_at <= ? "
                "OR seq <= (SELECT seq FROM dedupe WHERE mesh_id = ? AND sender = ? "
                "ORDER BY seq DESC LIMIT 1 OFFSET ?))",
                (mesh_id, sender, now, mesh_id, sender, limit),
            )

    # --- members ----------------------------------------------------------------------

    def last_seen(self, mesh_id: str, member: str) -> float | None:
        row = self._db.execute(
            "SELECT last_seen FROM members WHERE mesh_id = ? AND member = ?", (mesh_id, member)
        ).fetchone()
        return None if row is None else float(row[0])

    def set_last_seen(self, mesh_id: str, member: str, when: float) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO members (mesh_id, member, last_seen) VALUES (?, ?, ?) "
                "ON CONFLICT (mesh_id, member) DO UPDATE SET last_seen = excluded.last_seen",
                (mesh_id, member, when),
            )
