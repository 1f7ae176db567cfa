"""Link and print failures by rate: the decision table, the window, and terminals through the engine.

Times are in heartbeat intervals (1 s). Defaults: window 20 attempts / 60 intervals, at
least 5 attempts (or an unbroken run of failures), open at 50% (and 3 failing links or 2
failing receipts), clear below
20% or after 3 intervals without a failure, then 3 intervals of hysteresis; the link
waits one correlation window (5) before it opens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from fleetwatch.config import DetectSettings
from fleetwatch.core.model import Incident
from fleetwatch.core.rates import LINK, PRINT, AttemptWindow, FleetShare, RateRule, Verdict, judge
from tests.core.test_rules import Fleet
from tests.golden import txn_env

CFG = DetectSettings(heartbeat_interval_s=1.0, offline_after_missed=3, clear_after_intervals=3)
LINK_RULE = RateRule.for_signal(CFG, LINK)
PRINT_RULE = RateRule.for_signal(CFG, PRINT)


# ---- the decision table -----------------------------------------------------------------------

JUDGE: list[tuple[str, RateRule, int, int, float, bool, Verdict]] = [
    # name, rule, attempts, failures, fleet baseline, held, verdict
    ("every attempt failed, but only two links", LINK_RULE, 2, 2, 0.0, False, "keep"),
    ("three of three failing: down on every attempt", LINK_RULE, 3, 3, 0.0, False, "open"),
    ("two of three: too few mixed attempts to say", LINK_RULE, 3, 2, 0.0, False, "keep"),
    ("failing, ok, ok, failing: too few to say", PRINT_RULE, 4, 2, 0.0, False, "keep"),
    ("four of five failing", LINK_RULE, 5, 4, 0.0, False, "open"),
    ("half failing is enough", LINK_RULE, 10, 5, 0.0, False, "open"),
    ("just under half", LINK_RULE, 20, 9, 0.0, False, "keep"),
    ("30% on a busy terminal", LINK_RULE, 20, 6, 0.0, False, "keep"),
    ("two failing links of five are below comm_error_min", LINK_RULE, 5, 2, 0.0, False, "keep"),
    ("two failing receipts in a row reach print_error_min", PRINT_RULE, 2, 2, 0.0, False, "open"),
    ("one failing receipt", PRINT_RULE, 1, 1, 0.0, False, "keep"),
    ("three of five receipts failing", PRINT_RULE, 5, 3, 0.0, False, "open"),
    ("a fleet that fails 20% anyway needs 60%", LINK_RULE, 20, 11, 0.2, False, "keep"),
    ("... and 60% is enough there", LINK_RULE, 20, 12, 0.2, False, "open"),
    ("a terminal failing everything opens even on the worst fleet", LINK_RULE, 5, 5, 0.9, False, "open"),
    ("held: 80% keeps it", LINK_RULE, 20, 16, 0.0, True, "keep"),
    ("held: one success among failures keeps it", LINK_RULE, 5, 4, 0.0, True, "keep"),
    ("held: between the shares keeps it", LINK_RULE, 20, 6, 0.0, True, "keep"),
    ("held: below the clear share clears", LINK_RULE, 20, 3, 0.0, True, "clear"),
    ("held: all good but too few attempts (after a restart)", LINK_RULE, 4, 0, 0.0, True, "keep"),
    ("held: five good attempts after a restart", LINK_RULE, 5, 0, 0.0, True, "clear"),
    ("empty window", LINK_RULE, 0, 0, 0.0, True, "keep"),
]


@pytest.mark.parametrize("case", JUDGE, ids=[j[0] for j in JUDGE])
def test_judge(case: tuple[str, RateRule, int, int, float, bool, Verdict]) -> None:
    """The failing share over the window against the open / clear shares and the fleet's baseline."""
    name, rule, n_attempts, failures, baseline, held, verdict = case
    assert judge(n_attempts, failures, baseline, held, rule) == verdict, name


def test_window_keeps_the_last_attempts_within_its_time_span() -> None:
    """A full window drops its oldest attempt (and its failure count); old attempts expire."""
    w = AttemptWindow(4)
    for i, failed in enumerate([True, True, False, False, False]):
        w.record(float(i), failed)
    assert (len(w.attempts), w.failures, w.first_failure_at(), w.last_failure_at) == (4, 1, 1.0, 1.0)
    w.expire(62.5, 60.0)  # attempts before 2.5 leave
    assert (len(w.attempts), w.failures, w.first_failure_at()) == (2, 0, None)


