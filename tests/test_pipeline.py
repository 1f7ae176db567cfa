"""The pipeline's promises, with a fake engine and a fake store: ack only after commit."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import pytest

from fleetwatch.adapters.metrics import Metrics
from fleetwatch.config import load_settings
from fleetwatch.core.messages import Envelope
from fleetwatch.core.model import BatchRecord, DeadLetter, Effect, TerminalRecord, TerminalWrite
from fleetwatch.core.snapshot import FleetSnapshot
from fleetwatch.errors import StoreError
from fleetwatch.logs import RateLimitedLog
from fleetwatch.pipeline import Pipeline
from tests.publish import heartbeat, txn


class FakeEngine:
    """Records what it was asked to apply; every txn yields one marker effect."""

    def __init__(self) -> None:
        self.applied: list[Envelope] = []
        self.ticks = 0
        self.due = 0
        """Ticks still needed before nothing due is left (a tick that stopped at its budget)."""

    def apply(self, env: Envelope) -> list[Effect]:
        self.applied.append(env)
        return [DeadLetter("marker", env.kind, "", env.received_at, None)] if env.kind == "txn" else []

    def tick(self, now: float) -> list[Effect]:
        self.ticks += 1
        self.due = max(0, self.due - 1)
        return []

    def behind(self, now: float) -> bool:
        return self.due > 0

    def connection_changed(self, connected: bool, now: float) -> None:
        pass

    def take_dirty_terminals(self) -> list[TerminalRecord]:
        return []

    def take_dirty_batches(self) -> list[BatchRecord]:
        return []

    def snapshot(self, now: float) -> FleetSnapshot:
        return FleetSnapshot(at=now)


class FakeStore:
    def __init__(self) -> None:
        self.writes: list[list[Effect]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail = False

    async def write(self, effects: Sequence[Effect], terminals: Sequence[TerminalRecord] = (),
                    batches: Sequence[BatchRecord] = ()) -> None:
        await self.gate.wait()
        if self.fail:
            raise StoreError("disk full")
        self.writes.append(list(effects))


def make(store: FakeStore, engine: FakeEngine | None = None) -> Pipeline:
    settings = load_settings(None, {"store": {"flush_interval_ms": 1}})
    return Pipeline(settings, engine or FakeEngine(), store, Metrics())


def payload(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


async def test_qos1_future_completes_only_after_its_batch_commits() -> None:
    """The future handed to the MQTT adapter is done only once the store write holding it returned."""
    store = FakeStore()
    store.gate.clear()
    pipeline = make(store)
    writer = asyncio.create_task(pipeline.run_writer())
    future = pipeline.on_message("fleet/v1/term/T1/txn", payload(txn("T1", "a")), 1, False)
    assert future is not None
    await asyncio.sleep(0.05)
    assert not future.done()
    assert store.writes == []
    store.gate.set()
    await asyncio.wait_for(future, 1)
    assert [e.reason for e in store.writes[0] if isinstance(e, DeadLetter)] == ["txn"]
    pipeline.close()
    await asyncio.wait_for(writer, 1)


async def test_qos0_needs_no_wait_and_rejections_are_dead_lettered() -> None:
    """QoS 0 returns no future; a bad message becomes a counted dead letter, not an exception."""
    store = FakeStore()
    pipeline = make(store)
    writer = asyncio.create_task(pipeline.run_writer())
    assert pipeline.on_message("fleet/v1/term/T1/heartbeat", payload(heartbeat("T1")), 0, False) is None
    future = pipeline.on_message("fleet/v1/term/T1/heartbeat", b"{broken", 1, False)
    assert future is not None
    await asyncio.wait_for(future, 1)
    letters = [e for batch in store.writes for e in batch if isinstance(e, DeadLetter)]
    assert [(d.reason, d.payload_excerpt) for d in letters] == [("json", "{broken")]
    pipeline.close()
    await asyncio.wait_for(writer, 1)


async def test_failed_commit_is_never_acknowledged_and_stops_the_writer() -> None:
    """A store error fails the batch future (so no PUBACK) and the writer task raises StoreError."""
    store = FakeStore()
    store.fail = True
    pipeline = make(store)
    writer = asyncio.create_task(pipeline.run_writer())
    future = pipeline.on_message("fleet/v1/term/T1/txn", payload(txn("T1", "a")), 1, False)
    assert future is not None
    with pytest.raises(StoreError):
        await asyncio.wait_for(writer, 1)
    assert future.done()
    assert isinstance(future.exception(), StoreError)


async def test_close_drains_everything_pending() -> None:
    """On shutdown the writer commits what is in hand before it returns."""
    store = FakeStore()
    pipeline = make(store)
    writer = asyncio.create_task(pipeline.run_writer())
    futures = [pipeline.on_message("fleet/v1/term/T1/txn", payload(txn("T1", str(i))), 1, False)
               for i in range(100)]
    pipeline.close()
    await asyncio.wait_for(writer, 1)
    assert all(f is not None and f.done() and f.exception() is None for f in futures)
    assert sum(len(batch) for batch in store.writes) == 100


def test_rate_limited_log_counts_what_it_suppressed() -> None:
    """A flood logs once per interval per key, and the next logged line says how many were skipped."""
    clock = iter([0.0, 1.0, 2.0, 11.0, 11.5]).__next__
    limiter = RateLimitedLog(10.0, clock=clock)
    assert limiter.should_log("json") == (True, 0)
    assert limiter.should_log("json") == (False, 0)
    assert limiter.should_log("json") == (False, 0)
    assert limiter.should_log("json") == (True, 2)
    assert limiter.should_log("pan") == (True, 0)


async def test_after_close_messages_are_refused_and_never_acknowledged() -> None:
    """Once shutdown began, a late QoS 1 delivery gets a cancelled future (no PUBACK: the broker
    redelivers it to the next run) and nothing of it reaches the engine or the store."""
    store, engine = FakeStore(), FakeEngine()
    pipeline = make(store, engine)
    writer = asyncio.create_task(pipeline.run_writer())
    pipeline.close()
    await asyncio.wait_for(writer, 1)
    late = pipeline.on_message("fleet/v1/term/T1/txn", payload(txn("T1", "late")), 1, False)
    assert late is not None
    assert late.cancelled()
    assert pipeline.on_message("fleet/v1/term/T1/heartbeat", payload(heartbeat("T1")), 0, False) is None
    assert engine.applied == []
    assert store.writes == []


class DirtyEngine(FakeEngine):
    """Hands out a large backlog of dirty terminal records once."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self._dirty = [TerminalRecord(f"T{i}") for i in range(count)]

    def take_dirty_terminals(self) -> list[TerminalRecord]:
        dirty, self._dirty = self._dirty, []
        return dirty


