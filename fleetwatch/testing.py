"""Fakes shipped with the package for pure tests: :class:`MemoryStore`, the store port in memory.

It keeps the same rows the database backends keep (fleetwatch/storage/rows.py) and
answers the port's calls by the same rules, so a test of the pipeline or the API can run
without a database and still see what a real store would do: one transaction per write
(all or nothing), QoS 1 redeliveries stored once, one open incident per key, dead letters
trimmed, keyset pages newest first by (opened_at, id), and retention. The store contract
tests (tests/store/) run it beside SQLite and PostgreSQL, which is what keeps it honest.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

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
from fleetwatch.storage.retention import PurgeKind
from fleetwatch.storage.rows import (
    BATCH_COLUMNS,
    BATCH_ROW_COLUMNS,
    INCIDENT_COLUMNS,
    SHOWN_NOTICE,
    TXN_COLUMNS,
    PreparedWrite,
    Row,
    TerminalChunk,
    batch_of,
    dead_letter_of,
    event_of,
    hours_of,
    incident_of,
    prepare,
    status_of,
    terminal_notice_of,
    terminal_of,
)

__all__ = ["MemoryStore"]

LOAD_CHUNK: Final = 20_000
LEASE_NAME: Final = "active"

_I_ID, _I_KEY, _I_STATUS, _I_OPENED = (INCIDENT_COLUMNS.index(c) for c in ("id", "key", "status", "opened_at"))
_I_RESOLVED_AT = INCIDENT_COLUMNS.index("resolved_at")
_I_MERCHANT, _I_PARENT, _I_PREVIOUS = (INCIDENT_COLUMNS.index(c) for c in ("merchant_id", "parent_id", "previous_id"))
_I_FILTERS = tuple(INCIDENT_COLUMNS.index(c) for c in paging.INCIDENT_FILTERS)
_B_DONE = BATCH_ROW_COLUMNS.index("done")
_B_MERCHANT = BATCH_ROW_COLUMNS.index("merchant_id")
_B_DAY = BATCH_ROW_COLUMNS.index("business_day")
_B_AGE = tuple(BATCH_ROW_COLUMNS.index(c) for c in ("settled_at", "closed_at", "last_txn_at", "first_approved_at"))
_T_RECEIVED = TXN_COLUMNS.index("received_at")
_T_BATCH = tuple(TXN_COLUMNS.index(c) for c in ("terminal_id", "batch_no", "currency"))
_S_RECEIVED = 8  # SettlementWrite.received_at
_S_BATCH = (0, 2, 3)  # terminal_id, batch_no, currency
_D_RECEIVED = 3  # DEAD_LETTER_COLUMNS.received_at


@dataclass
class _Tables:
    """Everything stored; a write works on a copy and swaps it in only when it succeeds."""

    terminals: dict[str, Row] = field(default_factory=dict)
    incidents: dict[str, Row] = field(default_factory=dict)
    events: dict[int, Row] = field(default_factory=dict)
    txns: dict[tuple[str, str], Row] = field(default_factory=dict)
    settlements: dict[int, Row] = field(default_factory=dict)
    dead_letters: dict[int, Row] = field(default_factory=dict)
    batches: dict[tuple[str, int, str], Row] = field(default_factory=dict)
    members: dict[tuple[str, str], Row] = field(default_factory=dict)
    notices: dict[str, Row] = field(default_factory=dict)
    statuses: dict[str, Row] = field(default_factory=dict)
    hours: dict[str, Row] = field(default_factory=dict)
    notifications: dict[str, NotificationRecord] = field(default_factory=dict)
    """event_id -> row, in insertion order (the dict's order is ``seq``'s)."""
    secrets: dict[str, str] = field(default_factory=dict)
    leases: dict[str, int] = field(default_factory=dict)
    lease_rows: dict[str, tuple[str, float]] = field(default_factory=dict)
    """name -> (holder, expires_at on the store's clock); the token is in ``leases``."""

    def copy(self) -> _Tables:
        return _Tables(**{name: dict(value) for name, value in vars(self).items()})


class MemoryStore:
    """The store port (``fleetwatch.ports.Store``) in memory; see the module docstring."""

    def __init__(self, *, dead_letters_kept: int = 1000, clock: Callable[[], float] = time.monotonic) -> None:
        """``clock`` is the store's own clock, the one lease expiries are compared with."""
        if dead_letters_kept < 0:
            raise ValueError("dead_letters_kept must be >= 0")
        self._clock = clock
        self.lease_failures = 0
        """The next this many lease calls fail with StoreError (a store that does not answer)."""
        self._dead_letters_kept = dead_letters_kept
        self._t = _Tables()
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()
        self._closed = False
        self._fence: int | None = None
        self.writes = 0
        """Committed write transactions (for tests that count commits)."""

    @property
    def location(self) -> str:
        return "memory"

    async def close(self) -> None:
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("store is closed")

    def set_lease(self, token: int) -> None:
        """What a lease holder's takeover would leave in the lease row (tests of fencing)."""
        self._t.leases[LEASE_NAME] = token
        self._t.lease_rows[LEASE_NAME] = ("other", -math.inf)

    # ---- the lease (ports.Leases), on the store's clock ---------------------------------

    def _lease_call(self) -> None:
        self._check_open()
        if self.lease_failures > 0:
            self.lease_failures -= 1
            raise StoreError("lease call failed: the store did not answer (MemoryStore.lease_failures)")

    def _lease_view(self, held: bool) -> LeaseView:
        token = self._t.leases.get(LEASE_NAME)
        holder, expires_at = self._t.lease_rows.get(LEASE_NAME, (None, -math.inf))
        return LeaseView(held, token, holder, max(-1.0, expires_at - self._clock()))

    async def claim(self, holder: str, lease_s: float) -> LeaseView:
        await asyncio.sleep(0)
        self._lease_call()
        _, expires_at = self._t.lease_rows.get(LEASE_NAME, (None, -math.inf))
        if expires_at > self._clock():
            return self._lease_view(False)
        self._t.leases[LEASE_NAME] = self._t.leases.get(LEASE_NAME, 0) + 1
        self._t.lease_rows[LEASE_NAME] = (holder, self._clock() + lease_s)
        return self._lease_view(True)

    async def renew(self, holder: str, token: int, lease_s: float) -> LeaseView:
        await asyncio.sleep(0)
        self._lease_call()
        row_holder, _ = self._t.lease_rows.get(LEASE_NAME, (None, -math.inf))
        if row_holder != holder or self._t.leases.get(LEASE_NAME) != token:
            return self._lease_view(False)
        self._t.lease_rows[LEASE_NAME] = (holder, self._clock() + lease_s)
        return self._lease_view(True)

    async def disconnect_lease(self) -> None:
        return None

    async def release(self, holder: str, token: int) -> None:
        await asyncio.sleep(0)
        self._lease_call()
        row_holder, _ = self._t.lease_rows.get(LEASE_NAME, (None, -math.inf))
        if row_holder == holder and self._t.leases.get(LEASE_NAME) == token:
            self._t.lease_rows[LEASE_NAME] = (holder, -math.inf)

    # ---- writer ----------------------------------------------------------------------

    def write(
        self,
        effects: Sequence[Effect],
        terminals: Sequence[TerminalRecord] = (),
        batches: Sequence[BatchRecord] = (),
    ) -> Coroutine[Any, Any, None]:
        """Rows are taken now, committed when awaited (as the database stores do)."""
        return self.write_prepared(prepare(effects, terminals, batches))

    def fence(self, token: int | None) -> None:
        self._fence = token

    def _check_fence(self) -> None:
        if self._fence is not None and self._t.leases.get(LEASE_NAME) != self._fence:
            raise LeaseLost(f"write refused: the lease token is {self._t.leases.get(LEASE_NAME)}, "
                             f"this instance holds {self._fence}")

    async def write_prepared(self, prepared: PreparedWrite) -> None:
        prepared = prepared.without_nul()
        async with self._lock:
            self._check_open()
            await asyncio.sleep(0)  # a commit is never synchronous: let other tasks run, as a database would
            self._check_fence()
            t = self._t.copy()
            for row in prepared.incidents:
                t.incidents[row[_I_ID]] = row
            if prepared.incidents:
                open_keys = [r[_I_KEY] for r in t.incidents.values() if r[_I_STATUS] != "resolved"]
                if len(open_keys) != len(set(open_keys)):
                    raise StoreError("store write failed: a second open incident for one key")
            for row in prepared.events:
                if row[0] not in t.incidents:
                    raise StoreError(f"store write failed: event for unknown incident {row[0]!r}")
                t.events[next(self._ids)] = row
            for row in prepared.txns:
                t.txns.setdefault((row[0], row[1]), row)
            for row in prepared.settlements:
                t.settlements[next(self._ids)] = row
            for row in prepared.dead_letters:
                t.dead_letters[next(self._ids)] = row
            if prepared.dead_letters:
                for key in list(t.dead_letters)[: max(0, len(t.dead_letters) - self._dead_letters_kept)]:
                    del t.dead_letters[key]
            for row in prepared.terminals:
                t.terminals[row[0]] = row
            for row in prepared.batches:
                t.batches[(row[0], row[1], row[2])] = row
            for row in prepared.upstream_members:
                t.members.setdefault((row[0], row[1]), row)
            for row in prepared.terminal_notices:
                t.notices[row[0]] = row
            for row in prepared.statuses:
                t.statuses[row[0]] = row
            for row in prepared.hours:
                t.hours[row[0]] = row
            for row in prepared.notifications:
                self._outbox_row(t, row)
            self._t = t
            self.writes += 1

    # ---- retention -------------------------------------------------------------------

    async def delete_expired(self, kind: PurgeKind, before: float, limit: int) -> Mapping[str, int]:
        async with self._lock:
            self._check_open()
            self._check_fence()
            t = self._t
            open_batches = {k for k, r in t.batches.items() if not r[_B_DONE]}

            def oldest(table: dict[Any, Row], at: int, batch: tuple[int, ...] | None) -> list[Any]:
                doomed = [(r[at], k) for k, r in table.items()
                          if r[at] < before and (batch is None or tuple(r[i] for i in batch) not in open_batches)]
                return [k for _, k in sorted(doomed, key=lambda pair: pair[0])[:limit]]

            if kind == "transactions":
                keys = oldest(t.txns, _T_RECEIVED, _T_BATCH)
                table: dict[Any, Row] = t.txns
            elif kind == "settlements":
                keys, table = oldest(t.settlements, _S_RECEIVED, _S_BATCH), t.settlements
            elif kind == "dead_letters":
                keys, table = oldest(t.dead_letters, _D_RECEIVED, None), t.dead_letters
            elif kind == "notifications":
                kept = {r.event_id for r in await self._notification_state_unlocked() if r.status != "pending"}
                doomed = [r.event_id for r in t.notifications.values()
                          if r.status != "pending" and r.created_at < before and r.event_id not in kept][:limit]
                rows = dict(t.notifications)
                for eid in doomed:
                    del rows[eid]
                t.notifications = rows
                return {kind: len(doomed)}
            elif kind == "batches":
                table = t.batches
                keys = [k for k, r in table.items()
                        if r[_B_DONE] and next((r[i] for i in _B_AGE if r[i] is not None), 0) < before][:limit]
            else:
                resolved = sorted((r[_I_RESOLVED_AT], k) for k, r in t.incidents.items()
                                  if r[_I_STATUS] == "resolved" and r[_I_RESOLVED_AT] < before)
                ids = {k for _, k in resolved[:limit]}
                events = [n for n, r in t.events.items() if r[0] in ids]
                for n in events:
                    del t.events[n]
                members = [k for k in t.members if k[0] in ids]
                for member in members:
                    del t.members[member]
                for incident_id in ids:
                    del t.incidents[incident_id]
                return {"incidents": len(ids), "incident_events": len(events), "upstream_terminals": len(members)}
            for k in keys:
                del table[k]
            return {kind: len(keys)}

    async def size_bytes(self) -> int:
        """A rough figure: the characters of every stored row."""
        return sum(len(repr(table)) for table in vars(self._t).values())

    # ---- restore ---------------------------------------------------------------------

    async def terminal_chunks(self) -> AsyncIterator[Sequence[TerminalRecord]]:
        self._check_open()
        rows = list(self._t.terminals.values())
        for start in range(0, len(rows), LOAD_CHUNK):
            yield TerminalChunk(rows[start:start + LOAD_CHUNK])

    async def load_terminals(self) -> list[TerminalRecord]:
        return [t async for chunk in self.terminal_chunks() for t in chunk]

    async def load_open_incidents(self) -> list[Incident]:
        self._check_open()
        rows = sorted((r for r in self._t.incidents.values() if r[_I_STATUS] != "resolved"),
                      key=lambda r: (r[_I_OPENED], r[_I_ID]))
        return [incident_of(r) for r in rows]

    async def load_open_batches(self) -> list[BatchRecord]:
        self._check_open()
        return [batch_of(r[: len(BATCH_COLUMNS)]) for _, r in sorted(self._t.batches.items()) if not r[_B_DONE]]

    async def load_recent_txn_keys(self, limit: int) -> list[tuple[str, str]]:
        self._check_open()
        if limit <= 0:
            return []
        rows = sorted(self._t.txns.values(), key=lambda r: r[_T_RECEIVED])[-limit:]
        return [(r[0], r[1]) for r in rows]

    # ---- reads -----------------------------------------------------------------------

    async def list_incidents(
        self, *, status: str = "open", kind: str | None = None, terminal_id: str | None = None,
        merchant_id: str | None = None, scope: str | None = None, limit: int = 100, cursor: str | None = None,
    ) -> tuple[list[Incident], str | None]:
        paging.check_limit(limit)
        paging.check_status(status)
        after = paging.decode_incident_cursor(cursor) if cursor is not None else None
        wanted = tuple(zip(_I_FILTERS, (kind, terminal_id, merchant_id, scope), strict=True))
        self._check_open()

        def keep(r: Row) -> bool:
            if status == "open" and r[_I_STATUS] == "resolved":
                return False
            if status in ("acknowledged", "resolved") and r[_I_STATUS] != status:
                return False
            if any(value is not None and r[i] != value for i, value in wanted):
                return False
            return after is None or (r[_I_OPENED], r[_I_ID]) < after

        rows = sorted(filter(keep, self._t.incidents.values()), key=lambda r: (r[_I_OPENED], r[_I_ID]), reverse=True)
        items = [incident_of(r) for r in rows[:limit]]
        more = len(rows) > limit
        return items, (paging.incident_cursor(items[-1].opened_at, items[-1].id) if more else None)

    async def get_incident(self, incident_id: str) -> Incident | None:
        self._check_open()
        row = self._t.incidents.get(incident_id)
        return None if row is None else incident_of(row)

    async def incident_events(self, incident_id: str) -> list[IncidentEvent]:
        self._check_open()
        return [event_of(r) for _, r in sorted(self._t.events.items()) if r[0] == incident_id]

    async def get_terminal(self, terminal_id: str) -> TerminalRecord | None:
        self._check_open()
        row = self._t.terminals.get(terminal_id)
        return None if row is None else terminal_of(row)

    async def list_terminals(
        self, *, merchant_id: str | None = None, limit: int = 100, cursor: str | None = None,
    ) -> tuple[list[TerminalRecord], str | None]:
        paging.check_limit(limit)
        after = paging.decode_terminal_cursor(cursor) if cursor is not None else None
        self._check_open()
        rows = sorted((r for r in self._t.terminals.values()
                       if (merchant_id is None or r[1] == merchant_id) and (after is None or r[0] > after)),
                      key=lambda r: str(r[0]))
        items = [terminal_of(r) for r in rows[:limit]]
        more = len(rows) > limit
        return items, (paging.terminal_cursor(items[-1].terminal_id) if more else None)

    async def count_terminals(self) -> int:
        self._check_open()
        return len(self._t.terminals)

    async def recent_dead_letters(self, limit: int) -> list[DeadLetter]:
        self._check_open()
        if limit <= 0:
            return []
        return [dead_letter_of(r) for _, r in sorted(self._t.dead_letters.items(), reverse=True)[:limit]]

    async def batches_for(
        self, merchant_id: str, business_date: str | None = None, terminal_id: str | None = None,
    ) -> list[BatchRecord]:
        self._check_open()
        return [
            batch_of(r[: len(BATCH_COLUMNS)]) for key, r in sorted(self._t.batches.items())
            if r[_B_MERCHANT] == merchant_id
            and (business_date is None or r[_B_DAY] == business_date)
            and (terminal_id is None or key[0] == terminal_id)
        ]

    # ---- merchant notices and generated secrets ----------------------------------------

    async def load_open_upstream_members(self) -> dict[str, list[tuple[str, str | None]]]:
        self._check_open()
        out: dict[str, list[tuple[str, str | None]]] = {}
        for (incident_id, terminal_id), row in sorted(self._t.members.items()):
            incident = self._t.incidents.get(incident_id)
            if incident is not None and incident[_I_STATUS] != "resolved":
                out.setdefault(incident_id, []).append((terminal_id, row[2]))
        return out

    async def load_terminal_notices(self, *, shown_only: bool = False) -> list[TerminalNoticeWrite]:
        self._check_open()
        return [terminal_notice_of(r) for _, r in sorted(self._t.notices.items())
                if not shown_only or (r[2] is not None and SHOWN_NOTICE not in r[2])]

    async def load_acquirer_statuses(self) -> list[AcquirerStatus]:
        self._check_open()
        return [status_of(r) for _, r in sorted(self._t.statuses.items())]

    async def load_merchant_hours(self) -> list[MerchantHoursRecord]:
        self._check_open()
        return [hours_of(r) for _, r in sorted(self._t.hours.items())]

    async def merchant_notice_incidents(
        self, merchant_id: str, resolved_since: float,
    ) -> tuple[list[Incident], dict[str, set[str]]]:
        self._check_open()
        t = self._t

        def recent(r: Row) -> bool:
            return bool(r[_I_STATUS] != "resolved" or r[_I_RESOLVED_AT] >= resolved_since)

        found = {k: r for k, r in t.incidents.items() if r[_I_MERCHANT] == merchant_id and recent(r)}
        members: dict[str, set[str]] = {}
        for (incident_id, terminal_id), row in t.members.items():
            incident = t.incidents.get(incident_id)
            if row[2] == merchant_id and incident is not None and recent(incident):
                members.setdefault(incident_id, set()).add(terminal_id)
        wanted = set(members) - set(found)
        while wanted:
            found.update((k, t.incidents[k]) for k in wanted if k in t.incidents)
            wanted = {ref for r in found.values() for ref in (r[_I_PARENT], r[_I_PREVIOUS])
                      if ref is not None and ref not in found and ref in t.incidents}
        return [incident_of(r) for r in found.values()], members

    # ---- the notifications' outbox ----------------------------------------------------

    def _outbox_row(self, t: _Tables, row: Row) -> None:
        """Insert, or rewrite a pending row's rules' columns (as the databases' upsert does)."""
        old = t.notifications.get(row[0])
        if old is None:
            t.notifications[row[0]] = NotificationRecord(next(self._ids), *row)
        elif old.status == "pending":
            t.notifications[row[0]] = replace(NotificationRecord(old.seq, *row), attempts=old.attempts,
                                              next_at=old.next_at, last_error=old.last_error, sent_at=old.sent_at)

    async def due_notifications(self, now: float, limit: int, *, margin_s: float = 0.0) -> list[NotificationRecord]:
        self._check_open()
        heads: set[tuple[str, str, str]] = set()
        out = []
        for r in self._t.notifications.values():
            if r.status != "pending":
                continue
            key = (r.receiver, r.merchant_id, r.notice_id)
            if r.notice_id and key in heads:
                continue
            heads.add(key)
            if r.due_at <= now - margin_s and r.next_at <= now:
                out.append(r)
        return out[:limit]

    async def record_deliveries(self, results: Sequence[DeliveryResult]) -> None:
        async with self._lock:
            self._check_open()
            await asyncio.sleep(0)
            self._check_fence()
            rows = dict(self._t.notifications)
            for r in results:
                old = rows.get(r.event_id)
                if old is not None and old.status == "pending":
                    rows[r.event_id] = replace(old, status=r.status, attempts=r.attempts, next_at=r.next_at,
                                               last_error=r.last_error, sent_at=r.sent_at)
            self._t.notifications = rows

    async def load_notification_state(self) -> list[NotificationRecord]:
        self._check_open()
        return await self._notification_state_unlocked()

    async def _notification_state_unlocked(self) -> list[NotificationRecord]:
        last: dict[tuple[str, str, str], NotificationRecord] = {}
        for r in self._t.notifications.values():
            if r.notice_id and r.status != "collapsed":
                last[(r.receiver, r.merchant_id, r.notice_id)] = r
        told = {r.event_id for r in last.values() if r.type != "notice.resolved"}
        return [r for r in self._t.notifications.values() if r.status == "pending" or r.event_id in told]

    async def list_notifications(
        self, *, status: str = "all", merchant_id: str | None = None, limit: int = 100, cursor: str | None = None,
    ) -> tuple[list[NotificationRecord], str | None]:
        outbox.list_query(status, merchant_id, limit, cursor)  # the same checks of status, limit and cursor
        below = outbox.decode_cursor(cursor) if cursor is not None else None
        rows = [r for r in reversed(self._t.notifications.values())
                if (r.status != "collapsed" if status == "all" else r.status == status)
                and (merchant_id is None or r.merchant_id == merchant_id) and (below is None or r.seq < below)]
        more = len(rows) > limit
        return rows[:limit], (outbox.cursor_of(rows[limit - 1].seq) if more else None)

    async def count_pending_notifications(self) -> int:
        return sum(1 for r in self._t.notifications.values() if r.status == "pending")

    async def secret(self, name: str, candidate: str) -> str:
        async with self._lock:
            self._check_open()
            return self._t.secrets.setdefault(name, candidate)