def test_fleet_share_learns_only_normal_periods_with_enough_attempts() -> None:
    """The baseline moves toward the period's share, not during an outage, not on a handful."""
    s = FleetShare()
    for n in range(100):
        s.count(n % 5 == 0)
    s.fold(0.5, 20, normal=True)
    assert s.baseline == pytest.approx(0.1)
    for _ in range(100):
        s.count(True)
    s.fold(0.5, 20, normal=False)
    assert s.baseline == pytest.approx(0.1)
    for _ in range(5):
        s.count(True)
    s.fold(0.5, 20, normal=True)
    assert s.baseline == pytest.approx(0.1)


# ---- terminals through the engine ----------------------------------------------------------------

Fields = dict[str, Any]
LINK_FAIL: Fields = {"outcome": "error", "rc": None, "error": {"stage": "connect"}}
PRINT_FAIL: Fields = {"error": {"stage": "print"}}


def attempts(f: Fleet, tid: str, start: float, pattern: str, *, every: float = 1.0,
             fail: Fields | None = None) -> float:
    """Payments of ``tid`` from ``start``, one per ``every``: ``F`` fails, ``S`` succeeds, ``.``
    is no attempt. Heartbeats every interval alongside. Returns the time after the last one."""
    fail = fail or LINK_FAIL
    t = start
    next_beat = start
    for n, c in enumerate(pattern):
        while next_beat <= t:
            f.beat(tid, next_beat)
            next_beat += 1.0
        if c != ".":
            fields = fail if c == "F" else {}
            f.send(txn_env(tid, t, f"{tid}-{start}-{n}", **fields))
        t += every
    return t


def last_failure(start: float, pattern: str, every: float = 1.0) -> float:
    return start + every * pattern.rindex("F")


@dataclass(frozen=True)
class RateCase:
    name: str
    pattern: str
    every: float = 1.0
    fail: Fields | None = None
    kind: str = "network"
    opens: bool = True
    stays_open_while_failing: bool = True
    tail: float = 15.0
    """Heartbeats without payments after the pattern (a terminal that stops trading)."""


