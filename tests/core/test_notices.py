"""The notice model: one notice per problem, whose problem it is, the money, the order (CONTRACT §5)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import pytest

from fleetwatch.config import DetectSettings, SettlementSettings
from fleetwatch.core.engine import Engine
from fleetwatch.core.model import CAUSES, Incident, IncidentWrite, UpstreamMembersWrite
from fleetwatch.core.notices import WHOSE, build_notices, catalogue_keys, money_of, notice_root, whose_of
from tests.golden import START_MS, Run, heartbeat_env, load, replay, txn_env

_ids = itertools.count(1)
DAY = 86400.0


def inc(kind: str, cause: str, *, scope: str = "terminal", tid: str | None = "T1", mid: str | None = "M1",
        status: str = "open", opened: float = 100.0, resolved: float | None = None, **kw: Any) -> Incident:
    return Incident(
        id=kw.pop("id", f"i{next(_ids):04d}"), key=f"k{next(_ids)}", kind=kind, cause=cause,  # type: ignore[arg-type]
        scope=scope, severity=kw.pop("severity", "major"), status=status,  # type: ignore[arg-type]
        opened_at=opened, updated_at=opened, summary="", terminal_id=tid if scope == "terminal" else None,
        merchant_id=mid if scope in ("terminal", "merchant") else None, resolved_at=resolved, **kw,
    )


# ---- the whose table ---------------------------------------------------------------------

def test_every_kind_and_cause_has_a_whose() -> None:
    """The table covers the contract's every (kind, cause), config suspended and closed included."""
    missing = [(k, c) for k, causes in CAUSES.items() for c in causes if (k, c) not in WHOSE]
    assert missing == []


@pytest.mark.parametrize(("kind", "cause", "scope", "whose"), [
    ("printer", "no_paper", "terminal", "merchant"),
    ("printer", "fault", "terminal", "terminal"),
    ("reader", "read_failures", "terminal", "terminal"),
    ("tamper", "tamper", "terminal", "terminal"),
    ("network", "offline", "merchant", "merchant"),
    ("power", "battery_low", "terminal", "merchant"),
    ("config", "batch_sync", "terminal", "merchant"),
    ("config", "keys", "terminal", "acquirer"),
    ("config", "suspended", "terminal", "acquirer"),
    ("settlement_gap", "batch_not_closed", "terminal", "merchant"),
    ("settlement_gap", "settled_short", "terminal", "acquirer"),
    ("host_outage", "host_errors", "fleet", "upstream"),
    ("network", "offline", "group", "upstream"),
])
def test_whose_follows_the_contract(kind: str, cause: str, scope: str, whose: str) -> None:
    assert whose_of(inc(kind, cause, scope=scope)) == whose


def test_catalogue_keys_name_the_variant_first() -> None:
    """Merchant scope, the kind of upstream and a suspension's reason pick their own texts."""
    assert catalogue_keys(inc("network", "offline", scope="merchant")) == ("network.offline.merchant",
                                                                            "network.offline")
    assert catalogue_keys(inc("host_outage", "host_errors", scope="group", group={"net_type": "4g"}))[0] == \
        "host_outage.host_errors.network"
    assert catalogue_keys(inc("host_outage", "host_errors", scope="group", group={"model": "A920", "fw": "2"}))[0] == \
        "host_outage.host_errors.device"
    assert catalogue_keys(inc("host_outage", "offline_wave", scope="fleet"))[0] == "host_outage.offline_wave.host"
    assert catalogue_keys(inc("config", "suspended", severity="info", evidence={"reason": "risk_review"})) == \
        ("config.suspended.risk_review", "config.suspended")


# ---- one notice per problem --------------------------------------------------------------

def test_children_are_inside_their_top_most_suppressing_ancestor() -> None:
    """terminal -> merchant -> fleet, all suppressed: one notice, the fleet's, listing both terminals."""
    fleet = inc("host_outage", "host_errors", scope="fleet", severity="critical", id="F")
    shop = inc("network", "comm_errors", scope="merchant", parent_id="F", suppressed=True, id="S")
    t1 = inc("network", "comm_errors", tid="T1", parent_id="S", suppressed=True)
    t2 = inc("network", "comm_errors", tid="T2", parent_id="S", suppressed=True)
    assert notice_root(t1, {i.id: i for i in (fleet, shop, t1, t2)}) is fleet
    notices = build_notices("M1", [fleet, shop, t1, t2], {}, 200.0, DAY)
    assert [(n.incident_id, n.whose, n.terminal_ids) for n in notices] == [("F", "upstream", ("T1", "T2"))]


def test_a_released_child_stands_alone() -> None:
    """A parent resolved while a child still fails: the child is its own current notice."""
    parent = inc("network", "offline", scope="merchant", status="resolved", resolved=150.0, id="P")
    child = inc("network", "offline", tid="T1", parent_id="P", suppressed=False)
    notices = build_notices("M1", [parent, child], {}, 200.0, DAY)
    assert [(n.incident_id, n.current) for n in notices] == [(child.id, True), ("P", False)]


