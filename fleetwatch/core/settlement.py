"""Batch tallies and the settlement-gap (不进账) reconciliation rules.

The daemon keeps its own tally of every batch, one (terminal, ``batch_no``, currency),
from the approved transactions it saw, and compares the terminal's BatchClose and the
host's Settlement against that tally (CONTRACT.md §1 "Settlement", FAILURES.md §4). The
terminal's own totals can be wrong: that is ``totals_mismatch``; only the host paying
less than what was approved is ``settled_short``.

Everything here is pure: times are passed in (daemon receive time, epoch seconds),
nothing is logged or written. The store persists the :class:`BatchRecord` objects this
book hands out through :meth:`SettlementBook.take_dirty`, and :meth:`restore` resumes
from them, so a restart loses no tally.

Scale: a fleet of a million terminals holds about a million open batches. Nothing here
scans them all: deadlines live in a heap and are popped when due, the money gauges are
kept up to date as gaps open and close, and the oldest-unsettled age comes from a lazy
heap per currency.

The rules are written as small pure functions (``_not_closed_gap``, ``_mismatch_gap``,
...) that look at one batch at one moment and say whether the condition holds and with
what evidence; :meth:`SettlementBook._evaluate` diffs that against what was already
reported, so a Finding is emitted only when it is new or its evidence changed, and a
Clear only when something that was open no longer holds.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from mypy_extensions import mypyc_attr

from fleetwatch.config import SettlementSettings
from fleetwatch.core.messages import BatchClose, Heartbeat, Settlement, TxnResult
from fleetwatch.core.model import (
    CAUSES,
    BatchRecord,
    Clear,
    Finding,
    Incident,
    SettlementWrite,
    Signal,
    TxnRecord,
    incident_key,
)

BatchKey = tuple[str, int, str]
"""(terminal_id, batch_no, currency): one batch."""

Evidence = dict[str, Any]

GAP_CAUSES: Final[tuple[str, ...]] = CAUSES["settlement_gap"]
SAF_GAP: Final[tuple[int, str, str]] = (-1, "", "saf_backlog")
"""The ``gap`` part of a saf_backlog key: per terminal, not per batch; currency unknown."""

_NO_ORIGS: Final[Mapping[str, int | None]] = MappingProxyType({})

_ZERO_DECIMALS: Final = frozenset(
    {"BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "VND", "VUV",
     "XAF", "XOF", "XPF"}
)
_THREE_DECIMALS: Final = frozenset({"BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"})


def minor_unit_exponent(currency: str) -> int:
    """ISO 4217 minor-unit exponent (CNY 2, JPY 0, KWD 3); 2 for anything not listed."""
    if currency in _ZERO_DECIMALS:
        return 0
    if currency in _THREE_DECIMALS:
        return 3
    return 2


def minor_to_major(amount_minor: int, currency: str) -> float:
    """Minor units to major units (fen to yuan) for the ``..._unsettled_amount`` gauge."""
    return amount_minor / float(10 ** minor_unit_exponent(currency))


def format_money(amount_minor: int, currency: str) -> str:
    """``388570, "CNY"`` -> ``"CNY 3,885.70"``: how amounts read in incident summaries."""
    exp = minor_unit_exponent(currency)
    sign = "-" if amount_minor < 0 else ""
    major, minor = divmod(abs(amount_minor), int(10**exp))
    text = f"{major:,}" + (f".{minor:0{exp}d}" if exp else "")
    return f"{currency} {sign}{text}"


@dataclass(frozen=True, slots=True)
class SettlementSummary:
    """Fleet-wide settlement figures for /metrics; no terminal or batch appears in it.

    - ``unsettled_minor``: money at stake in open gaps, minor units, by (currency, cause).
      One batch can have two gaps open (totals_mismatch and not_settled), so summing
      across causes can count money twice; each cause's series is exact on its own.
    - ``oldest_unsettled_age_s``: per currency, the age of the oldest approved money the
      host has not settled yet (gap or not: an ordinary batch waiting for tonight's
      settlement counts), measured from its first approval's receive time.
    - ``open_gaps``: open gaps by cause, every cause present (0 when none).
    - ``open_batches``: batches still held in memory (not done).
    """

    unsettled_minor: dict[tuple[str, str], int]
    oldest_unsettled_age_s: dict[str, float]
    open_gaps: dict[str, int]
    open_batches: int


@dataclass(slots=True)
class _Batch:
    """One open batch: the persisted record plus what only lives in memory."""

    rec: BatchRecord
    origs: dict[str, int | None] | None = None
    """Remembered refunds (their signed amount) and preauths (None: moved no money);
    created on the first one, since most batches never need it."""
    gaps: dict[str, Evidence] = field(default_factory=dict)
    """Open gaps by cause, with the evidence last emitted."""
    watch_reason: str | None = None
    aged: bool = False
    """True while an entry for this batch sits in its currency's age heap."""

    # Written out (the dataclass keeps its fields, repr and eq): the generated __init__ is
    # interpreted even in a compiled module, and this record is built on the hot path.
    # tests/core/test_hand_inits.py holds it to the fields.
    def __init__(
        self,
        rec: BatchRecord,
        origs: dict[str, int | None] | None = None,
        gaps: dict[str, Evidence] | None = None,
        watch_reason: str | None = None,
        aged: bool = False,
    ) -> None:
        self.rec = rec
        self.origs = origs
        self.gaps = {} if gaps is None else gaps
        self.watch_reason = watch_reason
        self.aged = aged


