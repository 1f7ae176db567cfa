"""The SQLite store against real database files: schema, writes, restore and API reads."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fleetwatch.adapters import sqlite as sqlite_adapter
from fleetwatch.adapters.sqlite import (
    BATCH_COLUMNS,
    INCIDENT_COLUMNS,
    SETTLEMENT_COLUMNS,
    TERMINAL_COLUMNS,
    TXN_COLUMNS,
    Migration,
    SqliteStore,
    business_day,
    migrations,
    prepare,
)
from fleetwatch.core.model import (
    BatchRecord,
    DeadLetter,
    Effect,
    EventType,
    Incident,
    IncidentEvent,
    IncidentWrite,
    Kind,
    SettlementWrite,
    Status,
    TerminalNoticeWrite,
    TerminalRecord,
    TxnRecord,
    TxnWrite,
    UpstreamMembersWrite,
)
from fleetwatch.errors import StoreError

T0 = 1_795_447_531.125


# ---- builders -----------------------------------------------------------------------

def incident(
    n: int,
    *,
    key: str | None = None,
    status: Status = "open",
    opened_at: float | None = None,
    terminal_id: str = "T1",
    merchant_id: str = "M1",
    kind: Kind = "printer",
) -> Incident:
    return Incident(
        id=f"inc-{n:05d}", key=key or f"terminal|{terminal_id}|{kind}|{n}", kind=kind,
        cause="no_paper", scope="terminal", severity="major", status=status,
        opened_at=T0 + n if opened_at is None else opened_at, updated_at=T0 + n,
        summary="Printer out of paper", terminal_id=terminal_id, merchant_id=merchant_id,
        resolved_at=T0 + n + 5 if status == "resolved" else None,
    )


def iw(inc: Incident, type_: EventType = "opened") -> IncidentWrite:
    return IncidentWrite(inc, IncidentEvent(inc.id, inc.updated_at, type_, {"status": inc.status}))


def txn(terminal_id: str, txn_id: str, received_at: float = T0) -> TxnRecord:
    return TxnRecord(
        terminal_id=terminal_id, txn_id=txn_id, merchant_id="M1", batch_no=17, currency="CNY",
        type="sale", outcome="approved", amount_minor=12_800, ts_ms=1_795_447_532_000,
        received_at=received_at, rc="00", entry="chip", signed_amount_minor=12_800,
    )


def dead_letter(n: int) -> DeadLetter:
    return DeadLetter(
        topic="fleet/v1/term/T1/txn", reason="schema", detail=f"bad #{n}", received_at=T0 + n,
        payload_excerpt=f'{{"n":{n}}}',
    )


def full_terminal() -> TerminalRecord:
    """Every field set to a non-default value, so a column mix-up cannot go unnoticed."""
    return TerminalRecord(
        terminal_id="T00012345", merchant_id="M0042", model="A920", fw="2.4.1", app="pay-3.1.0",
        serial="1851234567", net_type="4g", last_seen=T0 + 0.5, last_heartbeat_at=T0 + 0.25,
        last_ts_ms=1_795_447_531_123, seq=8812, uptime_s=86_400, reboots=3, state="offline",
        state_at=T0 + 1.5, battery_pct=83, charging=True, rssi_dbm=-71, printer="no_paper",
        reader_fault=True, saf_pending=2, saf_oldest_ts_ms=1_795_447_000_000, tamper=True,
        maintenance_until=T0 + 3600.75,
    )


def full_batch() -> BatchRecord:
    return BatchRecord(
        terminal_id="T00012345", batch_no=17, currency="CNY", merchant_id="M0042", tally_count=132,
        tally_amount_minor=1_532_000, first_approved_at=T0, first_approved_ts_ms=1_795_447_532_000,
        last_txn_at=T0 + 100.5, closed_at=T0 + 200.5, close_count=131, close_amount_minor=1_531_000,
        close_result="mismatch", close_ts_ms=1_795_490_000_000, settled_at=T0 + 300.5,
        settled_count=130, settled_amount_minor=1_530_000, business_date="2026-11-22",
        credited_at_ms=1_795_530_000_000, watch=True, done=False,
    )


def full_incident() -> Incident:
    return Incident(
        id="inc-full", key='group|{"fw":"2.4.1","model":"A920"}|network', kind="network", cause="comm_errors",
        scope="group", severity="critical", status="acknowledged", opened_at=T0, updated_at=T0 + 9.5,
        summary="TLS failures on A920 2.4.1", terminal_id=None, merchant_id=None,
        group={"model": "A920", "fw": "2.4.1"}, resolved_at=None, acknowledged_at=T0 + 4.25,
        parent_id="inc-parent", suppressed=True, previous_id="inc-prev",
        evidence={"terminals": 41, "rate": 0.75, "since": T0, "batches": [17, 18], "note": "证书过期"},
        clearing_since=T0 + 8.0,
    )


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


# ---- schema and migrations -------------------------------------------------------------

async def test_open_creates_directories_applies_migrations_in_wal(store: SqliteStore, db_path: Path) -> None:
    """open() creates missing parent dirs, applies every shipped migration once, and uses WAL."""
    versions = raw(db_path, "SELECT version, name FROM schema_version ORDER BY version")
    assert versions == [(m.version, m.name) for m in migrations()]
    assert versions[0] == (1, "0001_initial.sql")
    assert raw(db_path, "PRAGMA journal_mode") == [("wal",)]
    tables = {r[0] for r in raw(db_path, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"terminals", "transactions", "batches", "settlements", "incidents", "incident_events",
            "dead_letters", "schema_version"} <= tables


async def test_reopen_is_idempotent(db_path: Path) -> None:
    """Reopening an up-to-date database applies nothing again and keeps its data."""
    first = await SqliteStore.open(str(db_path))
    await first.write([], terminals=[TerminalRecord("T1")])
    await first.close()
    second = await SqliteStore.open(str(db_path))
    try:
        assert await second.count_terminals() == 1
    finally:
        await second.close()
    assert raw(db_path, "SELECT COUNT(*) FROM schema_version") == [(len(migrations()),)]


async def test_refuses_database_from_newer_code(db_path: Path) -> None:
    """A schema version newer than the code knows is refused with StoreError, not guessed at."""
    s = await SqliteStore.open(str(db_path))
    await s.close()
    with sqlite3.connect(db_path) as conn:
        conn.execute("INSERT INTO schema_version VALUES (999, '0999_future.sql', 0)")
    with pytest.raises(StoreError, match="newer"):
        await SqliteStore.open(str(db_path))


async def test_failed_migration_is_rolled_back(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A migration that fails half-way leaves no trace (its DDL and its version row roll back)."""
    s = await SqliteStore.open(str(db_path))
    await s.close()
    broken = Migration(len(migrations()) + 1, "0999_broken.sql", "CREATE TABLE half (x INTEGER); SELEC oops;")
    monkeypatch.setattr(sqlite_adapter, "migrations", lambda: [*migrations(), broken])
    with pytest.raises(StoreError, match="0999_broken"):
        await SqliteStore.open(str(db_path))
    assert raw(db_path, "SELECT name FROM sqlite_master WHERE name = 'half'") == []
    assert raw(db_path, "SELECT MAX(version) FROM schema_version") == [(len(migrations()),)]


