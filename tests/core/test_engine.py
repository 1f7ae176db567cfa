"""The Engine's surface as the pipeline uses it: effects, dedupe, restore, operator actions."""

from __future__ import annotations

import ast
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from fleetwatch.config import DetectSettings, SettlementSettings
from fleetwatch.core.engine import Engine
from fleetwatch.core.messages import Envelope, Settlement
from fleetwatch.core.model import IncidentWrite, SettlementWrite, TerminalWrite, TxnWrite
from fleetwatch.errors import IncidentNotOpen
from tests.golden import heartbeat_env, state_env, txn_env

CFG = DetectSettings(heartbeat_interval_s=1.0)
CORE = Path(__file__).resolve().parents[2] / "fleetwatch" / "core"
MINE = ["state", "attribution", "rules", "incidents", "correlation", "engine", "snapshot"]


def engine(start: float = 0.0) -> Engine:
    ids = itertools.count(1)
    e = Engine(CFG, SettlementSettings(), new_id=lambda: f"i{next(ids)}")
    e.restore([], [], [], [], start)
    return e


def writes(effects: Sequence[object]) -> list[IncidentWrite]:
    return [e for e in effects if isinstance(e, IncidentWrite)]


def run_ticks(e: Engine, start: float, end: float) -> list[IncidentWrite]:
    out: list[IncidentWrite] = []
    t = start
    while t <= end:
        out.extend(writes(e.tick(t)))
        t += 0.25
    return out


def test_txn_is_written_once_and_redeliveries_are_dropped() -> None:
    """Each accepted txn gives one TxnWrite; a QoS 1 redelivery of its txn_id gives nothing."""
    e = engine()
    first = e.apply(txn_env("T1", 1.0, "T1-000001"))
    assert [type(x) for x in first] == [TxnWrite]
    assert e.apply(txn_env("T1", 2.0, "T1-000001")) == []


def test_recent_txn_keys_survive_restore() -> None:
    """Keys restored from the store still drop redeliveries after a restart."""
    e = Engine(CFG, SettlementSettings())
    e.restore([], [], [], [("T1", "T1-000001")], 0.0)
    assert e.apply(txn_env("T1", 1.0, "T1-000001")) == []


def test_settlement_message_is_written() -> None:
    """A host Settlement comes back as a SettlementWrite."""
    e = engine()
    s = Settlement(v=1, merchant_id="M1", terminal_id="T1", batch_no=1, business_date="2026-11-22",
                   settled_count=0, settled_amount_minor=0, currency="CNY", credited_at=1000)
    out = e.apply(Envelope("settlement", s, 1.0))
    assert any(isinstance(x, SettlementWrite) for x in out)


def test_silence_is_not_judged_right_after_start() -> None:
    """After restore, silence waits offline_after_missed intervals (the daemon was away)."""
    e = Engine(CFG, SettlementSettings())
    rec_engine = engine()
    rec_engine.apply(heartbeat_env("T1", 1.0, 1))
    records = rec_engine.take_dirty_terminals()
    e.restore(records, [], [], [], 100.0)
    assert run_ticks(e, 100.0, 102.9) == []
    opened = run_ticks(e, 103.0, 104.0)
    assert [w.incident.cause for w in opened] == ["offline"]


def test_restart_keeps_open_incident_and_clears_it() -> None:
    """An incident open across a restart is adopted: the recovery resolves it, no duplicate opens."""
    e0 = engine()
    opened = writes(e0.apply(heartbeat_env("T1", 1.0, 1, printer="jam")))
    inc = opened[0].incident
    e2 = Engine(CFG, SettlementSettings())
    e2.restore(e0.take_dirty_terminals(), [inc], [], [], 5.0)
    assert writes(e2.apply(heartbeat_env("T1", 5.5, 2, printer="jam"))) == []
    resolved: list[IncidentWrite] = []
    for seq, t in enumerate((6.5, 7.5, 8.5, 9.5), start=3):
        e2.apply(heartbeat_env("T1", t, seq))
        resolved += run_ticks(e2, t, t + 0.75)  # resolves 3 intervals after the fault went away
    assert [(w.incident.id, w.event.type) for w in resolved] == [(inc.id, "resolved")]


def test_ack_and_manual_resolve_and_unknown_ids() -> None:
    """ack / resolve return writes; an id the engine does not hold open is IncidentNotOpen (the API's
    409), never a bare KeyError; a still-present fault reopens."""
    e = engine()
    inc = writes(e.apply(heartbeat_env("T1", 1.0, 1, printer="jam")))[0].incident
    assert writes(e.acknowledge(inc.id, 1.5))[0].incident.status == "acknowledged"
    assert e.incident(inc.id) is not None
    assert writes(e.resolve(inc.id, 2.0))[0].event.type == "resolved"
    again = writes(e.apply(heartbeat_env("T1", 2.5, 2, printer="jam")))
    assert again[0].event.type == "reopened"
    assert again[0].incident.previous_id == inc.id
    with pytest.raises(IncidentNotOpen):
        e.acknowledge("nope", 3.0)
    with pytest.raises(IncidentNotOpen):
        e.resolve(inc.id, 3.0)


