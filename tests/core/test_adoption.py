"""Adoption by evidence: a parent carries only the incidents it really causes.

First the table itself (which (kind, cause) explains which), then the incident book's
re-check when a cause changes, then synthetic fleets through the engine for the other
three parts of the rule: scope, time (one correlation window) and a merchant's coverage.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from fleetwatch.config import DetectSettings
from fleetwatch.core.adoption import FAMILIES, UPSTREAM_EXPLAINS, cause_family, explains
from fleetwatch.core.incidents import IncidentBook
from fleetwatch.core.messages import Envelope
from fleetwatch.core.model import CAUSES, Finding, Incident, IncidentWrite, Kind, Scope, incident_key
from tests.core.test_correlation import KITS, SynthFleet, Term, fleet
from tests.golden import txn_env

CFG = DetectSettings(heartbeat_interval_s=1.0)
TLS_KIT = KITS[0]  # A920 2.4.1 4g
TLS_GROUP = {"model": "A920", "fw": "2.4.1"}


def incident(kind: str, cause: str, scope: Scope = "terminal", iid: str = "x") -> Incident:
    return Incident(id=iid, key=f"{scope}|{iid}|{kind}", kind=kind, cause=cause, scope=scope,  # type: ignore[arg-type]
                    severity="major", status="open", opened_at=0.0, updated_at=0.0, summary="")


# ---- the table ---------------------------------------------------------------------------

TABLE: list[tuple[tuple[str, str, Scope], tuple[str, str, Scope], bool]] = [
    # an upstream explains the failures its cause produces, and nothing else
    (("host_outage", "host_errors", "fleet"), ("network", "comm_errors", "terminal"), True),
    (("host_outage", "host_errors", "group"), ("network", "comm_errors", "terminal"), True),
    (("host_outage", "host_errors", "fleet"), ("network", "comm_errors", "merchant"), True),
    (("host_outage", "host_errors", "fleet"), ("network", "offline", "terminal"), False),
    (("host_outage", "host_errors", "fleet"), ("network", "offline", "merchant"), False),
    (("host_outage", "host_errors", "fleet"), ("network", "weak_signal", "terminal"), False),
    (("host_outage", "offline_wave", "fleet"), ("network", "offline", "terminal"), True),
    (("host_outage", "offline_wave", "group"), ("network", "offline", "merchant"), True),
    (("host_outage", "offline_wave", "fleet"), ("network", "comm_errors", "terminal"), False),
    (("host_outage", "host_errors", "fleet"), ("host_outage", "host_errors", "group"), True),
    (("host_outage", "host_errors", "fleet"), ("host_outage", "offline_wave", "group"), False),
    (("host_outage", "host_errors", "fleet"), ("printer", "no_paper", "terminal"), False),
    (("host_outage", "host_errors", "fleet"), ("tamper", "tamper", "terminal"), False),
    (("host_outage", "host_errors", "fleet"), ("settlement_gap", "not_settled", "terminal"), False),
    # a merchant parent explains its kind, one cause family
    (("network", "offline", "merchant"), ("network", "offline", "terminal"), True),
    (("network", "offline", "merchant"), ("network", "comm_errors", "terminal"), True),
    (("network", "comm_errors", "merchant"), ("network", "offline", "terminal"), True),
    (("network", "offline", "merchant"), ("network", "weak_signal", "terminal"), False),
    (("network", "offline", "merchant"), ("printer", "no_paper", "terminal"), False),
    (("config", "not_registered", "merchant"), ("config", "invalid_merchant", "terminal"), True),
    (("config", "not_registered", "merchant"), ("config", "keys", "terminal"), False),
    (("settlement_gap", "not_settled", "merchant"), ("settlement_gap", "batch_not_closed", "terminal"), True),
    (("network", "offline", "merchant"), ("network", "offline", "merchant"), False),
    # a terminal incident is nobody's parent
    (("network", "offline", "terminal"), ("network", "offline", "terminal"), False),
]


@pytest.mark.parametrize(("parent", "child", "expected"), TABLE,
                         ids=[f"{p[2]} {p[0]}/{p[1]} -> {c[2]} {c[0]}/{c[1]}" for p, c, _ in TABLE])
def test_the_table_says_which_parent_explains_which_child(
        parent: tuple[str, str, Scope], child: tuple[str, str, Scope], expected: bool) -> None:
    """Each (parent, child) pair in the contract's (kind, cause) vocabulary, both ways."""
    assert explains(incident(*parent, iid="p"), incident(*child, iid="c")) is expected


