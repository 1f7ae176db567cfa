"""The read side of merchant notices: store rows -> the core's notice model -> words.

Shared by the ops API (``GET /api/v1/merchants/{id}/notices``, the link endpoint) and the
merchant's own page (``/m/{id}``), so both say exactly the same thing. It sees the core
and a store protocol, never an adapter (app.py wires the real store in).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import tzinfo
from typing import Any, Protocol

from fleetwatch.core.calendar import Calendar
from fleetwatch.core.catalogue import Catalogue, Context, Notice, NoticeItem, negotiate, render_notice
from fleetwatch.core.links import LinkCheck, check, link_path
from fleetwatch.core.model import Incident
from fleetwatch.core.notices import build_notices
from fleetwatch.timefmt import rfc3339


class NoticeReads(Protocol):
    """What the notices need of the store."""

    async def merchant_notice_incidents(
        self, merchant_id: str, resolved_since: float,
    ) -> tuple[list[Incident], dict[str, set[str]]]: ...


class MerchantNotices:
    """A merchant's notices in a language, read from committed data."""

    def __init__(
        self, reads: NoticeReads, catalogues: Mapping[str, Catalogue], ctx: Context, calendar: Calendar,
        *, recent_hours: float, default_lang: str, zone_of: Callable[[str], tzinfo | None] = lambda _: None,
    ) -> None:
        self._reads = reads
        self.catalogues = catalogues
        self.ctx = ctx
        self.calendar = calendar
        self._zone_of = zone_of
        self._recent_s = calendar.hours(recent_hours)
        self.default_lang = default_lang

    def lang(self, requested: str | None, accept_language: str | None) -> str:
        """The contract's choice: ``?lang=``, Accept-Language, by prefix, else the default."""
        return negotiate(requested, accept_language, self.default_lang)

    def calendar_for(self, merchant_id: str) -> Calendar:
        """The calendar a merchant's times are shown in: its configured hours' zone (CONTRACT §8),
        else ``detect.timezone``."""
        zone = self._zone_of(merchant_id)
        return self.calendar if zone is None else self.calendar.with_zone(zone)

    async def notice(self, merchant_id: str, lang: str, now: float) -> Notice:
        incidents, members = await self._reads.merchant_notice_incidents(merchant_id, now - self._recent_s)
        facts = build_notices(merchant_id, incidents, members, now, self._recent_s)
        return render_notice(merchant_id, facts, self.catalogues[lang], self.ctx, now)


def notice_json(notice: Notice) -> dict[str, Any]:
    """The contract's Notice JSON."""
    return {
        "merchant_id": notice.merchant_id, "lang": notice.lang, "generated_at": rfc3339(notice.generated_at),
        "items": [item_json(i) for i in notice.items],
    }


def item_json(i: NoticeItem) -> dict[str, Any]:
    """One notice item in the contract's shape; an acquirer's decision with a note carries it as
    ``note``, as the acquirer wrote it (CONTRACT §7; an addition to §5's item)."""
    item: dict[str, Any] = {
        "incident_id": i.facts.incident_id, "kind": i.facts.kind, "cause": i.facts.cause,
        "severity": i.facts.severity, "status": i.facts.status, "whose": i.facts.whose,
        "terminal_ids": list(i.facts.terminal_ids), "title": i.texts.title,
        "what_happened": i.texts.what_happened, "what_to_do": list(i.texts.what_to_do),
        "next": i.texts.next,
        "money": [{"amount_minor": m.amount_minor, "currency": m.currency, "display": m.display,
                   "batch_no": m.batch_no, "business_date": m.business_date} for m in i.money],
        "opened_at": rfc3339(i.facts.opened_at), "resolved_at": rfc3339(i.facts.resolved_at),
    }
    if i.facts.note:
        item["note"] = i.facts.note
    return item


@dataclass(frozen=True, slots=True)
class NoticeLinks:
    """Makes and checks signed merchant links (``notice.link_key``)."""

    key: bytes
    base_url: str
    calendar: Calendar

    def make(self, merchant_id: str, now: float, *, days: float | None = None,
             seconds: float | None = None) -> tuple[str, int]:
        """(url, exp): valid for ``seconds``, else ``days`` (of ``detect.day_s``), default 30 days."""
        span = seconds if seconds is not None else self.calendar.days(30 if days is None else days)
        exp = int(now + span)
        return self.base_url + link_path(self.key, merchant_id, exp), exp

    def check(self, merchant_id: str, exp: str | None, sig: str | None, now: float) -> LinkCheck:
        return check(self.key, merchant_id, exp, sig, now)


def new_secret() -> str:
    """A generated secret (API token, link key): 32 random bytes, URL-safe."""
    return secrets.token_urlsafe(32)


class NoticeApi:
    """The ops API's view of notices and links (adapters/http.py's ``Notices``)."""

    def __init__(self, notices: MerchantNotices, links: NoticeLinks) -> None:
        self._notices = notices
        self._links = links

    def lang(self, requested: str | None, accept_language: str | None) -> str:
        return self._notices.lang(requested, accept_language)

    async def notice_json(self, merchant_id: str, lang: str, now: float) -> dict[str, Any]:
        return notice_json(await self._notices.notice(merchant_id, lang, now))

    def link(self, merchant_id: str, now: float, days: float | None) -> tuple[str, int]:
        return self._links.make(merchant_id, now, days=days)
