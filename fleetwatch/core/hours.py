"""Operating hours: when a shop is usually closed, learned from its traffic or configured (CONTRACT §8).

Shops close, and thousands of them switch their terminals off every evening without a
clean ``shutdown``. A silence that begins at closing time is not an outage; a terminal
still silent a while after the shop's usual opening is. This module answers one question
for the engine, :meth:`OperatingHours.closing`: *did this silence begin at the shop's
closing time, and if so, when does the shop usually open again?* Everything else here
serves that answer.

**Learned hours.** Per merchant and per slot of the day (an hour, ``day_s / 24``):

- The merchant counts as present for ``cover_s`` after each message of any of its
  terminals (a heartbeat and a half: a beat that comes a little late is not silence).
  A slot is *silent* on a day when the merchant was not present for at least half of it.
- Only slots the daemon watched while connected to the broker count
  (:meth:`OperatingHours.connection_changed`): a slot with any disconnection in it, or
  before the daemon started, is not counted at all, silent or not.
- Only whole days: the slots of the day in progress are kept aside (``today``) and join
  the history when the day is over.
- Once a slot has ``learn_days`` counted days in its history, it is a *usual closed slot*
  when it was silent on most of them. A merchant whose every slot looks closed has
  learned nothing (a shop is not closed all day: its terminals are just dead).

The cost is what the issue asks: :meth:`saw` is a dictionary lookup and a few float
comparisons per message; a slot ends lazily, when the merchant's next message or the
next question about it comes. A merchant's learning is 24 history fields of
``learn_days + 1`` bits (a leading 1 marks how many days a field holds) plus 48 bits for
the day in progress: at most 456 bits (57 bytes) with the largest ``learn_days`` (16),
24 + 6 bytes with the default 7. Python's own object overhead comes on top.

**Configured hours** (:class:`WeeklyHours`, ``PUT /api/v1/merchants/{id}/hours``) override
learning: weekly opening ranges in the merchant's time zone, a range may cross midnight,
a day not listed is closed (so "closed on Sundays" is configured, not learned).

**The rule** (:meth:`OperatingHours.closing`): a silence is at closing time when a closed
time falls between the terminal's last message and one slot after the moment its
silence was noticed; that is, the silence began inside a closed slot or in the slot just
before one (counting from the moment it was noticed keeps the rule right when a slot is
only a few heartbeats long, as in compressed test days). The answer is the usual opening:
the start of the first slot after that closed stretch that is not part of the night. A
slot not learned yet (fewer counted days) but silent on every day counted so far is part
of the night (a partial first day leaves the mornings a day short); a slot never counted
is not. Configured hours answer with the start of their next opening range.

Pure: times are passed in, the calendar and time zones are handed in.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import tzinfo
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fleetwatch.core.calendar import Calendar, parse_hhmm
from fleetwatch.core.model import MerchantHoursRecord

SLOTS: Final = 24
WEEKDAYS: Final[tuple[str, ...]] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_LEARN_DAYS: Final = 16
_TODAY_WATCHED: Final = SLOTS
"""Bit offset of the "watched" flags in a merchant's ``today`` field (silent flags at 0..23)."""


# ---- configured hours --------------------------------------------------------------------


class HoursError(ValueError):
    """A configured-hours body an operator sent is not valid (one readable line)."""


