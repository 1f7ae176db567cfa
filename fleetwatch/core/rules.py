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

from collections.abc import Callable, Mapping, Sequence
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
from fleetwatch.core.rates import LINK, PRINT, AttemptWindow, FleetRates, FleetShare, RateRule, TerminalRates, judge
from fleetwatch.core.state import ReaderStats, TerminalState

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
RATE_BITS: Final = COMM_BIT | PRINT_ERR_BIT
"""Conditions judged over a rate window (core/rates.py)."""
POWER_MASK: Final = KIND_MASK["power"]
CONFIG_MASK: Final = KIND_MASK["config"]
NOT_REGISTERED_BIT: Final = COND_BITS[("config", "not_registered")]
SUSPENDED_KINDS: Final[tuple[Kind, ...]] = ("network", "config")
"""What a suspension ends and keeps from opening (CONTRACT.md §7)."""

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

    __slots__ = ("attribution", "cfg", "fleet_rates", "link_rule", "maint", "msg", "now", "print_rule", "st",
                 "wait_s", "wake")

    def __init__(self, cfg: DetectSettings, fleet_rates: FleetRates | None = None) -> None:
        self.cfg = cfg
        self.fleet_rates = fleet_rates if fleet_rates is not None else FleetRates(cfg)
        """The fleet's baseline failing shares (shared by every terminal; the engine ticks it)."""
        self.link_rule = RateRule.for_signal(cfg, LINK)
        self.print_rule = RateRule.for_signal(cfg, PRINT)
        self.wait_s = cfg.intervals(cfg.correlation_window_intervals)
        self.st: TerminalState = TerminalState("")
        self.msg: Any = None
        self.now = 0.0
        self.maint = False
        self.attribution: Attribution | None = None
        self.wake: float | None = None
        """Set by a rule that wants :func:`rates_due` to run for this terminal at this time."""

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


HEARTBEAT_RULES: Final[tuple[Rule, ...]] = (
    printer_state, reader_self_test, battery, tamper, weak_signal,
)
"""Nothing here about link or print rates: they end on their own deadline (:func:`rates_due`),
so a heartbeat never pays for them."""

HEARTBEAT_RULES_SUSPENDED: Final[tuple[Rule, ...]] = (printer_state, reader_self_test, battery, tamper)
"""While the acquirer has suspended a terminal nothing of kind network or config opens for it;
its hardware and tamper go on as usual (CONTRACT.md §7)."""

# ---- transaction rules -------------------------------------------------------------------


LINK_OK: Final = frozenset({"none", "cardholder", "config", "printer"})
"""Blames that prove the host answered the attempt: the terminal's link worked for it.
Host unavailability (rc 91 92 96) says nothing about the terminal's own link (the
correlator counts it upstream); reader, PIN and cancel failures never reached the host."""


def _window(st: TerminalState, signal: str, rule: RateRule) -> AttemptWindow:
    """The terminal's window for ``signal``, created at its first failure."""
    rates = st.rates
    if rates is None:
        rates = st.rates = TerminalRates()
    w = rates.link if signal == LINK else rates.print
    if w is None:
        w = AttemptWindow(rule.window_attempts)
        if signal == LINK:
            rates.link = w
        else:
            rates.print = w
    return w


def _forget(st: TerminalState, signal: str) -> None:
    """Drop an idle window (and the holder once both are gone)."""
    rates = st.rates
    if rates is None:
        return
    if signal == LINK:
        rates.link = None
    else:
        rates.print = None
    if rates.link is None and rates.print is None:
        st.rates = None


def _wake(ctx: Ctx, w: AttemptWindow, at: float) -> None:
    """Ask for :func:`rates_due` at ``at``; a window keeps only its earliest request."""
    if w.wake_at is not None and w.wake_at <= at:
        return
    w.wake_at = at
    ctx.wake = at if ctx.wake is None or at < ctx.wake else ctx.wake


class _Signal:
    """One rate-judged condition: where it lives and what it is called."""

    __slots__ = ("bit", "cause", "kind", "name")

    def __init__(self, name: str, kind: Kind, cause: str, bit: int) -> None:
        self.name, self.kind, self.cause, self.bit = name, kind, cause, bit


_LINK: Final = _Signal(LINK, "network", "comm_errors", COMM_BIT)
_PRINT: Final = _Signal(PRINT, "printer", "print_errors", PRINT_ERR_BIT)


