"""The terminal lifecycle in the pure core (CONTRACT §7, §8 registry operations): the acquirer's
statuses decoded and applied, suspension and closure through the engine, a terminal that moves
to another merchant, a merchant put in maintenance, and what notices and screens make of them."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence

import msgspec
import pytest

from fleetwatch.adapters.catalogues import load_catalogues
from fleetwatch.config import DetectSettings, SettlementSettings
from fleetwatch.core.catalogue import Context, render_notice
from fleetwatch.core.decode import Decoder, Rejection
from fleetwatch.core.engine import Engine
from fleetwatch.core.messages import Envelope, Settlement, StatusCleared, TerminalStatus
from fleetwatch.core.model import (
    AcquirerStatusWrite,
    Effect,
    Incident,
    IncidentWrite,
    TerminalNoticeWrite,
    TerminalWrite,
    decision_key,
)
from fleetwatch.core.notices import build_notices
from fleetwatch.core.screens import TerminalScreens
from fleetwatch.errors import UnknownMerchant
from tests.golden import heartbeat_env, txn_env

CFG = DetectSettings(heartbeat_interval_s=1.0)
SETTLE = SettlementSettings(batch_close_deadline_s=20, settlement_deadline_s=40)
PREFIX = "fleet/v1"
CATALOGUES = load_catalogues()
VALID_PAN = "4111111111111111"


def engine(start: float = 0.0) -> Engine:
    ids = itertools.count(1)
    e = Engine(CFG, SETTLE, new_id=lambda: f"i{next(ids)}")
    e.restore([], [], [], [], start)
    return e


def writes(effects: Sequence[Effect]) -> list[IncidentWrite]:
    return [e for e in effects if isinstance(e, IncidentWrite)]


def status_env(tid: str, at: float, status: str, *, ts_ms: int | None = None, reason: str | None = None,
               note: str | None = None, retained: bool = False) -> Envelope:
    msg = TerminalStatus(v=1, terminal_id=tid, status=status, ts=int(at * 1000) if ts_ms is None else ts_ms,  # type: ignore[arg-type]
                         merchant_id="M1", reason=reason, note=note)
    return Envelope("status", msg, at, retained=retained)


def beat(e: Engine, tid: str, start: float, end: float, *, merchant: str = "M1", seq0: int = 1,
         **fields: object) -> list[IncidentWrite]:
    """Heartbeats every second from ``start`` to ``end`` (inclusive), ticking in between."""
    out: list[IncidentWrite] = []
    t, seq = start, seq0
    while t <= end + 1e-9:
        out += writes(e.apply(heartbeat_env(tid, t, seq, merchant_id=merchant, **fields)))
        out += writes(e.tick(t + 0.5))
        t, seq = t + 1.0, seq + 1
    return out


def ticks(e: Engine, start: float, end: float) -> list[IncidentWrite]:
    out: list[IncidentWrite] = []
    t = start
    while t <= end + 1e-9:
        out += writes(e.tick(t))
        t += 0.25
    return out


def opened(ws: Sequence[IncidentWrite]) -> list[tuple[str, str]]:
    return [(w.incident.kind, w.incident.cause) for w in ws if w.event.type in ("opened", "reopened")]


def open_causes(e: Engine, tid: str) -> set[tuple[str, str]]:
    return {(i.kind, i.cause) for i in e.open_incidents() if i.terminal_id == tid}


# ---- decoding ------------------------------------------------------------------------------------

def topic(tid: str = "T1") -> str:
    return f"{PREFIX}/host/terminal/{tid}/status"


def test_a_status_is_decoded_from_the_acquirers_topic() -> None:
    """{prefix}/host/terminal/{id}/status: a TerminalStatus; unknown fields are ignored."""
    body = {"v": 1, "terminal_id": "T1", "merchant_id": "M0042", "status": "suspended",
            "reason": "risk_review", "note": "交易异常，需提供交易凭证", "ts": 1795447531123, "extra": True}
    env = Decoder(PREFIX).decode(topic(), json.dumps(body).encode(), 5.0, True)
    assert isinstance(env, Envelope)
    assert env.kind == "status"
    assert env.retained
    assert env.msg == TerminalStatus(v=1, terminal_id="T1", status="suspended", ts=1795447531123,
                                     merchant_id="M0042", reason="risk_review", note="交易异常，需提供交易凭证")


def test_an_empty_retained_payload_clears_the_status() -> None:
    env = Decoder(PREFIX).decode(topic("T9"), b"", 5.0, True)
    assert isinstance(env, Envelope)
    assert env.msg == StatusCleared("T9")


@pytest.mark.parametrize(("payload", "reason"), [
    ({"v": 1, "terminal_id": "T1", "status": "suspended", "ts": 1, "note": f"card {VALID_PAN} used"}, "pan"),
    ({"v": 1, "terminal_id": "T1", "status": "suspended", "ts": 1, "reason": VALID_PAN}, "pan"),
    ({"v": 2, "terminal_id": "T1", "status": "suspended", "ts": 1}, "version"),
    ({"v": 1, "terminal_id": "T1", "status": "paused", "ts": 1}, "schema"),
    ({"v": 1, "terminal_id": "T1", "status": "closed"}, "schema"),
    ({"v": 1, "terminal_id": "T1", "status": "closed", "ts": 1, "merchant_id": "M 1"}, "schema"),
    ({"v": 1, "terminal_id": "T2", "status": "closed", "ts": 1}, "spoof"),
    ("not json", "json"),
])
def test_a_bad_status_is_rejected_with_the_usual_reasons(payload: object, reason: str) -> None:
    """The same gate as every payload: the PAN rule applies to the note (and any string), then
    JSON, version, schema, spoof; a PAN rejection keeps nothing of the message."""
    data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
    out = Decoder(PREFIX).decode(topic(), data, 1.0, False)
    assert isinstance(out, Rejection)
    assert out.reason == reason
    if reason == "pan":
        assert out.payload_excerpt is None
        assert VALID_PAN not in out.detail


def test_other_host_topics_are_not_statuses() -> None:
    for bad in (f"{PREFIX}/host/terminal/T1/state", f"{PREFIX}/host/terminal/T 1/status",
                f"{PREFIX}/host/terminal/T1/status/x"):
        out = Decoder(PREFIX).decode(bad, b"{}", 1.0, False)
        assert isinstance(out, Rejection)
        assert out.reason == "topic"


# ---- suspension ----------------------------------------------------------------------------------

def suspended_terminal() -> tuple[Engine, list[Effect]]:
    """T1 with an open config (rc 58) and a network offline, then suspended at t=20."""
    e = engine()
    beat(e, "T1", 1.0, 5.0)
    e.apply(txn_env("T1", 5.5, "x1", rc="58", outcome="declined"))
    assert ("config", "not_permitted") in open_causes(e, "T1")
    ticks(e, 5.0, 10.0)  # silent: offline
    assert ("network", "offline") in open_causes(e, "T1")
    return e, e.apply(status_env("T1", 20.0, "suspended", ts_ms=19_000, reason="risk_review", note="请提供交易凭证"))


def test_suspension_resolves_network_and_config_and_records_the_decision() -> None:
    """The open network and config incidents resolve with resolved_by suspended (event and evidence);
    one config/suspended record at severity info holds reason, note and since; it is never pageable."""
    e, out = suspended_terminal()
    [status] = [x for x in out if isinstance(x, AcquirerStatusWrite)]
    assert (status.status.status, status.status.reason, status.merchant_id) == ("suspended", "risk_review", "M1")
    resolved = {(w.incident.kind, w.incident.cause): w for w in writes(out) if w.event.type == "resolved"}
    assert set(resolved) == {("config", "not_permitted"), ("network", "offline")}
    for w in resolved.values():
        assert w.incident.evidence["resolved_by"] == "suspended"
        assert w.event.detail["resolved_by"] == "suspended"
    [record] = [w.incident for w in writes(out) if w.event.type == "opened"]
    assert (record.kind, record.cause, record.severity, record.scope) == ("config", "suspended", "info", "terminal")
    assert record.evidence == {"reason": "risk_review", "note": "请提供交易凭证", "since": 19.0}
    assert not record.is_pageable
    snap = e.snapshot(21.0)
    assert sum(snap.incidents_pageable.values()) == 0
    assert snap.incidents_open == {("config", "info", "terminal"): 1}
    assert dict(snap.terminals) == {("suspended", "A920"): 1}


def test_while_suspended_declines_and_silence_open_nothing_but_hardware_goes_on() -> None:
    """rc 58 declines and a silence open nothing (nor feed an upstream); a printer fault and tamper
    still open as usual."""
    e, _ = suspended_terminal()
    got = beat(e, "T1", 21.0, 25.0, seq0=10)
    for i in range(5):
        got += writes(e.apply(txn_env("T1", 25.1 + i / 10, f"d{i}", rc="58", outcome="declined")))
        got += writes(e.apply(txn_env("T1", 25.15 + i / 10, f"h{i}", rc="91", outcome="declined")))
    got += ticks(e, 25.0, 40.0)
    assert opened(got) == []
    assert e.terminal("T1").state == "offline"  # type: ignore[union-attr]
    got = beat(e, "T1", 41.0, 42.0, seq0=20, printer="no_paper", tamper=True)
    assert set(opened(got)) == {("printer", "no_paper"), ("tamper", "tamper")}


@pytest.mark.parametrize("suspended", [False, True])
def test_suspended_terminals_host_errors_feed_no_upstream(suspended: bool) -> None:
    """Thirty terminals answered rc 91 at once are a host outage; the same thirty suspended are not
    (their declines are the acquirer's decision, not a host failing)."""
    e = engine()
    tids = [f"T{i}" for i in range(30)]
    for tid in tids:
        e.apply(heartbeat_env(tid, 1.0, 1))
        if suspended:
            e.apply(status_env(tid, 1.5, "suspended"))
    got: list[IncidentWrite] = []
    for n, tid in enumerate(tids):
        got += writes(e.apply(txn_env(tid, 2.0 + n / 100, f"{tid}-x", rc="91", outcome="declined")))
    got += ticks(e, 2.0, 3.0)
    waves = [w for w in got if w.incident.kind == "host_outage" and w.event.type == "opened"]
    assert bool(waves) is not suspended


def test_back_to_active_resolves_the_record_and_restarts_the_silence_clock() -> None:
    """The suspended terminal was silent for 60 s; reactivated at t=80, it is judged silent only
    three intervals later, and a later rc 58 opens a config incident again."""
    e, _ = suspended_terminal()
    ticks(e, 20.0, 80.0)
    out = e.apply(status_env("T1", 80.0, "active", ts_ms=79_000))
    [end] = [w for w in writes(out) if w.event.type == "resolved"]
    assert (end.incident.cause, end.incident.evidence["resolved_by"]) == ("suspended", "active")
    assert opened(ticks(e, 80.0, 82.9)) == []
    assert opened(ticks(e, 83.0, 84.0)) == [("network", "offline")]
    again = beat(e, "T1", 90.0, 91.0, seq0=30)
    again += writes(e.apply(txn_env("T1", 92.0, "x9", rc="58", outcome="declined")))
    assert ("config", "not_permitted") in opened(again)


def test_an_older_status_is_ignored_and_a_retained_repeat_changes_nothing() -> None:
    """Statuses are ordered by ts: an older one is ignored, the same one handed over again on a
    resubscribe does nothing, an empty payload clears it."""
    e, _ = suspended_terminal()
    assert e.apply(status_env("T1", 30.0, "active", ts_ms=18_000)) == []
    assert e.apply(status_env("T1", 31.0, "suspended", ts_ms=19_000, reason="risk_review", note="请提供交易凭证",
                              retained=True)) == []
    out = e.apply(Envelope("status", StatusCleared("T1"), 32.0, retained=False))
    assert [(w.incident.cause, w.event.type) for w in writes(out)] == [("suspended", "resolved")]
    assert e.acquirer_status("T1").status == "active"  # type: ignore[union-attr]
    assert e.apply(status_env("T1", 33.0, "suspended", ts_ms=18_500)) == []  # older than the newest seen


def test_a_new_reason_updates_the_record() -> None:
    e, _ = suspended_terminal()
    out = e.apply(status_env("T1", 30.0, "suspended", ts_ms=29_000, reason="compliance"))
    [w] = writes(out)
    assert w.incident.evidence["reason"] == "compliance"
    assert w.incident.evidence["since"] == 19.0  # still suspended since the first decision


def test_a_status_for_an_unknown_terminal_waits_for_it() -> None:
    """The acquirer suspends T7 before it is ever seen: nothing is counted; its first heartbeat
    applies it (the record opens, the terminal counts as suspended)."""
    e = engine()
    out = e.apply(status_env("T7", 1.0, "suspended", reason="unpaid_fees"))
    assert [type(x) for x in out] == [AcquirerStatusWrite]
    assert e.terminal("T7") is None
    assert dict(e.snapshot(1.0).terminals) == {}
    got = e.apply(heartbeat_env("T7", 2.0, 1))
    assert any(isinstance(x, AcquirerStatusWrite) for x in got)
    assert opened(writes(got)) == [("config", "suspended")]
    assert dict(e.snapshot(2.0).terminals) == {("suspended", "A920"): 1}


# ---- closure -----------------------------------------------------------------------------------------

def closed_with_money() -> tuple[Engine, list[Effect]]:
    e = engine()
    beat(e, "T1", 1.0, 3.0)
    for i in range(3):
        e.apply(txn_env("T1", 3.1 + i / 10, f"s{i}", amount_minor=1000, batch_no=5))
    return e, e.apply(status_env("T1", 4.0, "closed", reason="contract_end"))


def test_closure_records_the_money_still_to_come() -> None:
    """The config/closed record's evidence holds the approved money not settled yet, per batch and
    currency; the merchant's notice says how much, with the reason's words."""
    _, out = closed_with_money()
    [record] = [w.incident for w in writes(out) if w.event.type == "opened"]
    assert (record.cause, record.severity) == ("closed", "info")
    assert record.evidence["unsettled"] == [{"batch_no": 5, "currency": "CNY", "amount_minor": 3000,
                                             "business_date": None}]
    assert record.evidence["unsettled_minor"] == {"CNY": 3000}
    [facts] = build_notices("M1", [record], {}, 5.0, 100.0)
    assert facts.keys == ("config.closed.contract_end", "config.closed")
    assert [(m.amount_minor, m.batch_no) for m in facts.money] == [(3000, 5)]
    notice = render_notice("M1", [facts], CATALOGUES["zh-CN"], Context(), 5.0)
    assert "¥30.00" in notice.items[0].texts.next
    assert notice.items[0].facts.whose == "acquirer"


def test_a_closed_terminals_money_is_watched_until_settled() -> None:
    """The closed terminal never closes its batch: batch_not_closed opens after the deadline and stays;
    the settlement ends the gap, and the closure record resolves (resolved_by settled), its notice
    then saying nothing more is to come."""
    e, _ = closed_with_money()
    got = ticks(e, 4.0, 30.0)
    assert opened(got) == [("settlement_gap", "batch_not_closed")]
    assert {(i.kind, i.cause) for i in e.open_incidents()} == {("settlement_gap", "batch_not_closed"),
                                                               ("config", "closed")}
    s = Settlement(v=1, merchant_id="M1", terminal_id="T1", batch_no=5, business_date="2026-11-22",
                   settled_count=3, settled_amount_minor=3000, currency="CNY", credited_at=31_000)
    out = writes(e.apply(Envelope("settlement", s, 31.0)))
    done = {w.incident.cause: w.incident for w in out if w.event.type == "resolved"}
    assert set(done) == {"batch_not_closed", "closed"}
    assert done["closed"].evidence["resolved_by"] == "settled"
    [facts] = build_notices("M1", [done["closed"]], {}, 32.0, 100.0)
    assert facts.keys[0] == "config.closed.settled"
    assert facts.money == ()


def test_a_transaction_from_a_closed_terminal_opens_not_registered() -> None:
    """Beside the closure record (a key of its own), a payment attempt on a closed terminal is a
    config/not_registered incident, major: the terminal is still in use."""
    e, _ = closed_with_money()
    got = writes(e.apply(txn_env("T1", 10.0, "late", rc="97", outcome="declined")))
    assert opened(got) == [("config", "not_registered")]
    assert got[0].incident.severity == "major"
    assert got[0].incident.is_pageable
    assert e.incident(got[0].incident.id) is not None
    assert {i.key for i in e.open_incidents() if i.kind == "config"} == {"terminal|T1|config", decision_key("T1")}


def test_a_closed_terminal_leaves_the_fleet_and_its_merchants_share() -> None:
    """Closed: out of fleetwatch_terminals, nothing else opens for it (its hardware, its silence), and a
    merchant with two of three terminals closed is not a dark shop when the third goes dark."""
    e = engine()
    for tid in ("T1", "T2", "T3"):
        e.apply(heartbeat_env(tid, 1.0, 1))
    for tid in ("T1", "T2"):
        out = e.apply(status_env(tid, 2.0, "closed", reason="merchant_request"))
        assert ("config", "closed") in opened(writes(out))
    assert dict(e.snapshot(2.0).terminals) == {("online", "A920"): 1}
    got = beat(e, "T1", 3.0, 4.0, seq0=2, printer="jam", tamper=True)
    got += beat(e, "T3", 3.0, 4.0, seq0=2)
    got += ticks(e, 4.0, 12.0)
    assert opened(got) == [("network", "offline")]
    [inc] = [w.incident for w in got if w.event.type == "opened"]
    assert (inc.scope, inc.terminal_id) == ("terminal", "T3")


def test_closing_a_suspended_terminal_replaces_its_record() -> None:
    """suspended -> closed: the suspension record resolves by closed (hidden from the merchant: the
    closure explains it), the closure record opens under the same key."""
    e, _ = suspended_terminal()
    out = writes(e.apply(status_env("T1", 30.0, "closed", ts_ms=29_000)))
    assert [(w.incident.cause, w.event.type) for w in out if w.incident.key == decision_key("T1")][:2] == [
        ("suspended", "resolved"), ("closed", "opened")]
    hidden = next(w.incident for w in out if w.incident.cause == "suspended")
    assert hidden.evidence["resolved_by"] == "closed"
    assert build_notices("M1", [hidden], {}, 31.0, 100.0) == []


# ---- registry operations -------------------------------------------------------------------------------

def test_a_terminal_that_moves_takes_its_incidents_and_leaves_the_old_merchants_parent() -> None:
    """T1 and T2 of M1 go dark (a merchant parent opens), T1 also has a paper jam and an unsettled batch.
    T1 comes back under M2: its network and printer incidents move to M2 (an event names both);
    the offline child leaves M1's parent; its settlement gap stays with M1."""
    e = engine()
    beat(e, "T1", 1.0, 2.0, printer="jam")
    beat(e, "T2", 1.0, 2.0)
    e.apply(txn_env("T1", 2.2, "s1", batch_no=9))
    ticks(e, 2.0, 25.0)
    by_kind = {(i.kind, i.scope): i for i in e.open_incidents()}
    parent = by_kind[("network", "merchant")]
    gap = by_kind[("settlement_gap", "terminal")]
    [t1_offline] = [i for i in e.open_incidents() if i.terminal_id == "T1" and i.kind == "network"]
    assert (t1_offline.parent_id, t1_offline.suppressed) == (parent.id, True)
    out = writes(e.apply(heartbeat_env("T1", 26.0, 3, merchant_id="M2", printer="jam")))
    moved = {w.incident.kind: w for w in out if w.event.detail.get("reason") == "terminal_moved"}
    assert set(moved) == {"network", "printer"}
    assert moved["network"].event.type == "unsuppressed"
    assert moved["network"].event.detail["parent_id"] == parent.id
    assert moved["printer"].event.detail == {"reason": "terminal_moved", "from_merchant_id": "M1",
                                             "to_merchant_id": "M2"}
    for w in moved.values():
        assert (w.incident.merchant_id, w.incident.parent_id, w.incident.suppressed) == ("M2", None, False)
    assert e.incident(gap.id).merchant_id == "M1"  # type: ignore[union-attr]
    later = ticks(e, 26.0, 40.0)
    assert parent.id in {w.incident.id for w in later if w.event.type == "resolved"}  # one dark terminal left


def test_a_merchant_in_maintenance_puts_all_its_terminals_in_maintenance() -> None:
    """POST .../merchants/{id}/maintenance: each of the merchant's terminals gets the window (a write
    each, committed before the API answers), others are untouched; an unknown merchant is refused."""
    e = engine()
    for tid, mid in (("T1", "M1"), ("T2", "M1"), ("T3", "M2")):
        e.apply(heartbeat_env(tid, 1.0, 1, merchant_id=mid))
    out = e.set_merchant_maintenance("M1", 50.0, 2.0)
    assert sorted(w.record.terminal_id for w in out if isinstance(w, TerminalWrite)) == ["T1", "T2"]
    assert opened(ticks(e, 2.0, 20.0)) == [("network", "offline")]  # only T3
    assert dict(e.snapshot(20.0).terminals)[("maintenance", "A920")] == 2
    e.set_merchant_maintenance("M1", None, 21.0)
    assert e.terminal("T1").maintenance_until is None  # type: ignore[union-attr]
    with pytest.raises(UnknownMerchant):
        e.set_merchant_maintenance("M9", 50.0, 2.0)


# ---- screens --------------------------------------------------------------------------------------------

def test_a_closed_terminals_screen_is_cleared_and_stays_clear() -> None:
    """Its retained notice is cleared once (zero-length) and nothing is shown on it while closed, not
    even the closure notice; after a restart a closed terminal's leftover notice is cleared too."""
    e, out = closed_with_money()
    s = TerminalScreens(CATALOGUES["zh-CN"], Context(), 5.0)
    s.observe(out, 4.0)
    [clear] = s.tick(10.0)
    assert (clear.terminal_id, clear.clear, clear.items) == ("T1", True, ())
    assert s.tick(20.0) == []
    again = TerminalScreens(CATALOGUES["zh-CN"], Context(), 5.0)
    again.restore(e.open_incidents(), {}, [TerminalNoticeWrite("T1", "M1", '{"items":[{"title":"x"}]}', 1.0)],
                  closed=e.closed_terminals())
    assert [(u.terminal_id, u.clear) for u in again.tick(30.0)] == [("T1", True)]


def test_suspension_notice_texts_follow_the_reason_and_keep_the_note() -> None:
    """The suspended record's notice: the reason's entry (documents to prepare), whose acquirer, and
    the acquirer's note as written."""
    _, out = suspended_terminal()
    [record] = [w.incident for w in writes(out) if w.event.type == "opened"]
    resolved: list[Incident] = [w.incident for w in writes(out) if w.event.type == "resolved"]
    facts = build_notices("M1", [record, *resolved], {}, 21.0, 100.0)
    assert [f.cause for f in facts] == ["suspended"]  # what the suspension ended is not shown
    [f] = facts
    assert (f.whose, f.note, f.keys) == ("acquirer", "请提供交易凭证",
                                         ("config.suspended.risk_review", "config.suspended"))
    for lang, words in (("zh-CN", ("营业执照", "身份证", "交易")), ("en", ("business licence", "ID card", "sales"))):
        texts = render_notice("M1", facts, CATALOGUES[lang], Context("95588", "Bank"), 21.0).items[0].texts
        steps = " ".join(texts.what_to_do)
        assert all(w in steps for w in words), (lang, steps)
        assert "95588" in steps
    assert msgspec.json.encode(record.evidence)

