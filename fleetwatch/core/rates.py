"""Intermittent failures judged by rates: a terminal's failing share over its last attempts.

A link that fails four attempts in five, or a printer that fails every other receipt,
costs the merchant sales while it lasts, even though some attempts go through. Counting
a *run* of errors that any success resets hides it (one good attempt ends the incident,
and the next run waits again). So the link (``network``/``comm_errors``) and the printer
(``printer``/``print_errors``) are judged over a sliding window of a terminal's last
attempts:

- **window**: the last ``rate_window_attempts`` attempts, none older than
  ``rate_window_intervals``;
- **open** when the window holds at least ``rate_min_attempts`` attempts (or only
  failures), at least the signal's minimum failures (``comm_error_min``,
  ``print_error_min``) and a failing share of at least ``rate_open_share`` — and at
  least ``rate_baseline_factor`` times the fleet's own baseline share, so a fleet on a
  poor network is judged against itself;
- **clear** when the share falls below ``rate_clear_share`` (with enough attempts to
  say so), or when no attempt has failed for ``clear_after_intervals`` (the failures
  stopped, or the terminal stopped trading); the incident book's hysteresis follows.

Between the two shares nothing changes, so a single success never ends the incident and
a single failure never opens one.

Cost: nothing per heartbeat. Per transaction whose outcome says something about the link
or the printer, two fleet counters; a terminal gets its own window only at its first
failure and drops it once the window holds no failure and nothing is open.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final, Literal

from fleetwatch.config import DetectSettings

Verdict = Literal["open", "clear", "keep"]

LINK: Final = "link"
PRINT: Final = "print"


@dataclass(frozen=True, slots=True)
class RateRule:
    """The thresholds of one signal, from the settings (durations in seconds)."""

    window_attempts: int
    window_s: float
    min_attempts: int
    min_failures: int
    open_share: float
    clear_share: float
    baseline_factor: float
    clear_after_s: float

    @classmethod
    def for_signal(cls, cfg: DetectSettings, signal: str) -> RateRule:
        """The link rule (``comm_error_min``) or the print rule (``print_error_min``)."""
        return cls(
            window_attempts=cfg.rate_window_attempts,
            window_s=cfg.intervals(cfg.rate_window_intervals),
            min_attempts=cfg.rate_min_attempts,
            min_failures=cfg.comm_error_min if signal == LINK else cfg.print_error_min,
            open_share=cfg.rate_open_share,
            clear_share=cfg.rate_clear_share,
            baseline_factor=cfg.rate_baseline_factor,
            clear_after_s=cfg.intervals(cfg.clear_after_intervals),
        )

    def open_threshold(self, baseline: float) -> float:
        """The share that opens: ``open_share``, or more on a fleet that fails more anyway
        (never above 1, so a terminal failing every attempt always counts)."""
        return min(1.0, max(self.open_share, self.baseline_factor * baseline))


_EPS: Final = 1e-9
"""Shares are compared with this slack: 12 of 20 is 60% even when 3 x 0.2 is 0.6000000000000001."""


def judge(attempts: int, failures: int, baseline: float, held: bool, rule: RateRule) -> Verdict:
    """What a window of ``attempts`` with ``failures`` says, for a condition ``held`` or not.

    Not held: ``open`` when there is enough evidence and the share reaches the threshold.
    Enough evidence is ``min_attempts`` attempts, or at least ``min_failures`` attempts
    that all failed (a link down on every attempt is clear long before the fifth one;
    a window starts at a terminal's first failure, so fewer mixed attempts than that would
    overstate the share). Held: ``clear`` when ``min_attempts`` attempts show a share below
    the clear share. Anything else (every share between the two included) keeps things
    as they are.
    """
    if attempts <= 0:
        return "keep"
    share = failures / attempts
    if not held:
        enough = attempts >= rule.min_attempts or failures == attempts
        if enough and failures >= rule.min_failures and share >= rule.open_threshold(baseline) - _EPS:
            return "open"
        return "keep"
    if attempts >= rule.min_attempts and share < rule.clear_share:
        return "clear"
    return "keep"


class AttemptWindow:
    """One terminal's last attempts for one signal: (time, failed), oldest first."""

    __slots__ = ("attempts", "failures", "last_failure_at", "pending", "wake_at")

    def __init__(self, size: int) -> None:
        self.attempts: deque[tuple[float, bool]] = deque(maxlen=size)
        self.failures = 0
        self.last_failure_at: float | None = None
        self.pending = False
        """Open is decided but waits for the correlation window (link only)."""
        self.wake_at: float | None = None
        """When the engine will ask again (a wait to open, or a check that failures stopped)."""

    def record(self, at: float, failed: bool) -> None:
        """One attempt; the oldest leaves once the window is full."""
        q = self.attempts
        if len(q) == q.maxlen and q[0][1]:
            self.failures -= 1
        q.append((at, failed))
        if failed:
            self.failures += 1
            self.last_failure_at = at

    def expire(self, now: float, window_s: float) -> None:
        """Forget attempts older than the window's time span."""
        q, limit = self.attempts, now - window_s
        while q and q[0][0] < limit:
            if q.popleft()[1]:
                self.failures -= 1

    def first_failure_at(self) -> float | None:
        """When the oldest failure still in the window happened."""
        for at, failed in self.attempts:
            if failed:
                return at
        return None

    def idle(self) -> bool:
        """No failure left and nothing waiting: the window can be dropped."""
        return self.failures == 0 and not self.pending and self.wake_at is None