@dataclass(frozen=True, slots=True)
class WeeklyHours:
    """A merchant's configured opening hours: weekday -> ranges ``(start, end)`` as ``HH:MM``.

    A range whose end is not after its start crosses midnight (``"22:00-02:00"``); a day not
    listed is closed. ``zone`` is ``timezone`` as a tzinfo (ignored on compressed days).
    """

    timezone: str
    weekly: Mapping[str, tuple[tuple[str, str], ...]]
    zone: tzinfo

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> WeeklyHours:
        """The API's ``{"timezone": ..., "weekly": {"mon": ["08:00-22:00"], ...}}``; HoursError if wrong."""
        unknown = set(body) - {"timezone", "weekly"}
        if unknown:
            raise HoursError(f"unknown field(s) {sorted(unknown)}: expected timezone and weekly")
        name = body.get("timezone")
        if not isinstance(name, str) or not name:
            raise HoursError("timezone must be an IANA time zone name, e.g. Asia/Shanghai")
        try:
            zone = ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise HoursError(f"timezone {name!r} is not a known IANA time zone") from exc
        weekly = body.get("weekly")
        if not isinstance(weekly, Mapping):
            raise HoursError('weekly must be an object such as {"mon": ["08:00-22:00"]}')
        days: dict[str, tuple[tuple[str, str], ...]] = {}
        for day, ranges in weekly.items():
            if day not in WEEKDAYS:
                raise HoursError(f"weekly: {day!r} is not a day; days are {', '.join(WEEKDAYS)}")
            if not isinstance(ranges, list) or not all(isinstance(r, str) for r in ranges):
                raise HoursError(f'weekly.{day} must be a list of "HH:MM-HH:MM" ranges')
            days[day] = tuple(_parse_range(day, r) for r in ranges)
        if not any(days.values()):
            raise HoursError("weekly lists no opening time at all; DELETE the hours to go back to learning")
        return cls(name, {d: days[d] for d in WEEKDAYS if d in days}, zone)

    def to_json(self) -> dict[str, Any]:
        """The API's (and the store's) shape."""
        return {"timezone": self.timezone,
                "weekly": {day: [f"{s}-{e}" for s, e in ranges] for day, ranges in self.weekly.items()}}

    def open_intervals(self, cal: Calendar, start: float, end: float) -> list[tuple[float, float]]:
        """The merged open intervals that overlap ``[start, end)`` (``cal`` in the merchant's zone)."""
        first, last = cal.day_index(start) - 1, cal.day_index(end) + 1
        spans: list[tuple[float, float]] = []
        for day in range(first, last + 1):
            weekday = WEEKDAYS[cal.weekday(cal.start_of_day(day) + cal.hour_s / 2)]
            for s, e in self.weekly.get(weekday, ()):
                a = cal.at_clock(day, s)
                b = cal.at_clock(day if _minutes(e) > _minutes(s) else day + 1, e)
                if b > a and b > start and a < end:
                    spans.append((a, b))
        spans.sort()
        merged: list[tuple[float, float]] = []
        for a, b in spans:
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        return merged


def _minutes(hhmm: str) -> int:
    hour, minute = parse_hhmm(hhmm)
    return hour * 60 + minute


def _parse_range(day: str, text: str) -> tuple[str, str]:
    start, sep, end = text.partition("-")
    try:
        if not sep:
            raise ValueError(text)
        s, e = _minutes(start), _minutes(end)
    except ValueError as exc:
        raise HoursError(f'weekly.{day}: {text!r} is not a "HH:MM-HH:MM" range') from exc
    if s in (e, 24 * 60):
        raise HoursError(f"weekly.{day}: {text!r} is an empty range")
    return start, end


# ---- the calendar's slots ----------------------------------------------------------------


class _Slots:
    """Absolute slot numbers (``day * 24 + hour``) and their bounds, for one calendar."""

    __slots__ = ("_cal", "_hour")

    def __init__(self, cal: Calendar) -> None:
        self._cal = cal
        self._hour = cal.hour_s

    def of(self, t: float) -> int:
        if self._cal.real:
            return self._cal.day_index(t) * SLOTS + self._cal.slot(t)
        return math.floor(t / self._hour)

    def bounds(self, slot: int) -> tuple[float, float]:
        if self._cal.real:
            day, k = divmod(slot, SLOTS)
            return self._cal.at_clock(day, f"{k:02d}:00"), self._cal.at_clock(day, f"{k + 1:02d}:00")
        return slot * self._hour, (slot + 1) * self._hour


# ---- learned hours -----------------------------------------------------------------------


class _Learning:
    """One merchant's learning: the day in progress and the history of whole days.

    ``hist`` holds 24 fields of ``learn_days + 1`` bits, field k for slot k: a leading 1 and
    below it one bit per counted day, newest lowest (1: silent). ``today`` has bit k set when
    slot k was silent today and bit 24 + k when it was watched.
    """

    __slots__ = ("covered", "day", "hist", "mark", "silent_s", "slot", "slot_end", "today")

    def __init__(self, hist: int, day: int, today: int) -> None:
        self.hist = hist
        self.day = day
        self.today = today
        self.slot = 0
        self.slot_end = float("-inf")
        self.mark = float("-inf")
        """Silence of the current slot is accounted up to here."""
        self.covered = float("-inf")
        """The merchant counts as present until here (its last message + cover_s)."""
        self.silent_s = 0.0


