"""The SQLite store (``store.url = sqlite:///...``): the embedded default backend of the store port.

Why it looks the way it does (the row format, cursors and migrations it shares with
every backend live in fleetwatch/storage/):

- **One writer, one transaction per batch.** The pipeline hands the effects of many
  messages to :meth:`SqliteStore.write`; they commit together or not at all, and QoS 1
  messages are acknowledged only after that commit (docs/ARCHITECTURE.md). Any SQLite
  failure becomes :class:`~fleetwatch.errors.StoreError`: the daemon exits, systemd
  restarts it, the broker redelivers what was never acknowledged.
- **One daemon per database.** ``open`` takes an exclusive lock on ``PATH.lock`` (not on
  the database file: closing any descriptor of it would drop SQLite's own locks), so a
  second daemon started on the same store by mistake is refused with a StoreError
  instead of writing beside the first. The kernel releases it when the process dies.
- **Readers never wait for the writer.** WAL mode and a second, read-only connection
  serve the HTTP API from the last committed state while a write is in progress.
- **One statement per table, fed from ``json_each``.** Not ``executemany``: that binds
  row by row, and every row re-takes the GIL from the event loop thread, which holds it
  while it decodes messages; under load 5,000 terminal rows took 11 s instead of 0.1 s (a
  GIL convoy). One ``INSERT ... SELECT ... FROM json_each(?)`` runs the whole batch inside
  SQLite with the GIL released once.
- **Retention shares the writer.** SQLite has one writer, so a retention chunk takes the
  same lock as a write: intake waits for at most one small delete.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import aiosqlite
import msgspec

from fleetwatch.core.model import (
    AcquirerStatus,
    BatchRecord,
    DeadLetter,
    DeliveryResult,
    Effect,
    Incident,
    IncidentEvent,
    MerchantHoursRecord,
    NotificationRecord,
    TerminalNoticeWrite,
    TerminalRecord,
)
from fleetwatch.errors import LeaseLost, StoreError
from fleetwatch.storage import outbox, paging
from fleetwatch.storage.migrations import SCHEMA_VERSION_DDL, Migration, migrations, pending
from fleetwatch.storage.retention import PurgeKind
from fleetwatch.storage.rows import (
    BATCH_COLUMNS,
    DEAD_LETTER_COLUMNS,
    EVENT_COLUMNS,
    HOURS_COLUMNS,
    INCIDENT_COLUMNS,
    SHOWN_NOTICE,
    STATUS_COLUMNS,
    TERMINAL_COLUMNS,
    TERMINAL_NOTICE_COLUMNS,
    OnConflict,
    PreparedWrite,
    Row,
    Table,
    TerminalChunk,
    batch_of,
    dead_letter_of,
    event_of,
    hours_of,
    incident_of,
    notification_of,
    prepare,
    status_of,
    terminal_notice_of,
    terminal_of,
    without_nul,
)

__all__ = ["SqliteStore", "stored_secret"]

BUSY_TIMEOUT_MS: Final = 5000
"""How long a statement waits for a lock (a checkpoint, a second process) before failing."""

WAL_SIZE_LIMIT: Final = 64 * 1024 * 1024
"""Bytes the WAL file is truncated to after a checkpoint."""

LOAD_CHUNK: Final = 20_000
"""Rows fetched per round trip when loading whole tables."""

LEASE_NAME: Final = "active"
"""The lease row the fencing check reads (the high-availability role logic owns it)."""

_ROWS_JSON: Final = msgspec.json.Encoder()


def _cols(columns: Sequence[str]) -> str:
    return ", ".join(columns)


def _statement(table: Table) -> str:
    """The bulk INSERT whose one parameter is a JSON array of rows (each an array of values).

    ``WHERE true`` keeps SQLite's parser from reading an upsert's ON CONFLICT as a join.
    ON CONFLICT DO NOTHING rather than INSERT OR IGNORE: only a duplicate key is ignored
    (a QoS 1 redelivery), any other constraint failure still fails the batch.
    """
    picks = ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(table.columns)))
    sql = f"INSERT INTO {table.name} ({_cols(table.columns)}) SELECT {picks} FROM json_each(?) WHERE true"
    if table.conflict is OnConflict.IGNORE:
        return f"{sql} ON CONFLICT ({_cols(table.key)}) DO NOTHING"
    if table.conflict is OnConflict.UPDATE:
        updates = ", ".join(f"{c} = excluded.{c}" for c in table.columns if c not in table.key)
        where = f" WHERE {table.update_if}" if table.update_if else ""
        return f"{sql} ON CONFLICT ({_cols(table.key)}) DO UPDATE SET {updates}{where}"
    return sql


_STATEMENTS: dict[str, str] = {}


def _statement_for(table: Table) -> str:
    sql = _STATEMENTS.get(table.name)
    if sql is None:
        sql = _STATEMENTS[table.name] = _statement(table)
    return sql


_TRIM_DEAD_LETTERS: Final = (
    "DELETE FROM dead_letters WHERE id <= (SELECT id FROM dead_letters ORDER BY id DESC LIMIT 1 OFFSET ?)"
)

_OPEN_BATCH_OF: Final = (
    "EXISTS (SELECT 1 FROM batches b WHERE b.terminal_id = x.terminal_id AND b.batch_no = x.batch_no "
    "AND b.currency = x.currency AND b.done = FALSE)"
)
_PURGE_SQL: Final[dict[str, str]] = {
    "transactions": (
        "DELETE FROM transactions WHERE rowid IN (SELECT x.rowid FROM transactions x "
        f"WHERE x.received_at < ? AND NOT {_OPEN_BATCH_OF} ORDER BY x.received_at LIMIT ?)"
    ),
    "settlements": (
        "DELETE FROM settlements WHERE id IN (SELECT x.id FROM settlements x "
        f"WHERE x.received_at < ? AND NOT {_OPEN_BATCH_OF} ORDER BY x.received_at LIMIT ?)"
    ),
    "dead_letters": (
        "DELETE FROM dead_letters WHERE id IN "
        "(SELECT id FROM dead_letters WHERE received_at < ? ORDER BY received_at LIMIT ?)"
    ),
    "notifications": outbox.PURGE,
    "batches": (
        "DELETE FROM batches WHERE rowid IN (SELECT rowid FROM batches WHERE done = TRUE "
        "AND COALESCE(settled_at, closed_at, last_txn_at, first_approved_at, 0) < ? LIMIT ?)"
    ),
}
_EXPIRED_INCIDENTS: Final = (
    "SELECT id FROM incidents WHERE status = 'resolved' AND resolved_at < ? ORDER BY resolved_at LIMIT ?"
)


# ---- migrations ---------------------------------------------------------------------

def _migration_script(migration: Migration) -> str:
    """One migration and its schema_version row, in one transaction."""
    name = migration.name.replace("'", "''")
    return (
        f"BEGIN IMMEDIATE;\n{migration.sql}\n;\n"
        f"INSERT INTO schema_version (version, name, applied_at) "
        f"VALUES ({migration.version}, '{name}', {time.time()!r});\n"
        "COMMIT;\n"
    )


async def _schema_version(conn: Any) -> int:
    rows = await conn.execute_fetchall("SELECT MAX(version) FROM schema_version")
    version = next(iter(rows))[0]
    return int(version) if version is not None else 0


async def _migrate(conn: Any, path: str) -> None:
    """Apply the migrations the database lacks; refuse one written by newer code."""
    await conn.execute(SCHEMA_VERSION_DDL)
    for migration in pending(migrations("sqlite"), await _schema_version(conn), path):
        try:
            await conn.executescript(_migration_script(migration))
        except sqlite3.Error as exc:
            await _rollback_quietly(conn)
            raise StoreError(f"migration {migration.name} failed on {path}: {exc}") from exc


async def _rollback_quietly(conn: Any) -> None:
    """Roll back if a transaction is open; the original error is the one worth raising."""
    with contextlib.suppress(sqlite3.Error, ValueError):
        await conn.execute("ROLLBACK")


# ---- connections --------------------------------------------------------------------

async def _open_writer(path: str) -> Any:
    conn = await aiosqlite.connect(path, isolation_level=None)
    try:
        rows = await conn.execute_fetchall("PRAGMA journal_mode=WAL")
        mode = next(iter(rows))[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"{path}: cannot use WAL journal mode (got {mode!r})")
        await conn.execute("PRAGMA synchronous=NORMAL")
        await conn.execute("PRAGMA foreign_keys=ON")
        await conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        # After a checkpoint the WAL file shrinks back to this size instead of staying at
        # its high-water mark (a burst of writes would otherwise leave a huge -wal file).
        await conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
    except BaseException:
        await conn.close()
        raise
    return conn


def _prepare_location(path: str) -> str:
    """Create the database's directory; return the read-only URI of the database file."""
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    return file.resolve().as_uri() + "?mode=ro"


