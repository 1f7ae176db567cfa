"""IncidentBook: one open incident per key, hysteresis, flaps, manual resolve, parents."""

from __future__ import annotations

import itertools
from dataclasses import replace

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from fleetwatch.config import DetectSettings
from fleetwatch.core.incidents import IncidentBook
from fleetwatch.core.model import Clear, Finding, Incident, IncidentWrite, incident_key

CFG = DetectSettings(heartbeat_interval_s=1.0, clear_after_intervals=3, evidence_update_intervals=1)
KEYS = [incident_key("terminal", "printer", terminal_id=f"T{i}") for i in range(3)]


def _ids() -> itertools.count[int]:
    return itertools.count(1)


def book() -> IncidentBook:
    ids = _ids()
    return IncidentBook(CFG, lambda: f"i{next(ids)}")


def finding(key: str, at: float, cause: str = "no_paper", severity: str = "major", **ev: object) -> Finding:
    tid = key.split("|")[1]
    return Finding(key=key, kind="printer", cause=cause, severity=severity, scope="terminal",  # type: ignore[arg-type]
                   summary=cause, at=at, terminal_id=tid, merchant_id="M1", evidence=dict(ev))


def types(writes: list[IncidentWrite]) -> list[str]:
    return [w.event.type for w in writes]


def test_repeated_finding_writes_nothing_new() -> None:
    """The same condition every beat is not a write per beat."""
    b = book()
    assert types(b.apply(finding(KEYS[0], 1.0))) == ["opened"]
    assert all(b.apply(finding(KEYS[0], 1.0 + n)) == [] for n in range(1, 10))


def test_evidence_changes_are_rate_limited() -> None:
    """Changed evidence is written at most once per evidence_update_intervals, flushed by tick."""
    b = book()
    b.apply(finding(KEYS[0], 1.0, n=1))
    assert b.apply(finding(KEYS[0], 1.2, n=2)) == []
    flushed = b.tick(2.5)
    assert types(flushed) == ["updated"]
    assert flushed[0].incident.evidence["n"] == 2


def test_cause_change_is_an_event_on_the_same_incident() -> None:
    """paper_low -> no_paper escalates the same incident."""
    b = book()
    first = b.apply(finding(KEYS[0], 1.0, cause="paper_low", severity="minor"))
    second = b.apply(finding(KEYS[0], 2.0))
    assert types(second) == ["escalated"]
    assert second[0].incident.id == first[0].incident.id


def test_hysteresis_and_flap_count() -> None:
    """A clear resolves only after clear_after; a finding meanwhile cancels it and counts a flap."""
    b = book()
    b.apply(finding(KEYS[0], 1.0))
    b.apply(Clear(KEYS[0], 2.0))
    assert b.tick(4.9) == []
    writes = b.apply(finding(KEYS[0], 4.9))
    assert writes[0].incident.evidence["flap_count"] == 1
    b.apply(Clear(KEYS[0], 6.0))
    resolved = b.tick(9.0)
    assert types(resolved) == ["resolved"]
    assert resolved[0].incident.resolved_at == 9.0


def test_manual_resolve_then_evidence_reopens_with_previous_id() -> None:
    """An operator resolving a still-present condition gets a new incident continuing the old."""
    b = book()
    old = b.apply(finding(KEYS[0], 1.0))[0].incident
    b.resolve(old.id, 2.0)
    new = b.apply(finding(KEYS[0], 3.0))
    assert types(new) == ["reopened"]
    assert new[0].incident.previous_id == old.id


def test_condition_gone_after_manual_resolve_is_a_fresh_incident() -> None:
    """If the condition cleared in between, the next one is new, not a continuation."""
    b = book()
    old = b.apply(finding(KEYS[0], 1.0))[0].incident
    b.resolve(old.id, 2.0)
    b.apply(Clear(KEYS[0], 2.5))
    assert b.apply(finding(KEYS[0], 3.0))[0].incident.previous_id is None


