"""Merchant notifications between the pipeline and the outbox (CONTRACT §6).

The rules (``core/notify_events.py``) say which events exist and when they are due; this
module gives them words and makes them outbox rows, in the transaction of the incident
change that caused them (``Pipeline.derive_with``), and rebuilds the rules from the outbox
at start. Like ``merchant_notices.py`` it sees the core and ports, never an adapter: the
delivery worker (``adapters/webhooks.py``) only reads the rows back and sends their bodies.

The body is rendered once, when the event is written (or rewritten while it waits), in
the receiver's language, and stored without ``sent_at``: the worker adds that at each
attempt, so every attempt of one event carries the same ``event_id`` and the same notice.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import msgspec

from fleetwatch.config import Settings
from fleetwatch.core.calendar import Calendar
from fleetwatch.core.catalogue import Catalogue, Context, render_notice
from fleetwatch.core.model import Effect, Incident, NotificationRecord, NotificationWrite
from fleetwatch.core.notices import NoticeFacts
from fleetwatch.core.notify_events import NotifyBook, NotifyRules, Outgoing, QuietHours, Receiver
from fleetwatch.core.sms import digest_sms, sms_text
from fleetwatch.merchant_notices import item_json

_ITEMS = msgspec.json.Encoder()
_ITEMS_OF = msgspec.json.Decoder(tuple[NoticeFacts, ...])


def receivers_of(settings: Settings) -> tuple[Receiver, ...]:
    """The rules' view of ``notify.merchant_webhooks`` (validated by the settings models)."""
    return tuple(
        Receiver(w.name, w.min_severity, frozenset(w.kinds), QuietHours.parse(w.quiet_hours) if w.quiet_hours else None)
        for w in settings.notify.merchant_webhooks
    )


def rules_of(settings: Settings) -> NotifyRules:
    d = settings.detect
    return NotifyRules(
        receivers_of(settings), Calendar(d.day_s, settings.notify.zone),
        wait_s=d.intervals(d.correlation_window_intervals), flap_s=d.intervals(d.clear_after_intervals),
        max_per_hour=settings.notify.merchant_max_per_hour,
    )


def event_body(row: Outgoing, cat: Catalogue, ctx: Context) -> dict[str, Any]:
    """The contract's event body, without ``sent_at`` (the worker adds it at each attempt)."""
    notice = render_notice(row.merchant_id, row.items, cat, ctx, row.created_at)
    body: dict[str, Any] = {"event_id": row.event_id, "type": row.type, "merchant_id": row.merchant_id,
                            "lang": cat.lang}
    if row.type == "notice.digest":
        body["items"] = [item_json(i) for i in notice.items]
        body["sms_text"] = digest_sms(len(notice.items), cat)
    else:
        body["item"] = item_json(notice.items[0])
        body["sms_text"] = sms_text(row.items[0], cat, ctx)
    return body


class Notifications:
    """The rules, fed every batch before it is written; their rows, rendered."""

    def __init__(
        self, book: NotifyBook, catalogues: Mapping[str, Catalogue], ctx: Context, langs: Mapping[str, str],
    ) -> None:
        self._book = book
        self._catalogues = catalogues
        self._ctx = ctx
        self._langs = langs

    @classmethod
    def from_settings(
        cls, settings: Settings, catalogues: Mapping[str, Catalogue], ctx: Context,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> Notifications | None:
        """None when no receiver is configured (nothing is derived, nothing written)."""
        if not settings.notify.merchant_webhooks:
            return None
        langs = {w.name: w.lang or settings.notice.default_lang for w in settings.notify.merchant_webhooks}
        return cls(NotifyBook(rules_of(settings), new_id), catalogues, ctx, langs)

    def restore(
        self, open_incidents: Iterable[Incident], members: dict[str, list[tuple[str, str | None]]],
        records: Sequence[NotificationRecord], now: float,
    ) -> None:
        self._book.restore(open_incidents, members, (outgoing_of(r) for r in records), now)

    def derive(self, effects: Sequence[Effect], now: float) -> list[Effect]:
        """``Pipeline.derive_with``: the outbox rows this batch causes."""
        self._book.observe(effects, now)
        rows = self._book.take(now)
        if not rows:
            return []
        return [self.render(r) for r in rows]

    def render(self, row: Outgoing) -> NotificationWrite:
        cat = self._catalogues[self._langs[row.receiver]]
        body = event_body(row, cat, self._ctx) if row.items else {}
        return NotificationWrite(
            row.event_id, row.receiver, row.merchant_id, row.notice_id, row.type, row.digest, row.status,
            row.due_at, row.created_at, _ITEMS.encode(row.items).decode(),
            json.dumps(body, ensure_ascii=False, separators=(",", ":")),
        )


def outgoing_of(r: NotificationRecord) -> Outgoing:
    """A stored row as the rules know it."""
    return Outgoing(r.event_id, r.receiver, r.merchant_id, r.notice_id, r.type,  # type: ignore[arg-type]
                    r.due_at, r.created_at, _ITEMS_OF.decode(r.items_json), r.status,  # type: ignore[arg-type]
                    r.digest)