# ---- pure rules: one batch, one moment --------------------------------------------

def txn_effect(txn: TxnResult, origs: Mapping[str, int | None]) -> tuple[int, int]:
    """(signed amount, count) one approved txn adds to its batch tally.

    Counted like BatchClose: sales and completions add, refunds subtract, a void
    reverses its original (a voided refund adds back). Only refunds and preauths are
    remembered in ``origs``: a voided sale or completion is reversed by the void's own
    amount, which is the same thing. A void of an unknown original subtracts its amount
    (the contract's rule); a void of a preauth moves nothing and does not count.
    """
    if txn.type in ("sale", "completion"):
        return txn.amount_minor, 1
    if txn.type == "refund":
        return -txn.amount_minor, 1
    if txn.type == "preauth":
        return 0, 0
    if txn.orig_txn_id is not None and txn.orig_txn_id in origs:
        orig = origs[txn.orig_txn_id]
        return (0, 0) if orig is None else (-orig, 1)
    return -txn.amount_minor, 1


def outstanding(r: BatchRecord) -> int:
    """Approved money the host has not paid yet: own tally minus what was settled."""
    return r.tally_amount_minor - (r.settled_amount_minor or 0)


def settled_in_full(r: BatchRecord) -> bool:
    """A Settlement covers the own tally in count and amount (more is over-settlement)."""
    return (
        r.settled_amount_minor is not None
        and (r.settled_count or 0) >= r.tally_count
        and r.settled_amount_minor >= r.tally_amount_minor
    )


def _anchor(r: BatchRecord) -> float:
    """When the batch's clock started: its first approval, else its first message."""
    if r.first_approved_at is not None:
        return r.first_approved_at
    times = [t for t in (r.closed_at, r.settled_at) if t is not None]
    return min(times) if times else 0.0


def _base_evidence(r: BatchRecord) -> Evidence:
    ev: Evidence = {
        "batch_no": r.batch_no,
        "currency": r.currency,
        "tally_count": r.tally_count,
        "tally_amount_minor": r.tally_amount_minor,
        "first_approved_at": r.first_approved_at,
        "oldest_approved_ts_ms": r.first_approved_ts_ms,
    }
    if r.settled_amount_minor is not None:
        ev["settled_count"] = r.settled_count
        ev["settled_amount_minor"] = r.settled_amount_minor
        over = r.settled_amount_minor - r.tally_amount_minor
        if over > 0:
            ev["over_settled_minor"] = over
    return ev


def _not_closed_gap(
    r: BatchRecord, now: float, cfg: SettlementSettings, watch_reason: str | None
) -> tuple[Evidence, float, str] | None:
    """batch_not_closed: approved money, no BatchClose, past the deadline or under watch.

    A Settlement that already covers the tally means the money arrived even without a
    BatchClose (host-captured batches), so nothing is missing.
    """
    if r.closed_at is None and r.first_approved_at is not None:
        due = r.first_approved_at + cfg.batch_close_deadline_s
        owed = outstanding(r)
        if owed > 0 and (r.watch or now >= due):
            ev = _base_evidence(r) | {
                "amount_minor": owed, "close_deadline_at": due,
                "watch": r.watch, "watch_reason": watch_reason if r.watch else None,
            }
            money = format_money(owed, r.currency)
            if r.watch:
                why = "the terminal reported tamper" if watch_reason == "tamper" else (
                    "the terminal hardware was swapped" if watch_reason == "hardware_swap"
                    else "the terminal was tampered with or swapped")
                text = f"Batch {r.batch_no} ({money}) is not closed and {why}: it may be lost"
            else:
                text = f"Batch {r.batch_no} ({money}) was never closed"
            return ev, (now if r.watch and now < due else due), text
    return None