@pytest.mark.parametrize("cause", CAUSES["config"])
@pytest.mark.parametrize("upstream", CAUSES["host_outage"])
@pytest.mark.parametrize("scope", ["terminal", "merchant"])
def test_no_host_outage_explains_a_config_cause(cause: str, upstream: str, scope: Scope) -> None:
    """rc 03 58 97 A0 77 are answers of a working host: never explained by an outage."""
    for up_scope in ("fleet", "group"):
        assert not explains(incident("host_outage", upstream, up_scope, "p"), incident("config", cause, scope, "c"))


def test_the_table_speaks_only_the_contracts_vocabulary() -> None:
    """Every (kind, cause) in the table and the families is one of model.CAUSES; every cause
    of a family-split kind is in exactly one family."""
    pairs = set(UPSTREAM_EXPLAINS) | {p for explained in UPSTREAM_EXPLAINS.values() for p in explained}
    for kind, cause in pairs:
        assert cause in CAUSES[kind], (kind, cause)  # type: ignore[index]
    for kind, families in FAMILIES.items():
        listed = [c for causes in families.values() for c in causes]
        assert sorted(listed) == sorted(CAUSES[kind]), kind  # type: ignore[index]
    assert cause_family("printer", "jam") == cause_family("printer", "no_paper") == "printer"


# ---- the book re-checks the table when a cause changes -------------------------------------

def _book() -> IncidentBook:
    ids = itertools.count(1)
    return IncidentBook(CFG, lambda: f"i{next(ids)}")


def _finding(kind: Kind, cause: str, at: float, scope: Scope = "terminal", *, tid: str | None = "T1",
             merchant: str | None = "M1") -> Finding:
    key = incident_key(scope, kind, terminal_id=tid, merchant_id=merchant)
    return Finding(key=key, kind=kind, cause=cause, severity="major", scope=scope, summary=cause, at=at,
                   terminal_id=tid if scope == "terminal" else None, merchant_id=merchant)


@pytest.mark.parametrize(("parent_of", "explained", "unexplained"), [
    (("host_outage", "host_errors", "fleet"), "comm_errors", "offline"),
    (("network", "offline", "merchant"), "offline", "weak_signal"),
])
def test_a_child_whose_cause_its_parent_does_not_explain_is_paged_and_keeps_its_parent_id(
        parent_of: tuple[Kind, str, Scope], explained: str, unexplained: str) -> None:
    """Cause change to one the parent does not explain: ``unsuppressed`` event, parent_id kept;
    back to an explained cause: suppressed again. The parent's resolve leaves it alone."""
    book = _book()
    kind, cause, scope = parent_of
    parent = book.apply(_finding(kind, cause, 1.0, scope, tid=None))[0].incident
    child = book.apply(_finding("network", explained, 2.0), parent=parent)[0].incident
    assert (child.parent_id, child.suppressed) == (parent.id, True)

    out = book.apply(_finding("network", unexplained, 3.0))
    assert [w.event.type for w in out] == ["cause_changed", "unsuppressed"]
    assert out[-1].event.detail == {"parent_id": parent.id, "reason": "cause_not_explained", "cause": unexplained}
    assert (out[-1].incident.parent_id, out[-1].incident.suppressed) == (parent.id, False)
    assert out[-1].incident.is_pageable

    out = book.apply(_finding("network", explained, 4.0))
    assert [w.event.type for w in out][-1] == "suppressed"
    assert out[-1].incident.suppressed

    book.apply(_finding("network", unexplained, 5.0))
    released = book.resolve_now(parent.key, 6.0, "upstream_quiet")
    assert [w.incident.id for w in released] == [parent.id], "a child standing alone is not released again"
    live = book.get(child.id)
    assert live is not None
    assert (live.parent_id, live.suppressed, live.is_open) == (parent.id, False, True)


def test_the_book_refuses_a_parent_that_does_not_explain() -> None:
    """Given as the parent at open, or attached later: a host outage never carries a printer."""
    book = _book()
    parent = book.apply(_finding("host_outage", "host_errors", 1.0, "fleet", tid=None))[0].incident
    printer = book.apply(_finding("printer", "jam", 2.0), parent=parent)[0].incident
    assert (printer.parent_id, printer.suppressed) == (None, False)
    assert book.attach(printer, parent, 3.0) == []


# ---- scope, time and coverage on synthetic fleets --------------------------------------------

@dataclass
class Recorded(SynthFleet):
    """SynthFleet that also keeps every write (events)."""

    writes: list[IncidentWrite] = field(default_factory=list)

    def take(self, effects: Sequence[object]) -> None:
        super().take(effects)
        self.writes += [e for e in effects if isinstance(e, IncidentWrite)]

    def of(self, tid: str) -> list[Incident]:
        return [i for i in self.incidents.values() if i.terminal_id == tid]

    def merchant(self, mid: str) -> list[Incident]:
        return [i for i in self.incidents.values() if i.scope == "merchant" and i.merchant_id == mid]


