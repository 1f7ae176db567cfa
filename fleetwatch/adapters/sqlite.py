"""The SQLite store: durable home of everything the engine decides, and the API's reads.

Why it looks the way it does:

- **One writer, one transaction per batch.** The pipeline hands the effects of many
  messages to :meth:`SqliteStore.write`; they commit together or not at all, and QoS 1
  messages are acknowledged only after that commit (docs/ARCHITECTURE.md). Any SQLite
  failure becomes :class:`~fleetwatch.errors.StoreError`: the daemon exits, systemd
  restarts it, the broker redelivers what was never acknowledged.
- **Rows are snapshots taken on the caller's thread.** The engine keeps mutating its
  ``Incident``/``TerminalRecord``/``BatchRecord`` objects in the event loop while aiosqlite
  runs SQL in its own thread, so :func:`prepare` turns effects into plain tuples
  synchronously, and ``write()`` does that at call time, before it returns an awaitable.
  SQLite's thread never sees one of our objects.
- **One daemon per database.** ``open`` takes an exclusive lock on ``PATH.lock`` (not on
  the database file: closing any descriptor of it would drop SQLite's own locks), so a
  second daemon started on the same store by mistake is refused with a StoreError
  instead of writing beside the first. The kernel releases it when the process dies.
- **Readers never wait for the writer.** WAL mode and a second, read-only connection
  serve the HTTP API from the last committed state while a write is in progress.
- **Plain SQL.** Migrations are numbered files (``migrations/NNNN_name.sql``) recorded in
  ``schema_version``; the schema avoids SQLite-only constructs beyond the rowid primary
  key, so a PostgreSQL store can follow with the same tables and statements.
- **Positional rows.** Column order follows the dataclass field order in
  ``core/model.py``; records are built with ``Record(*row)``, which is what makes loading a
  million terminals take seconds rather than minutes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import gc
import json
import re
import sqlite3
import time
from collections.abc import Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from importlib import resources
from operator import attrgetter
from pathlib import Path
from typing import Any, Final, assert_never

import aiosqlite
import msgspec

from fleetwatch.core.model import (
    AcquirerStatus,
    AcquirerStatusWrite,
    BatchRecord,
    DeadLetter,
    Effect,
    Incident,
    IncidentEvent,
    IncidentWrite,
    MerchantHoursRecord,
    MerchantHoursWrite,
    SettlementWrite,
    TerminalNoticeWrite,
    TerminalRecord,
    TerminalWrite,
    TxnRecord,
    TxnWrite,
    UpstreamMembersWrite,
    group_json,
)
from fleetwatch.errors import BadRequest, StoreError

__all__ = [
    "INCIDENT_STATUS_FILTERS",
    "MAX_PAGE",
    "Migration",
    "PreparedWrite",
    "SqliteStore",
    "business_day",
    "migrations",
    "prepare",
    "stored_secret",
]

Row = tuple[Any, ...]

MAX_PAGE: Final = 1000
"""Largest page ``list_incidents``/``list_terminals`` serve; larger limits are a caller bug."""

INCIDENT_STATUS_FILTERS: Final = ("open", "acknowledged", "resolved", "all")
"""``status`` values of ``list_incidents``; ``open`` includes acknowledged (CONTRACT.md §3)."""

BUSY_TIMEOUT_MS: Final = 5000
"""How long a statement waits for a lock (a checkpoint, a second process) before failing."""

WAL_SIZE_LIMIT: Final = 64 * 1024 * 1024
"""Bytes the WAL file is truncated to after a checkpoint."""

LOAD_CHUNK: Final = 20_000
"""Rows fetched per round trip to aiosqlite's thread when loading whole tables."""

_MIGRATION_FILE: Final = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


# ---- columns: field order of the model dataclasses ---------------------------------

def _names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


