"""When a merchant is told, and what: the event rules of merchant notifications (CONTRACT §6).

A notice page is useless to a shop owner who never opens it, so the daemon pushes each
real problem to the acquirer's channels (SMS gateway, app push, chat bot). This book
decides the events; the glue around it renders them and writes them to the store's
outbox in the same transaction as the incident change that caused them, and a worker
delivers them (``fleetwatch/merchant_notifications.py``, ``adapters/webhooks.py``).

It is fed the effects of each write *before* it is committed (incident writes and
upstream members), keeps a view of the open incidents, and for every merchant something
changed for compares the merchant's current notices (``core/notices.py``: one per
problem) with what it knew: a new notice is ``opened``, a change of cause, severity or
``whose`` is ``updated`` (a longer list of terminals is not), a notice that is over is
``resolved``. A notice that disappears because a parent adopted its incident is not
over: it is *absorbed* (nothing is said, or its open is taken back if not yet sent).

Then, per receiver (``notify.merchant_webhooks``), the rules that keep a shop from a storm:

- **Filters**: ``kinds`` (empty: all); below the receiver's ``min_severity`` a notice goes
  into the **daily digest**, due at the end of the quiet hours (or the start of the day);
  escalating to ``min_severity`` sends it as ``opened``.
- **Wait**: a terminal-scope open is due one correlation window later, so a child adopted
  meanwhile never notifies on its own; a resolve is due one ``clear_after_intervals``
  window later, so a **flapping** problem (resolved and opened again under a new
  incident) sends at most one open and one resolve per window: the new open takes the
  pending resolve back and the merchant hears nothing.
- **Quiet hours** (in ``notify.timezone``): only critical events and the acquirer's
  decisions (CONTRACT §7, which are always sent at once) go out; the rest are due at the
  end of the quiet hours.
- **Hourly cap**: at most ``merchant_max_per_hour`` events per merchant and receiver in
  the hour they are due; the rest of that hour is folded into one ``notice.digest`` due at
  the end of the hour.
- **Collapsing**: an event not yet due is still the book's to change: a later change
  rewrites it (same ``event_id``), and an open and its resolve both waiting send nothing
  (the row is marked ``collapsed``). An event whose time has come belongs to the
  delivery worker and is never changed again (it may be on the wire), so collapsing
  stops ``margin_s`` before an event is due and the worker starts ``margin_s`` after.

Every row the book wants written comes out of :meth:`NotifyBook.take` as an
:class:`Outgoing`; :meth:`NotifyBook.restore` rebuilds the book from the rows the store
kept (pending ones, and the last one per notice and receiver), so a restart neither
repeats an event nor forgets one. Pure: ``now`` is passed in, ids come from ``new_id``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from fleetwatch.core.calendar import Calendar, parse_hhmm
from fleetwatch.core.model import (
    ACQUIRER_DECISIONS,
    SEVERITY_RANK,
    Effect,
    Incident,
    IncidentWrite,
    Severity,
    UpstreamMembersWrite,
)
from fleetwatch.core.notice_view import IncidentView
from fleetwatch.core.notices import HIDDEN_RESOLUTIONS, NoticeFacts, build_notices, screen_signature

EventType = Literal["notice.opened", "notice.updated", "notice.resolved", "notice.digest"]
EVENT_TYPES: Final[tuple[EventType, ...]] = ("notice.opened", "notice.updated", "notice.resolved", "notice.digest")
RowStatus = Literal["pending", "sent", "failed", "collapsed"]
ROW_STATUSES: Final[tuple[RowStatus, ...]] = ("pending", "sent", "failed", "collapsed")

DIGEST_DAILY: Final = "daily"
DIGEST_HOURLY: Final = "hourly"


@dataclass(frozen=True, slots=True)
class QuietHours:
    """A receiver's quiet hours, ``"22:00-08:00"`` (may wrap midnight)."""

    start: str
    end: str

    @classmethod
    def parse(cls, text: str) -> QuietHours:
        """ValueError unless ``HH:MM-HH:MM`` with two different times."""
        start, sep, end = text.partition("-")
        if not sep:
            raise ValueError(f'quiet_hours must be "HH:MM-HH:MM" (got {text!r})')
        parse_hhmm(start.strip())
        parse_hhmm(end.strip())
        if start.strip() == end.strip():
            raise ValueError(f"quiet_hours must not start and end at the same time (got {text!r})")
        return cls(start.strip(), end.strip())

    def periods_near(self, cal: Calendar, t: float) -> list[tuple[float, float]]:
        """The quiet periods that start on the day before, the day of and the day after ``t``."""
        d = cal.day_index(t)
        wraps = cal.clock_fraction(self.end) <= cal.clock_fraction(self.start)
        return [(cal.at_clock(k, self.start), cal.at_clock(k + 1 if wraps else k, self.end))
                for k in (d - 1, d, d + 1)]

    def end_if_quiet(self, cal: Calendar, t: float) -> float:
        """``t`` itself outside quiet hours, else the end of the quiet period holding it."""
        for start, end in self.periods_near(cal, t):
            if start <= t < end:
                return end
        return t

    def next_end(self, cal: Calendar, t: float) -> float:
        """The first end of a quiet period after ``t`` (the daily digest is due then)."""
        return min(end for _, end in self.periods_near(cal, t) if end > t)


