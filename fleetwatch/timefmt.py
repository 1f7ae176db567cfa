"""Time as the API and Alertmanager speak it: RFC 3339 UTC with milliseconds."""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(ts: float | None) -> str | None:
    """Epoch seconds -> ``2026-11-23T10:15:02.120Z``; None stays None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(value: str | float) -> float:
    """RFC 3339 text (a missing zone means UTC) or epoch seconds -> epoch seconds."""
    if isinstance(value, int | float):
        return float(value)
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
