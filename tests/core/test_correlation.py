"""Correlation with synthetic fleets: many terminals failing together is one incident upstream."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from fleetwatch.config import DetectSettings, SettlementSettings
from fleetwatch.core.correlation import WindowSet, group_labels
from fleetwatch.core.engine import Engine
from fleetwatch.core.messages import Envelope
from fleetwatch.core.model import Incident, IncidentWrite
from tests.golden import heartbeat_env, txn_env

CFG = DetectSettings(heartbeat_interval_s=1.0)
KITS = [("A920", "2.4.1", "4g"), ("A920", "2.5.0", "wifi"), ("P60", "3.0.2", "4g"), ("N910", "6.1.0", "eth")]


@dataclass
class Term:
    tid: str
    merchant: str
    kit: tuple[str, str, str]
    silent_from: float = float("inf")
    silent_until: float = float("inf")
    seq: int = 0


@dataclass
class SynthFleet:
    """Terminals beating every interval; ``failures(t)`` injects txns at each beat."""

    terms: list[Term]
    failures: Callable[[Term, float], list[Envelope]] = lambda term, t: []
    engine: Engine = field(init=False)
    incidents: dict[str, Incident] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ids = itertools.count(1)
        self.engine = Engine(CFG, SettlementSettings(), new_id=lambda: f"i{next(ids)}")
        self.engine.restore([], [], [], [], 0.0)

    def take(self, effects: Sequence[object]) -> None:
        for e in effects:
            if isinstance(e, IncidentWrite):
                self.incidents[e.incident.id] = e.incident

    def run(self, until: float) -> None:
        t = 0.0
        while t < until:
            for k in range(4):
                self.take(self.engine.tick(t + k * 0.25))
            for term in self.terms:
                at = t + 0.5
                if term.silent_from <= at < term.silent_until:
                    continue
                term.seq += 1
                model, fw, net = term.kit
                self.take(self.engine.apply(heartbeat_env(
                    term.tid, at, term.seq, merchant_id=term.merchant, model=model, fw=fw,
                    net={"type": net, "rssi_dbm": -70})))
                for env in self.failures(term, at):
                    self.take(self.engine.apply(env))
            t += 1.0

    def upstream(self) -> list[Incident]:
        return [i for i in self.incidents.values() if i.kind == "host_outage"]

    def pageable_terminal(self) -> list[Incident]:
        return [i for i in self.incidents.values() if i.scope == "terminal" and not i.suppressed]


def fleet(n: int, per_merchant: int = 2) -> list[Term]:
    return [Term(f"T{i:04d}", f"M{i // per_merchant:04d}", KITS[i % len(KITS)]) for i in range(n)]


def test_host_errors_on_30_percent_is_one_fleet_incident() -> None:
    """30% of 1,000 terminals failing with rc 91 / connect errors: one fleet host_outage, no pages."""
    terms = fleet(1000)
    failing = set(random.Random(7).sample([t.tid for t in terms], 300))
    txn_ids = itertools.count()

    def fail(term: Term, at: float) -> list[Envelope]:
        if term.tid not in failing or not 10 <= at < 20:
            return []
        if term.seq % 2:
            return [txn_env(term.tid, at, f"x{next(txn_ids)}", merchant_id=term.merchant, outcome="declined", rc="91")]
        return [txn_env(term.tid, at, f"x{next(txn_ids)}", merchant_id=term.merchant, outcome="error", rc=None,
                        error={"stage": "connect"})]

    f = SynthFleet(terms, fail)
    f.run(40)
    up = f.upstream()
    assert [(i.scope, i.cause) for i in up] == [("fleet", "host_errors")]
    assert up[0].status == "resolved"
    assert f.pageable_terminal() == []
    children = [i for i in f.incidents.values() if i.parent_id == up[0].id]
    assert children, "the terminal incidents it explains are its children"
    assert all(i.status == "resolved" for i in children)


def test_tls_after_reboot_on_one_model_fw_is_a_group_incident() -> None:
    """Every A920 2.4.1 fails TLS after a reboot, others are fine: one group incident naming them."""
    terms = fleet(200)
    txn_ids = itertools.count()

    def fail(term: Term, at: float) -> list[Envelope]:
        if term.kit[:2] != ("A920", "2.4.1") or not 10 <= at < 25:
            return []
        return [txn_env(term.tid, at, f"x{next(txn_ids)}", merchant_id=term.merchant, outcome="error", rc=None,
                        error={"stage": "tls"})]

    f = SynthFleet(terms, fail)
    f.run(30)
    up = f.upstream()
    assert len(up) == 1
    assert up[0].scope == "group"
    assert up[0].group == {"model": "A920", "fw": "2.4.1"}
    assert f.pageable_terminal() == []


def test_one_merchant_going_silent_is_one_merchant_incident() -> None:
    """3 of 3 terminals of one merchant go silent: one merchant incident, children suppressed."""
    terms = fleet(30, per_merchant=3)
    for t in terms[:3]:
        t.silent_from = 10
    f = SynthFleet(terms)
    f.run(20)
    merchant = [i for i in f.incidents.values() if i.scope == "merchant"]
    assert [(i.merchant_id, i.kind) for i in merchant] == [("M0000", "network")]
    kids = [i for i in f.incidents.values() if i.scope == "terminal"]
    assert len(kids) == 3
    assert all(i.suppressed and i.parent_id == merchant[0].id for i in kids)
    assert f.upstream() == []


def test_unrelated_silences_stay_terminal_incidents() -> None:
    """3 terminals of different merchants go silent: three terminal incidents, no parent."""
    terms = fleet(30, per_merchant=3)
    for t in (terms[0], terms[4], terms[8]):
        t.silent_from = 10
    f = SynthFleet(terms)
    f.run(20)
    got = list(f.incidents.values())
    assert sorted(i.terminal_id or "" for i in got) == ["T0000", "T0004", "T0008"]
    assert all(i.scope == "terminal" and i.parent_id is None and not i.suppressed for i in got)


def test_offline_wave_recovery_resolves_parent_and_releases_the_rest() -> None:
    """Half the fleet drops off; most return: the wave resolves, recovered children resolve,
    the still-silent ones lose suppressed and stand alone."""
    terms = fleet(100, per_merchant=1)
    for t in terms[:50]:
        t.silent_from, t.silent_until = 10, 14
    for t in terms[:2]:
        t.silent_until = float("inf")
    f = SynthFleet(terms)
    f.run(40)
    up = f.upstream()
    assert [(i.scope, i.cause, i.status) for i in up] == [("fleet", "offline_wave", "resolved")]
    kids = [i for i in f.incidents.values() if i.parent_id == up[0].id]
    still = {i.terminal_id: i for i in kids if i.status != "resolved"}
    assert set(still) == {"T0000", "T0001"}
    assert all(not i.suppressed for i in still.values())
    assert all(i.status == "resolved" for i in kids if i.terminal_id not in still)


def test_window_set_counts_distinct_terminals_per_group() -> None:
    """One terminal failing many times counts once; it leaves when its last event ages out."""
    ws = WindowSet(5.0)
    labels = group_labels("A920", "2.4.1", "4g")
    for n in range(10):
        ws.add("T1", labels, float(n) * 0.1)
    ws.add("T2", group_labels("P60", "3.0.2", "4g"), 1.0)
    assert ws.counts["fleet"] == 2
    assert ws.counts['{"net_type":"4g"}'] == 2
    ws.expire(5.95)
    assert ws.counts["fleet"] == 1
    ws.expire(7.0)
    assert ws.counts["fleet"] == 0