@dataclass(frozen=True, slots=True)
class Receiver:
    """What the rules need of one ``notify.merchant_webhooks`` entry."""

    name: str
    min_severity: Severity = "major"
    kinds: frozenset[str] = frozenset()
    quiet: QuietHours | None = None

    def wants(self, facts: NoticeFacts) -> bool:
        return not self.kinds or facts.kind in self.kinds


@dataclass(frozen=True, slots=True)
class NotifyRules:
    """The settings of the rules, in seconds of the daemon's clock."""

    receivers: tuple[Receiver, ...]
    calendar: Calendar
    """``detect.day_s`` read in ``notify.timezone``: quiet hours, hours of the cap, days of digests."""
    wait_s: float
    """One correlation window: how long a terminal-scope open waits."""
    flap_s: float
    """One ``clear_after_intervals`` window: how long a resolve waits."""
    max_per_hour: int = 6
    margin_s: float = 1.0


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One outbox row as the book wants it written (inserted, or rewritten while pending)."""

    event_id: str
    receiver: str
    merchant_id: str
    notice_id: str
    """The notice's incident id; ``""`` for a digest."""
    type: EventType
    due_at: float
    created_at: float
    items: tuple[NoticeFacts, ...]
    """One notice for opened/updated/resolved; a digest's notices, newest state of each."""
    status: RowStatus = "pending"
    digest: str = ""
    """``daily`` or ``hourly`` for a digest."""


def _signature(inc: Incident) -> tuple[object, ...]:
    """What a merchant's notices depend on of one incident (not its counts and rates)."""
    return (*screen_signature(inc), inc.merchant_id, inc.previous_id)


def is_decision(facts: NoticeFacts) -> bool:
    """The acquirer's decisions (CONTRACT §7) are sent at once, whatever the severity or hour."""
    return (facts.kind, facts.cause) in ACQUIRER_DECISIONS


def signature(facts: NoticeFacts) -> tuple[str, str, str]:
    """What an ``updated`` is about: cause, severity, whose (not the list of terminals)."""
    return (facts.cause, facts.severity, facts.whose)


def flap_key(facts: NoticeFacts) -> tuple[str, str, str, tuple[str, ...]]:
    """The same problem again under a new incident: same kind, scope and terminals."""
    return (facts.kind, facts.scope, facts.cause, facts.terminal_ids)


@dataclass(slots=True)
class _Slot:
    """One notice as one receiver knows it."""

    told: bool = False
    """An open was sent (or is due and no longer ours to take back) and no resolve after it."""
    sig: tuple[str, str, str] | None = None
    pending: Outgoing | None = None
    """The newest own row of this notice still waiting (the book may still change it)."""
    folded: tuple[str, float] | None = None
    """The digest (kind, due) the notice's latest state is in, while that digest waits."""
    facts: NoticeFacts | None = None


