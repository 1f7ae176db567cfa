"""Many terminals failing together is one incident upstream (CONTRACT §3, FAILURES §3).

The correlator watches two kinds of failure over a sliding correlation window:

- ``host_errors``: terminals with host-side failures (rc 91 92 96 06 20 22 30 68, stage
  connect / tls / host);
- ``offline_wave``: terminals that went offline (silence or a live Last Will).

Each failing terminal is counted once, fleet-wide and in its groups (model, model+fw,
net_type). A group whose failing share is high while the rest of the fleet is fine
opens a ``group`` host_outage naming that group (a certificate expired on one model's
firmware); a jump over the fleet's own baseline opens one ``fleet`` host_outage; a
group that covers nearly the whole active fleet is reported as the fleet. The
denominators come from the :class:`~fleetwatch.core.census.FleetCensus` the engine
keeps; what each open upstream is built on is kept in
:class:`~fleetwatch.core.upstreams.Upstreams`.

**Adoption by evidence** (:mod:`fleetwatch.core.adoption` holds the table): an upstream
adopts an incident only when the table says its cause explains the incident's, its
scope covers the terminal, and the incident opened at most one correlation window
before it or while it is open; a merchant-scope incident goes under an upstream only
when the upstream covers strictly more than half of the merchant's affected terminals.
What it does not explain stays unparented and is paged.

The upstream resolves after ``upstream_clear_intervals`` without the failures that
opened it (fewer than ``upstream_hold_fraction`` of its peak still failing); then its
children that recovered resolve and the ones still failing stand alone.

Merchant parents come from the open incidents themselves: when at least
``merchant_min_terminals`` and ``merchant_min_share`` of a merchant's terminals have the
same kind open in one cause family (and no other parent holds them), one merchant
incident carries them. For ``settlement_gap``, gaps on two or more terminals of a
merchant get one merchant incident whose evidence sums the money per currency.
"""

from __future__ import annotations

import json
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import Any, Final

from fleetwatch.config import DetectSettings
from fleetwatch.core.adoption import cause_family, explains, explains_cause
from fleetwatch.core.census import FLEET, FleetCensus, group_labels, label_of_group
from fleetwatch.core.incidents import IncidentBook
from fleetwatch.core.model import (
    CAUSES,
    SEVERITY_RANK,
    Clear,
    Finding,
    Incident,
    IncidentWrite,
    Kind,
    Severity,
    incident_key,
)
from fleetwatch.core.rules import terminal_key
from fleetwatch.core.upstreams import HOST_ERRORS, OFFLINE_WAVE, Upstream, Upstreams

LabelsOf = Callable[[str], tuple[str, ...]]
"""terminal_id -> its correlation labels now (the engine knows its model, firmware, link)."""

_CAUSE_RANK: Final[dict[tuple[str, str], int]] = {
    (kind, cause): i for kind, causes in CAUSES.items() for i, cause in enumerate(causes)
}


def upstream_key(label: str) -> str:
    """The incident key of the host_outage for a correlation label."""
    if label == FLEET:
        return incident_key("fleet", "host_outage")
    return f"group|{label}|host_outage"


def _specificity(label: str) -> int:
    return 0 if label == FLEET else label.count(":")


class WindowSet:
    """Distinct terminals with an event in the last ``window`` seconds, counted per label."""

    __slots__ = ("counts", "items", "q", "window")

    def __init__(self, window: float) -> None:
        self.window = window
        self.items: dict[str, tuple[float, tuple[str, ...]]] = {}
        self.q: deque[tuple[float, str]] = deque()
        self.counts: Counter[str] = Counter()

    def add(self, tid: str, labels: tuple[str, ...], at: float) -> bool:
        """Record an event; True when the terminal was not in the window yet."""
        prev = self.items.get(tid)
        self.q.append((at, tid))
        if prev is None:
            self.items[tid] = (at, labels)
            self.counts.update(labels)
            return True
        self.items[tid] = (at, prev[1])
        return False

    def remove(self, tid: str) -> None:
        """Forget a terminal (it came back)."""
        prev = self.items.pop(tid, None)
        if prev is not None:
            self.counts.subtract(prev[1])

    def expire(self, now: float) -> None:
        """Drop terminals whose last event left the window."""
        q, limit = self.q, now - self.window
        while q and q[0][0] < limit:
            at, tid = q.popleft()
            cur = self.items.get(tid)
            if cur is not None and cur[0] == at:
                self.remove(tid)

    def members(self, label: str) -> list[str]:
        """Terminals in the window that belong to ``label``."""
        return [t for t, (_, labels) in self.items.items() if label in labels]


