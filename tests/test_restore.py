"""The start-up restore through the store port, with the real engine and the in-memory store."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from fleetwatch.app import restore_engine
from fleetwatch.config import DetectSettings, SettlementSettings
from fleetwatch.core.engine import Engine
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
