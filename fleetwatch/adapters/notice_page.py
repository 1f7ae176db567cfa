"""The merchant's own page: ``GET /m/{merchant_id}?exp=&sig=`` (CONTRACT §5).

Server-rendered with Jinja2 from templates shipped in the package: readable on a phone,
no external assets (it works on a closed network), no script, a "last updated" time and
a clear empty state. Every request is checked against its signed link first; a wrong,
tampered, expired or other-merchant link gets 403 and a short page that shows nothing
of any merchant, and every other path under ``/m/`` gets the same 403 page.

The routes are built here as a router; app.py mounts it on the ops listener or, with
``notice.listen`` set, on a listener of its own that serves nothing else
(:func:`merchant_app`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Protocol
from urllib.parse import quote, urlencode

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, select_autoescape

from fleetwatch.core.calendar import Calendar, utc_offset_text
from fleetwatch.core.catalogue import Catalogue, Context, Notice, NoticeItem, fill
from fleetwatch.core.links import LinkCheck

LANG_NAMES: Final = {"zh-CN": "中文", "en": "English"}

SECURITY_HEADERS: Final = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
}
"""No script, no frames, no outside requests, and the signed link never leaks as a Referer."""


class NoticeSource(Protocol):
    """What the page needs (fleetwatch.merchant_notices.MerchantNotices)."""

    catalogues: Mapping[str, Catalogue]
    ctx: Context
    calendar: Calendar

    def lang(self, requested: str | None, accept_language: str | None) -> str: ...
    async def notice(self, merchant_id: str, lang: str, now: float) -> Notice: ...
    def calendar_for(self, merchant_id: str) -> Calendar: ...


class LinkChecker(Protocol):
    def check(self, merchant_id: str, exp: str | None, sig: str | None, now: float) -> LinkCheck: ...


@dataclass(frozen=True, slots=True)
class _Card:
    whose: str
    whose_label: str
    whose_explain: str
    severity_label: str
    minor: bool
    title: str
    what_happened: str
    terminals: str
    money: tuple[dict[str, str], ...]
    note: str | None
    steps: tuple[str, ...]
    next: str
    when: str


class NoticePages:
    """Renders the notice page and the refusal page."""

    def __init__(self, source: NoticeSource) -> None:
        self._source = source
        self._env = Environment(
            loader=PackageLoader("fleetwatch", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True, lstrip_blocks=True,
        )
        self._page = self._env.get_template("notices.html")
        self._refused = self._env.get_template("refused.html")

    def when(self, t: float, calendar: Calendar | None = None) -> str:
        """A time as the merchant reads it: local (with the offset) on real days, in the merchant's
        own zone when its hours are configured."""
        moment = (calendar or self._source.calendar).local(t)
        return f"{moment:%Y-%m-%d %H:%M} {utc_offset_text(moment)}"

    def page(self, notice: Notice, *, other_lang_href: str | None = None) -> str:
        cal = self._source.calendar_for(notice.merchant_id)
        cat = self._source.catalogues[notice.lang]
        ctx = self._source.ctx
        values = {"acquirer_name": ctx.acquirer_name or cat.defaults.get("acquirer_name", ""),
                  "support_phone": ctx.support_phone or cat.defaults.get("support_phone", "")}
        current = [self._card(i, cat, cal) for i in notice.current]
        words = {name: cat.word(name) for name in cat.page}
        words |= {
            "merchant": cat.word("merchant", merchant_id=notice.merchant_id),
            "updated": cat.word("updated", time=self.when(notice.generated_at, cal)),
            "summary": cat.word("summary_one") if len(current) == 1
            else cat.word("summary_many", count=str(len(current))),
            "contact": fill(cat.word("contact"), values),
        }
        other = next((lang for lang in self._source.catalogues if lang != notice.lang), None)
        switch = None
        if other is not None and other_lang_href is not None:
            switch = {"href": f"{other_lang_href}&lang={other}", "lang": other, "name": LANG_NAMES.get(other, other)}
        return self._page.render(
            lang=notice.lang, w=words, acquirer=ctx.acquirer_name,
            current=current, resolved=[self._card(i, cat, cal) for i in notice.resolved],
            phone=ctx.support_phone, phone_href=_tel(ctx.support_phone), other_lang=switch,
            default_phone=values["support_phone"],
        )

    def refused(self, lang: str, check: LinkCheck) -> str:
        cat = self._source.catalogues[lang]
        ctx = self._source.ctx
        values = {"acquirer_name": ctx.acquirer_name or cat.defaults.get("acquirer_name", ""),
                  "support_phone": ctx.support_phone or cat.defaults.get("support_phone", "")}
        expired = check is LinkCheck.EXPIRED
        return self._refused.render(
            lang=lang, acquirer=ctx.acquirer_name,
            title=cat.word("expired_title" if expired else "forbidden_title"),
            text=cat.word("expired_text" if expired else "forbidden_text"),
            help=fill(cat.word("forbidden_help"), values),
        )

    def _card(self, item: NoticeItem, cat: Catalogue, cal: Calendar) -> _Card:
        f, t = item.facts, item.texts
        money = []
        for m in item.money:
            where = [cat.word("batch", batch_no=str(m.batch_no))]
            if m.terminal_id:
                where.insert(0, cat.word("terminal", terminal_id=m.terminal_id))
            if m.business_date:
                where.append(cat.word("business_date", date=m.business_date))
            money.append({"display": m.display, "where": " · ".join(where)})
        when = cat.word("opened", time=self.when(f.opened_at, cal))
        if f.resolved_at is not None:
            when = cat.word("resolved_at", time=self.when(f.resolved_at, cal))
        return _Card(
            whose=f.whose, whose_label=item.whose_label, whose_explain=item.whose_explain,
            severity_label=cat.word(f"severity_{f.severity}"), minor=f.severity == "minor",
            title=t.title, what_happened=t.what_happened, terminals=cat.list_separator.join(f.terminal_ids),
            money=tuple(money), note=f.note, steps=t.what_to_do, next=t.next, when=when,
        )


def _tel(phone: str) -> str | None:
    digits = "".join(c for c in phone if c.isdigit() or c == "+")
    return f"tel:{digits}" if digits else None


def _html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)


def merchant_router(
    source: NoticeSource, links: LinkChecker, clock: Callable[[], float],
) -> APIRouter:
    """``/m/{merchant_id}`` and a 403 for everything else under ``/m``."""
    router = APIRouter()
    pages = NoticePages(source)

    def refuse(request: Request, check: LinkCheck) -> Response:
        lang = source.lang(request.query_params.get("lang"), request.headers.get("accept-language"))
        return _html(pages.refused(lang, check), status=403)

    @router.get("/m/{merchant_id}", include_in_schema=False)
    async def merchant_page(request: Request, merchant_id: str) -> Response:
        params = request.query_params
        now = clock()
        check = links.check(merchant_id, params.get("exp"), params.get("sig"), now)
        if check is not LinkCheck.VALID:
            return refuse(request, check)
        lang = source.lang(params.get("lang"), request.headers.get("accept-language"))
        notice = await source.notice(merchant_id, lang, now)
        here = f"/m/{quote(merchant_id, safe='')}?" + urlencode({"exp": params["exp"], "sig": params["sig"]})
        return _html(pages.page(notice, other_lang_href=here))

    @router.api_route("/m", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    @router.api_route("/m/{rest:path}", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"],
                      include_in_schema=False)
    async def anything_else(request: Request, rest: str = "") -> Response:
        return refuse(request, LinkCheck.INVALID)

    return router


def merchant_app(router: APIRouter) -> FastAPI:
    """The ``notice.listen`` listener: ``/m/`` and nothing else (404 for /api, /metrics, /docs...)."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(router)
    return app
