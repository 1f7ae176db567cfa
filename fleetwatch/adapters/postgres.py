"""The PostgreSQL store (``store.url = postgresql://...``, or ``postgres://``), with asyncpg.

The same port, tables, migrations and answers as the SQLite store (the store contract
tests run both); what differs is how the rows travel (docs/decisions/0004-asyncpg.md):

- **One statement per table, fed from typed arrays.** A write sends each table's rows as
  one ``INSERT ... SELECT ... FROM unnest($1::text[], $2::bigint[], ...)``: columns go over
  the wire in asyncpg's binary format, PostgreSQL plans the statement once per
  connection, and a batch of 5,000 effects is a handful of round trips, never one per
  row. The array types are read from the live schema when the store opens, so the
  migrations stay the only place that says what a column is.
- **One writer connection, a small pool for everything else.** The pipeline's single
  writer owns a connection (one transaction per batch; QoS 1 is acknowledged only after
  it committed); the API's reads, the restore and retention use the pool, so none of them
  waits for a write, nor a write for them (retention deletes old rows nobody writes).
- **Fencing in the transaction.** With a token set (``fence``), every write first reads
  the lease row ``FOR KEY SHARE``: a takeover locks the row ``FOR UPDATE`` before it bumps
  the token, so it waits for a write in progress, and every later write of the old holder
  fails, so two instances can never both commit. A renewal (an ``UPDATE`` of the expiry
  alone, which takes only ``FOR NO KEY UPDATE``) never waits for a write, nor a write for
  it: under full load the lease is renewed on time.
- **The lease on the database's clock.** ``claim``/``renew``/``release`` (ports.Leases)
  compare and set the lease row's expiry with ``clock_timestamp()``, so the instances
  never compare their own clocks; they run on a connection of their own, opened when
  first needed, so a renewal never queues behind a write or a restore, and a renewal
  that cannot get an answer in time fails fast (its timeout is the caller's).
- **Errors translated once.** asyncpg's and the socket's errors become StoreError here,
  with the URL's password masked; nothing above this module knows asyncpg exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from typing import Any, Final, TypeVar

import asyncpg

from fleetwatch.config import mask_url
from fleetwatch.core.lease import LeaseView
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
from fleetwatch.storage.migrations import SCHEMA_VERSION_DDL, migrations, pending
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
    WRITE_ORDER,
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

__all__ = ["PostgresStore"]

LOAD_CHUNK: Final = 20_000
"""Rows per fetch when the restore streams the terminals."""

POOL_SIZE: Final = 4
"""Connections for the API's reads, the restore and retention (the writer has its own)."""

COMMAND_TIMEOUT_S: Final = 30.0
"""A statement that takes longer has failed: the daemon stops rather than hang with
QoS 1 deliveries unacknowledged (a PostgreSQL that vanished without a TCP reset)."""

MIGRATION_LOCK: Final = 0x666C6565  # "flee": one key for "some instance is migrating"
"""Advisory lock key held while migrating, so two instances starting at once take turns."""

LEASE_NAME: Final = "active"

_T = TypeVar("_T")

_DATA_ERRORS: Final = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError,
                       TimeoutError)
"""Everything asyncpg or the socket raise for a failed statement or connection: each becomes a StoreError."""


@contextlib.contextmanager
def _translated(what: str, where: str) -> Iterator[None]:
    """Every database or socket error as one StoreError naming what failed, and where."""
    try:
        yield
    except _DATA_ERRORS as exc:
        raise StoreError(f"{what} failed on {where}: {type(exc).__name__}: {exc}") from exc


