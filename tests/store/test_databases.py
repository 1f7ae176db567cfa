"""What only a database shows: migrations, reopening, the rows on disk, and pages equal across backends."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from fleetwatch.adapters import postgres as postgres_adapter
from fleetwatch.adapters import sqlite as sqlite_adapter
from fleetwatch.core.model import Effect, SettlementWrite, TerminalRecord, TxnRecord, TxnWrite
from fleetwatch.errors import StoreError
from fleetwatch.ports import Store
from fleetwatch.storage.migrations import DIALECTS, Migration, migrations
from fleetwatch.storage.rows import (
    BATCH_ROW_COLUMNS,
    HOURS_COLUMNS,
    INCIDENT_COLUMNS,
    NOTIFICATION_RECORD_COLUMNS,
    SETTLEMENT_COLUMNS,
    STATUS_COLUMNS,
    TERMINAL_COLUMNS,
    TXN_COLUMNS,
)
from fleetwatch.testing import MemoryStore
from tests.store.builders import T0, full_batch, full_incident, full_terminal, incident, iw, txn
from tests.store.conftest import Db, make_db

TABLES = {"terminals", "transactions", "batches", "settlements", "incidents", "incident_events",
          "dead_letters", "leases", "schema_version"}


def test_both_dialects_ship_the_same_migrations() -> None:
    """A schema version means the same thing on SQLite and PostgreSQL: same numbers, same names."""
    sqlite, postgresql = ([(m.version, m.name) for m in migrations(d)] for d in DIALECTS)
    assert sqlite == postgresql
    assert sqlite[0] == (1, "0001_initial.sql")


async def test_open_applies_every_migration_once(db: Db) -> None:
    """open() creates the store (and SQLite's directories), applies each migration once; reopening
    applies nothing again and keeps the data."""
    store = await db.open()
    await store.write([], terminals=[TerminalRecord("T1")])
    await store.close()
    store = await db.open()
    try:
        assert await store.count_terminals() == 1
    finally:
        await store.close()
    versions = await db.rows("SELECT version, name FROM schema_version ORDER BY version")
    assert [tuple(v) for v in versions] == [(m.version, m.name) for m in migrations(db.dialect)]


@pytest.mark.parametrize(
    ("table", "columns"),
    [
        ("terminals", TERMINAL_COLUMNS),
        ("transactions", TXN_COLUMNS),
        ("batches", BATCH_ROW_COLUMNS),
        ("incidents", INCIDENT_COLUMNS),
        ("settlements", ("id", *SETTLEMENT_COLUMNS)),
        ("terminal_statuses", STATUS_COLUMNS),
        ("merchant_hours", HOURS_COLUMNS),
        ("notifications", NOTIFICATION_RECORD_COLUMNS),
    ],
)
async def test_table_columns_follow_model_fields(db: Db, table: str, columns: tuple[str, ...]) -> None:
    """Rows are built positionally, so each table's columns must be the model's fields in order on
    both backends; a field added to core/model.py without a migration fails here."""
    store = await db.open()
    await store.close()
    assert await db.columns(table) == columns


async def test_refuses_a_schema_from_newer_code(db: Db) -> None:
    """A schema version newer than the code knows is refused with a StoreError that says so."""
    store = await db.open()
    await store.close()
    await db.execute("INSERT INTO schema_version VALUES (999, '0999_future.sql', 0)")
    with pytest.raises(StoreError, match="schema version 999, newer than this fleetwatch knows"):
        await db.open()


async def test_failed_migration_is_rolled_back(db: Db, monkeypatch: pytest.MonkeyPatch) -> None:
    """A migration that fails half-way leaves no trace (its DDL and its version row roll back)."""
    store = await db.open()
    await store.close()
    module: Any = sqlite_adapter if db.name == "sqlite" else postgres_adapter
    known = migrations(db.dialect)
    broken = Migration(len(known) + 1, "0999_broken.sql", "CREATE TABLE half (x INTEGER); SELEC oops;")
    monkeypatch.setattr(module, "migrations", lambda _dialect: [*known, broken])
    with pytest.raises(StoreError, match="0999_broken"):
        await db.open()
    assert [tuple(r) for r in await db.rows("SELECT MAX(version) FROM schema_version")] == [(len(known),)]
    with pytest.raises(Exception, match="half"):
        await db.rows("SELECT * FROM half")


async def test_committed_write_survives_reopen(db: Db) -> None:
    """What write() returned for is stored: a new process (a fresh open) restores all of it."""
    first = await db.open()
    inc, term, batch = full_incident(), full_terminal(), full_batch()
    effects: list[Effect] = [iw(inc), TxnWrite(txn("T1", "A", received_at=T0 + 7))]
    await first.write(effects, terminals=[term], batches=[batch])
    await first.close()
    second = await db.open()
    try:
        assert await second.load_open_incidents() == [inc]
        assert [t async for chunk in second.terminal_chunks() for t in chunk] == [term]
        assert await second.load_open_batches() == [batch]
        assert await second.load_recent_txn_keys(10) == [("T1", "A")]
    finally:
        await second.close()


async def test_txn_and_settlement_rows_hold_the_record(db: Db) -> None:
    """Transaction and settlement rows are exactly the records' fields; a redelivered txn keeps the first."""
    store = await db.open()
    record = dataclasses.replace(txn("T1", "T1-000913"), error_stage="print", orig_txn_id="T1-000900")
    settlement = SettlementWrite(
        terminal_id="T1", merchant_id="M1", batch_no=17, currency="CNY", business_date="2026-11-22",
        settled_count=132, settled_amount_minor=1_532_000, credited_at_ms=1_795_530_000_000, received_at=T0 + 0.5,
    )
    try:
        await store.write([TxnWrite(record), settlement])
        await store.write([TxnWrite(dataclasses.replace(record, amount_minor=1))])
    finally:
        await store.close()
    rows = await db.rows(f"SELECT {', '.join(TXN_COLUMNS)} FROM transactions")
    assert [TxnRecord(*r) for r in rows] == [record]
    rows = await db.rows(f"SELECT {', '.join(SETTLEMENT_COLUMNS)} FROM settlements")
    assert [SettlementWrite(*r) for r in rows] == [settlement]


async def test_the_three_backends_serve_identical_pages_and_cursors(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The same writes give the same incident and terminal pages, cursor strings included, on
    SQLite, PostgreSQL and the fake: a client paging through one could switch to another mid-way."""
    stores: list[Store] = [
        await make_db("sqlite", tmp_path, request).open(),
        await make_db("postgresql", tmp_path, request).open(),
        MemoryStore(),
    ]
    ids = ["a1", "B2", "T-1", "T.1", "t1", "T1", "_x", "Z"]
    writes: list[Effect] = [iw(dataclasses.replace(incident(n, opened_at=T0 + n % 3, terminal_id=tid), id=tid))
                            for n, tid in enumerate(ids)]
    terminals = [TerminalRecord(t, merchant_id="M1", seq=n) for n, t in enumerate(ids)]
    try:
        answers = []
        for store in stores:
            await store.write(writes, terminals=terminals)
            pages: list[Any] = []
            cursor = None
            while True:
                items, cursor = await store.list_incidents(status="all", limit=3, cursor=cursor)
                pages.append(([i.id for i in items], cursor))
                if cursor is None:
                    break
            cursor = None
            while True:
                terms, cursor = await store.list_terminals(limit=3, cursor=cursor)
                pages.append(([t.terminal_id for t in terms], cursor))
                if cursor is None:
                    break
            answers.append(pages)
        assert answers[0] == answers[1] == answers[2]
    finally:
        for store in stores:
            await store.close()
