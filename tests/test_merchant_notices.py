"""The notices' read side: the contract's JSON shape, and the calendar scaling days and hours."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from fleetwatch.adapters.catalogues import load_catalogues
from fleetwatch.adapters.notice_page import NoticePages
from fleetwatch.core.calendar import Calendar
from fleetwatch.core.catalogue import Context
from fleetwatch.core.links import LinkCheck
from fleetwatch.core.model import Incident
from fleetwatch.merchant_notices import MerchantNotices, NoticeLinks, notice_json

NOW = 1_800_000_000.0


class Reads:
    def __init__(self, incidents: list[Incident]) -> None:
        self.incidents = incidents
        self.asked: list[tuple[str, float]] = []

    async def merchant_notice_incidents(self, merchant_id: str, resolved_since: float) -> tuple[
            list[Incident], dict[str, set[str]]]:
        self.asked.append((merchant_id, resolved_since))
        return [i for i in self.incidents if i.resolved_at is None or i.resolved_at >= resolved_since], {}


def gap(iid: str, **kw: Any) -> Incident:
    return Incident(id=iid, key=iid, kind="settlement_gap", cause="not_settled", scope="terminal",
                    severity="major", status=kw.pop("status", "open"), opened_at=NOW - 500, updated_at=NOW,
                    summary="", terminal_id="T1", merchant_id="M1",
                    evidence={"amount_minor": 468417, "currency": "CNY", "batch_no": 17,
                              "business_date": "2026-11-22"}, **kw)


async def test_the_notice_json_has_the_contracts_shape() -> None:
    notices = MerchantNotices(Reads([gap("g1")]), load_catalogues(), Context(), Calendar(),
                              recent_hours=24, default_lang="zh-CN")
    body = notice_json(await notices.notice("M1", "zh-CN", NOW))
    assert set(body) == {"merchant_id", "lang", "generated_at", "items"}
    [item] = body["items"]
    assert set(item) == {"incident_id", "kind", "cause", "severity", "status", "whose", "terminal_ids", "title",
                         "what_happened", "what_to_do", "next", "money", "opened_at", "resolved_at"}
    assert item["money"] == [{"amount_minor": 468417, "currency": "CNY", "display": "¥4,684.17", "batch_no": 17,
                              "business_date": "2026-11-22"}]
    assert (item["whose"], item["resolved_at"], body["lang"]) == ("acquirer", None, "zh-CN")


async def test_compressed_days_shrink_recent_hours_and_link_days() -> None:
    """With day_s 240 (an hour is 10 s), 24 recent hours are 240 s and a 1-day link lives 240 s."""
    cal = Calendar(day_s=240)
    reads = Reads([gap("old", status="resolved", resolved_at=NOW - 300),
                   gap("new", status="resolved", resolved_at=NOW - 100)])
    notices = MerchantNotices(reads, load_catalogues(), Context(), cal, recent_hours=24, default_lang="en")
    body = notice_json(await notices.notice("M1", "en", NOW))
    assert reads.asked == [("M1", NOW - 240)]
    assert [i["incident_id"] for i in body["items"]] == ["new"]
    links = NoticeLinks(b"key", "https://n.example.cn", cal)
    url, exp = links.make("M1", NOW, days=1)
    assert exp == int(NOW + 240)
    assert url.startswith("https://n.example.cn/m/M1?exp=")
    sig = url.rsplit("sig=", 1)[1]
    assert links.check("M1", str(exp), sig, NOW + 239) is LinkCheck.VALID
    assert links.check("M1", str(exp), sig, NOW + 240) is LinkCheck.EXPIRED
    assert links.make("M1", NOW)[1] == int(NOW + 30 * 240)


async def test_the_page_shows_times_in_the_merchants_own_zone_when_its_hours_are_configured() -> None:
    """A merchant with configured hours in Europe/Berlin reads its times there (CONTRACT §5, §8);
    another merchant in detect.timezone."""
    zones = {"M1": ZoneInfo("Europe/Berlin")}
    shanghai = Calendar(zone=ZoneInfo("Asia/Shanghai"))
    notices = MerchantNotices(Reads([gap("g1")]), load_catalogues(), Context(), shanghai,
                              recent_hours=24, default_lang="en", zone_of=zones.get)
    pages = NoticePages(notices)
    own = pages.page(await notices.notice("M1", "en", NOW))
    other = pages.page(await notices.notice("M2", "en", NOW))
    assert "UTC+01:00" in own
    assert "UTC+08:00" not in own
    assert "UTC+08:00" in other