def _mismatch_gap(r: BatchRecord) -> tuple[Evidence, float, str] | None:
    """totals_mismatch: the BatchClose disagrees with the own tally, or says so itself.

    Resolved once a Settlement covers the own tally: the merchant has the money, only
    the terminal's report was wrong (the incident history keeps that fact).
    """
    if r.closed_at is None or r.close_amount_minor is None or settled_in_full(r):
        return None
    d_amount = r.close_amount_minor - r.tally_amount_minor
    d_count = (r.close_count or 0) - r.tally_count
    if d_amount == 0 and d_count == 0 and r.close_result == "confirmed":
        return None
    ev = _base_evidence(r) | {
        "amount_minor": abs(d_amount) if d_amount else abs(r.tally_amount_minor),
        "close_count": r.close_count, "close_amount_minor": r.close_amount_minor,
        "close_result": r.close_result, "amount_difference_minor": d_amount,
        "count_difference": d_count, "closed_at": r.closed_at, "close_ts_ms": r.close_ts_ms,
    }
    if d_amount or d_count:
        text = (f"Batch {r.batch_no} closed with {format_money(r.close_amount_minor, r.currency)} "
                f"in {r.close_count} transactions, but {format_money(r.tally_amount_minor, r.currency)} "
                f"in {r.tally_count} were approved")
    else:
        text = (f"Batch {r.batch_no} closed with result '{r.close_result}': "
                "the host did not confirm its totals")
    return ev, r.closed_at, text


def _not_settled_gap(
    r: BatchRecord, now: float, cfg: SettlementSettings
) -> tuple[Evidence, float, str] | None:
    """not_settled: closed, money owed, and no Settlement by the deadline."""
    if r.closed_at is None or r.settled_amount_minor is not None:
        return None
    due = r.closed_at + cfg.settlement_deadline_s
    owed = outstanding(r)
    if owed <= 0 or now < due:
        return None
    ev = _base_evidence(r) | {
        "amount_minor": owed, "closed_at": r.closed_at, "settlement_deadline_at": due,
        "close_count": r.close_count, "close_amount_minor": r.close_amount_minor,
    }
    text = f"Batch {r.batch_no} ({format_money(owed, r.currency)}) was closed but has not been settled"
    return ev, due, text


def _short_gap(r: BatchRecord) -> tuple[Evidence, float, str] | None:
    """settled_short: once closed, the Settlement is below the own tally (count or amount)."""
    if r.closed_at is None or r.settled_amount_minor is None or settled_in_full(r):
        return None
    short = r.tally_amount_minor - r.settled_amount_minor
    ev = _base_evidence(r) | {
        "amount_minor": max(short, 0), "shortfall_minor": short,
        "shortfall_count": r.tally_count - (r.settled_count or 0),
        "business_date": r.business_date, "credited_at_ms": r.credited_at_ms,
        "settled_at": r.settled_at,
    }
    text = (f"Batch {r.batch_no} was settled {format_money(max(short, 0), r.currency)} short "
            f"({format_money(r.settled_amount_minor, r.currency)} of "
            f"{format_money(r.tally_amount_minor, r.currency)}; "
            f"{r.settled_count} of {r.tally_count} transactions)")
    return ev, r.settled_at or r.closed_at, text


def batch_gaps(
    r: BatchRecord, now: float, cfg: SettlementSettings, watch_reason: str | None = None
) -> dict[str, tuple[Evidence, float, str]]:
    """Every gap that holds for one batch at ``now``: cause -> (evidence, since, summary)."""
    found = {
        "batch_not_closed": _not_closed_gap(r, now, cfg, watch_reason),
        "totals_mismatch": _mismatch_gap(r),
        "not_settled": _not_settled_gap(r, now, cfg),
        "settled_short": _short_gap(r),
    }
    return {cause: v for cause, v in found.items() if v is not None}


def is_finished(r: BatchRecord, now: float, cfg: SettlementSettings, has_gaps: bool) -> bool:
    """Nothing more to watch: the batch can leave memory (``done``).

    Settled in full once closed (or once the close deadline passed, for a batch the host
    settled without a BatchClose); a batch that owes the merchant nothing is done after
    its settlement deadline without a Settlement.
    """
    if has_gaps:
        return False
    past_close = now >= _anchor(r) + cfg.batch_close_deadline_s
    if r.closed_at is None and not past_close:
        return False
    if settled_in_full(r):
        return True
    if r.tally_amount_minor > 0:
        return False
    return r.closed_at is None or now >= r.closed_at + cfg.settlement_deadline_s


def parse_gap_key(key: str) -> tuple[str, int, str, str] | None:
    """``terminal|T1|settlement_gap|17|CNY|not_settled`` -> (T1, 17, CNY, not_settled)."""
    parts = key.split("|")
    if len(parts) != 6 or parts[0] != "terminal" or parts[2] != "settlement_gap":
        return None
    try:
        batch_no = int(parts[3])
    except ValueError:
        return None
    return parts[1], batch_no, parts[4], parts[5]


def _gap_key(terminal_id: str, batch_no: int, currency: str, cause: str) -> str:
    return incident_key("terminal", "settlement_gap", terminal_id=terminal_id,
                        gap=(batch_no, currency, cause))


# ---- the book -------------------------------------------------------------------

