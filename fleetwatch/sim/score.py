"""Score a daemon's incidents against a simulator's ground truth.

Matching (pure, so it is unit-tested against fake incident lists):

- an incident **detects** an expected fault when it has the fault's kind, was opened at
  or after the fault's ``at`` (minus ``skew`` for clock jitter), and covers the same
  place: the same terminal for terminal faults (a settlement gap also needs the same
  batch and currency when both say so); a merchant/group/fleet incident for
  fleet faults, the same group object for group faults;
- an incident **explained** by a detected parent (its ``parent_id`` points at an
  incident that detected a fault) counts as correct too: that is exactly what the
  contract asks children to be;
- an incident **violates** a must-not fault (decline storm, garbage) when it touches
  one of the terminals or the merchant named there and was opened inside the fault's
  window (plus ``grace``) without being explained by an expected fault.

Precision per kind is correct incidents / all incidents of that kind; recall is
detected expected faults / expected faults; latency is ``opened_at - at``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from fleetwatch.sim.truth import Truth

Incident = dict[str, Any]


def epoch(stamp: str | None) -> float | None:
    """RFC 3339 (``...Z``) -> epoch seconds."""
    if not stamp:
        return None
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def fetch_incidents(api: str, token: str, client: httpx.Client | None = None) -> list[Incident]:
    """Every incident (``status=all``), following ``next_cursor``."""
    own = client is None
    http = client or httpx.Client(timeout=10.0)
    try:
        items: list[Incident] = []
        cursor: str | None = None
        while True:
            params = {"status": "all", "limit": "100"} | ({"cursor": cursor} if cursor else {})
            resp = http.get(f"{api.rstrip('/')}/api/v1/incidents", params=params,
                            headers={"Authorization": f"Bearer {token}"})
            resp.raise_for_status()
            page = resp.json()
            items += page.get("items", [])
            cursor = page.get("next_cursor")
            if not cursor:
                return items
    finally:
        if own:
            http.close()


def _place_matches(inc: Incident, fault: Truth) -> bool:
    scope = inc.get("scope", "terminal")
    if fault.scope == "terminal":
        if scope != "terminal" or inc.get("terminal_id") != fault.terminal_id:
            return False
        if fault.what == "settlement_gap" and fault.batch_no is not None:
            ev = inc.get("evidence") or {}
            if "batch_no" in ev and ev["batch_no"] != fault.batch_no:
                return False
            if "currency" in ev and fault.currency is not None and ev["currency"] != fault.currency:
                return False
        return True
    if fault.scope == "merchant":
        return scope == "merchant" and inc.get("merchant_id") == fault.merchant_id
    if fault.scope == "group":
        group = inc.get("group") or {}
        if scope == "fleet":
            return True  # a group covering (nearly) the whole fleet is reported as fleet
        return scope == "group" and all(group.get(k) == v for k, v in (fault.group or {}).items())
    return scope in ("fleet", "group", "merchant")  # fleet faults


def detects(inc: Incident, fault: Truth, skew: float = 1.0) -> bool:
    """Whether ``inc`` is the incident a correct daemon opens for the expected ``fault``."""
    opened = epoch(inc.get("opened_at"))
    if opened is None or opened < fault.at - skew:
        return False
    return inc.get("kind") == fault.what and _place_matches(inc, fault)


def violates(inc: Incident, fault: Truth, grace: float = 30.0, skew: float = 1.0) -> bool:
    """Whether ``inc`` was opened for noise (a must-not fault) it should have ignored."""
    opened = epoch(inc.get("opened_at"))
    if opened is None or opened < fault.at - skew:
        return False
    if fault.until is not None and opened > fault.until + grace:
        return False
    touched = set(fault.terminals or []) | ({fault.terminal_id} if fault.terminal_id else set())
    if inc.get("terminal_id") in touched:
        return True
    return fault.merchant_id is not None and fault.scope == "merchant" and \
        inc.get("scope") == "merchant" and inc.get("merchant_id") == fault.merchant_id


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


@dataclass
class KindScore:
    """One row of the report."""

    kind: str
    expected: int = 0
    detected: int = 0
    incidents: int = 0
    correct: int = 0
    false_alarms: int = 0
    latencies: list[float] = field(default_factory=list)

    @property
    def recall(self) -> float | None:
        return self.detected / self.expected if self.expected else None

    @property
    def precision(self) -> float | None:
        return self.correct / self.incidents if self.incidents else None

    @property
    def p50(self) -> float | None:
        return _pct(self.latencies, 0.50)

    @property
    def p95(self) -> float | None:
        return _pct(self.latencies, 0.95)


@dataclass
class ScoreReport:
    """Per-kind rows plus what decides the exit code."""

    kinds: dict[str, KindScore]
    missed: list[Truth]
    violations: list[tuple[Incident, Truth]]

    @property
    def passed(self) -> bool:
        return not self.missed and not self.violations


def score(
    truth: list[Truth], incidents: list[Incident], *, grace: float = 30.0, skew: float = 1.0
) -> ScoreReport:
    """Match incidents to ground truth; see the module docstring for the rules."""
    rows: dict[str, KindScore] = {}

    def row(kind: str) -> KindScore:
        return rows.setdefault(kind, KindScore(kind))

    expected = [f for f in truth if f.expect_incident]
    noise = [f for f in truth if not f.expect_incident]
    good: set[str] = set()
    missed: list[Truth] = []
    for fault in expected:
        r = row(fault.what)
        r.expected += 1
        hits = [i for i in incidents if detects(i, fault, skew)]
        if not hits:
            missed.append(fault)
            continue
        r.detected += 1
        first = min(epoch(i["opened_at"]) or math.inf for i in hits)
        r.latencies.append(max(0.0, first - fault.at))
        good.update(str(i.get("id")) for i in hits)
    children: dict[str, list[str]] = defaultdict(list)
    for inc in incidents:
        if inc.get("parent_id"):
            children[str(inc["parent_id"])].append(str(inc.get("id")))
    frontier = list(good)
    while frontier:  # children (and grandchildren) of correct parents are correct
        for child in children.get(frontier.pop(), []):
            if child not in good:
                good.add(child)
                frontier.append(child)
    violations: list[tuple[Incident, Truth]] = []
    for inc in incidents:
        r = row(str(inc.get("kind")))
        r.incidents += 1
        if str(inc.get("id")) in good:
            r.correct += 1
            continue
        for fault in noise:
            if violates(inc, fault, grace, skew):
                violations.append((inc, fault))
                r.false_alarms += 1
                row(fault.what).false_alarms += 1
                break
    return ScoreReport(rows, missed, violations)


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def render(report: ScoreReport) -> str:
    """The table ``fleetwatch score`` prints, then the misses and false alarms."""
    lines = [f"{'kind':<16} {'expected':>8} {'recall':>7} {'incidents':>9} {'precision':>9} "
             f"{'p50 s':>7} {'p95 s':>7} {'false alarms':>12}"]
    for k in sorted(report.kinds):
        r = report.kinds[k]
        lines.append(f"{k:<16} {r.expected:>8} {_fmt(r.recall, '.2f'):>7} {r.incidents:>9} "
                     f"{_fmt(r.precision, '.2f'):>9} {_fmt(r.p50, '.2f'):>7} {_fmt(r.p95, '.2f'):>7} "
                     f"{r.false_alarms:>12}")
    for f in report.missed:
        where = f.terminal_id or f.merchant_id or f.group or f.scope
        lines.append(f"MISSED {f.what}/{f.cause} at {where} (from {f.at:.1f})")
    for inc, f in report.violations:
        lines.append(f"FALSE ALARM {inc.get('kind')}/{inc.get('cause')} on "
                     f"{inc.get('terminal_id') or inc.get('merchant_id') or inc.get('scope')} "
                     f"during {f.what}/{f.cause}")
    lines.append("PASS" if report.passed else "FAIL")
    return "\n".join(lines)