class Correlator:
    """Fleet, group and merchant parents over the incident book.

    Collaborators are passed in and never changed behind anyone's back: the incident
    book it opens, attaches and resolves in; the census it reads the denominators from;
    and ``labels_of``, the engine's answer to "which groups is this terminal in now".
    """

    def __init__(
        self, cfg: DetectSettings, book: IncidentBook, census: FleetCensus, labels_of: LabelsOf,
    ) -> None:
        self._cfg = cfg
        self._book = book
        self._census = census
        self._labels_of = labels_of
        self._window = cfg.intervals(cfg.correlation_window_intervals)
        self._clear_s = cfg.intervals(cfg.upstream_clear_intervals)
        self.host = WindowSet(self._window)
        self.host_recent = WindowSet(cfg.heartbeat_interval_s)
        self.offline = WindowSet(self._window)
        self.upstreams = Upstreams()
        """The open upstream incidents and the terminals each is built on."""
        self.baseline: dict[str, float] = {HOST_ERRORS: 0.0, OFFLINE_WAVE: 0.0}
        self._dirty: set[tuple[str, str]] = set()
        self._merchant_kinds = frozenset(cfg.merchant_parent_kinds) | {"settlement_gap"}
        self._last_tick: float | None = None

    # ---- facts from the engine --------------------------------------------------------

    def record_host_failure(self, tid: str, labels: tuple[str, ...], at: float) -> None:
        """A host-side failure on one terminal."""
        self.host.add(tid, labels, at)
        self.host_recent.add(tid, labels, at)
        self.upstreams.saw_failure(tid, labels, HOST_ERRORS)

    def record_offline(self, tid: str, labels: tuple[str, ...], at: float) -> None:
        """A terminal went offline; waves in its scope count it."""
        self.offline.add(tid, labels, at)
        self.upstreams.saw_failure(tid, labels, OFFLINE_WAVE)

    def record_back(self, tid: str) -> None:
        """A terminal spoke again: it no longer counts toward an offline wave."""
        self.offline.remove(tid)
        self.upstreams.saw_back(tid)

    # ---- adoption of a new incident ---------------------------------------------------

    def parent_for_new(self, f: Finding) -> Incident | None:
        """The open parent a terminal incident about to open from ``f`` belongs to, if any.

        Its merchant's incident when that explains it, else the most specific open
        upstream whose scope covers the terminal and whose cause explains it. None for a
        key that is open already (its parent was settled when it opened).
        """
        tid = f.terminal_id
        if f.scope != "terminal" or tid is None or self._book.open_at(f.key) is not None:
            return None
        kind = f.kind
        if f.merchant_id is not None and kind in self._merchant_kinds:
            parent = self._book.open_at(incident_key("merchant", kind, merchant_id=f.merchant_id))
            if parent is not None and explains_cause(parent, kind, f.cause, "terminal"):
                return parent
        if not self.upstreams:
            return None
        for label in sorted(self._labels_of(tid), key=_specificity, reverse=True):
            up = self.upstreams.at(label)
            if up is None:
                continue
            inc = self._book.get(up.incident_id)
            if inc is not None and explains_cause(inc, kind, f.cause, "terminal"):
                return inc
        return None

    # ---- restore ------------------------------------------------------------------------

    def restore(self, open_incidents: Iterable[Incident]) -> None:
        """Track open host_outage incidents; they are built on their open children's terminals."""
        for inc in open_incidents:
            if inc.kind != "host_outage" or inc.scope not in ("fleet", "group"):
                continue
            kids = {c.terminal_id for c in self._book.children(inc.id) if c.terminal_id is not None}
            self.upstreams.add(Upstream(
                label_of_group(inc.group), inc.key, inc.id, inc.cause, inc.opened_at, peak=len(kids),
                members=set(kids), still_offline=set(kids) if inc.cause == OFFLINE_WAVE else set(),
            ))

    # ---- upstreams over time --------------------------------------------------------------

    def tick(self, now: float) -> list[IncidentWrite]:
        """Expire windows, open upstreams that are significant, resolve quiet ones."""
        dt = 0.0 if self._last_tick is None else max(0.0, now - self._last_tick)
        self._last_tick = now
        out: list[IncidentWrite] = []
        for ws in (self.host, self.host_recent, self.offline):
            ws.expire(now)
        for cause, ws in ((HOST_ERRORS, self.host), (OFFLINE_WAVE, self.offline)):
            label = self._significant_label(cause, ws)
            if label is None:
                if not self.upstreams.any_open(cause):
                    self._learn_baseline(cause, ws.counts.get(FLEET, 0), dt)
                continue
            out.extend(self._open_or_refresh_upstream(label, cause, ws, now))
        for up in self.upstreams:
            out.extend(self._hold_or_resolve_upstream(up, now))
        return out

    def _learn_baseline(self, cause: str, failing: int, dt: float) -> None:
        """The fleet's normal failing count, smoothed per correlation window."""
        alpha = min(1.0, self._cfg.upstream_baseline_alpha * dt / self._window)
        self.baseline[cause] += alpha * (failing - self.baseline[cause])

    def _active(self, label: str, failing: int, cause: str) -> int:
        """The share's denominator: online terminals, plus the failing ones for a wave
        (a terminal that went offline left the online count)."""
        return self._census.active(label) + (failing if cause == OFFLINE_WAVE else 0)

    def _significant_label(self, cause: str, ws: WindowSet) -> str | None:
        """The label whose failures are significant now, or None."""
        cfg = self._cfg
        failing = ws.counts.get(FLEET, 0)
        if failing < min(cfg.upstream_min_terminals, cfg.group_min_terminals):
            return None
        fleet_active = self._active(FLEET, failing, cause)
        if fleet_active <= 0:
            return None
        best: tuple[float, int, str] | None = None
        for label, f in ws.counts.items():
            if label == FLEET or f < cfg.group_min_terminals:
                continue
            a = self._active(label, f, cause)
            if a <= 0 or a >= cfg.fleet_share_for_group * fleet_active:
                continue
            share = f / a
            if share < cfg.upstream_min_share:
                continue
            out_f, out_a = failing - f, fleet_active - a
            if out_a > 0 and out_f / out_a > cfg.group_concentration * share:
                continue
            rank = (share, _specificity(label), label)
            if best is None or rank > best:
                best = rank
        fleet_up = self.upstreams.at(FLEET)
        if best is not None and not (fleet_up is not None and fleet_up.cause == cause):
            return best[2]
        excess = failing - self.baseline[cause]
        if excess >= cfg.upstream_min_terminals and excess / fleet_active >= cfg.upstream_min_share:
            return FLEET
        return None

    def _open_or_refresh_upstream(self, label: str, cause: str, ws: WindowSet, now: float) -> list[IncidentWrite]:
        """Open the upstream of ``label`` (and adopt what it explains), or refresh its evidence.

        An upstream keeps the cause it opened with: the other signal becoming significant
        on the same label does not re-cause it (its terminals are not explained by it).
        """
        up = self.upstreams.at(label)
        if up is not None and up.cause != cause and self._book.get(up.incident_id) is not None:
            return []
        failing = ws.counts.get(label, 0)
        active = self._active(label, failing, cause)
        group: dict[str, str] | None = None if label == FLEET else json.loads(label)
        evidence: dict[str, Any] = {
            "failing_terminals": failing, "active_terminals": active,
            "share": round(failing / active, 4) if active else 0.0,
            "window_s": self._window, "signal": cause,
        }
        if label == FLEET:
            evidence["baseline_terminals"] = round(self.baseline[cause], 2)
        what = "host errors" if cause == HOST_ERRORS else "terminals going offline"
        where = "across the fleet" if group is None else "on " + ", ".join(f"{k} {v}" for k, v in group.items())
        f = Finding(
            key=upstream_key(label), kind="host_outage", cause=cause, severity="critical",
            scope="fleet" if group is None else "group", summary=f"Upstream problem: {what} {where}",
            at=now, group=group, evidence=evidence, detected_from=now,
        )
        out = self._book.open_direct(f)
        parent = self._book.open_at(f.key)
        if parent is None or (up is not None and up.incident_id == parent.id):
            return out
        members = set(ws.members(label))
        up = self.upstreams.add(Upstream(
            label, f.key, parent.id, cause, parent.opened_at, peak=failing, members=members,
            still_offline=set(members) if cause == OFFLINE_WAVE else set(),
        ))
        out.extend(self._adopt_existing(up, parent, now))
        return out

    def _adopt_existing(self, up: Upstream, parent: Incident, now: float) -> list[IncidentWrite]:
        """A new upstream adopts the open incidents it explains that opened at most one
        correlation window before it: its terminals' network incidents, their merchants'
        incidents it covers, and (for the fleet) the narrower upstreams of its cause."""
        since = parent.opened_at - self._window
        book = self._book
        out: list[IncidentWrite] = []
        merchants: dict[str, Incident] = {}
        for tid in sorted(up.members):
            child = book.open_at(terminal_key(tid, "network"))
            if child is None:
                continue
            holder = book.get(child.parent_id) if child.parent_id is not None else None
            if holder is not None:
                if holder.scope == "merchant":
                    merchants[holder.id] = holder
                continue
            if child.opened_at >= since:
                out.extend(book.attach(child, parent, now))
        for merchant_inc in merchants.values():
            out.extend(self._adopt_merchant(merchant_inc, now))
        if up.label == FLEET:
            for other in self.upstreams:
                inc = book.get(other.incident_id)
                if other is not up and inc is not None and inc.opened_at >= since:
                    out.extend(book.attach(inc, parent, now))
        return out

    def _adopt_merchant(self, merchant_inc: Incident, now: float) -> list[IncidentWrite]:
        """Put a merchant incident under the open upstream that explains it and covers
        strictly more than half of its affected terminals (the most such, then the most
        specific), if it opened at most one correlation window before that upstream."""
        book = self._book
        if merchant_inc.parent_id is not None and book.get(merchant_inc.parent_id) is not None:
            return []
        affected = [c for c in book.children(merchant_inc.id) if c.terminal_id is not None]
        if not affected:
            return []
        best: tuple[int, int, str, Incident] | None = None
        for up in self.upstreams:
            inc = book.get(up.incident_id)
            if inc is None or not explains(inc, merchant_inc):
                continue
            if merchant_inc.opened_at < inc.opened_at - self._window:
                continue
            covered = sum(1 for c in affected
                          if up.label in self._labels_of(c.terminal_id or "") and explains(inc, c))
            if 2 * covered <= len(affected):
                continue
            rank = (covered, _specificity(up.label), up.label, inc)
            if best is None or rank[:3] > best[:3]:
                best = rank
        return [] if best is None else book.attach(merchant_inc, best[3], now)

    def _hold_or_resolve_upstream(self, up: Upstream, now: float) -> list[IncidentWrite]:
        """Keep an upstream open while its failures go on; resolve it once they stopped."""
        if self._book.get(up.incident_id) is None:
            self.upstreams.drop(up)
            return []
        still = self.host_recent.counts.get(up.label, 0) if up.cause == HOST_ERRORS else len(up.still_offline)
        up.peak = max(up.peak, still)
        if still >= max(1.0, self._cfg.upstream_hold_fraction * up.peak):
            up.quiet_since = None
            return []
        if up.quiet_since is None:
            up.quiet_since = now
        if now - up.quiet_since < self._clear_s:
            return []
        self.upstreams.drop(up)
        return self._book.resolve_now(up.key, now, "upstream_quiet")

    # ---- merchants ------------------------------------------------------------------------

    def judge_merchants(self, touched: Iterable[Incident], now: float) -> list[IncidentWrite]:
        """Re-judge the merchants whose terminal incidents changed (``touched``, from
        :meth:`IncidentBook.take_touched`); forget upstreams resolved by hand."""
        for inc in touched:
            if inc.scope == "terminal":
                if inc.merchant_id is not None and inc.kind in self._merchant_kinds:
                    self._dirty.add((inc.merchant_id, inc.kind))
            elif inc.kind == "host_outage" and not inc.is_open:
                self.upstreams.drop_incident(inc.id)
        if not self._dirty:
            return []
        dirty, self._dirty = self._dirty, set()
        out: list[IncidentWrite] = []
        for merchant, kind in sorted(dirty):
            out.extend(self._judge_merchant(merchant, kind, now))
        return out

    def _judge_merchant(self, merchant: str, kind: str, now: float) -> list[IncidentWrite]:
        book = self._book
        mkey = incident_key("merchant", kind, merchant_id=merchant)  # type: ignore[arg-type]
        parent = book.open_at(mkey)
        incs = [i for k in book.terminal_keys(merchant, kind) if (i := book.open_at(k)) is not None]
        free = [i for i in incs if i.clearing_since is None and self._counts_for_merchant(i, parent)]
        failing = self._one_family(kind, free, parent)
        terminals = {i.terminal_id for i in failing}
        if kind == "settlement_gap":
            holds = len(terminals) >= 2
            evidence = _money_evidence(failing)
        else:
            size = max(self._census.merchant_size(merchant), len(terminals))
            holds = len(terminals) >= self._cfg.merchant_min_terminals and \
                len(terminals) >= self._cfg.merchant_min_share * size
            evidence = {"merchant_terminals": size}
        if not holds:
            return book.apply(Clear(mkey, now)) if parent is not None else []
        evidence["failing_terminals"] = len(terminals)
        causes = Counter(i.cause for i in failing)
        severity: Severity = max((i.severity for i in failing), key=SEVERITY_RANK.__getitem__)
        cause = min(causes, key=lambda c: (-causes[c], _CAUSE_RANK.get((kind, c), 99)))
        f = Finding(
            key=mkey, kind=kind, cause=cause, severity=severity,  # type: ignore[arg-type]
            scope="merchant", summary=f"{len(terminals)} terminals of merchant {merchant}: {cause}",
            at=now, merchant_id=merchant, evidence=evidence, detected_from=now,
        )
        out = book.open_direct(f)
        parent = book.open_at(mkey)
        if parent is None:
            return out
        for i in failing:
            out.extend(book.attach(i, parent, now))
        if kind == "network" and self.upstreams:
            out.extend(self._adopt_merchant(parent, now))
        return out

    @staticmethod
    def _one_family(kind: str, incs: list[Incident], parent: Incident | None) -> list[Incident]:
        """The incidents of one cause family: the open parent's, else the family with the
        most terminals (a shop's silent link and its weak signal are different problems)."""
        if not incs:
            return incs
        if parent is not None:
            family = cause_family(kind, parent.cause)
        else:
            sizes = Counter(cause_family(kind, i.cause) for i in incs)
            family = min(sizes, key=lambda fam: (-sizes[fam], fam))
        return [i for i in incs if cause_family(kind, i.cause) == family]

    def _counts_for_merchant(self, inc: Incident, parent: Incident | None) -> bool:
        """Counts toward a merchant parent: no open parent, or the merchant's own."""
        if inc.parent_id is None:
            return True
        if parent is not None and inc.parent_id == parent.id:
            return True
        return self._book.get(inc.parent_id) is None


def _money_evidence(incs: list[Incident]) -> dict[str, Any]:
    """Sum the children's money at stake per currency (settlement_gap merchant parent)."""
    by_currency: dict[str, int] = {}
    for i in incs:
        amount, currency = i.evidence.get("amount_minor"), i.evidence.get("currency")
        if isinstance(amount, int) and isinstance(currency, str):
            by_currency[currency] = by_currency.get(currency, 0) + amount
    return {"amount_minor": dict(sorted(by_currency.items())), "gaps": len(incs)}


__all__ = [
    "FLEET", "Correlator", "Kind", "LabelsOf", "Upstream", "Upstreams", "WindowSet", "group_labels", "upstream_key",
]
