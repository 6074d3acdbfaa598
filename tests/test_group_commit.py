"""Group commit: one transaction per batch, every query on an index, no ack before its commit."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio_helpers import WsPeer, hello_text, join, make_broker, signer

from meshproto import BatchedStore, MemoryStore, StoredMessage
from meshproto_anyio import running_broker
from meshproto_anyio.sqlite_store import LOAD_STATEMENTS, STATEMENTS, SqliteStore
from meshproto_ws import CloseSocket, CommitGate, WriteBytes


def _message(mid: str, *, recipient: str = "b" * 64, cmid: str | None = None) -> StoredMessage:
    return StoredMessage(
        message_id=mid,
        mesh_id="mesh",
        recipient=recipient,
        recipient_session=None,
        sender_pubkey="a" * 64,
        sender_member_pubkey="a" * 64,
        sender_session="a" * 64,
        priority="now",
        nonce="",
        ciphertext="aGk=",
        client_message_id=cmid,
        created_at=1.0,
        expires_at=1e12,
    )


# --- the gate, sans-IO ----------------------------------------------------------------


class CountingStore(MemoryStore):
    """A batched store double: counts changes, commits when told, remembers the order."""

    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log
        self._changes = 0
        self._committed = 0

    @property
    def changes(self) -> int:
        return self._changes

    @property
    def committed(self) -> int:
        return self._committed

    commit_may_block = False

    def add_message(self, message: StoredMessage) -> None:
        super().add_message(message)
        self._changes += 1

    def commit(self) -> int:
        self.log.append(f"commit {self._changes}")
        self._committed = self._changes
        return self._committed


def test_a_counting_store_double_is_a_batched_store() -> None:
    assert isinstance(CountingStore([]), BatchedStore)
    assert isinstance(SqliteStore(":memory:"), BatchedStore)
    assert not isinstance(MemoryStore(), BatchedStore)


def test_the_gate_holds_every_command_after_a_change_until_its_commit() -> None:
    log: list[str] = []
    store = CountingStore(log)
    gate = CommitGate(store)
    ping = [WriteBytes(1, b"ping")]
    assert gate.admit(ping) == ping  # nothing changed: straight through

    store.add_message(_message("m1"))
    ack = [WriteBytes(1, b"ack m1"), WriteBytes(2, b"push m1")]
    assert gate.admit(ack) == []
    later = [WriteBytes(3, b"peers_list"), CloseSocket(3)]
    assert gate.admit(later) == []  # held behind the ack, to keep each socket's order
    assert gate.needs_commit and gate.held == 4
    assert gate.release() == []  # not committed yet: nothing leaves

    store.commit()
    log.append("release")
    assert gate.release() == [*ack, *later]
    assert log == ["commit 1", "release"]
    assert not gate.needs_commit and gate.held == 0


def test_the_gate_releases_only_what_a_commit_covers() -> None:
    store = CountingStore([])
    gate = CommitGate(store)
    store.add_message(_message("m1"))
    first = [WriteBytes(1, b"ack m1")]
    gate.admit(first)
    store.commit()
    store.add_message(_message("m2"))  # a change made while the first commit ran
    second = [WriteBytes(1, b"ack m2")]
    gate.admit(second)
    assert gate.release() == first
    store.commit()
    assert gate.release() == second


# --- the SQLite store: one transaction per batch, every statement on an index ---------------


def test_a_batch_of_changes_is_one_transaction(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "batch.db")
    for i in range(100):
        store.add_message(_message(f"m{i}", cmid=f"c{i}"))
        store.dedupe_put("mesh", "a" * 64, f"c{i}", f"m{i}", now=1.0, expires_at=1e12, limit=50)
    store.remove_acked("mesh", "b" * 64, message_id="m0", client_message_id=None)
    assert store.changes == 201 and store.committed == 0

    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    assert store.commit() == 201
    store._db.set_trace_callback(None)
    assert statements.count("BEGIN IMMEDIATE") == 1
    assert statements.count("COMMIT") == 1

    reopened = SqliteStore(tmp_path / "batch.db")
    assert reopened.count_for("mesh", "b" * 64) == 99
    assert reopened.dedupe_get("mesh", "a" * 64, "c99", now=2.0) == "m99"
    assert reopened.dedupe_get("mesh", "a" * 64, "c0", now=2.0) is None  # trimmed to 50
    store.close()
    reopened.close()


def test_what_was_not_committed_is_not_in_the_file(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "lost.db")
    store.add_message(_message("m1"))
    store.commit()
    store.add_message(_message("m2"))  # the process dies before the next commit
    other = SqliteStore(tmp_path / "lost.db")
    assert [m.message_id for m in other.messages_for("mesh", "b" * 64)] == ["m1"]
    other.close()
    store._db.close()


def _plan(db: sqlite3.Connection, statement: str) -> list[str]:
    params = [1] * statement.count("?")
    return [row[-1] for row in db.execute(f"EXPLAIN QUERY PLAN {statement}", params)]


@pytest.mark.parametrize("name", sorted(STATEMENTS))
def test_every_statement_a_commit_runs_uses_an_index(name: str, tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "plans.db")
    plan = _plan(store._db, STATEMENTS[name])
    full_scans = [step for step in plan if step.startswith("SCAN ") and "INDEX" not in step]
    assert not full_scans, f"{name}: {plan}"
    store.close()


def _steps(db: sqlite3.Connection, statement: str, params: tuple[object, ...]) -> int:
    """How many SQLite VM steps ``statement`` takes (rolled back afterwards)."""
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    db.execute("BEGIN")
    db.set_progress_handler(count, 1)
    try:
        db.execute(statement, params)
    finally:
        db.set_progress_handler(None, 1)
        db.execute("ROLLBACK")
    return steps[0]


def _sender_history(path: Path, records: int) -> SqliteStore:
    store = SqliteStore(path)
    for i in range(records):
        store.add_message(_message(f"m{i}", cmid=f"c{i}"))
        store.dedupe_put("mesh", "a" * 64, f"c{i}", f"m{i}", now=1.0, expires_at=1e12, limit=10_000)
    store.commit()
    return store


PARAMS: dict[str, tuple[object, ...]] = {
    "add_message": ("new", "mesh", "b" * 64, None, "s", "s", "s", "now", "", "", "cnew", 1.0, 2.0),
    "delete_message": ("m5",),
    "expire_messages": (0.5,),
    "put_dedupe": ("mesh", "a" * 64, "cnew", "new", 1e12),
    "delete_dedupe": ("mesh", "a" * 64, "c5"),
    "expire_dedupe": (0.5,),
    "set_last_seen": ("mesh", "a" * 64, 3.0),
}


@pytest.mark.parametrize("name", sorted(STATEMENTS))
def test_no_statement_costs_more_as_a_senders_history_grows(name: str, tmp_path: Path) -> None:
    small = _sender_history(tmp_path / "small.db", 50)
    large = _sender_history(tmp_path / "large.db", 2_000)
    few = _steps(small._db, STATEMENTS[name], PARAMS[name])
    many = _steps(large._db, STATEMENTS[name], PARAMS[name])
    assert many <= few * 2 + 50, (name, few, many)  # 40 times the history, about the same cost
    small.close()
    large.close()


def test_the_cost_check_finds_a_statement_whose_cost_grows_with_history(tmp_path: Path) -> None:
    old_trim = (  # the statement that once read every record of a sender on every send
        "DELETE FROM dedupe WHERE mesh_id = ? AND sender = ? AND (expires_at <= ? "
        "OR seq <= (SELECT seq FROM dedupe WHERE mesh_id = ? AND sender = ? "
        "ORDER BY seq DESC LIMIT 1 OFFSET ?))"
    )
    params = ("mesh", "a" * 64, 0.5, "mesh", "a" * 64, 10_000)
    small = _sender_history(tmp_path / "small.db", 50)
    large = _sender_history(tmp_path / "large.db", 2_000)
    assert _steps(large._db, old_trim, params) > 10 * _steps(small._db, old_trim, params)
    small.close()
    large.close()


def test_only_opening_reads_whole_tables() -> None:
    assert set(LOAD_STATEMENTS) == {"messages", "dedupe", "members"}


# --- over sockets: no acknowledgement before its commit --------------------------------------


class SlowSqliteStore(SqliteStore):
    """A SQLite store whose commits take 50 ms longer, each logged."""

    def __init__(self, path: Path, log: list[tuple[str, Any]]) -> None:
        super().__init__(path)
        self.log = log

    def commit(self) -> int:
        time.sleep(0.05)
        committed = super().commit()
        self.log.append(("commit", committed))
        return committed


def _in_the_file(path: Path, message_id: str) -> bool:
    """Whether another process opening the database would find the message."""
    with sqlite3.connect(path) as other:
        row = other.execute("SELECT 1 FROM messages WHERE message_id = ?", (message_id,))
        return row.fetchone() is not None


@pytest.mark.anyio
async def test_no_ack_leaves_the_broker_before_the_commit_that_makes_its_message_durable(
    tmp_path: Path,
) -> None:
    log: list[tuple[str, Any]] = []
    store = SlowSqliteStore(tmp_path / "slow.db", log)
    broker = make_broker("bob")
    broker.store = store
    async with running_broker(broker, port=0) as server, join(server.url, "bob") as bob:
        await bob.wait_state("open")  # type: ignore[arg-type]
        sender = await WsPeer.open(server.url)
        await sender.send_text(hello_text("alice", server.url))
        assert (await sender.next_frame())["type"] == "hello_ack"
        for i in range(5):
            await sender.send_json(
                {
                    "type": "send",
                    "id": f"s{i}",
                    "targetSpec": signer("bob").public_key,
                    "priority": "now",
                    "nonce": "A" * 32,
                    "ciphertext": "aGk=",
                }
            )
        acked = 0
        with anyio.fail_after(10):
            while acked < 5:
                frame = await sender.next_frame()
                if frame["type"] == "ack":
                    assert frame["queued"] is True
                    assert _in_the_file(tmp_path / "slow.db", frame["messageId"]), (frame, log)
                    log.append(("ack", frame["messageId"]))
                    acked += 1
        await sender.aclose()
    commits = [entry for entry in log if entry[0] == "commit"]
    assert 1 <= len(commits) < store.changes  # batches, not one transaction per change
    assert server.commits >= 1
