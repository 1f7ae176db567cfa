"""Many terminals failing together is one incident upstream (CONTRACT §3, FAILURES §3).

The correlator watches two kinds of failure over a sliding correlation window:

- ``host_errors``: terminals with host-side failures (rc 91 92 96 06 20 22 30 68, stage
  connect / tls / host);
- ``offline_wave``: terminals that went offline (silence or a live Last Will).

Each failing terminal is counted once, fleet-wide and in its groups (model, model+fw,
net_type). A group whose failing share is high while the rest of the fleet is fine
opens a ``group`` host_outage naming that group (a certificate expired on one model's
firmware); a jump over the fleet's own baseline opens one ``fleet`` host_outage; a
group that covers nearly the whole active fleet is reported as the fleet. Terminal
network incidents of the failing terminals become its suppressed children, so on-call
gets one page and merchants are told it is not their terminal.

The upstream resolves after ``upstream_clear_intervals`` without the failures that
opened it (fewer than ``upstream_hold_fraction`` of its peak still failing); then its
children that recovered resolve and the ones still failing stand alone.

Merchant parents come from the open incidents themselves: when at least
``merchant_min_terminals`` and ``merchant_min_share`` of a merchant's terminals have the
same kind open (and no upstream explains them), one merchant incident carries them.
For ``settlement_gap``, gaps on two or more terminals of a merchant get one merchant
incident whose evidence sums the money per currency.
"""

from __future__ import annotations

import json
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from fleetwatch.config import DetectSettings
from fleetwatch.core.incidents import IncidentBook
from fleetwatch.core.model import (
    SEVERITY_RANK,
    Clear,
    Finding,
    Incident,
    IncidentWrite,
    Kind,
    Severity,
    group_json,
    incident_key,
)
from fleetwatch.core.rules import terminal_key

FLEET: Final = "fleet"
HOST_ERRORS: Final = "host_errors"
OFFLINE_WAVE: Final = "offline_wave"

_LABELS: dict[tuple[str | None, str | None, str | None], tuple[str, ...]] = {}


def group_labels(model: str | None, fw: str | None, net_type: str | None) -> tuple[str, ...]:
    """The correlation groups of a terminal: fleet, model, model+fw, net_type (memoised)."""
    k = (model, fw, net_type)
    labels = _LABELS.get(k)
    if labels is None:
        out = [FLEET]
        if model is not None:
            out.append(group_json({"model": model}) or "")
            if fw is not None:
                out.append(group_json({"model": model, "fw": fw}) or "")
        if net_type is not None:
            out.append(group_json({"net_type": net_type}) or "")
        labels = tuple(out)
        if len(_LABELS) < 100_000:
            _LABELS[k] = labels
    return labels


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


@dataclass(slots=True)
class Upstream:
    """One open upstream incident the correlator manages."""

    label: str
    key: str
    cause: str
    peak: int = 0
    quiet_since: float | None = None
    members: set[str] = field(default_factory=set)
    """offline_wave: terminals of the wave still offline."""


