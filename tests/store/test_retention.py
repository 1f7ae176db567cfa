"""Retention on every backend: what is older than retain_days goes, in chunks; unsettled money stays."""

from __future__ import annotations

import dataclasses

from fleetwatch.core.model import BatchRecord, DeliveryResult, NotificationWrite, SettlementWrite, TxnWrite
from fleetwatch.ports import Store
from fleetwatch.storage.retention import PURGE_ORDER, RetentionJob, retention_seconds
from tests.store.builders import T0, dead_letter, incident, iw, txn

DAY_S = 10.0
"""A compressed day (detect.day_s): retain_days = 3 keeps 30 s."""


def settlement(terminal_id: str, batch_no: int, received_at: float) -> SettlementWrite:
    return SettlementWrite(
        terminal_id=terminal_id, merchant_id="M1", batch_no=batch_no, currency="CNY", business_date="2026-11-22",
        settled_count=1, settled_amount_minor=100, credited_at_ms=1_795_530_000_000, received_at=received_at,
    )


async def fill(store: Store) -> None:
    """An old and a recent generation of everything, and an old batch still unsettled."""
    old, recent = T0, T0 + 100
    settled_old = BatchRecord("T1", 1, "CNY", "M1", tally_count=1, settled_at=old, done=True)
    settled_recent = BatchRecord("T1", 2, "CNY", "M1", tally_count=1, settled_at=recent, done=True)
    unsettled_old = BatchRecord("T2", 1, "CNY", "M1", tally_count=1, first_approved_at=old, last_txn_at=old)
    resolved_old = dataclasses.replace(incident(1), status="resolved", resolved_at=old + 1)
    resolved_recent = dataclasses.replace(incident(2), status="resolved", resolved_at=recent)
    open_old = dataclasses.replace(incident(3), opened_at=old - 50)
    await store.write(
        [TxnWrite(dataclasses.replace(txn("T1", f"old-{i}", old + i * 0.01), batch_no=1)) for i in range(25)]
        + [TxnWrite(dataclasses.replace(txn("T1", "recent", recent), batch_no=2)),
           TxnWrite(dataclasses.replace(txn("T2", "unsettled", old), batch_no=1)),
           settlement("T1", 1, old), settlement("T1", 2, recent), settlement("T2", 1, old),
           iw(resolved_old), iw(resolved_old, "resolved"), iw(resolved_recent), iw(open_old),
           dead_letter(1), dataclasses.replace(dead_letter(2), received_at=recent)],
        batches=[settled_old, settled_recent, unsettled_old],
    )


async def test_delete_expired_takes_only_what_aged_out(store: Store) -> None:
    """Each kind deletes rows older than the cut-off, at most ``limit`` per call; an unsettled
    batch, its transactions and its settlement stay however old; open incidents stay."""
    await fill(store)
    cut = T0 + 50
    assert await store.delete_expired("transactions", cut, 10) == {"transactions": 10}
    assert await store.delete_expired("transactions", cut, 100) == {"transactions": 15}
    assert await store.delete_expired("transactions", cut, 100) == {"transactions": 0}
    assert await store.delete_expired("settlements", cut, 100) == {"settlements": 1}
    assert await store.delete_expired("incidents", cut, 100) == {"incidents": 1, "incident_events": 2,
                                                                  "upstream_terminals": 0}
    assert await store.delete_expired("dead_letters", cut, 100) == {"dead_letters": 1}
    assert await store.delete_expired("batches", cut, 100) == {"batches": 1}

    assert await store.load_recent_txn_keys(100) == [("T2", "unsettled"), ("T1", "recent")]
    assert [(b.terminal_id, b.batch_no) for b in await store.batches_for("M1")] == [("T1", 2), ("T2", 1)]
    assert await store.get_incident("inc-00001") is None
    assert await store.incident_events("inc-00001") == []
    assert await store.get_incident("inc-00002") is not None
    assert [i.id for i in await store.load_open_incidents()] == ["inc-00003"]
    assert [d.detail for d in await store.recent_dead_letters(10)] == ["bad #2"]
    # the old settlement of the unsettled batch is still there: nothing else is left to delete
    assert await store.delete_expired("settlements", cut, 100) == {"settlements": 0}


async def test_retention_job_on_a_compressed_clock(store: Store) -> None:
    """With days of 10 s and retain_days = 3, a pass 40 s after the old rows deletes them all in
    chunks of 4 (reporting every row per table), keeps the recent ones and the unsettled batch, and
    reports the store's size; a pass later still deletes the rest once they too are old."""
    await fill(store)
    await store.write([NotificationWrite("E1", "sms", "M1", "", "notice.digest", "daily", "pending", T0, T0, "[]",
                                         "{}")])
    await store.record_deliveries([DeliveryResult("E1", "sent", 1, T0, None, T0)])
    now = [T0 + 40.0]
    deleted: dict[str, int] = {}
    sizes: list[int] = []
    job = RetentionJob(
        store, retention_seconds(3, DAY_S), clock=lambda: now[0], every_s=1.0, chunk=4, pause_s=0,
        on_deleted=lambda table, n: deleted.__setitem__(table, deleted.get(table, 0) + n), on_size=sizes.append,
    )
    totals = await job.run_once()
    assert totals == deleted == {"transactions": 25, "settlements": 1, "incidents": 1, "incident_events": 2,
                                 "dead_letters": 1, "batches": 1, "notifications": 1}
    assert len(sizes) == 1
    assert sizes[0] > 0
    assert await store.load_recent_txn_keys(100) == [("T2", "unsettled"), ("T1", "recent")]
    now[0] = T0 + 100 + 31
    totals = await job.run_once()
    assert totals == {"transactions": 1, "settlements": 1, "incidents": 1, "incident_events": 1,
                      "dead_letters": 1, "batches": 1}
    assert [(b.terminal_id, b.batch_no) for b in await store.batches_for("M1")] == [("T2", 1)]
    assert await store.load_recent_txn_keys(100) == [("T2", "unsettled")]
    assert {k: v for k, v in (await job.run_once()).items() if v} == {}
    assert set(PURGE_ORDER) <= set(deleted)