@pytest.mark.parametrize(("fault", "healthy"), [
    ({"printer": "no_paper"}, {"printer": "ok"}),
    ({"tamper": True}, {"tamper": False}),
    ({"reader": {"chip": "fault", "msr": "ok", "ctls": "ok"}}, {"reader": {"chip": "ok", "msr": "ok", "ctls": "ok"}}),
])
def test_fault_that_goes_away_after_a_manual_resolve_is_forgotten(
    fault: dict[str, Any], healthy: dict[str, Any],
) -> None:
    """Resolved by hand, then really fixed, then broken again weeks later: a new incident, no previous_id."""
    e = engine()
    first = writes(e.apply(heartbeat_env("T1", 1.0, 1, **fault)))[0].incident
    e.resolve(first.id, 2.0)
    assert writes(e.apply(heartbeat_env("T1", 3.0, 2, **healthy))) == []
    later = writes(e.apply(heartbeat_env("T1", 4.0, 3, **fault)))
    assert [(w.event.type, w.incident.previous_id) for w in later] == [("opened", None)]


def test_every_transition_is_an_incident_write_with_detection_time() -> None:
    """The opening write carries detected_from (receive time of the deciding message)."""
    e = engine()
    w = writes(e.apply(heartbeat_env("T1", 7.0, 1, tamper=True)))
    assert w[0].event.type == "opened"
    assert w[0].detected_from == 7.0


def test_retained_state_never_proves_liveness() -> None:
    """A retained 'online' from the broker does not refresh last_seen."""
    e = engine()
    e.apply(heartbeat_env("T1", 1.0, 1))
    e.apply(state_env("T1", 50.0, "online", retained=True))
    rec = e.terminal("T1")
    assert rec is not None
    assert rec.last_seen == 1.0


def test_snapshot_bounds_models_and_counts_states() -> None:
    """Terminals by (state, model) with at most 20 models + other; incidents by kind/severity/scope."""
    e = engine()
    for i in range(30):
        e.apply(heartbeat_env(f"T{i}", 1.0, 1, model=f"M{i}", printer="jam" if i == 0 else "ok"))
    e.set_maintenance("T1", 100.0, 1.0)
    snap = e.snapshot(2.0)
    models = {m for _, m in snap.terminals}
    assert len(models) <= 21
    assert "other" in models
    assert sum(snap.terminals.values()) == 30
    assert sum(n for (s, _), n in snap.terminals.items() if s == "maintenance") == 1
    assert snap.incidents_open == {("printer", "major", "terminal"): 1}
    assert snap.incidents_pageable == {("printer", "major", "terminal"): 1}
    with pytest.raises(TypeError):
        snap.terminals[("online", "x")] = 1  # type: ignore[index]


def test_maintenance_is_an_effect_carrying_the_terminal_row() -> None:
    """Starting and ending maintenance each return the terminal's row as a TerminalWrite, so the
    API's answer waits for its commit instead of the coalesced terminal flush."""
    e = engine()
    e.apply(heartbeat_env("T1", 1.0, 1))
    started = e.set_maintenance("T1", 100.0, 2.0)
    assert [type(x) for x in started] == [TerminalWrite]
    assert isinstance(started[0], TerminalWrite)
    assert (started[0].record.terminal_id, started[0].record.maintenance_until) == ("T1", 100.0)
    ended = e.set_maintenance("T1", None, 3.0)
    assert isinstance(ended[0], TerminalWrite)
    assert ended[0].record.maintenance_until is None


def test_tick_only_looks_at_due_deadlines() -> None:
    """The silence heap holds one entry per terminal; a tick with nothing due pops nothing."""
    e = engine()
    for i in range(1000):
        e.apply(heartbeat_env(f"T{i}", 1.0, 1))
    heap = e._silence
    before = len(heap)
    e.tick(2.0)
    assert len(heap) == before == 1000