def _rate_parts(ctx: Ctx, sig: _Signal) -> tuple[RateRule, FleetShare, float]:
    """(rule, fleet share, wait before opening) of a signal: the link waits one
    correlation window so that an upstream can claim it; the printer has no upstream."""
    if sig is _LINK:
        return ctx.link_rule, ctx.fleet_rates.link, ctx.wait_s
    return ctx.print_rule, ctx.fleet_rates.print, 0.0


def _rate_evidence(w: AttemptWindow, rule: RateRule, baseline: float, sig: _Signal) -> dict[str, Any]:
    n, f = len(w.attempts), w.failures
    ev: dict[str, Any] = {
        "attempts": n, "failed_attempts": f, "share": round(f / n, 4) if n else 0.0,
        "threshold_share": round(rule.open_threshold(baseline), 4), "baseline_share": round(baseline, 4),
        "first_error_at": w.first_failure_at(), "last_error_at": w.last_failure_at,
    }
    ev["errors" if sig is _LINK else "print_errors"] = f
    return ev


def _attempt(ctx: Ctx, sig: _Signal, failed: bool) -> Sequence[Signal]:
    """One attempt of a rate-judged signal: count it, and decide what its window says."""
    rule, fleet, wait_s = _rate_parts(ctx, sig)
    fleet.count(failed)
    st, now = ctx.st, ctx.now
    rates = st.rates
    w = None if rates is None else (rates.link if sig is _LINK else rates.print)
    if w is None:
        if not failed:
            return NOTHING  # the healthy path: no window, nothing kept
        w = _window(st, sig.name, rule)
    w.record(now, failed)
    w.expire(now, rule.window_s)
    n, f, base = len(w.attempts), w.failures, fleet.baseline
    if st.conds & sig.bit:
        if failed:
            _wake(ctx, w, now + rule.clear_after_s)
            return ctx.hold(sig.kind, sig.cause, _rate_evidence(w, rule, base, sig))
        if judge(n, f, base, True, rule) == "clear":
            return ctx.drop(sig.kind, sig.bit)
        return NOTHING
    if st.resolved_conds & sig.bit and judge(n, f, base, True, rule) == "clear":
        return ctx.drop(sig.kind, sig.bit)  # resolved by hand, and now really gone
    if w.pending or judge(n, f, base, False, rule) != "open":
        if w.failures:
            first = w.first_failure_at()
            _wake(ctx, w, (first if first is not None else now) + rule.window_s)
        elif w.idle():
            _forget(st, sig.name)
        return NOTHING
    first = w.first_failure_at()
    due = (first if first is not None else now) + wait_s
    if due > now:
        w.pending = True
        _wake(ctx, w, due)
        return NOTHING
    _wake(ctx, w, now + rule.clear_after_s)
    return ctx.hold(sig.kind, sig.cause, _rate_evidence(w, rule, base, sig))


def comm_errors(ctx: Ctx) -> Sequence[Signal]:
    """The terminal's own link, judged by the failing share of its recent attempts.

    A failure is a link blame (stage connect / tls / host, rc 06 20 22 30 68); a success
    is any attempt the host answered (:data:`LINK_OK`). It waits one correlation window
    from the first failure in the window before it opens, so a host outage seen a moment
    later can claim it as a child.
    """
    a = ctx.attribution
    assert a is not None
    if a.blame == "link":
        return _attempt(ctx, _LINK, True)
    if a.blame in LINK_OK:
        if ctx.st.rates is None:  # the healthy path: count it for the fleet, keep nothing
            ctx.fleet_rates.link.attempts += 1
            return NOTHING
        return _attempt(ctx, _LINK, False)
    return NOTHING


def print_errors(ctx: Ctx) -> Sequence[Signal]:
    """Receipts failing to print (stage print) by their share of recent receipts -> minor ``print_errors``.

    Every approved payment prints a receipt: one without a print error is a success.
    """
    a = ctx.attribution
    assert a is not None
    if a.blame == "printer":
        return _attempt(ctx, _PRINT, True)
    if ctx.msg.outcome == "approved":
        if ctx.st.rates is None:  # the healthy path: count it for the fleet, keep nothing
            ctx.fleet_rates.print.attempts += 1
            return NOTHING
        return _attempt(ctx, _PRINT, False)
    return NOTHING


