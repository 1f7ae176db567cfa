"""Merchant notices end to end: a real broker, the daemon as a process, paho reading the screens.

What a shop sees over the API and on its terminal's screen, what survives a restart, and
who may open a merchant's page (the signed link, key rotation, the merchant-only listener).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from fleetwatch.core.links import sign
from tests.publish import Publisher, heartbeat
from tests.screens import screens
from tests.services import BOTH_BACKENDS, Broker, Daemon, free_port, wait_until

pytestmark = pytest.mark.broker

FAST: dict[str, dict[str, Any]] = {
    "detect": {"heartbeat_interval_s": 0.5}, "notice": {"link_key": "key-one", "support_phone": "95588"},
}


@contextmanager
def beating(broker: Broker, prefix: str, terminals: dict[str, dict[str, Any]], every: float = 0.25) -> Iterator[None]:
    """Heartbeats for ``terminals`` (tid -> extra fields, e.g. printer) until the block ends."""
    pub = Publisher(broker.url, prefix)
    stop = threading.Event()

    def run() -> None:
        seq = 0
        while not stop.is_set():
            seq += 1
            for tid, fields in list(terminals.items()):
                pub.send(f"term/{tid}/heartbeat", heartbeat(tid, fields.get("mid", "M1"), seq=seq,
                                                            **{k: v for k, v in fields.items() if k != "mid"}),
                         qos=0, wait=False)
            stop.wait(every)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        pub.close()


def status_of(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code), exc.read().decode()


def page_url(daemon: Daemon, merchant: str, exp: int, key: str, sig_for: str | None = None) -> str:
    return f"{daemon.api}/m/{merchant}?exp={exp}&sig={sign(key.encode(), sig_for or merchant, exp)}"


def test_a_printer_problem_on_the_screen_and_over_the_api(daemon: Daemon, broker: Broker) -> None:
    """Paper out on T1: its screen shows one line after the window, the API shows the notice with
    whose "merchant" and the steps; paper back: the screen is emptied and the notice is resolved."""
    daemon.overrides = FAST
    terminals: dict[str, dict[str, Any]] = {"T1": {"printer": "no_paper"}, "T2": {}}
    with screens(broker, daemon.prefix) as seen, beating(broker, daemon.prefix, terminals):
        daemon.start()
        wait_until(lambda: seen.items("T1"), what="T1's notice")
        [[item]] = seen.items("T1")
        assert (item["whose"], item["title"], item["severity"]) == ("merchant", "打印机缺纸", "major")
        assert "57毫米" in item["action"]
        notice = daemon.get("/api/v1/merchants/M1/notices?lang=en")
        [n] = notice["items"]
        assert (n["kind"], n["cause"], n["whose"], n["status"], n["terminal_ids"]) == \
            ("printer", "no_paper", "merchant", "open", ["T1"])
        assert n["title"] == "Printer out of paper"
        assert any("57 mm" in step for step in n["what_to_do"])
        assert n["incident_id"] == item["incident_id"]
        terminals["T1"] = {"printer": "ok"}
        wait_until(lambda: len(seen.items("T1")) == 2, what="T1's screen emptied")
        assert seen.items("T1")[-1] == []
        assert seen.items("T2") == []
        zh = daemon.get("/api/v1/merchants/M1/notices", auth=True)
        assert [(i["status"], i["title"]) for i in zh["items"]] == [("resolved", "打印机缺纸")]
        assert daemon.get("/api/v1/merchants/NOBODY/notices")["items"] == []


@BOTH_BACKENDS
def test_after_a_restart_only_what_differs_is_published(daemon: Daemon, broker: Broker) -> None:
    """Same settings: nothing is published again. Another terminal language: republished.
    publish_to_terminals = false: the retained notice is cleared (zero-length)."""
    daemon.overrides = {"detect": {"heartbeat_interval_s": 0.5}, "notice": {"link_key": "k"}}
    with screens(broker, daemon.prefix) as seen, beating(broker, daemon.prefix, {"T1": {"printer": "jam"}}):
        daemon.start()
        wait_until(lambda: seen.items("T1"), what="T1's notice")
        wait_until(lambda: daemon.metric("fleetwatch_terminal_notices_acked_total") == 1, what="ack")
        daemon.stop()
        daemon.start()
        time.sleep(2.0)  # a few sweeps with the restored state: nothing differs
        assert daemon.metric("fleetwatch_terminal_notices_published_total") == 0
        assert len(seen.items("T1")) == 1
        daemon.stop()
        daemon.overrides = {"detect": {"heartbeat_interval_s": 0.5},
                            "notice": {"link_key": "k", "terminal_lang": "en"}}
        daemon.start()
        wait_until(lambda: len(seen.items("T1")) == 2, what="T1 in English")
        assert seen.items("T1")[-1][0]["title"] == "Paper jam"
        daemon.stop()
        daemon.overrides = {"detect": {"heartbeat_interval_s": 0.5},
                            "notice": {"link_key": "k", "publish_to_terminals": False}}
        daemon.start()
        wait_until(lambda: len(seen.items("T1")) == 3, what="T1 cleared")
        with seen._lock:
            assert seen.live[-1] == ("T1", b"")
    with screens(broker, daemon.prefix) as late:
        time.sleep(0.5)
        assert late.retained == []


def test_only_a_valid_link_opens_a_merchants_page(daemon: Daemon, broker: Broker) -> None:
    """Tampered merchant id or expiry, an expired link, another merchant's link, malformed ones
    and every other path under /m/ get 403 and a page that names no merchant; the valid link
    shows the merchant's notices."""
    daemon.overrides = FAST
    with beating(broker, daemon.prefix, {"T1": {"printer": "no_paper"}, "T2": {"mid": "M2"}}):
        daemon.start()
        wait_until(lambda: daemon.get("/api/v1/merchants/M1/notices")["items"], what="M1's notice")
        exp = int(time.time()) + 600
        code, body = status_of(page_url(daemon, "M1", exp, "key-one"), {"Accept-Language": "en-US,en;q=0.9"})
        assert code == 200
        assert "Printer out of paper" in body
        assert "You can fix this" in body
        good_sig = sign(b"key-one", "M1", exp)
        refused = {
            "tampered merchant": f"/m/M2?exp={exp}&sig={good_sig}",
            "tampered expiry": f"/m/M1?exp={exp + 1}&sig={good_sig}",
            "expired": page_url(daemon, "M1", int(time.time()) - 1, "key-one").removeprefix(daemon.api),
            "wrong key": page_url(daemon, "M1", exp, "key-two").removeprefix(daemon.api),
            "no signature": f"/m/M1?exp={exp}",
            "nothing": "/m/M1",
            "root": "/m/",
            "bare": "/m",
            "deeper": f"/m/M1/x?exp={exp}&sig={good_sig}",
            "upper-case sig": f"/m/M1?exp={exp}&sig={good_sig.upper()}",
        }
        for what, path in refused.items():
            code, body = status_of(daemon.api + path, {"Accept-Language": "en"})
            assert code == 403, what
            assert "M1" not in body, what
            assert "M2" not in body, what
            assert "Printer" not in body, what
        code, body = status_of(daemon.api + refused["expired"], {"Accept-Language": "en"})
        assert "expired" in body
        code, body = status_of(daemon.api + refused["tampered merchant"])
        assert "链接无效" in body


