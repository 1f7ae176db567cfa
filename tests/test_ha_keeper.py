"""The lease keeper (fleetwatch/ha.py) with two instances on one in-memory store and a fake clock.

A small discrete-event clock drives both keepers' sleeps and the store's lease expiry
alike, so takeovers after a crash, a store that stops answering or a clean release are
played out in compressed time, with exact times to check.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from dataclasses import dataclass, field

from fleetwatch.core.lease import LeaseView, Role
from fleetwatch.errors import StoreError
from fleetwatch.ha import LeaseKeeper, LeaseThread, instance_name
from fleetwatch.testing import MemoryStore

LEASE = 6.0


class FakeTime:
    """Sleeps wake in time order; ``run_until`` moves the clock from wake-up to wake-up."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(0.0, delay), next(self._seq), future))
        await future

    async def run_until(self, until: float) -> None:
        while True:
            for _ in range(50):  # let every task run up to its next sleep
                await asyncio.sleep(0)
            if not self._sleepers or self._sleepers[0][0] > until:
                self.now = max(self.now, until)
                return
            at, _, future = heapq.heappop(self._sleepers)
            self.now = max(self.now, at)
            if not future.done():
                future.set_result(None)


@dataclass
class Flaky:
    """One instance's way to the shared store, which can break (its network, or its store connection)."""

    store: MemoryStore
    broken: bool = False

    def _check(self) -> None:
        if self.broken:
            raise StoreError("connection lost")

    async def claim(self, holder: str, lease_s: float) -> LeaseView:
        self._check()
        return await self.store.claim(holder, lease_s)

    async def renew(self, holder: str, token: int, lease_s: float) -> LeaseView:
        self._check()
        return await self.store.renew(holder, token, lease_s)

    async def release(self, holder: str, token: int) -> None:
        self._check()
        await self.store.release(holder, token)

    async def disconnect_lease(self) -> None:
        return None


@dataclass
class Instance:
    name: str
    time: FakeTime
    link: Flaky
    changes: list[tuple[float, Role, str]] = field(default_factory=list)
    keeper: LeaseKeeper = field(init=False)
    task: asyncio.Task[str] | None = None
    token: int | None = None

    def __post_init__(self) -> None:
        self.keeper = LeaseKeeper(self.link, self.name, LEASE, clock=self.time.clock, sleep=self.time.sleep,
                                  on_role=lambda role, why: self.changes.append((self.time.now, role, why)))

    def start(self) -> None:
        async def life() -> str:
            self.token = await self.keeper.acquire()
            return await self.keeper.hold()

        self.task = asyncio.create_task(life())

    def active_since(self) -> float | None:
        return next((at for at, role, _ in self.changes if role is Role.ACTIVE), None)

    def stepped_down_at(self) -> float | None:
        return next((at for at, role, why in self.changes if role is Role.STANDBY and "stepped down" in why), None)


async def pair() -> tuple[FakeTime, MemoryStore, Instance, Instance]:
    time = FakeTime()
    store = MemoryStore(clock=time.clock)
    a, b = Instance("a", time, Flaky(store)), Instance("b", time, Flaky(store))
    a.start()
    await time.run_until(0.0)
    b.start()
    await time.run_until(0.0)
    return time, store, a, b


async def stop(*instances: Instance) -> None:
    for i in instances:
        if i.task is not None:
            i.task.cancel()
    await asyncio.gather(*(i.task for i in instances if i.task is not None), return_exceptions=True)


async def test_the_first_takes_the_lease_and_the_other_stays_standby_while_it_renews() -> None:
    time, _store, a, b = await pair()
    await time.run_until(20 * LEASE)
    assert (a.keeper.role, a.token, b.keeper.role) == (Role.ACTIVE, 1, Role.STANDBY)
    assert [role for _, role, _ in a.changes] == [Role.STANDBY, Role.ACTIVE]
    assert [role for _, role, _ in b.changes] == [Role.STANDBY]
    assert b.keeper.standby_reason() == "standby: a holds the lease"
    await stop(a, b)


async def test_after_a_crash_the_standby_takes_over_once_the_lease_expires() -> None:
    """SIGKILL: no release, no more renewals. The standby takes over after the last renewal's expiry,
    within one retry interval of it, with the next fencing token."""
    time, _store, a, b = await pair()
    await time.run_until(10.1)  # a renewed at 10.0 (every 2 s): the store's expiry is 16.0
    await stop(a)
    await time.run_until(30.0)
    took = b.active_since()
    assert took is not None
    assert 16.0 <= took <= 16.0 + LEASE / 12
    assert b.token == 2
    await stop(b)


async def test_an_active_cut_off_from_the_store_steps_down_before_the_standby_can_take_over() -> None:
    time, _store, a, b = await pair()
    await time.run_until(10.1)  # last successful renewal sent at 10.0
    a.link.broken = True
    await time.run_until(30.0)
    assert a.task is not None
    assert a.task.done()
    assert "could not be renewed in time" in a.task.result()
    down, took = a.stepped_down_at(), b.active_since()
    assert down == 10.0 + LEASE - LEASE / 6
    assert took is not None
    assert down < took
    assert b.keeper.role is Role.ACTIVE
    await stop(b)


