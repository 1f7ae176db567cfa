"""SettlementBook: the settlement-gap (不进账) rules, fed purely with virtual time.

Every test drives the book the way the Engine does: messages at their receive time and
``tick()`` every 0.25 s of virtual time in between, then looks at the Findings and
Clears that came out (folded into "incidents" the way the incident book keys them).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest

from fleetwatch.config import SettlementSettings
from fleetwatch.core.messages import BatchClose, Heartbeat, Saf, Settlement, TxnResult
from fleetwatch.core.model import BatchRecord, Clear, Finding, Incident, Signal, TxnRecord
from fleetwatch.core.settlement import (
    SettlementBook,
    format_money,
    minor_to_major,
    money_at_stake,
    parse_gap_key,
    reconcile_day,
)
from tests.core.source_annotations import annotations_in_source, value_of_type

DATA = Path(__file__).resolve().parents[1] / "data"
CFG = SettlementSettings(batch_close_deadline_s=6, settlement_deadline_s=6, saf_max_age_s=3600)
TICK = 0.25


# ---- message builders -------------------------------------------------------------

def txn(
    txn_id: str, amount: int, type_: str = "sale", outcome: str = "approved", *,
    tid: str = "T1", batch: int = 1, cur: str = "CNY", orig: str | None = None, ts: int = 0,
) -> TxnResult:
    return msgspec.convert(
        {"v": 1, "terminal_id": tid, "merchant_id": "M1", "ts": ts, "txn_id": txn_id,
         "batch_no": batch, "type": type_, "amount_minor": amount, "currency": cur,
         "outcome": outcome, "orig_txn_id": orig},
        TxnResult,
    )


def close(
    amount: int, count: int, *, result: str = "confirmed", tid: str = "T1", batch: int = 1,
    cur: str = "CNY",
) -> BatchClose:
    return msgspec.convert(
        {"v": 1, "terminal_id": tid, "merchant_id": "M1", "ts": 0, "batch_no": batch,
         "count": count, "amount_minor": amount, "currency": cur, "result": result},
        BatchClose,
    )


def settle(
    amount: int, count: int, *, tid: str = "T1", batch: int = 1, cur: str = "CNY",
    credited_at: int = 0,
) -> Settlement:
    return Settlement(v=1, merchant_id="M1", terminal_id=tid, batch_no=batch,
                      business_date="2026-11-22", settled_count=count, settled_amount_minor=amount,
                      currency=cur, credited_at=credited_at)


def hb(
    *, tid: str = "T1", ts: int = 0, tamper: bool = False, pending: int | None = None,
    oldest: int | None = None,
) -> Heartbeat:
    saf = Saf(pending=pending, oldest_ts=oldest) if pending is not None else None
    return Heartbeat(v=1, terminal_id=tid, merchant_id="M1", ts=ts, seq=1, saf=saf, tamper=tamper)


@dataclass(frozen=True)
class Swap:
    """A heartbeat that came with a new hardware serial (the Engine's ``serial_changed``)."""

    hb: Heartbeat


Msg = TxnResult | BatchClose | Settlement | Heartbeat | Swap
Step = tuple[float, Msg]


# ---- driving and folding ----------------------------------------------------------

@dataclass
class Outcome:
    """The signals of one run, folded into incidents by key like the incident book does."""

    log: list[tuple[float, Signal]] = field(default_factory=list)
    open: dict[str, Finding] = field(default_factory=dict)
    first: dict[str, tuple[float, Finding]] = field(default_factory=dict)
    """Per cause: when and with what the first Finding of that cause came."""
    ever: set[str] = field(default_factory=set)

    def add(self, t: float, signals: list[Signal]) -> None:
        for s in signals:
            self.log.append((t, s))
            if isinstance(s, Finding):
                self.open[s.key] = s
                self.ever.add(s.key)
                self.first.setdefault(s.cause, (t, s))
            else:
                self.open.pop(s.key, None)

    def findings(self) -> list[Finding]:
        return [s for _, s in self.log if isinstance(s, Finding)]

    def clears(self) -> list[tuple[float, Clear]]:
        return [(t, s) for t, s in self.log if isinstance(s, Clear)]


def feed(book: SettlementBook, at: float, msg: Msg) -> list[Signal]:
    """One message into the book, as the Engine would call it."""
    if isinstance(msg, TxnResult):
        return book.on_txn(msg, at)[1]
    if isinstance(msg, BatchClose):
        return book.on_batch(msg, at)
    if isinstance(msg, Settlement):
        return book.on_settlement(msg, at)[1]
    if isinstance(msg, Swap):
        return book.on_heartbeat(msg.hb, at, serial_changed=True)
    return book.on_heartbeat(msg, at, serial_changed=False)


class Clock:
    """Virtual time: ticks the book every 0.25 s up to each message's receive time."""

    def __init__(self, book: SettlementBook, out: Outcome) -> None:
        self.book, self.out, self.next_tick = book, out, TICK

    def advance(self, until: float) -> None:
        while self.next_tick <= until:
            self.out.add(self.next_tick, self.book.tick(self.next_tick))
            self.next_tick += TICK


def drive(
    steps: list[Step], until: float, book: SettlementBook | None = None
) -> tuple[Outcome, SettlementBook]:
    book = book or SettlementBook(CFG)
    out = Outcome()
    clock = Clock(book, out)
    for at, msg in steps:
        clock.advance(at)
        out.add(at, feed(book, at, msg))
    clock.advance(until)
    return out, book


def sales(*amounts: int, at: float = 1.0) -> list[Step]:
    """Approved sales s1, s2, ... at ``at``."""
    return [(at, txn(f"s{i}", a)) for i, a in enumerate(amounts, 1)]


# ---- each cause ---------------------------------------------------------------------

@dataclass(frozen=True)
class GapCase:
    name: str
    steps: list[Step]
    until: float
    opened: dict[str, int]
    """cause -> amount_minor of its first Finding; exactly these causes open."""
    open_at: dict[str, float] = field(default_factory=dict)


GAP_CASES = [
    GapCase("batch_not_closed: approved money, no BatchClose by the deadline",
            sales(10_000, 25_000), until=10, opened={"batch_not_closed": 35_000},
            open_at={"batch_not_closed": 7.0}),
    GapCase("totals_mismatch: BatchClose amount above the own tally",
            [*sales(10_000, 25_000), (2, close(40_000, 2))], until=5,
            opened={"totals_mismatch": 5_000}, open_at={"totals_mismatch": 2.0}),
    GapCase("totals_mismatch: BatchClose count differs, amounts equal (whole batch in question)",
            [*sales(10_000, 25_000), (2, close(35_000, 3))], until=5, opened={"totals_mismatch": 35_000}),
    GapCase("totals_mismatch: the terminal says the host could not confirm",
            [*sales(10_000, 25_000), (2, close(35_000, 2, result="unconfirmed"))], until=5,
            opened={"totals_mismatch": 35_000}),
    GapCase("totals_mismatch: the terminal says its totals and the host's disagree",
            [*sales(10_000, 25_000), (2, close(35_000, 2, result="mismatch"))], until=5,
            opened={"totals_mismatch": 35_000}),
    GapCase("not_settled: closed, no Settlement by the deadline",
            [*sales(10_000, 25_000), (2, close(35_000, 2))], until=10,
            opened={"not_settled": 35_000}, open_at={"not_settled": 8.0}),
    GapCase("settled_short: the host paid less than was approved",
            [*sales(10_000, 25_000), (2, close(35_000, 2)), (3, settle(30_000, 2))], until=10,
            opened={"settled_short": 5_000}, open_at={"settled_short": 3.0}),
    GapCase("settled_short: the host settled fewer transactions (amount whole)",
            [*sales(10_000, 25_000), (2, close(35_000, 2)), (3, settle(35_000, 1))], until=10,
            opened={"settled_short": 0}),
    GapCase("terminal overstated, host paid the tally: totals_mismatch only, never settled_short",
            [*sales(10_000, 25_000), (2, close(36_000, 2, result="mismatch")), (3, settle(35_000, 2))],
            until=12, opened={"totals_mismatch": 1_000}),
    GapCase("terminal and host agree but both are below the tally: mismatch and short",
            [*sales(10_000, 25_000), (2, close(30_000, 2)), (3, settle(30_000, 2))], until=5,
            opened={"totals_mismatch": 5_000, "settled_short": 5_000}),
    GapCase("settlement before its BatchClose, short: judged when the batch closes",
            [*sales(10_000, 25_000), (2, settle(30_000, 2)), (3, close(35_000, 2))], until=5,
            opened={"settled_short": 5_000}, open_at={"settled_short": 3.0}),
]


@pytest.mark.parametrize("case", GAP_CASES, ids=lambda c: c.name)
def test_each_cause_opens_with_its_amount(case: GapCase) -> None:
    """Each cause opens (and only the causes expected), with the money at stake in
    ``amount_minor``, on the right key, at the right moment, marked major/terminal."""
    out, _ = drive(case.steps, case.until)
    assert {cause: f.evidence["amount_minor"] for cause, (_, f) in out.first.items()} == case.opened
    for cause, (t, f) in out.first.items():
        assert f.key == f"terminal|T1|settlement_gap|1|CNY|{cause}"
        assert (f.kind, f.scope, f.severity, f.terminal_id, f.merchant_id) == (
            "settlement_gap", "terminal", "major", "T1", "M1")
        assert f.evidence["batch_no"] == 1
        assert f.evidence["currency"] == "CNY"
        if cause in case.open_at:
            assert t == case.open_at[cause]


def test_totals_mismatch_evidence_has_both_sides_and_difference() -> None:
    """The operator sees the terminal's figures, the own tally and the difference."""
    out, _ = drive([*sales(10_000, 25_000), (2, close(36_000, 2))], until=5)
    ev = out.first["totals_mismatch"][1].evidence
    assert (ev["close_amount_minor"], ev["tally_amount_minor"], ev["amount_difference_minor"]) == (
        36_000, 35_000, 1_000)
    assert (ev["close_count"], ev["tally_count"], ev["count_difference"]) == (2, 2, 0)


def test_batch_not_closed_summary_and_evidence() -> None:
    """The summary reads in money; evidence carries deadline and oldest approval."""
    out, _ = drive([(0.5, txn("a", 388_570, ts=1_000))], until=7)
    f = out.first["batch_not_closed"][1]
    assert f.summary == "Batch 1 (CNY 3,885.70) was never closed"
    assert f.evidence["close_deadline_at"] == 6.5
    assert f.evidence["oldest_approved_ts_ms"] == 1_000
    assert f.detected_from == 6.5


# ---- benign: nothing may open ------------------------------------------------------

NETTED = [
    (1.0, txn("s1", 100_000)),
    (1.0, txn("s2", 50_000)),
    (1.0, txn("r1", 20_000, "refund")),
    (1.0, txn("v1", 50_000, "void", orig="s2")),
    (1.0, txn("v2", 20_000, "void", orig="r1")),
    (1.0, txn("d1", 99_999, outcome="declined")),
    (1.0, txn("e1", 99_999, outcome="error")),
    (1.0, txn("x1", 99_999, outcome="cancelled")),
    (1.0, txn("p1", 80_000, "preauth")),
    (1.0, txn("c1", 70_000, "completion", orig="p1")),
    (1.0, txn("p2", 30_000, "preauth")),
    (1.0, txn("v3", 30_000, "void", orig="p2")),
]
"""Net 100,000 + 50,000 - 20,000 - 50,000 + 20,000 + 70,000 = 170,000 in 6 money-moving txns."""

BENIGN: list[tuple[str, list[Step], float]] = [
    ("settled on time", [*sales(10_000, 25_000), (2, close(35_000, 2)), (4, settle(35_000, 2))], 20),
    ("refunds, voids, preauths netted; declines never count",
     [*NETTED, (2, close(170_000, 6)), (4, settle(170_000, 6))], 20),
    ("a void without orig_txn_id subtracts its amount",
     [*sales(10_000), (1.5, txn("v", 3_000, "void")), (2, close(7_000, 2)), (3, settle(7_000, 2))], 20),
    ("settlement a moment before the deadline",
     [*sales(10_000, 25_000), (2, close(35_000, 2)), (7.99, settle(35_000, 2))], 20),
    ("a second currency in the same batch_no, closed and settled separately",
     [*sales(10_000, 25_000), (1.2, txn("u1", 900, cur="USD")), (2, close(35_000, 2)),
      (2.5, close(900, 1, cur="USD")), (3, settle(35_000, 2)), (7, settle(900, 1, cur="USD"))], 20),
    ("a settlement before its BatchClose",
     [*sales(10_000, 25_000), (2, settle(35_000, 2)), (3, close(35_000, 2))], 20),
    ("over-settlement is not a gap",
     [*sales(10_000, 25_000), (2, close(35_000, 2)), (3, settle(40_000, 2))], 20),
    ("host settled the batch in full without a BatchClose (host capture)",
     [*sales(10_000, 25_000), (3, settle(35_000, 2))], 20),
    ("tamper after the batch was closed and settled",
     [*sales(10_000), (2, close(10_000, 1)), (3, settle(10_000, 1)), (4, hb(tamper=True))], 20),
    ("nothing approved: declines only", [(1, txn("d", 5_000, outcome="declined"))], 20),
]


@pytest.mark.parametrize(("name", "steps", "until"), BENIGN, ids=[b[0] for b in BENIGN])
def test_benign_days_open_nothing(name: str, steps: list[Step], until: float) -> None:
    """Ordinary days never open a gap, and every batch finishes (leaves memory)."""
    out, book = drive(steps, until)
    assert out.findings() == [], name
    assert book.summary(until).open_batches == 0
    assert book.summary(until).open_gaps == dict.fromkeys(book.summary(until).open_gaps, 0)


def test_tally_arithmetic_and_signed_amounts() -> None:
    """Each txn's TxnRecord says its effect on the tally; the batch nets them."""
    book = SettlementBook(CFG)
    signed = {m.txn_id: book.on_txn(m, 1.0)[0].signed_amount_minor for _, m in NETTED
              if isinstance(m, TxnResult)}
    assert signed == {"s1": 100_000, "s2": 50_000, "r1": -20_000, "v1": -50_000, "v2": 20_000,
                      "d1": 0, "e1": 0, "x1": 0, "p1": 0, "c1": 70_000, "p2": 0, "v3": 0}
    rec = book.batch("T1", 1, "CNY")
    assert rec is not None
    assert (rec.tally_count, rec.tally_amount_minor) == (6, 170_000)


def test_txn_record_carries_the_message() -> None:
    """The stored txn keeps what the store and API need, nothing invented."""
    rec, signals = SettlementBook(CFG).on_txn(txn("d", 5_000, outcome="declined", ts=42), 3.5)
    assert signals == []
    assert rec == TxnRecord(terminal_id="T1", txn_id="d", merchant_id="M1", batch_no=1, currency="CNY",
                            type="sale", outcome="declined", amount_minor=5_000, ts_ms=42, received_at=3.5,
                            signed_amount_minor=0)


def test_currencies_are_never_summed() -> None:
    """Two currencies in one batch_no are two batches with their own gaps and gauges."""
    steps: list[Step] = [*sales(10_000), (1, txn("u", 900, cur="USD"))]
    out, book = drive(steps, until=8)
    assert out.ever == {"terminal|T1|settlement_gap|1|CNY|batch_not_closed",
                        "terminal|T1|settlement_gap|1|USD|batch_not_closed"}
    s = book.summary(8)
    assert s.unsettled_minor == {("CNY", "batch_not_closed"): 10_000, ("USD", "batch_not_closed"): 900}
    assert s.open_gaps["batch_not_closed"] == 2


# ---- resolution -----------------------------------------------------------------------

def _clear_for(out: Outcome, cause: str) -> tuple[float, Clear]:
    found = [(t, c) for t, c in out.clears() if c.key.endswith("|" + cause)]
    assert len(found) == 1, found
    return found[0]


def test_late_settlement_resolves_not_settled() -> None:
    """Money arriving after the deadline resolves the gap at once and says so."""
    steps: list[Step] = [*sales(10_000, 25_000), (2, close(35_000, 2)), (12, settle(35_000, 2))]
    out, book = drive(steps, until=15)
    assert out.first["not_settled"][0] == 8.0
    t, c = _clear_for(out, "not_settled")
    assert (t, c.immediate) == (12, True)
    assert c.evidence is not None
    assert (c.evidence["resolved_by"], c.evidence["resolved_at"]) == ("settlement", 12)
    assert out.open == {}
    assert book.batch("T1", 1, "CNY") is None


def test_late_short_settlement_swaps_not_settled_for_settled_short() -> None:
    """A late but short settlement resolves not_settled and opens settled_short."""
    steps: list[Step] = [*sales(10_000, 25_000), (2, close(35_000, 2)), (12, settle(30_000, 2))]
    out, _ = drive(steps, until=15)
    assert _clear_for(out, "not_settled")[0] == 12
    assert [f.cause for f in out.open.values()] == ["settled_short"]


def test_top_up_settlement_makes_short_batch_whole() -> None:
    """A further credit (different credited_at) adds up; the short gap resolves."""
    steps: list[Step] = [*sales(10_000, 25_000), (2, close(35_000, 2)),
                         (3, settle(30_000, 2, credited_at=3_000)), (9, settle(5_000, 0, credited_at=9_000))]
    out, book = drive(steps, until=12)
    assert out.first["settled_short"][1].evidence["amount_minor"] == 5_000
    t, c = _clear_for(out, "settled_short")
    assert t == 9
    assert c.evidence is not None
    assert c.evidence["resolved_by"] == "settlement"
    assert book.batch("T1", 1, "CNY") is None


def test_resent_settlement_is_not_counted_twice() -> None:
    """The same credit sent again (same credited_at) replaces, it does not add."""
    steps: list[Step] = [*sales(10_000, 25_000), (2, close(35_000, 2)),
                         (3, settle(30_000, 2, credited_at=3_000)), (4, settle(30_000, 2, credited_at=3_000))]
    out, _ = drive(steps, until=6)
    assert [f.cause for f in out.open.values()] == ["settled_short"]
    assert out.open["terminal|T1|settlement_gap|1|CNY|settled_short"].evidence["amount_minor"] == 5_000


def test_late_close_resolves_batch_not_closed() -> None:
    """The BatchClose arriving after the deadline resolves batch_not_closed."""
    out, _ = drive([*sales(10_000), (9, close(10_000, 1)), (10, settle(10_000, 1))], until=12)
    t, c = _clear_for(out, "batch_not_closed")
    assert t == 9
    assert c.evidence is not None
    assert c.evidence["resolved_by"] == "batch_close"
    assert out.open == {}


def test_full_settlement_resolves_totals_mismatch() -> None:
    """Once the host pays the own tally in full, a wrong terminal report is no money gap."""
    steps: list[Step] = [*sales(10_000, 25_000), (2, close(36_000, 2, result="mismatch")),
                         (4, settle(35_000, 2))]
    out, _ = drive(steps, until=6)
    assert _clear_for(out, "totals_mismatch")[0] == 4
    assert "settled_short" not in out.first


def test_late_txn_resolves_totals_mismatch() -> None:
    """A txn delivered after the BatchClose completes the tally; the mismatch goes away."""
    steps: list[Step] = [*sales(10_000, 25_000), (2, close(45_000, 3)), (2.5, txn("late", 10_000))]
    out, _ = drive(steps, until=5)
    t, c = _clear_for(out, "totals_mismatch")
    assert t == 2.5
    assert c.evidence is not None
    assert c.evidence["resolved_by"] == "txn"


def test_finding_reemitted_only_when_evidence_changes() -> None:
    """Ticks never repeat a Finding; new money in the open batch updates it once."""
    out, _ = drive([*sales(10_000), (12, txn("s2", 5_000))], until=20)
    amounts = [(t, s.evidence["amount_minor"]) for t, s in out.log if isinstance(s, Finding)]
    assert amounts == [(7.0, 10_000), (12, 15_000)]


def test_over_settlement_recorded() -> None:
    """Over-settlement opens nothing but the record keeps what the host paid."""
    book = SettlementBook(CFG)
    drive([*sales(10_000, 25_000), (2, close(35_000, 2)), (3, settle(40_000, 2))], until=4, book=book)
    (rec,) = book.take_dirty()
    assert (rec.settled_amount_minor, rec.tally_amount_minor, rec.done) == (40_000, 35_000, True)


def test_resent_close_or_settlement_after_done_is_ignored() -> None:
    """A repeat for a finished batch is not mistaken for a new, empty batch."""
    book = SettlementBook(CFG)
    drive([*sales(10_000), (2, close(10_000, 1)), (3, settle(10_000, 1))], until=4, book=book)
    assert book.batch("T1", 1, "CNY") is None
    book.take_dirty()
    write, signals = book.on_settlement(settle(10_000, 1), 5)
    assert signals == []
    assert write.settled_amount_minor == 10_000
    assert book.on_batch(close(10_000, 1), 5) == []
    out, _ = drive([], until=30, book=book)
    assert out.log == []
    assert book.take_dirty() == []


# ---- tamper, swap, SAF -----------------------------------------------------------------

@pytest.mark.parametrize(("msg", "reason"), [(hb(tamper=True), "tamper"), (Swap(hb()), "hardware_swap")])
def test_tamper_or_swap_puts_unclosed_money_under_watch(msg: Msg, reason: str) -> None:
    """Tamper or a new serial reports the open batch at once, before its deadline."""
    book = SettlementBook(CFG)
    out, _ = drive([*sales(10_000), (2, txn("s9", 500, batch=2)), (3, msg), (3.5, msg)], until=4, book=book)
    opened = {f.key: f for f in out.findings()}
    assert set(opened) == {"terminal|T1|settlement_gap|1|CNY|batch_not_closed",
                           "terminal|T1|settlement_gap|2|CNY|batch_not_closed"}
    f = opened["terminal|T1|settlement_gap|1|CNY|batch_not_closed"]
    assert (f.evidence["watch"], f.evidence["watch_reason"]) == (True, reason)
    assert f.evidence["amount_minor"] == 10_000
    assert len(out.findings()) == 2, "a repeated tamper beat must not re-emit"
    rec = book.batch("T1", 1, "CNY")
    assert rec is not None
    assert rec.watch


def test_watched_batch_resolves_when_it_closes() -> None:
    """A batch under watch that does close after all resolves like any other."""
    steps: list[Step] = [*sales(10_000), (3, hb(tamper=True)), (4, close(10_000, 1)), (5, settle(10_000, 1))]
    out, _ = drive(steps, until=6)
    assert _clear_for(out, "batch_not_closed")[0] == 4
    assert out.open == {}


def test_tamper_watches_only_the_batches_open_when_it_starts() -> None:
    """A terminal that keeps reporting tamper and keeps trading: its later batches, closed and
    settled on time, are not put under watch by the tamper beats that follow."""
    steps: list[Step] = [
        *sales(10_000), (2, hb(tamper=True)),                       # batch 1 open at the tamper
        (2.5, txn("b2-1", 4_000, batch=2)), (3, hb(tamper=True)),  # batch 2 opens after it
        (3.5, close(4_000, 1, batch=2)), (4, hb(tamper=True)), (4.5, settle(4_000, 1, batch=2)),
        (5, txn("b3-1", 7_000, batch=3)), (5.5, hb(tamper=True)),
        (6, close(7_000, 1, batch=3)), (6.5, settle(7_000, 1, batch=3)), (7, hb(tamper=True)),
    ]
    out, book = drive(steps, until=7.5)
    opened = {f.key for f in out.findings()}
    assert opened == {"terminal|T1|settlement_gap|1|CNY|batch_not_closed"}
    assert book.batch("T1", 1, "CNY") is not None


def test_a_new_tamper_after_a_clear_one_watches_again() -> None:
    """tamper true, then false, then true again: the second tamper watches what is open then."""
    steps: list[Step] = [
        *sales(10_000), (2, hb(tamper=True)), (2.5, close(10_000, 1)), (3, settle(10_000, 1)),
        (3.5, hb(tamper=False)), (4, txn("b2-1", 4_000, batch=2)), (4.5, hb(tamper=True)),
    ]
    out, _ = drive(steps, until=5)
    keys = [f.key for f in out.findings()]
    assert keys[0] == "terminal|T1|settlement_gap|1|CNY|batch_not_closed"
    assert keys[-1] == "terminal|T1|settlement_gap|2|CNY|batch_not_closed"


def test_tamper_known_at_start_is_not_a_new_tamper() -> None:
    """A terminal already tampered before a restart: its tamper beats after it watch nothing new."""
    book = SettlementBook(CFG)
    book.note_tampered("T1")
    out, _ = drive([(1, txn("b2-1", 4_000, batch=2)), (2, hb(tamper=True)), (3, hb(tamper=True))],
                   until=4, book=book)
    assert out.findings() == []


HOUR_MS = 3_600_000


def test_saf_backlog_opens_holds_and_clears() -> None:
    """An old store-and-forward queue opens once, updates on change, clears at 0."""
    t0 = 10 * HOUR_MS
    steps: list[Step] = [
        (1, hb(ts=t0, pending=3, oldest=t0 - HOUR_MS // 2)),      # young: nothing
        (2, hb(ts=t0, pending=3, oldest=t0 - 2 * HOUR_MS)),       # old: open
        (3, hb(ts=t0 + 1000, pending=3, oldest=t0 - 2 * HOUR_MS)),  # same facts: silent
        (4, hb(ts=t0 + 2000, pending=4, oldest=t0 - 2 * HOUR_MS)),  # one more: update
        (5, hb(ts=t0 + 3000)),                                     # saf unknown: no change
        (6, hb(ts=t0 + 4000, pending=0)),                          # drained: clear
    ]
    out, book = drive(steps, until=7)
    got = [(t, type(s).__name__, s.key) for t, s in out.log]
    key = "terminal|T1|settlement_gap|-1||saf_backlog"
    assert got == [(2, "Finding", key), (4, "Finding", key), (6, "Clear", key)]
    first = out.findings()[0]
    assert (first.cause, first.evidence["pending"], first.evidence["saf_oldest_ts_ms"]) == (
        "saf_backlog", 3, t0 - 2 * HOUR_MS)
    clear = out.clears()[0][1]
    assert clear.immediate
    assert book.summary(7).open_gaps["saf_backlog"] == 0


# ---- scale, persistence, restart ------------------------------------------------------

def test_tick_touches_only_due_batches() -> None:
    """With many open batches and no deadline due, a tick judges nothing (heap, no scan)."""
    judged: list[object] = []

    class Counting(SettlementBook):  # a subclass: the compiled book's methods cannot be patched
        def _evaluate(self, b: Any, at: float, trigger: str) -> list[Signal]:
            judged.append(b)
            return super()._evaluate(b, at, trigger)

    book = Counting(CFG)
    for i in range(2_000):
        book.on_txn(txn(f"t{i}", 100, tid=f"T{i}"), 1.0)
    assert book.tick(6.9) == []
    assert judged == []
    assert len(book.tick(7.0)) == 2_000
    assert len(judged) == 2_000
    assert book.tick(7.25) == []
    assert len(judged) == 2_000


def test_take_dirty_coalesces() -> None:
    """Many changes to one batch give one record per flush; a quiet flush gives none."""
    book = SettlementBook(CFG)
    for i in range(50):
        book.on_txn(txn(f"t{i}", 100), 1.0)
    (rec,) = book.take_dirty()
    assert (rec.tally_count, rec.tally_amount_minor) == (50, 5_000)
    assert book.take_dirty() == []
    book.on_txn(txn("x", 1), 1.5)
    rec.tally_count = -1  # a handed-out copy never aliases the live record
    assert book.take_dirty()[0].tally_count == 51


def test_summary_amounts_ages_counts() -> None:
    """Gauges: money by (currency, cause), oldest unsettled age per currency, gaps by cause."""
    steps: list[Step] = [
        (1, txn("a", 10_000)), (2, txn("u", 700, cur="USD")),
        (1, txn("b", 5_000, tid="T2")), (1.5, close(5_000, 1, tid="T2")), (2, settle(4_000, 1, tid="T2")),
    ]
    out, book = drive(steps, until=7.5)
    s = book.summary(10)
    assert s.unsettled_minor == {("CNY", "settled_short"): 1_000, ("CNY", "batch_not_closed"): 10_000}
    assert s.oldest_unsettled_age_s == {"CNY": 9.0, "USD": 8.0}
    assert s.open_gaps == {"batch_not_closed": 1, "totals_mismatch": 0, "not_settled": 0,
                           "settled_short": 1, "saf_backlog": 0}
    book.on_batch(close(10_000, 1), 11)
    book.on_settlement(settle(10_000, 1), 11)
    s = book.summary(12)
    assert s.unsettled_minor[("CNY", "batch_not_closed")] == 0
    assert s.oldest_unsettled_age_s["CNY"] == 11.0  # T2's short batch is now the oldest unpaid money
    assert len(out.findings()) == 2


def test_restart_then_settlement_still_resolves() -> None:
    """After a restart from stored records, the gap is re-judged and money still clears it."""
    first = SettlementBook(CFG)
    drive([*sales(10_000, 25_000), (2, close(35_000, 2))], until=9, book=first)
    second = SettlementBook(CFG)
    second.restore(first.take_dirty(), 9.5)
    again = second.tick(9.5)
    assert [(type(s).__name__, getattr(s, "cause", None)) for s in again] == [("Finding", "not_settled")]
    _, signals = second.on_settlement(settle(35_000, 2), 10)
    assert [type(s).__name__ for s in signals] == ["Clear"]


def test_restart_then_resolving_message_before_first_tick() -> None:
    """If the money arrives right after start, before any tick, the restored gap is
    cleared and never re-announced afterwards (no zombie incident)."""
    first = SettlementBook(CFG)
    out, _ = drive([*sales(10_000, 25_000), (2, close(35_000, 2))], until=9, book=first)
    assert [f.cause for f in out.open.values()] == ["not_settled"]
    second = SettlementBook(CFG)
    second.restore(first.take_dirty(), 9.5)
    assert second.summary(9.5).unsettled_minor == {("CNY", "not_settled"): 35_000}
    _, signals = second.on_settlement(settle(35_000, 2), 9.5)
    assert [type(s).__name__ for s in signals] == ["Clear"]
    assert second.tick(9.75) == []
    assert second.summary(9.75).unsettled_minor == {("CNY", "not_settled"): 0}


def test_restore_opens_deadlines_that_passed_while_down() -> None:
    """A deadline that expired during the outage opens on the first tick after start."""
    first = SettlementBook(CFG)
    drive(sales(10_000), until=3, book=first)
    second = SettlementBook(CFG)
    second.restore(first.take_dirty(), 100)
    (f,) = second.tick(100)
    assert isinstance(f, Finding)
    assert f.cause == "batch_not_closed"
    assert f.evidence["amount_minor"] == 10_000


def test_adopt_open_keys_clears_what_no_longer_holds() -> None:
    """An incident the store holds open for a gap that no longer exists is cleared;
    a saf_backlog one is remembered so a drained queue resolves it."""
    book = SettlementBook(CFG)
    book.restore([], 50)
    stale = "terminal|T1|settlement_gap|7|CNY|not_settled"
    saf = "terminal|T1|settlement_gap|-1||saf_backlog"
    book.adopt_open_keys([stale, saf, "terminal|T1|printer"], 50)
    (c,) = book.tick(50)
    assert isinstance(c, Clear)
    assert c.key == stale
    (c2,) = book.on_heartbeat(hb(pending=0), 51, serial_changed=False)
    assert isinstance(c2, Clear)
    assert c2.key == saf
    assert parse_gap_key(stale) == ("T1", 7, "CNY", "not_settled")


# ---- the golden scenario -----------------------------------------------------------------

def load_scenario(name: str) -> tuple[dict[str, Any], list[Step]]:
    """Scenario events as typed messages; ``ts``/``credited_at`` = at_ms, time = at_ms/1000."""
    lines = (DATA / f"{name}.jsonl").read_bytes().splitlines()
    head = json.loads(lines[0])
    types: dict[str, type[Any]] = {"txn": TxnResult, "batch": BatchClose, "settlement": Settlement,
                                   "heartbeat": Heartbeat}
    steps: list[Step] = []
    for line in lines[1:]:
        ev = json.loads(line)
        kind = ev["topic"].rsplit("/", 1)[1]
        if kind not in types:
            continue
        payload = ev["payload"]
        for k in ("ts", "credited_at"):
            if k in payload:
                payload[k] = ev["at_ms"]
        msg = msgspec.json.decode(json.dumps(payload).encode(), type=types[kind])
        steps.append((ev["at_ms"] / 1000, msg))
    return head, steps


Store = dict[tuple[str, int, str], BatchRecord]


def run_scenario(restart_at: tuple[float, ...] = ()) -> tuple[Outcome, Store]:
    """Feed settlement-day; at each ``restart_at`` replace the book by one restored from
    the records flushed so far (and the incidents open so far), as the daemon would."""
    head, steps = load_scenario("settlement-day")
    cfg = SettlementSettings(**head["config"]["settlement"])
    book, out = SettlementBook(cfg), Outcome()
    store: Store = {}
    clock = Clock(book, out)
    pending = sorted(restart_at)
    for at, msg in steps:
        clock.advance(at)
        if pending and at >= pending[0]:
            pending.pop(0)
            book = SettlementBook(cfg)
            book.restore([r for r in store.values() if not r.done], at)
            book.adopt_open_keys(out.open, at)
            clock.book = book
        out.add(at, feed(book, at, msg))
        for rec in book.take_dirty():
            store[(rec.terminal_id, rec.batch_no, rec.currency)] = rec
    clock.advance(head["duration_ms"] / 1000)
    for rec in book.take_dirty():
        store[(rec.terminal_id, rec.batch_no, rec.currency)] = rec
    return out, store


def test_settlement_day_scenario_expectations() -> None:
    """settlement-day.expect.json, fed purely: every expected gap with its exact amount and
    in time, nothing forbidden, ST11's late settlement resolved by 20 s."""
    out, _ = run_scenario()
    expect = json.loads((DATA / "settlement-day.expect.json").read_text())
    opened: dict[tuple[str, str], tuple[float, Finding]] = {}
    for t, s in out.log:
        if isinstance(s, Finding):
            opened.setdefault((s.terminal_id or "", s.cause), (t, s))
    for inc in expect["incidents"]:
        t, f = opened[(inc["terminal_id"], inc["cause"])]
        assert t * 1000 <= inc["open_by_ms"], inc
        if "amount_minor" in inc:
            assert inc["amount_minor"] in [v for v in f.evidence.values() if isinstance(v, int)], inc
    assert opened[("ST03", "batch_not_closed")][1].evidence["amount_minor"] == 388_570
    assert opened[("ST05", "settled_short")][1].evidence["amount_minor"] == 2_350
    assert opened[("ST07", "not_settled")][1].evidence["amount_minor"] == 468_704
    for rule in expect["forbidden"]:
        hits = [(t, f) for (tid, cause), (t, f) in opened.items()
                if tid == rule["terminal_id"] and cause == rule.get("cause", cause)]
        if "open_after_ms" in rule:
            hits = [(t, f) for t, f in hits if f.key in out.open or any(
                c.key == f.key and ct * 1000 > rule["open_after_ms"] for ct, c in out.clears())]
        assert hits == [], rule
    assert set(opened) == {("ST03", "batch_not_closed"), ("ST05", "settled_short"),
                           ("ST07", "not_settled"), ("ST09", "totals_mismatch"), ("ST11", "not_settled")}
    assert [c.key for t, c in out.clears() if t <= 20] == [
        "terminal|ST09|settlement_gap|21|CNY|totals_mismatch",
        "terminal|ST11|settlement_gap|21|CNY|not_settled",
    ]


@pytest.mark.parametrize("restarts", [(2.0,), (4.0,), (7.0,), (3.0, 5.0, 10.0, 16.0)])
def test_settlement_day_restart_loses_nothing(restarts: tuple[float, ...]) -> None:
    """Restarting from the flushed records (at any point) ends exactly like an
    uninterrupted run: same incidents ever opened, same open at the end, same store rows."""
    base, base_store = run_scenario()
    out, store = run_scenario(restarts)
    assert out.ever == base.ever
    assert {k: f.evidence for k, f in out.open.items()} == {k: f.evidence for k, f in base.open.items()}
    assert store == base_store


def test_money_formatting() -> None:
    """Summaries and gauges use the currency's own minor unit."""
    assert format_money(388_570, "CNY") == "CNY 3,885.70"
    assert format_money(-5, "CNY") == "CNY -0.05"
    assert format_money(1_234, "JPY") == "JPY 1,234"
    assert format_money(1_234, "KWD") == "KWD 1.234"
    assert minor_to_major(2_350, "CNY") == 23.5


def test_day_view_and_money_at_stake_never_mix_currencies_or_count_parents() -> None:
    """reconcile_day sums per currency (approved - settled); money_at_stake counts terminal gaps only."""
    days = reconcile_day([
        BatchRecord("T1", 1, "CNY", "M1", tally_count=2, tally_amount_minor=500, closed_at=1.0,
                    close_amount_minor=500, settled_at=2.0, settled_amount_minor=450),
        BatchRecord("T2", 1, "CNY", "M1", tally_count=1, tally_amount_minor=100),
        BatchRecord("T1", 1, "HKD", "M1", tally_count=1, tally_amount_minor=70, closed_at=1.0,
                    close_amount_minor=70),
    ])
    assert [(d.currency, d.approved_minor, d.settled_minor, d.difference_minor, d.unclosed_batches,
             d.unsettled_batches) for d in days] == [("CNY", 600, 450, 150, 1, 1), ("HKD", 70, 0, 70, 0, 1)]

    def gap(scope: str, amount: int, currency: str) -> Incident:
        return Incident(id=f"{scope}{amount}", key=f"k{scope}{amount}", kind="settlement_gap",
                        cause="not_settled", scope=scope, severity="major", status="open",  # type: ignore[arg-type]
                        opened_at=0.0, updated_at=0.0, summary="", evidence={"amount_minor": amount,
                                                                             "currency": currency})

    assert money_at_stake([gap("terminal", 100, "CNY"), gap("terminal", 50, "CNY"), gap("terminal", 7, "HKD"),
                           gap("merchant", 150, "CNY")]) == {"CNY": 150, "HKD": 7}


def test_a_batch_record_copy_carries_every_field_and_is_detached() -> None:
    """``BatchRecord.copy`` is what the book hands to the store: a missed field would be a lost tally."""
    annotations = annotations_in_source(BatchRecord)
    values = {f.name: value_of_type(annotations[f.name], i) for i, f in enumerate(dataclasses.fields(BatchRecord))}
    original = BatchRecord(**values)
    copied = original.copy()
    assert copied == original
    assert copied is not original
    copied.tally_count = 99
    assert original.tally_count == values["tally_count"]
