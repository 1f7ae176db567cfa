"""Logging: structlog, JSON lines in production, a readable console on a TTY.

``log.format = "auto"`` (the default) renders for a person when stderr is a terminal
(structlog's ConsoleRenderer, in colour unless ``NO_COLOR`` is set) and one JSON object
per line otherwise (journald, docker, a file). The standard-library loggers of our
libraries (uvicorn, asyncio) go through the same renderer, so a JSON stream stays JSON.

Also the rate limiter for noisy, repetitive warnings (rejected messages): a flood of
garbage must not turn into a flood of log lines, but the first occurrence of each
reason is always logged and later ones are summarised with a count.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import structlog

from fleetwatch.config import LogSettings


def renders_json(settings: LogSettings) -> bool:
    """JSON lines unless asked for the console, or ``auto`` and stderr is a terminal."""
    return settings.format == "json" or (settings.format == "auto" and not sys.stderr.isatty())


def configure_logging(settings: LogSettings) -> None:
    """Route structlog (and the stdlib loggers of our libraries) to stderr."""
    level = getattr(logging, settings.level.upper())
    renderer: Any = (
        structlog.processors.JSONRenderer() if renders_json(settings)
        else structlog.dev.ConsoleRenderer(colors="NO_COLOR" not in os.environ and sys.stderr.isatty())
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(level, logging.WARNING))


def configure_default_logging() -> None:
    """Logging for an error found before the settings could be read (or when none were)."""
    if not structlog.is_configured():
        configure_logging(LogSettings())


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