def test_core_does_no_io() -> None:
    """core/ imports no asyncio, logging, sockets or files (the decisions are pure)."""
    banned = {"asyncio", "logging", "socket", "os", "pathlib", "structlog", "sqlite3", "time"}
    for name in MINE:
        tree = ast.parse((CORE / f"{name}.py").read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [(node.module or "").split(".")[0]]
            else:
                continue
            assert not banned.intersection(mods), (name, mods)


def test_freshness_alone_is_persisted_at_a_slower_cadence_than_real_changes() -> None:
    """Healthy heartbeats rewrite a terminal's row only every persist_freshness_intervals; a change
    that matters (printer, reboot count, state) is handed to the store at the next flush."""
    e = engine()
    interval = CFG.heartbeat_interval_s
    handed: list[float] = []
    for seq in range(1, 21):
        now = seq * interval
        e.apply(heartbeat_env("T1", now, seq, power={"battery_pct": 90 - seq, "charging": False},
                              uptime_s=3600 + seq))
        if e.take_dirty_terminals():
            handed.append(now)
    assert handed[0] == interval  # a new terminal is written at once
    gaps = [b - a for a, b in itertools.pairwise(handed)]
    assert gaps
    assert min(gaps) >= CFG.intervals(CFG.persist_freshness_intervals)
    e.apply(heartbeat_env("T1", 21 * interval, 21, printer="jam"))
    records = e.take_dirty_terminals()
    assert [(r.terminal_id, r.printer) for r in records] == [("T1", "jam")]


def test_a_broker_outage_is_not_an_outage_of_every_terminal() -> None:
    """While the subscription is down no silence is judged; once it is back, each terminal
    gets offline_after_missed intervals to be heard again. One that speaks stays online, one
    that stays silent goes offline after that grace, never during the outage."""
    e = engine()
    for seq, t in enumerate((1.0, 2.0), start=1):
        e.apply(heartbeat_env("T1", t, seq))
        e.apply(heartbeat_env("T2", t, seq, merchant_id="M2"))
    e.connection_changed(False, 2.5)
    assert run_ticks(e, 2.5, 30.0) == []  # 27 s of silence, far past offline_after_missed
    e.connection_changed(True, 30.0)
    assert run_ticks(e, 30.0, 32.75) == []  # the grace: nothing judged yet
    e.apply(heartbeat_env("T1", 31.0, 3))
    opened = run_ticks(e, 33.0, 33.75)  # T1, heard at 31, is not due before 34
    assert [(w.incident.terminal_id, w.incident.cause) for w in opened] == [("T2", "offline")]


def test_a_settlement_deadline_waits_for_the_subscription() -> None:
    """A batch whose settlement deadline falls while the subscription is down is judged only
    after the reconnection's grace, so a settlement the broker kept for us can arrive first."""
    detect = DetectSettings(heartbeat_interval_s=1.0)
    settle = SettlementSettings(batch_close_deadline_s=5.0, settlement_deadline_s=5.0)

    def fresh() -> Engine:
        e = Engine(detect, settle, new_id=lambda: "i1")
        e.restore([], [], [], [], 0.0)
        e.apply(heartbeat_env("T1", 0.5, 1))
        e.apply(txn_env("T1", 1.0, "T1-000001"))
        return e

    def gaps(effects: Sequence[IncidentWrite]) -> list[str]:
        return [w.incident.cause for w in effects if w.incident.kind == "settlement_gap"]

    reference = fresh()  # the same batch with the subscription up all along: a gap opens
    assert gaps(run_ticks(reference, 1.0, 10.0))
    e = fresh()
    e.connection_changed(False, 1.5)
    assert gaps(run_ticks(e, 1.5, 20.0)) == []
    e.connection_changed(True, 20.0)
    assert gaps(run_ticks(e, 20.0, 22.75)) == []
    assert gaps(run_ticks(e, 23.0, 24.0))


def _offline_terminals(effects: Sequence[object]) -> set[str]:
    return {w.incident.terminal_id or "" for w in writes(effects)
            if w.incident.cause == "offline" and w.incident.scope == "terminal"}


def test_a_tick_looks_at_no_more_silence_deadlines_than_its_budget_and_says_it_is_behind() -> None:
    """After a restart every restored deadline falls at once; a tick takes at most its budget
    of them (oldest first) and ``behind`` asks for the next, until each was judged once."""
    rec_engine = engine()
    for i in range(12):
        rec_engine.apply(heartbeat_env(f"T{i:02d}", 1.0, 1, merchant_id=f"M{i:02d}"))
    records = rec_engine.take_dirty_terminals()
    e = Engine(CFG, SettlementSettings(), silence_checks_per_tick=5)
    e.restore(records, [], [], [], 100.0)
    for i in range(6, 12):  # heard again after the restart: re-queued, not judged
        e.apply(heartbeat_env(f"T{i:02d}", 101.0, 2, merchant_id=f"M{i:02d}"))
    judged, behind = [], []
    for _ in range(3):
        judged.append(_offline_terminals(e.tick(103.0)))
        behind.append(e.behind(103.0))
    assert judged == [{f"T{i:02d}" for i in range(5)}, {"T05"}, set()]
    assert behind == [True, True, False]


def test_with_the_default_budget_one_tick_judges_every_due_deadline() -> None:
    rec_engine = engine()
    for i in range(12):
        rec_engine.apply(heartbeat_env(f"T{i:02d}", 1.0, 1, merchant_id=f"M{i:02d}"))
    e = Engine(CFG, SettlementSettings())
    e.restore(rec_engine.take_dirty_terminals(), [], [], [], 100.0)
    assert len(_offline_terminals(e.tick(103.0))) == 12
    assert not e.behind(103.0)
