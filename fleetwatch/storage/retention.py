"""Retention: which rows age out (CONTRACT.md §9), and the job that deletes them.

After ``store.retain_days`` (days of ``detect.day_s`` seconds, so a compressed clock
compresses retention too) these go, measured on the daemon's clock:

- transactions and settlements received before the cut-off, **except** those of a batch
  still being reconciled (not ``done``): the money under watch keeps its evidence;
- resolved incidents resolved before the cut-off, with their events and the terminals
  an upstream one was built on (merchant notices);
- dead letters received before the cut-off (on top of the ``dead_letters_kept`` cap);
- merchant notification events made before the cut-off that are done (sent, failed or
  collapsed), except each notice's last told event (fleetwatch/storage/outbox.py);
- batches that are done (settled, or owing nothing) whose last news (settlement, else
  close, else last transaction) is older than the cut-off. A batch not yet done is kept
  however old it is: its tallies are what a late settlement is matched against.

The job deletes at most ``chunk`` rows per transaction and yields between chunks, so
intake never waits for more than one small delete (SQLite has one writer; PostgreSQL
takes no lock that an insert waits for).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Final, Literal, Protocol

PurgeKind = Literal["transactions", "settlements", "incidents", "dead_letters", "batches", "notifications"]
PURGE_ORDER: Final[tuple[PurgeKind, ...]] = ("transactions", "settlements", "incidents", "dead_letters", "batches",
                                             "notifications")
"""What one retention pass deletes, in order (transactions before the batches they belong to)."""

DELETED_TABLES: Final = ("transactions", "settlements", "incidents", "incident_events", "upstream_terminals",
                         "dead_letters", "batches", "notifications")
"""Every table retention deletes from: the ``table`` label of ``fleetwatch_store_rows_deleted_total``."""


class Purger(Protocol):
    """The part of a store the job needs (``fleetwatch.ports.Store`` has it)."""

    async def delete_expired(self, kind: PurgeKind, before: float, limit: int) -> Mapping[str, int]: ...
    async def size_bytes(self) -> int: ...


def retention_seconds(retain_days: float, day_s: float) -> float:
    """How long rows are kept: ``retain_days`` days of ``day_s`` seconds (CONTRACT.md §8)."""
    return retain_days * day_s


class RetentionJob:
    """Deletes what has aged out, in chunks, every ``every_s``; reports counts and size."""

    def __init__(
        self,
        store: Purger,
        keep_s: float,
        *,
        clock: Callable[[], float],
        every_s: float,
        chunk: int,
        pause_s: float = 0.01,
        on_deleted: Callable[[str, int], None] = lambda table, n: None,
        on_size: Callable[[int], None] = lambda n: None,
    ) -> None:
        if chunk < 1:
            raise ValueError("chunk must be >= 1")
        self._store = store
        self._keep_s = keep_s
        self._clock = clock
        self._every_s = every_s
        self._chunk = chunk
        self._pause_s = pause_s
        self._on_deleted = on_deleted
        self._on_size = on_size

    async def run(self) -> None:
        """Forever: one pass, then wait ``every_s`` (a StoreError ends the task, like a write's)."""
        while True:
            await self.run_once()
            await asyncio.sleep(self._every_s)

    async def run_once(self) -> dict[str, int]:
        """One pass over every kind until nothing older than the cut-off is left; rows deleted per table."""
        before = self._clock() - self._keep_s
        totals: dict[str, int] = {}
        for kind in PURGE_ORDER:
            while True:
                deleted = await self._store.delete_expired(kind, before, self._chunk)
                for table, n in deleted.items():
                    if n:
                        totals[table] = totals.get(table, 0) + n
                        self._on_deleted(table, n)
                if deleted.get(kind, 0) < self._chunk:
                    break
                await asyncio.sleep(self._pause_s)  # let the writer in between chunks
        self._on_size(await self._store.size_bytes())
        return totals
