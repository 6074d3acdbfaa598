"""The SQLite store: the Store contract, and a broker restart that loses nothing.

``meshproto_anyio/sqlite_store.py`` needs only the standard library, so it is
loaded by file path: these tests run without the anyio extra installed. The
contract tests run against :class:`meshproto.MemoryStore` too, so both stores
are held to one behaviour.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from random import Random
from typing import Any

import pytest

from meshproto import (
    AcceptingVerifier,
    Broker,
    BrokerOptions,
    Member,
    MemoryStore,
    SendText,
    StaticRegistry,
    Store,
    StoredMessage,
    expand_outputs,
)

_SPEC = importlib.util.spec_from_file_location(
    "meshproto_sqlite_store_under_test",
    Path(__file__).resolve().parents[1] / "meshproto_anyio" / "sqlite_store.py",
)
assert _SPEC is not None and _SPEC.loader is not None
_MODULE = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_MODULE)
SqliteStore: Any = _MODULE.SqliteStore

MESH = "mesh-sql"
T0 = 1_800_000_000.0
PK = {name: f"{i:x}" * 64 for i, name in enumerate("abc", start=1)}


# --- the Store contract, for both stores ---------------------------------------------


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
    else:
        sqlite = SqliteStore(tmp_path / "contract.db")
        yield sqlite
        sqlite.close()


def message(
    mid: str, recipient: str = PK["b"], *, cmid: str | None = None, expires: float = 100.0
) -> StoredMessage:
    return StoredMessage(
        message_id=mid,
        mesh_id=MESH,
        recipient=recipient,
        recipient_session=None,
        sender_pubkey=PK["a"],
        sender_member_pubkey=PK["a"],
        sender_session="id:s",
        priority="next",
        nonce="bm9uY2U=",
        ciphertext=f"body {mid}",
        client_message_id=cmid,
        created_at=1.0,
        expires_at=expires,
    )


def test_store_is_a_store(store: Store) -> None:
    assert isinstance(store, Store)


def test_store_returns_messages_oldest_first_per_recipient(store: Store) -> None:
    for mid in ("m3", "m1", "m2"):
        store.add_message(message(mid))
    store.add_message(message("other", PK["c"]))
    assert [m.message_id for m in store.messages_for(MESH, PK["b"])] == ["m3", "m1", "m2"]
    assert store.messages_for(MESH, PK["b"])[0] == message("m3")
    assert store.count_for(MESH, PK["b"]) == 3
    assert store.count_for(MESH, PK["c"]) == 1
    assert store.count_for("elsewhere", PK["b"]) == 0


def test_store_removes_acked_by_message_id_then_by_client_message_id(store: Store) -> None:
    store.add_message(message("m1", cmid="c1"))
    store.add_message(message("m2", cmid="c2"))
    assert store.remove_acked(MESH, PK["b"], message_id="m1", client_message_id="c1") == ["m1"]
    assert store.remove_acked(MESH, PK["b"], message_id="nope", client_message_id="c2") == ["m2"]
    assert store.count_for(MESH, PK["b"]) == 0


def test_store_ignores_acks_from_someone_else(store: Store) -> None:
    store.add_message(message("m1", cmid="c1"))
    assert store.remove_acked(MESH, PK["c"], message_id="m1", client_message_id="c1") == []
    assert store.remove_acked(MESH, PK["b"], message_id=None, client_message_id=None) == []
    assert store.count_for(MESH, PK["b"]) == 1


def test_store_expires_messages_and_reports_the_next_expiry(store: Store) -> None:
    assert store.next_expiry() is None
    store.add_message(message("late", expires=50.0))
    store.add_message(message("early", expires=10.0))
    assert store.next_expiry() == 10.0
    assert store.expire(10.0) == 1
    assert store.next_expiry() == 50.0
    assert [m.message_id for m in store.messages_for(MESH, PK["b"])] == ["late"]
    store.remove_acked(MESH, PK["b"], message_id="late", client_message_id=None)
    assert store.next_expiry() is None


def test_store_keeps_dedupe_records_bounded_in_time_and_count(store: Store) -> None:
    store.dedupe_put(MESH, PK["a"], "c1", "m1", now=0.0, expires_at=10.0, limit=2)
    assert store.dedupe_get(MESH, PK["a"], "c1", now=5.0) == "m1"
    assert store.dedupe_get(MESH, PK["b"], "c1", now=5.0) is None
    assert store.dedupe_get(MESH, PK["a"], "c1", now=10.0) is None  # expired
    store.dedupe_put(MESH, PK["a"], "c2", "m2", now=1.0, expires_at=20.0, limit=2)
    store.dedupe_put(MESH, PK["a"], "c3", "m3", now=2.0, expires_at=20.0, limit=2)
    assert store.dedupe_get(MESH, PK["a"], "c1", now=3.0) is None  # beyond the limit
    assert store.dedupe_get(MESH, PK["a"], "c3", now=3.0) == "m3"
    store.expire(20.0)
    assert store.dedupe_get(MESH, PK["a"], "c3", now=3.0) is None


def test_store_remembers_when_members_were_last_seen(store: Store) -> None:
    assert store.last_seen(MESH, PK["a"]) is None
    store.set_last_seen(MESH, PK["a"], 5.0)
    store.set_last_seen(MESH, PK["a"], 7.0)
    assert store.last_seen(MESH, PK["a"]) == 7.0


# --- a broker restart on the same database ----------------------------------------------


class Site:
    """A broker on a SQLite file, and the frames it wrote per socket."""

    def __init__(self, path: Path, now: float, seed: int) -> None:
        self.now = now
        self.store = SqliteStore(path)
        registry = StaticRegistry(Member(MESH, f"id-{n}", PK[n], f"peer-{n}") for n in PK)
        self.broker = Broker(
            registry, verifier=AcceptingVerifier(), store=self.store, rng=Random(seed)
        )
        self.inbox: dict[int, list[dict[str, Any]]] = {}
        self._next = 1

    def pump(self) -> None:
        for out in expand_outputs(self.broker.drain_outputs()):
            if isinstance(out, SendText):
                self.inbox.setdefault(out.conn_id, []).append(json.loads(out.text))

    def frame(self, conn: int, frame: dict[str, Any]) -> None:
        self.broker.receive_text(conn, json.dumps(frame), now=self.now)
        self.pump()

    def hello(self, who: str) -> int:
        conn = self._next
        self._next += 1
        self.broker.connection_opened(conn, now=self.now)
        ts = round(self.now * 1000)
        self.frame(
            conn,
            {
                "type": "hello",
                "meshId": MESH,
                "memberId": f"id-{who}",
                "pubkey": PK[who],
                "sessionId": f"s-{who}",
                "timestamp": ts,
                "signature": "ab" * 64,
            },
        )
        return conn

    def take(self, conn: int, kind: str = "push") -> list[dict[str, Any]]:
        frames = self.inbox.pop(conn, [])
        return [f for f in frames if f["type"] == kind and f.get("subtype") != "system"]

    def send(self, conn: int, target: str, body: str, cmid: str) -> dict[str, Any]:
        self.frame(
            conn,
            {
                "type": "send",
                "id": f"id-{cmid}",
                "targetSpec": target,
                "priority": "next",
                "nonce": "bm9uY2U=",
                "ciphertext": body,
                "client_message_id": cmid,
            },
        )
        (ack,) = [f for f in self.inbox[conn] if f.get("id") == f"id-{cmid}"]
        self.inbox[conn].remove(ack)
        return ack

    def crash(self) -> None:
        """Stop without any goodbye: the broker object is simply dropped."""
        self.store.close()


def test_broker_restart_on_sqlite_loses_no_message_and_creates_no_duplicate(
    tmp_path: Path,
) -> None:
    db = tmp_path / "broker.db"
    one = Site(db, T0, seed=1)
    a, b = one.hello("a"), one.hello("b")
    to_offline = one.send(a, PK["c"], "for c, offline", "cm-c")
    to_online = one.send(a, PK["b"], "for b, never acked", "cm-b")
    assert to_offline["queued"] and to_online["queued"]
    assert [p["messageId"] for p in one.take(b)] == [to_online["messageId"]]
    one.crash()

    two = Site(db, T0 + 10, seed=2)  # another rng: new ids would differ
    a2 = two.hello("a")
    # The re-send after the restart is recognised: same messageId, no copy.
    again = two.send(a2, PK["c"], "for c, offline", "cm-c")
    assert again == {**to_offline, "id": again["id"]}
    assert two.store.count_for(MESH, PK["c"]) == 1
    c = two.hello("c")
    (push_c,) = two.take(c)
    assert (push_c["messageId"], push_c["ciphertext"]) == (
        to_offline["messageId"],
        "for c, offline",
    )
    b2 = two.hello("b")
    (push_b,) = two.take(b2)
    assert push_b["messageId"] == to_online["messageId"]
    assert push_b["client_message_id"] == "cm-b"
    two.frame(
        b2,
        {"type": "client_ack", "brokerMessageId": push_b["messageId"], "clientMessageId": "cm-b"},
    )
    two.crash()

    three = Site(db, T0 + 20, seed=3)
    b3 = three.hello("b")
    assert three.take(b3) == []  # acked before the restart: gone for good
    c3 = three.hello("c")
    assert [p["messageId"] for p in three.take(c3)] == [to_offline["messageId"]]  # still unacked
    three.crash()


def test_broker_restart_on_sqlite_remembers_who_connected_before(tmp_path: Path) -> None:
    db = tmp_path / "seen.db"
    one = Site(db, T0, seed=1)
    one.hello("a")
    one.crash()
    two = Site(db, T0 + 5, seed=2)
    a = two.hello("a")
    (ack,) = two.take(a, "hello_ack")
    assert ack["restored"] is True
    two.crash()


def test_broker_restart_on_sqlite_still_expires_stored_messages(tmp_path: Path) -> None:
    db = tmp_path / "ttl.db"
    one = Site(db, T0, seed=1)
    a = one.hello("a")
    one.send(a, PK["c"], "short-lived", "cm-ttl")
    one.crash()
    two = Site(db, T0 + BrokerOptions().store_ttl + 1, seed=2)
    deadline = two.broker.next_deadline()
    assert deadline is not None and deadline <= two.now
    two.broker.handle_timer(two.now)
    assert two.store.count_for(MESH, PK["c"]) == 0
    two.crash()


def test_sqlite_store_refuses_an_unknown_synchronous_mode(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        SqliteStore(tmp_path / "x.db", synchronous="SOMETIMES")