TERMINAL_COLUMNS: Final = _names(TerminalRecord)
TXN_COLUMNS: Final = _names(TxnRecord)
BATCH_COLUMNS: Final = _names(BatchRecord)
BATCH_ROW_COLUMNS: Final = (*BATCH_COLUMNS, "business_day")
_INCIDENT_RENAMES: Final = {"group": "group_json", "evidence": "evidence_json"}
INCIDENT_FIELDS: Final = _names(Incident)
INCIDENT_COLUMNS: Final = tuple(_INCIDENT_RENAMES.get(n, n) for n in INCIDENT_FIELDS)
SETTLEMENT_COLUMNS: Final = _names(SettlementWrite)
EVENT_COLUMNS: Final = ("incident_id", "at", "type", "detail_json")
DEAD_LETTER_COLUMNS: Final = ("topic", "reason", "detail", "received_at", "payload_excerpt")

_terminal_values = attrgetter(*TERMINAL_COLUMNS)
_txn_values = attrgetter(*TXN_COLUMNS)
_batch_values = attrgetter(*BATCH_COLUMNS)
_incident_values = attrgetter(*INCIDENT_FIELDS)
_settlement_values = attrgetter(*SETTLEMENT_COLUMNS)

_GROUP_IX: Final = INCIDENT_FIELDS.index("group")
_EVIDENCE_IX: Final = INCIDENT_FIELDS.index("evidence")
_SUPPRESSED_IX: Final = INCIDENT_FIELDS.index("suppressed")
_WATCH_IX: Final = BATCH_COLUMNS.index("watch")
_DONE_IX: Final = BATCH_COLUMNS.index("done")


_ROWS_JSON: Final = msgspec.json.Encoder()


def _cols(columns: Sequence[str]) -> str:
    return ", ".join(columns)


def _insert_sql(table: str, columns: Sequence[str]) -> str:
    """A bulk INSERT whose one parameter is a JSON array of rows (each an array of values).

    Not ``executemany``: that binds row by row, and every row re-takes the GIL from the
    event loop thread, which holds it while it decodes messages; under load 5,000
    terminal rows took 11 s instead of 0.1 s (a GIL convoy). One statement fed from
    ``json_each`` runs the whole batch inside SQLite with the GIL released once.
    ``WHERE true`` keeps SQLite's parser from reading an upsert's ON CONFLICT as a join.
    """
    picks = ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(columns)))
    return f"INSERT INTO {table} ({_cols(columns)}) SELECT {picks} FROM json_each(?) WHERE true"


def _upsert_sql(table: str, columns: Sequence[str], key: Sequence[str]) -> str:
    """INSERT ... ON CONFLICT (key) DO UPDATE: the same text works on PostgreSQL."""
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    return f"{_insert_sql(table, columns)} ON CONFLICT ({_cols(key)}) DO UPDATE SET {updates}"


_UPSERT_INCIDENT: Final = _upsert_sql("incidents", INCIDENT_COLUMNS, ("id",))
_INSERT_EVENT: Final = _insert_sql("incident_events", EVENT_COLUMNS)
# ON CONFLICT DO NOTHING rather than INSERT OR IGNORE: only a duplicate key is ignored
# (a QoS 1 redelivery), any other constraint failure still fails the batch; and it is
# PostgreSQL's spelling too.
_INSERT_TXN: Final = (
    f"{_insert_sql('transactions', TXN_COLUMNS)} ON CONFLICT (terminal_id, txn_id) DO NOTHING"
)
_INSERT_SETTLEMENT: Final = _insert_sql("settlements", SETTLEMENT_COLUMNS)
_INSERT_DEAD_LETTER: Final = _insert_sql("dead_letters", DEAD_LETTER_COLUMNS)
_UPSERT_TERMINAL: Final = _upsert_sql("terminals", TERMINAL_COLUMNS, ("terminal_id",))
_UPSERT_BATCH: Final = _upsert_sql("batches", BATCH_ROW_COLUMNS, ("terminal_id", "batch_no", "currency"))
# Merchant notices (migration 0002).
_INSERT_UPSTREAM_MEMBER: Final = (
    f"{_insert_sql('upstream_terminals', ('incident_id', 'terminal_id', 'merchant_id', 'added_at'))} "
    "ON CONFLICT (incident_id, terminal_id) DO NOTHING"
)
_UPSERT_TERMINAL_NOTICE: Final = _upsert_sql(
    "terminal_notices", ("terminal_id", "merchant_id", "payload", "published_at"), ("terminal_id",)
)
# The terminal lifecycle (migration 0003).
STATUS_COLUMNS: Final = ("terminal_id", "acquirer_status", "reason", "note", "since", "ts_ms", "merchant_id",
                         "received_at")