class TerminalRates:
    """A terminal's windows, allocated at its first failure of either kind."""

    __slots__ = ("link", "print")

    def __init__(self) -> None:
        self.link: AttemptWindow | None = None
        self.print: AttemptWindow | None = None


class FleetShare:
    """The fleet's failing share of one signal's attempts, smoothed per correlation window.

    The counters take every attempt of the fleet (two additions per transaction); once
    per correlation window the period's share is folded into the baseline, unless the
    period is not normal (an upstream outage is open: its failures are not the fleet's
    baseline) or had too few attempts to say anything.
    """

    __slots__ = ("attempts", "baseline", "failures")

    def __init__(self) -> None:
        self.attempts = 0
        self.failures = 0
        self.baseline = 0.0

    def count(self, failed: bool) -> None:
        self.attempts += 1
        if failed:
            self.failures += 1

    def fold(self, alpha: float, min_attempts: int, normal: bool) -> None:
        """End a period: learn from it if it was normal and big enough; start the next."""
        if normal and self.attempts >= min_attempts:
            self.baseline += alpha * (self.failures / self.attempts - self.baseline)
        self.attempts = self.failures = 0


class FleetRates:
    """The fleet baselines of the link and print signals."""

    __slots__ = ("_alpha", "_last_fold", "_min_attempts", "_period", "link", "print")

    def __init__(self, cfg: DetectSettings) -> None:
        self.link = FleetShare()
        self.print = FleetShare()
        self._period = cfg.intervals(cfg.correlation_window_intervals)
        self._alpha = cfg.upstream_baseline_alpha
        self._min_attempts = cfg.rate_window_attempts
        self._last_fold: float | None = None

    def tick(self, now: float, *, host_outage_open: bool) -> None:
        """Fold the period once per correlation window (link failures during an outage are
        the outage's, not the fleet's normal)."""
        if self._last_fold is None:
            self._last_fold = now
            return
        if now - self._last_fold < self._period:
            return
        self._last_fold = now
        self.link.fold(self._alpha, self._min_attempts, normal=not host_outage_open)
        self.print.fold(self._alpha, self._min_attempts, normal=True)


__all__ = [
    "LINK", "PRINT", "AttemptWindow", "FleetRates", "FleetShare", "RateRule", "TerminalRates", "Verdict", "judge",
]
