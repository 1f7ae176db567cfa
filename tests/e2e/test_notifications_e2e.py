"""Merchant notifications end to end (CONTRACT §6): a real broker, the daemon as a process, and
a real HTTP receiver on loopback that checks every signature and keeps the de-duplicated
log a receiver honouring ``Idempotency-Key`` keeps.

Heartbeats every 0.5 s, so a terminal-scope open waits one correlation window (2.5 s) and a
resolve one clear window (1.5 s); the worker starts a second after an event is due.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.notify_bench import receiver_process
from bench.receiver import Answer, Receiver, Request
from tests.e2e.test_correlation_e2e import KITS, roster, running_fleet
from tests.e2e.test_notices_e2e import beating
from tests.services import BOTH_BACKENDS, Broker, Daemon, wait_until

pytestmark = pytest.mark.broker

SECRET = "receiver-secret-0123456789"
FAST: dict[str, dict[str, Any]] = {"detect": {"heartbeat_interval_s": 0.5},
                                   "notify": {"retry_initial_s": 0.2, "retry_max_s": 0.5, "poll_s": 0.1}}


def webhook(receiver: Receiver, name: str = "sms", **extra: Any) -> str:
    return webhook_at(receiver.url, name, **extra)


def webhook_at(url: str, name: str = "sms", **extra: Any) -> str:
    fields = {"name": name, "url": url, "secret": SECRET, "lang": "en", **extra}
    return "\n[[notify.merchant_webhooks]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in fields.items())


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(SECRET.encode()).start()
    yield r
    r.stop()


def outbox(daemon: Daemon) -> list[tuple[str, str, str, str]]:
    """(event_id, type, notice_id, status) of every outbox row, in order."""
    return [tuple(r) for r in daemon.rows(
        "SELECT event_id, type, notice_id, status FROM notifications ORDER BY seq")]


def kinds_of(log: list[Request]) -> list[tuple[str, str]]:
    return [(r.event["type"], r.event["item"]["incident_id"]) for r in log if "item" in r.event]


@BOTH_BACKENDS
def test_a_receiver_down_and_a_killed_daemon_lose_no_event_and_repeat_none(
    daemon: Daemon, broker: Broker, receiver: Receiver,
) -> None:
    """Paper runs out on two terminals while the receiver answers 503; the daemon is SIGKILLed with
    the opens pending, restarted, the receiver comes back up, the paper goes back in: each event
    reaches the receiver's log exactly once, under the id it was written with, opened before
    resolved per incident, every body signed."""
    up = False

    def until_up(_r: Request, _attempt: int) -> Answer:
        return (200, {}) if up else (503, {})

    receiver.policy = until_up
    daemon.overrides = FAST
    daemon.extra_toml = webhook(receiver)
    terminals: dict[str, dict[str, Any]] = {"T1": {"printer": "no_paper"}, "T2": {"printer": "no_paper"},
                                            "T3": {}}
    daemon.start()
    with beating(broker, daemon.prefix, terminals):
        written = wait_until(lambda: [r for r in outbox(daemon) if r[1] == "notice.opened"] or None, timeout=20,
                             what="the opens in the outbox")
        wait_until(lambda: len(receiver.snapshot()[0]) >= 4, timeout=20, what="a few refused attempts")
        daemon.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        daemon.proc.wait(10)  # type: ignore[union-attr]
        pending = outbox(daemon)
        assert {r[3] for r in pending} == {"pending"}
        assert len([r for r in pending if r[1] == "notice.opened"]) == 2
        daemon.start()
        up = True
        wait_until(lambda: len(receiver.snapshot()[1]) >= 2, timeout=20, what="the opens delivered")
        terminals["T1"]["printer"] = terminals["T2"]["printer"] = "ok"
        wait_until(lambda: len(receiver.snapshot()[1]) >= 4, timeout=20, what="the resolves delivered")
    requests, log = receiver.snapshot()
    assert all(r.signature_ok for r in requests)
    rows = outbox(daemon)
    assert {r[0] for r in written} <= {r[0] for r in rows}  # the ids written before the kill survive
    assert sorted(r.event_id for r in log) == sorted(r[0] for r in rows if r[3] == "sent")
    assert len({r.event_id for r in log}) == len(log) == 4
    by_incident: dict[str, list[str]] = {}
    for event_type, incident_id in kinds_of(log):
        by_incident.setdefault(incident_id, []).append(event_type)
    assert sorted(by_incident.values()) == [["notice.opened", "notice.resolved"]] * 2
    assert {r.event["item"]["terminal_ids"][0] for r in log} == {"T1", "T2"}
    assert all(len(r.event["sms_text"]) <= 70 and r.event["sent_at"] for r in log)
    assert daemon.metric("fleetwatch_notifications_sent_total", channel="sms", type="notice.opened") == 2
    page = daemon.get("/api/v1/notifications?status=sent")
    assert {i["event_id"] for i in page["items"]} == {r.event_id for r in log}
    assert {i["receiver"] for i in page["items"]} == {"sms"}


def test_a_400_is_not_retried_and_shows_as_failed(daemon: Daemon, broker: Broker, receiver: Receiver) -> None:
    receiver.policy = lambda _r, _a: (400, {})
    daemon.overrides = FAST
    daemon.extra_toml = webhook(receiver)
    daemon.start()
    with beating(broker, daemon.prefix, {"T1": {"printer": "jam"}}):
        wait_until(lambda: daemon.get("/api/v1/notifications?status=failed")["items"] or None, timeout=20,
                   what="the open failed")
        time.sleep(1.5)  # several retry periods: nothing more is sent
    requests, log = receiver.snapshot()
    assert len(requests) == 1
    assert log == []
    [failed] = daemon.get("/api/v1/notifications?status=failed")["items"]
    assert (failed["type"], failed["attempts"], failed["last_error"]) == ("notice.opened", 1, "HTTP 400")
    assert daemon.metric("fleetwatch_notifications_failed_total", channel="sms") == 1
    assert daemon.get("/api/v1/notifications?status=pending")["items"] == []


@pytest.mark.slow
def test_a_host_outage_is_one_message_per_shop_not_one_per_terminal(
    daemon: Daemon, broker: Broker, tmp_path: Path,
) -> None:
    """2,000 terminals in 1,000 shops; every one of them fails against the host (three in four
    with rc 91/96, one in four at the connect stage, which opens terminal incidents): each shop
    gets one ``upstream`` event and at most one resolve, and no terminal-level event is sent.
    (The receiver runs in its own process: the fleet's publisher thread keeps this one busy.)"""
    terms = roster(2000, 1000, lambda i: KITS[i % len(KITS)])
    log_file = tmp_path / "received.jsonl"

    def received() -> list[dict[str, Any]]:
        text = log_file.read_text(encoding="utf-8") if log_file.exists() else ""
        return [json.loads(line) for line in text.splitlines() if line]

    with receiver_process(0.0, log_file=str(log_file), secret=SECRET) as port:
        daemon.extra_toml = webhook_at(f"http://127.0.0.1:{port}/hook")
        with running_fleet(daemon, broker, terms) as fleet:
            fleet.fail([t.tid for t in terms], lambda tid: ("rc91", "rc96", "rc91", "connect")[int(tid[1:]) % 4])
            wait_until(lambda: len({e["merchant_id"] for e in received()}) >= 1000, timeout=60,
                       what="every shop told of the outage")
            time.sleep(3)  # the connect failures' own incidents open (and are adopted) meanwhile
            fleet.heal()
            wait_until(lambda: daemon.incidents(status="open") == [], timeout=60, what="the outage resolved")
            time.sleep(4)  # the resolves wait one clear window, then the worker's second
        events = received()
    terminal_incidents = {i["id"] for i in daemon.incidents(status="all") if i["scope"] == "terminal"}
    assert terminal_incidents, "the connect failures opened terminal incidents"
    per_shop: dict[str, list[str]] = {}
    for event in events:
        assert event["item"]["whose"] == "upstream", event
        assert event["item"]["incident_id"] not in terminal_incidents
        per_shop.setdefault(event["merchant_id"], []).append(event["type"])
    assert len(per_shop) == 1000
    assert {tuple(v) for v in per_shop.values()} <= {("notice.opened",), ("notice.opened", "notice.resolved")}
    resolved = sum(1 for v in per_shop.values() if len(v) == 2)
    print(f"\n[host outage notifications] shops=1000 terminals=2000 events={len(events)} resolves={resolved}")


def test_quiet_hours_on_a_compressed_day_hold_a_major_event_and_let_a_critical_one_through(
    daemon: Daemon, broker: Broker, receiver: Receiver,
) -> None:
    """A 240 s day (an hour is 10 s): quiet hours from a minute ago for two hours. A terminal's
    paper runs out and another is tampered with: the tamper (critical) is sent after the
    correlation window; the paper (major) only when the quiet hours end."""
    day_s = 240.0
    minute = int((time.time() % day_s) / day_s * 1440) - 1
    start, end = minute % 1440, (minute + 120) % 1440
    quiet = f"{start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}"
    quiet_end = time.time() - (time.time() % day_s) + (minute + 120) * day_s / 1440
    daemon.overrides = {**FAST, "detect": {"heartbeat_interval_s": 0.5, "day_s": day_s}}
    daemon.extra_toml = webhook(receiver, quiet_hours=quiet)
    daemon.start()
    with beating(broker, daemon.prefix, {"T1": {"printer": "no_paper"}, "T2": {"tamper": True}}):
        wait_until(lambda: len(receiver.snapshot()[1]) >= 1, timeout=20, what="the tamper event")
        assert time.time() < quiet_end - 2
        [first] = receiver.snapshot()[1]
        assert (first.event["type"], first.event["item"]["kind"]) == ("notice.opened", "tamper")
        wait_until(lambda: len(receiver.snapshot()[1]) >= 2, timeout=40, what="the paper event after the quiet hours")
        assert time.time() >= quiet_end - 0.5
    second = receiver.snapshot()[1][1]
    assert (second.event["type"], second.event["item"]["cause"]) == ("notice.opened", "no_paper")
