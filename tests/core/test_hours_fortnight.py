"""Operating hours through the whole engine: fourteen days of a small fleet on a fake clock.

Real days in Asia/Shanghai, heartbeats every 5 minutes (offline after 15, a grace of 30 minutes
after the usual opening), ``hours_learn_days`` 7. The daemon starts on a Monday at 14:00 (a
partial first day) and is down on day 2 from 21:00 to 23:30 (slots it did not watch): it is
restored from what it wrote, as after a real restart. The shops:

- six merchants of four terminals each switch off at 22:00 without a word and back on at 08:00:
  24 terminals going silent together, an offline wave every evening until their hours are learned;
- one switches off at 20:30 (its broker publishes the Last Will) until 07:00;
- one closes after midnight, 02:00 to 10:00;
- one shuts down cleanly at 21:00 (v1 behaviour: nothing ever opens; on day 2 the daemon
  learns it from the retained State the broker hands over at the restart);
- one never closes (learns nothing);
- one has configured hours, Monday to Saturday 09:00-21:00 and closed on Sundays, and keeps them;
- one closes at 22:00 like the six, and on day 11 stays dark until noon.

What each day opens is compared with what the contract says: the evening closures open network
incidents (and the wave a host_outage) until learned, then nothing; the dark morning opens one
within the grace; the configured shop never opens anything.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from fleetwatch.config import DetectSettings, SettlementSettings
from fleetwatch.core.engine import Engine
from fleetwatch.core.hours import WeeklyHours
from fleetwatch.core.messages import Envelope, Heartbeat, StateMsg
from fleetwatch.core.model import (
    AcquirerStatus,
    AcquirerStatusWrite,
    Effect,
    Incident,
    IncidentWrite,
    MerchantHoursRecord,
    MerchantHoursWrite,
    TerminalRecord,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")
MONDAY = datetime(2026, 11, 2, tzinfo=SHANGHAI).timestamp()
BEAT = 300.0
DAYS = 14
CFG = DetectSettings(heartbeat_interval_s=BEAT, hours_learn_days=7, hours_grace_intervals=6)
START = MONDAY + 14 * 3600
DOWN = (MONDAY + 2 * 86400 + 21 * 3600, MONDAY + 2 * 86400 + 23.5 * 3600)
WEEKDAY_HOURS: dict[str, object] = {"timezone": "Asia/Shanghai",
                 "weekly": {d: ["09:00-21:00"] for d in ("mon", "tue", "wed", "thu", "fri", "sat")}}


def local(day: int, hh: int, mm: int = 0) -> float:
    return MONDAY + day * 86400 + hh * 3600 + mm * 60


def day_of(t: float) -> int:
    return int((t - MONDAY) // 86400)


@dataclass(frozen=True)
class Shop:
    merchant: str
    terminals: int
    closes: tuple[int, int] | None = None
    opens: tuple[int, int] | None = None
    leaves: str = "silent"
    """How its terminals go: silent, last_will (the broker says so) or shutdown (clean)."""
    sundays_off: bool = False
    dark_until: dict[int, tuple[int, int]] = field(default_factory=dict)
    configured: dict[str, object] | None = None

    def powered(self, t: float) -> bool:
        day = day_of(t)
        minute = (t - MONDAY - day * 86400) / 60
        if self.sundays_off and day % 7 == 6:
            return False
        if day in self.dark_until and minute < self.dark_until[day][0] * 60 + self.dark_until[day][1]:
            return False
        if self.closes is None or self.opens is None:
            return True
        close, open_ = self.closes[0] * 60 + self.closes[1], self.opens[0] * 60 + self.opens[1]
        if close > open_:
            return open_ <= minute < close
        return not close <= minute < open_


SHOPS = (
    *(Shop(f"E22-{n}", 4, (22, 0), (8, 0)) for n in range(6)),
    Shop("E2030", 2, (20, 30), (7, 0), "last_will"),
    Shop("N0200", 1, (2, 0), (10, 0)),
    Shop("CLEAN", 2, (21, 0), (9, 0), "shutdown"),
    Shop("ALWAYS", 2),
    Shop("SUNDAYS", 1, (21, 0), (9, 0), sundays_off=True, configured=WEEKDAY_HOURS),
    Shop("DARK", 1, (22, 0), (8, 0), dark_until={11: (12, 0)}),
)


@dataclass
class Store:
    """What the daemon wrote, enough to restore it (the pure engine's own effects)."""

    terminals: dict[str, TerminalRecord] = field(default_factory=dict)
    incidents: dict[str, Incident] = field(default_factory=dict)
    hours: dict[str, MerchantHoursRecord] = field(default_factory=dict)
    statuses: dict[str, AcquirerStatus] = field(default_factory=dict)
    opened: list[Incident] = field(default_factory=list)

    def take(self, effects: list[Effect], engine: Engine) -> None:
        for e in effects:
            if isinstance(e, IncidentWrite):
                self.incidents[e.incident.id] = e.incident
                if e.event.type in ("opened", "reopened"):
                    self.opened.append(e.incident)
            elif isinstance(e, MerchantHoursWrite):
                self.hours[e.record.merchant_id] = e.record
            elif isinstance(e, AcquirerStatusWrite):
                self.statuses[e.status.terminal_id] = e.status
        for rec in engine.take_dirty_terminals():
            self.terminals[rec.terminal_id] = rec

    def start(self, now: float) -> Engine:
        ids = itertools.count(len(self.incidents) + 1)
        engine = Engine(CFG, SettlementSettings(), new_id=lambda: f"i{next(ids)}")
        engine.restore(self.terminals.values(), [i for i in self.incidents.values() if i.is_open], [], [], now,
                       statuses=self.statuses.values(), hours=self.hours.values())
        engine.connection_changed(True, now)
        return engine


Event = tuple[float, int, str, str, str]
"""(at, order, what, terminal, value): what is hb (value: merchant), state (value: the state) or tick."""


def events(step: float, shops: tuple[Shop, ...], was_on: dict[str, bool]) -> Iterator[Event]:
    """One heartbeat interval: each terminal's beat (or its going), and two sweeps."""
    n = 0
    for shop in shops:
        for i in range(shop.terminals):
            tid = f"{shop.merchant}-T{i}"
            at = step + (n * 7) % 60
            n += 1
            on = shop.powered(at)
            if on:
                yield at, 1, "hb", tid, shop.merchant
            elif was_on.get(tid, True):
                if shop.leaves == "shutdown":
                    yield at, 1, "state", tid, "shutdown"
                elif shop.leaves == "last_will":
                    yield at + 90, 1, "state", tid, "offline"
            was_on[tid] = on
    yield step + 100, 0, "tick", "", ""
    yield step + 250, 0, "tick", "", ""


def state_msg(tid: str, value: str, at: float) -> StateMsg:
    return StateMsg(v=1, terminal_id=tid, state=value, ts=int(at * 1000))  # type: ignore[arg-type]


def run() -> tuple[Store, Engine, dict[str, int]]:
    store = Store()
    engine = store.start(START)
    for shop in SHOPS:
        if shop.configured is not None:
            store.take(engine.set_hours(shop.merchant, WeeklyHours.parse(shop.configured), START), engine)
    seq: dict[str, int] = {}
    was_on: dict[str, bool] = {}
    snapshots: dict[str, int] = {}
    retained: dict[str, tuple[str, float]] = {}
    step, up = START, True
    while step < MONDAY + DAYS * 86400:
        if up and DOWN[0] <= step < DOWN[1]:
            store.take(engine.tick(step), engine)  # the last sweep before the daemon stops
            up = False
        if not up and step >= DOWN[1]:
            engine, up = store.start(step), True
            for tid, (value, ts) in sorted(retained.items()):  # the broker hands its retained States over
                store.take(engine.apply(Envelope("state", state_msg(tid, value, ts), step, retained=True)), engine)
        for at, _, what, tid, value in sorted(events(step, SHOPS, was_on), key=lambda e: (e[0], e[1])):
            if what == "state":
                retained[tid] = (value, at)
            if not up:
                continue
            if what == "tick":
                store.take(engine.tick(at), engine)
            elif what == "hb":
                seq[tid] = seq.get(tid, 0) + 1
                msg = Heartbeat(v=1, terminal_id=tid, merchant_id=value, ts=int(at * 1000), seq=seq[tid])
                store.take(engine.apply(Envelope("heartbeat", msg, at)), engine)
            else:
                store.take(engine.apply(Envelope("state", state_msg(tid, value, at), at)), engine)
        if step == local(9, 23):
            snap = engine.snapshot(step)
            for (label, _), count in snap.terminals.items():
                snapshots[label] = snapshots.get(label, 0) + count
        step += BEAT
    return store, engine, snapshots


Result = tuple[Store, Engine, dict[str, int]]


@pytest.fixture(scope="module")
def fortnight() -> Result:
    """The fourteen days, run once for every test of this module (about two seconds)."""
    return run()


def network_days(result: Result, merchant_prefix: str) -> dict[str, set[int]]:
    store = result[0]
    out: dict[str, set[int]] = {}
    for inc in store.opened:
        if inc.scope == "terminal" and inc.kind == "network" and (inc.terminal_id or "").startswith(merchant_prefix):
            out.setdefault(inc.terminal_id or "", set()).add(day_of(inc.opened_at))
    return out


def test_evening_closures_open_incidents_only_until_their_hours_are_learned(fortnight: Result) -> None:
    """The 22:00 closers open a network incident every evening of days 0 to 7 (7 watched days are
    needed, and day 2's night was not watched) and never again; so does the 20:30 closer whose
    broker sends the Last Will. The after-midnight closer starts on day 1 (the daemon started on
    day 0 at 14:00) and is learned one night later than seven days, for the same reason."""
    for prefix in ("E22-", "E2030-"):
        days = network_days(fortnight, prefix)
        assert len(days) == (24 if prefix == "E22-" else 2)
        assert all(d == set(range(8)) for d in days.values()), days
    assert network_days(fortnight, "N0200-") == {"N0200-T0": set(range(1, 8))}


def test_the_wave_of_closing_shops_is_an_upstream_only_while_learning(fortnight: Result) -> None:
    """Twenty-four terminals going silent together at 22:00 is an offline wave (host_outage) while
    nothing is known of their hours; once learned, closing time feeds no upstream detection."""
    waves = {day_of(i.opened_at) for i in fortnight[0].opened if i.kind == "host_outage"}
    assert waves
    assert waves <= set(range(8)), waves


def test_a_terminal_dark_into_the_morning_opens_within_the_grace(fortnight: Result) -> None:
    """DARK is learned like the others (quiet from day 8), and on day 11 it stays off until noon: its
    network offline opens once the usual opening (08:00) plus the grace (30 min) has passed."""
    days = network_days(fortnight, "DARK-")
    assert days == {"DARK-T0": {*range(8), 11}}
    [late] = [i for i in fortnight[0].opened if i.terminal_id == "DARK-T0" and day_of(i.opened_at) == 11]
    assert local(11, 8, 30) <= late.opened_at <= local(11, 8, 30) + BEAT
    assert late.evidence["closed_hours_until"] == local(11, 8)


def test_clean_shutdowns_never_closing_and_configured_hours_open_nothing(fortnight: Result) -> None:
    """A clean shutdown behaves as in v1; a shop that never closes learns nothing and opens nothing;
    the configured shop (closed on Sundays, which learning could not know) never opens anything,
    from the first evening on."""
    store, engine, _ = fortnight
    quiet = [i for i in store.opened if (i.merchant_id or "") in ("CLEAN", "ALWAYS", "SUNDAYS")]
    assert quiet == []
    assert engine.hours_of("ALWAYS") == ("none", "Asia/Shanghai", {})
    source, _, weekly = engine.hours_of("SUNDAYS")
    assert source == "configured"
    assert "sun" not in weekly


def test_what_was_learned(fortnight: Result) -> None:
    """At the end: the 22:00 closers' nights are 22:00 to 08:00, the early closer's 21:00 (its 20:00
    slot is half open) to 07:00, the after-midnight one's 02:00 to 10:00."""
    engine = fortnight[1]
    assert engine.closed_slots("E22-0") == {22, 23, *range(8)}
    assert engine.closed_slots("E2030") == {21, 22, 23, *range(7)}
    assert engine.closed_slots("N0200") == set(range(2, 10))
    assert engine.hours_of("E22-0")[2]["mon"] == ["08:00-22:00"]


def test_closed_for_the_night_is_a_terminal_state(fortnight: Result) -> None:
    """At 23:00 on day 9 the terminals silent since their shop's closing time are closed_hours in
    fleetwatch_terminals, the clean ones shutdown, the rest online."""
    snapshots = fortnight[2]
    assert snapshots == {"closed_hours": 24 + 2 + 1 + 1, "shutdown": 2, "online": 1 + 2}
