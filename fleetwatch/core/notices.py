"""Merchant notices: from the incidents that touch a shop, one notice per problem (CONTRACT §5).

A shop owner does not care that one host outage is 1 fleet incident and 140 terminal
incidents, or that a reopened printer jam is two rows: they want one line per problem,
whose problem it is, and what to do. This module decides *which* notices a merchant sees
and the facts each one carries; the words come from the message catalogues
(:mod:`fleetwatch.core.catalogue`).

The rules, each a table or a small function below:

- **Whose problem** (:data:`WHOSE`): from (kind, cause); any group- or fleet-scope
  incident, and every ``host_outage``, is ``upstream``: not your terminal.
- **One notice per problem**: an incident is shown inside the notice of its top-most
  ancestor that still suppresses it (:func:`notice_root`); a chain of ``previous_id``
  (reopened after a manual resolve) is one notice.
- **Who is affected by an upstream**: the terminals it is built on (kept by the engine
  and persisted, see ``core/upstreams.py``), so a shop whose terminal only got rc 91 and
  has no incident of its own still gets the upstream notice.
- **What is shown**: open and acknowledged incidents as current; resolved ones for
  ``recent_s`` after they resolved; never those resolved because the acquirer suspended
  or closed the terminal (that notice explains them); severity ``info`` only for the
  acquirer's decisions (``config`` ``suspended`` / ``closed``).
- **Money** of a settlement notice: one entry per batch and currency, counted once even
  when two causes are open on the same batch.
- **Order**: current before resolved, then severity (critical first), then newest first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from fleetwatch.core.model import ACQUIRER_DECISIONS, CAUSES, SEVERITY_RANK, Incident, Severity

Whose = Literal["merchant", "terminal", "acquirer", "upstream"]
WHOSE_VALUES: Final[tuple[Whose, ...]] = ("merchant", "terminal", "acquirer", "upstream")

UpstreamKind = Literal["network", "device", "host"]
UPSTREAM_KINDS: Final[tuple[UpstreamKind, ...]] = ("network", "device", "host")
"""Which upstream it is, for the texts: the mobile network (a ``net_type`` group), the
device's software (a ``model``/``fw`` group), or the bank's system (fleet or host)."""

WHOSE: Final[dict[tuple[str, str], Whose]] = {
    **{("printer", c): "merchant" for c in ("no_paper", "jam", "cover_open", "overheat", "paper_low", "print_errors")},
    ("printer", "fault"): "terminal",
    ("reader", "self_test"): "terminal",
    ("reader", "read_failures"): "terminal",
    ("tamper", "tamper"): "terminal",
    **{("network", c): "merchant" for c in CAUSES["network"]},
    **{("power", c): "merchant" for c in CAUSES["power"]},
    ("settlement_gap", "batch_not_closed"): "merchant",
    ("settlement_gap", "saf_backlog"): "merchant",
    ("config", "batch_sync"): "merchant",
    **{("config", c): "acquirer" for c in
       ("invalid_merchant", "not_permitted", "not_registered", "keys", "suspended", "closed")},
    ("settlement_gap", "totals_mismatch"): "acquirer",
    ("settlement_gap", "not_settled"): "acquirer",
    ("settlement_gap", "settled_short"): "acquirer",
    **{("host_outage", c): "upstream" for c in CAUSES["host_outage"]},
}
"""The contract's "whose" table for terminal- and merchant-scope incidents."""

HIDDEN_RESOLUTIONS: Final = frozenset({"suspended", "closed"})
"""``resolved_by`` values whose incidents the suspension or closure notice explains."""

NO_BATCH: Final = -1
"""``batch_no`` of a gap that is not one batch (saf_backlog): it carries no money entry."""


def whose_of(inc: Incident) -> Whose:
    """Whose problem an incident is (the contract's table; upstream for group and fleet)."""
    if inc.scope in ("group", "fleet"):
        return "upstream"
    return WHOSE.get((inc.kind, inc.cause), "acquirer")


def upstream_kind(group: Mapping[str, str] | None) -> UpstreamKind:
    """The kind of upstream a group names, for choosing its texts."""
    if group is None:
        return "host"
    if "net_type" in group:
        return "network"
    if "model" in group or "fw" in group:
        return "device"
    return "host"


