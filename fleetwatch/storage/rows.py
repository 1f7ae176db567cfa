"""Effects and records as row tuples, and back: the one row format every backend stores.

- **Positional rows.** Column order follows the dataclass field order in
  ``core/model.py``; records are built with ``Record(*row)``, which is what makes loading a
  million terminals take seconds rather than minutes. Each backend's migrations create the
  tables with exactly these columns in this order (the store contract tests check it).
- **Rows are snapshots taken on the caller's thread.** The engine keeps mutating its
  ``Incident``/``TerminalRecord``/``BatchRecord`` objects in the event loop while a driver
  runs SQL elsewhere (aiosqlite's thread, PostgreSQL's socket), so :func:`prepare` turns
  effects into plain tuples synchronously. No driver ever sees one of our objects.
- **One statement per table.** :meth:`PreparedWrite.tables` hands each backend the rows
  per table in the order they must be applied (incidents before their events: foreign
  key); an upserted key that occurs twice in one write keeps its first position and its
  last value, which is what applying the rows one by one would leave, and what PostgreSQL
  requires (it refuses to update one row twice in one statement).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import Enum
from operator import attrgetter, itemgetter
from typing import Any, Final, assert_never, overload

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
    NotificationRecord,
    NotificationWrite,
    SettlementWrite,
    TerminalNoticeWrite,
    TerminalRecord,
    TerminalWrite,
    TxnRecord,
    TxnWrite,
    UpstreamMembersWrite,
    group_json,
)

Row = tuple[Any, ...]


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
UPSTREAM_MEMBER_COLUMNS: Final = ("incident_id", "terminal_id", "merchant_id", "added_at")
TERMINAL_NOTICE_COLUMNS: Final = ("terminal_id", "merchant_id", "payload", "published_at")
STATUS_COLUMNS: Final = ("terminal_id", "acquirer_status", "reason", "note", "since", "ts_ms", "merchant_id",
                         "received_at")
"""AcquirerStatus's fields in order (``status`` is stored as ``acquirer_status``)."""
HOURS_COLUMNS: Final = ("merchant_id", "learned", "learn_days", "day", "today", "configured")
"""MerchantHoursRecord's fields in order."""
NOTIFICATION_COLUMNS: Final = _names(NotificationWrite)
"""The outbox columns the rules write (NotificationWrite's fields in order)."""
NOTIFICATION_RECORD_COLUMNS: Final = _names(NotificationRecord)
"""Every outbox column, as a NotificationRecord is built from a row."""

_terminal_values = attrgetter(*TERMINAL_COLUMNS)
_txn_values = attrgetter(*TXN_COLUMNS)
_batch_values = attrgetter(*BATCH_COLUMNS)
_incident_values = attrgetter(*INCIDENT_FIELDS)
_settlement_values = attrgetter(*SETTLEMENT_COLUMNS)
_notification_values = attrgetter(*NOTIFICATION_COLUMNS)

_GROUP_IX: Final = INCIDENT_FIELDS.index("group")
_EVIDENCE_IX: Final = INCIDENT_FIELDS.index("evidence")
_SUPPRESSED_IX: Final = INCIDENT_FIELDS.index("suppressed")
_WATCH_IX: Final = BATCH_COLUMNS.index("watch")
_DONE_IX: Final = BATCH_COLUMNS.index("done")
_CHARGING_IX: Final = TERMINAL_COLUMNS.index("charging")
_READER_FAULT_IX: Final = TERMINAL_COLUMNS.index("reader_fault")
_TAMPER_IX: Final = TERMINAL_COLUMNS.index("tamper")


class OnConflict(Enum):
    """What a table does when a written row's key already exists."""

    FAIL = "fail"
    """Plain insert: a duplicate is an error (append-only tables with a generated id)."""
    IGNORE = "ignore"
    """The first row wins (a QoS 1 redelivery of a transaction is stored once)."""
    UPDATE = "update"
    """Upsert: the last row wins (snapshots of incidents, terminals, batches)."""


@dataclass(frozen=True, slots=True)
class Table:
    """One table a write touches: its written columns and how a key collision is handled."""

    name: str
    columns: tuple[str, ...]
    key: tuple[str, ...] = ()
    conflict: OnConflict = OnConflict.FAIL
    update_if: str = ""
    """For an upsert: a condition on the stored row (``{table}.column ...``) without which it is left as it is."""

    @property
    def key_getter(self) -> Any:
        """itemgetter over a row that yields its key (a tuple when the key has several columns)."""
        return itemgetter(*(self.columns.index(c) for c in self.key))