class CountingStore(FakeStore):
    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.terminal_rows = 0

    async def write(self, effects: Sequence[Effect], terminals: Sequence[TerminalRecord] = (),
                    batches: Sequence[BatchRecord] = ()) -> None:
        await asyncio.sleep(self.delay)
        self.terminal_rows += len(terminals)
        await super().write(effects, terminals, batches)


async def test_terminal_rows_go_in_bounded_chunks_and_the_drain_respects_its_budget() -> None:
    """A huge backlog of terminal rows is written a chunk per transaction, and a stop with no
    budget left still commits every pending effect, then gives up the remaining terminal rows."""
    store = CountingStore(delay=0.01)
    pipeline = make(store, DirtyEngine(50_000))
    writer = asyncio.create_task(pipeline.run_writer())
    future = pipeline.on_message("fleet/v1/term/T1/txn", payload(txn("T1", "a")), 1, False)
    assert future is not None
    await asyncio.wait_for(future, 1)
    assert store.terminal_rows <= 5_000  # the txn's commit did not wait for 50,000 rows
    pipeline.close(terminal_budget_s=0.0)
    await asyncio.wait_for(writer, 2)
    assert store.terminal_rows < 50_000
    assert any(isinstance(e, DeadLetter) for batch in store.writes for e in batch)