class OperatingHours:
    """Learned and configured operating hours of every merchant, and the closing-time rule."""

    def __init__(
        self, cal: Calendar, *, learn_days: int, cover_s: float, default_timezone: str,
    ) -> None:
        if not 1 <= learn_days <= MAX_LEARN_DAYS:
            raise ValueError(f"learn_days must be 1..{MAX_LEARN_DAYS}")
        self._cal = cal
        self._slots = _Slots(cal)
        self._n = learn_days
        self._width = learn_days + 1
        self._field = (1 << self._width) - 1
        self._empty = sum(1 << (k * self._width) for k in range(SLOTS))
        self._cover = cover_s
        self._default_tz = default_timezone
        self._learn: dict[str, _Learning] = {}
        self._configured: dict[str, WeeklyHours] = {}
        self._down: list[list[float]] = [[float("-inf"), float("inf")]]
        """Intervals the daemon was not connected to the broker (the last may still be open)."""
        self._dirty: set[str] = set()

    # ---- start and persistence -----------------------------------------------------------

    def restore(self, records: Iterable[MerchantHoursRecord], now: float) -> None:
        """Learning and configured hours from the store; everything before the next connect is unwatched."""
        for rec in records:
            if rec.configured is not None:
                self._configured[rec.merchant_id] = WeeklyHours.parse(rec.configured)
            if rec.learned is not None and 1 <= rec.learn_days <= MAX_LEARN_DAYS:
                hist = self._repack(rec.learned, rec.learn_days)
                self._learn[rec.merchant_id] = self._start(_Learning(hist, rec.day, rec.today), now)

    def record(self, merchant_id: str) -> MerchantHoursRecord:
        """What the store keeps of one merchant."""
        m = self._learn.get(merchant_id)
        hours = self._configured.get(merchant_id)
        return MerchantHoursRecord(
            merchant_id, learned=None if m is None else m.hist, learn_days=self._n, day=0 if m is None else m.day,
            today=0 if m is None else m.today, configured=None if hours is None else hours.to_json(),
        )

    def take_dirty(self) -> list[MerchantHoursRecord]:
        """Records of the merchants whose learning or configuration changed since the last call."""
        dirty, self._dirty = self._dirty, set()
        return [self.record(mid) for mid in sorted(dirty)]

    def _repack(self, hist: int, learn_days: int) -> int:
        """A history stored with another ``hours_learn_days``: keep each slot's newest days."""
        if learn_days == self._n:
            return hist
        width, n, out = learn_days + 1, self._n, 0
        for k in range(SLOTS):
            value = (hist >> (k * width)) & ((1 << width) - 1)
            days = max(value.bit_length() - 1, 0)
            keep = min(days, n)
            value = (value & ((1 << keep) - 1)) | (1 << keep)
            out |= value << (k * self._width)
        return out

    # ---- what the engine tells it --------------------------------------------------------

    def connection_changed(self, connected: bool, now: float) -> None:
        """The daemon's subscription came up or went down: only connected time is watched."""
        down = self._down
        is_down = bool(down) and down[-1][1] == float("inf")
        if connected and is_down:
            down[-1][1] = now
        elif not connected and not is_down:
            down.append([now, float("inf")])
        horizon = now - self._cal.days(self._n + 2)
        while len(down) > 1 and down[0][1] < horizon:
            down.pop(0)

    def saw(self, merchant_id: str, now: float) -> None:
        """A terminal of the merchant sent something (any message that proves liveness)."""
        m = self._learn.get(merchant_id)
        if m is None or now >= m.slot_end:
            self._saw_in_a_new_slot(merchant_id, m, now)
            return
        covered = m.covered
        if covered < now:  # the merchant was away since ``covered``
            mark = m.mark
            m.silent_s += now - (covered if covered > mark else mark)
            m.mark = now
        until = now + self._cover
        if until > covered:
            m.covered = until

    def _saw_in_a_new_slot(self, merchant_id: str, m: _Learning | None, now: float) -> None:
        """:meth:`saw` for a merchant not seen yet, or whose slot ended since its last message."""
        if m is None:
            m = self._learn[merchant_id] = self._start(_Learning(self._empty, 0, 0), now)
        else:
            self._advance(merchant_id, m, now)
        m.covered = max(m.covered, now + self._cover)

    def configure(self, merchant_id: str, hours: WeeklyHours | None) -> None:
        """Configured hours override learning; None goes back to learning."""
        if hours is None:
            self._configured.pop(merchant_id, None)
        else:
            self._configured[merchant_id] = hours
        self._dirty.add(merchant_id)

    # ---- the question --------------------------------------------------------------------

    def closing(self, merchant_id: str | None, last_seen: float, noticed: float) -> float | None:
        """The usual opening after the closed time this silence began at, or None when it did
        not begin at closing time (or nothing is known of the merchant's hours)."""
        if merchant_id is None:
            return None
        configured = self._configured.get(merchant_id)
        if configured is not None:
            return self._configured_closing(configured, last_seen, noticed)
        m = self._learn.get(merchant_id)
        if m is None:
            return None
        self._advance(merchant_id, m, noticed)
        closed, night = self._learned(m)
        if closed == 0 or closed == (1 << SLOTS) - 1:
            return None
        slots = self._slots
        first, last = slots.of(last_seen), slots.of(noticed + self._cal.hour_s)
        for s in range(first, min(last, first + SLOTS) + 1):
            if closed >> (s % SLOTS) & 1:
                return slots.bounds(_opening(s, night))[0]
        return None

    def _configured_closing(self, hours: WeeklyHours, last_seen: float, noticed: float) -> float | None:
        cal = self._cal.with_zone(hours.zone)
        until = noticed + cal.hour_s
        spans = hours.open_intervals(cal, last_seen, until + cal.days(8))
        t = last_seen
        for a, b in spans:
            if b <= t:
                continue
            if a > t:
                break  # [t, a) is closed
            t = b
        if t > until:
            return None  # open from the last message until an hour after the silence was noticed
        return next((a for a, _ in spans if a >= t), None)

    def view(self, merchant_id: str) -> tuple[str, str, dict[str, list[str]]]:
        """(source, timezone, weekly) for ``GET /api/v1/merchants/{id}/hours``.

        Learned hours are the same every day (weekly patterns are configured, not learned):
        the open stretches of the day, one range per stretch (crossing midnight when it does).
        """
        configured = self._configured.get(merchant_id)
        if configured is not None:
            data = configured.to_json()
            return "configured", data["timezone"], data["weekly"]
        m = self._learn.get(merchant_id)
        closed = 0 if m is None else self._learned(m)[0]
        if closed == 0 or closed == (1 << SLOTS) - 1:
            return "none", self._default_tz, {}
        ranges = _open_ranges(closed)
        return "learned", self._default_tz, {day: list(ranges) for day in WEEKDAYS}

    def zone_of(self, merchant_id: str) -> tzinfo | None:
        """The merchant's own time zone (its configured hours'), None when it has none."""
        hours = self._configured.get(merchant_id)
        return None if hours is None else hours.zone

    def closed_slots(self, merchant_id: str) -> frozenset[int]:
        """The merchant's learned usual closed slots (0..23) as of its last finished day."""
        m = self._learn.get(merchant_id)
        mask = 0 if m is None else self._learned(m)[0]
        return frozenset(k for k in range(SLOTS) if mask >> k & 1)

    # ---- learning ------------------------------------------------------------------------

    def _start(self, m: _Learning, now: float) -> _Learning:
        """Begin accounting at ``now`` (the slot in progress is partly unwatched anyway)."""
        m.slot = self._slots.of(now)
        m.slot_end = self._slots.bounds(m.slot)[1]
        m.mark = m.covered = now
        m.silent_s = 0.0
        if m.slot // SLOTS != m.day:
            self._new_day(m, m.slot // SLOTS)  # a stored day that is over joins the history
        return m

    def _advance(self, merchant_id: str, m: _Learning, t: float) -> None:
        """Finish every slot that ended before ``t`` (lazily: at the merchant's next message or question)."""
        if t < m.slot_end:
            self._account(m, t)
            return
        horizon = self._slots.of(t) - SLOTS * (self._n + 1)
        if m.slot < horizon:  # away for longer than the history: older days would be shifted out anyway
            m.slot, m.silent_s = horizon, 0.0
            m.slot_end = self._slots.bounds(horizon)[1]
            m.mark = self._slots.bounds(horizon)[0]
        while t >= m.slot_end:
            self._account(m, m.slot_end)
            self._finish(m, m.slot)
            m.slot += 1
            m.slot_end = self._slots.bounds(m.slot)[1]
            m.silent_s = 0.0
        if m.slot // SLOTS != m.day:
            self._new_day(m, m.slot // SLOTS)
        self._account(m, t)
        self._dirty.add(merchant_id)

    @staticmethod
    def _account(m: _Learning, t: float) -> None:
        """Add the silence of the current slot up to ``t``."""
        start = m.covered if m.covered > m.mark else m.mark
        if start < t:
            m.silent_s += t - start
        m.mark = max(m.mark, t)

    def _finish(self, m: _Learning, slot: int) -> None:
        """A slot ended: note it for today when it was watched."""
        day, k = divmod(slot, SLOTS)
        if day != m.day:
            self._new_day(m, day)
        start, end = self._slots.bounds(slot)
        if end <= start or not self._watched(start, end):
            return
        m.today |= 1 << (_TODAY_WATCHED + k)
        if 2 * m.silent_s >= end - start:
            m.today |= 1 << k

    def _new_day(self, m: _Learning, day: int) -> None:
        """The day in progress is over: its watched slots join the history."""
        if m.today:
            hist, width, field, n = m.hist, self._width, self._field, self._n
            for k in range(SLOTS):
                if m.today >> (_TODAY_WATCHED + k) & 1:
                    shift = k * width
                    value = (hist >> shift) & field
                    value = (value << 1) | (m.today >> k & 1)
                    if value.bit_length() > n + 1:
                        value = (value & ((1 << n) - 1)) | (1 << n)
                    hist = (hist & ~(field << shift)) | (value << shift)
            m.hist = hist
        m.today, m.day = 0, day

    def _learned(self, m: _Learning) -> tuple[int, int]:
        """(closed, night) slot masks.

        Closed: the slot has ``learn_days`` counted days and was silent on most of them.
        Night: closed, or not learned yet but silent on every day counted so far (a
        partial first day leaves the mornings short of days): the night goes on through
        them when looking for the usual opening. A slot never counted ends it.
        """
        closed = night = 0
        width, field, n = self._width, self._field, self._n
        for k in range(SLOTS):
            value = (m.hist >> (k * width)) & field
            days, silent = value.bit_length() - 1, value.bit_count() - 1
            if days == n and 2 * silent > n:
                closed |= 1 << k
                night |= 1 << k
            elif 0 < days < n and silent == days:
                night |= 1 << k
        return closed, night

    def _watched(self, start: float, end: float) -> bool:
        """True when the daemon was connected for the whole of ``[start, end)``."""
        return not any(a < end and b > start for a, b in self._down)


def _opening(slot: int, night: int) -> int:
    """The slot the shop usually opens at after the closed ``slot``: the first slot after it
    that is not part of the night (see :meth:`OperatingHours._learned`)."""
    s = slot + 1
    while night >> (s % SLOTS) & 1 and s < slot + SLOTS:
        s += 1
    return s


def _open_ranges(closed: int) -> list[str]:
    """``HH:MM-HH:MM`` ranges of the open stretches of a day, given its closed-slot mask."""
    open_slots = [k for k in range(SLOTS) if not closed >> k & 1]
    # Start each stretch right after a closed slot, so a stretch through midnight is one range.
    starts = [k for k in open_slots if closed >> ((k - 1) % SLOTS) & 1]
    out: list[str] = []
    for start in starts:
        end = start
        while not closed >> (end % SLOTS) & 1:
            end += 1
        out.append(f"{start:02d}:00-{end % SLOTS if end % SLOTS else 24:02d}:00")
    return sorted(out)


__all__ = ["MAX_LEARN_DAYS", "WEEKDAYS", "HoursError", "OperatingHours", "WeeklyHours"]
