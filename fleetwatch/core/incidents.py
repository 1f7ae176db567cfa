"""IncidentBook: findings and clears in, incident transitions out.

The store is the truth: at start the book is loaded with the open incidents
(:meth:`IncidentBook.restore`) and from then on every transition it makes is handed
out as an :class:`~fleetwatch.core.model.IncidentWrite` for the store.

Lifecycle, per the contract's key (one open incident per key):

- A Finding for a key with no open incident opens one; if the last incident of that
  key was resolved by hand while its condition still held, the new one continues it
  (``previous_id``, event ``reopened``).
- A repeated Finding refreshes ``updated_at``; an event is written only when the cause
  or severity changed (``escalated`` / ``cause_changed``) or the evidence changed, and
  evidence-only updates at most once per ``evidence_update_intervals`` (a terminal
  beating every interval with the same fault is not a write per beat).
- A Clear without ``immediate`` starts hysteresis: the incident resolves only after
  ``clear_after_intervals`` without the condition. A Finding in that time cancels the
  clear and counts ``flap_count`` in the evidence: a flapping link is one incident.
- Parents (merchant, group, fleet) carry children: ``parent_id`` and ``suppressed``
  are set when the child opens or when the parent opens, and ``parent_id`` never changes
  while both are open. Which parent is given is the correlator's decision; the book
  only refuses a parent that the adoption table (:mod:`fleetwatch.core.adoption`) says
  does not explain the child. When a child's (or its parent's) cause changes, the table
  is checked again: a child its parent no longer explains loses ``suppressed`` (event
  ``unsuppressed``, ``parent_id`` kept for history) and is suppressed again if a later
  cause is explained. When a parent resolves, suppressed children whose condition
  already cleared resolve with it; the ones still failing lose ``suppressed`` and stand
  alone.

The book calls nobody. What changed is collected for whoever needs to know
(:meth:`IncidentBook.take_touched`: the correlator re-judges the merchants concerned).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any

from fleetwatch.config import DetectSettings
from fleetwatch.core.adoption import explains
from fleetwatch.core.model import (
    SEVERITY_RANK,
    Clear,
    EventType,
    Finding,
    Incident,
    IncidentEvent,
    IncidentWrite,
    Signal,
)


class IncidentBook:
    """Open incidents by key and by id, their hysteresis, and their parent links."""

    def __init__(self, cfg: DetectSettings, new_id: Callable[[], str]) -> None:
        self._cfg = cfg
        self._new_id = new_id
        self._clear_after = cfg.intervals(cfg.clear_after_intervals)
        self._evidence_every = cfg.intervals(cfg.evidence_update_intervals)
        self._by_key: dict[str, Incident] = {}
        self._by_id: dict[str, Incident] = {}
        self._children: dict[str, set[str]] = {}
        """parent id -> ids of its open children."""
        self._by_group: dict[tuple[str, str], set[str]] = {}
        """(merchant_id, kind) -> keys of open terminal-scope incidents."""
        self._clearing: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._last_write: dict[str, float] = {}
        self._stale: set[str] = set()
        self._reopen_from: dict[str, str] = {}
        """key -> id of an incident resolved by hand while its condition still held."""
        self._touched: dict[str, Incident] = {}
        """Incidents that opened, resolved, got a parent or started or stopped clearing
        since the last :meth:`take_touched` (by id, in order)."""

    # ---- loading ---------------------------------------------------------------------

    def restore(self, incidents: Iterable[Incident]) -> None:
        """Load the store's open incidents (resolved ones are ignored)."""
        for stored in incidents:
            if not stored.is_open or stored.key in self._by_key:
                continue
            inc = replace(stored, evidence=dict(stored.evidence))
            self._index(inc)
            if inc.clearing_since is not None:
                self._push_clearing(inc)
        for inc in self._by_id.values():
            if inc.parent_id is not None and inc.parent_id in self._by_id:
                self._children.setdefault(inc.parent_id, set()).add(inc.id)

    # ---- reading ---------------------------------------------------------------------

    def get(self, incident_id: str) -> Incident | None:
        """An open incident by id."""
        return self._by_id.get(incident_id)

    def open_at(self, key: str) -> Incident | None:
        """The open incident of a key."""
        return self._by_key.get(key)

    def open_incidents(self) -> Iterator[Incident]:
        """Every open (or acknowledged) incident."""
        return iter(self._by_id.values())

    def children(self, parent_id: str) -> list[Incident]:
        """Open children of an incident."""
        return [self._by_id[i] for i in self._children.get(parent_id, ()) if i in self._by_id]

    def terminal_keys(self, merchant_id: str, kind: str) -> set[str]:
        """Keys of a merchant's open terminal-scope incidents of one kind."""
        return self._by_group.get((merchant_id, kind), set())

    def __len__(self) -> int:
        return len(self._by_id)

    def take_touched(self) -> list[Incident]:
        """The incidents that opened, resolved, got a parent, or started or stopped clearing
        since the last call (each once, oldest change first)."""
        if not self._touched:
            return []
        touched, self._touched = list(self._touched.values()), {}
        return touched

    # ---- signals ---------------------------------------------------------------------

    def apply(self, sig: Signal, *, may_open: bool = True, parent: Incident | None = None) -> list[IncidentWrite]:
        """One Finding or Clear -> the writes it causes (often none).

        ``parent``: the open incident a *new* incident from this Finding is to be a child
        of (the correlator's choice, :meth:`Correlator.parent_for_new`); ignored when the
        key is already open or the parent does not explain it.
        """
        if isinstance(sig, Finding):
            return self._finding(sig, may_open, parent)
        return self._clear(sig)

    def _finding(self, f: Finding, may_open: bool, parent: Incident | None = None) -> list[IncidentWrite]:
        inc = self._by_key.get(f.key)
        if inc is None:
            return self._open(f, parent) if may_open else []
        out: list[IncidentWrite] = []
        inc.updated_at = max(inc.updated_at, f.at)
        if inc.clearing_since is not None:
            inc.clearing_since = None
            inc.evidence["flap_count"] = int(inc.evidence.get("flap_count", 0)) + 1
            out.append(self._write(inc, f.at, "updated", {"flap": inc.evidence["flap_count"]}))
            self._touch(inc)
        recaused = f.cause != inc.cause
        if recaused or f.severity != inc.severity:
            out.append(self._recause(inc, f))
        changed = any(inc.evidence.get(k) != v for k, v in f.evidence.items())
        if changed:
            inc.evidence.update(f.evidence)
            if out:
                out[-1] = self._write(inc, f.at, out[-1].event.type, out[-1].event.detail,
                                      detected_from=out[-1].detected_from)
            elif f.at - self._last_write.get(inc.id, float("-inf")) >= self._evidence_every:
                out.append(self._write(inc, f.at, "updated", {}))
            else:
                self._stale.add(inc.id)
        if recaused:
            out.extend(self._recheck_explanations(inc, f.at))
        return out

    def _recause(self, inc: Incident, f: Finding) -> IncidentWrite:
        """A cause or severity change on the same incident (paper_low -> no_paper)."""
        up = SEVERITY_RANK[f.severity] > SEVERITY_RANK[inc.severity]
        detail: dict[str, Any] = {"from_cause": inc.cause, "to_cause": f.cause,
                                  "from_severity": inc.severity, "to_severity": f.severity}
        inc.cause, inc.severity, inc.summary = f.cause, f.severity, f.summary
        if up and inc.status == "acknowledged":
            inc.status, inc.acknowledged_at = "open", None  # a worse problem pages again
        kind: EventType = "escalated" if up else "cause_changed"
        return self._write(inc, f.at, kind, detail, detected_from=f.detected_from or f.at)

    def _recheck_explanations(self, inc: Incident, at: float) -> list[IncidentWrite]:
        """``inc``'s cause changed: does its parent still explain it, does it still explain its children?"""
        out: list[IncidentWrite] = []
        parent = self._by_id.get(inc.parent_id) if inc.parent_id is not None else None
        if parent is not None:
            out.extend(self._suppress_if_explained(inc, parent, at))
        for child in self.children(inc.id):
            out.extend(self._suppress_if_explained(child, inc, at))
        return out

    def _suppress_if_explained(self, child: Incident, parent: Incident, at: float) -> list[IncidentWrite]:
        """Make ``suppressed`` say whether ``parent`` explains ``child`` now; an event if it changed."""
        explained = explains(parent, child)
        if explained == child.suppressed:
            return []
        child.suppressed = explained
        child.updated_at = max(child.updated_at, at)
        self._touch(child)
        kind: EventType = "suppressed" if explained else "unsuppressed"
        why = "cause_explained" if explained else "cause_not_explained"
        return [self._write(child, at, kind, {"parent_id": parent.id, "reason": why, "cause": child.cause})]

    def _open(self, f: Finding, parent: Incident | None) -> list[IncidentWrite]:
        previous = self._reopen_from.pop(f.key, None)
        inc = Incident(
            id=self._new_id(), key=f.key, kind=f.kind, cause=f.cause, scope=f.scope,
            severity=f.severity, status="open", opened_at=f.at, updated_at=f.at,
            summary=f.summary, terminal_id=f.terminal_id, merchant_id=f.merchant_id,
            group=dict(f.group) if f.group is not None else None, previous_id=previous,
            evidence=dict(f.evidence),
        )
        if parent is not None and parent.is_open and parent.id in self._by_id and explains(parent, inc):
            inc.parent_id, inc.suppressed = parent.id, True
            self._children.setdefault(parent.id, set()).add(inc.id)
        self._index(inc)
        detail: dict[str, Any] = {"cause": f.cause, "severity": f.severity}
        if previous is not None:
            detail["previous_id"] = previous
        if inc.parent_id is not None:
            detail["parent_id"] = inc.parent_id
        write = self._write(inc, f.at, "reopened" if previous else "opened", detail,
                            detected_from=f.detected_from if f.detected_from is not None else f.at)
        self._touch(inc)
        return [write]

    def _clear(self, c: Clear) -> list[IncidentWrite]:
        inc = self._by_key.get(c.key)
        if inc is None:
            self._reopen_from.pop(c.key, None)  # the condition is gone: a later one is new
            return []
        if c.evidence:
            inc.evidence.update(c.evidence)
        if c.immediate:
            return self._resolve(inc, c.at, "condition_cleared")
        if inc.clearing_since is None:
            inc.clearing_since = c.at
            self._push_clearing(inc)
            self._touch(inc)
        return []

    # ---- time ------------------------------------------------------------------------

    def tick(self, now: float) -> list[IncidentWrite]:
        """Resolve incidents whose hysteresis ran out; flush rate-limited evidence."""
        out: list[IncidentWrite] = []
        heap = self._clearing
        while heap and heap[0][0] <= now:
            _, _, key = heapq.heappop(heap)
            inc = self._by_key.get(key)
            if inc is None or inc.clearing_since is None:
                continue
            due = inc.clearing_since + self._clear_after
            if due > now:
                heapq.heappush(heap, (due, next(self._seq), key))
                continue
            out.extend(self._resolve(inc, now, "condition_cleared"))
        if self._stale:
            for iid in list(self._stale):
                inc = self._by_id.get(iid)
                if inc is None:
                    self._stale.discard(iid)
                elif now - self._last_write.get(iid, float("-inf")) >= self._evidence_every:
                    self._stale.discard(iid)
                    out.append(self._write(inc, now, "updated", {}))
        return out

    # ---- operator and correlator actions ---------------------------------------------

    def acknowledge(self, incident_id: str, now: float) -> list[IncidentWrite]:
        """Operator ack; KeyError when the incident is unknown or already resolved."""
        inc = self._by_id[incident_id]
        if inc.status == "acknowledged":
            return []
        inc.status, inc.acknowledged_at, inc.updated_at = "acknowledged", now, max(inc.updated_at, now)
        return [self._write(inc, now, "acknowledged", {})]

    def resolve(self, incident_id: str, now: float) -> list[IncidentWrite]:
        """Manual resolve; if the condition still holds, its next evidence reopens it."""
        inc = self._by_id[incident_id]
        if inc.clearing_since is None:
            self._reopen_from[inc.key] = inc.id
            if len(self._reopen_from) > 100_000:
                del self._reopen_from[next(iter(self._reopen_from))]
        return self._resolve(inc, now, "operator")

    def attach(self, child: Incident, parent: Incident, now: float) -> list[IncidentWrite]:
        """Make ``child`` a suppressed child of ``parent``: only if it has no open parent and
        the adoption table says ``parent`` explains it (scope and time are the caller's part)."""
        if child.id == parent.id or not child.is_open or not parent.is_open:
            return []
        if child.parent_id is not None and child.parent_id in self._by_id:
            return []
        if not explains(parent, child):
            return []
        child.parent_id, child.suppressed = parent.id, True
        child.updated_at = max(child.updated_at, now)
        self._children.setdefault(parent.id, set()).add(child.id)
        self._touch(child)
        return [self._write(child, now, "suppressed", {"parent_id": parent.id})]

    def open_direct(self, f: Finding) -> list[IncidentWrite]:
        """Open (or refresh) an incident the correlator decided on."""
        return self._finding(f, True)

    def resolve_now(self, key: str, now: float, why: str) -> list[IncidentWrite]:
        """Resolve the open incident of ``key`` at once (an upstream that went quiet)."""
        inc = self._by_key.get(key)
        return [] if inc is None else self._resolve(inc, now, why)

    # ---- internals -------------------------------------------------------------------

    def _resolve(self, inc: Incident, now: float, why: str) -> list[IncidentWrite]:
        inc.status, inc.resolved_at = "resolved", now
        inc.updated_at = max(inc.updated_at, now)
        inc.clearing_since = None
        out = [self._write(inc, now, "resolved", {"by": why})]
        self._unindex(inc)
        self._touch(inc)
        for child in self._pop_children(inc.id):
            out.extend(self._release(child, inc, now))
        return out

    def _release(self, child: Incident, parent: Incident, now: float) -> list[IncidentWrite]:
        """A parent resolved: a recovered child resolves, a failing one stands alone.

        A child the parent no longer explained already stood alone: it goes on by itself.
        """
        if not child.is_open or not child.suppressed:
            return []
        if child.clearing_since is not None:
            return self._resolve(child, now, "parent_resolved")
        child.suppressed = False
        child.updated_at = max(child.updated_at, now)
        self._touch(child)
        return [self._write(child, now, "unsuppressed", {"parent_id": parent.id})]

    def _pop_children(self, parent_id: str) -> list[Incident]:
        ids = self._children.pop(parent_id, set())
        return [self._by_id[i] for i in sorted(ids) if i in self._by_id]

    def _index(self, inc: Incident) -> None:
        self._by_key[inc.key] = inc
        self._by_id[inc.id] = inc
        if inc.scope == "terminal" and inc.merchant_id is not None:
            self._by_group.setdefault((inc.merchant_id, inc.kind), set()).add(inc.key)

    def _unindex(self, inc: Incident) -> None:
        if self._by_key.get(inc.key) is inc:
            del self._by_key[inc.key]
        self._by_id.pop(inc.id, None)
        self._last_write.pop(inc.id, None)
        self._stale.discard(inc.id)
        if inc.parent_id is not None:
            siblings = self._children.get(inc.parent_id)
            if siblings is not None:
                siblings.discard(inc.id)
        if inc.scope == "terminal" and inc.merchant_id is not None:
            group = self._by_group.get((inc.merchant_id, inc.kind))
            if group is not None:
                group.discard(inc.key)
                if not group:
                    del self._by_group[(inc.merchant_id, inc.kind)]

    def _push_clearing(self, inc: Incident) -> None:
        assert inc.clearing_since is not None
        heapq.heappush(self._clearing, (inc.clearing_since + self._clear_after, next(self._seq), inc.key))

    def _touch(self, inc: Incident) -> None:
        self._touched[inc.id] = inc

    def _write(
        self, inc: Incident, at: float, kind: EventType, detail: dict[str, Any],
        *, detected_from: float | None = None,
    ) -> IncidentWrite:
        """A write carrying a copy, so later changes cannot leak into this event's row."""
        self._last_write[inc.id] = at
        self._stale.discard(inc.id)
        snap = replace(inc, evidence=dict(inc.evidence),
                       group=dict(inc.group) if inc.group is not None else None)
        return IncidentWrite(snap, IncidentEvent(inc.id, at, kind, detail), detected_from)
