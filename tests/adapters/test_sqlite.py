"""What is SQLite's own in the SQLite store: files, WAL, query plans (the shared behaviour is in tests/store/)."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fleetwatch.adapters.sqlite import SqliteStore, stored_secret
from fleetwatch.errors import StoreError
from fleetwatch.storage.migrations import migrations
from tests.store.builders import dead_letter


def raw(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "dir" / "fleetwatch.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SqliteStore]:
    s = await SqliteStore.open(str(db_path), dead_letters_kept=5)
    yield s
    await s.close()


async def test_open_creates_directories_applies_migrations_in_wal(store: SqliteStore, db_path: Path) -> None:
    """open() creates missing parent dirs, applies every shipped migration once, and uses WAL."""
    versions = raw(db_path, "SELECT version, name FROM schema_version ORDER BY version")
    assert versions == [(m.version, m.name) for m in migrations("sqlite")]
    assert versions[0] == (1, "0001_initial.sql")
    assert raw(db_path, "PRAGMA journal_mode") == [("wal",)]
    tables = {r[0] for r in raw(db_path, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"terminals", "transactions", "batches", "settlements", "incidents", "incident_events",
            "dead_letters", "schema_version"} <= tables


async def test_unopenable_path_is_store_error(tmp_path: Path) -> None:
    """A path that cannot hold a database (its parent is a file) raises StoreError."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError):
        await SqliteStore.open(str(blocker / "fleetwatch.db"))


@pytest.mark.parametrize(
    ("sql", "index"),
    [
        ("SELECT * FROM incidents WHERE status <> 'resolved' ORDER BY opened_at DESC, id DESC LIMIT 9",
         "incidents_open_newest"),
        ("SELECT * FROM incidents ORDER BY opened_at DESC, id DESC LIMIT 9", "incidents_newest"),
        ("SELECT * FROM incidents WHERE terminal_id = 'T' ORDER BY opened_at DESC, id DESC LIMIT 9",
         "incidents_terminal"),
        ("SELECT * FROM incidents WHERE merchant_id = 'M' ORDER BY opened_at DESC, id DESC LIMIT 9",
         "incidents_merchant"),
        ("SELECT * FROM batches WHERE done = FALSE ORDER BY terminal_id, batch_no, currency", "batches_open"),
        ("SELECT terminal_id, txn_id FROM transactions ORDER BY received_at DESC LIMIT 9",
         "transactions_received"),
        ("SELECT * FROM batches WHERE merchant_id = 'M' AND business_day = 'D' "
         "ORDER BY terminal_id, batch_no, currency", "batches_merchant_day"),
    ],
)
async def test_queries_use_their_indexes(store: SqliteStore, db_path: Path, sql: str, index: str) -> None:
    """The hot queries are served by an index in order, never a table scan plus a sort."""
    plan = " | ".join(str(r[3]) for r in raw(db_path, f"EXPLAIN QUERY PLAN {sql}"))
    assert index in plan
    assert "TEMP B-TREE" not in plan


async def test_dead_letters_kept_zero_keeps_none(db_path: Path) -> None:
    """dead_letters_kept = 0 disables the dead-letter table without failing writes."""
    s = await SqliteStore.open(str(db_path), dead_letters_kept=0)
    try:
        await s.write([dead_letter(1)])
        assert await s.recent_dead_letters(10) == []
    finally:
        await s.close()


async def test_size_counts_the_database_and_its_log(store: SqliteStore, db_path: Path) -> None:
    """size_bytes() is the database file plus its write-ahead log, as the disk sees them."""
    await store.write([dead_letter(n) for n in range(5)])
    files = ("fleetwatch.db", "fleetwatch.db-wal")
    on_disk = sum(p.stat().st_size for p in db_path.parent.iterdir() if p.name in files)
    assert await store.size_bytes() == on_disk


async def test_store_locked_by_another_process_is_store_error(store: SqliteStore, db_path: Path) -> None:
    """A write that cannot get the lock within the busy timeout fails with StoreError (not a hang)."""
    with sqlite3.connect(db_path, timeout=1, isolation_level=None) as blocker:
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(StoreError, match="locked"):
                await store.write([dead_letter(1)])
        finally:
            blocker.execute("ROLLBACK")


async def test_a_generated_secret_can_be_read_beside_a_running_daemon(db_path: Path) -> None:
    """`fleetwatch notice-link` reads the link key from the file while a store (a running daemon)
    holds its lock; nothing while the database, the table or the secret is not there."""
    assert stored_secret(str(db_path), "notice.link_key") is None
    store = await SqliteStore.open(str(db_path))
    try:
        assert stored_secret(str(db_path), "notice.link_key") is None
        assert await store.secret("notice.link_key", "aaa") == "aaa"
        assert stored_secret(str(db_path), "notice.link_key") == "aaa"
        assert stored_secret(str(db_path), "http.api_token") is None
    finally:
        await store.close()
