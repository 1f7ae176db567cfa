"""The merchant notifications' outbox in SQL, the same on every backend (CONTRACT §6).

The statements are written once with ``?`` placeholders; PostgreSQL takes them through
:func:`numbered` (``$1, $2 ...``). What each one is for:

- :data:`DUE`: what the delivery worker may send now (due, and its retry time reached), in
  insertion order (``seq``), and of each (receiver, merchant, notice) only the oldest pending row (an upstream
  notice is one notice per shop), so
  the events of one notice reach a receiver in the order they happened even across retries
  and restarts.
- :data:`RECORD`: one attempt's outcome; only a row still ``pending`` is changed, so a
  result never overwrites a row the rules took back (``collapsed``).
- :data:`STATE`: what the rules need after a restart: every pending row, and the last
  row of each (receiver, merchant, notice) that left it told (an open or update not resolved).
- :func:`list_query`: the ops API's page, newest first by ``seq``, keyset cursor.
- :data:`PURGE`: retention (``store.retain_days``) of rows that are done.
"""

from __future__ import annotations

import re
from typing import Any, Final

from fleetwatch.errors import BadRequest
from fleetwatch.storage import paging
from fleetwatch.storage.rows import NOTIFICATION_RECORD_COLUMNS

COLUMNS: Final = ", ".join(NOTIFICATION_RECORD_COLUMNS)

LIST_STATUSES: Final = ("pending", "failed", "sent", "collapsed", "all")
"""``status`` of ``GET /api/v1/notifications``: the contract's three, the rules' ``collapsed``,
and ``all`` (every row but collapsed ones; the default)."""

DUE: Final = (
    f"SELECT {COLUMNS} FROM notifications n WHERE n.status = 'pending' AND n.due_at <= ? AND n.next_at <= ? "
    "AND NOT EXISTS (SELECT 1 FROM notifications e WHERE e.receiver = n.receiver AND e.merchant_id = n.merchant_id "
    "AND e.notice_id = n.notice_id AND n.notice_id <> '' AND e.status = 'pending' AND e.seq < n.seq) "
    "ORDER BY n.seq LIMIT ?"
)

RECORD: Final = ("UPDATE notifications SET status = ?, attempts = ?, next_at = ?, last_error = ?, sent_at = ? "
                 "WHERE event_id = ? AND status = 'pending'")

STATE: Final = (
    f"SELECT {COLUMNS} FROM notifications n WHERE n.status = 'pending' OR ("
    "n.notice_id <> '' AND n.status <> 'collapsed' AND n.type <> 'notice.resolved' AND n.seq = ("
    "SELECT MAX(m.seq) FROM notifications m WHERE m.receiver = n.receiver AND m.merchant_id = n.merchant_id "
    "AND m.notice_id = n.notice_id AND m.status <> 'collapsed')) ORDER BY n.seq"
)

PURGE: Final = (
    "DELETE FROM notifications WHERE seq IN (SELECT n.seq FROM notifications n WHERE n.status <> 'pending' "
    "AND n.created_at < ? AND NOT (n.notice_id <> '' AND n.status <> 'collapsed' AND n.type <> 'notice.resolved' "
    "AND n.seq = (SELECT MAX(m.seq) FROM notifications m WHERE m.receiver = n.receiver "
    "AND m.merchant_id = n.merchant_id AND m.notice_id = n.notice_id AND m.status <> 'collapsed')) "
    "ORDER BY n.seq LIMIT ?)"
)
"""Retention: rows made before the cut-off that are done (sent, failed, collapsed), except each
notice's last told row, which the restart still needs (a notice open for months)."""

COUNT_PENDING: Final = "SELECT COUNT(*) FROM notifications WHERE status = 'pending'"

_MARK: Final = re.compile(r"\?")


def numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1, $2 ...``."""
    counter = iter(range(1, 10_000))
    return _MARK.sub(lambda _: f"${next(counter)}", sql)


def cursor_of(seq: int) -> str:
    return paging.encode_cursor({"n": seq})


def decode_cursor(cursor: str) -> int:
    payload = paging.decode_cursor(cursor)
    seq = payload.get("n")
    if not isinstance(seq, int) or isinstance(seq, bool) or set(payload) != {"n"}:
        raise BadRequest("invalid cursor")
    return seq


def list_query(status: str, merchant_id: str | None, limit: int, cursor: str | None) -> tuple[str, list[Any]]:
    """The page's SELECT (one row more than ``limit``: is there a next page?) and its parameters."""
    paging.check_limit(limit)
    if status not in LIST_STATUSES:
        raise BadRequest(f"status must be one of {', '.join(LIST_STATUSES)}")
    where = ["status <> 'collapsed'"] if status == "all" else ["status = ?"]
    params: list[Any] = [] if status == "all" else [status]
    if merchant_id is not None:
        where.append("merchant_id = ?")
        params.append(merchant_id)
    if cursor is not None:
        where.append("seq < ?")
        params.append(decode_cursor(cursor))
    sql = f"SELECT {COLUMNS} FROM notifications WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT ?"
    return sql, [*params, limit + 1]