HOURS_COLUMNS: Final = ("merchant_id", "learned", "learn_days", "day", "today", "configured")
_UPSERT_STATUS: Final = _upsert_sql("terminal_statuses", STATUS_COLUMNS, ("terminal_id",))
_UPSERT_HOURS: Final = _upsert_sql("merchant_hours", HOURS_COLUMNS, ("merchant_id",))
_TRIM_DEAD_LETTERS: Final = (
    "DELETE FROM dead_letters WHERE id <= (SELECT id FROM dead_letters ORDER BY id DESC LIMIT 1 OFFSET ?)"
)


# ---- effects -> rows (synchronous, on the caller's thread) --------------------------

def _json(value: Any) -> str:
    """Compact JSON; ``default=str`` so an exotic evidence value never fails a write."""
    return json.dumps(value, separators=(",", ":"), default=str)


def business_day(batch: BatchRecord) -> str | None:
    """The business date a batch belongs to in the reconciliation view (``YYYY-MM-DD``).

    The acquirer's ``business_date`` once the batch is settled (a business day is not a
    calendar day); before that the UTC date of its first approved transaction by the
    terminal's clock, or of its BatchClose when it had none; None when nothing dates it
    (or the terminal clock is absurd).
    """
    if batch.business_date is not None:
        return batch.business_date
    ts_ms = batch.first_approved_ts_ms if batch.first_approved_ts_ms is not None else batch.close_ts_ms
    if ts_ms is None:
        return None
    try:
        return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).date().isoformat()
    except (OverflowError, OSError, ValueError):
        return None


def _incident_row(incident: Incident) -> Row:
    values = list(_incident_values(incident))
    values[_GROUP_IX] = group_json(incident.group)
    values[_EVIDENCE_IX] = _json(incident.evidence)
    return tuple(values)


def _event_row(event: IncidentEvent) -> Row:
    return (event.incident_id, event.at, event.type, _json(event.detail))


def _dead_letter_row(dl: DeadLetter) -> Row:
    return (dl.topic, dl.reason, dl.detail, dl.received_at, dl.payload_excerpt)


def _status_row(s: AcquirerStatus) -> Row:
    return (s.terminal_id, s.status, s.reason, s.note, s.since, s.ts_ms, s.merchant_id, s.received_at)


def _hours_row(h: MerchantHoursRecord) -> Row:
    """The packed history does not fit a 64-bit integer: it is stored as hex text."""
    return (h.merchant_id, None if h.learned is None else format(h.learned, "x"), h.learn_days, h.day, h.today,
            None if h.configured is None else _json(h.configured))


def _status(row: Row) -> AcquirerStatus:
    return AcquirerStatus(*row)


def _hours(row: Row) -> MerchantHoursRecord:
    merchant_id, learned, learn_days, day, today, configured = row
    return MerchantHoursRecord(merchant_id, None if learned is None else int(learned, 16), learn_days, day, today,
                               None if configured is None else json.loads(configured))


def _batch_row(batch: BatchRecord) -> Row:
    values: Row = _batch_values(batch)
    return (*values, business_day(batch))


