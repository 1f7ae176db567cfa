"""The lease schedule on a fake clock: when a standby asks, when an active renews, retries and steps down."""

from __future__ import annotations

import math

import pytest

from fleetwatch.core.lease import Decision, LeaseSchedule, LeaseTiming, LeaseView, Role

LEASE = 6.0
T = LeaseTiming(LEASE)  # renew every 2 s, retry every 0.5 s, guard 1 s


def held(token: int = 1) -> LeaseView:
    return LeaseView(True, token, "me", LEASE)


def other(remaining: float, token: int = 1) -> LeaseView:
    return LeaseView(False, token, "other", remaining)


def active(at: float = 100.0, token: int = 3) -> LeaseSchedule:
    s = LeaseSchedule(T)
    assert s.claimed(held(token), at) is Role.ACTIVE
    return s


def test_intervals_follow_the_lease() -> None:
    assert (T.renew_every, T.retry_every, T.guard) == (2.0, 0.5, 1.0)
    with pytest.raises(ValueError, match="positive"):
        LeaseTiming(0)


@pytest.mark.parametrize(("remaining", "wait"), [
    (4.0, 2.0),    # a live holder: ask again after a renewal interval, not hammering the store
    (1.2, 1.2),    # it expires sooner: ask right when it does
    (0.1, 0.5),    # about to expire: not sooner than the retry interval
    (-3.0, 0.5),   # expired, but another standby was quicker
])
def test_a_standby_asks_again_when_the_lease_it_saw_expires(remaining: float, wait: float) -> None:
    s = LeaseSchedule(T)
    assert s.claimed(other(remaining), 10.0) is Role.STANDBY
    assert s.next_at == pytest.approx(10.0 + wait)
    assert s.token is None
    assert s.check(10.0) is Decision.STEP_DOWN  # a standby never counts as active


def test_a_claim_that_fails_is_retried_shortly() -> None:
    s = LeaseSchedule(T)
    s.claim_failed(10.0)
    assert s.next_at == 10.5
    assert s.role is Role.STANDBY


def test_taking_the_lease_counts_from_when_the_claim_was_sent() -> None:
    """The database set the expiry after the claim left: the lease is surely held until sent + lease_s."""
    s = active(at=100.0, token=3)
    assert (s.role, s.token) == (Role.ACTIVE, 3)
    assert s.good_until == 106.0
    assert s.next_at == 102.0
    assert s.step_down_at == 105.0
    with pytest.raises(ValueError, match="token"):
        LeaseSchedule(T).claimed(LeaseView(True, None, "me", LEASE), 0.0)


def test_renewals_move_the_deadline_from_their_send_time() -> None:
    s = active(at=100.0)
    assert s.renewed(held(), 102.0, 102.3) is Decision.KEEP
    assert (s.good_until, s.next_at, s.step_down_at) == (108.0, 104.0, 107.0)


def test_another_holder_means_stepping_down_at_once() -> None:
    s = active(at=100.0)
    assert s.renewed(other(5.0, token=4), 102.0, 102.1) is Decision.STEP_DOWN
    assert (s.role, s.token, s.good_until) == (Role.STANDBY, None, -math.inf)


def test_an_answer_that_comes_late_but_says_held_keeps_the_lease_and_renews_at_once() -> None:
    """A renewal sent at 102 answered at 107.5 (past the guard): the store says the lease is still
    ours (nobody took it: a takeover changes the token), so it is kept, and renewed again now."""
    s = active(at=100.0)
    assert s.renewed(held(), 102.0, 107.5) is Decision.KEEP
    assert (s.role, s.good_until, s.next_at) == (Role.ACTIVE, 108.0, 107.5)


@pytest.mark.parametrize(("view", "decision"), [
    (held(), Decision.KEEP),                   # stalled, but nobody took the lease: carry on
    (other(4.0, token=4), Decision.STEP_DOWN),  # a standby took over during the stall
])
def test_a_process_stalled_past_its_deadline_asks_the_store_before_giving_up(
    view: LeaseView, decision: Decision,
) -> None:
    s = active(at=100.0)  # step_down_at 105; the process wakes at 111
    assert s.attempt_timeout(111.0) == T.retry_every  # one short attempt
    assert s.renewed(view, 111.0, 111.1) is decision
    if decision is Decision.KEEP:
        assert (s.good_until, s.next_at) == (117.0, 113.0)


def test_failed_renewals_are_retried_until_the_guard_then_the_active_steps_down() -> None:
    s = active(at=100.0)  # step_down_at 105
    times = []
    now = 102.0
    while s.renew_failed(now) is Decision.KEEP:
        times.append(s.next_at)
        now = s.next_at
    assert times == [102.5, 103.0, 103.5, 104.0, 104.5, 105.0]
    assert now == 105.0
    assert s.role is Role.STANDBY


def test_an_attempt_waits_until_the_step_down_time_and_no_less_than_a_retry() -> None:
    s = active(at=100.0)
    assert s.attempt_timeout(102.0) == 3.0
    assert s.attempt_timeout(104.8) == T.retry_every  # never less than one short attempt
    assert s.attempt_timeout(106.0) == T.retry_every
    assert LeaseSchedule(T).attempt_timeout(0.0) == T.renew_every


@pytest.mark.parametrize("latency", [0.0, 0.05, 0.4, 1.5])
@pytest.mark.parametrize("lost_at", [100.3, 101.9, 102.0, 103.7])
def test_an_active_that_loses_the_store_has_stepped_down_before_a_standby_can_take_over(
    latency: float, lost_at: float,
) -> None:
    """Both clocks tick alike; the database's expiry is its now (when a renewal arrives) + lease_s.

    The active renews on schedule until the store stops answering at ``lost_at``; from then on
    every attempt fails. It must have stepped down strictly before the database's expiry, the
    earliest moment a standby's claim can succeed.
    """
    s = active(at=100.0)
    db_expiry = 100.0 + latency + LEASE
    now = s.next_at
    while True:
        if now < lost_at:
            db_expiry = now + latency + LEASE
            decision = s.renewed(held(), now, now + 2 * latency)
        else:
            decision = s.renew_failed(now)
        if decision is Decision.STEP_DOWN:
            break
        now = s.next_at
    assert now <= db_expiry - T.guard