class Correlator:
    """Fleet, group and merchant parents over the incident book (its Observer)."""

    def __init__(self, cfg: DetectSettings, book: IncidentBook) -> None:
        self._cfg = cfg
        self._book = book
        self._window = cfg.intervals(cfg.correlation_window_intervals)
        self._clear_s = cfg.intervals(cfg.upstream_clear_intervals)
        self.active: Counter[str] = Counter()
        """Online terminals per correlation label."""
        self.merchant_size: Counter[str] = Counter()
        """Terminals per merchant that are not shut down."""
        self.host = WindowSet(self._window)
        self.host_recent = WindowSet(cfg.heartbeat_interval_s)
        self.offline = WindowSet(self._window)
        self.upstreams: dict[str, Upstream] = {}
        self.baseline: dict[str, float] = {HOST_ERRORS: 0.0, OFFLINE_WAVE: 0.0}
        self._dirty: set[tuple[str, str]] = set()
        self._merchant_kinds = frozenset(cfg.merchant_parent_kinds)
        self._last_tick: float | None = None
        book.observer = self

    # ---- facts from the engine --------------------------------------------------------

    def host_failure(self, tid: str, labels: tuple[str, ...], at: float) -> None:
        """A host-side failure on one terminal."""
        self.host.add(tid, labels, at)
        self.host_recent.add(tid, labels, at)

    def went_offline(self, tid: str, labels: tuple[str, ...], at: float) -> None:
        """A terminal went offline; waves in its scope count it as a member."""
        self.offline.add(tid, labels, at)
        for label in labels:
            up = self.upstreams.get(label)
            if up is not None and up.cause == OFFLINE_WAVE:
                up.members.add(tid)

    def came_back(self, tid: str) -> None:
        """A terminal spoke again: it no longer counts toward an offline wave."""
        self.offline.remove(tid)
        for up in self.upstreams.values():
            up.members.discard(tid)

    # ---- Observer ---------------------------------------------------------------------

    def parent_for(self, finding: Finding) -> Incident | None:
        """A new terminal incident's parent: its merchant's incident, else an upstream."""
        if finding.scope != "terminal" or finding.terminal_id is None:
            return None
        kind = finding.kind
        if finding.merchant_id is not None and (kind in self._merchant_kinds or kind == "settlement_gap"):
            parent = self._book.open_at(incident_key("merchant", kind, merchant_id=finding.merchant_id))
            if parent is not None:
                return parent
        if kind == "network":
            return self._upstream_for(finding.terminal_id)
        return None

    def changed(self, inc: Incident) -> None:
        """Track merchants to re-judge; forget upstreams resolved by hand."""
        if inc.scope == "terminal":
            if inc.merchant_id is not None and (inc.kind in self._merchant_kinds or inc.kind == "settlement_gap"):
                self._dirty.add((inc.merchant_id, inc.kind))
        elif inc.kind == "host_outage" and not inc.is_open:
            for label, up in list(self.upstreams.items()):
                if up.key == inc.key:
                    del self.upstreams[label]

    # ---- restore ------------------------------------------------------------------------

    def restore(self, open_incidents: Iterable[Incident]) -> None:
        """Adopt open host_outage incidents; members are their open children's terminals."""
        for inc in open_incidents:
            if inc.kind != "host_outage" or inc.scope not in ("fleet", "group"):
                continue
            label = FLEET if inc.scope == "fleet" else (group_json(inc.group) or "")
            kids = {c.terminal_id for c in self._book.children(inc.id) if c.terminal_id is not None}
            self.upstreams[label] = Upstream(label, inc.key, inc.cause, peak=len(kids), members=kids)

    # ---- judgement ------------------------------------------------------------------------

    def tick(self, now: float) -> list[IncidentWrite]:
        """Expire windows, open upstreams that are significant, resolve quiet ones."""
        dt = 0.0 if self._last_tick is None else max(0.0, now - self._last_tick)
        self._last_tick = now
        out: list[IncidentWrite] = []
        for ws in (self.host, self.host_recent, self.offline):
            ws.expire(now)
        for cause, ws in ((HOST_ERRORS, self.host), (OFFLINE_WAVE, self.offline)):
            label = self._candidate(cause, ws)
            if label is None:
                if not any(u.cause == cause for u in self.upstreams.values()):
                    self._learn(cause, ws.counts.get(FLEET, 0), dt)
                continue
            out.extend(self._open_or_refresh(label, cause, ws, now))
        for label, up in list(self.upstreams.items()):
            out.extend(self._hold_or_resolve(label, up, now))
        out.extend(self.settle(now))
        return out

    def _learn(self, cause: str, failing: int, dt: float) -> None:
        """The fleet's normal failing count, smoothed per correlation window."""
        alpha = min(1.0, self._cfg.upstream_baseline_alpha * dt / self._window)
        self.baseline[cause] += alpha * (failing - self.baseline[cause])

    def _candidate(self, cause: str, ws: WindowSet) -> str | None:
        """The label whose failures are significant now, or None."""
        cfg = self._cfg
        failing = ws.counts.get(FLEET, 0)
        if failing < min(cfg.upstream_min_terminals, cfg.group_min_terminals):
            return None
        offline = cause == OFFLINE_WAVE
        fleet_active = self.active.get(FLEET, 0) + (failing if offline else 0)
        if fleet_active <= 0:
            return None
        best: tuple[float, int, str] | None = None
        for label, f in ws.counts.items():
            if label == FLEET or f < cfg.group_min_terminals:
                continue
            a = self.active.get(label, 0) + (f if offline else 0)
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
        fleet_up = self.upstreams.get(FLEET)
        if best is not None and not (fleet_up is not None and fleet_up.cause == cause):
            return best[2]
        excess = failing - self.baseline[cause]
        if excess >= cfg.upstream_min_terminals and excess / fleet_active >= cfg.upstream_min_share:
            return FLEET
        return None

    def _open_or_refresh(self, label: str, cause: str, ws: WindowSet, now: float) -> list[IncidentWrite]:
        failing = ws.counts.get(label, 0)
        offline = cause == OFFLINE_WAVE
        active = self.active.get(label, 0) + (failing if offline else 0)
        group: dict[str, str] | None = None if label == FLEET else json.loads(label)
        evidence: dict[str, Any] = {
            "failing_terminals": failing, "active_terminals": active,
            "share": round(failing / active, 4) if active else 0.0,
            "window_s": self._window, "signal": cause,
        }
        if label == FLEET:
            evidence["baseline_terminals"] = round(self.baseline[cause], 2)
        up = self.upstreams.get(label)
        opened = up is None or self._book.open_at(up.key) is None
        what = "host errors" if cause == HOST_ERRORS else "terminals going offline"
        where = "across the fleet" if group is None else "on " + ", ".join(f"{k} {v}" for k, v in group.items())
        f = Finding(
            key=upstream_key(label), kind="host_outage", cause=cause, severity="critical",
            scope="fleet" if group is None else "group", summary=f"Upstream problem: {what} {where}",
            at=now, group=group, evidence=evidence, detected_from=now,
        )
        out = self._book.open_direct(f)
        if not opened:
            return out
        up = Upstream(label, f.key, cause, peak=failing)
        if offline:
            up.members = set(ws.members(label))
        self.upstreams[label] = up
        parent = self._book.open_at(f.key)
        if parent is None:
            return out
        for tid in ws.members(label):
            child = self._book.open_at(terminal_key(tid, "network"))
            if child is None:
                continue
            mparent = self._book.get(child.parent_id) if child.parent_id else None
            if mparent is not None and mparent.scope == "merchant":
                out.extend(self._book.attach(mparent, parent, now))
            else:
                out.extend(self._book.attach(child, parent, now))
        if label == FLEET:
            for other in self.upstreams.values():
                if other.label != FLEET and other.cause == cause:
                    inc = self._book.open_at(other.key)
                    if inc is not None:
                        out.extend(self._book.attach(inc, parent, now))
        return out

    def _hold_or_resolve(self, label: str, up: Upstream, now: float) -> list[IncidentWrite]:
        if self._book.open_at(up.key) is None:
            del self.upstreams[label]
            return []
        still = self.host_recent.counts.get(label, 0) if up.cause == HOST_ERRORS else len(up.members)
        up.peak = max(up.peak, still)
        if still >= max(1.0, self._cfg.upstream_hold_fraction * up.peak):
            up.quiet_since = None
            return []
        if up.quiet_since is None:
            up.quiet_since = now
        if now - up.quiet_since < self._clear_s:
            return []
        del self.upstreams[label]
        return self._book.resolve_now(up.key, now, "upstream_quiet")

    def _upstream_for(self, tid: str) -> Incident | None:
        for ws in (self.host, self.offline):
            item = ws.items.get(tid)
            if item is None:
                continue
            for label in sorted(item[1], key=_specificity, reverse=True):
                up = self.upstreams.get(label)
                if up is not None:
                    inc = self._book.open_at(up.key)
                    if inc is not None:
                        return inc
        return None

    # ---- merchants ------------------------------------------------------------------------

    def settle(self, now: float) -> list[IncidentWrite]:
        """Re-judge the merchants whose terminal incidents changed."""
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
        failing = [i for i in incs if i.clearing_since is None and self._free_or_ours(i, parent)]
        terminals = {i.terminal_id for i in failing}
        if kind == "settlement_gap":
            holds = len(terminals) >= 2
            evidence = _money_evidence(failing)
        else:
            size = max(self.merchant_size.get(merchant, 0), len(terminals))
            holds = len(terminals) >= self._cfg.merchant_min_terminals and \
                len(terminals) >= self._cfg.merchant_min_share * size
            evidence = {"merchant_terminals": size}
        if not holds:
            return book.apply(Clear(mkey, now)) if parent is not None else []
        evidence["failing_terminals"] = len(terminals)
        causes = Counter(i.cause for i in failing)
        severity: Severity = max((i.severity for i in failing), key=SEVERITY_RANK.__getitem__)
        cause = causes.most_common(1)[0][0]
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
        if parent.parent_id is None and kind == "network":
            ups = Counter(u.id for i in failing if (u := self._upstream_for(i.terminal_id or "")) is not None)
            if ups:
                up_id, n = ups.most_common(1)[0]
                up_inc = book.get(up_id)
                if up_inc is not None and 2 * n >= len(failing):
                    out.extend(book.attach(parent, up_inc, now))
        return out

    def _free_or_ours(self, inc: Incident, parent: Incident | None) -> bool:
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


__all__ = ["FLEET", "Correlator", "Kind", "Upstream", "WindowSet", "group_labels", "upstream_key"]
