"""The acquirer's decisions about terminals: suspended (停机) and closed (关闭) (CONTRACT §7).

The acquirer, not the terminal, decides that a terminal may not take payments for a while
(a risk review, compliance, unpaid fees) or no longer at all (the merchant asked, the
contract ended). Its host publishes one retained status per terminal. Unlike a terminal's
retained State, a retained status **is** the current truth: it is applied on every
(re)subscribe, unless it is older than the one applied.

:class:`AcquirerStatuses` keeps the status of every terminal the acquirer spoke of, also of
terminals the daemon has not seen yet (applied when they appear), and decides whether a
message changes anything (:meth:`AcquirerStatuses.decide`). What a change does to the
terminal (incidents resolved, the record opened, the census) is the engine's part; the
record's words and evidence are built here (:func:`decision_finding`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Any, Final

from fleetwatch.core.messages import StatusCleared, TerminalStatus
from fleetwatch.core.model import DEFAULT_SEVERITY, AcquirerStatus, Finding, decision_key

ACTIVE: Final = "active"
SUSPENDED: Final = "suspended"
CLOSED: Final = "closed"

SUMMARY: Final[dict[str, str]] = {
    SUSPENDED: "Suspended by the acquirer",
    CLOSED: "Closed by the acquirer",
}


class AcquirerStatuses:
    """The acquirer's status per terminal, applied or waiting for the terminal to appear."""

    __slots__ = ("_by_terminal",)

    def __init__(self) -> None:
        self._by_terminal: dict[str, AcquirerStatus] = {}

    def restore(self, statuses: Iterable[AcquirerStatus]) -> None:
        for s in statuses:
            self._by_terminal[s.terminal_id] = replace(s)

    def get(self, terminal_id: str) -> AcquirerStatus | None:
        return self._by_terminal.get(terminal_id)

    def not_active(self) -> Iterator[AcquirerStatus]:
        """Every suspended or closed status (few: they are decisions, not traffic)."""
        return (s for s in self._by_terminal.values() if s.status != ACTIVE)

    def decide(self, msg: TerminalStatus | StatusCleared, now: float) -> AcquirerStatus | None:
        """The status to apply for this message, or None when it changes nothing.

        A status older (by ``ts``) than the one applied is ignored, and so is the same status
        handed over again on a resubscribe; an empty payload clears to ``active`` and keeps
        the newest ``ts`` seen, so an older status delivered late still loses.
        """
        tid = msg.terminal_id
        cur = self._by_terminal.get(tid)
        if isinstance(msg, StatusCleared):
            if cur is None or (cur.status == ACTIVE and cur.reason is None and cur.note is None):
                return None
            new = AcquirerStatus(tid, ACTIVE, since=now, ts_ms=cur.ts_ms, merchant_id=cur.merchant_id,
                                 received_at=now)
        else:
            if cur is not None and cur.ts_ms is not None and msg.ts < cur.ts_ms:
                return None
            if cur is not None and (cur.status, cur.reason, cur.note, cur.ts_ms) == (
                    msg.status, msg.reason, msg.note, msg.ts):
                return None
            same_status = cur is not None and cur.status == msg.status
            since = cur.since if same_status and cur is not None else msg.ts / 1000
            new = AcquirerStatus(tid, msg.status, msg.reason, msg.note, since, msg.ts,
                                 msg.merchant_id, now)
        self._by_terminal[tid] = new
        return new


def decision_finding(
    terminal_id: str, merchant_id: str | None, status: AcquirerStatus, now: float,
    money: Sequence[dict[str, Any]] = (),
) -> Finding:
    """The ``config``/``suspended`` or ``config``/``closed`` record of a decision (severity info).

    Its evidence holds the acquirer's ``reason``, ``note`` and ``since``; a closure's also the
    money the terminal approved that is not settled yet (``unsettled``: one entry per batch
    and currency; ``unsettled_minor``: the total per currency).
    """
    cause = status.status
    evidence: dict[str, Any] = {"reason": status.reason, "note": status.note, "since": status.since}
    if cause == CLOSED:
        totals: dict[str, int] = {}
        for m in money:
            totals[m["currency"]] = totals.get(m["currency"], 0) + int(m["amount_minor"])
        evidence["unsettled"] = [dict(m) for m in money]
        evidence["unsettled_minor"] = dict(sorted(totals.items()))
    summary = SUMMARY[cause] + (f" ({status.reason})" if status.reason else "")
    return Finding(
        key=decision_key(terminal_id), kind="config", cause=cause, severity=DEFAULT_SEVERITY[("config", cause)],
        scope="terminal", summary=summary, at=now, terminal_id=terminal_id, merchant_id=merchant_id,
        evidence=evidence, detected_from=now,
    )


__all__ = ["ACTIVE", "CLOSED", "SUSPENDED", "AcquirerStatuses", "decision_finding"]
