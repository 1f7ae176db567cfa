"""The notifications' outbox on every backend (CONTRACT §6): written with the incident change
that caused it, rewritten only while pending, delivered in order, resumed after a restart."""

from __future__ import annotations

import pytest

from fleetwatch.core.model import DeliveryResult, NotificationWrite, TxnWrite
from fleetwatch.errors import BadRequest, StoreError
from fleetwatch.ports import Store
from tests.store.builders import T0, incident, iw, txn
from tests.store.conftest import Db, set_lease


def note(event_id: str, *, notice: str = "I1", merchant: str = "M1", type_: str = "notice.opened",
         status: str = "pending", due: float = T0, receiver: str = "sms", body: str = "{}") -> NotificationWrite:
    return NotificationWrite(event_id, receiver, merchant, notice, type_, "", status, due, T0, "[]", body)


async def test_an_event_commits_with_its_incident_change_or_not_at_all(store: Store) -> None:
    inc = incident(1)
    await store.write([iw(inc), note("E1")])
    [row] = await store.due_notifications(T0, 10)
    assert (row.event_id, row.status, row.attempts, row.last_error, row.sent_at) == ("E1", "pending", 0, None, None)
    # A failing write (a second open incident for one key) keeps none of its rows, the event neither.
    with pytest.raises(StoreError):
        await store.write([iw(incident(2, key=inc.key)), note("E2")])
    assert [r.event_id for r in await store.due_notifications(T0, 10)] == ["E1"]


async def test_a_pending_row_is_rewritten_in_place_and_a_delivered_one_never(store: Store) -> None:
    await store.write([note("E1", body='{"v":1}'), note("E2", notice="I2")])
    await store.record_deliveries([DeliveryResult("E1", "pending", 2, T0 + 30, "HTTP 503", None)])
    await store.write([note("E1", body='{"v":2}', due=T0 + 5)])
    assert [r.event_id for r in await store.due_notifications(T0 + 29, 10)] == ["E2"]  # E1 waits to retry
    [e1] = [r for r in await store.due_notifications(T0 + 30, 10) if r.event_id == "E1"]
    assert (e1.body, e1.due_at, e1.attempts, e1.next_at, e1.last_error) == ('{"v":2}', T0 + 5, 2, T0 + 30, "HTTP 503")
    await store.record_deliveries([DeliveryResult("E1", "sent", 3, T0 + 31, None, T0 + 31)])
    await store.write([note("E1", status="collapsed", body='{"v":3}')])  # too late: it was sent
    await store.record_deliveries([DeliveryResult("E1", "failed", 4, T0 + 40, "late", None)])  # also too late
    [sent] = (await store.list_notifications(status="sent"))[0]
    assert (sent.event_id, sent.body, sent.attempts, sent.sent_at) == ("E1", '{"v":2}', 3, T0 + 31)


async def test_due_rows_come_in_insertion_order_and_only_when_due(store: Store) -> None:
    await store.write([note("B", due=T0 + 1), note("A", notice="I2", due=T0), note("C", due=T0 + 100)])
    await store.write([note("D", notice="I3", due=T0)])
    assert [r.event_id for r in await store.due_notifications(T0 + 1, 10)] == ["B", "A", "D"]
    assert [r.event_id for r in await store.due_notifications(T0 + 1, 2)] == ["B", "A"]
    await store.write([note("A", notice="I2", status="collapsed")])
    assert [r.event_id for r in await store.due_notifications(T0 + 1, 10)] == ["B", "D"]
    assert await store.count_pending_notifications() == 3


async def test_the_restart_state_is_every_pending_row_and_each_notices_last_told_row(store: Store) -> None:
    await store.write([note("O1", notice="N1"), note("O2", notice="N2"), note("O3", notice="N3"),
                       note("D1", notice="", type_="notice.digest", due=T0 + 900)])
    await store.write([note("U1", notice="N1", type_="notice.updated"), note("R2", notice="N2",
                                                                           type_="notice.resolved"),
                       note("X3", notice="N3", type_="notice.updated", status="collapsed")])
    await store.record_deliveries([DeliveryResult(e, "sent", 1, T0, None, T0) for e in ("O1", "O2", "O3", "U1", "R2")])
    state = await store.load_notification_state()
    assert [r.event_id for r in state] == ["O3", "D1", "U1"]