@dataclass(slots=True)
class PreparedWrite:
    """Row tuples for one transaction, detached from the engine's live objects.

    Build it with :func:`prepare` (or :meth:`add`, to accumulate effects as they are
    produced) and commit it with :meth:`SqliteStore.write_prepared`. Rows are applied in
    the order added, so a later snapshot of an incident or terminal wins.
    """

    incidents: list[Row] = field(default_factory=list)
    events: list[Row] = field(default_factory=list)
    txns: list[Row] = field(default_factory=list)
    settlements: list[Row] = field(default_factory=list)
    dead_letters: list[Row] = field(default_factory=list)
    terminals: list[Row] = field(default_factory=list)
    batches: list[Row] = field(default_factory=list)
    upstream_members: list[Row] = field(default_factory=list)
    terminal_notices: list[Row] = field(default_factory=list)
    statuses: list[Row] = field(default_factory=list)
    hours: list[Row] = field(default_factory=list)

    def add(
        self,
        effects: Iterable[Effect],
        terminals: Iterable[TerminalRecord] = (),
        batches: Iterable[BatchRecord] = (),
    ) -> PreparedWrite:
        """Snapshot ``effects`` and dirty records into rows now; returns self."""
        for effect in effects:
            if isinstance(effect, TxnWrite):
                self.txns.append(_txn_values(effect.txn))
            elif isinstance(effect, IncidentWrite):
                self.incidents.append(_incident_row(effect.incident))
                self.events.append(_event_row(effect.event))
            elif isinstance(effect, SettlementWrite):
                self.settlements.append(_settlement_values(effect))
            elif isinstance(effect, DeadLetter):
                self.dead_letters.append(_dead_letter_row(effect))
            elif isinstance(effect, TerminalWrite):
                self.terminals.append(_terminal_values(effect.record))
            elif isinstance(effect, UpstreamMembersWrite):
                self.upstream_members.extend(
                    (effect.incident_id, tid, mid, effect.at) for tid, mid in effect.members
                )
            elif isinstance(effect, TerminalNoticeWrite):
                self.terminal_notices.append((effect.terminal_id, effect.merchant_id, effect.payload, effect.at))
            elif isinstance(effect, AcquirerStatusWrite):
                self.statuses.append(_status_row(effect.status))
            elif isinstance(effect, MerchantHoursWrite):
                self.hours.append(_hours_row(effect.record))
            else:
                assert_never(effect)
        self.terminals.extend(map(_terminal_values, terminals))
        self.batches.extend(map(_batch_row, batches))
        return self

    @property
    def row_count(self) -> int:
        """Rows this write inserts or updates (for metrics and the bench)."""
        return sum(len(rows) for _, rows in self.statements())

    def statements(self) -> list[tuple[str, list[Row]]]:
        """(SQL, rows) pairs in execution order; incidents precede their events (foreign key)."""
        pairs = [
            (_UPSERT_INCIDENT, self.incidents),
            (_INSERT_EVENT, self.events),
            (_INSERT_TXN, self.txns),
            (_INSERT_SETTLEMENT, self.settlements),
            (_INSERT_DEAD_LETTER, self.dead_letters),
            (_UPSERT_TERMINAL, self.terminals),
            (_UPSERT_BATCH, self.batches),
            (_INSERT_UPSTREAM_MEMBER, self.upstream_members),
            (_UPSERT_TERMINAL_NOTICE, self.terminal_notices),
            (_UPSERT_STATUS, self.statuses),
            (_UPSERT_HOURS, self.hours),
        ]
        return [(sql, rows) for sql, rows in pairs if rows]


def prepare(
    effects: Iterable[Effect],
    terminals: Iterable[TerminalRecord] = (),
    batches: Iterable[BatchRecord] = (),
) -> PreparedWrite:
    """Snapshot effects and dirty records into rows, synchronously (see module docstring)."""
    return PreparedWrite().add(effects, terminals, batches)