def catalogue_keys(inc: Incident) -> tuple[str, ...]:
    """The catalogue entries for an incident, most specific first (see core/catalogue.py).

    ``kind.cause`` always; before it a variant: ``.merchant`` for merchant scope, the
    upstream kind for group and fleet scope (then the generic ``upstream.KIND``), and
    the acquirer's ``reason`` for ``config`` ``suspended`` / ``closed``.
    """
    base = f"{inc.kind}.{inc.cause}"
    if inc.scope in ("group", "fleet"):
        kind = upstream_kind(inc.group)
        return (f"{base}.{kind}", base, f"upstream.{kind}")
    if inc.scope == "merchant":
        return (f"{base}.merchant", base)
    if (inc.kind, inc.cause) in ACQUIRER_DECISIONS:
        reason = inc.evidence.get("reason")
        if isinstance(reason, str) and reason:
            return (f"{base}.{reason}", base)
    return (base,)


@dataclass(frozen=True, slots=True)
class Money:
    """Money of one batch and currency that a settlement notice is about."""

    amount_minor: int
    currency: str
    batch_no: int
    business_date: str | None
    terminal_id: str | None


@dataclass(frozen=True, slots=True)
class NoticeFacts:
    """One notice before it has words: what the catalogue and the page need."""

    incident_id: str
    """The notice's own incident: the top-most ancestor (newest of a previous_id chain)."""
    kind: str
    cause: str
    scope: str
    severity: Severity
    status: str
    whose: Whose
    terminal_ids: tuple[str, ...]
    money: tuple[Money, ...]
    opened_at: float
    resolved_at: float | None
    keys: tuple[str, ...]
    """Catalogue entries to take the texts from, most specific first."""
    note: str | None = None
    """The acquirer's own words for the merchant (a suspension's note), shown as written."""

    @property
    def current(self) -> bool:
        return self.status != "resolved"


def notice_root(inc: Incident, by_id: Mapping[str, Incident]) -> Incident:
    """The top-most ancestor that still suppresses ``inc`` (``inc`` itself when none)."""
    cur, seen = inc, {inc.id}
    while cur.suppressed and cur.parent_id is not None:
        parent = by_id.get(cur.parent_id)
        if parent is None or parent.id in seen:
            break
        seen.add(parent.id)
        cur = parent
    return cur


def _shown(inc: Incident) -> bool:
    """Whether an incident may appear at all (before grouping)."""
    if inc.status == "resolved" and inc.evidence.get("resolved_by") in HIDDEN_RESOLUTIONS:
        return False
    return inc.severity != "info" or (inc.kind, inc.cause) in ACQUIRER_DECISIONS


