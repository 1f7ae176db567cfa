"""Days, hours and clock times as the merchant-facing features count them (CONTRACT §8).

Detection counts in heartbeat intervals; everything a merchant reads or an operator
schedules counts in days and hours: how recent a resolved notice is (``recent_hours``),
when money is normally credited (``settle_days``), how long a signed link lives, and
later operating hours, quiet hours, hourly caps and daily digests. They all go through
one :class:`Calendar` so that a test or a demo can compress a day (``detect.day_s``)
and every one of those quantities shrinks with it.

Two regimes, as the contract says:

- ``day_s == 86400``: real days. A day starts at local midnight in the configured zone,
  ``HH:MM`` is wall-clock time in that zone (so a day with a DST change has 23 or 25
  hours), weekdays are the local date's.
- any other ``day_s``: compressed days. Day ``k`` is ``[k * day_s, (k + 1) * day_s)``
  since the Unix epoch, time zones are ignored (times read as UTC), an hour is
  ``day_s / 24``, ``HH:MM`` is that fraction of the day, and the weekday is
  ``(k + 3) mod 7`` with Monday 0 (1970-01-01 was a Thursday).

Pure: the zone is a ``tzinfo`` handed in, epoch seconds in, numbers and datetimes out.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Final

REAL_DAY_S: Final = 86400.0
_EPOCH_ORDINAL: Final = date(1970, 1, 1).toordinal()
_HHMM: Final = re.compile(r"^([01]\d|2[0-4]):([0-5]\d)$")


def parse_hhmm(text: str) -> tuple[int, int]:
    """``"08:30"`` -> (8, 30); ``"24:00"`` is the end of the day. ValueError otherwise."""
    match = _HHMM.match(text)
    if match is None:
        raise ValueError(f"not a HH:MM time: {text!r}")
    hour, minute = int(match[1]), int(match[2])
    if hour == 24 and minute != 0:
        raise ValueError(f"not a HH:MM time: {text!r}")
    return hour, minute


@dataclass(frozen=True, slots=True)
class Calendar:
    """The length of a day and the zone it is read in."""

    day_s: float = REAL_DAY_S
    zone: tzinfo = UTC

    def __post_init__(self) -> None:
        if not self.day_s > 0:
            raise ValueError("day_s must be positive")

    @property
    def real(self) -> bool:
        """True for real days (local midnight, wall-clock hours, the zone applies)."""
        return self.day_s == REAL_DAY_S

    @property
    def hour_s(self) -> float:
        """The length of an hour: ``day_s / 24``."""
        return self.day_s / 24

    def days(self, n: float) -> float:
        """``n`` days in seconds."""
        return n * self.day_s

    def hours(self, n: float) -> float:
        """``n`` hours in seconds."""
        return n * self.hour_s

    # ---- days --------------------------------------------------------------------------

    def day_index(self, t: float) -> int:
        """Which day ``t`` falls in, counted from the Unix epoch (local date when real)."""
        if self.real:
            return self.local(t).date().toordinal() - _EPOCH_ORDINAL
        return math.floor(t / self.day_s)

    def day_start(self, t: float) -> float:
        """When the day holding ``t`` began (local midnight when real)."""
        return self.start_of_day(self.day_index(t))

    def start_of_day(self, index: int) -> float:
        """When day ``index`` (see :meth:`day_index`) began."""
        if self.real:
            d = date.fromordinal(index + _EPOCH_ORDINAL)
            return _wall_clock(d, time(0, 0), self.zone)
        return index * self.day_s

    def weekday(self, t: float) -> int:
        """Monday 0 .. Sunday 6."""
        if self.real:
            return self.local(t).weekday()
        return (self.day_index(t) + 3) % 7

    # ---- clock times -------------------------------------------------------------------

    def clock_fraction(self, hhmm: str) -> float:
        """``"06:00"`` -> 0.25: the fraction of a day a clock time names (``"24:00"`` is 1)."""
        hour, minute = parse_hhmm(hhmm)
        return (hour * 60 + minute) / 1440

    def at_clock(self, index: int, hhmm: str) -> float:
        """The epoch time of clock time ``hhmm`` on day ``index`` (wall clock when real)."""
        if self.real:
            hour, minute = parse_hhmm(hhmm)
            d = date.fromordinal(index + _EPOCH_ORDINAL)
            if hour == 24:
                return _wall_clock(d + timedelta(days=1), time(0, 0), self.zone)
            return _wall_clock(d, time(hour, minute), self.zone)
        return index * self.day_s + self.clock_fraction(hhmm) * self.day_s

    def slot(self, t: float) -> int:
        """The hour of the day ``t`` falls in, 0..23 (a slot is ``day_s / 24``)."""
        if self.real:
            return self.local(t).hour
        return min(23, math.floor((t - self.day_index(t) * self.day_s) / self.hour_s))

    # ---- reading -----------------------------------------------------------------------

    def local(self, t: float) -> datetime:
        """``t`` as an aware datetime: in the zone for real days, in UTC for compressed ones."""
        return datetime.fromtimestamp(t, tz=self.zone if self.real else UTC)

    def with_zone(self, zone: tzinfo) -> Calendar:
        """The same day length read in another zone (a merchant's own)."""
        return Calendar(self.day_s, zone)


def utc_offset_text(moment: datetime) -> str:
    """``UTC+08:00`` for an aware datetime (``UTC`` for offset zero)."""
    offset = moment.utcoffset() or timedelta(0)
    if not offset:
        return "UTC"
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    hours, mins = divmod(abs(minutes), 60)
    return f"UTC{sign}{hours:02d}:{mins:02d}"


def _wall_clock(d: date, at: time, zone: tzinfo) -> float:
    """Epoch time of a local date and clock time; a time skipped by DST moves forward."""
    return datetime.combine(d, at, tzinfo=zone).timestamp()