@contextlib.asynccontextmanager
async def _transaction(conn: Any) -> AsyncIterator[None]:
    """BEGIN ... COMMIT, or ROLLBACK on any error, spelled out.

    Not asyncpg's ``conn.transaction()``: a write cancelled while its BEGIN was on the wire
    leaves that object behind, and asyncpg then runs every later transaction as a savepoint
    inside it, so nothing would ever commit again (found by the store contract tests). A
    transaction left open on the server is rolled back before the next one begins.
    """
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")
    await conn.execute("BEGIN")
    try:
        yield
    except BaseException:
        if not conn.is_closed():
            # The original error is the one worth raising; after a timeout the connection may
            # still be busy cancelling, and this ROLLBACK fails too.
            with contextlib.suppress(Exception):
                await conn.execute("ROLLBACK")
        raise
    await conn.execute("COMMIT")


def _command_count(status: str) -> int:
    """``DELETE 42`` -> 42."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


_DB_NOW: Final = "extract(epoch FROM clock_timestamp())::float8"
"""The database's clock in epoch seconds: the only clock lease expiries are compared with."""
_LEASE_ROW: Final = f"SELECT holder, token, expires_at - {_DB_NOW} AS remaining FROM leases WHERE name = $1"
_LEASE_INSERT: Final = (f"INSERT INTO leases (name, holder, token, expires_at) VALUES ($1, $2, 1, {_DB_NOW} + $3) "
                        "ON CONFLICT (name) DO NOTHING RETURNING token")
_LEASE_TAKE: Final = (
    f"UPDATE leases SET holder = $2, token = token + 1, expires_at = {_DB_NOW} + $3 "
    f"WHERE name = $1 AND token = $4 AND expires_at <= {_DB_NOW} RETURNING token"
)
"""Takes an expired lease, in a transaction after _LEASE_LOCK; after a renewal or another's
takeover it no longer matches: nothing changes."""
_LEASE_LOCK: Final = "SELECT 1 FROM leases WHERE name = $1 FOR UPDATE"
"""Waits for a write in progress (its fence check holds the row FOR KEY SHARE), which a plain
UPDATE of non-key columns (FOR NO KEY UPDATE) would not."""
_LEASE_RENEW: Final = (
    f"UPDATE leases SET expires_at = {_DB_NOW} + $4 WHERE name = $1 AND holder = $2 AND token = $3 "
    f"RETURNING expires_at - {_DB_NOW}"
)
_LEASE_RELEASE: Final = "UPDATE leases SET expires_at = 0 WHERE name = $1 AND holder = $2 AND token = $3"

_OPEN_BATCH_OF: Final = (
    "EXISTS (SELECT 1 FROM batches b WHERE b.terminal_id = x.terminal_id AND b.batch_no = x.batch_no "
    "AND b.currency = x.currency AND b.done = FALSE)"
)
_PURGE_SQL: Final[dict[str, str]] = {
    "notifications": outbox.numbered(outbox.PURGE),
    "transactions": (
        "DELETE FROM transactions WHERE ctid = ANY(ARRAY(SELECT x.ctid FROM transactions x "
        f"WHERE x.received_at < $1 AND NOT {_OPEN_BATCH_OF} ORDER BY x.received_at LIMIT $2))"
    ),
    "settlements": (
        "DELETE FROM settlements WHERE id = ANY(ARRAY(SELECT x.id FROM settlements x "
        f"WHERE x.received_at < $1 AND NOT {_OPEN_BATCH_OF} ORDER BY x.received_at LIMIT $2))"
    ),
    "dead_letters": (
        "DELETE FROM dead_letters WHERE id = ANY(ARRAY("
        "SELECT id FROM dead_letters WHERE received_at < $1 ORDER BY received_at LIMIT $2))"
    ),
    "batches": (
        "DELETE FROM batches WHERE ctid = ANY(ARRAY(SELECT ctid FROM batches WHERE done = TRUE "
        "AND COALESCE(settled_at, closed_at, last_txn_at, first_approved_at, 0) < $1 LIMIT $2))"
    ),
}
_EXPIRED_INCIDENTS: Final = (
    "SELECT id FROM incidents WHERE status = 'resolved' AND resolved_at < $1 ORDER BY resolved_at LIMIT $2"
)
_TRIM_DEAD_LETTERS: Final = (
    "DELETE FROM dead_letters WHERE id <= (SELECT id FROM dead_letters ORDER BY id DESC LIMIT 1 OFFSET $1)"
)