async def test_unopenable_path_is_store_error(tmp_path: Path) -> None:
    """A path that cannot hold a database (its parent is a file) raises StoreError."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError):
        await SqliteStore.open(str(blocker / "fleetwatch.db"))


@pytest.mark.parametrize(
    ("table", "columns"),
    [
        ("terminals", TERMINAL_COLUMNS),
        ("transactions", TXN_COLUMNS),
        ("batches", (*BATCH_COLUMNS, "business_day")),
        ("incidents", INCIDENT_COLUMNS),
        ("settlements", ("id", *SETTLEMENT_COLUMNS)),
    ],
)
async def test_table_columns_follow_model_fields(
    store: SqliteStore, db_path: Path, table: str, columns: tuple[str, ...]
) -> None:
    """Rows are built positionally, so each table's columns must be the model's fields in order;
    a field added to core/model.py without a migration fails here."""
    assert tuple(r[1] for r in raw(db_path, f"PRAGMA table_info({table})")) == columns


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


# ---- writes round-trip ---------------------------------------------------------------

async def test_round_trip_terminal_incident_batch_event_dead_letter(store: SqliteStore) -> None:
    """Every field of every record type comes back equal (and of the same type: bools stay bools)."""
    term, batch, inc = full_terminal(), full_batch(), full_incident()
    event = IncidentEvent(inc.id, T0 + 9.5, "cause_changed", {"from": "weak_signal", "to": "comm_errors"})
    dl = dead_letter(1)
    await store.write([IncidentWrite(inc, event), dl], terminals=[term], batches=[batch])

    loaded_term = await store.get_terminal(term.terminal_id)
    assert loaded_term == term
    assert (await store.load_terminals()) == [term]
    assert loaded_term is not None
    assert type(loaded_term.charging) is bool
    assert type(loaded_term.tamper) is bool
    assert (await store.load_open_batches()) == [batch]
    assert type((await store.load_open_batches())[0].watch) is bool
    loaded_inc = await store.get_incident(inc.id)
    assert loaded_inc == inc
    assert loaded_inc is not None
    assert type(loaded_inc.suppressed) is bool
    assert (await store.load_open_incidents()) == [inc]
    assert (await store.incident_events(inc.id)) == [event]
    assert (await store.recent_dead_letters(10)) == [dl]


async def test_round_trip_txn_and_settlement(store: SqliteStore, db_path: Path) -> None:
    """TxnWrite and SettlementWrite rows hold exactly the record's fields (no reader API needs them)."""
    record = dataclasses.replace(txn("T1", "T1-000913"), error_stage="print", orig_txn_id="T1-000900")
    settlement = SettlementWrite(
        terminal_id="T1", merchant_id="M1", batch_no=17, currency="CNY", business_date="2026-11-22",
        settled_count=132, settled_amount_minor=1_532_000, credited_at_ms=1_795_530_000_000,
        received_at=T0 + 0.5,
    )
    await store.write([TxnWrite(record), settlement])
    rows = raw(db_path, f"SELECT {', '.join(TXN_COLUMNS)} FROM transactions")
    assert [TxnRecord(*r) for r in rows] == [record]
    rows = raw(db_path, f"SELECT {', '.join(SETTLEMENT_COLUMNS)} FROM settlements")
    assert [SettlementWrite(*r) for r in rows] == [settlement]


