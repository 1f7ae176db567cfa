"""Scenario parsing and fault injection against a fake simulation context (no broker)."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest

from fleetwatch.sim import fleet
from fleetwatch.sim.faults import Injector, ScenarioError, load_scenario, parse_scenario
from fleetwatch.sim.fleet import Outgoing, Terminal
from fleetwatch.sim.truth import Truth


class FakeContext:
    """Records what faults schedule and write; runs scheduled actions on demand."""

    def __init__(self, n: int = 60) -> None:
        self.rng = random.Random(1)
        self.terminals = fleet.build_terminals(n, n // 3, self.rng, 0)
        self.interval = 2.0
        self.start = 1000.0
        self.events: list[tuple[float, Callable[[], None]]] = []
        self.records: list[Truth] = []
        self.log: list[str] = []

    def now(self) -> float:
        return self.start

    def emit(self, out: Outgoing) -> None:
        self.log.append(out.kind)

    def schedule(self, at: float, action: Callable[[], None]) -> None:
        self.events.append((at, action))

    def run_until(self, t: float) -> None:
        for at, action in sorted(self.events, key=lambda e: e[0]):
            if at <= t:
                action()
        self.events = [(a, x) for a, x in self.events if a > t]

    def link_down(self, t: Terminal) -> None:
        t.link_down = True

    def link_up(self, t: Terminal) -> None:
        t.link_down = False

    def stop_pinging(self, t: Terminal) -> None:
        self.log.append(f"quiet {t.terminal_id}")

    def reboot(self, t: Terminal) -> None:
        self.log.append(f"reboot {t.terminal_id}")

    def truth(self, record: Truth) -> None:
        self.records.append(record)

    def garbage(self, t: Terminal, other: Terminal, kind: str) -> None:
        self.log.append(kind)


def test_fault_times_are_in_heartbeat_intervals() -> None:
    """'at' and 'for' count intervals, so the truth's epoch times are start + n * interval."""
    ctx = FakeContext()
    Injector(parse_scenario({"fault": [{"kind": "jam", "at": 5, "for": 10}]}), ctx).install()
    (rec,) = ctx.records
    assert (rec.what, rec.cause, rec.at, rec.until, rec.expect_incident) == ("printer", "jam", 1010.0, 1030.0, True)
    t = next(x for x in ctx.terminals if x.terminal_id == rec.terminal_id)
    ctx.run_until(1010)
    assert t.printer == "jam"
    ctx.run_until(1030)
    assert t.printer == "ok"


def test_each_terminal_gets_at_most_one_fault() -> None:
    """Targets never overlap, so the answer key is unambiguous."""
    ctx = FakeContext()
    faults = [{"kind": k, "at": 1, "terminals": 3} for k in ("jam", "tamper", "silence", "reader_fault")]
    Injector(parse_scenario({"fault": faults}), ctx).install()
    ids = [r.terminal_id for r in ctx.records]
    assert len(ids) == 12 == len(set(ids))


def test_upstream_and_noise_faults_have_the_right_scope_and_expectation() -> None:
    """Host outage is fleet-scope, cert expiry group-scope (model+fw); declines and garbage expect nothing."""
    ctx = FakeContext(200)
    Injector(parse_scenario({"fault": [
        {"kind": "host_outage", "at": 1, "for": 5, "share": 0.25},
        {"kind": "cert_expiry", "at": 10, "model": "A920", "fw": "2.4.1"},
        {"kind": "decline_storm", "at": 1, "for": 5},
        {"kind": "garbage", "at": 1, "for": 2, "kinds": ["pan", "spoofed_topic"]},
    ]}), ctx).install()
    by = {(r.what, r.scope): r for r in ctx.records}
    assert by[("host_outage", "fleet")].detail["terminals"] == 50
    assert by[("host_outage", "group")].group == {"model": "A920", "fw": "2.4.1"}
    assert not by[("decline_storm", "merchant")].expect_incident
    garbage = [r for r in ctx.records if r.what == "garbage"]
    assert {r.cause for r in garbage} == {"pan", "spoofed_topic"}
    assert not any(r.expect_incident for r in garbage)
    assert all(r.terminals and len(r.terminals) == 2 for r in garbage)  # sender and spoof victim
    ctx.run_until(1002)
    assert sum(t.host_fail == 1.0 for t in ctx.terminals) == 50


@pytest.mark.parametrize(("table", "msg"), [
    ({"kind": "meteor", "at": 1}, "unknown kind"),
    ({"kind": "jam"}, "'at'"),
    ({"kind": "jam", "at": 1, "for": 0}, "'for'"),
    ({"kind": "jam", "at": 1, "terminals": 0}, "'terminals'"),
])
def test_bad_scenarios_are_refused_with_a_reason(table: dict[str, object], msg: str) -> None:
    """A typo in a scenario fails loudly before the run, naming the fault and the field."""
    with pytest.raises(ScenarioError, match=msg):
        parse_scenario({"fault": [table]})


def test_example_scenarios_parse() -> None:
    """The shipped sim-scenarios/*.toml files are valid."""
    files = sorted(Path(__file__).parents[2].joinpath("sim-scenarios").glob("*.toml"))
    assert files
    for f in files:
        assert load_scenario(f)
