"""Operating hours through a real broker, on compressed days (CONTRACT §8): one test, about 3.5 minutes.

``detect.day_s = 40`` (a slot of the day is 40/24 s), ``hours_learn_days = 3``, heartbeats every
second, a grace of 2 s after the usual opening. Thirty merchants of one terminal each:

- twenty switch their terminal off every evening for a fifth of the day, from 17:21 to 22:09 (in
  compressed hours: 28.9 s to 36.9 s of each 40 s day), without a clean shutdown: ten drop their
  connection (the broker publishes their Last Will), ten just stop sending;
- five shut down cleanly at the same time; five never close.

Twenty terminals going quiet together is an offline wave while nothing is known of their hours
(``upstream_min_terminals`` is 10 here, so that the ten Last Wills alone already make one: with
its default of 20 the fleet's own learned baseline of failing terminals keeps twenty of thirty
just below it, and the test would not show that the wave is gone for the reason it claims).
The first whole evening the daemon watches is learning day 1 (the day it started, when it started
early enough, else the next). On learning days 1 to 3 each evening closer opens a network
incident; from day 4 on none does, and no upstream opens, though one terminal that stays dark into
the next morning opens one once the usual opening (22:00) plus the grace has passed. On day 4 the
daemon is restarted in the morning: the learned hours survive it. On day 5 configured hours
override what was learned, both ways: a shop learned as closed in the evening is configured open
all day (its closure opens an incident), and a shop that never closed is configured closed from
17:00 to 22:00 (its first closure opens nothing).

Fewer terminals would prove less: the correlator needs ten failing terminals in a group that is
not nearly the whole fleet, or an excess over the fleet's baseline, before it calls anything an
upstream, and the shops that close cleanly or never close are the rest of the fleet.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import pytest

from fleetwatch.sim import wire
from fleetwatch.sim.client import WireClient
from tests.publish import heartbeat, state
from tests.services import Broker, Daemon

pytestmark = pytest.mark.broker

DAY = 40.0
SLOT = DAY / 24
OFF_AT = 17 * SLOT + 0.6
"""17:21 in compressed hours: a little into slot 17, so slot 17 stays open and 18 to 21 are the night."""
ON_AT = OFF_AT + DAY / 5
OPENING = 22 * SLOT
"""22:00: the first slot after the learned night."""
GRACE = 2.0
SETTINGS = {"day_s": DAY, "hours_learn_days": 3, "heartbeat_interval_s": 1.0, "hours_grace_intervals": 2,
            "upstream_min_terminals": 10}

LAST_WILL = [f"W{i:02d}" for i in range(10)]
SILENT = [f"Q{i:02d}" for i in range(10)]
CLEAN = [f"C{i:02d}" for i in range(5)]
NEVER = [f"N{i:02d}" for i in range(5)]
CLOSERS = LAST_WILL + SILENT
DARK = SILENT[0]
"""Stays dark from the evening of day 4 into the next morning and on."""
CONFIGURED_OPEN = SILENT[5]
"""Learned as closed in the evening; on day 5 configured open all day."""
CONFIGURED_CLOSED = NEVER[0]
"""Never closed; on day 5 configured closed 17:00-22:00, and switched off like the closers."""


def merchant(tid: str) -> str:
    return "M" + tid


@dataclass
class Plan:
    """The days of this run, as epoch day numbers (day k is [k * DAY, (k + 1) * DAY))."""

    learning: int
    """Learning day 1: the first day whose whole evening the daemon watches with the fleet running."""

    @property
    def quiet(self) -> int:
        return self.learning + 3

    @property
    def configured(self) -> int:
        return self.quiet + 1

    def at(self, day: int, offset: float) -> float:
        return day * DAY + offset


def powered(tid: str, t: float, plan: Plan) -> bool:
    day, into = math.floor(t / DAY), t - math.floor(t / DAY) * DAY
    if tid == DARK and t >= plan.at(plan.quiet, OFF_AT):
        return False
    evening = OFF_AT <= into < ON_AT
    if tid in NEVER:
        return not (tid == CONFIGURED_CLOSED and day == plan.configured and evening)
    return not evening


@dataclass
class Fleet:
    """Thirty terminals on the real broker: own connections (with a Will) for the Last Will group."""

    host: str
    port: int
    prefix: str
    plan: Plan
    shared: WireClient | None = None
    own: dict[str, WireClient] = field(default_factory=dict)
    on: dict[str, bool] = field(default_factory=dict)
    seq: dict[str, int] = field(default_factory=dict)
    last_beat: dict[str, float] = field(default_factory=dict)
    generation: int = 0

    def topic(self, tid: str, leaf: str) -> str:
        return f"{self.prefix}/term/{tid}/{leaf}"

    async def start(self) -> None:
        self.shared = WireClient(self.host, self.port, f"fleet-{time.time_ns()}", keepalive=30)
        await self.shared.connect()

    async def power_on(self, tid: str) -> None:
        birth = json.dumps(state(tid, "online")).encode()
        if tid in LAST_WILL:
            self.generation += 1
            will = wire.Will(self.topic(tid, "state"), json.dumps(state(tid, "offline")).encode())
            client = WireClient(self.host, self.port, f"{tid}-{self.generation}", keepalive=30, will=will)
            await client.connect()
            self.own[tid] = client
            client.publish(self.topic(tid, "state"), birth, qos=1, retain=True)
        elif tid in CLEAN:
            assert self.shared is not None
            self.shared.publish(self.topic(tid, "state"), birth, qos=1, retain=True)

    def power_off(self, tid: str) -> None:
        if tid in LAST_WILL:
            self.own.pop(tid).abort()  # no DISCONNECT: the broker publishes the Will
        elif tid in CLEAN:
            assert self.shared is not None
            self.shared.publish(self.topic(tid, "state"), json.dumps(state(tid, "shutdown")).encode(), qos=1,
                                retain=True)

    async def step(self, now: float) -> None:
        """Switch terminals on and off on the schedule, and beat every second."""
        for tid in (*CLOSERS, *CLEAN, *NEVER):
            on = powered(tid, now, self.plan)
            if on and not self.on.get(tid, False):
                await self.power_on(tid)
            elif not on and self.on.get(tid, False):
                self.power_off(tid)
            self.on[tid] = on
            if on and now - self.last_beat.get(tid, 0.0) >= 1.0:
                self.last_beat[tid] = now
                self.seq[tid] = self.seq.get(tid, 0) + 1
                client = self.own.get(tid) or self.shared
                assert client is not None
                client.publish(self.topic(tid, "heartbeat"), json.dumps(heartbeat(tid, merchant(tid),
                                                                                  seq=self.seq[tid])).encode())

    async def stop(self) -> None:
        for client in [*self.own.values(), *([self.shared] if self.shared else [])]:
            await client.close()


@dataclass
class Observed:
    hours_before: dict[str, Any] = field(default_factory=dict)
    hours_after_restart: dict[str, Any] = field(default_factory=dict)
    states_at_night: dict[str, float] = field(default_factory=dict)


async def run(daemon: Daemon, broker: Broker) -> tuple[Plan, Observed]:
    t0 = time.time()
    day0 = math.floor(t0 / DAY)
    plan = Plan(day0 if t0 - day0 * DAY < 16 * SLOT else day0 + 1)
    parts = urlsplit(broker.url)
    fleet = Fleet(parts.hostname or "127.0.0.1", parts.port or 1883, daemon.prefix, plan)
    seen = Observed()
    chores = {
        plan.at(plan.quiet, 5 * SLOT): "restart",
        plan.at(plan.quiet, 34.5): "count",
        plan.at(plan.configured, 2.0): "configure",
    }
    end = plan.at(plan.configured, OPENING + GRACE + 2.0)
    await fleet.start()
    try:
        while (now := time.time()) < end:
            await fleet.step(now)
            for at, chore in sorted(chores.items()):
                if now >= at:
                    del chores[at]
                    await do(chore, daemon, seen)
            await asyncio.sleep(0.05)
    finally:
        await fleet.stop()
    return plan, seen


async def do(chore: str, daemon: Daemon, seen: Observed) -> None:
    if chore == "restart":
        assert await asyncio.to_thread(daemon.stop) == 0
        await asyncio.to_thread(daemon.start)
        seen.hours_after_restart = await asyncio.to_thread(daemon.get, f"/api/v1/merchants/{merchant(SILENT[1])}/hours")
    elif chore == "count":
        for label in ("closed_hours", "shutdown", "online", "offline"):
            seen.states_at_night[label] = await asyncio.to_thread(daemon.metric, "fleetwatch_terminals", state=label)
    elif chore == "configure":
        for tid in (CONFIGURED_OPEN, CONFIGURED_CLOSED):
            seen.hours_before[tid] = await asyncio.to_thread(daemon.get, f"/api/v1/merchants/{merchant(tid)}/hours")
        every = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
        await asyncio.to_thread(daemon.post, f"/api/v1/merchants/{merchant(CONFIGURED_OPEN)}/hours",
                                {"timezone": "Asia/Shanghai", "weekly": {d: ["00:00-24:00"] for d in every}}, "PUT")
        await asyncio.to_thread(daemon.post, f"/api/v1/merchants/{merchant(CONFIGURED_CLOSED)}/hours",
                                {"timezone": "Asia/Shanghai",
                                 "weekly": {d: ["00:00-17:00", "22:00-24:00"] for d in every}}, "PUT")


def opened_network(incidents: list[dict[str, Any]], tid: str) -> list[float]:
    return sorted(stamp(i["opened_at"]) for i in incidents
                  if i["terminal_id"] == tid and i["kind"] == "network" and i["scope"] == "terminal")


def stamp(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def test_evening_closures_are_learned_and_a_dark_morning_still_opens(daemon: Daemon, broker: Broker) -> None:
    daemon.overrides = {"detect": SETTINGS}
    daemon.start()
    plan, seen = asyncio.run(run(daemon, broker))
    incidents = daemon.incidents()

    for tid in CLOSERS:  # learning days: each evening closure is still an outage
        times = opened_network(incidents, tid)
        for day in range(plan.learning, plan.quiet):
            assert [t for t in times if plan.at(day, OFF_AT) <= t <= plan.at(day, ON_AT)], (tid, day, times)

    quiet_from = plan.at(plan.quiet, 0.0)
    waves = [stamp(i["opened_at"]) for i in incidents if i["kind"] == "host_outage"]
    assert [t for t in waves if t < quiet_from], waves  # while learning, closing time is an offline wave
    assert [t for t in waves if t >= quiet_from] == []  # from day 4 it feeds no upstream detection
    for tid in CLOSERS:
        late = [t for t in opened_network(incidents, tid) if t >= quiet_from]
        if tid == DARK:
            assert len(late) == 1, late
            assert late[0] >= plan.at(plan.quiet, OPENING + GRACE) - 0.05  # not before the grace ran out
            assert late[0] < plan.at(plan.configured, OFF_AT)               # but that same morning
        elif tid == CONFIGURED_OPEN:
            assert len(late) == 1, late  # its closure on day 5: configured open, so an outage
            assert plan.at(plan.configured, OFF_AT) <= late[0] <= plan.at(plan.configured, ON_AT)
        else:
            assert late == [], (tid, late)
    [dark] = [i for i in incidents if i["terminal_id"] == DARK and stamp(i["opened_at"]) >= quiet_from]
    assert dark["evidence"]["closed_hours_until"] == pytest.approx(plan.at(plan.quiet, OPENING))

    for tid in (*CLEAN, *NEVER):  # a clean shutdown behaves as in v1; configured closed opens nothing
        assert [i for i in incidents if i["terminal_id"] == tid] == [], tid

    assert seen.states_at_night == {"closed_hours": 20, "shutdown": 5, "online": 5, "offline": 0}
    assert seen.hours_after_restart["source"] == "learned"  # learned hours survived the restart
    assert seen.hours_after_restart["weekly"]["mon"] == ["22:00-18:00"]
    assert seen.hours_before[CONFIGURED_OPEN]["source"] == "learned"
    assert seen.hours_before[CONFIGURED_CLOSED]["source"] == "none"
    after = daemon.get(f"/api/v1/merchants/{merchant(CONFIGURED_CLOSED)}/hours")
    assert (after["source"], after["weekly"]["sun"]) == ("configured", ["00:00-17:00", "22:00-24:00"])
