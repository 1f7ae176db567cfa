"""Terminal rules: one message (or one deadline) of one terminal -> findings and clears.

Each rule is a small function in a table, shaped like a structlog processor: it takes
the :class:`Ctx` (the terminal's state, the message, ``now``, the settings) and returns
the signals it decides (usually an empty tuple: a healthy heartbeat must cost almost
nothing). Rules never talk to the incident book; they state conditions through
:meth:`Ctx.hold` and :meth:`Ctx.drop`, which keep a bit per (kind, cause) on the
terminal so that:

- one kind has one incident (the key is (terminal, kind)); when several causes of a
  kind hold, the most important one names it (``no_paper`` over ``paper_low``,
  ``offline`` over ``comm_errors``), and when it goes the next one takes over as a
  cause change rather than a resolve-and-reopen;
- a Clear is emitted only for a condition that was held, so the healthy path emits
  nothing;
- nothing is held for a terminal in maintenance (nothing opens for it).

What feeds what is documented in docs/detection.md; the parameters live in
``DetectSettings``, every duration a multiple of the heartbeat interval.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

from fleetwatch.config import DetectSettings
from fleetwatch.core.attribution import Attribution
from fleetwatch.core.messages import TxnResult
from fleetwatch.core.model import (
    ACQUIRER_DECISIONS,
    CAUSES,
    DEFAULT_SEVERITY,
    Clear,
    Finding,
    Kind,
    Signal,
    incident_key,
)
from fleetwatch.core.state import ErrorRun, ReaderStats, TerminalState

# ---- the (kind, cause) table ------------------------------------------------------------

RULE_KINDS: Final[tuple[Kind, ...]] = ("reader", "printer", "network", "power", "tamper", "config")
"""The kinds the terminal rules hold conditions for (settlement and upstreams have their own books)."""

PRIORITY: Final[dict[Kind, tuple[str, ...]]] = {
    kind: tuple(c for c in CAUSES[kind] if (kind, c) not in ACQUIRER_DECISIONS) for kind in RULE_KINDS
}
"""Causes the rules hold per kind, most important first (model.CAUSES' order names the incident)."""

SUMMARY: Final[dict[tuple[str, str], str]] = {
    ("printer", "no_paper"): "Printer out of paper",
    ("printer", "jam"): "Printer paper jam",
    ("printer", "cover_open"): "Printer cover open",
    ("printer", "overheat"): "Printer head overheating",
    ("printer", "fault"): "Printer hardware fault: needs a swap",
    ("printer", "paper_low"): "Printer paper running low",
    ("printer", "print_errors"): "Receipts are failing to print",
    ("reader", "self_test"): "Card reader failed its self-test",
    ("reader", "read_failures"): "Card reader failing on many different cards",
    ("network", "offline"): "Terminal offline",
    ("network", "comm_errors"): "Terminal cannot reach the payment host",
    ("network", "weak_signal"): "Weak network signal",
    ("power", "battery_low"): "Battery low",
    ("power", "battery_critical"): "Battery critically low",
    ("tamper", "tamper"): "Tamper detected: keys wiped, terminal out of service",
    ("config", "invalid_merchant"): "Host rejects the merchant (rc 03): acquirer configuration",
    ("config", "not_permitted"): "Transaction not permitted to terminal (rc 58): configuration",
    ("config", "not_registered"): "Terminal not registered at the host (rc 97)",
    ("config", "keys"): "MAC verification failed (rc A0): terminal keys out of step",
    ("config", "batch_sync"): "Batch number out of step with the host (rc 77): sign-in needed",
}

COND_BITS: Final[dict[tuple[str, str], int]] = {}
KIND_MASK: Final[dict[str, int]] = {}
for _kind, _causes in PRIORITY.items():
    for _cause in _causes:
        COND_BITS[(_kind, _cause)] = 1 << len(COND_BITS)
        KIND_MASK[_kind] = KIND_MASK.get(_kind, 0) | COND_BITS[(_kind, _cause)]

PRINTER_STATE_MASK: Final = sum(
    COND_BITS[("printer", c)] for c in ("fault", "no_paper", "jam", "cover_open", "overheat", "paper_low")
)
PRINTER_MAJOR: Final = frozenset({"no_paper", "jam", "cover_open", "overheat", "fault"})
OFFLINE_BIT: Final = COND_BITS[("network", "offline")]
COMM_BIT: Final = COND_BITS[("network", "comm_errors")]
WEAK_BIT: Final = COND_BITS[("network", "weak_signal")]
PRINT_ERR_BIT: Final = COND_BITS[("printer", "print_errors")]
READ_FAIL_BIT: Final = COND_BITS[("reader", "read_failures")]
SELF_TEST_BIT: Final = COND_BITS[("reader", "self_test")]
TAMPER_BIT: Final = COND_BITS[("tamper", "tamper")]
POWER_MASK: Final = KIND_MASK["power"]
CONFIG_MASK: Final = KIND_MASK["config"]

NOTHING: Final[tuple[Signal, ...]] = ()

_KEYS: dict[tuple[str, str], str] = {}


def terminal_key(terminal_id: str, kind: Kind) -> str:
    """incident_key for a terminal kind, memoised for the few kinds a terminal has."""
    k = (terminal_id, kind)
    key = _KEYS.get(k)
    if key is None:
        key = incident_key("terminal", kind, terminal_id=terminal_id)
        if len(_KEYS) < 1_000_000:
            _KEYS[k] = key
    return key


def top_cause(kind: Kind, conds: int) -> str | None:
    """The most important cause of ``kind`` among the held conditions."""
    for cause in PRIORITY[kind]:
        if conds & COND_BITS[(kind, cause)]:
            return cause
    return None


class Ctx:
    """What a rule sees: one terminal, one message, the time and the settings.

    One instance is reused by the engine for every message (no allocation per beat).
    """

    __slots__ = ("attribution", "cfg", "maint", "msg", "now", "st", "wake")

    def __init__(self, cfg: DetectSettings) -> None:
        self.cfg = cfg
        self.st: TerminalState = TerminalState("")
        self.msg: Any = None
        self.now = 0.0
        self.maint = False
        self.attribution: Attribution | None = None
        self.wake: float | None = None
        """Set by a rule that wants to be asked again at this time (comm errors)."""

    def reset(self, st: TerminalState, msg: Any, now: float) -> Ctx:
        """Point the context at the next message."""
        self.st, self.msg, self.now = st, msg, now
        until = st.maintenance_until
        self.maint = until is not None and now < until
        self.attribution = None
        self.wake = None
        return self

    def hold(self, kind: Kind, cause: str, evidence: dict[str, Any]) -> Sequence[Signal]:
        """The condition holds now: a Finding for the kind's top cause."""
        if self.maint:
            return NOTHING
        st = self.st
        bit = COND_BITS[(kind, cause)]
        st.conds |= bit
        st.resolved_conds &= ~bit
        if top_cause(kind, st.conds) != cause:
            return NOTHING  # a more important cause of the same kind names the incident
        return (self._finding(kind, cause, evidence),)

    def held(self, mask: int) -> int:
        """The conditions of ``mask`` that hold, or held until an operator resolved them."""
        return (self.st.conds | self.st.resolved_conds) & mask

    def drop(self, kind: Kind, mask: int) -> Sequence[Signal]:
        """The conditions in ``mask`` no longer hold: Clear, or hand over to the next cause."""
        st = self.st
        if not st.conds & mask:
            if st.resolved_conds & mask:
                # Resolved by hand while it held; now it is really gone: a later one is new.
                st.resolved_conds &= ~mask
                return (Clear(terminal_key(st.terminal_id, kind), self.now),)
            return NOTHING
        st.conds &= ~mask
        rest = top_cause(kind, st.conds)
        if rest is not None:
            return (self._finding(kind, rest, {}),)
        return (Clear(terminal_key(st.terminal_id, kind), self.now),)

    def _finding(self, kind: Kind, cause: str, evidence: dict[str, Any]) -> Finding:
        st = self.st
        return Finding(
            key=terminal_key(st.terminal_id, kind), kind=kind, cause=cause,
            severity=DEFAULT_SEVERITY[(kind, cause)], scope="terminal", summary=SUMMARY[(kind, cause)],
            at=self.now, terminal_id=st.terminal_id, merchant_id=st.merchant_id,
            evidence=evidence, detected_from=self.now,
        )


Rule = Callable[[Ctx], Sequence[Signal]]

# ---- heartbeat rules ---------------------------------------------------------------------


def printer_state(ctx: Ctx) -> Sequence[Signal]:
    """Printer status from the heartbeat: operator-fixable or hardware -> major; low paper minor.

    ``absent`` (no printer on this model) and ``ok`` clear; unknown changes nothing. The
    status is one value, so a new one replaces the old (paper_low -> no_paper is a cause
    change of the same incident).
    """
    p: str | None = ctx.msg.printer
    if p is None:
        return NOTHING
    if p in PRINTER_MAJOR or p == "paper_low":
        st = ctx.st
        bit = COND_BITS[("printer", p)]
        if st.conds & bit:
            return NOTHING
        st.conds &= ~PRINTER_STATE_MASK
        return ctx.hold("printer", p, {"printer": p})
    return ctx.drop("printer", PRINTER_STATE_MASK)


def reader_self_test(ctx: Ctx) -> Sequence[Signal]:
    """A reader self-test fault in the heartbeat opens a reader incident at once."""
    r = ctx.msg.reader
    if r is None:
        return NOTHING
    if r.chip != "fault" and r.msr != "fault" and r.ctls != "fault":
        return ctx.drop("reader", SELF_TEST_BIT)
    if ctx.st.conds & SELF_TEST_BIT:
        return NOTHING
    faulty = [name for name, v in (("chip", r.chip), ("msr", r.msr), ("ctls", r.ctls)) if v == "fault"]
    return ctx.hold("reader", "self_test", {"faulty": faulty})


def battery(ctx: Ctx) -> Sequence[Signal]:
    """One low and one critical alert per discharge, re-armed only by charging."""
    pw = ctx.msg.power
    if pw is None or pw.battery_pct is None:
        return NOTHING
    st, cfg, pct = ctx.st, ctx.cfg, pw.battery_pct
    if pw.charging is True:
        st.batt_fired = 0
        return ctx.drop("power", POWER_MASK)
    if pct <= cfg.battery_critical_pct and not st.batt_fired & 2:
        st.batt_fired |= 3
        return ctx.hold("power", "battery_critical", {"battery_pct": pct, "threshold_pct": cfg.battery_critical_pct})
    if pct <= cfg.battery_low_pct and not st.batt_fired & 1:
        st.batt_fired |= 1
        return ctx.hold("power", "battery_low", {"battery_pct": pct, "threshold_pct": cfg.battery_low_pct})
    return NOTHING


def tamper(ctx: Ctx) -> Sequence[Signal]:
    """Tamper is critical at once; a heartbeat saying ``tamper: false`` clears it."""
    t = ctx.msg.tamper
    if t is True:
        return NOTHING if ctx.st.conds & TAMPER_BIT else ctx.hold("tamper", "tamper", {"tamper": True})
    if t is False:
        return ctx.drop("tamper", TAMPER_BIT)
    return NOTHING


def weak_signal(ctx: Ctx) -> Sequence[Signal]:
    """Signal at or below ``weak_signal_dbm`` for ``weak_signal_intervals`` in a row (3 dB to clear)."""
    net = ctx.msg.net
    rssi = net.rssi_dbm if net is not None else None
    if rssi is None:
        return NOTHING
    st, cfg = ctx.st, ctx.cfg
    if rssi <= cfg.weak_signal_dbm:
        if st.weak_since is None:
            st.weak_since = ctx.now
        if st.conds & WEAK_BIT or ctx.now - st.weak_since < cfg.intervals(cfg.weak_signal_intervals):
            return NOTHING
        return ctx.hold("network", "weak_signal", {"rssi_dbm": rssi, "weak_since": st.weak_since})
    if rssi > cfg.weak_signal_dbm + 3:
        st.weak_since = None
        return ctx.drop("network", WEAK_BIT)
    return NOTHING


def error_runs_expire(ctx: Ctx) -> Sequence[Signal]:
    """Comm and print error conditions end when their last error is a window old."""
    st = ctx.st
    if not ctx.held(COMM_BIT | PRINT_ERR_BIT) or st.errors is None:
        return NOTHING
    window = ctx.cfg.intervals(ctx.cfg.correlation_window_intervals)
    out: list[Signal] = []
    if ctx.held(COMM_BIT) and ctx.now - st.errors.comm_last >= window:
        out.extend(ctx.drop("network", COMM_BIT))
    if ctx.held(PRINT_ERR_BIT) and ctx.now - st.errors.print_last >= window:
        out.extend(ctx.drop("printer", PRINT_ERR_BIT))
    return out


HEARTBEAT_RULES: Final[tuple[Rule, ...]] = (
    printer_state, reader_self_test, battery, tamper, weak_signal, error_runs_expire,
)

# ---- transaction rules -------------------------------------------------------------------


def _errors(st: TerminalState) -> ErrorRun:
    run = st.errors
    if run is None:
        run = st.errors = ErrorRun()
    return run


def comm_errors(ctx: Ctx) -> Sequence[Signal]:
    """Repeated connect/tls/host failures or link rcs on one terminal -> ``comm_errors``.

    They wait one correlation window from the first error of the run before they open
    (``ctx.wake``), so a host outage seen a moment later can claim them as children.
    A host answer that is a real decision (approved, or a cardholder decline) ends them.
    """
    a = ctx.attribution
    assert a is not None
    st, cfg, now = ctx.st, ctx.cfg, ctx.now
    if a.blame in ("none", "cardholder"):
        if st.errors is not None:
            st.errors.comm_n = 0
        return ctx.drop("network", COMM_BIT)
    if a.blame != "link":
        return NOTHING
    run = _errors(st)
    window = cfg.intervals(cfg.correlation_window_intervals)
    if run.comm_n == 0 or now - run.comm_last > window:
        run.comm_n, run.comm_first = 0, now
    run.comm_n += 1
    run.comm_last = now
    evidence = {"errors": run.comm_n, "first_error_at": run.comm_first, "last_error_at": now,
                "last_stage": ctx.msg.error.stage if ctx.msg.error else None, "last_rc": ctx.msg.rc}
    if st.conds & COMM_BIT:
        return ctx.hold("network", "comm_errors", evidence)
    if run.comm_n >= cfg.comm_error_min and not run.comm_pending:
        due = run.comm_first + window
        if due <= now:
            return ctx.hold("network", "comm_errors", evidence)
        run.comm_pending = True
        ctx.wake = due
    return NOTHING


def comm_errors_due(ctx: Ctx) -> Sequence[Signal]:
    """The waiting window of a comm-error run is over: open if the run is still alive."""
    st, cfg = ctx.st, ctx.cfg
    run = st.errors
    if run is None or not run.comm_pending:
        return NOTHING
    run.comm_pending = False
    window = cfg.intervals(cfg.correlation_window_intervals)
    if run.comm_n < cfg.comm_error_min or ctx.now - run.comm_last > window:
        return NOTHING
    return ctx.hold("network", "comm_errors", {
        "errors": run.comm_n, "first_error_at": run.comm_first, "last_error_at": run.comm_last,
    })


def print_errors(ctx: Ctx) -> Sequence[Signal]:
    """Receipts failing to print (stage print) -> minor ``print_errors``; a clean approval ends it."""
    a = ctx.attribution
    assert a is not None
    st, cfg, now = ctx.st, ctx.cfg, ctx.now
    if a.blame != "printer":
        if ctx.msg.outcome == "approved" and ctx.msg.error is None:
            return ctx.drop("printer", PRINT_ERR_BIT)
        return NOTHING
    run = _errors(st)
    if now - run.print_last > cfg.intervals(cfg.correlation_window_intervals):
        run.print_n = 0
    run.print_n += 1
    run.print_last = now
    if run.print_n < cfg.print_error_min:
        return NOTHING
    return ctx.hold("printer", "print_errors", {"print_errors": run.print_n, "last_error_at": now})


def config_codes(ctx: Ctx) -> Sequence[Signal]:
    """Configuration response codes (03 58 97 A0 77) open ``config`` at once; an approval ends it."""
    a = ctx.attribution
    assert a is not None
    if a.blame == "config" and a.config_cause is not None:
        return ctx.hold("config", a.config_cause, {"rc": ctx.msg.rc})
    if ctx.msg.outcome == "approved" and ctx.held(CONFIG_MASK):
        return ctx.drop("config", CONFIG_MASK)
    return NOTHING


def reader_behaviour(ctx: Ctx) -> Sequence[Signal]:
    """Reader wear from behaviour: failing share over distinct cards against a frozen baseline.

    Opens only with at least ``reader_min_distinct_cards`` cards in the window, at least
    ``reader_min_failing_cards`` *distinct* failing cards, and a failing share of at least
    ``reader_min_share`` and ``reader_baseline_factor`` times the terminal's baseline. A
    card that fails again is still one card (and does not inflate the denominator).
    Clears when the share falls below half the threshold or too few cards fail.
    """
    txn: TxnResult = ctx.msg
    card = txn.card_ref
    if card is None:
        return NOTHING
    a = ctx.attribution
    assert a is not None
    st, cfg, now = ctx.st, ctx.cfg, ctx.now
    rs = st.reader
    if rs is None:
        rs = st.reader = ReaderStats()
    n_window = cfg.reader_window_cards
    horizon = cfg.intervals(cfg.reader_window_intervals)
    if rs.events and now - rs.last_at > horizon:
        rs.events, rs.fails = 0, None
    rs.last_at = now
    idx = rs.events
    rs.events += 1
    if a.read_failure:
        if rs.fails is None:
            rs.fails = []
        rs.fails.append((idx, now, card))
    fails = rs.fails
    if fails:
        while fails and (fails[0][0] <= idx - n_window or now - fails[0][1] > horizon):
            fails.pop(0)
        if not fails:
            rs.fails = fails = None
    if rs.baseline is None:
        _learn_baseline(rs, cfg, fails)
    if not fails and not ctx.held(READ_FAIL_BIT):
        return NOTHING
    distinct_fail, cards = window_counts(rs, n_window)
    base = rs.baseline if rs.baseline is not None else cfg.reader_default_baseline
    threshold = max(cfg.reader_min_share, cfg.reader_baseline_factor * base)
    share = distinct_fail / cards if cards else 0.0
    if cards >= cfg.reader_min_distinct_cards and distinct_fail >= cfg.reader_min_failing_cards \
            and share >= threshold:
        return ctx.hold("reader", "read_failures", {
            "failing_cards": distinct_fail, "cards": cards, "share": round(share, 4),
            "baseline_share": round(base, 4), "threshold_share": round(threshold, 4),
        })
    if ctx.held(READ_FAIL_BIT) and (share < threshold / 2 or distinct_fail < cfg.reader_min_failing_cards):
        return ctx.drop("reader", READ_FAIL_BIT)
    return NOTHING


def window_counts(rs: ReaderStats, n_window: int) -> tuple[int, int]:
    """(distinct failing cards, distinct cards) in the reader window."""
    fails = rs.fails or ()
    distinct_fail = len({c for _, _, c in fails})
    cards = min(rs.events, n_window) - (len(fails) - distinct_fail)
    return distinct_fail, max(cards, 0)


def _learn_baseline(rs: ReaderStats, cfg: DetectSettings, fails: list[tuple[int, float, str]] | None) -> None:
    """Freeze the first healthy full window's failing share as the terminal's baseline."""
    rs.base_cards += 1
    if rs.base_cards < cfg.reader_window_cards:
        return
    distinct_fail, cards = window_counts(rs, cfg.reader_window_cards)
    share = distinct_fail / cards if cards else 0.0
    if share < cfg.reader_min_share:
        rs.baseline = share
    else:
        rs.base_cards = 0  # not healthy now: learn again later, use the default meanwhile


TXN_RULES: Final[tuple[Rule, ...]] = (comm_errors, print_errors, config_codes, reader_behaviour)

# ---- liveness (called by the engine on state changes, not per message) -------------------


def went_offline(ctx: Ctx, reason: str, last_seen: float | None) -> Sequence[Signal]:
    """Silence past the threshold, a flap during recovery, or a live Last Will."""
    evidence: dict[str, Any] = {"reason": reason, "last_seen": last_seen}
    if last_seen is not None:
        evidence["silent_s"] = round(ctx.now - last_seen, 3)
    return ctx.hold("network", "offline", evidence)


def came_back(ctx: Ctx) -> Sequence[Signal]:
    """The terminal spoke again: the offline condition is gone (hysteresis follows)."""
    return ctx.drop("network", OFFLINE_BIT)


def run_rules(ctx: Ctx, rules: tuple[Rule, ...]) -> list[Signal]:
    """Run a rule table; the common result is an empty list."""
    out: list[Signal] = []
    for rule in rules:
        sig = rule(ctx)
        if sig:
            out.extend(sig)
    return out
