"""The lease keeper: takes the active lease when it is free and renews it while it holds it.

The decisions (when to ask, when to give up) are core/lease.py's; this module only asks
the store (ports.Leases) at those times, bounds every request by the time left, and
says what changed. It is all the high-availability logic the daemon has besides the
fencing token every commit checks (Store.fence) and the gate in app.py that starts the
broker connection and the background workers only once the lease is held.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import structlog

from fleetwatch.core.lease import Decision, LeaseSchedule, LeaseTiming, LeaseView, Role
from fleetwatch.errors import StoreError
from fleetwatch.logs import RateLimitedLog
from fleetwatch.ports import Leases

log = structlog.get_logger("fleetwatch.ha")

_T = TypeVar("_T")

RoleListener = Callable[[Role, str], None]
"""Called with the new role and why, on every change (the log line and the metric)."""


def instance_name() -> str:
    """This process's name in the lease row and in ``pg_stat_activity``: host, pid and a random
    tail (a restarted process on the same host never mistakes the old one's lease for its own)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"


class LeaseKeeper:
    """One instance's lease: :meth:`acquire` waits until it is active, :meth:`hold` renews until it is not."""

    def __init__(
        self, leases: Leases, holder: str, lease_s: float, *, on_role: RoleListener,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        alive: Callable[[], float] | None = None, stall_s: float = 15.0,
    ) -> None:
        """``alive`` answers when the daemon's own event loop last ran (on ``clock``), for a keeper
        that runs elsewhere (LeaseThread): a daemon whose loop has not run for ``stall_s``
        (``ha.takeover_s``: longer than a failover would take) is not renewed for, so a hung
        process cannot keep the group from failing over."""
        self._alive = alive
        self._stall_s = stall_s
        self._leases = leases
        self.holder = holder
        self._timing = LeaseTiming(lease_s)
        self._schedule = LeaseSchedule(self._timing)
        self._on_role = on_role
        self._clock = clock
        self._sleep = sleep
        self._error_log = RateLimitedLog(max(1.0, lease_s))
        self.last_seen: LeaseView | None = None
        """The lease row as last reported (who holds it), for ``/readyz``."""

    @property
    def role(self) -> Role:
        return self._schedule.role

    @property
    def token(self) -> int | None:
        return self._schedule.token

    def standby_reason(self) -> str:
        """Why this instance is not active, for ``/readyz`` and the log."""
        seen = self.last_seen
        if seen is None:
            return "standby: waiting for the store to answer"
        if seen.holder is None or seen.remaining_s <= 0:
            return "standby: taking over the lease"
        return f"standby: {seen.holder} holds the lease"

    async def acquire(self) -> int:
        """Wait (standby) until this instance holds the lease; returns its fencing token."""
        self._on_role(Role.STANDBY, "started as standby: waiting for the lease")
        while True:
            await self._sleep_until(self._schedule.next_at)
            sent = self._clock()
            try:
                view = await asyncio.wait_for(self._leases.claim(self.holder, self._timing.lease_s),
                                              self._schedule.attempt_timeout(sent))
            except (StoreError, TimeoutError) as exc:
                self._failed("claiming the lease failed", exc)
                self._schedule.claim_failed(self._clock())
                continue
            self.last_seen = view
            if self._schedule.claimed(view, sent) is Role.ACTIVE:
                token = self._schedule.token
                assert token is not None
                self._on_role(Role.ACTIVE, f"took the lease (token {token})")
                return token

    async def hold(self) -> str:
        """Renew while active; returns why this instance stepped down (its lease may now end)."""
        while True:
            await self._sleep_until(self._schedule.next_at)
            sent = self._clock()
            if self._alive is not None:
                silent = sent - self._alive()
                if silent > self._stall_s:
                    return self._stepped_down(f"the daemon's event loop has not run for {silent:.1f} s")
            if sent > self._schedule.step_down_at:
                log.warning("renewing the lease late: this process was stalled",
                            late_s=round(sent - self._schedule.step_down_at, 3))
            token = self._schedule.token
            assert token is not None
            try:
                view = await asyncio.wait_for(self._leases.renew(self.holder, token, self._timing.lease_s),
                                              self._schedule.attempt_timeout(sent))
            except (StoreError, TimeoutError) as exc:
                self._failed("renewing the lease failed", exc)
                if self._schedule.renew_failed(self._clock()) is Decision.STEP_DOWN:
                    return self._stepped_down(f"the lease could not be renewed in time ({_describe(exc)})")
                continue
            self.last_seen = view
            if self._schedule.renewed(view, sent, self._clock()) is Decision.STEP_DOWN:
                return self._stepped_down(f"{view.holder} holds the lease now (token {view.token})")

    async def release(self) -> None:
        """On a clean stop: let the lease expire now, so a standby takes over at once."""
        token = self._schedule.token
        if token is None:
            return
        try:
            await asyncio.wait_for(self._leases.release(self.holder, token), self._timing.renew_every)
        except (StoreError, TimeoutError) as exc:
            log.warning("could not release the lease: a standby takes over when it expires",
                        error=_describe(exc))

    def _stepped_down(self, why: str) -> str:
        self._schedule.check(float("inf"))  # whatever happened, this instance is no longer active
        self._on_role(Role.STANDBY, f"stepped down: {why}")
        return why

    def _failed(self, what: str, exc: BaseException) -> None:
        should, suppressed = self._error_log.should_log(what)
        if should:
            log.warning(what, error=_describe(exc), suppressed_since_last=suppressed)

    async def _sleep_until(self, at: float) -> None:
        delay = at - self._clock()
        if delay > 0:
            await self._sleep(delay)


class LeaseThread:
    """A LeaseKeeper on an event loop of its own, in a thread of its own.

    The daemon's own loop stalls for seconds at a time with a million terminals (measured on
    the shared 2-core machine: 3-8 s, while loading the fleet and at each sweep), longer than
    a renewal may wait; the keeper's thread gets the interpreter every few milliseconds
    whatever the main loop does, so a busy daemon keeps its lease. The main loop still proves
    it is alive (``beat``, every tenth of a lease): a loop silent for longer than a failover
    would take (``stall_s``, ``ha.takeover_s``) is not renewed for, and the group fails over.

    Every lease call, including the connection it opens, runs on the thread's loop; the
    daemon awaits them from its own.
    """

    def __init__(self, leases: Leases, holder: str, lease_s: float, *, on_role: RoleListener,
                 stall_s: float) -> None:
        self._leases = leases
        self._lease_s = lease_s
        self.alive_at = time.monotonic()
        self.keeper = LeaseKeeper(leases, holder, lease_s, on_role=on_role, alive=lambda: self.alive_at,
                                  stall_s=stall_s)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fleetwatch-lease", daemon=True)
        self._thread.start()

    async def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        future: concurrent.futures.Future[_T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return await asyncio.wrap_future(future)

    @property
    def token(self) -> int | None:
        return self.keeper.token

    async def acquire(self) -> int:
        return await self._call(self.keeper.acquire())

    async def hold(self) -> str:
        """Renew (in the thread) while this loop beats; returns why the instance stepped down."""
        beat = asyncio.create_task(self._beat(), name="lease-beat")
        try:
            return await self._call(self.keeper.hold())
        finally:
            beat.cancel()

    async def _beat(self) -> None:
        while True:
            self.alive_at = time.monotonic()
            await asyncio.sleep(self._lease_s / 10)

    async def release(self) -> None:
        await self._call(self.keeper.release())

    async def close(self) -> None:
        """Close the lease's connection in its own loop, then end the thread."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._call(self._leases.disconnect_lease()), 3.0)
        self._loop.call_soon_threadsafe(self._loop.stop)
        await asyncio.to_thread(self._thread.join, 5.0)
        if not self._thread.is_alive():
            self._loop.close()


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