async def test_listing_pages_newest_first_by_status_and_merchant(store: Store) -> None:
    await store.write([note(f"E{n}", notice=f"N{n}", merchant=f"M{n % 2}") for n in range(5)])
    await store.write([note("C", notice="NC", status="collapsed")])
    await store.record_deliveries([DeliveryResult("E0", "failed", 1, T0, "HTTP 400", None)])
    page, cursor = await store.list_notifications(limit=2)
    assert [r.event_id for r in page] == ["E4", "E3"]
    assert cursor is not None
    page, cursor = await store.list_notifications(limit=2, cursor=cursor)
    assert [r.event_id for r in page] == ["E2", "E1"]
    page, cursor = await store.list_notifications(limit=2, cursor=cursor)
    assert ([r.event_id for r in page], cursor) == (["E0"], None)
    assert [r.event_id for r in (await store.list_notifications(status="pending", merchant_id="M0"))[0]] == [
        "E4", "E2"]
    [failed] = (await store.list_notifications(status="failed"))[0]
    assert (failed.event_id, failed.last_error) == ("E0", "HTTP 400")
    assert [r.event_id for r in (await store.list_notifications(status="collapsed"))[0]] == ["C"]
    for bad in ({"status": "open"}, {"cursor": "nope"}, {"limit": 0}):
        with pytest.raises(BadRequest):
            await store.list_notifications(**bad)


async def test_delivery_results_are_fenced_like_every_write(store: Store, store_db: Db | None) -> None:
    await store.write([note("E1"), TxnWrite(txn("T1", "A"))])
    await set_lease(store, store_db, 7)
    store.fence(7)
    await set_lease(store, store_db, 8)
    with pytest.raises(StoreError, match="lease"):
        await store.record_deliveries([DeliveryResult("E1", "sent", 1, T0, None, T0)])
    store.fence(None)
    assert [r.status for r in await store.due_notifications(T0, 10)] == ["pending"]


async def test_a_notice_waits_behind_its_own_earlier_event_and_others_go_past(store: Store) -> None:
    """Per receiver and notice, only the oldest pending row is due: a retry holds back the notice's
    resolve, not another notice, and not the same notice at another receiver."""
    await store.write([note("O1", notice="N1"), note("O2", notice="N2"), note("R1", notice="N1",
                                                                             type_="notice.resolved"),
                       note("A1", notice="N1", receiver="app"), note("D1", notice="", type_="notice.digest"),
                       note("D2", notice="", type_="notice.digest")])
    await store.record_deliveries([DeliveryResult("O1", "pending", 1, T0 + 60, "HTTP 503", None)])
    assert [r.event_id for r in await store.due_notifications(T0, 10)] == ["O2", "A1", "D1", "D2"]
    assert [r.event_id for r in await store.due_notifications(T0 + 60, 10)] == ["O1", "O2", "A1", "D1", "D2"]
    await store.record_deliveries([DeliveryResult("O1", "sent", 2, T0 + 60, None, T0 + 60)])
    assert [r.event_id for r in await store.due_notifications(T0 + 60, 10)] == ["O2", "R1", "A1", "D1", "D2"]


async def test_one_upstream_notice_is_one_queue_per_merchant(store: Store) -> None:
    """A host outage is one notice id for many shops: each shop's event is due on its own."""
    await store.write([note(f"U{m}", notice="UP", merchant=f"M{m}") for m in range(5)])
    assert [r.event_id for r in await store.due_notifications(T0, 10)] == [f"U{m}" for m in range(5)]
    await store.record_deliveries([DeliveryResult(f"U{m}", "sent", 1, T0, None, T0) for m in range(5)])
    assert [r.event_id for r in await store.load_notification_state()] == [f"U{m}" for m in range(5)]


async def test_retention_deletes_done_rows_but_each_notices_last_told_one(store: Store) -> None:
    old = T0 - 100
    rows = [NotificationWrite(e, "sms", "M1", n, t, "", "pending", old, old, "[]", "{}") for e, n, t in (
        ("O1", "N1", "notice.opened"), ("U1", "N1", "notice.updated"),   # N1 still open: U1 is its last told row
        ("O2", "N2", "notice.opened"), ("R2", "N2", "notice.resolved"),  # N2 over: both go
        ("P3", "N3", "notice.opened"),                                   # still pending: kept
        ("D4", "", "notice.digest"))]                                    # a sent digest: goes
    await store.write(rows)
    await store.write([note("C5", notice="N5", status="collapsed")])
    await store.record_deliveries([DeliveryResult(e, "sent", 1, old, None, old)
                                   for e in ("O1", "U1", "O2", "R2", "D4")])
    assert await store.delete_expired("notifications", T0 - 50, 2) == {"notifications": 2}
    assert await store.delete_expired("notifications", T0 - 50, 10) == {"notifications": 2}
    assert await store.delete_expired("notifications", T0 - 50, 10) == {"notifications": 0}
    left = {r.event_id for r in (await store.list_notifications(status="all"))[0]}
    assert left == {"U1", "P3"}
    assert (await store.list_notifications(status="collapsed"))[0] != []  # C5 is newer than the cut-off