CASES = [
    RateCase("80% of attempts fail for 40 intervals", "FFFFS" * 8 + "S" * 10),
    RateCase("one success in a long failing run does not end it", "F" * 12 + "S" + "F" * 12 + "S" * 8),
    RateCase("failing until the terminal stops trading", "FFFFS" * 6, tail=15),
    RateCase("30% on a busy terminal for a short burst", "S" * 20 + "FSSFSSFSSS" * 4 + "S" * 20, every=0.25,
             opens=False),
    RateCase("one stray failure among many successes", "S" * 30 + "F" + "S" * 30, every=0.5, opens=False),
    RateCase("receipts failing one in two", "FS" * 12 + "S" * 20, fail=PRINT_FAIL, kind="printer"),
    RateCase("receipts failing 30% in a short burst", "S" * 20 + "FSSFSSFSSS" * 3 + "S" * 20, every=0.25,
             fail=PRINT_FAIL, kind="printer", opens=False),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_rate_cases(case: RateCase) -> None:
    """An intermittent fault opens one incident that stays open while it hurts and resolves
    after the failures stop (their last failure + clear_after + hysteresis); a low rate opens
    nothing."""
    f = Fleet(CFG)
    f.beats("T1", 1, 5)
    end = attempts(f, "T1", 5.0, case.pattern, every=case.every, fail=case.fail)
    f.beats("T1", end, end + case.tail)
    got = f.of("T1")
    if not case.opens:
        assert got == [], case.name
        return
    assert len(got) == 1, [(i.kind, i.cause, i.opened_at, i.resolved_at) for i in got]
    inc = got[0]
    cause = "comm_errors" if case.kind == "network" else "print_errors"
    assert (inc.kind, inc.cause) == (case.kind, cause)
    last = last_failure(5.0, case.pattern, case.every)
    assert inc.resolved_at is not None, "resolves once the failures stopped"
    assert inc.resolved_at > last, "stays open while the failures go on"
    clear = CFG.intervals(CFG.clear_after_intervals)
    assert inc.resolved_at <= last + 2 * clear + 1.0
    if case.kind == "network":
        assert inc.opened_at >= 5.0 + CFG.intervals(CFG.correlation_window_intervals)


def test_the_old_failure_mode_a_success_ended_the_incident_and_it_never_came_back() -> None:
    """Four in five failing for 60 intervals: the incident is opened once and is open at every
    moment from its opening until the failures stop."""
    f = Fleet(CFG)
    f.beats("T1", 1, 5)
    end = attempts(f, "T1", 5.0, "FFFFS" * 12)
    f.beats("T1", end, end + 12)
    (inc,) = f.of("T1")
    assert inc.opened_at <= 12.0
    assert inc.resolved_at is not None
    assert inc.resolved_at >= 5.0 + 59
    assert "flap" not in str(inc.evidence), inc.evidence
    assert inc.evidence["share"] >= 0.5


def _drive_until_open(f: Fleet) -> Incident:
    f.beats("T1", 1, 5)
    attempts(f, "T1", 5.0, "FFFFFFFF")
    (inc,) = f.of("T1")
    return inc


def test_manual_resolve_while_still_failing_reopens_with_previous_id() -> None:
    """An operator resolving a link that still fails: its next failure opens the continuation."""
    f = Fleet(CFG)
    inc = _drive_until_open(f)
    f.take(f.engine.resolve(inc.id, f.now))
    attempts(f, "T1", 13.0, "FF")
    reopened = [i for i in f.of("T1") if i.id != inc.id]
    assert [(i.previous_id, i.status) for i in reopened] == [(inc.id, "open")]


def test_restart_with_an_open_rate_incident_resolves_when_failures_do_not_come_back() -> None:
    """Across a restart the window is gone: the incident is kept, and resolves once no attempt
    failed for clear_after_intervals (plus hysteresis); one success right after does not end it."""
    f = Fleet(CFG)
    inc = _drive_until_open(f)
    records = f.engine.take_dirty_terminals()
    g = Fleet(CFG)
    g.engine.restore(records, [inc], [], [], 13.0)
    g.now = 13.0
    g.seq = dict(f.seq)
    g.send(txn_env("T1", 13.5, "after-1"))
    g.beats("T1", 14, 17)
    assert g.incidents == {}, "one success after the restart does not end it"
    g.beats("T1", 17, 25)
    assert [(w.id, w.status) for w in g.incidents.values()] == [(inc.id, "resolved")]


def test_the_fleets_own_baseline_raises_the_bar() -> None:
    """On a fleet where every terminal's link fails 40% of the time, a terminal failing 70% is
    not singled out; on a healthy fleet the same terminal opens comm_errors."""
    cfg = DetectSettings(heartbeat_interval_s=1.0, upstream_baseline_alpha=0.5)

    def run(noisy: bool) -> list[Incident]:
        f = Fleet(cfg)
        peers = [f"P{i}" for i in range(11)]
        pattern: Callable[[int], bool] = (lambda n: n % 5 < 2) if noisy else (lambda n: False)
        for step in range(240):
            t = 1.0 + step * 0.5
            for p in peers:
                if step % 2 == 0:
                    f.beat(p, t)
                f.send(txn_env(p, t + 0.1, f"{p}-{step}", **(LINK_FAIL if pattern(step) else {})))
            if step % 2 == 0:
                f.beat("T1", t)
            if step >= 200:
                f.send(txn_env("T1", t + 0.2, f"T1-{step}", **(LINK_FAIL if step % 10 < 7 else {})))
        return f.of("T1")

    assert [i.cause for i in run(noisy=False)] == ["comm_errors"]
    assert run(noisy=True) == []


def test_healthy_terminals_keep_no_rate_window() -> None:
    """Approved payments and healthy beats allocate nothing per terminal; a window lives only
    from a failure until nothing is left in it."""
    f = Fleet(CFG)
    f.beats("T1", 1, 3)
    attempts(f, "T1", 3.0, "S" * 10)
    state = f.engine._terms["T1"]
    assert state.rates is None
    attempts(f, "T1", 13.0, "F")
    assert state.rates is not None
    attempts(f, "T1", 14.0, "S" * 25)
    f.beats("T1", 39, 100)
    assert state.rates is None