async def test_write_snapshots_objects_at_call_time(store: SqliteStore) -> None:
    """write() copies rows when called: changes the engine makes before the commit runs do not leak in."""
    inc, term = incident(1), TerminalRecord("T1", battery_pct=50)
    pending = store.write([iw(inc)], terminals=[term])
    inc.status, inc.evidence["later"] = "resolved", True
    term.battery_pct = 10
    await pending
    stored = await store.get_incident(inc.id)
    assert stored is not None
    assert stored.status == "open"
    assert stored.evidence == {}
    stored_term = await store.get_terminal("T1")
    assert stored_term is not None
    assert stored_term.battery_pct == 50


async def test_incident_upserts_by_id_with_one_event_per_write(store: SqliteStore) -> None:
    """Writing an incident again updates its row in place and appends one audit event per write."""
    inc = incident(1)
    await store.write([iw(inc)])
    inc.status, inc.resolved_at, inc.updated_at = "resolved", T0 + 50, T0 + 50
    await store.write([iw(inc, "resolved")])
    assert (await store.get_incident(inc.id)) == inc
    assert [e.type for e in await store.incident_events(inc.id)] == ["opened", "resolved"]
    assert await store.load_open_incidents() == []


async def test_terminals_and_batches_upsert(store: SqliteStore) -> None:
    """A second write of a terminal or batch replaces the first; a done batch is not restored."""
    first_batch = BatchRecord("T1", 1, "CNY", "M1")
    await store.write([], terminals=[TerminalRecord("T1", seq=1)], batches=[first_batch])
    done = BatchRecord("T1", 1, "CNY", "M1", tally_count=4, done=True)
    await store.write([], terminals=[TerminalRecord("T1", seq=2)], batches=[done])
    assert await store.load_terminals() == [TerminalRecord("T1", seq=2)]
    assert await store.load_open_batches() == []
    assert await store.batches_for("M1") == [done]