def test_ack_and_unknown_ids() -> None:
    """Ack sets acknowledged; unknown or resolved ids raise KeyError."""
    b = book()
    inc = b.apply(finding(KEYS[0], 1.0))[0].incident
    assert b.acknowledge(inc.id, 2.0)[0].incident.status == "acknowledged"
    b.resolve(inc.id, 3.0)
    for call in (b.acknowledge, b.resolve):
        try:
            call(inc.id, 4.0)
        except KeyError:
            continue
        raise AssertionError("expected KeyError")


def test_parent_resolve_releases_children() -> None:
    """Recovered children resolve with the parent; failing ones lose suppressed and keep their id."""
    b = book()
    parent = b.apply(Finding(key="fleet|host_outage", kind="host_outage", cause="host_errors",
                             severity="critical", scope="fleet", summary="x", at=1.0))[0].incident
    links = [incident_key("terminal", "network", terminal_id=f"T{i}") for i in range(2)]
    kids = [b.apply(replace(finding(k, 1.0), kind="network", cause="comm_errors"))[0].incident for k in links]
    for kid in kids:
        b.attach(b.get(kid.id) or kid, parent, 1.5)
    b.apply(Clear(links[0], 2.0))
    out = b.resolve_now(parent.key, 3.0, "upstream_quiet")
    by_id = {w.incident.id: w for w in out}
    assert by_id[kids[0].id].event.type == "resolved"
    assert by_id[kids[1].id].event.type == "unsuppressed"
    live = b.get(kids[1].id)
    assert live is not None
    assert not live.suppressed
    assert live.parent_id == parent.id


class BookMachine(RuleBasedStateMachine):
    """Any interleaving keeps at most one open incident per key, across restarts too."""

    def __init__(self) -> None:
        super().__init__()
        self.book = book()
        self.now = 0.0
        self.latest: dict[str, Incident] = {}

    def _take(self, writes: list[IncidentWrite]) -> None:
        for w in writes:
            self.latest[w.incident.id] = w.incident

    @rule(k=st.sampled_from(KEYS), cause=st.sampled_from(["paper_low", "no_paper", "jam"]), n=st.integers(0, 3))
    def find(self, k: str, cause: str, n: int) -> None:
        sev = "minor" if cause == "paper_low" else "major"
        self._take(self.book.apply(finding(k, self.now, cause=cause, severity=sev, n=n)))

    @rule(k=st.sampled_from(KEYS), immediate=st.booleans())
    def clear(self, k: str, immediate: bool) -> None:
        self._take(self.book.apply(Clear(k, self.now, immediate=immediate)))

    @rule(dt=st.floats(0.1, 5.0))
    def tick(self, dt: float) -> None:
        self.now += dt
        self._take(self.book.tick(self.now))

    @precondition(lambda self: len(self.book) > 0)
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        iid = data.draw(st.sampled_from(sorted(i.id for i in self.book.open_incidents())))
        self._take(self.book.acknowledge(iid, self.now))

    @precondition(lambda self: len(self.book) > 0)
    @rule(data=st.data())
    def manual_resolve(self, data: st.DataObject) -> None:
        iid = data.draw(st.sampled_from(sorted(i.id for i in self.book.open_incidents())))
        self._take(self.book.resolve(iid, self.now))

    @rule()
    def restart(self) -> None:
        stored = [replace(i, evidence=dict(i.evidence)) for i in self.latest.values() if i.is_open]
        used = {int(i[1:]) for i in self.latest}
        ids = itertools.count(max(used, default=0) + 1)
        self.book = IncidentBook(CFG, lambda: f"i{next(ids)}")
        self.book.restore(stored)

    @invariant()
    def one_open_per_key(self) -> None:
        open_keys = [i.key for i in self.latest.values() if i.is_open]
        assert len(open_keys) == len(set(open_keys))
        for key in KEYS:
            live = self.book.open_at(key)
            stored = [i for i in self.latest.values() if i.is_open and i.key == key]
            assert (live is None) == (not stored)


TestBookMachine = BookMachine.TestCase
TestBookMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