def rates_due(ctx: Ctx) -> Sequence[Signal]:
    """A rate window asked to be looked at again (ctx.wake): open after the wait, end a
    condition whose failures stopped, forget a window with nothing left in it."""
    st = ctx.st
    out: list[Signal] = []
    for sig in (_LINK, _PRINT):
        # Read afresh each turn and never narrowed before the loop: the first window's turn
        # may forget st.rates, and a compiled build checks the type mypy narrowed it to.
        rates = st.rates
        if rates is None:
            break
        w = rates.link if sig is _LINK else rates.print
        if w is None or w.wake_at is None or w.wake_at > ctx.now:
            continue
        out.extend(_window_due(ctx, sig, w))
    return out or NOTHING


def _window_due(ctx: Ctx, sig: _Signal, w: AttemptWindow) -> Sequence[Signal]:
    rule, fleet, wait_s = _rate_parts(ctx, sig)
    st, now = ctx.st, ctx.now
    w.wake_at = None
    w.expire(now, rule.window_s)
    out: Sequence[Signal] = NOTHING
    last = w.last_failure_at
    if w.pending:
        w.pending = False
        if not st.conds & sig.bit and last is not None and now - last <= wait_s \
                and judge(len(w.attempts), w.failures, fleet.baseline, False, rule) == "open":
            _wake(ctx, w, last + rule.clear_after_s)
            return ctx.hold(sig.kind, sig.cause, _rate_evidence(w, rule, fleet.baseline, sig))
    elif ctx.held(sig.bit):
        if last is None or now - last >= rule.clear_after_s:
            # The failures stopped (or the terminal stopped trading): this episode is over.
            w.attempts.clear()
            w.failures, w.last_failure_at = 0, None
            out = ctx.drop(sig.kind, sig.bit)
        else:
            _wake(ctx, w, last + rule.clear_after_s)
    if not ctx.held(sig.bit) and not w.pending:
        first = w.first_failure_at()
        if first is None:
            _forget(st, sig.name)
        else:
            _wake(ctx, w, max(now, first + rule.window_s))
    return out


def forget_conditions(st: TerminalState, kinds: Sequence[Kind]) -> None:
    """The acquirer ended these kinds' incidents: forget their conditions and the windows
    that could raise them again (a suspended terminal's link, everything of a closed one)."""
    for kind in kinds:
        mask = KIND_MASK[kind]
        st.conds &= ~mask
        st.resolved_conds &= ~mask
    if "network" in kinds:
        st.weak_since = None
        st.flap_until = None
        _forget(st, LINK)
    if "printer" in kinds:
        _forget(st, PRINT)
    if "reader" in kinds:
        st.reader = None
    if "power" in kinds:
        st.batt_fired = 0


def resume_rate(st: TerminalState, bit: int, now: float, cfg: DetectSettings) -> float:
    """A rate condition open across a restart: its window is gone, so treat the restart as
    its last failure; returns when :func:`rates_due` must look (failures stopped?)."""
    signal = LINK if bit == COMM_BIT else PRINT
    w = _window(st, signal, RateRule.for_signal(cfg, signal))
    w.last_failure_at = now
    w.wake_at = now + cfg.intervals(cfg.clear_after_intervals)
    return w.wake_at


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

TXN_RULES_SUSPENDED: Final[tuple[Rule, ...]] = (print_errors, reader_behaviour)
"""A suspended terminal's declines and link failures open nothing (its config and network
are the acquirer's decision now); its printer and reader are still judged."""


def closed_terminal_txn(ctx: Ctx) -> Sequence[Signal]:
    """A transaction from a terminal the acquirer closed: ``config``/``not_registered``
    (CONTRACT.md §7), whatever its outcome. It stays open until the terminal is active
    again and a payment is approved, or an operator resolves it."""
    if ctx.st.conds & NOT_REGISTERED_BIT:
        return NOTHING
    return ctx.hold("config", "not_registered", {"rc": ctx.msg.rc, "terminal_closed": True})


TXN_RULES_CLOSED: Final[tuple[Rule, ...]] = (closed_terminal_txn,)
"""Nothing else opens for a closed terminal but its settlement gaps (the settlement book's)."""

# ---- liveness (called by the engine on state changes, not per message) -------------------


def went_offline(
    ctx: Ctx, reason: str, last_seen: float | None, extra: Mapping[str, Any] | None = None,
) -> Sequence[Signal]:
    """Silence past the threshold, a flap during recovery, or a live Last Will (``extra``:
    more evidence, such as the shop's usual opening a terminal did not come back by)."""
    evidence: dict[str, Any] = {"reason": reason, "last_seen": last_seen}
    if last_seen is not None:
        evidence["silent_s"] = round(ctx.now - last_seen, 3)
    if extra:
        evidence.update(extra)
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
