"""The golden scenarios, replayed through the pure Engine (no broker, no store).

The shared six are judged by score.py; this project's own (tests/scenario_streams.py) also by
the expectations score.py does not know (tests.golden.check_extra)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.golden import DATA, OWN_SCENARIOS, SCENARIOS, judge, load, replay
from tests.scenario_streams import BUILDERS


@pytest.mark.parametrize("name", SCENARIOS + OWN_SCENARIOS)
def test_scenario_meets_every_expectation(name: str) -> None:
    """Every expected incident exists in time and no forbidden one opens, as score.py judges it."""
    run = replay(load(name))
    assert judge(run) == []


def test_host_outage_is_one_page() -> None:
    """During the outage only the fleet incident is pageable: every terminal incident is its child."""
    run = replay(load("host-outage"))
    upstream = [i for i in run.incidents.values() if i.kind == "host_outage"]
    assert len(upstream) == 1
    others = [i for i in run.incidents.values() if i.kind != "host_outage"]
    assert all(i.parent_id == upstream[0].id for i in others)
    opened = [w for w in run.writes if w.event.type == "opened" and not w.incident.suppressed]
    assert [w.incident.kind for w in opened] == ["host_outage"]


def test_flapping_link_keeps_one_incident_and_counts_flaps() -> None:
    """OF03's second silence is a flap of the first incident, recorded in its evidence."""
    run = replay(load("offline-and-flap"))
    of03 = [i for i in run.incidents.values() if i.terminal_id == "OF03"]
    assert len(of03) == 1
    assert of03[0].evidence.get("flap_count", 0) >= 1


@pytest.mark.parametrize("name", OWN_SCENARIOS)
def test_own_scenario_streams_are_what_their_script_writes(name: str, tmp_path: Path) -> None:
    """The committed stream is the script's output: the description in its head and the events
    cannot drift apart from tests/scenario_streams.py."""
    written = BUILDERS[name]().write(tmp_path)
    assert written.read_bytes() == (DATA / f"{name}.jsonl").read_bytes()
