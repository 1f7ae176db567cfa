"""The event rules of merchant notifications (CONTRACT §6), on a fake clock.

Days are compressed to 2,400 s (an hour is 100 s, "22:00" is t = 2200 on day 0), the
correlation window is 5 s and the flapping window 3 s, as with a one-second heartbeat.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import pytest

from fleetwatch.adapters.catalogues import load_catalogues
from fleetwatch.core.calendar import Calendar
from fleetwatch.core.catalogue import Context
from fleetwatch.core.model import CAUSES, Incident, IncidentEvent, IncidentWrite, UpstreamMembersWrite
from fleetwatch.core.notices import build_notices
from fleetwatch.core.notify_events import NotifyBook, NotifyRules, Outgoing, QuietHours, Receiver
from fleetwatch.core.sms import SMS_MAX_UTF16, cut_utf16, sms_text, utf16_len

DAY = 2400.0
HOUR = DAY / 24
WAIT = 5.0
FLAP = 3.0
CAL = Calendar(DAY)


IDS = (f"E{n}" for n in itertools.count(1))
"""Event ids, unique across the books of a test (a restarted daemon draws new random ones)."""


def book(*receivers: Receiver, max_per_hour: int = 6) -> NotifyBook:
    ids = IDS
    rules = NotifyRules(receivers or (Receiver("sms"),), CAL, wait_s=WAIT, flap_s=FLAP, max_per_hour=max_per_hour)
    return NotifyBook(rules, lambda: next(ids))


def inc(iid: str, kind: str = "printer", cause: str = "no_paper", *, scope: str = "terminal", tid: str = "T1",
        mid: str = "M1", at: float = 0.0, **kw: Any) -> Incident:
    return Incident(id=iid, key=f"{scope}|{tid}|{kind}", kind=kind, cause=cause, scope=scope,  # type: ignore[arg-type]
                    severity=kw.pop("severity", "major"), status=kw.pop("status", "open"), opened_at=at,
                    updated_at=at, summary="", terminal_id=tid if scope == "terminal" else None,
                    merchant_id=mid if scope in ("terminal", "merchant") else None, **kw)


def w(i: Incident) -> IncidentWrite:
    return IncidentWrite(i, IncidentEvent(i.id, i.updated_at, "updated"))


def resolved(i: Incident, at: float, **kw: Any) -> Incident:
    return replace(i, status="resolved", resolved_at=at, updated_at=at, **kw)


class Clock:
    """Feeds a book as the pipeline does (observe, then take, per write) and keeps the outbox."""

    def __init__(self, b: NotifyBook) -> None:
        self.book = b
        self.outbox: dict[str, Outgoing] = {}

    def at(self, now: float, *effects: Any) -> list[Outgoing]:
        self.book.observe(effects, now)
        rows = self.book.take(now)
        for r in rows:
            self.outbox[r.event_id] = r
        return rows

    def sent(self, until: float = 1e12) -> list[tuple[str, str, str, float]]:
        """What a receiver gets: every non-collapsed row due by ``until``, in due order."""
        rows = [r for r in self.outbox.values() if r.status == "pending" and r.due_at <= until]
        return [(r.type, r.merchant_id, r.notice_id or ",".join(f.incident_id for f in r.items), r.due_at)
                for r in sorted(rows, key=lambda r: (r.due_at, r.event_id))]


def test_a_terminal_open_waits_one_window_and_a_quick_resolve_sends_nothing() -> None:
    c = Clock(book())
    p = inc("P", at=10.0)
    [row] = c.at(10.0, w(p))
    assert (row.type, row.due_at, row.status) == ("notice.opened", 15.0, "pending")
    c.at(12.0, w(resolved(p, 12.0)))
    assert c.sent() == []


def test_a_child_adopted_within_the_window_never_notifies_on_its_own() -> None:
    c = Clock(book())
    child = inc("C1", "network", "offline", at=0.0)
    c.at(0.0, w(child))
    parent = inc("S", "network", "offline", scope="merchant", at=2.0)
    other = inc("C2", "network", "offline", tid="T2", at=2.0, parent_id="S", suppressed=True)
    c.at(2.0, w(parent), w(replace(child, parent_id="S", suppressed=True)), w(other))
    assert c.sent() == [("notice.opened", "M1", "S", 2.0)]


@pytest.mark.parametrize(("change", "events"), [
    ({"cause": "jam"}, ["notice.opened", "notice.updated"]),
    ({"severity": "critical"}, ["notice.opened", "notice.updated"]),
    ({"evidence": {"seen": 9}}, ["notice.opened"]),
])
def test_updated_only_for_cause_severity_or_whose(change: dict[str, Any], events: list[str]) -> None:
    c = Clock(book())
    p = inc("P")
    c.at(0.0, w(p))
    c.at(20.0, w(replace(p, updated_at=20.0, **change)))
    assert [e[0] for e in c.sent()] == events


def test_a_change_before_the_open_is_sent_rewrites_the_open() -> None:
    c = Clock(book())
    p = inc("P", cause="paper_low", severity="major")
    [first] = c.at(0.0, w(p))
    [again] = c.at(2.0, w(replace(p, cause="no_paper", updated_at=2.0)))
    assert again.event_id == first.event_id
    assert again.items[0].cause == "no_paper"
    assert [e[0] for e in c.sent()] == ["notice.opened"]


def test_a_new_terminal_in_an_upstream_notice_is_no_update() -> None:
    c = Clock(book())
    up = inc("U", "host_outage", "host_errors", scope="fleet", severity="critical")
    c.at(0.0, w(up), UpstreamMembersWrite("U", (("T1", "M1"),), 0.0))
    c.at(10.0, UpstreamMembersWrite("U", (("T2", "M1"),), 10.0))
    assert c.sent() == [("notice.opened", "M1", "U", 0.0)]


def test_a_flapping_problem_sends_one_open_and_one_resolve_per_window() -> None:
    """Opened and resolved again and again (a new incident each time), faster than the window."""
    c = Clock(book())
    t = 0.0
    for n in range(5):
        p = inc(f"P{n}", at=t)
        c.at(t, w(p))
        c.at(t + 8.0, w(resolved(p, t + 8.0)))  # open sent (window 5 s), resolve waits 3 s
        t += 9.5  # reopened 1.5 s after the resolve: the resolve is taken back
    assert [e[0] for e in c.sent()] == ["notice.opened", "notice.resolved"]
    assert c.sent()[-1][3] == 4 * 9.5 + 8.0 + FLAP


def test_quiet_hours_hold_non_critical_events_and_net_out_an_open_and_its_resolve() -> None:
    r = Receiver("sms", quiet=QuietHours.parse("22:00-08:00"))
    c = Clock(book(r))
    night = 23 * HOUR
    morning = DAY + 8 * HOUR
    c.at(night, w(inc("P", at=night)))
    quick = inc("Q", tid="T2", at=night)
    c.at(night, w(quick))
    c.at(night + 50, w(resolved(quick, night + 50)))
    tamper = inc("X", "tamper", "tamper", tid="T3", severity="critical", at=night)
    c.at(night, w(tamper))
    assert c.sent() == [("notice.opened", "M1", "X", night + WAIT), ("notice.opened", "M1", "P", morning)]


def test_the_acquirers_decisions_are_sent_at_once_whatever_the_hour_or_severity() -> None:
    r = Receiver("sms", min_severity="critical", quiet=QuietHours.parse("22:00-08:00"))
    c = Clock(book(r, max_per_hour=1))
    night = 23 * HOUR
    c.at(night, w(inc("X", "tamper", "tamper", tid="T9", severity="critical", at=night)))
    for n in range(3):
        c.at(night, w(inc(f"S{n}", "config", "suspended", tid=f"T{n}", severity="info", at=night)))
    assert [e[2:] for e in c.sent()] == [("S0", night), ("S1", night), ("S2", night), ("X", night + WAIT)]


def test_below_min_severity_goes_into_the_daily_digest_and_an_escalation_is_sent_as_opened() -> None:
    r = Receiver("sms", min_severity="major", quiet=QuietHours.parse("22:00-08:00"))
    c = Clock(book(r))
    low = inc("L", cause="paper_low", severity="minor", at=9 * HOUR)
    c.at(9 * HOUR, w(low))
    weak = inc("N", "network", "weak_signal", tid="T2", severity="minor", at=10 * HOUR)
    c.at(10 * HOUR, w(weak))
    [digest] = [r for r in c.outbox.values() if r.type == "notice.digest"]
    assert digest.due_at == DAY + 8 * HOUR
    assert [f.incident_id for f in digest.items] == ["L", "N"]
    c.at(11 * HOUR, w(replace(low, cause="no_paper", severity="major", updated_at=11 * HOUR)))
    assert c.sent() == [("notice.opened", "M1", "L", 11 * HOUR + WAIT),
                        ("notice.digest", "M1", "N", DAY + 8 * HOUR)]


def test_without_quiet_hours_the_daily_digest_is_due_at_the_start_of_the_next_day() -> None:
    c = Clock(book(Receiver("sms")))
    c.at(100.0, w(inc("L", cause="paper_low", severity="minor", at=100.0)))
    assert c.sent() == [("notice.digest", "M1", "L", DAY)]


def test_the_hourly_cap_folds_the_rest_of_the_hour_into_one_digest() -> None:
    c = Clock(book(Receiver("sms"), max_per_hour=6))
    t = 3 * HOUR + 1
    for n in range(9):
        c.at(t, w(inc(f"P{n}", tid=f"T{n}", scope="merchant" if n == 0 else "terminal", at=t)))
    c.at(t, w(inc("Z", tid="Z1", mid="M2", at=t)))  # another merchant has its own cap
    sent = c.sent()
    assert [e[0] for e in sent if e[1] == "M1"] == ["notice.opened"] * 6 + ["notice.digest"]
    assert sent[-1] == ("notice.digest", "M1", "P6,P7,P8", 4 * HOUR)
    assert [e[2] for e in sent if e[1] == "M2"] == ["Z"]


def test_kinds_and_min_severity_are_each_receivers_own() -> None:
    printers = Receiver("printers", kinds=frozenset({"printer"}), min_severity="minor")
    everything = Receiver("app", min_severity="major")
    c = Clock(book(printers, everything))
    c.at(0.0, w(inc("P", cause="paper_low", severity="minor")), w(inc("N", "network", "offline", tid="T2")))
    by = sorted((r.receiver, r.type, r.notice_id or r.items[0].incident_id) for r in c.outbox.values()
                if r.status == "pending")
    assert by == [("app", "notice.digest", "P"), ("app", "notice.opened", "N"), ("printers", "notice.opened", "P")]


def host_outage(merchants: int, per_merchant: int) -> tuple[list[Any], list[Incident], Incident]:
    """A fleet-wide host outage: every terminal offline, adopted 3 s after its own incident opened."""
    children = [inc(f"C{m}-{k}", "network", "offline", tid=f"T{m}-{k}", mid=f"M{m}", at=0.0)
                for m in range(merchants) for k in range(per_merchant)]
    up = inc("U", "host_outage", "offline_wave", scope="fleet", severity="critical", at=3.0)
    members = UpstreamMembersWrite("U", tuple((c.terminal_id or "", c.merchant_id) for c in children), 3.0)
    adopted = [w(replace(c, parent_id="U", suppressed=True, updated_at=3.0)) for c in children]
    return [w(up), members, *adopted], children, up


def test_a_host_outage_is_one_upstream_event_per_shop_and_one_resolve() -> None:
    c = Clock(book())
    effects, children, up = host_outage(1000, 2)
    c.at(0.0, *map(w, children))
    c.at(3.0, *effects)
    c.at(60.0, w(resolved(up, 60.0)), *(w(resolved(ch, 60.0, parent_id="U", suppressed=True)) for ch in children))
    sent = c.sent()
    assert len(sent) == 2000
    assert {e[2] for e in sent} == {"U"}
    per_shop: dict[str, list[str]] = {}
    for e in sent:
        per_shop.setdefault(e[1], []).append(e[0])
    assert set(map(tuple, per_shop.values())) == {("notice.opened", "notice.resolved")}


def test_a_notice_told_before_adoption_resolves_when_its_incident_ends() -> None:
    c = Clock(book())
    child = inc("C1", "network", "offline")
    c.at(0.0, w(child))
    parent = inc("S", "network", "offline", scope="merchant", at=10.0)
    c.at(10.0, w(parent), w(replace(child, parent_id="S", suppressed=True, updated_at=10.0)))
    c.at(30.0, w(resolved(parent, 30.0)), w(resolved(child, 30.0, parent_id="S", suppressed=True)))
    assert [e[:3] for e in c.sent()] == [("notice.opened", "M1", "C1"), ("notice.opened", "M1", "S"),
                                         ("notice.resolved", "M1", "S"), ("notice.resolved", "M1", "C1")]


def test_a_restart_resumes_from_the_rows_kept_without_repeating_or_forgetting() -> None:
    r = Receiver("sms", quiet=QuietHours.parse("22:00-08:00"))
    c = Clock(book(r))
    night = 23 * HOUR
    told = inc("P", at=100.0)
    waiting = inc("Q", tid="T2", at=night)
    c.at(100.0, w(told))
    c.at(night, w(waiting))
    rows = sorted(c.outbox.values(), key=lambda r: r.created_at)
    fresh = Clock(book(r))
    fresh.outbox = dict(c.outbox)
    fresh.book.restore([told, waiting], {}, rows, night + 10)
    assert fresh.at(night + 10) == []  # nothing new: both were already written
    fresh.at(night + 20, w(resolved(waiting, night + 20)))  # still waiting for the morning: taken back
    fresh.at(night + 30, w(replace(told, cause="jam", updated_at=night + 30)))
    assert [e[:3] for e in fresh.sent()] == [("notice.opened", "M1", "P"), ("notice.updated", "M1", "P")]


# ---- sms_text -----------------------------------------------------------------------------------

CATALOGUES = load_catalogues()


def facts_of(incidents: Iterable[Incident], members: dict[str, set[str]] | None = None) -> Any:
    [f] = build_notices("M1", list(incidents), members or {}, 0.0, 0.0)
    return f


@pytest.mark.parametrize(("lang", "incident", "members", "expected"), [
    ("zh-CN", inc("P"), None, "打印机缺纸：POS机 T1。"),
    ("en", inc("P"), None, "Printer out of paper: Terminal T1. "),
    ("zh-CN", inc("U", "host_outage", "host_errors", scope="fleet"), {"U": {"T1", "T2", "T3"}},
     "银行系统故障：3台POS机。"),
    ("zh-CN", inc("G", "settlement_gap", "not_settled",
                  evidence={"amount_minor": 468417, "currency": "CNY", "batch_no": 17}), None,
     "款项还没到账（¥4,684.17）：POS机 T1。"),
    ("en", resolved(inc("P"), 5.0), None, "Fixed: Printer out of paper (Terminal T1)"),
])
def test_sms_text_says_title_terminal_and_first_step_in_one_sms(
    lang: str, incident: Incident, members: dict[str, set[str]] | None, expected: str,
) -> None:
    text = sms_text(facts_of([incident], members), CATALOGUES[lang], Context(support_phone="95588"))
    assert text.startswith(expected)
    assert utf16_len(text) <= SMS_MAX_UTF16


def test_every_catalogue_entry_fits_one_sms() -> None:
    for lang, cat in CATALOGUES.items():
        for kind, causes in CAUSES.items():
            for cause in causes:
                f = facts_of([inc("X", kind, cause, tid="T00012345", evidence={
                    "amount_minor": 123456789, "currency": "CNY", "batch_no": 17})])
                assert utf16_len(sms_text(f, cat, Context(support_phone="400-123-4567"))) <= SMS_MAX_UTF16, lang


def test_cut_counts_utf16_units() -> None:
    assert cut_utf16("a" * 70) == "a" * 70
    assert cut_utf16("a" * 71) == "a" * 69 + "…"
    assert utf16_len(cut_utf16("😀" * 40)) <= 70