# ---- rows -> records ----------------------------------------------------------------

def _terminal(row: Row) -> TerminalRecord:
    """Positional build; SQLite hands BOOLEAN columns back as 0/1, so those are fixed up."""
    rec = TerminalRecord(*row)
    if rec.charging is not None:
        rec.charging = bool(rec.charging)
    rec.reader_fault = bool(rec.reader_fault)
    rec.tamper = bool(rec.tamper)
    return rec


def _batch(row: Row) -> BatchRecord:
    values = list(row)
    values[_WATCH_IX] = bool(values[_WATCH_IX])
    values[_DONE_IX] = bool(values[_DONE_IX])
    return BatchRecord(*values)


def _incident(row: Row) -> Incident:
    values = list(row)
    group = values[_GROUP_IX]
    values[_GROUP_IX] = None if group is None else json.loads(group)
    values[_EVIDENCE_IX] = json.loads(values[_EVIDENCE_IX])
    values[_SUPPRESSED_IX] = bool(values[_SUPPRESSED_IX])
    return Incident(*values)


def _event(row: Row) -> IncidentEvent:
    incident_id, at, type_, detail = row
    return IncidentEvent(incident_id=incident_id, at=at, type=type_, detail=json.loads(detail))


def _dead_letter(row: Row) -> DeadLetter:
    topic, reason, detail, received_at, excerpt = row
    return DeadLetter(
        topic=topic, reason=reason, detail=detail, received_at=received_at, payload_excerpt=excerpt
    )


# ---- cursors ------------------------------------------------------------------------