def stored_secret(path: str, name: str) -> str | None:
    """A generated secret read straight from the file, without opening the store (a running
    daemon holds it): None while the database, its ``secrets`` table or the secret is not there."""
    file = Path(path)
    if not file.is_file():
        return None
    try:
        conn = sqlite3.connect(file.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT value FROM secrets WHERE name = ?", (name,)).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None  # an older schema without the table: the daemon creates it at its next start
    return None if row is None else str(row[0])


def _lock_instance(path: str) -> Any:
    """Hold ``PATH.lock`` exclusively for as long as the returned file is open."""
    lock = open(f"{path}.lock", "a+b")  # noqa: SIM115 - held open for the store's lifetime
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        lock.close()
        raise StoreError(f"store {path} is in use by another fleetwatch process (it holds {path}.lock)") from exc
    except OSError:
        lock.close()
        raise
    return lock


async def _open_reader(uri: str) -> Any:
    """A read-only connection: the API can never write, even by mistake."""
    conn = await aiosqlite.connect(uri, uri=True, isolation_level=None)
    try:
        await conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        await conn.execute("PRAGMA query_only=ON")
    except BaseException:
        await conn.close()
        raise
    return conn


def _file_sizes(path: str) -> int:
    total = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(FileNotFoundError):
            total += os.path.getsize(path + suffix)
    return total


# ---- the store ----------------------------------------------------------------------

class SqliteStore:
    """The daemon's store in one file: one write connection (the writer task) and one read connection.

    Implements :class:`fleetwatch.ports.Store`: ``write``/``write_prepared`` for the
    pipeline, ``terminal_chunks`` and the ``load_*`` methods for the restore, the
    ``list_*``/``get_*`` methods for the HTTP API, ``delete_expired`` for retention.
    """

    def __init__(self, writer: Any, reader: Any, path: str, dead_letters_kept: int, lock: Any = None) -> None:
        """Use :meth:`open`."""
        self._writer: Any = writer
        self._reader: Any = reader
        self._path = path
        self._dead_letters_kept = dead_letters_kept
        self._write_lock = asyncio.Lock()
        self._closed = False
        self._instance_lock: Any = lock
        self._fence: int | None = None

    @classmethod
    async def open(cls, path: str, *, dead_letters_kept: int = 1000) -> SqliteStore:
        """Open (creating it and its directory if need be) and migrate the database at ``path``.

        ``path`` is a file path (``StoreSettings.sqlite_path``); ``:memory:`` cannot work
        since the read connection is a second connection to the same file.
        """
        if dead_letters_kept < 0:
            raise ValueError("dead_letters_kept must be >= 0")
        try:
            reader_uri = await asyncio.to_thread(_prepare_location, path)
            lock = _lock_instance(path)
        except OSError as exc:
            raise StoreError(f"cannot open store {path}: {exc}") from exc
        try:
            writer = await _open_writer(path)
        except BaseException as exc:
            lock.close()
            if isinstance(exc, sqlite3.Error | OSError):
                raise StoreError(f"cannot open store {path}: {exc}") from exc
            raise
        try:
            await _migrate(writer, path)
            reader = await _open_reader(reader_uri)
        except BaseException as exc:
            await writer.close()
            lock.close()
            if isinstance(exc, sqlite3.Error | OSError):
                raise StoreError(f"cannot open store {path}: {exc}") from exc
            raise
        return cls(writer, reader, path, dead_letters_kept, lock)

    async def close(self) -> None:
        """Close both connections (waits for a write in progress); idempotent."""
        if self._closed:
            return
        async with self._write_lock:
            self._closed = True
            try:
                await self._reader.close()
            finally:
                await self._writer.close()
                if self._instance_lock is not None:
                    self._instance_lock.close()

    @property
    def path(self) -> str:
        return self._path

    @property
    def location(self) -> str:
        return f"sqlite:///{self._path}"

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("store is closed")

    # ---- writer side ----------------------------------------------------------------

    def write(
        self,
        effects: Sequence[Effect],
        terminals: Sequence[TerminalRecord] = (),
        batches: Sequence[BatchRecord] = (),
    ) -> Coroutine[Any, Any, None]:
        """Persist effects and dirty records in one transaction; ``await`` the result.

        Deliberately not ``async def``: the rows are snapshotted *now*, when ``write`` is
        called, even if the returned coroutine only runs later (e.g. in a task), so later
        changes to the engine's objects cannot leak into this write.
        """
        return self.write_prepared(prepare(effects, terminals, batches))

    def fence(self, token: int | None) -> None:
        self._fence = token

    async def write_prepared(self, prepared: PreparedWrite) -> None:
        """Commit prepared rows in one transaction: all of them or none (StoreError).

        Incidents upsert by id (+ one event row per IncidentWrite); transactions insert
        once per (terminal_id, txn_id); terminals and batches upsert; dead letters insert
        and are trimmed to the newest ``dead_letters_kept``.

        Don't cancel a write to abandon it: a cancelled write rolls back if it can, but
        once COMMIT has been handed to SQLite's thread it completes anyway.
        """
        tables = prepared.tables()
        if not tables:
            return
        async with self._fenced_transaction("store write failed") as conn:
            for table, rows in tables:
                blob = _ROWS_JSON.encode(rows)
                if b"\\u0000" in blob:  # json_extract would cut the string there
                    blob = _ROWS_JSON.encode(without_nul(rows))
                await conn.execute(_statement_for(table), (blob.decode(),))
            if prepared.dead_letters:
                await self._trim_dead_letters()

    @contextlib.asynccontextmanager
    async def _fenced_transaction(self, failed: str) -> AsyncIterator[Any]:
        """The one shape of every write: under the writer's lock, BEGIN IMMEDIATE, the
        lease fence checked, the body, COMMIT. Any error (a cancellation too) rolls back;
        a database error comes out as StoreError("{failed} on {path}: ...")."""
        async with self._write_lock:
            self._check_open()
            conn = self._writer
            try:
                await conn.execute("BEGIN IMMEDIATE")
                await self._check_fence()
                yield conn
                await conn.execute("COMMIT")
            except BaseException as exc:
                await _rollback_quietly(conn)
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"{failed} on {self._path}: {exc}") from exc
                raise

    async def _check_fence(self) -> None:
        if self._fence is None:
            return
        rows = list(await self._writer.execute_fetchall(
            "SELECT token FROM leases WHERE name = ?", (LEASE_NAME,)))
        held = rows[0][0] if rows else None
        if held != self._fence:
            raise LeaseLost(f"write refused: the lease token is {held}, this instance holds {self._fence}")

    async def _trim_dead_letters(self) -> None:
        if self._dead_letters_kept == 0:
            await self._writer.execute("DELETE FROM dead_letters")
        else:
            await self._writer.execute(_TRIM_DEAD_LETTERS, (self._dead_letters_kept,))

    # ---- retention ------------------------------------------------------------------

    async def delete_expired(self, kind: PurgeKind, before: float, limit: int) -> Mapping[str, int]:
        """One chunk of retention, in one short transaction under the writer's lock."""
        async with self._fenced_transaction("retention failed") as conn:
            if kind == "incidents":
                deleted = await self._delete_incidents(before, limit)
            else:
                cursor = await conn.execute(_PURGE_SQL[kind], (before, limit))
                deleted = {kind: max(cursor.rowcount, 0)}
        return deleted

    async def _delete_incidents(self, before: float, limit: int) -> dict[str, int]:
        conn = self._writer
        ids = [r[0] for r in await conn.execute_fetchall(_EXPIRED_INCIDENTS, (before, limit))]
        if not ids:
            return {"incidents": 0, "incident_events": 0, "upstream_terminals": 0}
        param = (json.dumps(ids),)
        events = await conn.execute(
            "DELETE FROM incident_events WHERE incident_id IN (SELECT value FROM json_each(?))", param)
        members = await conn.execute(
            "DELETE FROM upstream_terminals WHERE incident_id IN (SELECT value FROM json_each(?))", param)
        incidents = await conn.execute("DELETE FROM incidents WHERE id IN (SELECT value FROM json_each(?))", param)
        return {"incidents": max(incidents.rowcount, 0), "incident_events": max(events.rowcount, 0),
                "upstream_terminals": max(members.rowcount, 0)}

    async def size_bytes(self) -> int:
        """The database file plus its write-ahead log."""
        return await asyncio.to_thread(_file_sizes, self._path)

    # ---- restore side -----------------------------------------------------------------

    async def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self._check_open()
        try:
            rows = await self._reader.execute_fetchall(sql, params)
        except sqlite3.Error as exc:
            raise StoreError(f"store read failed on {self._path}: {exc}") from exc
        return list(rows)

    async def load_terminals(self) -> list[TerminalRecord]:
        """Every terminal as a list (tests and tools; the daemon streams ``terminal_chunks``)."""
        return [t async for chunk in self.terminal_chunks() for t in chunk]

    async def terminal_chunks(self) -> AsyncIterator[Sequence[TerminalRecord]]:
        """Every terminal, LOAD_CHUNK rows at a time, read on a connection of its own.

        Each chunk is read in a worker thread, with the database memory-mapped (pages
        straight from the OS cache); its records are built as the engine iterates it.
        """
        self._check_open()

        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(f"file:{self._path}?mode=ro", uri=True, check_same_thread=False)
            conn.execute("PRAGMA mmap_size = 4294967296")
            return conn

        def next_chunk(cursor: sqlite3.Cursor) -> TerminalChunk:
            return TerminalChunk(cursor.fetchmany(LOAD_CHUNK))

        try:
            conn = await asyncio.to_thread(connect)
        except sqlite3.Error as exc:
            raise StoreError(f"store read failed on {self._path}: {exc}") from exc
        try:
            cursor = conn.execute(f"SELECT {_cols(TERMINAL_COLUMNS)} FROM terminals")
            while chunk := await asyncio.to_thread(next_chunk, cursor):
                yield chunk
        except sqlite3.Error as exc:
            raise StoreError(f"store read failed on {self._path}: {exc}") from exc
        finally:
            conn.close()

    async def load_open_incidents(self) -> list[Incident]:
        """Incidents not resolved (open or acknowledged), oldest first."""
        rows = await self._fetchall(
            f"SELECT {_cols(INCIDENT_COLUMNS)} FROM incidents "
            "WHERE status <> 'resolved' ORDER BY opened_at, id"
        )
        return [incident_of(r) for r in rows]

    async def load_open_batches(self) -> list[BatchRecord]:
        """Batches not yet done (still reconciling), by (terminal_id, batch_no, currency)."""
        rows = await self._fetchall(
            f"SELECT {_cols(BATCH_COLUMNS)} FROM batches "
            "WHERE done = FALSE ORDER BY terminal_id, batch_no, currency"
        )
        return [batch_of(r) for r in rows]

    async def load_recent_txn_keys(self, limit: int) -> list[tuple[str, str]]:
        """(terminal_id, txn_id) of the ``limit`` most recently received transactions.

        Returned **oldest first** (chronological), so feeding them in order into a bounded
        dedupe window leaves the newest as the most recent entries.
        """
        if limit <= 0:
            return []
        rows = await self._fetchall(
            "SELECT terminal_id, txn_id FROM transactions ORDER BY received_at DESC LIMIT ?", (limit,)
        )
        return [(r[0], r[1]) for r in reversed(rows)]

    # ---- read side (HTTP API) ---------------------------------------------------------

    async def list_incidents(
        self,
        *,
        status: str = "open",
        kind: str | None = None,
        terminal_id: str | None = None,
        merchant_id: str | None = None,
        scope: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> tuple[list[Incident], str | None]:
        """One page of incidents, newest first by (opened_at, id), and the next page's cursor."""
        paging.check_limit(limit)
        where, params = _status_filter(status)
        for column, value in zip(paging.INCIDENT_FILTERS, (kind, terminal_id, merchant_id, scope), strict=True):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if cursor is not None:
            opened_at, incident_id = paging.decode_incident_cursor(cursor)
            where.append("opened_at <= ? AND (opened_at < ? OR id < ?)")
            params += [opened_at, opened_at, incident_id]
        sql = (
            f"SELECT {_cols(INCIDENT_COLUMNS)} FROM incidents{_where(where)} "
            "ORDER BY opened_at DESC, id DESC LIMIT ?"
        )
        rows = await self._fetchall(sql, [*params, limit + 1])
        items = [incident_of(r) for r in rows[:limit]]
        more = len(rows) > limit
        return items, (paging.incident_cursor(items[-1].opened_at, items[-1].id) if more else None)

    async def get_incident(self, incident_id: str) -> Incident | None:
        rows = await self._fetchall(
            f"SELECT {_cols(INCIDENT_COLUMNS)} FROM incidents WHERE id = ?", (incident_id,)
        )
        return incident_of(rows[0]) if rows else None

    async def incident_events(self, incident_id: str) -> list[IncidentEvent]:
        """An incident's audit trail in the order it was written."""
        rows = await self._fetchall(
            f"SELECT {_cols(EVENT_COLUMNS)} FROM incident_events WHERE incident_id = ? ORDER BY id",
            (incident_id,),
        )
        return [event_of(r) for r in rows]

    async def get_terminal(self, terminal_id: str) -> TerminalRecord | None:
        rows = await self._fetchall(
            f"SELECT {_cols(TERMINAL_COLUMNS)} FROM terminals WHERE terminal_id = ?", (terminal_id,)
        )
        return terminal_of(rows[0]) if rows else None

    async def list_terminals(
        self, *, merchant_id: str | None = None, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[TerminalRecord], str | None]:
        """One page of terminals in terminal_id order, and the next page's cursor."""
        paging.check_limit(limit)
        where: list[str] = []
        params: list[Any] = []
        if merchant_id is not None:
            where.append("merchant_id = ?")
            params.append(merchant_id)
        if cursor is not None:
            where.append("terminal_id > ?")
            params.append(paging.decode_terminal_cursor(cursor))
        sql = f"SELECT {_cols(TERMINAL_COLUMNS)} FROM terminals{_where(where)} ORDER BY terminal_id LIMIT ?"
        rows = await self._fetchall(sql, [*params, limit + 1])
        items = [terminal_of(r) for r in rows[:limit]]
        more = len(rows) > limit
        return items, (paging.terminal_cursor(items[-1].terminal_id) if more else None)

    async def count_terminals(self) -> int:
        rows = await self._fetchall("SELECT COUNT(*) FROM terminals")
        return int(rows[0][0])

    async def recent_dead_letters(self, limit: int) -> list[DeadLetter]:
        """The newest ``limit`` dead letters, newest first."""
        if limit <= 0:
            return []
        rows = await self._fetchall(
            f"SELECT {_cols(DEAD_LETTER_COLUMNS)} FROM dead_letters ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [dead_letter_of(r) for r in rows]

    async def batches_for(
        self, merchant_id: str, business_date: str | None = None, terminal_id: str | None = None
    ) -> list[BatchRecord]:
        """A merchant's batches for the reconciliation view, by (terminal_id, batch_no, currency).

        ``business_date`` (``YYYY-MM-DD``) matches ``storage.rows.business_day``: the
        settlement's business date when settled, else the UTC date of the first approved
        transaction (terminal clock), else of the BatchClose.
        """
        where = ["merchant_id = ?"]
        params: list[Any] = [merchant_id]
        if business_date is not None:
            where.append("business_day = ?")
            params.append(business_date)
        if terminal_id is not None:
            where.append("terminal_id = ?")
            params.append(terminal_id)
        rows = await self._fetchall(
            f"SELECT {_cols(BATCH_COLUMNS)} FROM batches{_where(where)} "
            "ORDER BY terminal_id, batch_no, currency",
            params,
        )
        return [batch_of(r) for r in rows]


    # ---- merchant notices and generated secrets (migration 0002) -------------------------

    async def load_open_upstream_members(self) -> dict[str, list[tuple[str, str | None]]]:
        """(terminal_id, merchant_id) each open upstream incident is built on (for the restore)."""
        rows = await self._fetchall(
            "SELECT u.incident_id, u.terminal_id, u.merchant_id FROM upstream_terminals u "
            "JOIN incidents i ON i.id = u.incident_id WHERE i.status <> 'resolved' "
            "ORDER BY u.incident_id, u.terminal_id"
        )
        out: dict[str, list[tuple[str, str | None]]] = {}
        for incident_id, terminal_id, merchant_id in rows:
            out.setdefault(incident_id, []).append((terminal_id, merchant_id))
        return out

    async def load_terminal_notices(self, *, shown_only: bool = False) -> list[TerminalNoticeWrite]:
        """What the broker last acknowledged per terminal (payload None: cleared), by terminal_id.

        ``shown_only``: only screens with something on them (a screen given ``items: []``
        looks like one never given anything), so a restart does not load a row for every
        terminal that ever had a notice.
        """
        where, params = ((" WHERE payload IS NOT NULL AND instr(payload, ?) = 0", (SHOWN_NOTICE,))
                         if shown_only else ("", ()))
        rows = await self._fetchall(
            f"SELECT {_cols(TERMINAL_NOTICE_COLUMNS)} FROM terminal_notices{where} ORDER BY terminal_id", params
        )
        return [terminal_notice_of(r) for r in rows]

    async def merchant_notice_incidents(
        self, merchant_id: str, resolved_since: float,
    ) -> tuple[list[Incident], dict[str, set[str]]]:
        """What a merchant's notices are built from: incidents and upstream members.

        The merchant's open incidents and those resolved since ``resolved_since``, the
        upstreams built on its terminals, every ancestor of those (parents and the
        ``previous_id`` chain); and per upstream the merchant's terminals it is built on.
        """
        recent = "(status <> 'resolved' OR resolved_at >= ?)"
        rows = await self._fetchall(
            f"SELECT {_cols(INCIDENT_COLUMNS)} FROM incidents WHERE merchant_id = ? AND {recent}",
            (merchant_id, resolved_since),
        )
        found = {i.id: i for i in map(incident_of, rows)}
        member_rows = await self._fetchall(
            "SELECT u.incident_id, u.terminal_id FROM upstream_terminals u JOIN incidents i "
            "ON i.id = u.incident_id WHERE u.merchant_id = ? AND (i.status <> 'resolved' OR i.resolved_at >= ?)",
            (merchant_id, resolved_since),
        )
        members: dict[str, set[str]] = {}
        for incident_id, terminal_id in member_rows:
            members.setdefault(incident_id, set()).add(terminal_id)
        wanted = set(members) - set(found)
        for _ in range(8):  # ancestors: terminal -> merchant -> group -> fleet, and previous_id
            if not wanted:
                break
            rows = await self._fetchall(
                f"SELECT {_cols(INCIDENT_COLUMNS)} FROM incidents WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps(sorted(wanted)),),
            )
            for inc in map(incident_of, rows):
                found[inc.id] = inc
            wanted = {
                ref for inc in found.values() for ref in (inc.parent_id, inc.previous_id)
                if ref is not None and ref not in found
            }
        return list(found.values()), members

    async def load_acquirer_statuses(self) -> list[AcquirerStatus]:
        rows = await self._fetchall(f"SELECT {_cols(STATUS_COLUMNS)} FROM terminal_statuses ORDER BY terminal_id")
        return [status_of(r) for r in rows]

    async def load_merchant_hours(self) -> list[MerchantHoursRecord]:
        rows = await self._fetchall(f"SELECT {_cols(HOURS_COLUMNS)} FROM merchant_hours ORDER BY merchant_id")
        return [hours_of(r) for r in rows]

    async def secret(self, name: str, candidate: str) -> str:
        """The stored secret ``name``; stores ``candidate`` first if there is none (shared by all instances)."""
        async with self._write_lock:
            self._check_open()
            try:
                await self._writer.execute(
                    "INSERT INTO secrets (name, value, created_at) VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING",
                    (name, candidate, time.time()),
                )
                rows = await self._writer.execute_fetchall("SELECT value FROM secrets WHERE name = ?", (name,))
            except sqlite3.Error as exc:
                raise StoreError(f"store write failed on {self._path}: {exc}") from exc
        return str(next(iter(rows))[0])


    # ---- the notifications' outbox (fleetwatch/storage/outbox.py) --------------------

    async def due_notifications(self, now: float, limit: int, *, margin_s: float = 0.0) -> list[NotificationRecord]:
        return [notification_of(r) for r in await self._fetchall(outbox.DUE, (now - margin_s, now, limit))]

    async def record_deliveries(self, results: Sequence[DeliveryResult]) -> None:
        if not results:
            return
        params = [(r.status, r.attempts, r.next_at, r.last_error, r.sent_at, r.event_id) for r in results]
        async with self._fenced_transaction("store write failed") as conn:
            await conn.executemany(outbox.RECORD, params)

    async def load_notification_state(self) -> list[NotificationRecord]:
        return [notification_of(r) for r in await self._fetchall(outbox.STATE)]

    async def list_notifications(
        self, *, status: str = "all", merchant_id: str | None = None, limit: int = 100, cursor: str | None = None,
    ) -> tuple[list[NotificationRecord], str | None]:
        sql, params = outbox.list_query(status, merchant_id, limit, cursor)
        rows = [notification_of(r) for r in await self._fetchall(sql, params)]
        more = len(rows) > limit
        return rows[:limit], (outbox.cursor_of(rows[limit - 1].seq) if more else None)

    async def count_pending_notifications(self) -> int:
        return int(next(iter(await self._fetchall(outbox.COUNT_PENDING)))[0])


def _where(terms: Sequence[str]) -> str:
    return f" WHERE {' AND '.join(terms)}" if terms else ""


def _status_filter(status: str) -> tuple[list[str], list[Any]]:
    """The WHERE term for a status filter; ``open`` is spelled like the partial indexes."""
    paging.check_status(status)
    if status == "open":
        return ["status <> 'resolved'"], []
    if status in ("acknowledged", "resolved"):
        return ["status = ?"], [status]
    return [], []
