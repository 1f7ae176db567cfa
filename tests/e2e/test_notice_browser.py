"""The merchant's page in a real headless Chromium on a phone-sized screen, as a shop owner sees it.

Debian's Chromium (``/usr/bin/chromium``, installed by scripts/test), driven by Playwright's
Python package; Playwright never downloads a browser here. A small fleet is played into a
real broker and daemon so the page has one of each: a problem the shop can fix, one for
the terminal's maker, money that is late, the bank's outage (on a terminal that only got
host response codes), and one already fixed. Screenshots go to test-output/ (gitignored);
docs/ holds one per language taken from here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, ViewportSize, sync_playwright

from fleetwatch.core.links import sign
from tests.publish import Publisher, batch, heartbeat, txn
from tests.services import Broker, Daemon, wait_until

pytestmark = [pytest.mark.broker, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"]
PHONE: ViewportSize = {"width": 390, "height": 844}
OUT = Path(__file__).resolve().parents[2] / "test-output"
KEY = "browser-test-key"
SHOP = "M0042"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def shop(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon whose merchant M0042 has a printer out of paper (T1), a late batch of
    ¥4,684.17 (T2), a reader fault (T3), a jam already fixed (T4) and the bank's outage
    reaching it through T5, which only gets host response codes."""
    daemon = Daemon(tmp_path_factory.mktemp("browser"), broker.url, prefix="browser/fleet/v1", client_id="fw-browser",
                    overrides={
                        "detect": {"heartbeat_interval_s": 1.0, "upstream_min_terminals": 5,
                                   "group_min_terminals": 5},
                        "settlement": {"settlement_deadline_s": 2.0},
                        "notice": {"link_key": KEY, "support_phone": "95588", "acquirer_name": "示例银行收单中心"},
                    })
    daemon.start()
    pub = Publisher(broker.url, daemon.prefix)
    terminals: dict[str, dict[str, Any]] = {
        "T1": {"printer": "no_paper"}, "T2": {}, "T3": {"reader": {"chip": "fault", "msr": "ok", "ctls": "ok"}},
        "T4": {"printer": "jam"}, "T5": {},
        **{f"X{i}": {"mid": "M0007"} for i in range(1, 7)},
    }
    failing = ["T5", "X1", "X2", "X3", "X4", "X5"]
    stop = threading.Event()

    def play() -> None:
        seq = 0
        while not stop.is_set():
            seq += 1
            for tid, fields in list(terminals.items()):
                extra = {k: v for k, v in fields.items() if k != "mid"}
                pub.send(f"term/{tid}/heartbeat", heartbeat(tid, fields.get("mid", SHOP), seq=seq, **extra),
                         qos=0, wait=False)
            for tid in failing:
                mid = terminals[tid].get("mid", SHOP)
                pub.send(f"term/{tid}/txn", txn(tid, f"{tid}-{seq}", mid, outcome="declined", rc="91"), wait=False)
            pub.flush()
            stop.wait(0.4)

    for i, amount in enumerate((156139, 156139, 156139)):
        pub.send("term/T2/txn", txn("T2", f"T2-sale-{i}", SHOP, amount_minor=amount))
    pub.send("term/T2/batch", batch("T2", SHOP, count=3, amount_minor=468417))
    player = threading.Thread(target=play, daemon=True)
    player.start()
    try:
        time.sleep(2.5)
        terminals["T4"] = {}  # the jam is cleared: resolves after the hysteresis
        wait_until(lambda: _ready(daemon), timeout=30, what="every notice of the shop")
        yield daemon
    finally:
        stop.set()
        player.join()
        pub.close()
        daemon.stop()


def _ready(daemon: Daemon) -> bool:
    items = daemon.get(f"/api/v1/merchants/{SHOP}/notices")["items"]
    got = {(i["kind"], i["cause"], i["status"]) for i in items}
    return {("printer", "no_paper", "open"), ("settlement_gap", "not_settled", "open"),
            ("reader", "self_test", "open"), ("printer", "jam", "resolved"),
            ("host_outage", "host_errors", "open")} <= got


def link(daemon: Daemon, merchant: str = SHOP, exp: int | None = None) -> str:
    exp = exp if exp is not None else int(time.time()) + 3600
    return f"{daemon.api}/m/{merchant}?exp={exp}&sig={sign(KEY.encode(), merchant, exp)}"


def open_page(browser: Browser, url: str, locale: str) -> tuple[Page, int, list[str]]:
    context = browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True,
                                  locale=locale, extra_http_headers={"Accept-Language": locale})
    page = context.new_page()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    response = page.goto(url)
    assert response is not None
    return page, response.status, requests


def looks_like_a_phone_page(page: Page, requests: list[str], daemon: Daemon) -> None:
    """Nothing wider than the phone, no script, nothing fetched from anywhere but the page itself."""
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    assert page.evaluate("document.scripts.length") == 0
    assert all(r.startswith(daemon.api) for r in requests), requests
    assert len(requests) == 1, requests


