"""The API's pages: opaque cursors, limits and status filters, identical on every backend.

Keyset pagination: incidents are listed newest first by (opened_at, id), terminals by
terminal_id; a cursor holds the last key of a page, so a page is stable under inserts of
newer rows. Text keys compare by code point on every backend (SQLite's BINARY collation of
UTF-8, PostgreSQL columns declared ``COLLATE "C"``, Python's ``str`` ordering in the fake),
so the same store content gives the same pages and the same cursors everywhere.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Final

from fleetwatch.errors import BadRequest

MAX_PAGE: Final = 1000
"""Largest page ``list_incidents``/``list_terminals`` serve; larger limits are a caller bug."""

INCIDENT_STATUS_FILTERS: Final = ("open", "acknowledged", "resolved", "all")
"""``status`` values of ``list_incidents``; ``open`` includes acknowledged (CONTRACT.md §3)."""

INCIDENT_FILTERS: Final = ("kind", "terminal_id", "merchant_id", "scope")
"""Equality filters of ``list_incidents``, combined with AND."""


def encode_cursor(payload: dict[str, Any]) -> str:
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> dict[str, Any]:
    """Opaque to clients; anything we did not produce is a BadRequest (HTTP 400)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        payload = json.loads(raw)
    except ValueError as exc:  # binascii.Error, JSONDecodeError, UnicodeDecodeError, non-ASCII
        raise BadRequest("invalid cursor") from exc
    if not isinstance(payload, dict):
        raise BadRequest("invalid cursor")
    return payload


def incident_cursor(opened_at: float, incident_id: str) -> str:
    return encode_cursor({"o": opened_at, "i": incident_id})


def decode_incident_cursor(cursor: str) -> tuple[float, str]:
    """(opened_at, id) of the last incident of the previous page."""
    payload = decode_cursor(cursor)
    opened_at, incident_id = payload.get("o"), payload.get("i")
    if (
        not isinstance(opened_at, int | float)
        or isinstance(opened_at, bool)
        or not isinstance(incident_id, str)
        or set(payload) != {"o", "i"}
    ):
        raise BadRequest("invalid cursor")
    return float(opened_at), incident_id


def terminal_cursor(terminal_id: str) -> str:
    return encode_cursor({"t": terminal_id})


def decode_terminal_cursor(cursor: str) -> str:
    """terminal_id of the last terminal of the previous page."""
    payload = decode_cursor(cursor)
    terminal_id = payload.get("t")
    if not isinstance(terminal_id, str) or set(payload) != {"t"}:
        raise BadRequest("invalid cursor")
    return terminal_id


def check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_PAGE:
        raise BadRequest(f"limit must be between 1 and {MAX_PAGE}")


def check_status(status: str) -> None:
    if status not in INCIDENT_STATUS_FILTERS:
        raise BadRequest(f"status must be one of {', '.join(INCIDENT_STATUS_FILTERS)}")