class RowStore(FakeStore):
    """Keeps, per terminal, the last row written (what the store would hold), in write order."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, TerminalRecord] = {}

    async def write(self, effects: Sequence[Effect], terminals: Sequence[TerminalRecord] = (),
                    batches: Sequence[BatchRecord] = ()) -> None:
        for effect in effects:  # the SQLite store applies effect rows before the backlog's
            if isinstance(effect, TerminalWrite):
                self.rows[effect.record.terminal_id] = effect.record
        for record in terminals:
            self.rows[record.terminal_id] = record
        await super().write(effects, terminals, batches)


async def test_an_operator_terminal_write_is_not_undone_by_an_older_backlog_row() -> None:
    """A maintenance window (TerminalWrite) committed while older coalesced rows of the same terminal
    still wait in the backlog: those older rows are dropped, so the store keeps the operator's row."""
    store = RowStore()
    engine = DirtyEngine(12_000)  # more than two chunks: T11000's old row waits in the backlog
    pipeline = make(store, engine)
    writer = asyncio.create_task(pipeline.run_writer())
    first = pipeline.submit([])
    await asyncio.wait_for(first, 1)  # the first flush takes the backlog and writes one chunk
    assert "T11000" not in store.rows
    done = pipeline.submit([TerminalWrite(TerminalRecord("T11000", maintenance_until=99.0))])
    await asyncio.wait_for(done, 1)
    pipeline.close()
    await asyncio.wait_for(writer, 2)
    assert store.rows["T11000"].maintenance_until == 99.0
    assert len(store.rows) == 12_000


async def test_accepted_messages_are_counted_by_type_in_every_scrape() -> None:
    """The hot path counts in plain integers; each /metrics exposition shows them all, by type."""
    settings = load_settings(None, {})
    metrics = Metrics()
    pipeline = Pipeline(settings, FakeEngine(), FakeStore(), metrics)

    def count(kind: str) -> float:
        line = f'fleetwatch_messages_received_total{{type="{kind}"}} '
        text = metrics.exposition().decode()
        return float(next(x for x in text.splitlines() if x.startswith(line)).split()[-1])

    for i in range(3):
        pipeline.on_message("fleet/v1/term/T1/heartbeat", payload(heartbeat("T1", seq=i)), 0, False)
    pipeline.on_message("fleet/v1/term/T1/txn", payload(txn("T1", "a")), 0, False)
    assert (count("heartbeat"), count("txn"), count("batch")) == (3, 1, 0)
    pipeline.on_message("fleet/v1/term/T1/heartbeat", payload(heartbeat("T1", seq=9)), 0, False)
    assert (count("heartbeat"), count("txn")) == (4, 1)  # handed over once, not again


async def test_derived_effects_commit_in_the_transaction_of_what_they_derive_from() -> None:
    """The merchant notifications' outbox rows (Pipeline.derive_with) go into the same store write
    as the effects that caused them, before the QoS 1 acknowledgement; a failing hook costs the
    batch nothing (counted)."""
    store = FakeStore()
    pipeline = make(store)
    seen: list[list[Effect]] = []

    def derive(effects: Sequence[Effect], now: float) -> list[Effect]:
        seen.append(list(effects))
        if len(seen) == 2:
            raise RuntimeError("a bug in the rules")
        return [DeadLetter("derived", "outbox", "", now, None)]

    pipeline.derive_with(derive)
    writer = asyncio.create_task(pipeline.run_writer())
    first = pipeline.on_message("fleet/v1/term/T1/txn", payload(txn("T1", "a")), 1, False)
    assert first is not None
    await asyncio.wait_for(first, 1)
    assert [e.reason for e in store.writes[0] if isinstance(e, DeadLetter)] == ["txn", "outbox"]
    second = pipeline.on_message("fleet/v1/term/T1/txn", payload(txn("T1", "b")), 1, False)
    assert second is not None
    await asyncio.wait_for(second, 1)
    assert [e.reason for e in store.writes[1] if isinstance(e, DeadLetter)] == ["txn"]
    assert len(store.writes) == 2
    pipeline.close()
    await asyncio.wait_for(writer, 1)


async def test_a_sweep_ticks_again_at_once_while_the_engine_is_behind() -> None:
    """A tick stopped at its budget of silence checks: the rest is judged in the same sweep,
    not one sweep period (15 s at the default interval) later per budget."""
    engine = FakeEngine()
    engine.due = 4
    await make(FakeStore(), engine).sweep_until_current()
    assert engine.ticks == 4
    assert not engine.behind(0.0)


async def test_a_sweep_with_nothing_behind_ticks_once() -> None:
    engine = FakeEngine()
    await make(FakeStore(), engine).sweep_until_current()
    assert engine.ticks == 1
