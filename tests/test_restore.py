"""The start-up restore through the store port, with the real engine and the in-memory store."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from fleetwatch.app import restore_engine
from fleetwatch.config import DetectSettings, SettlementSettings
from fleetwatch.core.engine import Engine
from fleetwatch.core.hours import WeeklyHours
from fleetwatch.core.messages import Envelope, TerminalStatus
from fleetwatch.core.model import Effect, TerminalRecord
from fleetwatch.errors import StoreError
from fleetwatch.testing import MemoryStore
from tests.golden import heartbeat_env, txn_env

CFG = DetectSettings(heartbeat_interval_s=1.0)


async def test_a_restored_engine_knows_what_the_stored_one_knew() -> None:
    """Terminals (more than one chunk of them), open incidents, open batches and txn ids written
    through the port come back into a fresh engine: same terminal records, same open incident,
    the same txn is a redelivery, and the batch's tally goes on from where it was."""
    first = Engine(CFG, SettlementSettings())
    first.restore([], [], [], [], 0.0)
    store = MemoryStore()
    effects: list[Effect] = []
    for n in range(25_000):
        effects += first.apply(heartbeat_env(f"T{n:05d}", 1.0, 1))
    effects += first.apply(heartbeat_env("T00007", 2.0, 2, printer="no_paper"))
    effects += first.apply(txn_env("T00003", 2.0, "T00003-1"))
    await store.write(effects, first.take_dirty_terminals(), first.take_dirty_batches())

    second = Engine(CFG, SettlementSettings())
    open_incidents, members = await restore_engine(second, store, 3.0, 1000)
    assert members == {}
    assert [(i.terminal_id, i.kind, i.cause) for i in open_incidents] == [("T00007", "printer", "no_paper")]
    assert second.incident(open_incidents[0].id) == open_incidents[0]
    for tid in ("T00000", "T00007", "T24999"):
        assert second.terminal(tid) == first.terminal(tid)
    assert second.apply(txn_env("T00003", 4.0, "T00003-1")) == []  # already stored: a redelivery
    second.apply(txn_env("T00003", 4.0, "T00003-2"))
    (batch,) = second.take_dirty_batches()
    assert (batch.terminal_id, batch.tally_count, batch.tally_amount_minor) == ("T00003", 2, 2000)


class FailingStore(MemoryStore):
    """Its second chunk of terminals fails, as a dropped database connection would."""

    async def terminal_chunks(self) -> AsyncIterator[list[TerminalRecord]]:
        yield [TerminalRecord("T1")]
        raise StoreError("connection lost")


async def test_a_store_failure_during_restore_is_the_store_error() -> None:
    """A chunk that fails comes out of restore_engine as that StoreError (no hang, no other error)."""
    engine = Engine(CFG, SettlementSettings())
    with pytest.raises(StoreError, match="connection lost"):
        await restore_engine(engine, FailingStore(), 0.0, 1000)


async def test_statuses_and_hours_survive_a_restart_through_the_store() -> None:
    """The acquirer's statuses (one applied, one waiting for its terminal) and a merchant's configured and
    learned hours, written through the port, are what a fresh engine knows after restore_engine."""
    cfg = DetectSettings(heartbeat_interval_s=1.0, day_s=24.0, hours_learn_days=1)
    first = Engine(cfg, SettlementSettings())
    first.restore([], [], [], [], 0.0)
    first.connection_changed(True, 0.0)
    store = MemoryStore()
    effects: list[Effect] = []
    t, seq = 0.5, 1
    while t < 60.0:  # a merchant silent from 10:00 to 14:00 of each 24 s day
        if not 10 <= t % 24 < 14:
            effects += first.apply(heartbeat_env("T1", t, seq, merchant_id="M1"))
            seq += 1
        effects += first.tick(t)
        t += 0.5
    effects += first.apply(Envelope("status", TerminalStatus(v=1, terminal_id="T1", status="suspended", ts=60_000,
                                                             reason="fraud"), 60.0))
    effects += first.apply(Envelope("status", TerminalStatus(v=1, terminal_id="T9", status="closed", ts=60_000), 60.0))
    sundays = WeeklyHours.parse({"timezone": "Asia/Shanghai", "weekly": {"sun": ["09:00-17:00"]}})
    effects += first.set_hours("M2", sundays, 60.0)
    effects += first.tick(60.0)
    await store.write(effects, first.take_dirty_terminals(), first.take_dirty_batches())
    assert first.closed_slots("M1") == {11, 12, 13}  # the 9.5 s beat keeps the merchant present until 11 s

    second = Engine(cfg, SettlementSettings())
    await restore_engine(second, store, 61.0, 1000)
    assert second.closed_slots("M1") == {11, 12, 13}
    assert second.hours_of("M2") == first.hours_of("M2")
    assert second.acquirer_status("T1") == first.acquirer_status("T1")
    assert second.acquirer_status("T9") == first.acquirer_status("T9")  # still waiting for T9
    assert dict(second.snapshot(61.0).terminals) == {("suspended", "A920"): 1}
    assert second.terminal("T9") is None
