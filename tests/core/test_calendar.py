"""The calendar: real days in a zone, compressed days without one (CONTRACT §8)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from fleetwatch.core.calendar import Calendar, parse_hhmm, utc_offset_text

SHANGHAI = ZoneInfo("Asia/Shanghai")
BERLIN = ZoneInfo("Europe/Berlin")


def epoch(y: int, mo: int, d: int, h: int, mi: int, *, tz: ZoneInfo = SHANGHAI) -> float:
    return datetime(y, mo, d, h, mi, tzinfo=tz).timestamp()


def test_real_days_start_at_local_midnight() -> None:
    """With day_s 86400 a day starts at midnight in the zone, not at UTC midnight."""
    cal = Calendar(86400, SHANGHAI)
    t = epoch(2026, 11, 23, 7, 30)  # 23:30 UTC on the 22nd
    assert cal.day_start(t) == epoch(2026, 11, 23, 0, 0)
    assert cal.local(t).hour == 7
    assert cal.weekday(t) == 0  # 2026-11-23 is a Monday
    assert cal.slot(t) == 7
    assert cal.start_of_day(cal.day_index(t) + 1) == epoch(2026, 11, 24, 0, 0)


def test_clock_times_are_wall_clock_across_dst() -> None:
    """08:00 on a DST day is 08:00 local; that day is 23 hours long."""
    cal = Calendar(86400, BERLIN)
    day = cal.day_index(epoch(2026, 3, 29, 12, 0, tz=BERLIN))
    assert cal.at_clock(day, "08:00") == epoch(2026, 3, 29, 8, 0, tz=BERLIN)
    assert cal.at_clock(day, "24:00") - cal.start_of_day(day) == 23 * 3600


def test_compressed_days_scale_every_quantity_and_ignore_the_zone() -> None:
    """day_s 240: an hour is 10 s, 06:00 is a quarter of the day, days count from the epoch."""
    cal = Calendar(240, SHANGHAI)
    assert not cal.real
    assert cal.hour_s == 10
    assert cal.hours(24) == cal.days(1) == 240
    t = 240 * 1000 + 65
    assert cal.day_index(t) == 1000
    assert cal.day_start(t) == 240 * 1000
    assert cal.slot(t) == 6
    assert cal.clock_fraction("06:00") == 0.25
    assert cal.at_clock(1000, "06:00") == 240 * 1000 + 60
    assert cal.weekday(0) == 3  # day 0, 1970-01-01, a Thursday
    assert cal.weekday(240 * 4) == 0
    assert cal.local(t).tzinfo is UTC


@pytest.mark.parametrize("bad", ["8:00", "24:01", "25:00", "12:60", "noon", ""])
def test_bad_clock_times_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="HH:MM"):
        parse_hhmm(bad)


def test_offsets_read_as_utc_plus() -> None:
    assert utc_offset_text(datetime(2026, 1, 1, tzinfo=SHANGHAI)) == "UTC+08:00"
    assert utc_offset_text(datetime(2026, 1, 1, tzinfo=UTC)) == "UTC"
    assert utc_offset_text(datetime(2026, 1, 1, tzinfo=ZoneInfo("America/St_Johns"))) == "UTC-03:30"
