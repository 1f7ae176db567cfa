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
- **Closed terminals** (the acquirer's decision, CONTRACT §7) show nothing: their retained
  notice is cleared once (a zero-length retained publish) and stays clear while they are
  closed; the closure's notice is for the merchant's page, not for a closed device.
"""

from __future__ import annotations

import heapq
import itertools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fleetwatch.core.catalogue import SCREEN_ACTION_MAX, SCREEN_TITLE_MAX, Catalogue, Context, cut
from fleetwatch.core.model import (
    AcquirerStatusWrite,
    Effect,
    Incident,
    IncidentWrite,
    TerminalNoticeWrite,
    UpstreamMembersWrite,
)
from fleetwatch.core.notice_view import IncidentView
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
    clear: bool = False
    """Clear the retained notice (a zero-length retained publish): the terminal was closed."""

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
        self._incidents = IncidentView()
        self._view = self._incidents.by_id
        self._sig: dict[str, tuple[Any, ...]] = {}
        self._pending: dict[str, tuple[float, Incident]] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._shown: dict[str, Items] = {}
        self._shown_by_merchant: dict[str, set[str]] = {}
        """merchant -> its terminals whose screens are not empty."""
        self._dirty: set[str] = set()
        self._closed: set[str] = set()
        """Terminals the acquirer closed: their screens stay clear."""
        self._clears: dict[str, str | None] = {}
        """Closed terminals whose retained notice is still to be cleared (-> their merchant)."""

    # ---- start ---------------------------------------------------------------------------

    def restore(
        self, open_incidents: Iterable[Incident], members: Mapping[str, Iterable[tuple[str, str | None]]],
        published: Iterable[TerminalNoticeWrite], closed: Iterable[tuple[str, str | None]] = (),
    ) -> None:
        """Open incidents go straight into the view (their window passed while we were away);
        ``closed``: (terminal, merchant) the acquirer closed, whose screens stay clear."""
        self._closed.update(tid for tid, _ in closed)
        for inc in open_incidents:
            if inc.is_open:
                self._sig[inc.id] = screen_signature(inc)
                self._incidents.put(inc)
        for uid, rows in members.items():
            self._incidents.add_members(uid, rows)
        for row in published:
            items = payload_items(row.payload)
            if row.terminal_id in self._closed:
                if row.payload is not None:
                    self._clears[row.terminal_id] = row.merchant_id
                continue
            if items:
                self._shown[row.terminal_id] = items
                if row.merchant_id is not None:
                    self._shown_by_merchant.setdefault(row.merchant_id, set()).add(row.terminal_id)
        self._dirty.update(self._incidents.merchants())
        self._dirty.update(self._shown_by_merchant)

    # ---- input ---------------------------------------------------------------------------

    def observe(self, effects: Iterable[Effect], now: float) -> None:
        """Committed effects: incident writes and upstream members; everything else is ignored."""
        for e in effects:
            if isinstance(e, IncidentWrite):
                self._incident(e.incident, now)
            elif isinstance(e, UpstreamMembersWrite):
                self._dirty.update(self._incidents.add_members(e.incident_id, e.members))
            elif isinstance(e, AcquirerStatusWrite):
                self._acquirer_status(e)

    def _acquirer_status(self, e: AcquirerStatusWrite) -> None:
        tid = e.status.terminal_id
        if e.status.status == "closed":
            if tid not in self._closed:
                self._closed.add(tid)
                self._clears[tid] = e.merchant_id
        elif tid in self._closed:
            self._closed.discard(tid)
            self._clears.pop(tid, None)
            if e.merchant_id is not None:
                self._dirty.add(e.merchant_id)

    def _incident(self, inc: Incident, now: float) -> None:
        iid = inc.id
        if not inc.is_open:
            if iid in self._view or iid in self._pending:
                self._mark(inc)
            self._incidents.drop(iid)
            self._pending.pop(iid, None)
            self._sig.pop(iid, None)
            return
        sig = screen_signature(inc)
        if self._sig.get(iid) == sig:
            if iid in self._view:
                self._incidents.put(inc)  # fresher evidence, same look
            elif iid in self._pending:
                self._pending[iid] = (self._pending[iid][0], inc)
            return
        self._sig[iid] = sig
        if inc.scope == "terminal" and not inc.suppressed:
            shown = self._view.get(iid)
            if shown is None or shown.suppressed:
                if shown is not None:
                    self._mark(shown)  # it leaves its parent's notice now; its own comes later
                self._incidents.drop(iid)
            due = self._pending[iid][0] if iid in self._pending else now + self._window
            if iid not in self._pending:
                heapq.heappush(self._heap, (due, next(self._seq), iid))
            self._pending[iid] = (due, inc)
            return
        self._pending.pop(iid, None)
        self._incidents.put(inc)
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
            self._incidents.put(pending[1])
            self._mark(pending[1])
        out: list[ScreenUpdate] = []
        if self._clears:
            clears, self._clears = self._clears, {}
            for tid, merchant in sorted(clears.items()):
                self._shown.pop(tid, None)
                for shown in self._shown_by_merchant.values():
                    shown.discard(tid)
                out.append(ScreenUpdate(tid, merchant, self._cat.lang, (), clear=True))
        if not self._dirty:
            return out
        dirty, self._dirty = self._dirty, set()
        for merchant in sorted(dirty):
            out.extend(self._recompute(merchant, now))
        return out

    def _recompute(self, merchant: str, now: float) -> list[ScreenUpdate]:
        incidents, members = self._incidents.touching(merchant)
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
        for tid in sorted((set(screens) | shown_here) - self._closed):
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

    def _mark(self, inc: Incident) -> None:
        """Mark every merchant whose screens ``inc`` can appear on."""
        self._dirty.update(self._incidents.merchants_of(inc))