# Compiled by mypyc (setup.py): a class defined in Python may still extend it, since
# tests/core/test_settlement_amortised.py holds it against a subclass that evaluates every txn.
@mypyc_attr(allow_interpreted_subclasses=True)
class SettlementBook:
    """Open batches, their deadlines, and the gaps they have open.

    The Engine feeds it every accepted txn, BatchClose, Settlement and Heartbeat and
    calls :meth:`tick` from its sweeper; it gets back Findings and Clears for the
    incident book, and pulls changed records with :meth:`take_dirty` for the store.
    """

    def __init__(self, cfg: SettlementSettings) -> None:
        self._cfg = cfg
        self._batches: dict[BatchKey, _Batch] = {}
        self._by_terminal: dict[str, list[BatchKey]] = {}
        """A terminal's open batches (usually one: a list is far smaller than a set)."""
        self._deadlines: list[tuple[float, int, BatchKey]] = []
        self._age_heaps: dict[str, list[tuple[float, int, BatchKey]]] = {}
        self._seq = itertools.count()
        self._dirty: dict[BatchKey, BatchRecord] = {}
        self._recent_done: OrderedDict[BatchKey, None] = OrderedDict()
        self._saf_open: dict[str, Evidence] = {}
        self._tampered: set[str] = set()
        """Terminals whose heartbeats say ``tamper: true`` now: only the beat that starts it
        puts money under watch (the batches open at that moment, not the later ones)."""
        self._pending: list[Clear] = []
        """Clears for adopted incidents whose batch is gone; sent by the next tick."""
        self._gap_amount: dict[tuple[str, str], int] = {}
        self._gap_count: dict[str, int] = dict.fromkeys(GAP_CAUSES, 0)

    # -- start-up -----------------------------------------------------------------

    def restore(self, batches: Iterable[BatchRecord], now: float) -> None:
        """Resume from the store's open batches (as :meth:`take_dirty` handed them out).

        Each batch is re-judged at ``now`` and the gaps that hold are taken as open but
        not yet announced: the next evaluation of the batch (the first :meth:`tick`, or
        an earlier message for it) re-emits them (an update for an incident that is still
        open, an opening for a deadline that passed while the daemon was down) or clears
        them if that message resolved them. Refunds remembered for voids are not
        persisted: a void of a pre-restart refund falls back to subtracting its amount.
        """
        for stored in batches:
            if stored.done:
                continue
            rec = stored.copy()
            b = _Batch(rec=rec, watch_reason="restored" if rec.watch else None)
            key = (rec.terminal_id, rec.batch_no, rec.currency)
            self._batches[key] = b
            self._by_terminal.setdefault(rec.terminal_id, []).append(key)
            self._push_deadline(now, key)
            self._push_deadline(_anchor(rec) + self._cfg.batch_close_deadline_s, key)
            if rec.closed_at is not None:
                self._push_deadline(rec.closed_at + self._cfg.settlement_deadline_s, key)
            for cause, (ev, _, _) in batch_gaps(rec, now, self._cfg, b.watch_reason).items():
                self._assume_open(b, cause, ev)
            self._track_age(b)

    def note_tampered(self, terminal_id: str) -> None:
        """At start: this terminal was already reporting tamper (its watched batches are
        in the store); its next tamper beats are not a new tamper."""
        self._tampered.add(terminal_id)

    def adopt_open_keys(self, keys: Iterable[str], now: float) -> None:
        """Tell the book which settlement_gap incidents the store still has open.

        Call after :meth:`restore`. A saf_backlog key is remembered so a drained queue
        resolves it; a batch gap that no longer holds (or whose batch is gone) gets a
        Clear on the next :meth:`tick`, so no incident stays open forever across a
        restart.
        """
        for key in keys:
            parsed = parse_gap_key(key)
            if parsed is None:
                continue
            terminal_id, batch_no, currency, cause = parsed
            if cause == "saf_backlog":
                if terminal_id not in self._saf_open:
                    self._saf_open[terminal_id] = {}
                    self._gap_count["saf_backlog"] += 1
                continue
            b = self._batches.get((terminal_id, batch_no, currency))
            if b is None:
                self._pending.append(Clear(key, now, immediate=True,
                                           evidence={"resolved_by": "restore", "resolved_at": now}))
            elif cause not in b.gaps and cause in GAP_CAUSES:
                self._assume_open(b, cause, {"amount_minor": 0})
                self._push_deadline(now, (terminal_id, batch_no, currency))

    # -- messages -------------------------------------------------------------------

    def on_txn(self, txn: TxnResult, at: float) -> tuple[TxnRecord, list[Signal]]:
        """Tally one transaction (already deduplicated by txn_id) into its batch."""
        signed, count, signals = 0, 0, list[Signal]()
        if txn.outcome == "approved":
            key = (txn.terminal_id, txn.batch_no, txn.currency)
            self._recent_done.pop(key, None)  # late money for a finished batch: a fresh record
            b = self._get_or_create(key, txn.merchant_id, at)
            signed, count = txn_effect(txn, b.origs if b.origs is not None else _NO_ORIGS)
            self._remember(b, txn, signed)
            self._apply_tally(key, b, txn, signed=signed, count=count, at=at)
            if self._txn_changes_nothing(b, at):
                self._track_age(b)
            else:
                signals = self._evaluate(b, at, "txn")
        record = TxnRecord(
            terminal_id=txn.terminal_id, txn_id=txn.txn_id, merchant_id=txn.merchant_id,
            batch_no=txn.batch_no, currency=txn.currency, type=txn.type, outcome=txn.outcome,
            amount_minor=txn.amount_minor, ts_ms=txn.ts, received_at=at, rc=txn.rc,
            entry=txn.entry, error_stage=txn.error.stage if txn.error else None,
            orig_txn_id=txn.orig_txn_id, signed_amount_minor=signed,
        )
        return record, signals

    def on_batch(self, b: BatchClose, at: float) -> list[Signal]:
        """Record the terminal's BatchClose and compare it with the own tally.

        A re-sent BatchClose updates the totals but keeps the first close time, so the
        settlement deadline is not pushed back by repeats.
        """
        key = (b.terminal_id, b.batch_no, b.currency)
        if key in self._recent_done:
            return []
        batch = self._get_or_create(key, b.merchant_id, at)
        r = batch.rec
        if r.closed_at is None:
            r.closed_at = at
            self._push_deadline(at + self._cfg.settlement_deadline_s, key)
        r.close_count, r.close_amount_minor = b.count, b.amount_minor
        r.close_result, r.close_ts_ms = b.result, b.ts
        self._mark_dirty(key, r)
        return self._evaluate(batch, at, "batch_close")

    def on_settlement(self, s: Settlement, at: float) -> tuple[SettlementWrite, list[Signal]]:
        """Match the host's Settlement against the own tally (kept until the batch closes).

        A repeat with the same ``credited_at`` replaces the earlier one (a resend or a
        correction); one with a different ``credited_at`` is a further credit and adds,
        so a later top-up can make a short batch whole. For a batch already finished the
        message is only stored.
        """
        write = SettlementWrite(
            terminal_id=s.terminal_id, merchant_id=s.merchant_id, batch_no=s.batch_no,
            currency=s.currency, business_date=s.business_date, settled_count=s.settled_count,
            settled_amount_minor=s.settled_amount_minor, credited_at_ms=s.credited_at,
            received_at=at,
        )
        key = (s.terminal_id, s.batch_no, s.currency)
        if key in self._recent_done:
            return write, []
        b = self._get_or_create(key, s.merchant_id, at)
        r = b.rec
        if r.settled_amount_minor is None or r.credited_at_ms == s.credited_at:
            r.settled_count, r.settled_amount_minor = s.settled_count, s.settled_amount_minor
        else:
            r.settled_count = (r.settled_count or 0) + s.settled_count
            r.settled_amount_minor += s.settled_amount_minor
        r.settled_at, r.business_date, r.credited_at_ms = at, s.business_date, s.credited_at
        self._mark_dirty(key, r)
        if r.closed_at is None:
            self._push_deadline(_anchor(r) + self._cfg.batch_close_deadline_s, key)
        return write, self._evaluate(b, at, "settlement")

    def on_heartbeat(self, hb: Heartbeat, at: float, *, serial_changed: bool) -> list[Signal]:
        """SAF backlog, and tamper / hardware swap putting unclosed money under watch.

        A tamper watches the batches open when it starts (the first ``tamper: true`` beat):
        the terminal's later batches, opened after it and closed on time, are not at risk.
        """
        signals = self._saf(hb, at)
        reason: str | None = None
        if hb.tamper:
            if hb.terminal_id not in self._tampered:
                self._tampered.add(hb.terminal_id)
                reason = "tamper"
        elif hb.tamper is False and self._tampered:
            self._tampered.discard(hb.terminal_id)
        if reason is None and serial_changed:
            reason = "hardware_swap"
        if reason is not None:
            signals.extend(self._watch(hb.terminal_id, reason, at))
        return signals

    def steady_heartbeat(self, hb: Heartbeat) -> bool:
        """The Engine's heartbeat fast path: True when :meth:`on_heartbeat` (serial unchanged)
        would return nothing, and then the heartbeat is taken (False changes nothing).

        That is a heartbeat without a SAF backlog to report (``saf`` absent, ``pending``
        unknown, or 0 with no backlog open) and without ``tamper: true``.
        """
        saf = hb.saf
        if saf is not None and saf.pending is not None and (saf.pending or hb.terminal_id in self._saf_open):
            return False
        if hb.tamper:
            return False
        if hb.tamper is False and self._tampered:
            self._tampered.discard(hb.terminal_id)
        return True

    def tick(self, now: float) -> list[Signal]:
        """Judge the batches whose deadline has come; cost is the number that are due."""
        signals: list[Signal] = [c for c in self._pending if not self._is_open(c.key)]
        self._pending = []
        due: dict[BatchKey, None] = {}
        while self._deadlines and self._deadlines[0][0] <= now:
            due[heapq.heappop(self._deadlines)[2]] = None
        for key in due:
            b = self._batches.get(key)
            if b is not None:
                signals.extend(self._evaluate(b, now, "deadline"))
        return signals

    def take_dirty(self) -> list[BatchRecord]:
        """Copies of the records changed since the last call, one per batch (coalesced)."""
        out = [r.copy() for r in self._dirty.values()]
        self._dirty.clear()
        return out

    # -- read side ------------------------------------------------------------------

    def summary(self, now: float) -> SettlementSummary:
        """Money and ages for the gauges, from running totals (no scan of all batches)."""
        ages: dict[str, float] = {}
        for currency, heap in self._age_heaps.items():
            top = self._age_top(heap)
            ages[currency] = max(0.0, now - top) if top is not None else 0.0
        return SettlementSummary(
            unsettled_minor=dict(self._gap_amount),
            oldest_unsettled_age_s=ages,
            open_gaps=dict(self._gap_count),
            open_batches=len(self._batches),
        )

    def open_gaps(self, terminal_id: str) -> dict[str, Evidence]:
        """The terminal's open gaps as incident key -> evidence (for the terminal view)."""
        out: dict[str, Evidence] = {}
        for key in sorted(self._by_terminal.get(terminal_id, ())):
            for cause, ev in self._batches[key].gaps.items():
                out[_gap_key(key[0], key[1], key[2], cause)] = dict(ev)
        if terminal_id in self._saf_open:
            out[self._saf_key(terminal_id)] = dict(self._saf_open[terminal_id])
        return out

    def unsettled(self, terminal_id: str) -> list[Evidence]:
        """The terminal's approved money the host has not settled yet, one entry per batch and
        currency (``batch_no``, ``currency``, ``amount_minor``, ``business_date``): what a
        closed terminal still owes its merchant (CONTRACT.md §7)."""
        out: list[Evidence] = []
        for key in sorted(self._by_terminal.get(terminal_id, ())):
            r = self._batches[key].rec
            owed = outstanding(r)
            if owed > 0:
                out.append({"batch_no": r.batch_no, "currency": r.currency, "amount_minor": owed,
                            "business_date": r.business_date})
        return out

    def batch(self, terminal_id: str, batch_no: int, currency: str) -> BatchRecord | None:
        """A copy of one open batch's record, or None when it is not held (never seen or done)."""
        b = self._batches.get((terminal_id, batch_no, currency))
        return b.rec.copy() if b else None

    # -- internals ------------------------------------------------------------------

    def _assume_open(self, b: _Batch, cause: str, ev: Evidence) -> None:
        """Take a gap as open but unannounced (restart): the marker makes the next
        evaluation see a difference, so it re-emits the Finding or sends the Clear."""
        self._account(b.rec.currency, cause, None, ev)
        b.gaps[cause] = ev | {"_unannounced": True}

    def _is_open(self, key: str) -> bool:
        parsed = parse_gap_key(key)
        if parsed is None:
            return False
        b = self._batches.get(parsed[:3])
        return b is not None and parsed[3] in b.gaps

    def _get_or_create(self, key: BatchKey, merchant_id: str, at: float) -> _Batch:
        b = self._batches.get(key)
        if b is None:
            b = _Batch(rec=BatchRecord(terminal_id=key[0], batch_no=key[1], currency=key[2],
                                       merchant_id=merchant_id))
            self._batches[key] = b
            self._by_terminal.setdefault(key[0], []).append(key)
        else:
            b.rec.merchant_id = merchant_id
        return b

    def _remember(self, b: _Batch, txn: TxnResult, signed: int) -> None:
        """Keep refunds and preauths (bounded) so a later void can reverse them exactly."""
        limit = self._cfg.void_lookup_per_batch
        if limit == 0 or txn.type not in ("refund", "preauth"):
            return
        origs = b.origs if b.origs is not None else {}
        b.origs = origs
        origs[txn.txn_id] = signed if txn.type == "refund" else None
        while len(origs) > limit:
            del origs[next(iter(origs))]

    def _apply_tally(self, key: BatchKey, b: _Batch, txn: TxnResult, *, signed: int, count: int, at: float) -> None:
        r = b.rec
        r.tally_amount_minor += signed
        r.tally_count += count
        r.last_txn_at = at
        if count:
            if r.first_approved_at is None:
                r.first_approved_at = at
                self._push_deadline(at + self._cfg.batch_close_deadline_s, key)
            if r.first_approved_ts_ms is None or txn.ts < r.first_approved_ts_ms:
                r.first_approved_ts_ms = txn.ts
        self._dirty[key] = r

    def _txn_changes_nothing(self, b: _Batch, at: float) -> bool:
        """True when :meth:`_evaluate` after a txn could neither open, change nor close a gap,
        nor finish the batch, so the per-transaction evaluation is skipped.

        That is the common case by far: an open batch (not closed, not settled, not under
        watch, no gap open) before its close deadline. There every rule is off whatever the
        tally says: ``batch_not_closed`` waits for the deadline (the heap entry pushed at
        the first approval re-judges the batch then, in :meth:`tick`), and the other three
        need a BatchClose or a Settlement. ``is_finished`` is False too: the batch is
        neither closed nor past its close deadline. The property test in
        tests/core/test_settlement_amortised.py holds the book to the same signals with and
        without this shortcut.
        """
        r = b.rec
        first = r.first_approved_at
        return (not b.gaps and r.closed_at is None and r.settled_amount_minor is None and not r.watch
                and first is not None and at < first + self._cfg.batch_close_deadline_s)

    def _evaluate(self, b: _Batch, at: float, trigger: str) -> list[Signal]:
        """Diff the gaps that hold now against those reported; emit only the changes."""
        r = b.rec
        holding = batch_gaps(r, at, self._cfg, b.watch_reason)
        signals: list[Signal] = []
        for cause, gap in holding.items():
            ev = gap[0]
            if b.gaps.get(cause) != ev:
                self._account(r.currency, cause, b.gaps.get(cause), ev)
                b.gaps[cause] = ev
                signals.append(self._finding(r, cause, gap, at))
        for cause in [c for c in b.gaps if c not in holding]:
            self._account(r.currency, cause, b.gaps.pop(cause), None)
            signals.append(Clear(_gap_key(r.terminal_id, r.batch_no, r.currency, cause), at,
                                 immediate=True, evidence=self._resolution(r, trigger, at)))
        self._track_age(b)
        if is_finished(r, at, self._cfg, bool(b.gaps)):
            self._retire(b)
        return signals

    @staticmethod
    def _finding(r: BatchRecord, cause: str, gap: tuple[Evidence, float, str], at: float) -> Finding:
        ev, since, text = gap
        return Finding(
            key=_gap_key(r.terminal_id, r.batch_no, r.currency, cause), kind="settlement_gap",
            cause=cause, severity="major", scope="terminal", summary=text, at=at,
            terminal_id=r.terminal_id, merchant_id=r.merchant_id, evidence=dict(ev),
            detected_from=min(since, at),
        )

    @staticmethod
    def _resolution(r: BatchRecord, trigger: str, at: float) -> Evidence:
        """Why a gap closed: the message kind that closed it and the money as it stands."""
        ev: Evidence = {"resolved_by": trigger, "resolved_at": at} | _base_evidence(r)
        if r.closed_at is not None:
            ev["close_amount_minor"] = r.close_amount_minor
        return ev

    def _account(self, currency: str, cause: str, old: Evidence | None, new: Evidence | None) -> None:
        """Keep the per-(currency, cause) money and per-cause counts current."""
        delta = (new["amount_minor"] if new else 0) - (old["amount_minor"] if old else 0)
        if delta:
            k = (currency, cause)
            self._gap_amount[k] = self._gap_amount.get(k, 0) + delta
        self._gap_count[cause] += (new is not None) - (old is not None)

    def _retire(self, b: _Batch) -> None:
        """Mark the batch done (persisted once more) and drop it from memory."""
        r = b.rec
        key = self._key(r)
        r.done = True
        self._mark_dirty(key, r)
        del self._batches[key]
        keys = self._by_terminal.get(r.terminal_id)
        if keys is not None:
            if key in keys:
                keys.remove(key)
            if not keys:
                del self._by_terminal[r.terminal_id]
        if self._cfg.done_keys_kept:
            self._recent_done[key] = None
            while len(self._recent_done) > self._cfg.done_keys_kept:
                self._recent_done.popitem(last=False)

    def _track_age(self, b: _Batch) -> None:
        r = b.rec
        if not b.aged and r.first_approved_at is not None and outstanding(r) > 0:
            heapq.heappush(self._age_heaps.setdefault(r.currency, []),
                           (r.first_approved_at, next(self._seq), self._key(r)))
            b.aged = True

    def _age_top(self, heap: list[tuple[float, int, BatchKey]]) -> float | None:
        """Oldest first-approval time still awaiting money; drops stale entries on the way."""
        while heap:
            t, _, key = heap[0]
            b = self._batches.get(key)
            if b is not None and b.rec.first_approved_at == t:
                if outstanding(b.rec) > 0:
                    return t
                b.aged = False
            heapq.heappop(heap)
        return None

    def _push_deadline(self, when: float, key: BatchKey) -> None:
        heapq.heappush(self._deadlines, (when, next(self._seq), key))

    def _mark_dirty(self, key: BatchKey, r: BatchRecord) -> None:
        self._dirty[key] = r

    @staticmethod
    def _key(r: BatchRecord) -> BatchKey:
        return (r.terminal_id, r.batch_no, r.currency)

    # -- heartbeat rules ------------------------------------------------------------

    @staticmethod
    def _saf_key(terminal_id: str) -> str:
        return incident_key("terminal", "settlement_gap", terminal_id=terminal_id, gap=SAF_GAP)

    def _saf(self, hb: Heartbeat, at: float) -> list[Signal]:
        """saf_backlog: offline approvals older than ``saf_max_age_s`` not yet forwarded.

        Ages use the heartbeat's own ``ts`` against ``saf.oldest_ts`` (both terminal
        clock, so drift cancels). A missing ``saf`` or ``pending`` is "unknown" and
        changes nothing; ``pending`` 0 resolves at once; a queue whose old entries were
        forwarded but which still holds young ones resolves through hysteresis.
        """
        saf = hb.saf
        tid = hb.terminal_id
        if saf is None or saf.pending is None:
            return []
        if saf.pending == 0:
            return self._saf_clear(tid, at, immediate=True, why="saf_drained")
        if saf.oldest_ts is None:
            return []
        age_s = (hb.ts - saf.oldest_ts) / 1000
        if age_s < self._cfg.saf_max_age_s:
            return self._saf_clear(tid, at, immediate=False, why="saf_backlog_young")
        ev: Evidence = {"pending": saf.pending, "saf_oldest_ts_ms": saf.oldest_ts,
                        "saf_max_age_s": self._cfg.saf_max_age_s}
        if self._saf_open.get(tid) == ev:
            return []
        self._gap_count["saf_backlog"] += tid not in self._saf_open
        self._saf_open[tid] = ev
        hours = self._cfg.saf_max_age_s / 3600
        text = (f"{saf.pending} offline-approved transaction(s) have not reached the host "
                f"for more than {hours:g} h")
        return [Finding(
            key=self._saf_key(tid), kind="settlement_gap", cause="saf_backlog", severity="major",
            scope="terminal", summary=text, at=at, terminal_id=tid, merchant_id=hb.merchant_id,
            evidence=dict(ev), detected_from=at,
        )]

    def _saf_clear(self, tid: str, at: float, *, immediate: bool, why: str) -> list[Signal]:
        if self._saf_open.pop(tid, None) is None:
            return []
        self._gap_count["saf_backlog"] -= 1
        return [Clear(self._saf_key(tid), at, immediate=immediate,
                      evidence={"resolved_by": why, "resolved_at": at})]

    def _watch(self, terminal_id: str, reason: str, at: float) -> list[Signal]:
        """Tamper or swap: the terminal's unclosed money may be lost; report it now."""
        signals: list[Signal] = []
        for key in sorted(self._by_terminal.get(terminal_id, ())):
            b = self._batches[key]
            r = b.rec
            if r.closed_at is not None or r.first_approved_at is None or outstanding(r) <= 0:
                continue
            if not r.watch or b.watch_reason != reason:
                r.watch, b.watch_reason = True, reason
                self._mark_dirty(key, r)
            signals.extend(self._evaluate(b, at, "heartbeat"))
        return signals