async def test_a_store_that_is_back_in_time_keeps_the_active_active() -> None:
    """Renewals failing for less than the guard allows are retried: a blip is no failover."""
    time, _store, a, b = await pair()
    await time.run_until(10.1)
    a.link.broken = True
    await time.run_until(13.0)
    a.link.broken = False
    await time.run_until(40.0)
    assert (a.keeper.role, b.keeper.role) == (Role.ACTIVE, Role.STANDBY)
    assert a.stepped_down_at() is None
    await stop(a, b)


def stall_once(inst: Instance, at: float, seconds: float) -> None:
    """The instance's next sleep after ``at`` wakes ``seconds`` late (a stalled event loop)."""
    real = inst.time.sleep
    fired = False

    async def sleep(delay: float) -> None:
        nonlocal fired
        if not fired and inst.time.now >= at:
            fired = True
            delay += seconds
        await real(delay)

    inst.keeper._sleep = sleep  # the keeper's injected sleep, swapped mid-test


async def test_a_stalled_active_alone_keeps_its_lease() -> None:
    """Its renewal comes 3 leases late, but no one took the lease (same token): it stays active."""
    time = FakeTime()
    store = MemoryStore(clock=time.clock)
    a = Instance("a", time, Flaky(store))
    stall_once(a, 10.0, 3 * LEASE)
    a.start()
    await time.run_until(60.0)
    assert (a.keeper.role, a.keeper.token) == (Role.ACTIVE, 1)
    assert a.stepped_down_at() is None
    await stop(a)


async def test_a_stalled_active_steps_down_when_it_finds_the_standby_took_over() -> None:
    time, _store, a, b = await pair()
    stall_once(a, 10.0, 3 * LEASE)
    await time.run_until(60.0)
    took, down = b.active_since(), a.stepped_down_at()
    assert took is not None
    assert down is not None
    assert took < down  # the standby did not wait for the stalled one
    assert b.token == 2
    assert a.task is not None
    assert "b holds the lease now (token 2)" in a.task.result()
    await stop(b)


async def test_a_lease_taken_away_is_a_step_down_at_the_next_renewal() -> None:
    time, store, a, b = await pair()
    await time.run_until(10.1)
    store.set_lease(9)  # what an operator's or a confused instance's takeover leaves behind
    await time.run_until(12.1)
    assert a.task is not None
    assert a.task.done()
    assert "holds the lease now (token 9)" in a.task.result()
    assert a.keeper.role is Role.STANDBY
    await stop(b)


async def test_a_clean_stop_releases_the_lease_and_the_standby_takes_over_at_once() -> None:
    time, _store, a, b = await pair()
    await time.run_until(10.1)
    await stop(a)
    await a.keeper.release()
    await time.run_until(30.0)
    took = b.active_since()
    assert took is not None
    assert took <= 10.1 + LEASE / 3
    await stop(b)


async def test_a_standby_retries_a_store_that_does_not_answer() -> None:
    time = FakeTime()
    store = MemoryStore(clock=time.clock)
    store.lease_failures = 3
    a = Instance("a", time, Flaky(store))
    a.start()
    await time.run_until(10.0)
    assert a.active_since() == 3 * LEASE / 12
    await stop(a)


def test_instance_names_differ_between_processes_on_one_host() -> None:
    first, second = instance_name(), instance_name()
    assert first != second
    assert first.rsplit(":", 1)[0] == second.rsplit(":", 1)[0]


async def test_a_keeper_whose_daemon_loop_is_silent_does_not_renew_for_it() -> None:
    """The keeper runs beside the daemon's loop (LeaseThread); a loop that has not beaten for
    ``stall_s`` (ha.takeover_s) is treated as hung: the lease is not renewed for it."""
    time = FakeTime()
    store = MemoryStore(clock=time.clock)
    beat = [0.0]
    a = Instance("a", time, Flaky(store))
    a.keeper = LeaseKeeper(a.link, "a", LEASE, clock=time.clock, sleep=time.sleep, alive=lambda: beat[0],
                           stall_s=2 * LEASE, on_role=lambda role, why: a.changes.append((time.now, role, why)))
    a.start()
    for t in range(1, 11):  # the loop beats until 10 s
        await time.run_until(float(t))
        beat[0] = float(t)
    await time.run_until(40.0)
    assert a.task is not None
    assert a.task.done()
    assert "event loop has not run for" in a.task.result()
    down = a.stepped_down_at()
    assert down is not None
    assert 10.0 + 2 * LEASE < down <= 10.0 + 2 * LEASE + LEASE / 3  # at the first renewal past stall_s


async def test_the_lease_thread_claims_renews_and_releases_on_its_own_loop() -> None:
    """LeaseThread against the in-memory store (real clock, 1 s lease): the claim and the renewals
    run in the thread, the caller's loop only awaits them; a clean stop releases the lease."""
    store = MemoryStore()
    changes: list[Role] = []
    thread = LeaseThread(store, "t", 1.0, on_role=lambda role, _why: changes.append(role), stall_s=5.0)
    try:
        assert await thread.acquire() == 1
        hold = asyncio.create_task(thread.hold())
        await asyncio.sleep(1.5)  # longer than the lease: only renewals keep it
        assert not hold.done()
        assert not (await store.claim("other", 1.0)).held
        hold.cancel()
        await asyncio.gather(hold, return_exceptions=True)
        await thread.release()
        assert (await store.claim("other", 1.0)).held
    finally:
        await thread.close()
    assert changes == [Role.STANDBY, Role.ACTIVE]