async def test_duplicate_txn_is_stored_once(store: SqliteStore, db_path: Path) -> None:
    """A QoS 1 redelivery (same terminal_id, txn_id) is stored once, within one write and across writes."""
    first = txn("T1", "A", received_at=T0)
    await store.write([TxnWrite(first), TxnWrite(dataclasses.replace(first, received_at=T0 + 1))])
    await store.write([TxnWrite(dataclasses.replace(first, amount_minor=1)), TxnWrite(txn("T2", "A"))])
    rows = raw(db_path, "SELECT terminal_id, txn_id, amount_minor, received_at FROM transactions ORDER BY 1")
    assert rows == [("T1", "A", 12_800, T0), ("T2", "A", 12_800, T0)]


# ---- one open incident per key, atomicity, durability ----------------------------------

async def test_second_open_incident_with_same_key_is_rejected(store: SqliteStore) -> None:
    """The partial unique index refuses two open incidents with one key: the write fails with StoreError."""
    await store.write([iw(incident(1, key="terminal|T1|printer"))])
    with pytest.raises(StoreError, match="UNIQUE"):
        await store.write([iw(incident(2, key="terminal|T1|printer", status="acknowledged"))])


async def test_resolved_and_open_incident_may_share_a_key(store: SqliteStore) -> None:
    """Resolved incidents do not count: one open plus any number of resolved ones share a key."""
    key = "terminal|T1|printer"
    old = incident(1, key=key)
    await store.write([iw(old)])
    old.status = "resolved"
    await store.write(
        [iw(old, "resolved"), iw(incident(2, key=key, status="resolved")), iw(incident(3, key=key))]
    )
    assert [i.id for i in await store.load_open_incidents()] == ["inc-00003"]


async def test_failed_write_leaves_nothing_of_its_batch(store: SqliteStore, db_path: Path) -> None:
    """A write that fails part-way is rolled back whole, and the store keeps working afterwards."""
    await store.write([iw(incident(1, key="k"))])
    doomed: list[Effect] = [
        TxnWrite(txn("T9", "X")), dead_letter(1), iw(incident(2)), iw(incident(3, key="k")),
    ]
    with pytest.raises(StoreError):
        await store.write(
            doomed, terminals=[TerminalRecord("T9")], batches=[BatchRecord("T9", 1, "CNY", "M1")]
        )
    for table in ("transactions", "dead_letters", "terminals", "batches"):
        assert raw(db_path, f"SELECT COUNT(*) FROM {table}") == [(0,)], table
    assert raw(db_path, "SELECT id FROM incidents") == [("inc-00001",)]
    assert raw(db_path, "SELECT COUNT(*) FROM incident_events") == [(1,)]
    await store.write([TxnWrite(txn("T9", "X"))])
    assert raw(db_path, "SELECT COUNT(*) FROM transactions") == [(1,)]


async def test_committed_write_survives_reopen(db_path: Path) -> None:
    """What write() returned for is on disk: a new process (a fresh open) restores all of it."""
    first = await SqliteStore.open(str(db_path))
    inc, term, batch = incident(1), full_terminal(), full_batch()
    effects: list[Effect] = [iw(inc), TxnWrite(txn("T1", "A", received_at=T0 + 7))]
    await first.write(effects, terminals=[term], batches=[batch])
    await first.close()
    second = await SqliteStore.open(str(db_path))
    try:
        assert await second.load_open_incidents() == [inc]
        assert await second.load_terminals() == [term]
        assert await second.load_open_batches() == [batch]
        assert await second.load_recent_txn_keys(10) == [("T1", "A")]
    finally:
        await second.close()