# ---- views for the API: a merchant's day, and the money at stake ---------------------------

@dataclass(slots=True)
class CurrencyDay:
    """One currency of a merchant's business day: what terminals approved, batched and got settled."""

    currency: str
    approved_minor: int = 0
    approved_count: int = 0
    batched_minor: int = 0
    settled_minor: int = 0
    difference_minor: int = 0
    """approved - settled: money the merchant has not been credited (yet)."""
    batches: int = 0
    unclosed_batches: int = 0
    unsettled_batches: int = 0


def reconcile_day(batches: Iterable[BatchRecord]) -> list[CurrencyDay]:
    """Sum a merchant's batches of one business day per currency (never across currencies)."""
    days: dict[str, CurrencyDay] = {}
    for b in batches:
        day = days.setdefault(b.currency, CurrencyDay(b.currency))
        day.approved_minor += b.tally_amount_minor
        day.approved_count += b.tally_count
        day.batched_minor += b.close_amount_minor or 0
        day.settled_minor += b.settled_amount_minor or 0
        day.batches += 1
        day.unclosed_batches += b.closed_at is None
        day.unsettled_batches += b.settled_at is None
    for day in days.values():
        day.difference_minor = day.approved_minor - day.settled_minor
    return sorted(days.values(), key=lambda d: d.currency)


def money_at_stake(gaps: Iterable[Incident]) -> dict[str, int]:
    """Minor units at stake per currency over open gap incidents, counting terminal ones only
    (a merchant parent sums its children: counting both would count the money twice)."""
    totals: dict[str, int] = {}
    for gap in gaps:
        amount = gap.evidence.get("amount_minor")
        if gap.scope == "terminal" and isinstance(amount, int):
            currency = str(gap.evidence.get("currency", "?"))
            totals[currency] = totals.get(currency, 0) + amount
    return totals
