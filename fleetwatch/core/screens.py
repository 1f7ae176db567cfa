"""What each terminal's own screen should show, and when that changes (CONTRACT §5).

The daemon publishes ``{prefix}/term/{id}/notice`` (retained) whenever what a terminal
should show changes: the current notices that list it, as one short line each. This
book decides those moments; the glue around it (``fleetwatch/terminal_notices.py``)
publishes them. It is fed every committed incident write and upstream-membership
write, keeps a *view* of the open incidents as screens should see them, and on each
tick recomputes only the merchants something changed for.

Why it looks the way it does:

- **Coalesced.** A change marks a merchant dirty; a tick recomputes each dirty merchant
  once, and a terminal is published only when its items differ from what it was last
  given. An upstream's evidence is rewritten every sweep while it is open; that changes
  nothing a shop sees (:func:`~fleetwatch.core.notices.screen_signature`), so a
  10,000-terminal outage publishes each terminal once when it starts and once when it
  ends, not once per child update.
- **Terminal-scope changes wait one correlation window** before screens see them, so a
  terminal incident adopted by a parent in that window only ever shows the parent's
  notice. Parents (merchant, group, fleet) are shown at once, and so is anything
  leaving a screen (a resolve, an adoption).
- **Restart.** :meth:`restore` takes the open incidents, the upstream members and what
  the broker last acknowledged per terminal; the first tick republishes only what
  differs from it.
"""

from __future__ import annotations

import heapq
import itertools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fleetwatch.core.catalogue import SCREEN_ACTION_MAX, SCREEN_TITLE_MAX, Catalogue, Context, cut
from fleetwatch.core.model import Effect, Incident, IncidentWrite, TerminalNoticeWrite, UpstreamMembersWrite
from fleetwatch.core.notices import build_notices, screen_signature

Items = tuple[tuple[tuple[str, str], ...], ...]
"""A screen's items in a comparable form (each item's key/value pairs in order)."""


@dataclass(frozen=True, slots=True)
class ScreenUpdate:
    """Publish this terminal's notice (``items`` may be empty: nothing left to show)."""

    terminal_id: str
    merchant_id: str | None
    lang: str
    items: tuple[dict[str, str], ...]

    def payload(self, ts_ms: int) -> dict[str, Any]:
        """The contract's Notice message for the terminal's screen."""
        return {"v": 1, "terminal_id": self.terminal_id, "ts": ts_ms, "lang": self.lang,
                "items": [dict(i) for i in self.items]}


def items_key(items: Iterable[Mapping[str, Any]]) -> Items:
    return tuple(tuple((str(k), str(v)) for k, v in item.items()) for item in items)


def payload_items(payload: str | None) -> Items:
    """The items of a published payload (what a restart compares against); () if none or unreadable."""
    if not payload:
        return ()
    try:
        data = json.loads(payload)
        items = data.get("items", []) if isinstance(data, dict) else []
        return items_key(i for i in items if isinstance(i, dict))
    except ValueError:
        return ()