async def test_store_usable_after_cancelled_write(store: SqliteStore) -> None:
    """A write cancelled mid-flight rolls back its transaction, so the next write can begin."""
    task = asyncio.create_task(store.write([dead_letter(n) for n in range(3)]))
    await asyncio.sleep(0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await store.write([TxnWrite(txn("T1", "A"))])
    assert await store.load_recent_txn_keys(5) == [("T1", "A")]


async def test_closed_store_raises_store_error(db_path: Path) -> None:
    """Using a closed store is a StoreError (never a hang); close() twice is fine."""
    s = await SqliteStore.open(str(db_path))
    await s.close()
    await s.close()
    with pytest.raises(StoreError):
        await s.write([dead_letter(1)])
    with pytest.raises(StoreError):
        await s.count_terminals()


# ---- restore side ----------------------------------------------------------------------

async def test_recent_txn_keys_are_the_newest_oldest_first(store: SqliteStore) -> None:
    """load_recent_txn_keys(n) returns the n most recently received txns, in chronological order."""
    await store.write([TxnWrite(txn("T1", f"X{i}", received_at=T0 + i)) for i in (3, 1, 4, 0, 2)])
    assert await store.load_recent_txn_keys(3) == [("T1", "X2"), ("T1", "X3"), ("T1", "X4")]
    assert await store.load_recent_txn_keys(0) == []


# ---- read side -------------------------------------------------------------------------

async def test_listing_pages_newest_first_without_duplicates(store: SqliteStore) -> None:
    """250 incidents paged 100 at a time: 3 pages, every incident once, newest first by (opened_at, id)."""
    # Ties on opened_at prove the id tie-break keeps keyset paging exact.
    incs = [incident(n, opened_at=T0 + n // 3) for n in range(250)]
    await store.write([iw(i) for i in incs])
    seen: list[str] = []
    pages, cursor = 0, None
    while True:
        items, cursor = await store.list_incidents(limit=100, cursor=cursor)
        pages += 1
        seen += [i.id for i in items]
        if cursor is None:
            break
    assert pages == 3
    expected = sorted(incs, key=lambda i: (i.opened_at, i.id), reverse=True)
    assert seen == [i.id for i in expected]


async def test_listing_status_semantics(store: SqliteStore) -> None:
    """status=open includes acknowledged; acknowledged/resolved are exact; all is everything."""
    await store.write([
        iw(incident(1, status="open")),
        iw(incident(2, status="acknowledged")),
        iw(incident(3, status="resolved")),
    ])

    async def ids(status: str) -> list[str]:
        items, _ = await store.list_incidents(status=status)
        return [i.id for i in items]

    assert await ids("open") == ["inc-00002", "inc-00001"]
    assert await ids("acknowledged") == ["inc-00002"]
    assert await ids("resolved") == ["inc-00003"]
    assert await ids("all") == ["inc-00003", "inc-00002", "inc-00001"]
    with pytest.raises(ValueError, match="status"):
        await store.list_incidents(status="closed")


async def test_listing_filters(store: SqliteStore) -> None:
    """kind, terminal_id, merchant_id and scope filters combine with AND."""
    fleet = dataclasses.replace(
        incident(4, kind="host_outage"), scope="fleet", terminal_id=None, merchant_id=None
    )
    await store.write([
        iw(incident(1, terminal_id="T1", merchant_id="M1", kind="printer")),
        iw(incident(2, terminal_id="T2", merchant_id="M1", kind="network")),
        iw(incident(3, terminal_id="T3", merchant_id="M2", kind="printer")),
        iw(fleet),
    ])

    async def ids(**filters: Any) -> list[str]:
        items, _ = await store.list_incidents(**filters)
        return [i.id for i in items]

    assert await ids(kind="printer") == ["inc-00003", "inc-00001"]
    assert await ids(merchant_id="M1") == ["inc-00002", "inc-00001"]
    assert await ids(merchant_id="M1", kind="printer") == ["inc-00001"]
    assert await ids(terminal_id="T2") == ["inc-00002"]
    assert await ids(scope="fleet") == ["inc-00004"]
    assert await ids(terminal_id="nope") == []


@pytest.mark.parametrize("cursor", ["garbage!", "", "e30", "WzEsMl0", "eyJvIjoiMSIsImkiOiJ4In0"])
async def test_bad_cursor_is_value_error(store: SqliteStore, cursor: str) -> None:
    """A cursor we did not issue (not base64, not JSON, wrong shape or types) raises ValueError."""
    with pytest.raises(ValueError, match="cursor"):
        await store.list_incidents(cursor=cursor)
    with pytest.raises(ValueError, match="cursor"):
        await store.list_terminals(cursor=cursor)


async def test_bad_limit_is_value_error(store: SqliteStore) -> None:
    """A page size outside 1..MAX_PAGE is refused rather than silently clamped."""
    with pytest.raises(ValueError, match="limit"):
        await store.list_incidents(limit=0)
    with pytest.raises(ValueError, match="limit"):
        await store.list_terminals(limit=100_000)


async def test_get_missing_returns_none(store: SqliteStore) -> None:
    """Unknown ids are None / empty, not errors (the API answers 404)."""
    assert await store.get_incident("nope") is None
    assert await store.incident_events("nope") == []
    assert await store.get_terminal("nope") is None


async def test_terminal_listing_pages_and_filters(store: SqliteStore) -> None:
    """Terminals list in terminal_id order, page by cursor, filter by merchant; count counts all."""
    terms = [TerminalRecord(f"T{i:03d}", merchant_id=f"M{i % 2}") for i in range(25)]
    await store.write([], terminals=terms)
    page1, cursor = await store.list_terminals(limit=10)
    page2, cursor2 = await store.list_terminals(limit=10, cursor=cursor)
    page3, cursor3 = await store.list_terminals(limit=10, cursor=cursor2)
    assert [t.terminal_id for t in page1 + page2 + page3] == [t.terminal_id for t in terms]
    assert cursor3 is None
    m1, next_cursor = await store.list_terminals(merchant_id="M1", limit=100)
    assert [t.terminal_id for t in m1] == [f"T{i:03d}" for i in range(1, 25, 2)]
    assert next_cursor is None
    assert await store.count_terminals() == 25


async def test_dead_letters_trimmed_to_newest_n(store: SqliteStore) -> None:
    """Only the newest dead_letters_kept (5 here) survive, however many writes brought them."""
    await store.write([dead_letter(n) for n in range(4)])
    await store.write([dead_letter(n) for n in range(4, 9)])
    assert [d.detail for d in await store.recent_dead_letters(100)] == [f"bad #{n}" for n in range(8, 3, -1)]
    assert [d.detail for d in await store.recent_dead_letters(2)] == ["bad #8", "bad #7"]


async def test_dead_letters_kept_zero_keeps_none(db_path: Path) -> None:
    """dead_letters_kept = 0 disables the dead-letter table without failing writes."""
    s = await SqliteStore.open(str(db_path), dead_letters_kept=0)
    try:
        await s.write([dead_letter(1)])
        assert await s.recent_dead_letters(10) == []
    finally:
        await s.close()


def test_business_day_prefers_settlement_then_first_approval_then_close() -> None:
    """A batch's business day: the acquirer's business_date, else the UTC date of its first
    approval, else of its close."""
    b = BatchRecord("T1", 1, "CNY", "M1")
    assert business_day(b) is None
    b.close_ts_ms = 1_795_490_000_000  # 2026-11-24T03:13Z
    assert business_day(b) == "2026-11-24"
    b.first_approved_ts_ms = 1_795_447_532_000  # 2026-11-23T15:25Z
    assert business_day(b) == "2026-11-23"
    b.business_date = "2026-11-21"
    assert business_day(b) == "2026-11-21"
    b.business_date, b.first_approved_ts_ms = None, 10**20  # absurd terminal clock
    assert business_day(b) is None


async def test_batches_for_filters_by_business_day_and_terminal(store: SqliteStore) -> None:
    """batches_for(merchant, date, terminal) selects by the derived business day, in key order."""
    settled = full_batch()  # business_date 2026-11-22, though its first approval is 2026-11-23 UTC
    unsettled = BatchRecord("T00012345", 18, "CNY", "M0042", first_approved_ts_ms=1_795_490_000_000)  # 11-24
    other_terminal = BatchRecord("T2", 5, "USD", "M0042", first_approved_ts_ms=1_795_357_532_000)  # 11-22
    other_merchant = BatchRecord("T3", 1, "CNY", "M9", first_approved_ts_ms=1_795_357_532_000)
    await store.write([], batches=[unsettled, other_merchant, settled, other_terminal])
    assert await store.batches_for("M0042") == [settled, unsettled, other_terminal]
    assert await store.batches_for("M0042", "2026-11-22") == [settled, other_terminal]
    assert await store.batches_for("M0042", "2026-11-24") == [unsettled]
    assert await store.batches_for("M0042", "2026-11-23") == []
    assert await store.batches_for("M0042", "2026-11-22", terminal_id="T2") == [other_terminal]


def test_prepare_counts_rows() -> None:
    """prepare() snapshots effects into per-table rows: one incident row and one event per IncidentWrite."""
    prepared = prepare(
        [iw(incident(1)), TxnWrite(txn("T1", "A")), dead_letter(1)], terminals=[TerminalRecord("T1")]
    )
    assert prepared.row_count == 5
    assert len(prepared.incidents) == len(prepared.events) == 1


# ---- merchant notices and generated secrets (migration 0002) -------------------------------

async def test_a_generated_secret_is_kept_once_and_readable_beside_the_daemon(db_path: Path) -> None:
    """The first candidate wins and survives a reopen; it can be read from the file while a
    store (a running daemon) holds it; deleting the row lets a new one be generated."""
    assert sqlite_adapter.stored_secret(str(db_path), "notice.link_key") is None
    first = await SqliteStore.open(str(db_path))
    try:
        assert await first.secret("notice.link_key", "aaa") == "aaa"
        assert await first.secret("notice.link_key", "bbb") == "aaa"
        assert sqlite_adapter.stored_secret(str(db_path), "notice.link_key") == "aaa"
        assert sqlite_adapter.stored_secret(str(db_path), "http.api_token") is None
    finally:
        await first.close()
    second = await SqliteStore.open(str(db_path))
    try:
        assert await second.secret("notice.link_key", "ccc") == "aaa"
    finally:
        await second.close()
    raw(db_path, "DELETE FROM secrets WHERE name = 'notice.link_key'")
    again = await SqliteStore.open(str(db_path))
    try:
        assert await again.secret("notice.link_key", "ddd") == "ddd"
    finally:
        await again.close()


async def test_upstream_members_feed_the_restore_and_the_merchant_page(store: SqliteStore) -> None:
    """Members of an open upstream come back for the restore; a merchant's notice read finds the
    upstream through its terminals alone, plus its own incidents and their ancestors."""
    upstream = dataclasses.replace(incident(1, kind="host_outage", key="fleet|host_outage"),
                                   scope="fleet", terminal_id=None, merchant_id=None)
    child = dataclasses.replace(incident(2, terminal_id="T5", merchant_id="M2", kind="network"),
                                parent_id=upstream.id, suppressed=True)
    old = dataclasses.replace(incident(3, merchant_id="M2", terminal_id="T6", status="resolved"), resolved_at=T0 - 10)
    await store.write([iw(upstream), iw(child), iw(old),
                       UpstreamMembersWrite(upstream.id, (("T7", "M2"), ("T8", "M3")), T0),
                       UpstreamMembersWrite(upstream.id, (("T7", "M2"),), T0 + 1)])
    assert {k: sorted(v) for k, v in (await store.load_open_upstream_members()).items()} == {
        upstream.id: [("T7", "M2"), ("T8", "M3")]}
    found, members = await store.merchant_notice_incidents("M2", T0 - 100)
    assert sorted(i.id for i in found) == sorted([upstream.id, child.id, old.id])
    assert members == {upstream.id: {"T7"}}
    found, members = await store.merchant_notice_incidents("M2", T0)
    assert old.id not in {i.id for i in found}
    found, members = await store.merchant_notice_incidents("M9", T0 - 100)
    assert (found, members) == ([], {})


async def test_terminal_notices_keep_the_last_acknowledged(store: SqliteStore) -> None:
    await store.write([TerminalNoticeWrite("T1", "M1", '{"items":[1]}', T0),
                       TerminalNoticeWrite("T1", "M1", '{"items":[]}', T0 + 1),
                       TerminalNoticeWrite("T2", "M1", None, T0 + 2)])
    await store.write([TerminalNoticeWrite("T3", "M1", '{"v":1,"items":[{"title":"x"}]}', T0)])
    assert await store.load_terminal_notices() == [
        TerminalNoticeWrite("T1", "M1", '{"items":[]}', T0 + 1), TerminalNoticeWrite("T2", "M1", None, T0 + 2),
        TerminalNoticeWrite("T3", "M1", '{"v":1,"items":[{"title":"x"}]}', T0)]
    assert [r.terminal_id for r in await store.load_terminal_notices(shown_only=True)] == ["T3"]
