"""The shared row code: business days, prepared writes (fleetwatch/storage/rows.py)."""

from __future__ import annotations

from fleetwatch.core.model import BatchRecord, TerminalRecord, TxnWrite
from fleetwatch.storage.rows import TERMINALS, business_day, last_per_key, prepare, terminal_row
from tests.store.builders import dead_letter, incident, iw, txn


def test_business_day_prefers_settlement_then_first_approval_then_close() -> None:
    """A batch's business day: the acquirer's business_date, else the UTC date of its first
    approval, else of its close."""
    b = BatchRecord("T1", 1, "CNY", "M1")
    assert business_day(b) is None
    b.close_ts_ms = 1_795_490_000_000  # 2026-11-24T03:13Z
    assert business_day(b) == "2026-11-24"
    b.first_approved_ts_ms = 1_795_447_532_000  # 2026-11-23T15:25Z
    assert business_day(b) == "2026-11-23"
    b.business_date = "2026-11-21"
    assert business_day(b) == "2026-11-21"
    b.business_date, b.first_approved_ts_ms = None, 10**20  # absurd terminal clock
    assert business_day(b) is None
    b.first_approved_ts_ms = 1_795_478_399_999  # the last millisecond of 2026-11-23 (UTC)
    assert business_day(b) == "2026-11-23"
    b.first_approved_ts_ms = -1  # the last millisecond before the epoch
    assert business_day(b) == "1969-12-31"


def test_prepare_counts_rows() -> None:
    """prepare() snapshots effects into per-table rows: one incident row and one event per IncidentWrite."""
    prepared = prepare(
        [iw(incident(1)), TxnWrite(txn("T1", "A")), dead_letter(1)], terminals=[TerminalRecord("T1")]
    )
    assert prepared.row_count == 5
    assert len(prepared.incidents) == len(prepared.events) == 1



def test_last_per_key_keeps_first_position_and_last_value() -> None:
    """Upserted rows are folded per key: where the key first appeared, with its last snapshot."""
    rows = [terminal_row(TerminalRecord("T1", seq=1)), terminal_row(TerminalRecord("T2")),
            terminal_row(TerminalRecord("T1", seq=2))]
    folded = last_per_key(TERMINALS, rows)
    assert [(r[0], r[TERMINALS.columns.index("seq")]) for r in folded] == [("T1", 2), ("T2", None)]
    assert last_per_key(TERMINALS, rows[:2]) == rows[:2]