@dataclass(slots=True)
class _Channel:
    """One merchant as one receiver knows it."""

    merchant: str
    receiver: Receiver
    slots: dict[str, _Slot] = field(default_factory=dict)
    digests: dict[tuple[str, float], Outgoing] = field(default_factory=dict)
    per_hour: dict[float, int] = field(default_factory=dict)
    """Events per hour they are due in (keyed by the hour's start)."""
    resolving: dict[tuple[str, str, str, tuple[str, ...]], str] = field(default_factory=dict)
    """flap key -> the notice whose resolve is waiting."""


class NotifyBook:
    """Merchants' notices as their receivers were told them, and the events that follow."""

    def __init__(self, rules: NotifyRules, new_id: Callable[[], str]) -> None:
        self._rules = rules
        self._new_id = new_id
        self._view = IncidentView()
        self._known: dict[str, dict[str, NoticeFacts]] = {}
        """merchant -> its current notices as last computed."""
        self._channels: dict[tuple[str, str], _Channel] = {}
        self._dirty: set[str] = set()
        self._gone: dict[str, Incident] = {}
        """Incidents resolved since the last take (for a resolved notice's time and reason)."""
        self._out: dict[str, Outgoing] = {}
        self._sig: dict[str, tuple[object, ...]] = {}
        """What each open incident's notices depend on (an unchanged one marks no merchant)."""
        self._absorbed: dict[str, set[tuple[str, str]]] = {}
        """notice id -> (merchant, receiver) told of it before a parent adopted it."""

    # ---- start ---------------------------------------------------------------------------

    def restore(
        self, open_incidents: Iterable[Incident], members: dict[str, list[tuple[str, str | None]]],
        rows: Iterable[Outgoing], now: float,
    ) -> None:
        """Rebuild from the open incidents and the rows kept: every pending row, and the
        last row of each (receiver, notice), oldest first."""
        for inc in open_incidents:
            if inc.is_open:
                self._view.put(inc)
                self._sig[inc.id] = _signature(inc)
        for uid, pairs in members.items():
            self._view.add_members(uid, pairs)
        receivers = {r.name: r for r in self._rules.receivers}
        for row in rows:
            receiver = receivers.get(row.receiver)
            if receiver is None:
                continue  # a receiver no longer configured
            ch = self._channel(row.merchant_id, receiver)
            waiting = row.status == "pending" and self._ours(row, now)
            if row.type == "notice.digest":
                if waiting:
                    ch.digests[(row.digest, row.due_at)] = row
                    for f in row.items:
                        ch.slots.setdefault(f.incident_id, _Slot(facts=f, sig=signature(f))).folded = \
                            (row.digest, row.due_at)
                continue
            if row.status == "collapsed" or not row.items:
                continue  # taken back, or a row without its notice (nothing to rebuild from)
            facts = row.items[0]
            slot = ch.slots.setdefault(row.notice_id, _Slot())
            slot.facts, slot.sig = facts, signature(facts)
            slot.told = row.type != "notice.resolved" and not (waiting and row.type == "notice.opened")
            slot.pending = row if waiting else None
            if row.type == "notice.resolved":
                if waiting:
                    ch.resolving[flap_key(facts)] = row.notice_id
                    slot.told = True
                else:
                    del ch.slots[row.notice_id]
                    continue
            hour = self._hour(row.due_at)
            ch.per_hour[hour] = ch.per_hour.get(hour, 0) + 1
            if row.type != "notice.resolved":
                self._known.setdefault(row.merchant_id, {})[row.notice_id] = facts
        self._dirty.update(self._view.merchants())
        self._dirty.update(self._known)

    # ---- input ---------------------------------------------------------------------------

    def observe(self, effects: Iterable[Effect], now: float) -> None:
        """The effects about to be written: incident writes and upstream members."""
        view = self._view
        for e in effects:
            if isinstance(e, IncidentWrite):
                inc = e.incident
                if inc.is_open:
                    sig = _signature(inc)
                    if self._sig.get(inc.id) == sig:
                        view.put(inc)  # fresher evidence (an upstream's counts every sweep), same notice
                        continue
                    self._sig[inc.id] = sig
                else:
                    self._sig.pop(inc.id, None)
                self._dirty.update(view.merchants_of(inc))
                if inc.is_open:
                    old = view.get(inc.id)
                    if old is not None and old.merchant_id != inc.merchant_id and old.merchant_id is not None:
                        self._dirty.add(old.merchant_id)
                    view.put(inc)
                    self._dirty.update(view.merchants_of(inc))
                else:
                    view.drop(inc.id)
                    self._gone[inc.id] = inc
            elif isinstance(e, UpstreamMembersWrite):
                self._dirty.update(view.add_members(e.incident_id, e.members))

    def take(self, now: float) -> list[Outgoing]:
        """The rows to write with this transaction (new events, rewrites, collapses)."""
        if self._dirty:
            dirty, self._dirty = self._dirty, set()
            for merchant in sorted(dirty):
                self._recompute(merchant, now)
        for iid, inc in self._gone.items():
            for merchant, receiver in self._absorbed.pop(iid, ()):
                self._resolve_absorbed(merchant, receiver, iid, inc, now)
        self._gone.clear()
        out, self._out = list(self._out.values()), {}
        return out

    # ---- notices -> changes ----------------------------------------------------------------

    def _recompute(self, merchant: str, now: float) -> None:
        incidents, members = self._view.touching(merchant)
        current = {f.incident_id: f for f in build_notices(merchant, incidents, members, now, 0.0,
                                                             current_only=True)}
        known = self._known.get(merchant, {})
        for nid, facts in current.items():
            old = known.get(nid)
            if old is None:
                self._change(merchant, "opened", facts, now)
            elif signature(old) != signature(facts):
                self._change(merchant, "updated", facts, now)
            elif old.terminal_ids != facts.terminal_ids or old.money != facts.money:
                self._change(merchant, "refreshed", facts, now)
        for nid, old in known.items():
            if nid in current:
                continue
            gone = self._gone.get(nid)
            if gone is None:
                self._change(merchant, "absorbed", old, now)  # still open, inside a parent's notice
            elif gone.evidence.get("resolved_by") in HIDDEN_RESOLUTIONS:
                self._change(merchant, "hidden", old, now)  # the acquirer's decision explains it
            else:
                resolved = dataclasses.replace(old, status="resolved", resolved_at=gone.resolved_at or now)
                self._change(merchant, "resolved", resolved, now)
        if current:
            self._known[merchant] = current
        else:
            self._known.pop(merchant, None)

    def _change(self, merchant: str, change: str, facts: NoticeFacts, now: float) -> None:
        for r in self._rules.receivers:
            if r.wants(facts):
                self._apply(self._channel(merchant, r), change, facts, now)

    def _apply(self, ch: _Channel, change: str, facts: NoticeFacts, now: float) -> None:
        r = ch.receiver
        nid = facts.incident_id
        slot = ch.slots.get(nid)
        below = not is_decision(facts) and SEVERITY_RANK[facts.severity] < SEVERITY_RANK[r.min_severity]
        if slot is not None and slot.pending is not None and not self._ours(slot.pending, now):
            slot.pending = None  # it is the worker's now
        if slot is not None and slot.folded is not None and slot.folded not in self._waiting_digests(ch, now):
            slot.folded = None
        if change == "opened" and slot is None:
            inherited = self._flapped(ch, facts, now)
            if inherited is not None:
                slot = ch.slots[nid] = inherited
                if inherited.sig == signature(facts):
                    inherited.facts = facts
                    return
                change = "updated"
        if change in ("opened", "updated", "refreshed"):
            if slot is None:
                slot = ch.slots[nid] = _Slot()
            self._open_or_update(ch, slot, facts, below=below, refresh=change == "refreshed", now=now)
        elif change == "resolved" and slot is not None:
            self._resolve(ch, slot, facts, now)
        elif change in ("absorbed", "hidden") and slot is not None:
            if slot.pending is not None and slot.pending.type == "notice.opened":
                self._collapse(ch, slot.pending)
                del ch.slots[nid]
            elif not slot.told:
                if slot.folded is not None:
                    self._unfold(ch, slot, nid, now)
                del ch.slots[nid]
            elif change == "hidden":
                del ch.slots[nid]
            else:
                self._absorbed.setdefault(nid, set()).add((ch.merchant, r.name))

    def _resolve_absorbed(self, merchant: str, receiver: str, nid: str, inc: Incident, now: float) -> None:
        """A notice told before its incident was adopted, whose incident is now over: its resolve."""
        ch = self._channels.get((merchant, receiver))
        slot = ch.slots.get(nid) if ch is not None else None
        if ch is None or slot is None or slot.facts is None or not slot.told:
            return
        if inc.evidence.get("resolved_by") in HIDDEN_RESOLUTIONS:
            del ch.slots[nid]
            return
        facts = dataclasses.replace(slot.facts, status="resolved", resolved_at=inc.resolved_at or now)
        self._resolve(ch, slot, facts, now)

    def _open_or_update(self, ch: _Channel, slot: _Slot, facts: NoticeFacts, *, below: bool, refresh: bool,
                        now: float) -> None:
        r = ch.receiver
        sig = signature(facts)
        nid = facts.incident_id
        if slot.pending is not None:
            # Not sent yet: rewrite it with the newest state (an escalation may make it due sooner).
            pending = slot.pending
            due = min(pending.due_at, self._due(r, facts, "notice.opened" if pending.type == "notice.opened"
                                                else "notice.updated", now))
            slot.pending = self._put(dataclasses.replace(pending, items=(facts,), due_at=due))
            slot.facts, slot.sig = facts, sig
            return
        if slot.told:
            if slot.folded is not None:
                self._fold(ch, slot, facts, now)  # still in this hour's digest: it shows the newest state
            elif sig != slot.sig and not refresh:
                self._event(ch, slot, "notice.updated", facts, now)
            slot.facts, slot.sig = facts, sig
            return
        # Not told: new, or in the daily digest.
        if below:
            self._fold_daily(ch, slot, facts, now)
            return
        if slot.folded is not None:
            self._unfold(ch, slot, nid, now)  # escalated to min_severity: sent as opened
        self._event(ch, slot, "notice.opened", facts, now)

    def _resolve(self, ch: _Channel, slot: _Slot, facts: NoticeFacts, now: float) -> None:
        nid = facts.incident_id
        pending = slot.pending
        if pending is not None:
            self._collapse(ch, pending)
            slot.pending = None
            if pending.type == "notice.opened":
                del ch.slots[nid]  # opened and resolved while waiting: nothing at all
                return
        if slot.told:
            self._event(ch, slot, "notice.resolved", facts, now)
            if slot.pending is not None:
                ch.resolving[flap_key(facts)] = nid
                return
            del ch.slots[nid]
            return
        if slot.folded is not None:
            self._fold(ch, slot, facts, now)  # the digest tells it as resolved
        del ch.slots[nid]

    def _flapped(self, ch: _Channel, facts: NoticeFacts, now: float) -> _Slot | None:
        """A new notice for the same problem whose resolve is still waiting: take the resolve
        back and carry on as if it had never ended (at most one open and one resolve per window)."""
        nid = ch.resolving.pop(flap_key(facts), None)
        if nid is None:
            return None
        slot = ch.slots.get(nid)
        if slot is None or slot.pending is None or slot.pending.type != "notice.resolved" \
                or not self._ours(slot.pending, now):
            return None
        self._collapse(ch, slot.pending)
        del ch.slots[nid]
        return _Slot(told=True, sig=slot.sig, facts=slot.facts)

    # ---- rows ------------------------------------------------------------------------------

    def _event(self, ch: _Channel, slot: _Slot, etype: EventType, facts: NoticeFacts, now: float) -> None:
        r = ch.receiver
        due = self._due(r, facts, etype, now)
        slot.facts, slot.sig = facts, signature(facts)
        slot.told = etype != "notice.resolved"
        if not is_decision(facts):
            hour = self._hour(due)
            if ch.per_hour.get(hour, 0) >= self._rules.max_per_hour:
                self._fold(ch, slot, facts, now, hourly_at=due)
                return
            ch.per_hour[hour] = ch.per_hour.get(hour, 0) + 1
            self._prune_hours(ch, now)
        slot.pending = self._put(Outgoing(self._new_id(), r.name, ch.merchant, facts.incident_id, etype, due, now,
                                          (facts,)))

    def _due(self, r: Receiver, facts: NoticeFacts, etype: EventType, now: float) -> float:
        if is_decision(facts):
            return now
        due = now
        if etype == "notice.opened" and facts.scope == "terminal":
            due += self._rules.wait_s
        elif etype == "notice.resolved":
            due += self._rules.flap_s
        if r.quiet is not None and facts.severity != "critical":
            due = r.quiet.end_if_quiet(self._rules.calendar, due)
        return due

    def _fold_daily(self, ch: _Channel, slot: _Slot, facts: NoticeFacts, now: float) -> None:
        r = ch.receiver
        cal = self._rules.calendar
        if slot.folded is None:
            due = r.quiet.next_end(cal, now) if r.quiet is not None else cal.start_of_day(cal.day_index(now) + 1)
            slot.folded = self._digest(ch, DIGEST_DAILY, due, now).digest, due
        self._fold(ch, slot, facts, now)

    def _fold(self, ch: _Channel, slot: _Slot, facts: NoticeFacts, now: float, *,
              hourly_at: float | None = None) -> None:
        """Put the notice's newest state into its digest (the hour's, when ``hourly_at``)."""
        slot.facts, slot.sig = facts, signature(facts)
        if hourly_at is not None and slot.folded is None:
            due = self._hour(hourly_at) + self._rules.calendar.hour_s
            slot.folded = (self._digest(ch, DIGEST_HOURLY, due, now).digest, due)
        if slot.folded is None:
            return
        digest = ch.digests.get(slot.folded)
        if digest is None:
            return
        items = {f.incident_id: f for f in digest.items}
        items[facts.incident_id] = facts
        ch.digests[slot.folded] = self._put(dataclasses.replace(digest, items=tuple(items.values()),
                                                                status="pending"))

    def _unfold(self, ch: _Channel, slot: _Slot, nid: str, now: float) -> None:
        key, slot.folded = slot.folded, None
        digest = ch.digests.get(key) if key is not None else None
        if digest is None:
            return
        items = tuple(f for f in digest.items if f.incident_id != nid)
        ch.digests[key] = self._put(dataclasses.replace(digest, items=items,  # type: ignore[index]
                                                        status="pending" if items else "collapsed"))

    def _digest(self, ch: _Channel, kind: str, due: float, now: float) -> Outgoing:
        key = (kind, due)
        digest = ch.digests.get(key)
        if digest is None:
            digest = ch.digests[key] = Outgoing(self._new_id(), ch.receiver.name, ch.merchant, "", "notice.digest",
                                                due, now, (), "collapsed", kind)
        return digest

    def _waiting_digests(self, ch: _Channel, now: float) -> set[tuple[str, float]]:
        for key in [k for k, d in ch.digests.items() if not self._ours(d, now)]:
            del ch.digests[key]
        return set(ch.digests)

    def _collapse(self, ch: _Channel, row: Outgoing) -> None:
        self._put(dataclasses.replace(row, status="collapsed"))
        hour = self._hour(row.due_at)
        if ch.per_hour.get(hour, 0) > 0:
            ch.per_hour[hour] -= 1

    def _put(self, row: Outgoing) -> Outgoing:
        self._out[row.event_id] = row
        return row

    def _ours(self, row: Outgoing, now: float) -> bool:
        """Still the book's to change: not due within the margin (the worker waits as long after)."""
        return row.due_at > now + self._rules.margin_s

    def _hour(self, t: float) -> float:
        cal = self._rules.calendar
        if not cal.real:
            return math.floor(t / cal.hour_s) * cal.hour_s
        day = cal.day_index(t)
        slot = cal.slot(t)
        return cal.at_clock(day, f"{slot:02d}:00")

    def _prune_hours(self, ch: _Channel, now: float) -> None:
        if len(ch.per_hour) > 4:
            floor = self._hour(now) - self._rules.calendar.hour_s
            for hour in [h for h in ch.per_hour if h < floor]:
                del ch.per_hour[hour]

    def _channel(self, merchant: str, receiver: Receiver) -> _Channel:
        key = (merchant, receiver.name)
        ch = self._channels.get(key)
        if ch is None:
            ch = self._channels[key] = _Channel(merchant, receiver)
        return ch

    # ---- reading -----------------------------------------------------------------------------

    def known(self, merchant: str) -> Sequence[NoticeFacts]:
        """The merchant's current notices as the book last computed them (tests, the API)."""
        return tuple(self._known.get(merchant, {}).values())