INCIDENTS: Final = Table("incidents", INCIDENT_COLUMNS, ("id",), OnConflict.UPDATE)
INCIDENT_EVENTS: Final = Table("incident_events", EVENT_COLUMNS)
TRANSACTIONS: Final = Table("transactions", TXN_COLUMNS, ("terminal_id", "txn_id"), OnConflict.IGNORE)
SETTLEMENTS: Final = Table("settlements", SETTLEMENT_COLUMNS)
DEAD_LETTERS: Final = Table("dead_letters", DEAD_LETTER_COLUMNS)
TERMINALS: Final = Table("terminals", TERMINAL_COLUMNS, ("terminal_id",), OnConflict.UPDATE)
BATCHES: Final = Table("batches", BATCH_ROW_COLUMNS, ("terminal_id", "batch_no", "currency"), OnConflict.UPDATE)
UPSTREAM_TERMINALS: Final = Table("upstream_terminals", UPSTREAM_MEMBER_COLUMNS, ("incident_id", "terminal_id"),
                                  OnConflict.IGNORE)
"""The terminals an upstream incident is built on (merchant notices): a member is added once."""
TERMINAL_NOTICES: Final = Table("terminal_notices", TERMINAL_NOTICE_COLUMNS, ("terminal_id",), OnConflict.UPDATE)
"""What the broker last acknowledged as each terminal's retained notice."""

TERMINAL_STATUSES: Final = Table("terminal_statuses", STATUS_COLUMNS, ("terminal_id",), OnConflict.UPDATE)
"""The acquirer's status of each terminal it spoke of, applied or waiting for the terminal (§7)."""
MERCHANT_HOURS: Final = Table("merchant_hours", HOURS_COLUMNS, ("merchant_id",), OnConflict.UPDATE)
"""Each merchant's learned and configured operating hours (§8)."""

NOTIFICATIONS: Final = Table("notifications", NOTIFICATION_COLUMNS, ("event_id",), OnConflict.UPDATE,
                             update_if="notifications.status = 'pending'")
"""The merchant notifications' outbox (§6): a row is rewritten only while pending."""

WRITE_ORDER: Final = (INCIDENTS, INCIDENT_EVENTS, TRANSACTIONS, SETTLEMENTS, DEAD_LETTERS, TERMINALS, BATCHES,
                      UPSTREAM_TERMINALS, TERMINAL_NOTICES, TERMINAL_STATUSES, MERCHANT_HOURS, NOTIFICATIONS)
"""Every table a write touches, in the order its rows are applied (events after incidents)."""


# ---- effects -> rows (synchronous, on the caller's thread) --------------------------