class TerminalScreens:
    """The terminals' screens, recomputed per merchant when something it shows changes."""

    def __init__(self, catalogue: Catalogue, ctx: Context, window_s: float) -> None:
        self._cat = catalogue
        self._ctx = ctx
        self._window = window_s
        self._view: dict[str, Incident] = {}
        self._sig: dict[str, tuple[Any, ...]] = {}
        self._pending: dict[str, tuple[float, Incident]] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._by_merchant: dict[str, set[str]] = {}
        """merchant -> ids of its terminal- and merchant-scope incidents in the view."""
        self._children: dict[str, set[str]] = {}
        """parent id -> ids of its children in the view."""
        self._members: dict[str, dict[str, set[str]]] = {}
        """upstream id -> merchant -> the merchant's terminals it is built on."""
        self._shown: dict[str, Items] = {}
        self._shown_by_merchant: dict[str, set[str]] = {}
        """merchant -> its terminals whose screens are not empty."""
        self._dirty: set[str] = set()

    # ---- start ---------------------------------------------------------------------------

    def restore(
        self, open_incidents: Iterable[Incident], members: Mapping[str, Iterable[tuple[str, str | None]]],
        published: Iterable[TerminalNoticeWrite],
    ) -> None:
        """Open incidents go straight into the view (their window passed while we were away)."""
        for inc in open_incidents:
            if inc.is_open:
                self._sig[inc.id] = screen_signature(inc)
                self._put(inc)
        for uid, rows in members.items():
            self._add_members(uid, rows)
        for row in published:
            items = payload_items(row.payload)
            if items:
                self._shown[row.terminal_id] = items
                if row.merchant_id is not None:
                    self._shown_by_merchant.setdefault(row.merchant_id, set()).add(row.terminal_id)
        self._dirty.update(self._by_merchant)
        self._dirty.update(self._shown_by_merchant)
        for by_m in self._members.values():
            self._dirty.update(by_m)

    # ---- input ---------------------------------------------------------------------------

    def observe(self, effects: Iterable[Effect], now: float) -> None:
        """Committed effects: incident writes and upstream members; everything else is ignored."""
        for e in effects:
            if isinstance(e, IncidentWrite):
                self._incident(e.incident, now)
            elif isinstance(e, UpstreamMembersWrite):
                self._add_members(e.incident_id, e.members)
                self._dirty.update(mid for _, mid in e.members if mid is not None)

    def _incident(self, inc: Incident, now: float) -> None:
        iid = inc.id
        if not inc.is_open:
            if iid in self._view or iid in self._pending:
                self._mark(inc)
            self._drop(iid)
            self._pending.pop(iid, None)
            self._sig.pop(iid, None)
            self._members.pop(iid, None)
            return
        sig = screen_signature(inc)
        if self._sig.get(iid) == sig:
            if iid in self._view:
                self._put(inc)  # fresher evidence, same look
            elif iid in self._pending:
                self._pending[iid] = (self._pending[iid][0], inc)
            return
        self._sig[iid] = sig
        if inc.scope == "terminal" and not inc.suppressed:
            shown = self._view.get(iid)
            if shown is None or shown.suppressed:
                if shown is not None:
                    self._mark(shown)  # it leaves its parent's notice now; its own comes later
                self._drop(iid)
            due = self._pending[iid][0] if iid in self._pending else now + self._window
            if iid not in self._pending:
                heapq.heappush(self._heap, (due, next(self._seq), iid))
            self._pending[iid] = (due, inc)
            return
        self._pending.pop(iid, None)
        self._put(inc)
        self._mark(inc)

    # ---- time ----------------------------------------------------------------------------

    def tick(self, now: float) -> list[ScreenUpdate]:
        """Promote terminal-scope changes whose window passed; recompute the dirty merchants."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            due, _, iid = heapq.heappop(heap)
            pending = self._pending.get(iid)
            if pending is None or pending[0] != due:
                continue
            del self._pending[iid]
            self._put(pending[1])
            self._mark(pending[1])
        if not self._dirty:
            return []
        dirty, self._dirty = self._dirty, set()
        out: list[ScreenUpdate] = []
        for merchant in sorted(dirty):
            out.extend(self._recompute(merchant, now))
        return out

    def _recompute(self, merchant: str, now: float) -> list[ScreenUpdate]:
        incidents = self._touching(merchant)
        members = {uid: by_m[merchant] for uid, by_m in self._members.items() if merchant in by_m}
        facts = build_notices(merchant, incidents, members, now, 0.0, current_only=True)
        screens: dict[str, list[dict[str, str]]] = {}
        for f in facts:
            for tid in f.terminal_ids:
                texts = self._cat.texts(f, self._ctx, terminal_id=tid)
                screens.setdefault(tid, []).append({
                    "incident_id": f.incident_id, "severity": f.severity, "whose": f.whose,
                    "title": cut(texts.title, SCREEN_TITLE_MAX), "action": cut(texts.action, SCREEN_ACTION_MAX),
                })
        out: list[ScreenUpdate] = []
        shown_here = self._shown_by_merchant.setdefault(merchant, set())
        for tid in sorted(set(screens) | shown_here):
            items = tuple(screens.get(tid, ()))
            key = items_key(items)
            if self._shown.get(tid, ()) == key:
                continue
            if key:
                self._shown[tid] = key
                shown_here.add(tid)
            else:
                self._shown.pop(tid, None)
                shown_here.discard(tid)
            out.append(ScreenUpdate(tid, merchant, self._cat.lang, items))
        if not shown_here:
            del self._shown_by_merchant[merchant]
        return out

    # ---- internals -----------------------------------------------------------------------

    def _touching(self, merchant: str) -> list[Incident]:
        """The merchant's incidents in the view, their ancestors, and the upstreams built on it."""
        out: dict[str, Incident] = {}
        stack = [self._view[i] for i in self._by_merchant.get(merchant, ()) if i in self._view]
        stack += [self._view[u] for u, by_m in self._members.items() if merchant in by_m and u in self._view]
        while stack:
            inc = stack.pop()
            if inc.id in out:
                continue
            out[inc.id] = inc
            if inc.parent_id is not None and inc.parent_id in self._view:
                stack.append(self._view[inc.parent_id])
        return list(out.values())

    def _mark(self, inc: Incident) -> None:
        """Mark every merchant whose screens ``inc`` can appear on."""
        if inc.scope in ("terminal", "merchant"):
            if inc.merchant_id is not None:
                self._dirty.add(inc.merchant_id)
            return
        self._dirty.update(self._members.get(inc.id, {}))
        stack, seen = [inc.id], {inc.id}
        while stack:
            for cid in self._children.get(stack.pop(), ()):
                child = self._view.get(cid)
                if child is None or cid in seen:
                    continue
                seen.add(cid)
                if child.scope in ("terminal", "merchant"):
                    if child.merchant_id is not None:
                        self._dirty.add(child.merchant_id)
                else:
                    self._dirty.update(self._members.get(cid, {}))
                    stack.append(cid)

    def _add_members(self, uid: str, rows: Iterable[tuple[str, str | None]]) -> None:
        by_m = self._members.setdefault(uid, {})
        for tid, mid in rows:
            if mid is not None:
                by_m.setdefault(mid, set()).add(tid)

    def _put(self, inc: Incident) -> None:
        old = self._view.get(inc.id)
        if old is not None and old.parent_id != inc.parent_id and old.parent_id is not None:
            self._children.get(old.parent_id, set()).discard(inc.id)
        self._view[inc.id] = inc
        if inc.scope in ("terminal", "merchant") and inc.merchant_id is not None:
            self._by_merchant.setdefault(inc.merchant_id, set()).add(inc.id)
        if inc.parent_id is not None:
            self._children.setdefault(inc.parent_id, set()).add(inc.id)

    def _drop(self, iid: str) -> None:
        inc = self._view.pop(iid, None)
        if inc is None:
            return
        if inc.merchant_id is not None:
            ids = self._by_merchant.get(inc.merchant_id)
            if ids is not None:
                ids.discard(iid)
                if not ids:
                    del self._by_merchant[inc.merchant_id]
        if inc.parent_id is not None:
            kids = self._children.get(inc.parent_id)
            if kids is not None:
                kids.discard(iid)
                if not kids:
                    del self._children[inc.parent_id]
