"""The store contract: SQLite, PostgreSQL and the in-memory fake give the same answers.

Every test here runs three times (``store`` is parametrised in conftest.py); what only
a database can show (migrations, reopening, the rows on disk) is in test_databases.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from typing import Any

import pytest

from fleetwatch.core.model import (
    AcquirerStatus,
    AcquirerStatusWrite,
    BatchRecord,
    Effect,
    IncidentEvent,
    IncidentWrite,
    MerchantHoursRecord,
    MerchantHoursWrite,
    SettlementWrite,
    TerminalNoticeWrite,
    TerminalRecord,
    TxnWrite,
    UpstreamMembersWrite,
)
from fleetwatch.errors import StoreError
from fleetwatch.ports import Store
from tests.store.builders import (
    T0,
    dead_letter,
    full_batch,
    full_incident,
    full_terminal,
    incident,
    iw,
    txn,
)
from tests.store.conftest import Db, set_lease

# ---- writes round-trip ---------------------------------------------------------------


async def test_round_trip_of_every_record_type(store: Store) -> None:
    """Every field of every record type comes back equal, and of the same type (bools stay bools)."""
    term, batch, inc = full_terminal(), full_batch(), full_incident()
    event = IncidentEvent(inc.id, T0 + 9.5, "cause_changed", {"from": "weak_signal", "to": "comm_errors"})
    dl = dead_letter(1)
    await store.write([IncidentWrite(inc, event), dl], terminals=[term], batches=[batch])

    loaded_term = await store.get_terminal(term.terminal_id)
    assert loaded_term == term
    assert loaded_term is not None
    assert type(loaded_term.charging) is bool
    assert type(loaded_term.tamper) is bool
    assert [t async for chunk in store.terminal_chunks() for t in chunk] == [term]
    batches = await store.load_open_batches()
    assert batches == [batch]
    assert type(batches[0].watch) is bool
    loaded_inc = await store.get_incident(inc.id)
    assert loaded_inc == inc
    assert loaded_inc is not None
    assert type(loaded_inc.suppressed) is bool
    assert await store.load_open_incidents() == [inc]
    assert await store.incident_events(inc.id) == [event]
    assert await store.recent_dead_letters(10) == [dl]


async def test_write_snapshots_objects_at_call_time(store: Store) -> None:
    """write() copies rows when called: changes the engine makes before the commit runs do not leak in."""
    inc, term = incident(1), TerminalRecord("T1", battery_pct=50)
    pending = store.write([iw(inc)], terminals=[term])
    inc.status, inc.evidence["later"] = "resolved", True
    term.battery_pct = 10
    await pending
    stored = await store.get_incident(inc.id)
    assert stored is not None
    assert (stored.status, stored.evidence) == ("open", {})
    stored_term = await store.get_terminal("T1")
    assert stored_term is not None
    assert stored_term.battery_pct == 50


async def test_incident_upserts_by_id_with_one_event_per_write(store: Store) -> None:
    """Writing an incident again updates its row in place and appends one audit event per write."""
    inc = incident(1)
    await store.write([iw(inc)])
    inc.status, inc.resolved_at, inc.updated_at = "resolved", T0 + 50, T0 + 50
    await store.write([iw(inc, "resolved")])
    assert await store.get_incident(inc.id) == inc
    assert [e.type for e in await store.incident_events(inc.id)] == ["opened", "resolved"]
    assert await store.load_open_incidents() == []


async def test_one_write_may_carry_several_snapshots_of_one_row(store: Store) -> None:
    """An incident opened and updated, a terminal and a batch written twice in one write: the last
    snapshot wins, every event is kept in order (PostgreSQL refuses to update one row twice in a
    statement, so the shared row code folds them)."""
    inc = incident(1)
    first = iw(dataclasses.replace(inc))
    inc.severity, inc.updated_at = "critical", T0 + 3
    second = IncidentWrite(dataclasses.replace(inc), IncidentEvent(inc.id, T0 + 3, "escalated", {}))
    await store.write(
        [first, second],
        terminals=[TerminalRecord("T1", seq=1), TerminalRecord("T2"), TerminalRecord("T1", seq=2)],
        batches=[BatchRecord("T1", 1, "CNY", "M1", tally_count=1), BatchRecord("T1", 1, "CNY", "M1", tally_count=2)],
    )
    stored = await store.get_incident(inc.id)
    assert stored is not None
    assert stored.severity == "critical"
    assert [e.type for e in await store.incident_events(inc.id)] == ["opened", "escalated"]
    page, _ = await store.list_terminals()
    assert [(t.terminal_id, t.seq) for t in page] == [("T1", 2), ("T2", None)]
    assert [b.tally_count for b in await store.load_open_batches()] == [2]


async def test_terminals_and_batches_upsert(store: Store) -> None:
    """A second write of a terminal or batch replaces the first; a done batch is not restored."""
    await store.write([], terminals=[TerminalRecord("T1", seq=1)], batches=[BatchRecord("T1", 1, "CNY", "M1")])
    done = BatchRecord("T1", 1, "CNY", "M1", tally_count=4, done=True)
    await store.write([], terminals=[TerminalRecord("T1", seq=2)], batches=[done])
    assert await store.get_terminal("T1") == TerminalRecord("T1", seq=2)
    assert await store.count_terminals() == 1
    assert await store.load_open_batches() == []
    assert await store.batches_for("M1") == [done]


async def test_duplicate_txn_is_stored_once(store: Store) -> None:
    """A QoS 1 redelivery (same terminal_id, txn_id) is stored once, within one write and across writes."""
    first = txn("T1", "A", received_at=T0)
    await store.write([TxnWrite(first), TxnWrite(dataclasses.replace(first, received_at=T0 + 1))])
    await store.write([TxnWrite(dataclasses.replace(first, received_at=T0 + 2)), TxnWrite(txn("T2", "A", T0 + 3))])
    assert await store.load_recent_txn_keys(10) == [("T1", "A"), ("T2", "A")]


async def test_text_with_a_nul_character_does_not_fail_a_write(store: Store) -> None:
    """A garbled payload's NUL character (dead letter excerpt, firmware string) neither fails the
    write nor cuts the text: every backend keeps U+FFFD in its place (PostgreSQL's text cannot hold
    U+0000, SQLite's JSON functions stop at it)."""
    letter = dataclasses.replace(dead_letter(1), payload_excerpt='{"x":"\x00"}')
    await store.write([letter], terminals=[TerminalRecord("T1", fw="2.4\x00-beta", app="pay\\u0000")])
    (kept,) = await store.recent_dead_letters(1)
    assert kept.payload_excerpt == '{"x":"\ufffd"}'
    term = await store.get_terminal("T1")
    assert term is not None
    assert (term.fw, term.app) == ("2.4\ufffd-beta", "pay\\u0000")


# ---- one open incident per key, atomicity ----------------------------------------------

async def test_second_open_incident_with_same_key_is_rejected(store: Store) -> None:
    """Two open incidents with one key are refused: the write fails with StoreError, nothing of it is kept."""
    await store.write([iw(incident(1, key="terminal|T1|printer"))])
    with pytest.raises(StoreError):
        await store.write([iw(incident(2, key="terminal|T1|printer", status="acknowledged")),
                           TxnWrite(txn("T1", "X"))])
    assert await store.get_incident("inc-00002") is None
    assert await store.load_recent_txn_keys(5) == []


async def test_resolved_and_open_incident_may_share_a_key(store: Store) -> None:
    """Resolved incidents do not count: one open plus any number of resolved ones share a key."""
    key = "terminal|T1|printer"
    old = incident(1, key=key)
    await store.write([iw(old)])
    old.status = "resolved"
    await store.write([iw(old, "resolved"), iw(incident(2, key=key, status="resolved")), iw(incident(3, key=key))])
    assert [i.id for i in await store.load_open_incidents()] == ["inc-00003"]


async def test_failed_write_leaves_nothing_of_its_batch(store: Store) -> None:
    """A write that fails part-way is rolled back whole, and the store keeps working afterwards."""
    await store.write([iw(incident(1, key="k"))])
    doomed: list[Effect] = [TxnWrite(txn("T9", "X")), dead_letter(1), iw(incident(2)), iw(incident(3, key="k"))]
    with pytest.raises(StoreError):
        await store.write(doomed, terminals=[TerminalRecord("T9")], batches=[BatchRecord("T9", 1, "CNY", "M1")])
    assert await store.load_recent_txn_keys(5) == []
    assert await store.recent_dead_letters(5) == []
    assert await store.count_terminals() == 0
    assert await store.load_open_batches() == []
    assert [i.id for i in await store.load_open_incidents()] == ["inc-00001"]
    assert len(await store.incident_events("inc-00001")) == 1
    await store.write([TxnWrite(txn("T9", "X"))])
    assert await store.load_recent_txn_keys(5) == [("T9", "X")]


async def test_store_usable_after_cancelled_write(store: Store) -> None:
    """A write cancelled mid-flight rolls back its transaction, so the next write can begin."""
    task = asyncio.ensure_future(store.write([dead_letter(n) for n in range(3)]))
    await asyncio.sleep(0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await store.write([TxnWrite(txn("T1", "A"))])
    assert await store.load_recent_txn_keys(5) == [("T1", "A")]


async def test_closed_store_raises_store_error(store: Store) -> None:
    """Using a closed store is a StoreError (never a hang); close() twice is fine."""
    await store.close()
    await store.close()
    with pytest.raises(StoreError):
        await store.write([dead_letter(1)])
    with pytest.raises(StoreError):
        await store.count_terminals()


async def test_fenced_store_writes_only_while_the_lease_holds_its_token(store: Store, store_db: Db | None) -> None:
    """With a fencing token set, a write commits only while the lease row holds that token: once
    another instance took the lease over (a new token), every write fails and nothing of it is kept."""
    await set_lease(store, store_db, 7)
    store.fence(7)
    await store.write([TxnWrite(txn("T1", "A"))])
    await set_lease(store, store_db, 8)
    with pytest.raises(StoreError, match="lease"):
        await store.write([TxnWrite(txn("T1", "B"))])
    with pytest.raises(StoreError, match="lease"):
        await store.delete_expired("transactions", T0 + 10, 10)
    store.fence(None)
    assert await store.load_recent_txn_keys(5) == [("T1", "A")]


# ---- restore side ----------------------------------------------------------------------

async def test_recent_txn_keys_are_the_newest_oldest_first(store: Store) -> None:
    """load_recent_txn_keys(n) returns the n most recently received txns, in chronological order."""
    await store.write([TxnWrite(txn("T1", f"X{i}", received_at=T0 + i)) for i in (3, 1, 4, 0, 2)])
    assert await store.load_recent_txn_keys(3) == [("T1", "X2"), ("T1", "X3"), ("T1", "X4")]
    assert await store.load_recent_txn_keys(0) == []


async def test_terminals_stream_in_chunks(store: Store) -> None:
    """A fleet larger than one chunk comes back whole, each terminal once, in bounded chunks."""
    terms = [TerminalRecord(f"T{i:06d}", merchant_id=f"M{i % 7}", seq=i) for i in range(25_000)]
    await store.write([], terminals=terms)
    sizes: list[int] = []
    seen: dict[str, int | None] = {}
    async for chunk in store.terminal_chunks():
        sizes.append(len(chunk))
        seen.update((t.terminal_id, t.seq) for t in chunk)
    assert len(sizes) >= 2
    assert max(sizes) <= 20_000
    assert seen == {t.terminal_id: t.seq for t in terms}


# ---- read side -------------------------------------------------------------------------

async def test_listing_pages_newest_first_without_duplicates(store: Store) -> None:
    """250 incidents paged 100 at a time: 3 pages, every incident once, newest first by (opened_at, id)."""
    incs = [incident(n, opened_at=T0 + n // 3) for n in range(250)]  # ties: the id breaks them
    await store.write([iw(i) for i in incs])
    seen: list[str] = []
    pages, cursor = 0, None
    while True:
        items, cursor = await store.list_incidents(limit=100, cursor=cursor)
        pages += 1
        seen += [i.id for i in items]
        if cursor is None:
            break
    assert pages == 3
    assert seen == [i.id for i in sorted(incs, key=lambda i: (i.opened_at, i.id), reverse=True)]


MIXED_IDS = ["a1", "B2", "T-1", "T.1", "t1", "T1", "_x", "Z", "T-10", "T10"]
"""Ids whose order differs between byte order and a language's collation (en-US puts a before B)."""


async def test_text_keys_order_by_code_point(store: Store) -> None:
    """Terminals and incident ties sort by code point on every backend (COLLATE "C" on PostgreSQL,
    whose test cluster defaults to ICU en-US), page by page."""
    await store.write([], terminals=[TerminalRecord(t) for t in MIXED_IDS])
    expected = sorted(MIXED_IDS)
    listed: list[str] = []
    cursor = None
    while True:
        page, cursor = await store.list_terminals(limit=3, cursor=cursor)
        listed += [t.terminal_id for t in page]
        if cursor is None:
            break
    assert listed == expected
    await store.write([iw(dataclasses.replace(incident(0), id=i, key=f"k{i}", opened_at=T0)) for i in MIXED_IDS])
    items, _ = await store.list_incidents(limit=100)
    assert [i.id for i in items] == sorted(MIXED_IDS, reverse=True)


async def test_listing_status_semantics(store: Store) -> None:
    """status=open includes acknowledged; acknowledged/resolved are exact; all is everything."""
    await store.write([iw(incident(1, status="open")), iw(incident(2, status="acknowledged")),
                       iw(incident(3, status="resolved"))])

    async def ids(status: str) -> list[str]:
        items, _ = await store.list_incidents(status=status)
        return [i.id for i in items]

    assert await ids("open") == ["inc-00002", "inc-00001"]
    assert await ids("acknowledged") == ["inc-00002"]
    assert await ids("resolved") == ["inc-00003"]
    assert await ids("all") == ["inc-00003", "inc-00002", "inc-00001"]
    with pytest.raises(ValueError, match="status"):
        await store.list_incidents(status="closed")


async def test_listing_filters(store: Store) -> None:
    """kind, terminal_id, merchant_id and scope filters combine with AND."""
    fleet = dataclasses.replace(incident(4, kind="host_outage"), scope="fleet", terminal_id=None, merchant_id=None)
    await store.write([
        iw(incident(1, terminal_id="T1", merchant_id="M1", kind="printer")),
        iw(incident(2, terminal_id="T2", merchant_id="M1", kind="network")),
        iw(incident(3, terminal_id="T3", merchant_id="M2", kind="printer")),
        iw(fleet),
    ])

    async def ids(**filters: Any) -> list[str]:
        items, _ = await store.list_incidents(**filters)
        return [i.id for i in items]

    assert await ids(kind="printer") == ["inc-00003", "inc-00001"]
    assert await ids(merchant_id="M1") == ["inc-00002", "inc-00001"]
    assert await ids(merchant_id="M1", kind="printer") == ["inc-00001"]
    assert await ids(terminal_id="T2") == ["inc-00002"]
    assert await ids(scope="fleet") == ["inc-00004"]
    assert await ids(terminal_id="nope") == []


@pytest.mark.parametrize("cursor", ["garbage!", "", "e30", "WzEsMl0", "eyJvIjoiMSIsImkiOiJ4In0"])
async def test_bad_cursor_is_value_error(store: Store, cursor: str) -> None:
    """A cursor we did not issue (not base64, not JSON, wrong shape or types) raises ValueError."""
    with pytest.raises(ValueError, match="cursor"):
        await store.list_incidents(cursor=cursor)
    with pytest.raises(ValueError, match="cursor"):
        await store.list_terminals(cursor=cursor)


async def test_bad_limit_is_value_error(store: Store) -> None:
    """A page size outside 1..MAX_PAGE is refused rather than silently clamped."""
    with pytest.raises(ValueError, match="limit"):
        await store.list_incidents(limit=0)
    with pytest.raises(ValueError, match="limit"):
        await store.list_terminals(limit=100_000)


async def test_get_missing_returns_none(store: Store) -> None:
    """Unknown ids are None / empty, not errors (the API answers 404)."""
    assert await store.get_incident("nope") is None
    assert await store.incident_events("nope") == []
    assert await store.get_terminal("nope") is None


async def test_terminal_listing_pages_and_filters(store: Store) -> None:
    """Terminals list in terminal_id order, page by cursor, filter by merchant; count counts all."""
    terms = [TerminalRecord(f"T{i:03d}", merchant_id=f"M{i % 2}") for i in range(25)]
    await store.write([], terminals=terms)
    page1, cursor = await store.list_terminals(limit=10)
    page2, cursor2 = await store.list_terminals(limit=10, cursor=cursor)
    page3, cursor3 = await store.list_terminals(limit=10, cursor=cursor2)
    assert [t.terminal_id for t in page1 + page2 + page3] == [t.terminal_id for t in terms]
    assert cursor3 is None
    m1, next_cursor = await store.list_terminals(merchant_id="M1", limit=100)
    assert [t.terminal_id for t in m1] == [f"T{i:03d}" for i in range(1, 25, 2)]
    assert next_cursor is None
    assert await store.count_terminals() == 25


async def test_dead_letters_trimmed_to_newest_n(store: Store) -> None:
    """Only the newest dead_letters_kept (5 here) survive, however many writes brought them."""
    await store.write([dead_letter(n) for n in range(4)])
    await store.write([dead_letter(n) for n in range(4, 9)])
    assert [d.detail for d in await store.recent_dead_letters(100)] == [f"bad #{n}" for n in range(8, 3, -1)]
    assert [d.detail for d in await store.recent_dead_letters(2)] == ["bad #8", "bad #7"]


async def test_batches_for_filters_by_business_day_and_terminal(store: Store) -> None:
    """batches_for(merchant, date, terminal) selects by the derived business day, in key order."""
    settled = full_batch()  # business_date 2026-11-22, though its first approval is 2026-11-23 UTC
    unsettled = BatchRecord("T00012345", 18, "CNY", "M0042", first_approved_ts_ms=1_795_490_000_000)  # 11-24
    other_terminal = BatchRecord("T2", 5, "USD", "M0042", first_approved_ts_ms=1_795_357_532_000)  # 11-22
    other_merchant = BatchRecord("T3", 1, "CNY", "M9", first_approved_ts_ms=1_795_357_532_000)
    await store.write([], batches=[unsettled, other_merchant, settled, other_terminal])
    assert await store.batches_for("M0042") == [settled, unsettled, other_terminal]
    assert await store.batches_for("M0042", "2026-11-22") == [settled, other_terminal]
    assert await store.batches_for("M0042", "2026-11-24") == [unsettled]
    assert await store.batches_for("M0042", "2026-11-23") == []
    assert await store.batches_for("M0042", "2026-11-22", terminal_id="T2") == [other_terminal]


async def test_settlement_rows_are_accepted(store: Store) -> None:
    """A host Settlement is stored as audit (matching lives in the batch record)."""
    settlement = SettlementWrite(
        terminal_id="T1", merchant_id="M1", batch_no=17, currency="CNY", business_date="2026-11-22",
        settled_count=132, settled_amount_minor=1_532_000, credited_at_ms=1_795_530_000_000, received_at=T0,
    )
    await store.write([settlement])
    assert await store.delete_expired("settlements", T0 + 1, 10) == {"settlements": 1}


# ---- merchant notices and generated secrets (migration 0002) ---------------------------------

async def test_a_generated_secret_is_kept_once(store: Store) -> None:
    """The first candidate wins; every later caller (another instance on the store) gets it."""
    assert await store.secret("notice.link_key", "aaa") == "aaa"
    assert await store.secret("notice.link_key", "bbb") == "aaa"
    assert await store.secret("http.api_token", "ccc") == "ccc"


async def test_upstream_members_feed_the_restore_and_the_merchant_page(store: Store) -> None:
    """Members of an open upstream come back for the restore (each once); a merchant's notice read
    finds the upstream through its terminals alone, plus its own incidents and their ancestors."""
    upstream = dataclasses.replace(incident(1, kind="host_outage", key="fleet|host_outage"),
                                   scope="fleet", terminal_id=None, merchant_id=None)
    child = dataclasses.replace(incident(2, terminal_id="T5", merchant_id="M2", kind="network"),
                                parent_id=upstream.id, suppressed=True)
    old = dataclasses.replace(incident(3, merchant_id="M2", terminal_id="T6", status="resolved"), resolved_at=T0 - 10)
    gone = dataclasses.replace(incident(4, kind="host_outage", key="fleet|host_outage|4", status="resolved"),
                               scope="fleet", terminal_id=None, merchant_id=None, resolved_at=T0 - 500)
    await store.write([iw(upstream), iw(child), iw(old), iw(gone),
                       UpstreamMembersWrite(upstream.id, (("T8", "M3"), ("T7", "M2")), T0),
                       UpstreamMembersWrite(upstream.id, (("T7", "M2"),), T0 + 1),
                       UpstreamMembersWrite(gone.id, (("T7", "M2"),), T0 - 600)])
    assert await store.load_open_upstream_members() == {upstream.id: [("T7", "M2"), ("T8", "M3")]}
    found, members = await store.merchant_notice_incidents("M2", T0 - 100)
    assert sorted(i.id for i in found) == sorted([upstream.id, child.id, old.id])
    assert members == {upstream.id: {"T7"}}
    found, members = await store.merchant_notice_incidents("M2", T0)
    assert old.id not in {i.id for i in found}
    assert await store.merchant_notice_incidents("M9", T0 - 100) == ([], {})
    assert await store.delete_expired("incidents", T0 - 400, 10) == {
        "incidents": 1, "incident_events": 1, "upstream_terminals": 1}


async def test_terminal_notices_keep_the_last_acknowledged(store: Store) -> None:
    """One row per terminal, the last acknowledged payload (None: cleared); shown_only leaves out
    cleared screens and screens given an empty list."""
    await store.write([TerminalNoticeWrite("T1", "M1", '{"items":[1]}', T0),
                       TerminalNoticeWrite("T1", "M1", '{"items":[]}', T0 + 1),
                       TerminalNoticeWrite("T2", "M1", None, T0 + 2)])
    await store.write([TerminalNoticeWrite("T3", "M1", '{"v":1,"items":[{"title":"x"}]}', T0)])
    assert await store.load_terminal_notices() == [
        TerminalNoticeWrite("T1", "M1", '{"items":[]}', T0 + 1), TerminalNoticeWrite("T2", "M1", None, T0 + 2),
        TerminalNoticeWrite("T3", "M1", '{"v":1,"items":[{"title":"x"}]}', T0)]
    assert [r.terminal_id for r in await store.load_terminal_notices(shown_only=True)] == ["T3"]


# ---- the terminal lifecycle (migration 0004) -----------------------------------------------------


async def test_acquirer_statuses_come_back_by_terminal_and_the_last_write_wins(store: Store) -> None:
    """A status for a terminal not seen yet and one applied come back as written, by terminal_id; a
    later write of a terminal's status replaces it, also twice in one write."""
    waiting = AcquirerStatus("T2", "suspended", "risk_review", "交易异常，需提供交易凭证", T0, 1_795_447_531_123,
                             "M0042", T0 + 1.5)
    closed = AcquirerStatus("T1", "closed", None, None, T0 - 10, 5, None, T0)
    await store.write([AcquirerStatusWrite(waiting), AcquirerStatusWrite(closed, "M1")])
    assert await store.load_acquirer_statuses() == [closed, waiting]
    cleared = dataclasses.replace(waiting, status="active", reason=None, note=None, since=T0 + 9)
    await store.write([AcquirerStatusWrite(dataclasses.replace(waiting, note="x")), AcquirerStatusWrite(cleared)])
    assert await store.load_acquirer_statuses() == [closed, cleared]


async def test_merchant_hours_keep_a_history_wider_than_any_integer_column(store: Store) -> None:
    """The packed history of 16 learned days is 408 bits: it comes back exact; configured hours come
    back as the JSON they were; the last write of a merchant wins."""
    history = (1 << 407) | (0b1011 << 200) | 12345
    configured = {"timezone": "Asia/Shanghai", "weekly": {"mon": ["08:00-22:00"], "sat": ["10:00-02:00"]}}
    rec = MerchantHoursRecord("M1", learned=history, learn_days=16, day=20_454, today=(1 << 47) | 3,
                              configured=configured)
    bare = MerchantHoursRecord("M0", learned=None, learn_days=7, day=0, today=0, configured=None)
    await store.write([MerchantHoursWrite(dataclasses.replace(rec, today=0)), MerchantHoursWrite(bare),
                       MerchantHoursWrite(rec)])
    assert await store.load_merchant_hours() == [bare, rec]
    await store.write([MerchantHoursWrite(dataclasses.replace(rec, configured=None))])
    assert [h.configured for h in await store.load_merchant_hours()] == [None, None]