def one_per_merchant(terms: list[Term], n: int) -> set[str]:
    """One terminal of each of the first ``n`` two-terminal merchants, across every kit."""
    return {terms[2 * m + m % 2].tid for m in range(n)}


def failing(ids: set[str], start: float, end: float, stage: str = "connect", rc91: set[str] | None = None):  # type: ignore[no-untyped-def]
    """Every attempt of ``ids`` in [start, end) fails (rc 91 for those in ``rc91``)."""
    n = itertools.count()

    def fail(term: Term, at: float) -> list[Envelope]:
        if term.tid not in ids or not start <= at < end:
            return []
        if rc91 and term.tid in rc91:
            return [txn_env(term.tid, at, f"f{next(n)}", merchant_id=term.merchant, outcome="declined", rc="91")]
        return [txn_env(term.tid, at, f"f{next(n)}", merchant_id=term.merchant, outcome="error", rc=None,
                        error={"stage": stage})]
    return fail


def test_silent_terminals_during_a_host_errors_outage_stay_unparented_and_pageable() -> None:
    """60 of 200 terminals fail against the host (rc 91 and connect errors); three others, in
    shops whose other terminal is fine, go silent meanwhile: the outage adopts the link
    failures, not the silences (silence is not a host error)."""
    terms = fleet(200)
    bad = one_per_merchant(terms, 60)
    silent = [terms[161], terms[171], terms[181]]
    for t in silent:
        t.silent_from = 15
    f = Recorded(terms, failing(bad, 10, 25, rc91={t for i, t in enumerate(sorted(bad)) if i % 2}))
    f.run(30)
    (up,) = f.upstream()
    assert (up.scope, up.cause) == ("fleet", "host_errors")
    for t in silent:
        (inc,) = f.of(t.tid)
        assert (inc.kind, inc.cause, inc.parent_id, inc.suppressed, inc.status) == (
            "network", "offline", None, False, "open"), inc
    links = [i for i in f.incidents.values() if i.cause == "comm_errors"]
    assert links
    assert all(i.parent_id == up.id and i.suppressed for i in links)
    assert all(i.terminal_id in bad for i in links)


def _dark_shop_and_tls_cluster(shop_fails_from: float | None, shop_kits: list[tuple[str, str, str]],
                               stage: str = "tls") -> Recorded:
    """200 terminals; shop SHOP (one terminal per kit given) either goes silent at 5 (None) or
    fails every attempt at ``stage`` from ``shop_fails_from``; every other A920 2.4.1 fails TLS
    from 45 to 55."""
    terms = fleet(200)
    shop = [Term(f"S{i}", "SHOP", kit) for i, kit in enumerate(shop_kits)]
    cluster = {t.tid for t in terms if t.kit == TLS_KIT}
    fails = [failing(cluster, 45, 55, stage="tls")]
    if shop_fails_from is None:
        for t in shop:
            t.silent_from = 5
    else:
        fails.append(failing({t.tid for t in shop}, shop_fails_from, 55, stage=stage))
    f = Recorded(terms + shop, lambda term, at: [e for g in fails for e in g(term, at)])
    f.run(58)
    return f


@pytest.mark.parametrize(("how", "fails_from", "cause"), [
    ("went silent", None, "offline"),
    ("lost its link to the host", 5.0, "comm_errors"),
])
def test_a_shop_dark_long_before_a_firmware_tls_cluster_keeps_its_own_merchant_incident(
        how: str, fails_from: float | None, cause: str) -> None:
    """The shop's three terminals (one of them A920 2.4.1) went dark 40 intervals before the
    A920 2.4.1 TLS cluster opened: its merchant incident stays its own page, whether the shop
    went silent or its terminals kept failing to reach the host all along."""
    f = _dark_shop_and_tls_cluster(fails_from, [TLS_KIT, KITS[2], KITS[3]], stage="connect")
    (group,) = f.upstream()
    assert (group.scope, group.group, group.cause) == ("group", TLS_GROUP, "host_errors")
    (shop,) = f.merchant("SHOP")
    assert (shop.cause, shop.parent_id, shop.suppressed, shop.status) == (cause, None, False, "open"), how
    assert all(i.parent_id == shop.id for i in f.incidents.values() if i.terminal_id in ("S0", "S1", "S2"))


