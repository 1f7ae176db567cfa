"""The engine's heartbeat fast path (``Engine._steady``) against the full path: for any
sequence of heartbeats, transactions and ticks, both say the same and end in the same state."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from fleetwatch.config import DetectSettings, SettlementSettings
from fleetwatch.core.engine import Engine
from fleetwatch.core.messages import Envelope, Heartbeat
from fleetwatch.core.model import Effect
from fleetwatch.core.state import TerminalState
from tests.golden import heartbeat_env, txn_env

CFG = DetectSettings(heartbeat_interval_s=1.0, weak_signal_intervals=2)
TIDS = ("T1", "T2", "T3")


class FullPathEngine(Engine):
    """The engine with its fast path off: every heartbeat takes the full path."""

    def _steady(self, st: TerminalState, hb: Heartbeat, now: float) -> bool:
        return False


def new(cls: type[Engine]) -> Engine:
    ids = itertools.count(1)
    e = cls(CFG, SettlementSettings(batch_close_deadline_s=20, settlement_deadline_s=20),
            new_id=lambda: f"i{next(ids)}")
    e.restore([], [], [], [], 0.0)
    return e


# Mostly the healthy values (the fast path's case), sometimes every other kind of value.
def often(healthy: Any, *others: Any) -> st.SearchStrategy[Any]:
    return st.one_of(st.just(healthy), st.just(healthy), st.just(healthy), st.sampled_from(others))


FIELDS = st.fixed_dictionaries({}, optional={
    "merchant_id": often("M1", "M2"),
    "model": often("A920", "P60", None),
    "fw": often("2.4.1", "2.5.0", None),
    "app": often("pay-3.1.0", "pay-3.2.0", None),
    "serial": often("S-1", "S-2", None),
    "power": often({"battery_pct": 80, "charging": False}, {"battery_pct": 10, "charging": False},
                   {"battery_pct": 3, "charging": False}, {"battery_pct": 10, "charging": True},
                   {"battery_pct": None, "charging": True}, {"battery_pct": 50, "charging": None}, None),
    "net": often({"type": "4g", "rssi_dbm": -70}, {"type": "wifi", "rssi_dbm": -70}, {"type": "4g", "rssi_dbm": -101},
                 {"type": "4g", "rssi_dbm": -98}, {"type": None, "rssi_dbm": None}, None),
    "printer": often("ok", "paper_low", "no_paper", "absent", "jam", None),
    "reader": often({"chip": "ok", "msr": "ok", "ctls": "ok"}, {"chip": "fault"}, None),
    "saf": often({"pending": 0, "oldest_ts": None}, {"pending": 3, "oldest_ts": 0}, {"pending": None}, None),
    "tamper": often(False, True, None),
    "uptime_s": often(None, 5, 100_000),
})


@st.composite
def steps(draw: st.DrawFn) -> list[tuple[str, float, Any]]:
    out: list[tuple[str, float, Any]] = []
    t = 0.0
    seqs = dict.fromkeys(TIDS, 0)
    for n in range(draw(st.integers(1, 80))):
        t += draw(st.sampled_from((0.0, 0.5, 1.0, 1.0, 3.0, 8.0)))
        what = draw(st.sampled_from(("hb", "hb", "hb", "hb", "txn", "tick")))
        tid = draw(st.sampled_from(TIDS))
        if what == "hb":
            seqs[tid] += draw(st.sampled_from((1, 1, 1, 0, -1)))
            fields = draw(FIELDS)
            if "uptime_s" not in fields:
                fields["uptime_s"] = 3600 + int(t)
            out.append(("hb", t, (tid, seqs[tid], fields)))
        elif what == "txn":
            out.append(("txn", t, (tid, f"{tid}-{n}", draw(st.sampled_from(("00", "05", "91"))))))
        else:
            out.append(("tick", t, None))
    return out


def run(e: Engine, plan: list[tuple[str, float, Any]]) -> list[list[Effect]]:
    said: list[list[Effect]] = []
    for what, t, arg in plan:
        if what == "hb":
            tid, seq, fields = arg
            env: Envelope = heartbeat_env(tid, t, max(seq, 0), **fields)
            said.append(e.apply(env))
        elif what == "txn":
            tid, txn_id, rc = arg
            outcome = "approved" if rc == "00" else "declined"
            said.append(e.apply(txn_env(tid, t, txn_id, rc=rc, outcome=outcome)))
        else:
            said.append(e.tick(t))
    return said


WEAK, BAND = {"type": "4g", "rssi_dbm": -101}, {"type": "4g", "rssi_dbm": -98}
"""Weak, and within 3 dB of the threshold: there the rule keeps the weak-signal clock running."""


@settings(max_examples=300, deadline=None)
@given(steps())
@example([("hb", 1.0, ("T1", 1, {})), ("hb", 2.0, ("T1", 2, {"net": WEAK})), ("hb", 3.0, ("T1", 3, {"net": BAND})),
          ("hb", 4.5, ("T1", 4, {"net": WEAK})), ("hb", 5.0, ("T1", 5, {}))])
def test_fast_path_result_equals_full_path_result(plan: list[tuple[str, float, Any]]) -> None:
    fast, full = new(Engine), new(FullPathEngine)
    assert run(fast, plan) == run(full, plan)
    end = plan[-1][1] + 60
    assert fast.tick(end) == full.tick(end)
    for tid in TIDS:
        assert fast.terminal(tid) == full.terminal(tid)
    assert fast.take_dirty_terminals() == full.take_dirty_terminals()
    assert fast.take_dirty_batches() == full.take_dirty_batches()
    assert fast.snapshot(end) == full.snapshot(end)
    assert fast.open_incidents() == full.open_incidents()


def test_a_repeated_healthy_heartbeat_takes_the_fast_path() -> None:
    """The case the fast path is for is really taken (the property test alone would pass
    with a fast path that never applies)."""
    taken: list[bool] = []

    class Watching(Engine):
        def _steady(self, st: TerminalState, hb: Heartbeat, now: float) -> bool:
            taken.append(super()._steady(st, hb, now))
            return taken[-1]

    e = new(Watching)
    for i in range(1, 5):
        assert e.apply(heartbeat_env("T1", float(i), i)) == []
    assert taken == [True, True, True]  # the first one created the terminal: full path, not asked
    assert e.apply(heartbeat_env("T1", 5.0, 5, printer="no_paper"))  # a change: full path, incident
    assert taken[-1] is False
