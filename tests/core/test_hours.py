"""Operating hours, the pure book alone (core/hours.py): what a merchant's traffic teaches, what is
watched, the closing-time rule, configured weekly hours, and what is kept for a restart.

Real days in Asia/Shanghai (the default calendar), on a fake clock: a "merchant" here is just
the times its terminals were heard from. The fortnight through the whole engine is in
test_hours_fortnight.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from fleetwatch.core.calendar import Calendar
from fleetwatch.core.hours import HoursError, OperatingHours, WeeklyHours

SHANGHAI = ZoneInfo("Asia/Shanghai")
CAL = Calendar(86400.0, SHANGHAI)
MONDAY = datetime(2026, 11, 2, tzinfo=SHANGHAI).timestamp()
"""Day 0 of every test: a Monday, local midnight."""
BEAT = 60.0


def at(day: int, hh: int, mm: int = 0) -> float:
    """Local wall-clock time on day ``day`` (no DST in Shanghai: days are 86400 s)."""
    return MONDAY + day * 86400 + hh * 3600 + mm * 60


def book(learn_days: int = 3) -> OperatingHours:
    return OperatingHours(CAL, learn_days=learn_days, cover_s=1.5 * BEAT, default_timezone="Asia/Shanghai")


def beats(start: float, end: float, closed: Iterable[tuple[float, float]] = ()) -> list[float]:
    """A heartbeat every minute from ``start`` to ``end`` except inside the ``closed`` spans."""
    spans = list(closed)
    out, t = [], start
    while t < end:
        if not any(a <= t < b for a, b in spans):
            out.append(t)
        t += BEAT
    return out


def feed(h: OperatingHours, merchant: str, times: Iterable[float]) -> None:
    for t in times:
        h.saw(merchant, t)


def nightly(days: range, close: tuple[int, int], open_: tuple[int, int]) -> list[tuple[float, float]]:
    """Closed from ``close`` (hh, mm) each evening of ``days`` to ``open_`` the next morning."""
    return [(at(d, *close), at(d + 1, *open_)) for d in days]


@pytest.mark.parametrize(("close", "open_", "expected"), [
    ((22, 0), (8, 0), {22, 23, 0, 1, 2, 3, 4, 5, 6, 7}),
    ((22, 25), (8, 0), {22, 23, *range(8)}),   # 33.5 of 60 min silent (presence lasts 1.5 beats): silent
    ((22, 35), (8, 0), {23, *range(8)}),       # 23.5 min of slot 22 silent: less than half, open
    ((20, 0), (7, 20), {20, 21, 22, 23, *range(7)}),  # slot 7: silent 20 min only, so open
    ((1, 0), (6, 0), {1, 2, 3, 4, 5}),         # closes after midnight (the night of day d+1)
])
def test_a_slot_is_closed_when_silent_for_half_of_it_on_most_days(
    close: tuple[int, int], open_: tuple[int, int], expected: set[int],
) -> None:
    """Four whole days of a nightly closure: the slots silent for at least half their length on most
    days are learned as closed, the others not; a closure that starts after midnight is its own night."""
    h = book(learn_days=3)
    h.connection_changed(True, at(0, 0) - 60)
    if close[0] < 12:  # an after-midnight closure: the night of day d is the early hours of day d+1
        spans = [(at(d + 1, *close), at(d + 1, *open_)) for d in range(-1, 5)]
    else:
        spans = nightly(range(-1, 5), close, open_)
    feed(h, "M1", beats(at(0, 0), at(4, 12), spans))
    assert h.closed_slots("M1") == frozenset(expected)


def test_a_shop_that_never_closes_learns_nothing() -> None:
    """Every slot busy every day: nothing is closed, GET says the source is none."""
    h = book(learn_days=3)
    h.connection_changed(True, at(0, 0) - 60)
    feed(h, "M1", beats(at(0, 0), at(5, 0)))
    assert h.closed_slots("M1") == frozenset()
    assert h.view("M1") == ("none", "Asia/Shanghai", {})


def test_a_dead_terminal_does_not_make_a_shop_closed_all_day() -> None:
    """A merchant silent in every slot (its only terminal died) has learned nothing: a shop is not
    closed around the clock, its silence stays an outage."""
    h = book(learn_days=3)
    h.connection_changed(True, at(0, 0) - 60)
    feed(h, "M1", beats(at(0, 0), at(0, 1)))
    h.saw("M1", at(6, 0))  # it says something again after six days: the days are finished lazily
    assert len(h.closed_slots("M1")) == 24
    assert h.closing("M1", at(6, 0), at(6, 0, 15)) is None
    assert h.view("M1")[0] == "none"


def test_only_whole_days_count() -> None:
    """The slots of the day in progress are kept aside: three closures with learn_days 3 are learned
    only once the third day is over."""
    h = book(learn_days=3)
    h.connection_changed(True, at(0, 0) - 60)
    spans = [(at(d, 12), at(d, 14)) for d in range(4)]
    feed(h, "M1", beats(at(0, 0), at(2, 23, 59), spans))
    assert h.closed_slots("M1") == frozenset()  # day 2's closure is still "today"
    feed(h, "M1", beats(at(3, 0), at(3, 1), spans))
    assert h.closed_slots("M1") == {12, 13}


def test_slots_the_daemon_did_not_watch_do_not_count() -> None:
    """A disconnection from the broker makes its slots unwatched: they count neither as silent nor as
    busy, so those slots need one more day to be learned; the other slots are not held back."""
    h = book(learn_days=3)
    h.connection_changed(True, at(0, 0) - 60)
    spans = nightly(range(5), (22, 0), (8, 0))  # day 0's morning is busy, its night is not
    feed(h, "M1", beats(at(0, 0), at(1, 21), spans))
    h.connection_changed(False, at(1, 21, 30))  # away for slots 21, 22 and 23 of day 1
    h.connection_changed(True, at(2, 0, 0))
    feed(h, "M1", beats(at(2, 0), at(3, 12), spans))
    assert h.closed_slots("M1") == {*range(8)}  # silent on 2 of days 0-2; 22 and 23: days 0 and 2 only
    feed(h, "M1", beats(at(3, 12), at(4, 12), spans))
    assert h.closed_slots("M1") == {22, 23, *range(8)}


def test_a_partial_first_day_counts_only_what_was_watched() -> None:
    """The daemon starts at 14:00 on day 0: slots before it (and the one it started in) are not
    counted, so the morning slots are learned a day after the evening ones."""
    h = book(learn_days=3)
    h.connection_changed(True, at(0, 14, 10))
    spans = nightly(range(-1, 5), (22, 0), (8, 0))
    feed(h, "M1", beats(at(0, 14, 10), at(3, 12), spans))
    assert h.closed_slots("M1") == {22, 23}  # evenings of days 0, 1, 2; mornings of days 1, 2 only
    feed(h, "M1", beats(at(3, 12), at(4, 12), spans))
    assert h.closed_slots("M1") == {22, 23, *range(8)}


def test_nothing_is_watched_before_the_first_connection() -> None:
    """Until the source says it is connected, nothing is learned at all."""
    h = book(learn_days=1)
    feed(h, "M1", beats(at(0, 0), at(3, 0), nightly(range(-1, 3), (22, 0), (8, 0))))
    assert h.closed_slots("M1") == frozenset()


@pytest.mark.parametrize(("last_seen", "noticed", "opening"), [
    (at(5, 22, 1), at(5, 22, 5), at(6, 8)),     # inside a closed slot
    (at(5, 21, 40), at(5, 21, 45), at(6, 8)),   # in the slot just before one
    (at(5, 21, 0), at(5, 21, 3), at(6, 8)),     # the start of the slot before: still just before
    (at(5, 20, 58), at(5, 21, 1), at(6, 8)),    # noticed in the slot before: just before too
    (at(5, 20, 50), at(5, 20, 53), None),       # more than a slot before closing: an outage
    (at(5, 3, 0), at(5, 3, 3), at(5, 8)),       # in the middle of the night
    (at(5, 7, 50), at(5, 7, 53), at(5, 8)),     # just before opening: judged after the opening
    (at(5, 8, 0), at(5, 8, 3), None),           # the shop is open
])
def test_a_silence_at_closing_time_waits_for_the_usual_opening(
    last_seen: float, noticed: float, opening: float | None,
) -> None:
    """closing(): a closed slot between the last message and one slot after the silence was noticed
    (it began inside a closed slot or in the slot just before one) makes it closing time; the
    answer is the start of the first open slot after the night."""
    h = book(learn_days=3)
    h.connection_changed(True, at(0, 0) - 60)
    feed(h, "M1", beats(at(0, 0), at(4, 12), nightly(range(-1, 5), (22, 0), (8, 0))))
    assert h.closing("M1", last_seen, noticed) == opening


def test_the_night_goes_on_through_slots_silent_on_every_day_so_far() -> None:
    """Evenings learned, mornings not yet (a partial first day): the night does not end at midnight
    but at the first slot that was not silent on every day counted so far."""
    h = book(learn_days=3)
    h.connection_changed(True, at(0, 14, 10))
    feed(h, "M1", beats(at(0, 14, 10), at(3, 21, 50), nightly(range(-1, 5), (22, 0), (8, 0))))
    assert h.closed_slots("M1") == {22, 23}
    assert h.closing("M1", at(3, 21, 59), at(3, 22, 2)) == at(4, 8)


def test_an_unknown_merchant_or_one_without_history_is_never_closing() -> None:
    """No history behaves as today: every silence is judged."""
    h = book()
    assert h.closing("nobody", at(1, 22), at(1, 22, 5)) is None
    assert h.closing(None, at(1, 22), at(1, 22, 5)) is None
    h.connection_changed(True, at(0, 0))
    feed(h, "M1", beats(at(0, 0), at(1, 0), [(at(0, 22), at(1, 0))]))
    assert h.closing("M1", at(0, 22), at(0, 22, 5)) is None


SUNDAYS_OFF = {"timezone": "Asia/Shanghai", "weekly": {
    "mon": ["09:00-21:00"], "tue": ["09:00-21:00"], "wed": ["09:00-21:00"], "thu": ["09:00-21:00"],
    "fri": ["09:00-21:00"], "sat": ["10:00-02:00"]}}


@pytest.mark.parametrize(("last_seen", "noticed", "opening"), [
    (at(5, 23, 0), at(5, 23, 5), None),         # Saturday 23:00: open until 02:00 (crosses midnight)
    (at(6, 1, 30), at(6, 1, 35), at(7, 9)),      # the hour before 02:00 Sunday: closing; Monday 09:00
    (at(6, 12, 0), at(6, 12, 5), at(7, 9)),      # Sunday: closed all day
    (at(0, 20, 30), at(0, 20, 35), at(1, 9)),    # Monday evening, the hour before closing
    (at(0, 19, 30), at(0, 19, 35), None),        # an hour and a half before closing: an outage
    (at(3, 7, 0), at(3, 7, 5), at(3, 9)),        # before opening on a Thursday
])
def test_configured_hours_override_learning(last_seen: float, noticed: float, opening: float | None) -> None:
    """Configured weekly hours (a day not listed is closed, a range may cross midnight) decide, whatever
    was learned: this merchant learned a 22:00-08:00 night that the configuration contradicts."""
    h = book(learn_days=1)
    h.connection_changed(True, at(-2, 0))
    feed(h, "M1", beats(at(-2, 0), at(0, 0), nightly(range(-3, 0), (22, 0), (8, 0))))
    assert h.closed_slots("M1")
    h.configure("M1", WeeklyHours.parse(SUNDAYS_OFF))
    assert h.closing("M1", last_seen, noticed) == opening
    source, zone, weekly = h.view("M1")
    assert (source, zone, weekly["sat"]) == ("configured", "Asia/Shanghai", ["10:00-02:00"])
    h.configure("M1", None)  # DELETE: back to learning
    assert h.view("M1")[0] == "learned"


def test_learned_hours_read_as_weekly_ranges() -> None:
    """GET of learned hours: the open stretch of every day, one range, crossing midnight if it does."""
    h = book(learn_days=2)
    h.connection_changed(True, at(0, 0) - 60)
    feed(h, "M1", beats(at(0, 0), at(3, 12), [(at(d, 3), at(d, 10)) for d in range(4)]))
    source, _, weekly = h.view("M1")
    assert source == "learned"
    assert weekly == {day: ["10:00-03:00"] for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}


@pytest.mark.parametrize(("body", "message"), [
    ({"timezone": "Mars/Olympus", "weekly": {"mon": ["08:00-22:00"]}}, "not a known IANA time zone"),
    ({"timezone": "Asia/Shanghai", "weekly": {"monday": ["08:00-22:00"]}}, "is not a day"),
    ({"timezone": "Asia/Shanghai", "weekly": {"mon": ["8-22"]}}, "is not a \"HH:MM-HH:MM\" range"),
    ({"timezone": "Asia/Shanghai", "weekly": {"mon": ["08:00-08:00"]}}, "empty range"),
    ({"timezone": "Asia/Shanghai", "weekly": {}}, "no opening time"),
    ({"timezone": "Asia/Shanghai", "weekly": {"mon": "08:00-22:00"}}, "must be a list"),
    ({"weekly": {"mon": ["08:00-22:00"]}}, "timezone must be"),
    ({"timezone": "Asia/Shanghai", "weekly": {"mon": ["08:00-22:00"]}, "extra": 1}, "unknown field"),
])
def test_bad_configured_hours_are_one_readable_error(body: dict[str, object], message: str) -> None:
    with pytest.raises(HoursError, match=message):
        WeeklyHours.parse(body)


def test_compressed_days_have_slots_of_a_twenty_fourth_of_day_s() -> None:
    """With day_s = 40 a slot is 40/24 s and time zones are ignored: the same rule on a small clock."""
    cal = Calendar(40.0)
    h = OperatingHours(cal, learn_days=2, cover_s=1.5, default_timezone="Asia/Shanghai")
    h.connection_changed(True, 0.0)
    t = 0.0
    while t < 4 * 40:
        if not 28 <= t % 40 < 36:  # off from slot 16.8 to slot 21.6 every day
            h.saw("M1", t)
        t += 1.0
    assert h.closed_slots("M1") == {17, 18, 19, 20, 21}  # the last beat at 27 s is present until 28.5 s
    assert h.closing("M1", 3 * 40 + 27.5, 3 * 40 + 30.5) == pytest.approx(3 * 40 + 22 * 40 / 24)


def test_learning_fits_in_64_bytes_and_survives_a_restart() -> None:
    """The learned state is 24 fields of learn_days + 1 bits plus 48 bits for today: at most 57 bytes
    with the largest learn_days. Restored from its record it answers the same; a record written
    with another learn_days keeps each slot's newest days."""
    h = book(learn_days=16)
    h.connection_changed(True, at(0, 0) - 60)
    feed(h, "M1", beats(at(0, 0), at(20, 12), nightly(range(-1, 21), (22, 0), (8, 0))))
    [rec] = [r for r in h.take_dirty() if r.merchant_id == "M1"]
    assert rec.learned is not None
    assert (rec.learned.bit_length() + 7) // 8 + (rec.today.bit_length() + 7) // 8 <= 64
    assert rec.learned.bit_length() <= 24 * 17
    again = book(learn_days=16)
    again.restore([rec], at(20, 12))
    assert again.closed_slots("M1") == h.closed_slots("M1") == {22, 23, *range(8)}
    fewer = book(learn_days=3)
    fewer.restore([rec], at(20, 12))
    assert fewer.closed_slots("M1") == {22, 23, *range(8)}