def test_a_shop_failing_tls_just_before_the_cluster_opens_is_adopted_by_it() -> None:
    """Neighbour: both terminals of the shop are A920 2.4.1 and failed TLS a few intervals
    before the cluster was seen: its merchant incident opened within one correlation window
    before the group incident, which covers both terminals: adopted."""
    f = _dark_shop_and_tls_cluster(38, [TLS_KIT, TLS_KIT])
    (group,) = f.upstream()
    (shop,) = f.merchant("SHOP")
    assert group.opened_at - shop.opened_at <= CFG.intervals(CFG.correlation_window_intervals)
    assert (shop.cause, shop.parent_id, shop.suppressed) == ("comm_errors", group.id, True)


def test_an_upstream_covering_half_of_a_shops_affected_terminals_does_not_adopt_it() -> None:
    """Neighbour: of the shop's two failing terminals only one is A920 2.4.1 (the other fails
    on its own link): half is not more than half, the merchant incident stays its own."""
    f = _dark_shop_and_tls_cluster(38, [TLS_KIT, KITS[2]])
    (group,) = f.upstream()
    (shop,) = f.merchant("SHOP")
    assert shop.opened_at < group.opened_at
    assert (shop.parent_id, shop.suppressed) == (None, False)


def test_an_upstream_adopts_only_incidents_opened_at_most_a_window_before_it() -> None:
    """A terminal whose link failed on its own 20 intervals before a fleet outage keeps its own
    incident; one that starts failing during the outage is adopted."""
    terms = fleet(200)
    early, late = terms[1].tid, terms[3].tid
    outage = {t.tid for t in terms[10:70]}
    fails = [failing({early}, 5, 40), failing(outage, 30, 40), failing({late}, 32, 40)]
    f = Recorded(terms, lambda term, at: [e for g in fails for e in g(term, at)])
    f.run(45)
    (up,) = f.upstream()
    assert up.scope == "fleet"
    (own,) = f.of(early)
    (adopted,) = f.of(late)
    assert up.opened_at - own.opened_at > CFG.intervals(CFG.correlation_window_intervals)
    assert (own.parent_id, own.suppressed) == (None, False)
    assert (adopted.parent_id, adopted.suppressed) == (up.id, True)


def test_an_offline_wave_does_not_adopt_a_failing_link() -> None:
    """Half the fleet goes silent; one terminal still online fails its link: its comm_errors
    is not explained by the wave."""
    terms = fleet(100, per_merchant=1)
    for t in terms[:50]:
        t.silent_from = 10
    link = terms[60].tid
    f = Recorded(terms, failing({link}, 8, 25))
    f.run(25)
    (up,) = f.upstream()
    assert up.cause == "offline_wave"
    (inc,) = f.of(link)
    assert (inc.cause, inc.parent_id, inc.suppressed) == ("comm_errors", None, False)
    waved = [i for i in f.incidents.values() if i.scope == "terminal" and i.cause == "offline"]
    assert len(waved) == 50
    assert all(i.parent_id == up.id for i in waved)


def test_a_child_that_goes_silent_during_a_host_outage_is_paged_and_keeps_its_parent_id() -> None:
    """Through the engine: a comm_errors child of a host_errors outage goes silent, so its
    incident's cause becomes offline, which the outage does not explain: unsuppressed, with
    an event, parent_id kept."""
    terms = fleet(200)
    outage = {t.tid for t in terms[10:70]}
    victim = terms[10]
    victim.silent_from = 22
    f = Recorded(terms, failing(outage, 10, 35))
    f.run(30)
    (up,) = f.upstream()
    (inc,) = f.of(victim.tid)
    assert (inc.cause, inc.parent_id, inc.suppressed) == ("offline", up.id, False)
    events = [w.event for w in f.writes if w.incident.id == inc.id]
    assert [e.type for e in events if e.type in ("suppressed", "unsuppressed")][-1] == "unsuppressed"
    assert any(e.type == "unsuppressed" and e.detail.get("reason") == "cause_not_explained" for e in events)


def test_upstream_terminals_names_every_terminal_it_is_built_on() -> None:
    """The upstream's record lists the terminals whose failures it counted, those that only got
    rc 91 (no incident of their own) included; other incidents have none."""
    terms = fleet(200)
    bad = one_per_merchant(terms, 60)
    rc91 = {t for i, t in enumerate(sorted(bad)) if i % 2}
    f = Recorded(terms, failing(bad, 10, 25, rc91=rc91))
    f.run(20)
    (up,) = f.upstream()
    built_on = f.engine.upstream_terminals(up.id)
    assert built_on == bad
    assert rc91 <= built_on
    assert not any(i.terminal_id in rc91 for i in f.incidents.values())
    assert f.engine.upstream_terminals("nope") == frozenset()