def test_rotating_the_link_key_ends_every_link(daemon: Daemon, broker: Broker) -> None:
    """A configured key changed, or a generated one deleted from the store: old links get 403.
    A generated key is shared through the store: `fleetwatch notice-link` signs links the daemon accepts."""
    daemon.overrides = {"detect": {"heartbeat_interval_s": 0.5}}
    daemon.start()
    config = daemon.workdir / "fleetwatch.toml"
    link = subprocess.run([sys.executable, "-m", "fleetwatch", "notice-link", "--config", str(config), "M1",
                           "--days", "1"], capture_output=True, text=True, check=True).stdout.strip()
    assert link.startswith(f"http://127.0.0.1:{daemon.http_port}/m/M1?exp=")
    assert status_of(link)[0] == 200
    from_api = daemon.post("/api/v1/merchants/M1/notice-link", {"days": 2})
    assert status_of(from_api["url"])[0] == 200
    daemon.stop()
    with sqlite3.connect(daemon.db_path) as db:
        db.execute("DELETE FROM secrets WHERE name = 'notice.link_key'")
    daemon.start()
    assert status_of(link)[0] == 403
    assert status_of(from_api["url"])[0] == 403
    daemon.stop()
    daemon.overrides = {"detect": {"heartbeat_interval_s": 0.5}, "notice": {"link_key": "first"}}
    daemon.start()
    exp = int(time.time()) + 600
    assert status_of(page_url(daemon, "M1", exp, "first"))[0] == 200
    daemon.stop()
    daemon.overrides = {"detect": {"heartbeat_interval_s": 0.5}, "notice": {"link_key": "second"}}
    daemon.start()
    assert status_of(page_url(daemon, "M1", exp, "first"))[0] == 403
    assert status_of(page_url(daemon, "M1", exp, "second"))[0] == 200


def test_the_merchant_listener_serves_the_page_and_nothing_else(daemon: Daemon, broker: Broker) -> None:
    """With notice.listen set, /m/ is served there only; /api, /metrics and the API docs are 404
    there, and the ops listener no longer serves /m/. Links point at the merchant listener."""
    port = free_port()
    daemon.overrides = {"detect": {"heartbeat_interval_s": 0.5},
                        "notice": {"link_key": "k", "listen": f"127.0.0.1:{port}"}}
    daemon.start()
    merchant = f"http://127.0.0.1:{port}"
    exp = int(time.time()) + 600
    good = f"/m/M1?exp={exp}&sig={sign(b'k', 'M1', exp)}"
    assert status_of(merchant + good)[0] == 200
    for path in ("/api/v1/incidents", "/api/v1/merchants/M1/notices", "/metrics", "/healthz", "/openapi.json",
                 "/docs"):
        assert status_of(merchant + path, {"Authorization": f"Bearer {daemon.token}"})[0] == 404, path
    assert status_of(daemon.api + good)[0] == 404
    link = daemon.post("/api/v1/merchants/M1/notice-link")
    assert link["url"].startswith(f"http://127.0.0.1:{port}/m/M1?")
    assert status_of(link["url"])[0] == 200


@BOTH_BACKENDS
def test_the_api_token_is_generated_once_into_the_store(daemon: Daemon, tmp_path: Path) -> None:
    """An empty http.api_token: generated at first start and kept in the store, so it is the same
    after a restart (and rewritten to the token file each time: beside a SQLite file, or where
    http.token_file says)."""
    daemon.token = ""
    if daemon.store_url is not None:
        daemon.overrides = {"http": {"token_file": str(daemon.workdir / "api-token")}}
    daemon.start(wait_ready=False)
    token_file = daemon.workdir / "api-token"
    wait_until(lambda: token_file.exists() and token_file.read_text().strip(), what="token file")
    daemon.wait_ready()
    first = token_file.read_text().strip()
    daemon.stop()
    token_file.unlink()
    daemon.start()
    wait_until(token_file.exists, what="token file again")
    assert token_file.read_text().strip() == first
    daemon.token = first
    assert daemon.get("/api/v1/incidents")["items"] == []
