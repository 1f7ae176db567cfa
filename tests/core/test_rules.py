"""Terminal rules, kind by kind: what triggers, what clears, and the near-misses that must not.

Each case drives a fresh Engine (the rules are pure; the engine only wires them) with
a heartbeat interval of 1 s, so every time below is in intervals.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from fleetwatch.config import DetectSettings, SettlementSettings
from fleetwatch.core.engine import Engine
from fleetwatch.core.messages import Envelope
from fleetwatch.core.model import Incident, IncidentWrite
from tests.golden import heartbeat_env, state_env, txn_env

CFG = DetectSettings(heartbeat_interval_s=1.0, offline_after_missed=3, clear_after_intervals=3)


class Fleet:
    """An engine plus the incidents it wrote, driven in time order with sweeps in between."""

    def __init__(self, cfg: DetectSettings = CFG) -> None:
        ids = itertools.count(1)
        self.engine = Engine(cfg, SettlementSettings(), new_id=lambda: f"i{next(ids)}")
        self.engine.restore([], [], [], [], 0.0)
        self.now = 0.0
        self.incidents: dict[str, Incident] = {}
        self.seq: dict[str, int] = {}
        self.events: list[str] = []

    def take(self, effects: Sequence[object]) -> None:
        for e in effects:
            if isinstance(e, IncidentWrite):
                self.incidents[e.incident.id] = e.incident
                self.events.append(e.event.type)

    def until(self, t: float) -> None:
        """Sweep every quarter interval up to ``t``."""
        while self.now + 0.25 <= t:
            self.now += 0.25
            self.take(self.engine.tick(self.now))

    def send(self, env: Envelope) -> None:
        self.until(env.received_at)
        self.take(self.engine.apply(env))

    def beat(self, tid: str, t: float, **fields: Any) -> None:
        self.seq[tid] = self.seq.get(tid, 0) + 1
        self.send(heartbeat_env(tid, t, self.seq[tid], **fields))

    def beats(self, tid: str, start: float, end: float, **fields: Any) -> None:
        t = start
        while t < end:
            self.beat(tid, t, **fields)
            t += 1.0

    def of(self, tid: str, kind: str | None = None) -> list[Incident]:
        return [i for i in self.incidents.values() if i.terminal_id == tid and (kind is None or i.kind == kind)]


Scenario = Callable[[Fleet], None]


# ---- triggering cases: (name, drive, kind, cause, severity) --------------------------------

def printer_no_paper(f: Fleet) -> None:
    f.beats("T1", 1, 4)
    f.beats("T1", 4, 8, printer="no_paper")


def printer_escalates(f: Fleet) -> None:
    f.beats("T1", 1, 4, printer="paper_low")
    f.beats("T1", 4, 8, printer="no_paper")


def print_errors(f: Fleet) -> None:
    f.beats("T1", 1, 3)
    for n in range(3):
        f.send(txn_env("T1", 3 + n, f"p{n}", error={"stage": "print"}))


def reader_self_test(f: Fleet) -> None:
    f.beats("T1", 1, 3, reader={"chip": "fault", "msr": "ok", "ctls": "ok"})


def reader_wear(f: Fleet) -> None:
    # healthy baseline: 50 distinct cards, one fallback
    for n in range(50):
        f.send(txn_env("T1", 1 + n * 0.05, f"h{n}", entry="fallback" if n == 10 else "chip"))
    # then 40 distinct cards of which 16 fail
    for n in range(40):
        f.send(txn_env("T1", 4 + n * 0.05, f"w{n}", entry="fallback" if n % 5 < 2 else "chip"))


def battery_low(f: Fleet) -> None:
    f.beats("T1", 1, 3, power={"battery_pct": 12, "charging": False})


def battery_critical(f: Fleet) -> None:
    f.beats("T1", 1, 3, power={"battery_pct": 12, "charging": False})
    f.beats("T1", 3, 5, power={"battery_pct": 4, "charging": False})


def tamper(f: Fleet) -> None:
    f.beats("T1", 1, 2, tamper=True)


def config_keys(f: Fleet) -> None:
    f.beats("T1", 1, 2)
    f.send(txn_env("T1", 2, "k1", outcome="declined", rc="A0"))


def offline_silence(f: Fleet) -> None:
    f.beats("T1", 1, 5)
    f.until(9)


def last_will(f: Fleet) -> None:
    f.beats("T1", 1, 5)
    f.send(state_env("T1", 5.2, "offline"))


def comm_errors(f: Fleet) -> None:
    f.beats("T1", 1, 3)
    for n in range(4):
        f.send(txn_env("T1", 3 + n * 0.5, f"c{n}", outcome="error", rc=None, error={"stage": "connect"}))
    f.beats("T1", 3, 10)


def weak_signal(f: Fleet) -> None:
    f.beats("T1", 1, 14, net={"type": "4g", "rssi_dbm": -105})


TRIGGERS: list[tuple[str, Scenario, str, str, str]] = [
    ("printer no_paper", printer_no_paper, "printer", "no_paper", "major"),
    ("printer paper_low escalates", printer_escalates, "printer", "no_paper", "major"),
    ("print errors", print_errors, "printer", "print_errors", "minor"),
    ("reader self-test", reader_self_test, "reader", "self_test", "major"),
    ("reader wear", reader_wear, "reader", "read_failures", "major"),
    ("battery low", battery_low, "power", "battery_low", "minor"),
    ("battery critical", battery_critical, "power", "battery_critical", "major"),
    ("tamper", tamper, "tamper", "tamper", "critical"),
    ("config keys", config_keys, "config", "keys", "major"),
    ("offline by silence", offline_silence, "network", "offline", "major"),
    ("offline by last will", last_will, "network", "offline", "major"),
    ("comm errors", comm_errors, "network", "comm_errors", "major"),
    ("weak signal", weak_signal, "network", "weak_signal", "minor"),
]


@pytest.mark.parametrize(("name", "drive", "kind", "cause", "severity"), TRIGGERS, ids=[t[0] for t in TRIGGERS])
def test_trigger_opens_exactly_one_incident(name: str, drive: Scenario, kind: str, cause: str, severity: str) -> None:
    """The condition opens one incident of its kind with the expected cause and severity."""
    f = Fleet()
    drive(f)
    got = f.of("T1", kind)
    assert len(got) == 1, name
    assert (got[0].cause, got[0].severity) == (cause, severity)
    assert len(f.of("T1")) == 1, "no other kind opened"


def test_paper_low_then_no_paper_is_a_cause_change_of_one_incident() -> None:
    """Escalation keeps the incident and writes an escalated event."""
    f = Fleet()
    printer_escalates(f)
    assert f.events == ["opened", "escalated"]


# ---- clearing cases ---------------------------------------------------------------------------

def approve_then_beat(f: Fleet) -> None:
    f.send(txn_env("T1", 3, "ok1"))
    f.beats("T1", 3, 9)


CLEARS: list[tuple[str, Scenario, Scenario]] = [
    ("printer refilled", printer_no_paper, lambda f: f.beats("T1", 8, 14)),
    ("self-test passes", reader_self_test, lambda f: f.beats("T1", 3, 9)),
    ("battery charging", battery_low, lambda f: f.beats("T1", 3, 9, power={"battery_pct": 12, "charging": True})),
    ("tamper cleared", tamper, lambda f: f.beats("T1", 2, 8, tamper=False)),
    ("approval after config error", config_keys, approve_then_beat),
    ("back online", offline_silence, lambda f: f.beats("T1", 9, 15)),
    ("comm errors stop", comm_errors, lambda f: f.beats("T1", 10, 20)),
]


@pytest.mark.parametrize(("name", "drive", "recover"), CLEARS, ids=[c[0] for c in CLEARS])
def test_condition_gone_resolves_after_hysteresis(name: str, drive: Scenario, recover: Scenario) -> None:
    """Once the condition is gone for clear_after_intervals the incident resolves."""
    f = Fleet()
    drive(f)
    recover(f)
    got = f.of("T1")
    assert len(got) == 1, name
    assert got[0].status == "resolved", name
    assert got[0].resolved_at is not None


# ---- near-misses that must not open anything --------------------------------------------------

def decline_storm(f: Fleet) -> None:
    codes = ["05", "51", "55", "14", "54", "57", "61", "65", "75"]
    for n in range(300):
        f.send(txn_env("T1", 1 + n * 0.02, f"d{n}", outcome="declined", rc=codes[n % len(codes)]))
    f.beats("T1", 1, 8)


def one_bad_card(f: Fleet) -> None:
    for n in range(300):
        bad = n % 12 == 0
        f.send(txn_env("T1", 1 + n * 0.02, f"t{n}", card_ref="damaged" if bad else f"c{n}",
                       outcome="error" if bad else "approved", rc=None if bad else "00",
                       error={"stage": "read"} if bad else None))
    f.beats("T1", 1, 8)


def paper_low_only(f: Fleet) -> None:
    f.beats("T1", 1, 20, printer="paper_low")


def absent_printer(f: Fleet) -> None:
    f.beats("T1", 1, 10, printer="absent")


def shutdown(f: Fleet) -> None:
    f.beats("T1", 1, 4)
    f.send(state_env("T1", 4.1, "shutdown"))
    f.until(20)


def retained_offline_after_recovery(f: Fleet) -> None:
    f.beats("T1", 1, 4)
    f.send(state_env("T1", 4.1, "offline", retained=True))
    f.beats("T1", 4.5, 10)


def lossy_link(f: Fleet) -> None:
    for t in range(1, 30):
        if t % 4:
            f.beat("T1", float(t))


def txns_without_heartbeats(f: Fleet) -> None:
    f.beats("T1", 1, 3)
    for n in range(40):
        f.send(txn_env("T1", 3 + n * 0.5, f"x{n}"))


def host_declines_alone(f: Fleet) -> None:
    for n in range(20):
        f.send(txn_env("T1", 1 + n * 0.3, f"h{n}", outcome="declined", rc="91"))
    f.beats("T1", 1, 10)


def cancelled_and_pin(f: Fleet) -> None:
    for n in range(20):
        f.send(txn_env("T1", 1 + n * 0.3, f"o{n}", outcome="cancelled", rc=None))
        f.send(txn_env("T1", 1 + n * 0.3, f"p{n}", outcome="error", rc=None, error={"stage": "pin"}))
    f.beats("T1", 1, 10)


NEAR_MISSES: list[tuple[str, Scenario]] = [
    ("decline storm 05/51/55...", decline_storm),
    ("one bad card failing 25 times", one_bad_card),
    ("shutdown", shutdown),
    ("retained offline after recovery", retained_offline_after_recovery),
    ("lossy link missing one beat at a time", lossy_link),
    ("alive through transactions only", txns_without_heartbeats),
    ("rc 91 on one terminal", host_declines_alone),
    ("cancelled and pin aborts", cancelled_and_pin),
    ("absent printer", absent_printer),
]


@pytest.mark.parametrize(("name", "drive"), NEAR_MISSES, ids=[n[0] for n in NEAR_MISSES])
def test_near_miss_opens_nothing(name: str, drive: Scenario) -> None:
    """Outcomes, single bad cards, clean shutdowns and retained history are not faults."""
    f = Fleet()
    drive(f)
    assert f.of("T1") == [], name


def test_paper_low_alone_is_at_most_minor() -> None:
    """A paper warning never pages: at most a minor incident."""
    f = Fleet()
    paper_low_only(f)
    assert all(i.severity in ("info", "minor") for i in f.of("T1"))


def test_battery_warns_once_per_discharge() -> None:
    """Staying low for many beats gives one incident; only a charge re-arms the warning."""
    f = Fleet()
    f.beats("T1", 1, 10, power={"battery_pct": 12, "charging": False})
    f.beats("T1", 10, 16, power={"battery_pct": 60, "charging": True})
    f.beats("T1", 16, 20, power={"battery_pct": 12, "charging": False})
    got = sorted(f.of("T1", "power"), key=lambda i: i.opened_at)
    assert len(got) == 2
    assert got[0].status == "resolved"


def test_maintenance_opens_nothing() -> None:
    """A terminal in maintenance opens no incident, even for a hard fault or silence."""
    f = Fleet()
    f.beats("T1", 1, 2)
    f.engine.set_maintenance("T1", 50.0, 2.0)
    f.beats("T1", 2, 6, printer="jam", tamper=True)
    f.until(20)
    assert f.of("T1") == []


def test_comm_errors_wait_one_correlation_window() -> None:
    """Host-side failures on one terminal open only after a correlation window."""
    f = Fleet()
    comm_errors(f)
    inc = f.of("T1", "network")[0]
    assert inc.opened_at >= 3 + CFG.intervals(CFG.correlation_window_intervals)