def _encode_cursor(payload: dict[str, Any]) -> str:
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _decode_cursor(cursor: str) -> dict[str, Any]:
    """Opaque to clients; anything we did not produce is a BadRequest (HTTP 400)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        payload = json.loads(raw)
    except ValueError as exc:  # binascii.Error, JSONDecodeError, UnicodeDecodeError, non-ASCII
        raise BadRequest("invalid cursor") from exc
    if not isinstance(payload, dict):
        raise BadRequest("invalid cursor")
    return payload


def _incident_cursor(opened_at: float, incident_id: str) -> str:
    return _encode_cursor({"o": opened_at, "i": incident_id})


def _decode_incident_cursor(cursor: str) -> tuple[float, str]:
    payload = _decode_cursor(cursor)
    opened_at, incident_id = payload.get("o"), payload.get("i")
    if (
        not isinstance(opened_at, int | float)
        or isinstance(opened_at, bool)
        or not isinstance(incident_id, str)
        or set(payload) != {"o", "i"}
    ):
        raise BadRequest("invalid cursor")
    return float(opened_at), incident_id


def _decode_terminal_cursor(cursor: str) -> str:
    payload = _decode_cursor(cursor)
    terminal_id = payload.get("t")
    if not isinstance(terminal_id, str) or set(payload) != {"t"}:
        raise BadRequest("invalid cursor")
    return terminal_id


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_PAGE:
        raise BadRequest(f"limit must be between 1 and {MAX_PAGE}")


# ---- migrations ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """The migration files shipped in the package, in order; numbering must have no gaps."""
    folder = resources.files("fleetwatch.adapters").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), entry.name, entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise StoreError(f"migration files are not numbered 0001.. without gaps: {[m.name for m in found]}")
    return found


def _migration_script(migration: Migration) -> str:
    """One migration and its schema_version row, in one transaction."""
    name = migration.name.replace("'", "''")
    return (
        f"BEGIN IMMEDIATE;\n{migration.sql}\n;\n"
        f"INSERT INTO schema_version (version, name, applied_at) "
        f"VALUES ({migration.version}, '{name}', {time.time()!r});\n"
        "COMMIT;\n"
    )


_SCHEMA_VERSION_DDL: Final = (
    "CREATE TABLE IF NOT EXISTS schema_version ("
    "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
)


async def _schema_version(conn: Any) -> int:
    rows = await conn.execute_fetchall("SELECT MAX(version) FROM schema_version")
    version = next(iter(rows))[0]
    return int(version) if version is not None else 0


async def _migrate(conn: Any, path: str) -> None:
    """Apply the migrations the database lacks; refuse one written by newer code."""
    await conn.execute(_SCHEMA_VERSION_DDL)
    known = migrations()
    current = await _schema_version(conn)
    newest = known[-1].version if known else 0
    if current > newest:
        raise StoreError(
            f"{path} has schema version {current}, newer than this fleetwatch knows ({newest}); "
            "run the newer fleetwatch or restore a backup"
        )
    for migration in known[current:]:
        try:
            await conn.executescript(_migration_script(migration))
        except sqlite3.Error as exc:
            await _rollback_quietly(conn)
            raise StoreError(f"migration {migration.name} failed on {path}: {exc}") from exc


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while building a million records: the objects are all live,
    yet each allocation burst triggers a full collection that walks every one of them
    (measured: 8 s -> 3 s for 1,000,000 terminals). The records hold no cycles."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


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


# ---- the store ----------------------------------------------------------------------

class SqliteStore:
    """The daemon's store: one write connection (the writer task) and one read connection.

    ``write``/``write_prepared`` and the ``load_*`` methods belong to the pipeline; the
    ``list_*``/``get_*`` methods serve the HTTP API from committed data.
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

    async def write_prepared(self, prepared: PreparedWrite) -> None:
        """Commit prepared rows in one transaction: all of them or none (StoreError).

        Incidents upsert by id (+ one event row per IncidentWrite); transactions insert
        once per (terminal_id, txn_id); terminals and batches upsert; dead letters insert
        and are trimmed to the newest ``dead_letters_kept``.

        Don't cancel a write to abandon it: a cancelled write rolls back if it can, but
        once COMMIT has been handed to SQLite's thread it completes anyway.
        """
        statements = prepared.statements()
        if not statements:
            return
        async with self._write_lock:
            self._check_open()
            conn = self._writer
            try:
                await conn.execute("BEGIN IMMEDIATE")
                for sql, rows in statements:
                    await conn.execute(sql, (_ROWS_JSON.encode(rows).decode(),))
                if prepared.dead_letters:
                    await self._trim_dead_letters()
                await conn.execute("COMMIT")
            except BaseException as exc:
                await _rollback_quietly(conn)
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"store write failed on {self._path}: {exc}") from exc
                raise

    async def _trim_dead_letters(self) -> None:
        if self._dead_letters_kept == 0:
            await self._writer.execute("DELETE FROM dead_letters")
        else:
            await self._writer.execute(_TRIM_DEAD_LETTERS, (self._dead_letters_kept,))

    # ---- restore side -----------------------------------------------------------------

    async def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self._check_open()
        try:
            rows = await self._reader.execute_fetchall(sql, params)
        except sqlite3.Error as exc:
            raise StoreError(f"store read failed on {self._path}: {exc}") from exc
        return list(rows)

    async def load_terminals(self) -> list[TerminalRecord]:
        """Every terminal as a list (tests and tools; the daemon streams ``iter_terminals``)."""
        self._check_open()
        return list(self.iter_terminals())

    def iter_terminals(self) -> Iterator[TerminalRecord]:
        """Every terminal, streamed LOAD_CHUNK rows at a time, for the start-up restore.

        Synchronous on purpose, on its own read-only connection: at start the event loop
        has nothing else to do, and streaming lets the engine turn each chunk into its
        compact state while only one chunk of records exists, so a million-terminal
        restore neither builds a million transient records nor leaves their memory behind.
        The cyclic GC is paused meanwhile (see ``_gc_paused``).
        """
        self._check_open()
        try:
            conn = sqlite3.connect(f"file:{self._path}?mode=ro", uri=True)
            conn.execute("PRAGMA mmap_size = 4294967296")  # read pages straight from the OS cache
        except sqlite3.Error as exc:
            raise StoreError(f"store read failed on {self._path}: {exc}") from exc
        try:
            with _gc_paused():
                cursor = conn.execute(f"SELECT {_cols(TERMINAL_COLUMNS)} FROM terminals")
                while chunk := cursor.fetchmany(LOAD_CHUNK):
                    yield from map(_terminal, chunk)
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
        return [_incident(r) for r in rows]

    async def load_open_batches(self) -> list[BatchRecord]:
        """Batches not yet done (still reconciling), by (terminal_id, batch_no, currency)."""
        rows = await self._fetchall(
            f"SELECT {_cols(BATCH_COLUMNS)} FROM batches "
            "WHERE done = FALSE ORDER BY terminal_id, batch_no, currency"
        )
        return [_batch(r) for r in rows]

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
        """One page of incidents, newest first by (opened_at, id), and the next page's cursor.

        ``status``: open (includes acknowledged) | acknowledged | resolved | all. Keyset
        pagination: a page is stable under inserts of newer incidents. BadRequest for an
        unknown status, a limit outside 1..MAX_PAGE or a cursor we did not issue.
        """
        _check_limit(limit)
        where, params = _status_filter(status)
        for column, value in (
            ("kind", kind), ("terminal_id", terminal_id), ("merchant_id", merchant_id), ("scope", scope),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if cursor is not None:
            opened_at, incident_id = _decode_incident_cursor(cursor)
            where.append("opened_at <= ? AND (opened_at < ? OR id < ?)")
            params += [opened_at, opened_at, incident_id]
        sql = (
            f"SELECT {_cols(INCIDENT_COLUMNS)} FROM incidents{_where(where)} "
            "ORDER BY opened_at DESC, id DESC LIMIT ?"
        )
        rows = await self._fetchall(sql, [*params, limit + 1])
        items = [_incident(r) for r in rows[:limit]]
        more = len(rows) > limit
        return items, (_incident_cursor(items[-1].opened_at, items[-1].id) if more else None)

    async def get_incident(self, incident_id: str) -> Incident | None:
        rows = await self._fetchall(
            f"SELECT {_cols(INCIDENT_COLUMNS)} FROM incidents WHERE id = ?", (incident_id,)
        )
        return _incident(rows[0]) if rows else None

    async def incident_events(self, incident_id: str) -> list[IncidentEvent]:
        """An incident's audit trail in the order it was written."""
        rows = await self._fetchall(
            f"SELECT {_cols(EVENT_COLUMNS)} FROM incident_events WHERE incident_id = ? ORDER BY id",
            (incident_id,),
        )
        return [_event(r) for r in rows]

    async def get_terminal(self, terminal_id: str) -> TerminalRecord | None:
        rows = await self._fetchall(
            f"SELECT {_cols(TERMINAL_COLUMNS)} FROM terminals WHERE terminal_id = ?", (terminal_id,)
        )
        return _terminal(rows[0]) if rows else None

    async def list_terminals(
        self, *, merchant_id: str | None = None, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[TerminalRecord], str | None]:
        """One page of terminals in terminal_id order, and the next page's cursor."""
        _check_limit(limit)
        where: list[str] = []
        params: list[Any] = []
        if merchant_id is not None:
            where.append("merchant_id = ?")
            params.append(merchant_id)
        if cursor is not None:
            where.append("terminal_id > ?")
            params.append(_decode_terminal_cursor(cursor))
        sql = f"SELECT {_cols(TERMINAL_COLUMNS)} FROM terminals{_where(where)} ORDER BY terminal_id LIMIT ?"
        rows = await self._fetchall(sql, [*params, limit + 1])
        items = [_terminal(r) for r in rows[:limit]]
        more = len(rows) > limit
        return items, (_encode_cursor({"t": items[-1].terminal_id}) if more else None)

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
        return [_dead_letter(r) for r in rows]

    async def batches_for(
        self, merchant_id: str, business_date: str | None = None, terminal_id: str | None = None
    ) -> list[BatchRecord]:
        """A merchant's batches for the reconciliation view, by (terminal_id, batch_no, currency).

        ``business_date`` (``YYYY-MM-DD``) matches :func:`business_day`: the settlement's
        business date when settled, else the UTC date of the first approved transaction
        (terminal clock), else of the BatchClose.
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
        return [_batch(r) for r in rows]


    # ---- merchant notices and generated secrets (migration 0002) -------------------------

    async def load_open_upstream_members(self) -> dict[str, list[tuple[str, str | None]]]:
        """(terminal_id, merchant_id) each open upstream incident is built on (for the restore)."""
        rows = await self._fetchall(
            "SELECT u.incident_id, u.terminal_id, u.merchant_id FROM upstream_terminals u "
            "JOIN incidents i ON i.id = u.incident_id WHERE i.status <> 'resolved' ORDER BY u.incident_id"
        )
        out: dict[str, list[tuple[str, str | None]]] = {}
        for incident_id, terminal_id, merchant_id in rows:
            out.setdefault(incident_id, []).append((terminal_id, merchant_id))
        return out

    async def load_terminal_notices(self, *, shown_only: bool = False) -> list[TerminalNoticeWrite]:
        """What the broker last acknowledged per terminal (payload None: cleared).

        ``shown_only``: only screens with something on them (a screen given ``items: []``
        looks like one never given anything), so a restart does not load a row for every
        terminal that ever had a notice.
        """
        where = " WHERE payload IS NOT NULL AND payload NOT LIKE '%\"items\":[]%'" if shown_only else ""
        rows = await self._fetchall(
            f"SELECT terminal_id, merchant_id, payload, published_at FROM terminal_notices{where} ORDER BY terminal_id"
        )
        return [TerminalNoticeWrite(*r) for r in rows]

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
        found = {i.id: i for i in map(_incident, rows)}
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
            marks = ", ".join("?" * len(wanted))
            rows = await self._fetchall(
                f"SELECT {_cols(INCIDENT_COLUMNS)} FROM incidents WHERE id IN ({marks})", sorted(wanted)
            )
            for inc in map(_incident, rows):
                found[inc.id] = inc
            wanted = {
                ref for inc in found.values() for ref in (inc.parent_id, inc.previous_id)
                if ref is not None and ref not in found
            }
        return list(found.values()), members

    # ---- the terminal lifecycle (migration 0003) ------------------------------------------

    async def load_acquirer_statuses(self) -> list[AcquirerStatus]:
        """Every acquirer status kept, applied or waiting for its terminal, by terminal_id."""
        rows = await self._fetchall(f"SELECT {_cols(STATUS_COLUMNS)} FROM terminal_statuses ORDER BY terminal_id")
        return [_status(r) for r in rows]

    async def load_merchant_hours(self) -> list[MerchantHoursRecord]:
        """Every merchant's learned and configured hours, by merchant_id."""
        rows = await self._fetchall(f"SELECT {_cols(HOURS_COLUMNS)} FROM merchant_hours ORDER BY merchant_id")
        return [_hours(r) for r in rows]

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


def _where(terms: Sequence[str]) -> str:
    return f" WHERE {' AND '.join(terms)}" if terms else ""


def _status_filter(status: str) -> tuple[list[str], list[Any]]:
    """The WHERE term for a status filter; ``open`` is spelled like the partial indexes."""
    if status == "open":
        return ["status <> 'resolved'"], []
    if status in ("acknowledged", "resolved"):
        return ["status = ?"], [status]
    if status == "all":
        return [], []
    raise BadRequest(f"status must be one of {', '.join(INCIDENT_STATUS_FILTERS)}")