@pytest.mark.parametrize(("locale", "expect"), [
    ("zh-CN", {
        "heading": "收款机状态通知", "summary": "有 4 个问题需要关注", "updated": "更新时间：",
        "cards": {
            "打印机缺纸": ("您可以自行处理", "57毫米宽的热敏纸"),
            "款项还没到账": ("需要收单机构处理", "示例银行收单中心（95588）"),
            "读卡器故障": ("POS机需要维修", "换一张卡"),
            "银行系统故障": ("不是您的POS机问题", "扫码或现金"),
        },
        "money": "¥4,684.17", "resolved": ("最近已解决", "打印机卡纸", "已解决"),
    }),
    ("en-US", {
        "heading": "Your card terminals", "summary": "4 problems need attention", "updated": "Last updated ",
        "cards": {
            "Printer out of paper": ("You can fix this", "57 mm thermal paper roll"),
            "Money not credited yet": ("Your acquirer must act", "示例银行收单中心 (95588)"),
            "Card reader fault": ("The terminal needs service", "another card"),
            "Bank system problem": ("Not your terminal", "QR code or cash"),
        },
        "money": "CNY 4,684.17", "resolved": ("Recently resolved", "Paper jam", "Fixed"),
    }),
])
def test_a_shop_owner_reads_their_page(browser: Browser, shop: Daemon, locale: str, expect: dict[str, Any]) -> None:
    """What the owner sees on the phone: the page title and when it was updated, one card per
    problem with whose it is and its steps, the late money, the bank's outage (the shop's T5
    only got host response codes), and the fixed jam under "recently resolved"."""
    page, status, requests = open_page(browser, link(shop), locale)
    assert status == 200
    OUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUT / f"notice-{locale}.png"), full_page=True)
    page.screenshot(path=str(OUT / f"notice-{locale}-top.png"), full_page=True,
                    clip={"x": 0, "y": 0, "width": PHONE["width"], "height": 1500})
    looks_like_a_phone_page(page, requests, shop)
    assert page.locator("h1").inner_text() == expect["heading"]
    assert expect["updated"] in page.inner_text("header")
    assert page.locator(".banner").inner_text().strip() == expect["summary"]
    cards = page.locator("article.card:not(.done)")
    assert cards.count() == 4
    seen = {}
    for i in range(cards.count()):
        card = cards.nth(i)
        seen[card.locator("h3").inner_text()] = (card.locator(".whose").inner_text(), card.inner_text())
    assert set(seen) == set(expect["cards"])
    for title, (whose, step) in expect["cards"].items():
        assert seen[title][0] == whose, title
        assert step in seen[title][1], (title, seen[title][1])
    money_card = next(text for _, text in seen.values() if expect["money"] in text)
    assert "17" in money_card  # the batch
    done = page.locator("article.card.done")
    assert done.count() == 1
    assert expect["resolved"][0].upper() in page.inner_text("main").upper()  # shown in capitals
    assert done.locator("h3").inner_text() == expect["resolved"][1]
    assert done.locator(".whose").inner_text() == expect["resolved"][2]
    assert page.locator("h4").first.is_visible()


@pytest.mark.parametrize(("locale", "title", "text"), [
    ("zh-CN", "您的POS机都工作正常", "目前没有需要您处理的问题"),
    ("en", "All your terminals are working", "Nothing needs your attention right now"),
])
def test_an_empty_page_says_all_is_well(browser: Browser, shop: Daemon, locale: str, title: str, text: str) -> None:
    page, status, requests = open_page(browser, link(shop, "M0999"), locale)
    assert status == 200
    page.screenshot(path=str(OUT / f"notice-empty-{locale}.png"), full_page=True)
    looks_like_a_phone_page(page, requests, shop)
    assert page.locator(".banner h2").inner_text() == title
    assert text in page.inner_text(".banner")
    assert page.locator("article.card").count() == 0


@pytest.mark.parametrize(("locale", "what", "title"), [
    ("zh-CN", "tampered", "链接无效"),
    ("en", "tampered", "This link does not work"),
    ("en", "expired", "This link has expired"),
    ("en", "other merchant", "This link does not work"),
])
def test_refused_links_show_a_short_page_and_nothing_of_the_shop(
    browser: Browser, shop: Daemon, locale: str, what: str, title: str,
) -> None:
    good = link(shop)
    url = {
        "tampered": good.replace(f"/m/{SHOP}?", "/m/M0043?"),
        "expired": link(shop, exp=int(time.time()) - 60),
        "other merchant": link(shop, "M0007").replace("/m/M0007?", f"/m/{SHOP}?"),
    }[what]
    page, status, requests = open_page(browser, url, locale)
    assert status == 403
    page.screenshot(path=str(OUT / f"refused-{what.replace(' ', '-')}-{locale}.png"), full_page=True)
    looks_like_a_phone_page(page, requests, shop)
    assert page.locator("h1").inner_text() == title
    body = page.inner_text("body")
    for secret in (SHOP, "M0043", "M0007", "T1", "4,684.17", "打印机", "Printer"):
        assert secret not in body, secret
