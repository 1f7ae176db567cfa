"""The simulation loop: one event heap on the wall clock, a compressed business clock beside it.

Two clocks, on purpose. Heartbeats run on the **wall clock** every ``interval``
seconds, because that is what the daemon is configured with and judges silence by.
Business runs on a **compressed clock** (``speed`` times faster): shops open at 08:00,
take payments until 22:00, terminals auto-close their batches around 23:00 and the
host settles them at 06:00 the next day (T+1), so ``--speed 1440`` plays a business
day in a minute. Payload ``ts`` and ``credited_at`` are wall-clock epoch ms (the
daemon compares them with its own clock), while ``business_date`` is the compressed
day. Settlement deadlines of the daemon must be scaled by the same factor
(``recommended_daemon_config`` says how).

Everything happens through a heap of (wall time, action) events, so a million
terminals cost one heap entry each per heartbeat and per payment, not a task each.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, TextIO

from fleetwatch.sim import business, fleet, garbage
from fleetwatch.sim.faults import FaultSpec, Injector
from fleetwatch.sim.fleet import Outgoing, Terminal, Topics
from fleetwatch.sim.publish import PER_TERMINAL_MAX, FleetPublisher
from fleetwatch.sim.truth import Truth, TruthWriter

DAY = 86400.0


@dataclass(frozen=True, slots=True)
class SimOptions:
    """Everything ``fleetwatch simulate`` takes from its command line."""

    url: str = "mqtt://127.0.0.1:1883"
    prefix: str = "fleet/v1"
    terminals: int = 20
    merchants: int | None = None
    interval: float = 60.0
    speed: float = 1.0
    duration: float | None = None
    seed: int = 1
    txns_per_day: float = 120.0
    start_hour: float = 9.0
    open_hour: float = 8.0
    close_hour: float = 22.0
    batch_hour: float = 23.0
    settle_hour: float = 6.0
    connections: str = "auto"
    shared_connections: int = 4
    keepalive: int = 60
    farewell: str | None = "shutdown"

    @property
    def per_terminal(self) -> bool:
        if self.connections == "auto":
            return self.terminals <= PER_TERMINAL_MAX
        return self.connections == "per-terminal"


def recommended_daemon_config(opts: SimOptions) -> dict[str, dict[str, Any]]:
    """Daemon settings that judge this simulated fleet as the defaults judge a real one."""
    return {
        "detect": {"heartbeat_interval_s": opts.interval},
        "settlement": {"batch_close_deadline_s": round(93600 / opts.speed, 3),
                       "settlement_deadline_s": round(172800 / opts.speed, 3)},
    }


class Simulation:
    """A running simulated fleet (implements ``faults.SimContext``)."""

    def __init__(self, opts: SimOptions, faults: list[FaultSpec] | None = None,
                 truth: TruthWriter | None = None, progress: TextIO | None = None) -> None:
        self.opts = opts
        self.rng = random.Random(opts.seed)
        self.topics = Topics(opts.prefix)
        self.interval = opts.interval
        merchants = opts.merchants or max(1, opts.terminals // 3)
        self.terminals = fleet.build_terminals(opts.terminals, merchants, self.rng, self._ms())
        self.publisher = FleetPublisher(opts.url, self.topics, self.terminals, per_terminal=opts.per_terminal,
                                        shared=opts.shared_connections, keepalive=opts.keepalive)
        self.faults = faults or []
        self.truth_writer = truth or TruthWriter(None)
        self.progress = progress
        self.counts: Counter[str] = Counter()
        self.start = 0.0
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: list[tuple[business.ClosedBatch, float]] = []
        self._gap_seen: set[tuple[int, int]] = set()
        self._stop = asyncio.Event()
        midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
        self._sim0 = midnight + opts.start_hour * 3600

    # -- clocks ---------------------------------------------------------------------------
    @staticmethod
    def _ms() -> int:
        return int(time.time() * 1000)

    def now(self) -> float:
        return time.time()

    def sim_time(self, wall: float) -> float:
        """The business clock at wall time ``wall``."""
        return self._sim0 + (wall - self.start) * self.opts.speed

    def wall_time(self, sim: float) -> float:
        return self.start + (sim - self._sim0) / self.opts.speed

    def _hour(self, wall: float) -> float:
        return (self.sim_time(wall) % DAY) / 3600

    # -- SimContext -----------------------------------------------------------------------
    def schedule(self, at: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (at, next(self._seq), action))

    def emit(self, out: Outgoing) -> None:
        if self.publisher.send(out):
            self.counts[out.kind] += 1

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def link_down(self, t: Terminal) -> None:
        t.link_down = True
        self.publisher.link_down(t)

    def link_up(self, t: Terminal) -> None:
        t.link_down = False
        self._spawn(self.publisher.link_up(t), f"link-up-{t.terminal_id}")

    def stop_pinging(self, t: Terminal) -> None:
        self.publisher.stop_pinging(t)

    def reboot(self, t: Terminal) -> None:
        fleet.reboot(t, self._ms())
        self._spawn(self.publisher.reboot(t), f"reboot-{t.terminal_id}")

    def truth(self, record: Truth) -> None:
        self.truth_writer.write(record)

    def garbage(self, t: Terminal, other: Terminal, kind: str) -> None:
        if t.reachable:
            out = garbage.GENERATORS[kind](t, other, self._ms(), self.rng, self.topics)
            self.emit(out._replace(kind="garbage"))

    # -- terminal behaviour -----------------------------------------------------------------
    def _beat(self, t: Terminal) -> None:
        if t.reachable:
            self.emit(fleet.heartbeat(t, self._ms(), self.rng, self.topics))
        self.schedule(time.time() + self.interval * self.rng.uniform(0.9, 1.1), lambda: self._beat(t))

    def _base_rate(self, wall: float) -> float:
        """Payments per wall second of one terminal (zero while the shop is closed)."""
        o = self.opts
        if not o.open_hour <= self._hour(wall) < o.close_hour:
            return 0.0
        return o.txns_per_day / ((o.close_hour - o.open_hour) * 3600) * o.speed

    def _arm_txn(self, t: Terminal, now: float) -> None:
        # Poisson arrivals whose rate may change at any time (shop hours, faults): draw
        # with the current rate but look again after at most one interval; exact, because
        # exponential waiting is memoryless.
        rate = max(self._base_rate(now), t.min_attempt_rate)
        cap = self.interval
        delay = self.rng.expovariate(rate) if rate > 0 else cap + 1
        if delay > cap:
            self.schedule(now + cap, lambda: self._arm_txn(t, now + cap))
        else:
            self.schedule(now + delay, lambda: self._pay(t, now + delay))

    def _pay(self, t: Terminal, at: float) -> None:
        if t.reachable:
            self.emit(business.txn(t, self._ms(), self.rng, self.topics))
        self._arm_txn(t, at)

    # -- the business day -----------------------------------------------------------------
    def _next_wall(self, hour: float, after: float) -> float:
        sim = self.sim_time(after)
        day0 = sim - sim % DAY
        target = day0 + hour * 3600
        if target <= sim:
            target += DAY
        return self.wall_time(target)

    def _auto_close(self) -> None:
        now = time.time()
        spread = 1800 / self.opts.speed
        for t in self.terminals:
            self.schedule(now + self.rng.uniform(0, spread), partial(self._close, t))
        self.schedule(self._next_wall(self.opts.batch_hour, now + 1), self._auto_close)

    def _close(self, t: Terminal) -> None:
        now = time.time()
        if not t.reachable:  # closes when it is back
            self.schedule(now + self.interval, lambda: self._close(t))
            return
        date = datetime.fromtimestamp(self.sim_time(now), UTC).strftime("%Y-%m-%d")
        if t.skip_close:
            for currency, (count, amount) in sorted(t.tally.items()):
                if count and (t.index, t.batch_no) not in self._gap_seen:
                    self.truth(Truth(what="settlement_gap", cause="batch_not_closed", at=now, until=None,
                                     expect_incident=True, terminal_id=t.terminal_id,
                                     merchant_id=t.merchant_id, batch_no=t.batch_no, currency=currency,
                                     detail={"amount_minor": amount, "count": count}))
            self._gap_seen.add((t.index, t.batch_no))
            return
        for out, closed in business.close_batches(t, self._ms(), date, self.topics):
            self.emit(out)
            self._pending.append((closed, now))

    def _settle_all(self) -> None:
        now = time.time()
        pending, self._pending = self._pending, []
        spread = 1800 / self.opts.speed
        for closed, closed_at in pending:
            self.schedule(now + self.rng.uniform(0, spread), partial(self._settle, closed, closed_at))
        self.schedule(self._next_wall(self.opts.settle_hour, now + 1), self._settle_all)

    def _settle(self, b: business.ClosedBatch, closed_at: float) -> None:
        t = self.terminals[b.terminal]
        now = time.time()
        if t.never_settle:
            self.truth(_gap(b, "not_settled", closed_at, b.amount))
            return
        short = min(t.settle_short, max(0, b.amount - 1)) if t.settle_short else 0
        if short:
            self.truth(_gap(b, "settled_short", now, short))
        self.emit(business.settlement(b, self._ms(), self.topics, short_by=short))

    # -- running --------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> Counter[str]:
        """Connect, play until ``duration`` passes or ``stop()``, then sign off cleanly."""
        await self.publisher.start()
        self.start = time.time()
        end = None if self.opts.duration is None else self.start + self.opts.duration
        for t in self.terminals:
            self.schedule(self.start + self.rng.uniform(0, self.interval), partial(self._beat, t))
            self._arm_txn(t, self.start)
        self.schedule(self._next_wall(self.opts.batch_hour, self.start), self._auto_close)
        self.schedule(self._next_wall(self.opts.settle_hour, self.start), self._settle_all)
        Injector(self.faults, self).install()
        last_report, last_sent = self.start, 0
        try:
            while not self._stop.is_set():
                now = time.time()
                if end is not None and now >= end:
                    break
                done = 0
                while self._heap and self._heap[0][0] <= now:
                    heapq.heappop(self._heap)[2]()
                    done += 1
                    if done % 2000 == 0:
                        await self.publisher.flush()
                await self.publisher.flush()
                if self.progress is not None and now - last_report >= 1:
                    sent = sum(self.counts.values())
                    self._report(now, (sent - last_sent) / (now - last_report))
                    last_report, last_sent = now, sent
                wait = (self._heap[0][0] if self._heap else now + 0.1) - time.time()
                if end is not None:
                    wait = min(wait, end - time.time())
                await asyncio.sleep(max(0.0, min(wait, 0.1)))
        finally:
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.publisher.close(self.opts.farewell)
            if self.progress is not None:
                self.progress.write("\n")
        return self.counts

    def _report(self, now: float, rate: float) -> None:
        assert self.progress is not None
        c = self.counts
        day = datetime.fromtimestamp(self.sim_time(now), UTC).strftime("%m-%d %H:%M")
        self.progress.write(
            f"\r{now - self.start:7.0f}s  business {day}  {rate:8.0f} msg/s  hb {c['heartbeat']}  "
            f"txn {c['txn']}  batch {c['batch']}  settle {c['settlement']}  garbage {c['garbage']}  "
            f"faults {len(self.truth_writer.records)}  unacked {self.publisher.outstanding}  "
        )
        self.progress.flush()


def _gap(b: business.ClosedBatch, cause: str, at: float, amount: int) -> Truth:
    return Truth(what="settlement_gap", cause=cause, at=at, until=None, expect_incident=True,
                 terminal_id=b.terminal_id, merchant_id=b.merchant_id, batch_no=b.batch_no,
                 currency=b.currency, detail={"amount_minor": amount})


def progress_stream(quiet: bool) -> TextIO | None:
    """stderr when it is a terminal and not ``--quiet``: logs and pipes stay clean."""
    return None if quiet or not sys.stderr.isatty() else sys.stderr