class _Chains:
    """Union-find over notice roots linked by ``previous_id``."""

    def __init__(self) -> None:
        self.up: dict[str, str] = {}

    def find(self, x: str) -> str:
        up = self.up
        while up.get(x, x) != x:
            up[x] = up.get(up[x], up[x])
            x = up[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.up[rb] = ra


def build_notices(
    merchant_id: str,
    incidents: Iterable[Incident],
    members: Mapping[str, Iterable[str]],
    now: float,
    recent_s: float,
    *,
    current_only: bool = False,
) -> list[NoticeFacts]:
    """The merchant's notices, ordered as the contract says.

    ``incidents``: those that touch the merchant (its terminal- and merchant-scope ones,
    their ancestors, and the upstreams built on its terminals); extra ones are harmless.
    ``members``: upstream incident id -> the merchant's terminals it is built on.
    ``current_only``: leave resolved notices out (what a terminal's screen shows).
    """
    by_id = {i.id: i for i in incidents}
    groups: dict[str, list[Incident]] = {}
    for inc in by_id.values():
        if not _shown(inc):
            continue
        if inc.scope in ("group", "fleet") or inc.merchant_id != merchant_id:
            continue  # upstreams come in as ancestors or through the terminals they are built on
        groups.setdefault(notice_root(inc, by_id).id, []).append(inc)
    for uid, tids in members.items():
        up = by_id.get(uid)
        if up is not None and _shown(up) and any(True for _ in tids):
            root = notice_root(up, by_id)
            groups.setdefault(root.id, [])
            if up not in groups[root.id]:
                groups[root.id].append(up)
    chains = _Chains()
    for rid in groups:
        prev = by_id[rid].previous_id
        if prev is not None and prev in by_id:
            prev_root = notice_root(by_id[prev], by_id)
            if prev_root.id in groups:
                chains.union(rid, prev_root.id)
    merged: dict[str, list[str]] = {}
    for rid in groups:
        merged.setdefault(chains.find(rid), []).append(rid)
    out: list[NoticeFacts] = []
    for roots in merged.values():
        facts = _facts(merchant_id, roots=[by_id[r] for r in roots], groups=groups, members=members,
                       now=now, recent_s=recent_s)
        if facts is not None and (facts.current or not current_only):
            out.append(facts)
    out.sort(key=_order)
    return out


def _order(n: NoticeFacts) -> tuple[int, int, float, str]:
    return (0 if n.current else 1, -SEVERITY_RANK[n.severity], -n.opened_at, n.incident_id)


def _facts(
    merchant_id: str,
    *,
    roots: list[Incident],
    groups: Mapping[str, list[Incident]],
    members: Mapping[str, Iterable[str]],
    now: float,
    recent_s: float,
) -> NoticeFacts | None:
    roots.sort(key=lambda r: (r.opened_at, r.id))
    root = roots[-1]
    if root.status == "resolved" and (root.resolved_at or 0.0) < now - recent_s:
        return None
    if not _shown(root):
        return None
    current = root.status != "resolved"
    incs = [i for r in roots for i in groups[r.id]]
    if root not in incs:
        incs.append(root)
    counted = [i for i in incs if i.is_open] if current else incs
    terminals = {i.terminal_id for i in counted
                 if i.scope == "terminal" and i.terminal_id is not None and i.merchant_id == merchant_id}
    for i in incs:
        if i.scope in ("group", "fleet") and (i.is_open or not current):
            terminals.update(members.get(i.id, ()))
    note = root.evidence.get("note")
    return NoticeFacts(
        incident_id=root.id, kind=root.kind, cause=root.cause, scope=root.scope,
        severity=root.severity, status=root.status, whose=whose_of(root),
        terminal_ids=tuple(sorted(terminals)), money=money_of(counted),
        opened_at=min(r.opened_at for r in roots),
        resolved_at=None if current else root.resolved_at,
        keys=catalogue_keys(root), note=note if isinstance(note, str) and note else None,
    )


def money_of(incidents: Iterable[Incident]) -> tuple[Money, ...]:
    """Money at stake per batch and currency, each counted once (the larger of its causes)."""
    amounts: dict[tuple[str, int, str], int] = {}
    dates: dict[tuple[str, int, str], str] = {}
    for inc in incidents:
        if inc.kind != "settlement_gap" or inc.scope != "terminal":
            continue
        ev = inc.evidence
        amount, currency, batch_no = ev.get("amount_minor"), ev.get("currency"), ev.get("batch_no")
        if not isinstance(currency, str) or not currency or not isinstance(amount, int) \
                or not isinstance(batch_no, int) or isinstance(amount, bool) or isinstance(batch_no, bool):
            continue
        if batch_no == NO_BATCH or amount <= 0:
            continue
        key = (inc.terminal_id or "", batch_no, currency)
        amounts[key] = max(amounts.get(key, 0), amount)
        date = ev.get("business_date")
        if isinstance(date, str) and date:
            dates.setdefault(key, date)
    money = [Money(v, k[2], k[1], dates.get(k), k[0] or None) for k, v in amounts.items()]
    return tuple(sorted(money, key=lambda m: (m.business_date or "", m.terminal_id or "", m.batch_no, m.currency)))


def screen_signature(inc: Incident) -> tuple[Any, ...]:
    """What a notice's look depends on: an incident change outside it changes no screen.

    An upstream's evidence is rewritten every sweep while it is open (failing counts);
    none of that is shown, so its screens are left alone.
    """
    sig: tuple[Any, ...] = (inc.kind, inc.cause, inc.scope, inc.severity, inc.status, inc.suppressed,
                            inc.parent_id, catalogue_keys(inc))
    if inc.kind == "settlement_gap":
        ev = inc.evidence
        sig += (ev.get("amount_minor"), ev.get("currency"), ev.get("batch_no"), ev.get("business_date"))
    return sig
