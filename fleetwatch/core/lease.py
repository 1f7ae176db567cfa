"""The lease schedule of an active/standby pair (CONTRACT.md §9), without I/O.

Several daemons share one PostgreSQL store; the one holding the lease row is *active*.
The row's expiry is set on the **database's clock** (``now() + ha.lease_s``), so the
instances never compare their own clocks with each other. What each instance decides
from its own monotonic clock is only *when to ask* and *when to give up*:

- **Active.** A renewal sent at local time ``s`` that succeeded means the database set
  the expiry to (its now, at or after ``s``) + ``lease_s``: the lease is surely ours until
  ``s + lease_s`` on our clock. Renewals go out every ``lease_s / 3``; a failed one is
  retried every ``lease_s / 12``, but only until ``step_down_at`` = that bound less a
  guard of ``lease_s / 6`` (for clock rates and the time it takes to stop). When the
  store has not answered by then, or at once when it says another instance holds the
  lease, the active steps down: from then on a standby may take over, and the active
  must not be acknowledging. A process merely too slow to renew on time (a stalled
  event loop) asks anyway, and goes on if the store says the lease is still its own.
- **Standby.** It asks to take the lease when the row says it has expired: right after
  the expiry the row reports (at least ``lease_s / 12`` from now, at most ``lease_s / 3``,
  so a holder that released the lease is noticed quickly and a busy store is not polled
  hard).

The fencing token (bumped by each takeover, checked in every commit) is what makes this
safe even when the guard is wrong: an old active's writes are refused once another
instance holds the lease. The schedule only keeps that from being the common case.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    """What an instance is (the values are ``fleetwatch_role{role}`` and ``/readyz``'s ``role``)."""

    ACTIVE = "active"
    STANDBY = "standby"


ROLES: tuple[Role, ...] = tuple(Role)


class Decision(StrEnum):
    """What the active does after a renewal attempt."""

    KEEP = "keep"
    STEP_DOWN = "step_down"


@dataclass(frozen=True, slots=True)
class LeaseTiming:
    """The intervals derived from ``ha.lease_s``."""

    lease_s: float

    def __post_init__(self) -> None:
        if not self.lease_s > 0:
            raise ValueError("lease_s must be positive")

    @property
    def renew_every(self) -> float:
        return self.lease_s / 3

    @property
    def retry_every(self) -> float:
        """After a failed attempt (the store did not answer), and the standby's shortest wait."""
        return self.lease_s / 12

    @property
    def guard(self) -> float:
        """How long before the lease surely ends the active gives it up."""
        return self.lease_s / 6


@dataclass(frozen=True, slots=True)
class LeaseView:
    """What the lease row says, as the store reports it after a claim or renewal.

    ``held`` is True when the caller holds the lease now (it just took or renewed it);
    ``remaining_s`` is the time to the row's expiry by the database's clock (0 or less:
    expired, or no row at all).
    """

    held: bool
    token: int | None
    holder: str | None
    remaining_s: float


class LeaseSchedule:
    """One instance's side of the lease: its role, token, and when to act next (local clock)."""

    def __init__(self, timing: LeaseTiming) -> None:
        self.timing = timing
        self.role = Role.STANDBY
        self.token: int | None = None
        self.good_until = -math.inf
        """Local time until which the lease is surely ours (active only)."""
        self.next_at = -math.inf
        """Local time of the next claim (standby) or renewal (active)."""

    @property
    def step_down_at(self) -> float:
        """Local time at which an active that could not renew must have stopped."""
        return self.good_until - self.timing.guard

    # ---- standby -------------------------------------------------------------------

    def claimed(self, view: LeaseView, sent_at: float) -> Role:
        """The answer to a claim sent at ``sent_at``: active with the new token, or still standby."""
        if view.held:
            if view.token is None:
                raise ValueError("a held lease has a token")
            self.role, self.token = Role.ACTIVE, view.token
            self._renewed(sent_at)
            return self.role
        wait = min(self.timing.renew_every, max(self.timing.retry_every, view.remaining_s))
        self.next_at = sent_at + wait
        return self.role

    def claim_failed(self, now: float) -> None:
        """The store did not answer a claim: try again shortly."""
        self.next_at = now + self.timing.retry_every

    # ---- active --------------------------------------------------------------------

    def renewed(self, view: LeaseView, sent_at: float, now: float) -> Decision:
        """The answer to a renewal sent at ``sent_at``, received at ``now``.

        The store says who holds the lease, and that is what counts: held with our token, it
        is ours until ``sent_at + lease_s`` even if this process was too slow to renew on
        time (a stalled event loop): nobody took it meanwhile, since a takeover changes the
        token. An answer that arrives past ``step_down_at`` is followed by another renewal
        at once.
        """
        if not view.held:
            return self._step_down()
        self._renewed(sent_at)
        if now >= self.step_down_at:
            self.next_at = now
        return Decision.KEEP

    def renew_failed(self, now: float) -> Decision:
        """The store did not answer a renewal (an error, or no answer in time): retried until
        ``step_down_at``, then the active steps down (it can no longer know it holds the lease)."""
        if now >= self.step_down_at:
            return self._step_down()
        self.next_at = min(now + self.timing.retry_every, self.step_down_at)
        return Decision.KEEP

    def check(self, now: float) -> Decision:
        """Whether the active must step down now (its lease may be about to end)."""
        if self.role is Role.ACTIVE and now >= self.step_down_at:
            return self._step_down()
        return Decision.KEEP if self.role is Role.ACTIVE else Decision.STEP_DOWN

    def attempt_timeout(self, now: float) -> float:
        """How long to wait for the store's answer to the next attempt sent at ``now``: for the
        active, until ``step_down_at`` (one short attempt when a stall has already passed it)."""
        if self.role is Role.ACTIVE:
            return max(self.timing.retry_every, self.step_down_at - now)
        return self.timing.renew_every

    def _renewed(self, sent_at: float) -> None:
        self.good_until = sent_at + self.timing.lease_s
        self.next_at = sent_at + self.timing.renew_every

    def _step_down(self) -> Decision:
        self.role, self.token = Role.STANDBY, None
        self.good_until = -math.inf
        return Decision.STEP_DOWN