def _cols(columns: Sequence[str]) -> str:
    return ", ".join(columns)


def _insert_sql(table: Table, types: Mapping[str, str]) -> str:
    """One INSERT for all of a table's rows, one typed array per column.

    ``WITH ORDINALITY ... ORDER BY`` applies the rows in the order they were added: an
    incident's events keep their order (their ids are generated), and an incident resolved
    in a batch frees its key before another opens on it in the same batch.
    """
    arrays = ", ".join(f"${i}::{types[c]}[]" for i, c in enumerate(table.columns, start=1))
    sql = (f"INSERT INTO {table.name} ({_cols(table.columns)}) SELECT {_cols(table.columns)} "
           f"FROM unnest({arrays}) WITH ORDINALITY AS r({_cols(table.columns)}, fw_row) ORDER BY fw_row")
    if table.conflict is OnConflict.IGNORE:
        return f"{sql} ON CONFLICT ({_cols(table.key)}) DO NOTHING"
    if table.conflict is OnConflict.UPDATE:
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in table.columns if c not in table.key)
        where = f" WHERE {table.update_if}" if table.update_if else ""
        return f"{sql} ON CONFLICT ({_cols(table.key)}) DO UPDATE SET {updates}{where}"
    return sql


async def _column_types(conn: Any) -> dict[str, dict[str, str]]:
    """table -> column -> SQL type, as the migrations created them."""
    rows = await conn.fetch(
        "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod) "
        "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "WHERE c.relname = ANY($1::text[]) AND c.relnamespace = to_regnamespace(current_schema())::oid "
        "AND a.attnum > 0 AND NOT a.attisdropped",
        [t.name for t in WRITE_ORDER],
    )
    types: dict[str, dict[str, str]] = {}
    for table, column, type_ in rows:
        types.setdefault(table, {})[column] = type_
    return types


async def _migrate(conn: Any, where: str) -> None:
    """Apply the migrations the database lacks, one transaction each; refuse a newer schema."""
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await conn.execute(SCHEMA_VERSION_DDL)
        current = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version")
        for migration in pending(migrations("postgresql"), int(current), where):
            try:
                async with _transaction(conn):
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_version (version, name, applied_at) VALUES ($1, $2, $3)",
                        migration.version, migration.name, time.time(),
                    )
            except _DATA_ERRORS as exc:
                raise StoreError(f"migration {migration.name} failed on {where}: {exc}") from exc
    finally:
        with contextlib.suppress(*_DATA_ERRORS):
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)