def to_json(value: Any) -> str:
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
    return _utc_date(ts_ms // _MS_PER_DAY)


_SECONDS_PER_DAY: Final = 86_400
_MS_PER_DAY: Final = _SECONDS_PER_DAY * 1000


@functools.lru_cache(maxsize=256)
def _utc_date(day: int) -> str | None:
    """``YYYY-MM-DD`` of a day counted from the epoch; None when no date has that number.
    Cached: a flush writes thousands of batch rows dated on a handful of days, and building
    the datetime cost about a microsecond a row on the event loop's thread."""
    try:
        return datetime.fromtimestamp(day * _SECONDS_PER_DAY, tz=UTC).date().isoformat()
    except (OverflowError, OSError, ValueError):
        return None


def incident_row(incident: Incident) -> Row:
    values = list(_incident_values(incident))
    values[_GROUP_IX] = group_json(incident.group)
    values[_EVIDENCE_IX] = to_json(incident.evidence)
    return tuple(values)


def event_row(event: IncidentEvent) -> Row:
    return (event.incident_id, event.at, event.type, to_json(event.detail))


def dead_letter_row(dl: DeadLetter) -> Row:
    return (dl.topic, dl.reason, dl.detail, dl.received_at, dl.payload_excerpt)


def status_row(s: AcquirerStatus) -> Row:
    return (s.terminal_id, s.status, s.reason, s.note, s.since, s.ts_ms, s.merchant_id, s.received_at)


def hours_row(h: MerchantHoursRecord) -> Row:
    """The packed history of whole days is up to 408 bits: it is stored as hex text on every
    backend (no integer column holds it); ``today`` is 48 bits (BIGINT)."""
    return (h.merchant_id, None if h.learned is None else format(h.learned, "x"), h.learn_days, h.day, h.today,
            None if h.configured is None else to_json(h.configured))


def batch_row(batch: BatchRecord) -> Row:
    values: Row = _batch_values(batch)
    return (*values, business_day(batch))


def terminal_row(terminal: TerminalRecord) -> Row:
    values: Row = _terminal_values(terminal)
    return values


def txn_row(txn: TxnRecord) -> Row:
    values: Row = _txn_values(txn)
    return values


def settlement_row(settlement: SettlementWrite) -> Row:
    values: Row = _settlement_values(settlement)
    return values


NUL_REPLACEMENT: Final = "\ufffd"


def without_nul(rows: list[Row]) -> list[Row]:
    """Rows with every U+0000 in their text replaced by U+FFFD: the one rule on every backend.

    PostgreSQL's text cannot hold U+0000 and SQLite's JSON functions cut a string at it, yet
    a garbled payload (a dead letter's excerpt, a firmware string) may carry one; it is
    stored replaced rather than failing the write or losing the rest of the string.
    Backends call this only when a NUL is actually present (it is rare and costs a scan).
    """
    return [tuple(v.replace("\x00", NUL_REPLACEMENT) if isinstance(v, str) else v for v in row) for row in rows]


def last_per_key(table: Table, rows: list[Row]) -> list[Row]:
    """Rows with each key once: first position, last value (see the module docstring)."""
    if len(rows) < 2:
        return rows
    by_key = dict(zip(map(table.key_getter, rows), rows, strict=True))
    return rows if len(by_key) == len(rows) else list(by_key.values())


@dataclass(slots=True)
class PreparedWrite:
    """Row tuples for one transaction, detached from the engine's live objects.

    Build it with :func:`prepare` (or :meth:`add`, to accumulate effects as they are
    produced) and commit it with a store's ``write_prepared``. Rows are applied in the
    order added, so a later snapshot of an incident or terminal wins.
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
    notifications: list[Row] = field(default_factory=list)

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
                self.incidents.append(incident_row(effect.incident))
                self.events.append(event_row(effect.event))
            elif isinstance(effect, SettlementWrite):
                self.settlements.append(_settlement_values(effect))
            elif isinstance(effect, DeadLetter):
                self.dead_letters.append(dead_letter_row(effect))
            elif isinstance(effect, TerminalWrite):
                self.terminals.append(_terminal_values(effect.record))
            elif isinstance(effect, UpstreamMembersWrite):
                self.upstream_members.extend(
                    (effect.incident_id, tid, mid, effect.at) for tid, mid in effect.members
                )
            elif isinstance(effect, TerminalNoticeWrite):
                self.terminal_notices.append((effect.terminal_id, effect.merchant_id, effect.payload, effect.at))
            elif isinstance(effect, AcquirerStatusWrite):
                self.statuses.append(status_row(effect.status))
            elif isinstance(effect, MerchantHoursWrite):
                self.hours.append(hours_row(effect.record))
            elif isinstance(effect, NotificationWrite):
                self.notifications.append(_notification_values(effect))
            else:
                assert_never(effect)
        self.terminals.extend(map(_terminal_values, terminals))
        self.batches.extend(map(batch_row, batches))
        return self

    @property
    def row_count(self) -> int:
        """Rows this write inserts or updates, as added (for metrics and the bench)."""
        return sum(map(len, self._by_table()))

    def _by_table(self) -> tuple[list[Row], ...]:
        return (self.incidents, self.events, self.txns, self.settlements, self.dead_letters,
                self.terminals, self.batches, self.upstream_members, self.terminal_notices, self.statuses,
                self.hours, self.notifications)

    def without_nul(self) -> PreparedWrite:
        """The same rows with U+0000 replaced (:func:`without_nul`)."""
        return PreparedWrite(*map(without_nul, self._by_table()))

    def tables(self) -> list[tuple[Table, list[Row]]]:
        """(table, rows) in the order they must be applied, empty tables left out; upserted
        keys appear once (:func:`last_per_key`)."""
        out = []
        for table, rows in zip(WRITE_ORDER, self._by_table(), strict=True):
            if rows:
                out.append((table, last_per_key(table, rows) if table.conflict is OnConflict.UPDATE else rows))
        return out


def prepare(
    effects: Iterable[Effect],
    terminals: Iterable[TerminalRecord] = (),
    batches: Iterable[BatchRecord] = (),
) -> PreparedWrite:
    """Snapshot effects and dirty records into rows, synchronously (see module docstring)."""
    return PreparedWrite().add(effects, terminals, batches)


# ---- rows -> records ----------------------------------------------------------------

def terminal_of(row: Sequence[Any]) -> TerminalRecord:
    """Positional build; SQLite hands BOOLEAN columns back as 0/1, so those become bools
    first (a compiled TerminalRecord refuses an int where its field says bool)."""
    values = list(row)
    charging = values[_CHARGING_IX]
    if charging is not None:
        values[_CHARGING_IX] = bool(charging)
    values[_READER_FAULT_IX] = bool(values[_READER_FAULT_IX])
    values[_TAMPER_IX] = bool(values[_TAMPER_IX])
    return TerminalRecord(*values)


class TerminalChunk(Sequence[TerminalRecord]):
    """A chunk of terminal rows that become records one at a time, as they are iterated.

    The restore streams a million terminals; the engine turns each record into its compact
    state and drops it. Built one by one, each record reuses the memory of the one before;
    built 20,000 at a time they cost about 2 s more CPU for a million terminals (measured:
    a list of records per chunk against this), and leave a more fragmented heap.
    """

    __slots__ = ("_rows",)

    def __init__(self, rows: Sequence[Sequence[Any]]) -> None:
        self._rows = rows

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, index: int) -> TerminalRecord: ...
    @overload
    def __getitem__(self, index: slice) -> list[TerminalRecord]: ...

    def __getitem__(self, index: int | slice) -> TerminalRecord | list[TerminalRecord]:
        if isinstance(index, slice):
            return [terminal_of(r) for r in self._rows[index]]
        return terminal_of(self._rows[index])

    def __iter__(self) -> Iterator[TerminalRecord]:
        return map(terminal_of, self._rows)


def batch_of(row: Sequence[Any]) -> BatchRecord:
    values = list(row)
    values[_WATCH_IX] = bool(values[_WATCH_IX])
    values[_DONE_IX] = bool(values[_DONE_IX])
    return BatchRecord(*values)


def incident_of(row: Sequence[Any]) -> Incident:
    values = list(row)
    group = values[_GROUP_IX]
    values[_GROUP_IX] = None if group is None else json.loads(group)
    values[_EVIDENCE_IX] = json.loads(values[_EVIDENCE_IX])
    values[_SUPPRESSED_IX] = bool(values[_SUPPRESSED_IX])
    return Incident(*values)


def event_of(row: Sequence[Any]) -> IncidentEvent:
    incident_id, at, type_, detail = row
    return IncidentEvent(incident_id=incident_id, at=at, type=type_, detail=json.loads(detail))


def dead_letter_of(row: Sequence[Any]) -> DeadLetter:
    topic, reason, detail, received_at, excerpt = row
    return DeadLetter(
        topic=topic, reason=reason, detail=detail, received_at=received_at, payload_excerpt=excerpt
    )


def txn_of(row: Sequence[Any]) -> TxnRecord:
    return TxnRecord(*row)


def settlement_of(row: Sequence[Any]) -> SettlementWrite:
    return SettlementWrite(*row)


def terminal_notice_of(row: Sequence[Any]) -> TerminalNoticeWrite:
    return TerminalNoticeWrite(*row)


def status_of(row: Sequence[Any]) -> AcquirerStatus:
    return AcquirerStatus(*row)


def hours_of(row: Sequence[Any]) -> MerchantHoursRecord:
    merchant_id, learned, learn_days, day, today, configured = row
    return MerchantHoursRecord(merchant_id, None if learned is None else int(learned, 16), learn_days, day, today,
                               None if configured is None else json.loads(configured))


SHOWN_NOTICE: Final = '"items":[]'
"""A stored terminal notice whose payload holds this shows nothing (``load_terminal_notices(shown_only=True)``)."""


def notification_of(row: Sequence[Any]) -> NotificationRecord:
    """An outbox row in NOTIFICATION_RECORD_COLUMNS order."""
    return NotificationRecord(*row)
