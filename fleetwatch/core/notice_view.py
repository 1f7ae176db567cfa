"""The open incidents as the merchant-facing features see them, indexed by merchant.

Both the terminal screens (``core/screens.py``) and the merchant notifications
(``core/notify_events.py``) answer the same question after every change: *which merchants
can this incident appear for, and what touches that merchant now?* This view keeps the
indexes that make both answers cheap: incidents by merchant, children by parent, and per
upstream the merchant's terminals it is built on.
"""

from __future__ import annotations

from collections.abc import Iterable

from fleetwatch.core.model import Incident


class IncidentView:
    """Open incidents by id, merchant and parent, and the upstreams' members by merchant."""

    def __init__(self) -> None:
        self.by_id: dict[str, Incident] = {}
        self._by_merchant: dict[str, set[str]] = {}
        """merchant -> ids of its terminal- and merchant-scope incidents in the view."""
        self._children: dict[str, set[str]] = {}
        """parent id -> ids of its children in the view."""
        self.members: dict[str, dict[str, set[str]]] = {}
        """upstream id -> merchant -> the merchant's terminals it is built on."""

    def get(self, iid: str) -> Incident | None:
        return self.by_id.get(iid)

    def merchants(self) -> set[str]:
        """Every merchant something in the view touches."""
        out = set(self._by_merchant)
        for by_m in self.members.values():
            out.update(by_m)
        return out

    def touching(self, merchant: str) -> tuple[list[Incident], dict[str, set[str]]]:
        """The merchant's incidents, their ancestors, the upstreams built on it; and those
        upstreams' members among the merchant's terminals (what ``build_notices`` takes)."""
        view = self.by_id
        out: dict[str, Incident] = {}
        members = {uid: by_m[merchant] for uid, by_m in self.members.items() if merchant in by_m}
        stack = [view[i] for i in self._by_merchant.get(merchant, ()) if i in view]
        stack += [view[u] for u in members if u in view]
        while stack:
            inc = stack.pop()
            if inc.id in out:
                continue
            out[inc.id] = inc
            if inc.parent_id is not None and inc.parent_id in view:
                stack.append(view[inc.parent_id])
        return list(out.values()), members

    def merchants_of(self, inc: Incident) -> set[str]:
        """Every merchant ``inc`` can appear for: its own, or those of its members and descendants."""
        if inc.scope in ("terminal", "merchant"):
            return {inc.merchant_id} if inc.merchant_id is not None else set()
        out = set(self.members.get(inc.id, {}))
        stack, seen = [inc.id], {inc.id}
        while stack:
            for cid in self._children.get(stack.pop(), ()):
                child = self.by_id.get(cid)
                if child is None or cid in seen:
                    continue
                seen.add(cid)
                if child.scope in ("terminal", "merchant"):
                    if child.merchant_id is not None:
                        out.add(child.merchant_id)
                else:
                    out.update(self.members.get(cid, {}))
                    stack.append(cid)
        return out

    def add_members(self, uid: str, rows: Iterable[tuple[str, str | None]]) -> set[str]:
        """Count terminals among an upstream's members; returns their merchants."""
        by_m = self.members.setdefault(uid, {})
        touched = set()
        for tid, mid in rows:
            if mid is not None:
                by_m.setdefault(mid, set()).add(tid)
                touched.add(mid)
        return touched

    def put(self, inc: Incident) -> None:
        old = self.by_id.get(inc.id)
        if old is not None and old.parent_id != inc.parent_id and old.parent_id is not None:
            self._children.get(old.parent_id, set()).discard(inc.id)
        self.by_id[inc.id] = inc
        if inc.scope in ("terminal", "merchant") and inc.merchant_id is not None:
            self._by_merchant.setdefault(inc.merchant_id, set()).add(inc.id)
        if inc.parent_id is not None:
            self._children.setdefault(inc.parent_id, set()).add(inc.id)

    def drop(self, iid: str) -> Incident | None:
        inc = self.by_id.pop(iid, None)
        self.members.pop(iid, None)
        if inc is None:
            return None
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
        return inc