class PostgresStore:
    """The daemon's store in a PostgreSQL database: one writer connection and a read pool.

    Implements :class:`fleetwatch.ports.Store` exactly as :class:`SqliteStore` does.
    """

    def __init__(self, writer: Any, pool: Any, where: str, dead_letters_kept: int,  # noqa: PLR0917 - see open()
                 types: dict[str, dict[str, str]], connect: Any = None) -> None:
        """Use :meth:`open`."""
        self._connect: Any = connect
        self._lease_conn: Any = None
        self._writer: Any = writer
        self._pool: Any = pool
        self._where = where
        self._dead_letters_kept = dead_letters_kept
        self._insert = {t.name: _insert_sql(t, types[t.name]) for t in WRITE_ORDER}
        self._write_lock = asyncio.Lock()
        self._closed = False
        self._fence: int | None = None

    @classmethod
    async def open(cls, url: str, *, dead_letters_kept: int = 1000, pool_size: int = POOL_SIZE,
                   application_name: str = "fleetwatch") -> PostgresStore:
        """Connect, migrate (creating every table on an empty database), and open the read pool.

        ``application_name`` is what ``pg_stat_activity`` shows for every connection (the
        daemon puts its instance's name in it, so an operator can tell two instances apart).
        """
        if dead_letters_kept < 0:
            raise ValueError("dead_letters_kept must be >= 0")
        where = mask_url(url)
        settings = {"application_name": application_name[:63]}
        writer = pool = None
        try:
            with _translated("opening the store", where):
                writer = await asyncpg.connect(url, command_timeout=COMMAND_TIMEOUT_S, server_settings=settings)
                await _migrate(writer, where)
                types = await _column_types(writer)
                pool = await asyncpg.create_pool(url, min_size=1, max_size=pool_size,
                                                 command_timeout=COMMAND_TIMEOUT_S, server_settings=settings)
        except BaseException:
            if writer is not None:
                with contextlib.suppress(*_DATA_ERRORS):
                    await writer.close()
            raise

        def connect(timeout: float) -> Any:
            return asyncpg.connect(url, timeout=timeout, command_timeout=COMMAND_TIMEOUT_S, server_settings=settings)

        return cls(writer, pool, where, dead_letters_kept, types, connect)

    async def close(self) -> None:
        """Close the writer and the pool (waits for a write in progress); idempotent."""
        if self._closed:
            return
        async with self._write_lock:
            self._closed = True
            if self._lease_conn is not None:  # normally closed by disconnect_lease, in its own loop
                with contextlib.suppress(Exception):
                    self._lease_conn.terminate()
            with contextlib.suppress(*_DATA_ERRORS):
                await self._pool.close()
            with contextlib.suppress(*_DATA_ERRORS):
                await self._writer.close()

    @property
    def location(self) -> str:
        return self._where

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
        """Persist effects and dirty records in one transaction; the rows are taken now."""
        return self.write_prepared(prepare(effects, terminals, batches))

    def fence(self, token: int | None) -> None:
        self._fence = token

    async def write_prepared(self, prepared: PreparedWrite) -> None:
        """Commit prepared rows in one transaction: all of them or none (StoreError)."""
        tables = prepared.tables()
        if not tables:
            return
        trim = bool(prepared.dead_letters)
        async with self._write_lock:
            self._check_open()
            with _translated("store write", self._where):
                try:
                    await self._commit(tables, trim=trim)
                except asyncpg.CharacterNotInRepertoireError:
                    # A NUL character in some text (a garbled dead letter, a firmware string):
                    # the whole batch again with it replaced, rather than a daemon that stops.
                    await self._commit([(t, without_nul(rows)) for t, rows in tables], trim=trim)

    async def _commit(self, tables: list[tuple[Table, list[Row]]], *, trim: bool) -> None:
        conn = self._writer
        async with _transaction(conn):
            await self._check_fence(conn)
            for table, rows in tables:
                await conn.execute(self._insert[table.name], *zip(*rows, strict=True))
            if trim:
                if self._dead_letters_kept == 0:
                    await conn.execute("DELETE FROM dead_letters")
                else:
                    await conn.execute(_TRIM_DEAD_LETTERS, self._dead_letters_kept)

    async def _check_fence(self, conn: Any) -> None:
        if self._fence is None:
            return
        held = await conn.fetchval("SELECT token FROM leases WHERE name = $1 FOR KEY SHARE", LEASE_NAME)
        if held != self._fence:
            raise LeaseLost(f"write refused: the lease token is {held}, this instance holds {self._fence}")

    # ---- the lease (ports.Leases) ------------------------------------------------------

    async def claim(self, holder: str, lease_s: float) -> LeaseView:
        """Take the lease if it is free or expired (token + 1); otherwise report the row."""
        async def attempt(conn: Any) -> LeaseView:
            row = await conn.fetchrow(_LEASE_ROW, LEASE_NAME)
            if row is None:
                token = await conn.fetchval(_LEASE_INSERT, LEASE_NAME, holder, lease_s)
            elif row["remaining"] <= 0:
                async with _transaction(conn):
                    # FOR UPDATE waits for the old holder's write in progress (FOR KEY SHARE).
                    await conn.execute(_LEASE_LOCK, LEASE_NAME)
                    token = await conn.fetchval(_LEASE_TAKE, LEASE_NAME, holder, lease_s, row["token"])
            else:
                return LeaseView(False, row["token"], row["holder"], float(row["remaining"]))
            if token is not None:
                return LeaseView(True, int(token), holder, lease_s)
            row = await conn.fetchrow(_LEASE_ROW, LEASE_NAME)  # another instance was quicker
            return LeaseView(False, row["token"], row["holder"], float(row["remaining"]))

        return await self._on_lease_conn("claiming the lease", attempt)

    async def renew(self, holder: str, token: int, lease_s: float) -> LeaseView:
        async def attempt(conn: Any) -> LeaseView:
            remaining = await conn.fetchval(_LEASE_RENEW, LEASE_NAME, holder, token, lease_s)
            if remaining is not None:
                return LeaseView(True, token, holder, float(remaining))
            row = await conn.fetchrow(_LEASE_ROW, LEASE_NAME)
            if row is None:
                return LeaseView(False, None, None, 0.0)
            return LeaseView(False, row["token"], row["holder"], float(row["remaining"]))

        return await self._on_lease_conn("renewing the lease", attempt)

    async def release(self, holder: str, token: int) -> None:
        async def attempt(conn: Any) -> None:
            await conn.execute(_LEASE_RELEASE, LEASE_NAME, holder, token)

        await self._on_lease_conn("releasing the lease", attempt)

    async def disconnect_lease(self) -> None:
        """Close the lease's connection, from the event loop that used it (the keeper's thread)."""
        conn, self._lease_conn = self._lease_conn, None
        if conn is not None:
            with contextlib.suppress(*_DATA_ERRORS):
                await asyncio.wait_for(conn.close(), 2.0)

    async def _on_lease_conn(self, what: str, attempt: Callable[[Any], Awaitable[_T]]) -> _T:
        """Run ``attempt`` on the lease's own connection; a failed connection is dropped (the next
        call opens another), and the caller's timeout may cancel either at any point."""
        self._check_open()
        with _translated(what, self._where):
            try:
                if self._lease_conn is None or self._lease_conn.is_closed():
                    self._lease_conn = await self._connect(COMMAND_TIMEOUT_S)
                return await attempt(self._lease_conn)
            except BaseException:
                conn, self._lease_conn = self._lease_conn, None
                if conn is not None:
                    conn.terminate()  # no goodbye: it may be the network that failed
                raise

    # ---- retention ------------------------------------------------------------------

    async def delete_expired(self, kind: PurgeKind, before: float, limit: int) -> Mapping[str, int]:
        """One chunk of retention in one short transaction on a pool connection."""
        self._check_open()
        with _translated("retention", self._where):
            async with self._pool.acquire() as conn, _transaction(conn):
                await self._check_fence(conn)
                if kind != "incidents":
                    return {kind: _command_count(await conn.execute(_PURGE_SQL[kind], before, limit))}
                ids = [r[0] for r in await conn.fetch(_EXPIRED_INCIDENTS, before, limit)]
                if not ids:
                    return {"incidents": 0, "incident_events": 0, "upstream_terminals": 0}
                events = await conn.execute("DELETE FROM incident_events WHERE incident_id = ANY($1::text[])", ids)
                members = await conn.execute("DELETE FROM upstream_terminals WHERE incident_id = ANY($1::text[])",
                                             ids)
                incidents = await conn.execute("DELETE FROM incidents WHERE id = ANY($1::text[])", ids)
                return {"incidents": _command_count(incidents), "incident_events": _command_count(events),
                        "upstream_terminals": _command_count(members)}

    async def size_bytes(self) -> int:
        """The database's size as PostgreSQL counts it (tables, indexes, TOAST)."""
        return int(await self._fetchval("SELECT pg_database_size(current_database())"))

    # ---- helpers ----------------------------------------------------------------------

    async def _fetch(self, sql: str, *params: Any) -> list[Any]:
        self._check_open()
        with _translated("store read", self._where):
            rows: list[Any] = await self._pool.fetch(sql, *params)
        return rows

    async def _fetchval(self, sql: str, *params: Any) -> Any:
        self._check_open()
        with _translated("store read", self._where):
            return await self._pool.fetchval(sql, *params)

    # ---- restore side -----------------------------------------------------------------

    async def load_terminals(self) -> list[TerminalRecord]:
        """Every terminal as a list (tests and tools; the daemon streams ``terminal_chunks``)."""
        return [t async for chunk in self.terminal_chunks() for t in chunk]

    async def terminal_chunks(self) -> AsyncIterator[Sequence[TerminalRecord]]:
        """Every terminal, LOAD_CHUNK rows at a time, through a server-side cursor."""
        self._check_open()
        with _translated("store read", self._where):
            async with self._pool.acquire() as conn, _transaction(conn):
                cursor = await conn.cursor(f"SELECT {_cols(TERMINAL_COLUMNS)} FROM terminals")
                while chunk := await cursor.fetch(LOAD_CHUNK):
                    yield TerminalChunk(chunk)

    async def load_open_incidents(self) -> list[Incident]:
        rows = await self._fetch(
            f"SELECT {_cols(INCIDENT_COLUMNS)} FROM incidents WHERE status <> 'resolved' ORDER BY opened_at, id"
        )
        return [incident_of(r) for r in rows]

    async def load_open_batches(self) -> list[BatchRecord]:
        rows = await self._fetch(
            f"SELECT {_cols(BATCH_COLUMNS)} FROM batches WHERE done = FALSE ORDER BY terminal_id, batch_no, currency"
        )
        return [batch_of(r) for r in rows]

    async def load_recent_txn_keys(self, limit: int) -> list[tuple[str, str]]:
        if limit <= 0:
            return []
        rows = await self._fetch(
            "SELECT terminal_id, txn_id FROM transactions ORDER BY received_at DESC LIMIT $1", limit
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
        paging.check_status(status)
        where: list[str] = []
        params: list[Any] = []

        def param(value: Any) -> str:
            params.append(value)
            return f"${len(params)}"

        if status == "open":
            where.append("status <> 'resolved'")
        elif status != "all":
            where.append(f"status = {param(status)}")
        for column, value in zip(paging.INCIDENT_FILTERS, (kind, terminal_id, merchant_id, scope), strict=True):
            if value is not None:
                where.append(f"{column} = {param(value)}")
        if cursor is not None:
            opened_at, incident_id = paging.decode_incident_cursor(cursor)
            at = param(opened_at)
            where.append(f"opened_at <= {at} AND (opened_at < {at} OR id < {param(incident_id)})")
        sql = (f"SELECT {_cols(INCIDENT_COLUMNS)} FROM incidents{_where(where)} "
               f"ORDER BY opened_at DESC, id DESC LIMIT {param(limit + 1)}")
        rows = await self._fetch(sql, *params)
        items = [incident_of(r) for r in rows[:limit]]
        more = len(rows) > limit
        return items, (paging.incident_cursor(items[-1].opened_at, items[-1].id) if more else None)

    async def get_incident(self, incident_id: str) -> Incident | None:
        rows = await self._fetch(f"SELECT {_cols(INCIDENT_COLUMNS)} FROM incidents WHERE id = $1", incident_id)
        return incident_of(rows[0]) if rows else None

    async def incident_events(self, incident_id: str) -> list[IncidentEvent]:
        rows = await self._fetch(
            f"SELECT {_cols(EVENT_COLUMNS)} FROM incident_events WHERE incident_id = $1 ORDER BY id", incident_id
        )
        return [event_of(r) for r in rows]

    async def get_terminal(self, terminal_id: str) -> TerminalRecord | None:
        rows = await self._fetch(
            f"SELECT {_cols(TERMINAL_COLUMNS)} FROM terminals WHERE terminal_id = $1", terminal_id
        )
        return terminal_of(rows[0]) if rows else None

    async def list_terminals(
        self, *, merchant_id: str | None = None, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[TerminalRecord], str | None]:
        paging.check_limit(limit)
        where: list[str] = []
        params: list[Any] = []
        if merchant_id is not None:
            params.append(merchant_id)
            where.append(f"merchant_id = ${len(params)}")
        if cursor is not None:
            params.append(paging.decode_terminal_cursor(cursor))
            where.append(f"terminal_id > ${len(params)}")
        params.append(limit + 1)
        sql = (f"SELECT {_cols(TERMINAL_COLUMNS)} FROM terminals{_where(where)} "
               f"ORDER BY terminal_id LIMIT ${len(params)}")
        rows = await self._fetch(sql, *params)
        items = [terminal_of(r) for r in rows[:limit]]
        more = len(rows) > limit
        return items, (paging.terminal_cursor(items[-1].terminal_id) if more else None)

    async def count_terminals(self) -> int:
        return int(await self._fetchval("SELECT COUNT(*) FROM terminals"))

    async def recent_dead_letters(self, limit: int) -> list[DeadLetter]:
        if limit <= 0:
            return []
        rows = await self._fetch(
            f"SELECT {_cols(DEAD_LETTER_COLUMNS)} FROM dead_letters ORDER BY id DESC LIMIT $1", limit
        )
        return [dead_letter_of(r) for r in rows]

    async def batches_for(
        self, merchant_id: str, business_date: str | None = None, terminal_id: str | None = None
    ) -> list[BatchRecord]:
        where = ["merchant_id = $1"]
        params: list[Any] = [merchant_id]
        if business_date is not None:
            params.append(business_date)
            where.append(f"business_day = ${len(params)}")
        if terminal_id is not None:
            params.append(terminal_id)
            where.append(f"terminal_id = ${len(params)}")
        rows = await self._fetch(
            f"SELECT {_cols(BATCH_COLUMNS)} FROM batches{_where(where)} ORDER BY terminal_id, batch_no, currency",
            *params,
        )
        return [batch_of(r) for r in rows]


    # ---- merchant notices and generated secrets (migration 0002) -------------------------

    async def load_open_upstream_members(self) -> dict[str, list[tuple[str, str | None]]]:
        rows = await self._fetch(
            "SELECT u.incident_id, u.terminal_id, u.merchant_id FROM upstream_terminals u "
            "JOIN incidents i ON i.id = u.incident_id WHERE i.status <> 'resolved' "
            "ORDER BY u.incident_id, u.terminal_id"
        )
        out: dict[str, list[tuple[str, str | None]]] = {}
        for incident_id, terminal_id, merchant_id in rows:
            out.setdefault(incident_id, []).append((terminal_id, merchant_id))
        return out

    async def load_terminal_notices(self, *, shown_only: bool = False) -> list[TerminalNoticeWrite]:
        where, params = ((" WHERE payload IS NOT NULL AND strpos(payload, $1) = 0", (SHOWN_NOTICE,))
                         if shown_only else ("", ()))
        rows = await self._fetch(
            f"SELECT {_cols(TERMINAL_NOTICE_COLUMNS)} FROM terminal_notices{where} ORDER BY terminal_id", *params
        )
        return [terminal_notice_of(r) for r in rows]

    async def load_acquirer_statuses(self) -> list[AcquirerStatus]:
        rows = await self._fetch(f"SELECT {_cols(STATUS_COLUMNS)} FROM terminal_statuses ORDER BY terminal_id")
        return [status_of(r) for r in rows]

    async def load_merchant_hours(self) -> list[MerchantHoursRecord]:
        rows = await self._fetch(f"SELECT {_cols(HOURS_COLUMNS)} FROM merchant_hours ORDER BY merchant_id")
        return [hours_of(r) for r in rows]

    async def merchant_notice_incidents(
        self, merchant_id: str, resolved_since: float,
    ) -> tuple[list[Incident], dict[str, set[str]]]:
        """As :meth:`SqliteStore.merchant_notice_incidents`: incidents, ancestors and upstream members."""
        rows = await self._fetch(
            f"SELECT {_cols(INCIDENT_COLUMNS)} FROM incidents WHERE merchant_id = $1 "
            "AND (status <> 'resolved' OR resolved_at >= $2)", merchant_id, resolved_since,
        )
        found = {i.id: i for i in map(incident_of, rows)}
        member_rows = await self._fetch(
            "SELECT u.incident_id, u.terminal_id FROM upstream_terminals u JOIN incidents i "
            "ON i.id = u.incident_id WHERE u.merchant_id = $1 AND (i.status <> 'resolved' OR i.resolved_at >= $2)",
            merchant_id, resolved_since,
        )
        members: dict[str, set[str]] = {}
        for incident_id, terminal_id in member_rows:
            members.setdefault(incident_id, set()).add(terminal_id)
        wanted = set(members) - set(found)
        for _ in range(8):  # ancestors: terminal -> merchant -> group -> fleet, and previous_id
            if not wanted:
                break
            rows = await self._fetch(
                f"SELECT {_cols(INCIDENT_COLUMNS)} FROM incidents WHERE id = ANY($1::text[])", sorted(wanted)
            )
            for inc in map(incident_of, rows):
                found[inc.id] = inc
            wanted = {
                ref for inc in found.values() for ref in (inc.parent_id, inc.previous_id)
                if ref is not None and ref not in found
            }
        return list(found.values()), members

    async def secret(self, name: str, candidate: str) -> str:
        """The stored secret ``name``; stores ``candidate`` first if there is none (shared by all instances)."""
        async with self._write_lock:
            self._check_open()
            with _translated("store write", self._where):
                async with _transaction(self._writer):
                    await self._writer.execute(
                        "INSERT INTO secrets (name, value, created_at) VALUES ($1, $2, $3) "
                        "ON CONFLICT (name) DO NOTHING", name, candidate, time.time(),
                    )
                    value = await self._writer.fetchval("SELECT value FROM secrets WHERE name = $1", name)
        return str(value)

    # ---- the notifications' outbox (fleetwatch/storage/outbox.py) --------------------

    async def due_notifications(self, now: float, limit: int, *, margin_s: float = 0.0) -> list[NotificationRecord]:
        return [notification_of(r) for r in await self._fetch(_DUE, now - margin_s, now, limit)]

    async def record_deliveries(self, results: Sequence[DeliveryResult]) -> None:
        if not results:
            return
        params = [(r.status, r.attempts, r.next_at, r.last_error, r.sent_at, r.event_id) for r in results]
        self._check_open()
        with _translated("store write", self._where):
            async with self._pool.acquire() as conn, _transaction(conn):
                await self._check_fence(conn)
                await conn.executemany(_RECORD, params)

    async def load_notification_state(self) -> list[NotificationRecord]:
        return [notification_of(r) for r in await self._fetch(_STATE)]

    async def list_notifications(
        self, *, status: str = "all", merchant_id: str | None = None, limit: int = 100, cursor: str | None = None,
    ) -> tuple[list[NotificationRecord], str | None]:
        sql, params = outbox.list_query(status, merchant_id, limit, cursor)
        rows = [notification_of(r) for r in await self._fetch(outbox.numbered(sql), *params)]
        more = len(rows) > limit
        return rows[:limit], (outbox.cursor_of(rows[limit - 1].seq) if more else None)

    async def count_pending_notifications(self) -> int:
        return int(await self._fetchval(outbox.COUNT_PENDING))


_DUE: Final = outbox.numbered(outbox.DUE)
_RECORD: Final = outbox.numbered(outbox.RECORD)
_STATE: Final = outbox.numbered(outbox.STATE)


def _where(terms: Sequence[str]) -> str:
    return f" WHERE {' AND '.join(terms)}" if terms else ""