def test_a_reopened_chain_is_one_notice() -> None:
    """Resolved by hand, then reopened (previous_id): one notice, opened when the first did."""
    first = inc("printer", "jam", status="resolved", opened=100.0, resolved=120.0, id="J1")
    again = inc("printer", "jam", opened=130.0, previous_id="J1", id="J2")
    [notice] = build_notices("M1", [first, again], {}, 200.0, DAY)
    assert (notice.incident_id, notice.status, notice.opened_at) == ("J2", "open", 100.0)


def test_an_upstream_reaches_shops_through_the_terminals_it_is_built_on() -> None:
    """A terminal that only got host response codes has no incident, but its shop gets the notice."""
    fleet = inc("host_outage", "host_errors", scope="fleet", severity="critical", id="F")
    notices = build_notices("M7", [fleet], {"F": {"T70", "T71"}}, 200.0, DAY)
    assert [(n.whose, n.terminal_ids) for n in notices] == [("upstream", ("T70", "T71"))]
    assert build_notices("M8", [fleet], {}, 200.0, DAY) == []


def test_what_is_shown_and_what_is_not() -> None:
    """Resolved ones only while recent; never those the suspension explains; info only for decisions."""
    now = 10_000.0
    old = inc("printer", "jam", status="resolved", resolved=now - DAY - 1)
    recent = inc("printer", "cover_open", tid="T2", status="resolved", resolved=now - 60)
    by_suspension = inc("network", "offline", tid="T3", status="resolved", resolved=now - 60,
                        evidence={"resolved_by": "suspended"})
    info = inc("network", "weak_signal", tid="T4", severity="info")
    suspended = inc("config", "suspended", tid="T3", severity="info", evidence={"reason": "unpaid_fees"})
    other_shop = inc("printer", "no_paper", tid="T9", mid="M2")
    notices = build_notices("M1", [old, recent, by_suspension, info, suspended, other_shop], {}, now, DAY)
    assert [n.incident_id for n in notices] == [suspended.id, recent.id]
    assert build_notices("M1", [recent], {}, now, DAY, current_only=True) == []


def test_order_is_current_then_severity_then_newest() -> None:
    now = 1000.0
    a = inc("power", "battery_low", severity="minor", opened=500.0, tid="T1")
    b = inc("printer", "no_paper", opened=400.0, tid="T2")
    c = inc("reader", "self_test", opened=600.0, tid="T3")
    d = inc("tamper", "tamper", severity="critical", status="resolved", resolved=900.0, opened=10.0, tid="T4")
    e = inc("tamper", "tamper", severity="critical", opened=300.0, tid="T5")
    notices = build_notices("M1", [a, b, c, d, e], {}, now, DAY)
    assert [n.incident_id for n in notices] == [e.id, c.id, b.id, a.id, d.id]


def test_money_is_counted_once_per_batch_and_currency() -> None:
    """Two causes open on one batch are one amount (the larger); other batches and currencies add."""
    gap = {"currency": "CNY", "batch_no": 17}
    incs = [
        inc("settlement_gap", "totals_mismatch", evidence={**gap, "amount_minor": 1000}),
        inc("settlement_gap", "not_settled", evidence={**gap, "amount_minor": 468417, "business_date": "2026-11-22"}),
        inc("settlement_gap", "not_settled", evidence={"currency": "HKD", "batch_no": 17, "amount_minor": 500}),
        inc("settlement_gap", "batch_not_closed", tid="T2", evidence={**gap, "amount_minor": 200}),
        inc("settlement_gap", "saf_backlog", evidence={"pending": 3}),
    ]
    money = money_of(incs)
    assert sorted((m.terminal_id, m.batch_no, m.currency, m.amount_minor, m.business_date) for m in money) == [
        ("T1", 17, "CNY", 468417, "2026-11-22"), ("T1", 17, "HKD", 500, None), ("T2", 17, "CNY", 200, None),
    ]


# ---- over the golden scenarios -------------------------------------------------------------

def _members(run: Run, writes: Iterable[UpstreamMembersWrite]) -> dict[str, dict[str, set[str]]]:
    out: dict[str, dict[str, set[str]]] = {}
    for w in writes:
        for tid, mid in w.members:
            out.setdefault(mid or "", {}).setdefault(w.incident_id, set()).add(tid)
    return out


def _replay_with_members(name: str) -> tuple[Run, list[UpstreamMembersWrite], list[IncidentWrite]]:
    """Replay a scenario keeping the membership writes too."""
    members: list[UpstreamMembersWrite] = []
    original = Run.take

    def take(self: Run, effects: list[Any]) -> None:
        members.extend(e for e in effects if isinstance(e, UpstreamMembersWrite))
        original(self, effects)

    Run.take = take  # type: ignore[method-assign]
    try:
        run = replay(load(name))
    finally:
        Run.take = original  # type: ignore[method-assign]
    return run, members, run.writes


