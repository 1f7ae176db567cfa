"""Logging: structlog, JSON lines in production, a readable console on a TTY.

Also the rate limiter for noisy, repetitive warnings (rejected messages): a flood of
garbage must not turn into a flood of log lines, but the first occurrence of each
reason is always logged and later ones are summarised with a count.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import structlog

from fleetwatch.config import LogSettings


def configure_logging(settings: LogSettings) -> None:
    """Route structlog (and the stdlib loggers of our libraries) to stderr."""
    level = getattr(logging, settings.level.upper())
    as_json = settings.format == "json" or (settings.format == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=max(level, logging.WARNING), stream=sys.stderr, format="%(name)s %(message)s")
    # gmqtt logs every connection hiccup at WARNING with tracebacks; our source logs
    # each state change once instead.
    logging.getLogger("gmqtt").setLevel(logging.CRITICAL)


class RateLimitedLog:
    """Log a repeating event at most once per ``interval`` per key, counting the rest."""

    def __init__(self, interval: float, clock: Any = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def should_log(self, key: str) -> tuple[bool, int]:
        """(log now?, how many were suppressed since the last logged one)."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False, 0
        self._last[key] = now
        return True, self._suppressed.pop(key, 0)