def _as_of(writes: list[IncidentWrite], t: float) -> list[Incident]:
    latest: dict[str, Incident] = {}
    for w in writes:
        if w.event.at <= t:
            latest[w.incident.id] = w.incident
    return list(latest.values())


def test_host_outage_gives_each_affected_merchant_exactly_one_upstream_notice() -> None:
    """140 terminals fail: during the outage every affected merchant has one current upstream notice
    listing exactly its failing terminals; afterwards one resolved one; untouched merchants none."""
    run, member_writes, writes = _replay_with_members("host-outage")
    start = START_MS / 1000
    members = _members(run, member_writes)
    failing = {i.terminal_id: i.merchant_id for i in run.incidents.values() if i.scope == "terminal"}
    affected = set(failing.values())
    assert len(failing) == 140
    assert affected == set(members)
    everyone = {e["payload"]["merchant_id"] for e in run.scenario.events if "merchant_id" in e["payload"]}
    during, after = _as_of(writes, start + 18), list(run.incidents.values())
    for merchant in sorted(everyone):
        now_notices = build_notices(merchant, during, members.get(merchant, {}), start + 18, DAY)
        later = build_notices(merchant, after, members.get(merchant, {}), start + 39, DAY)
        if merchant not in affected:
            assert now_notices == later == [], merchant
            continue
        mine = tuple(sorted(t for t, m in failing.items() if m == merchant and t is not None))
        assert [(n.kind, n.whose, n.current, n.terminal_ids) for n in now_notices] == \
            [("host_outage", "upstream", True, mine)], merchant
        assert [(n.whose, n.current) for n in later] == [("upstream", False)], merchant


def test_settlement_day_money_per_merchant() -> None:
    """SM1's two gaps are one notice with both batches' money; SM2's unsettled batch is its own."""
    run = replay(load("settlement-day"))
    end = START_MS / 1000 + run.scenario.duration_ms / 1000
    incidents = list(run.incidents.values())
    [sm1] = build_notices("SM1", incidents, {}, end, DAY)
    assert sm1.scope == "merchant"
    assert sorted((m.terminal_id, m.amount_minor) for m in sm1.money) == [("ST03", 388570), ("ST05", 2350)]
    [sm2] = build_notices("SM2", incidents, {}, end, DAY)
    assert (sm2.cause, sm2.whose, [m.amount_minor for m in sm2.money]) == ("not_settled", "acquirer", [468704])


def test_terminals_with_only_host_codes_are_members_of_the_outage() -> None:
    """Through the engine: 30 of 100 terminals get only rc 91 (no incident of their own); the fleet
    outage is built on them, and each of their shops gets the upstream notice."""
    detect = DetectSettings(heartbeat_interval_s=1.0)
    engine = Engine(detect, SettlementSettings())
    effects: list[Any] = []
    t0 = 1_800_000_000.0
    engine.restore([], [], [], [], t0)
    for i in range(100):
        effects += engine.apply(heartbeat_env(f"T{i:03d}", t0 + 0.01 * i, 1, merchant_id=f"M{i // 2:02d}"))
    t = t0 + 1
    n = 0
    while t < t0 + 6:
        if n % 120 == 0:  # every terminal beats once an interval
            for i in range(100):
                effects += engine.apply(heartbeat_env(f"T{i:03d}", t, 2 + n // 120, merchant_id=f"M{i // 2:02d}"))
        for i in range(30):
            n += 1
            effects += engine.apply(txn_env(f"T{i:03d}", t, f"x{n}", merchant_id=f"M{i // 2:02d}", rc="91",
                                            outcome="declined"))
        effects += engine.tick(t)
        t += 0.25
    incidents = {e.incident.id: e.incident for e in effects if isinstance(e, IncidentWrite)}
    [outage] = [i for i in incidents.values() if i.kind == "host_outage"]
    assert [i for i in incidents.values() if i.scope == "terminal"] == []
    assert engine.upstream_terminals(outage.id) == {f"T{i:03d}" for i in range(30)}
    members: dict[str, set[str]] = {}
    for e in effects:
        if isinstance(e, UpstreamMembersWrite):
            for tid, mid in e.members:
                assert mid is not None
                members.setdefault(mid, set()).add(tid)
    assert len(members) == 15
    for merchant, tids in members.items():
        [notice] = build_notices(merchant, incidents.values(), {outage.id: tids}, t, DAY)
        assert (notice.whose, notice.terminal_ids) == ("upstream", tuple(sorted(tids)))
    assert build_notices("M40", incidents.values(), {}, t, DAY) == []


def test_a_stale_parent_link_is_not_followed_when_not_suppressed() -> None:
    """parent_id stays for history after release: a child not suppressed is its own root."""
    parent = inc("network", "offline", scope="merchant", id="P2")
    child = replace(inc("network", "offline"), parent_id="P2", suppressed=False)
    assert notice_root(child, {"P2": parent, child.id: child}) is child
