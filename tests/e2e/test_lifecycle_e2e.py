"""Suspension and closure end to end (CONTRACT §7), and the registry operations of §8: the real
daemon, a real broker, the real store, the acquirer's statuses published retained as its host does.

Heartbeats every 0.5 s (silent after 1.5 s) keep each test short; time in the daemon is real.
The tests that restart the daemon to show what the store kept run on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.error
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.publish import Publisher, heartbeat, now_ms, publisher, settlement, txn
from tests.services import BOTH_BACKENDS, Broker, Daemon, wait_until

pytestmark = pytest.mark.broker

FAST = {"heartbeat_interval_s": 0.5, "sweep_intervals": 0.5}
VALID_PAN = "4111111111111111"


def status(tid: str, value: str, mid: str = "M1", **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"v": 1, "terminal_id": tid, "merchant_id": mid, "status": value, "ts": now_ms()}
    body.update(fields)
    return body


def decide(pub: Publisher, tid: str, body: dict[str, Any] | bytes) -> None:
    """The acquirer's host publishes a terminal's status, QoS 1, retained."""
    pub.send(f"host/terminal/{tid}/status", body, retain=True)


def open_of(daemon: Daemon, tid: str) -> set[tuple[str, str]]:
    return {(i["kind"], i["cause"]) for i in daemon.incidents(terminal_id=tid, status="open")}


def beats(pub: Publisher, tids: list[str], mid: str, seconds: float, seq: dict[str, int], **fields: Any) -> None:
    """Heartbeats every 0.5 s for ``seconds`` from each of ``tids``."""
    end = time.monotonic() + seconds
    while True:
        for tid in tids:
            seq[tid] = seq.get(tid, 0) + 1
            pub.send(f"term/{tid}/heartbeat", heartbeat(tid, mid, seq=seq[tid], **fields), qos=0, wait=False)
        pub.flush()
        if time.monotonic() >= end:
            return
        time.sleep(0.5)


class Beater:
    """Heartbeats every 0.5 s from a thread, on its own connection, for the terminals it is given."""

    def __init__(self, pub: Publisher) -> None:
        self._pub = pub
        self._beating: dict[str, tuple[str, dict[str, Any]]] = {}
        self._seq: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def beat(self, tid: str, mid: str, **fields: Any) -> None:
        with self._lock:
            self._beating[tid] = (mid, fields)

    def silence(self, tid: str) -> None:
        with self._lock:
            self._beating.pop(tid, None)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                now = list(self._beating.items())
            for tid, (mid, fields) in now:
                self._seq[tid] = self._seq.get(tid, 0) + 1
                self._pub.send(f"term/{tid}/heartbeat", heartbeat(tid, mid, seq=self._seq[tid], **fields), qos=0,
                               wait=False)
            self._stop.wait(0.5)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def beater(broker: Broker, prefix: str) -> Iterator[Beater]:
    with publisher(broker.url, prefix) as pub:
        b = Beater(pub)
        try:
            yield b
        finally:
            b.stop()


@BOTH_BACKENDS
def test_suspension_records_the_decision_and_silences_nothing_but_what_it_explains(
    daemon: Daemon, broker: Broker,
) -> None:
    """A suspended terminal: its open config incident resolves (resolved_by suspended), one info record
    opens and is never pageable, rc 58 declines and its silence open nothing, the API and the
    merchant notice say so. A status with a card number in its note is rejected. After a restart the
    suspension holds (the retained status handed over again changes nothing); back to active, a
    later silence opens as usual. A status for a terminal not seen yet waits for it."""
    daemon.overrides = {"detect": FAST}
    daemon.start()
    seq: dict[str, int] = {}
    with publisher(broker.url, daemon.prefix) as pub:
        beats(pub, ["S1"], "MS", 0.5, seq)
        pub.send("term/S1/txn", txn("S1", "S1-1", "MS", rc="58", outcome="declined"))
        wait_until(lambda: ("config", "not_permitted") in open_of(daemon, "S1"), what="rc 58 opens config")
        decide(pub, "S9", status("S9", "suspended", "MS", reason="unpaid_fees"))
        decide(pub, "S1", status("S1", "suspended", "MS", note=f"card {VALID_PAN}"))  # rejected: pan
        wait_until(lambda: daemon.metric("fleetwatch_messages_rejected_total", reason="pan") >= 1, what="pan")
        assert daemon.get("/api/v1/terminals/S1")["acquirer_status"] == "active"
        decide(pub, "S1", status("S1", "suspended", "MS", reason="risk_review", note="交易异常，需提供交易凭证"))
        wait_until(lambda: open_of(daemon, "S1") == {("config", "suspended")}, what="suspension recorded")
        [ended] = [i for i in daemon.incidents(terminal_id="S1", status="resolved") if i["cause"] == "not_permitted"]
        assert ended["evidence"]["resolved_by"] == "suspended"
        [record] = daemon.incidents(terminal_id="S1", status="open")
        assert (record["severity"], record["evidence"]["reason"], record["evidence"]["note"]) == (
            "info", "risk_review", "交易异常，需提供交易凭证")
        terminal = daemon.get("/api/v1/terminals/S1")
        assert (terminal["acquirer_status"], terminal["reason"]) == ("suspended", "risk_review")
        assert terminal["since"].endswith("Z")
        for n in range(3):
            pub.send("term/S1/txn", txn("S1", f"S1-d{n}", "MS", rc="58", outcome="declined"))
        time.sleep(3.0)  # six intervals of silence: a terminal that is not suspended would be offline
        assert open_of(daemon, "S1") == {("config", "suspended")}
        assert daemon.metric("fleetwatch_terminals", state="suspended") == 1
        assert daemon.metric("fleetwatch_incidents_pageable", kind="config") == 0
        assert daemon.metric("fleetwatch_incidents_open", kind="config", severity="info") == 1
        assert daemon.metric("fleetwatch_messages_received_total", type="status") >= 2
        notice = daemon.get("/api/v1/merchants/MS/notices?lang=en")
        [item] = [i for i in notice["items"] if i["cause"] == "suspended"]
        assert (item["whose"], item["note"], item["severity"]) == ("acquirer", "交易异常，需提供交易凭证", "info")
        assert "ID card" in " ".join(item["what_to_do"])
        assert not [i for i in notice["items"] if i["cause"] == "not_permitted"]  # explained by the suspension

        assert daemon.stop() == 0
        daemon.start()
        assert daemon.get("/api/v1/terminals/S1")["acquirer_status"] == "suspended"
        time.sleep(2.5)  # past the start's own wait: the retained status came again, changed nothing
        assert [i["cause"] for i in daemon.incidents(terminal_id="S1", status="open")] == ["suspended"]

        beats(pub, ["S9"], "MS", 0.5, seq)
        wait_until(lambda: open_of(daemon, "S9") == {("config", "suspended")}, what="S9's waiting status applied")

        decide(pub, "S1", status("S1", "active", "MS"))
        wait_until(lambda: not open_of(daemon, "S1"), what="back to active")
        beats(pub, ["S1"], "MS", 0.5, seq)
        wait_until(lambda: ("network", "offline") in open_of(daemon, "S1"), what="a later silence opens")
        [lifted] = [i for i in daemon.incidents(terminal_id="S1") if i["cause"] == "suspended"]
        assert lifted["evidence"]["resolved_by"] == "active"


def retained_notice(broker: Broker, topic: str) -> bytes | None:
    """The retained message on ``topic`` now, as a terminal subscribing would get it (None: none)."""
    got: list[bytes] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.on_message = lambda _c, _u, msg: got.append(bytes(msg.payload))
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        client.subscribe(topic, qos=1)
        time.sleep(1.0)
    finally:
        client.loop_stop()
        client.disconnect()
    return got[0] if got else None


def test_closure_leaves_the_fleet_and_watches_the_money_until_settled(daemon: Daemon, broker: Broker) -> None:
    """Of three terminals of MC, C1 (two unsettled sales, a printer out of paper on its screen) and C2 (no
    money) are closed. They leave fleetwatch_terminals; C1's config/closed record and its notice carry the
    money still to come (C2's, with nothing to come, is over at once); C1's batch is never closed, so its
    settlement_gap opens and stays; C1's screen is cleared; C3, the shop's one remaining terminal, going
    dark is a terminal incident, not a dark shop; a payment on C2 opens config/not_registered. After a
    restart the closure holds. The settlement ends the gap and the record."""
    daemon.overrides = {"detect": FAST, "settlement": {"batch_close_deadline_s": 4}}
    daemon.start()
    with beater(broker, daemon.prefix) as fleet, publisher(broker.url, daemon.prefix) as pub:
        fleet.beat("C1", "MC", printer="no_paper")
        fleet.beat("C2", "MC")
        fleet.beat("C3", "MC")
        for n in range(2):
            pub.send("term/C1/txn", txn("C1", f"C1-s{n}", "MC", batch_no=5, amount_minor=12800))
        topic = f"{daemon.prefix}/term/C1/notice"
        wait_until(lambda: retained_notice(broker, topic), timeout=20, what="C1's screen shows its paper")
        for tid in ("C1", "C2"):
            decide(pub, tid, status(tid, "closed", "MC", reason="contract_end"))
        [record] = wait_until(lambda: [i for i in daemon.incidents(terminal_id="C1", status="open")
                                       if i["cause"] == "closed"], what="C1's closure record")
        assert record["evidence"]["unsettled"] == [
            {"batch_no": 5, "currency": "CNY", "amount_minor": 25600, "business_date": None}]
        [c2] = wait_until(lambda: [i for i in daemon.incidents(terminal_id="C2") if i["cause"] == "closed"],
                          what="C2's closure record")
        assert (c2["status"], c2["evidence"]["resolved_by"]) == ("resolved", "settled")
        [item] = [i for i in daemon.get("/api/v1/merchants/MC/notices?lang=zh-CN")["items"]
                  if i["cause"] == "closed" and i["terminal_ids"] == ["C1"]]
        assert [m["display"] for m in item["money"]] == ["¥256.00"]
        assert "¥256.00" in item["next"]
        assert ("printer", "no_paper") not in open_of(daemon, "C1")  # closure ends all but the money
        wait_until(lambda: daemon.metric("fleetwatch_terminals") == 1, what="closed terminals not counted")
        assert daemon.metric("fleetwatch_terminals", state="online") == 1
        wait_until(lambda: retained_notice(broker, topic) is None, timeout=20, what="C1's screen cleared")

        pub.send("term/C2/txn", txn("C2", "C2-late", "MC", rc="97", outcome="declined"))
        wait_until(lambda: ("config", "not_registered") in open_of(daemon, "C2"), what="C2 still in use")
        wait_until(lambda: ("settlement_gap", "batch_not_closed") in open_of(daemon, "C1"), what="C1's gap")
        for tid in ("C1", "C2", "C3"):
            fleet.silence(tid)
        wait_until(lambda: ("network", "offline") in open_of(daemon, "C3"), what="C3 dark")
        time.sleep(1.0)
        assert not daemon.incidents(merchant_id="MC", scope="merchant")  # a shop of one is not a dark shop
        assert open_of(daemon, "C1") == {("config", "closed"), ("settlement_gap", "batch_not_closed")}

        assert daemon.stop() == 0
        daemon.start()
        assert daemon.get("/api/v1/terminals/C2")["acquirer_status"] == "closed"
        wait_until(lambda: daemon.metric("fleetwatch_terminals", state="offline") == 1, what="C3 only")
        assert daemon.metric("fleetwatch_terminals") == 1
        pub.send("host/settlement", settlement("C1", "MC", batch_no=5, settled_count=2, settled_amount_minor=25600))
        wait_until(lambda: open_of(daemon, "C1") == set(), what="money settled: gap and record resolved")
        [done] = [i for i in daemon.incidents(terminal_id="C1") if i["cause"] == "closed"]
        assert done["evidence"]["resolved_by"] == "settled"


def test_merchant_maintenance_and_a_terminal_that_moves(daemon: Daemon, broker: Broker) -> None:
    """POST /api/v1/merchants/{id}/maintenance puts all the merchant's terminals in maintenance (their
    silence opens nothing), DELETE ends it; an unknown merchant is a 404. A terminal that comes back
    under another merchant takes its open printer incident along."""
    daemon.overrides = {"detect": FAST}
    daemon.start()
    seq: dict[str, int] = {}
    with publisher(broker.url, daemon.prefix) as pub, beater(broker, daemon.prefix) as fleet:
        fleet.beat("R9", "MO", printer="jam")
        beats(pub, ["R1", "R2"], "MR", 0.5, seq)
        until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
        window = daemon.post("/api/v1/merchants/MR/maintenance", {"until": until})
        assert (window["terminal_ids"], window["until"]) == (["R1", "R2"], until.replace("Z", ".000Z"))
        assert daemon.get("/api/v1/terminals/R2")["in_maintenance"] is True
        with pytest.raises(urllib.error.HTTPError) as refused:
            daemon.post("/api/v1/merchants/NOBODY/maintenance", {"until": until})
        assert refused.value.code == 404
        refused.value.close()
        time.sleep(2.5)
        assert not daemon.incidents(merchant_id="MR")
        ended = daemon.post("/api/v1/merchants/MR/maintenance", method="DELETE")
        assert (ended["terminal_ids"], ended["until"]) == (["R1", "R2"], None)
        assert daemon.get("/api/v1/terminals/R1")["in_maintenance"] is False

        [jam] = wait_until(lambda: daemon.incidents(terminal_id="R9", status="open"), what="R9's jam")
        assert jam["merchant_id"] == "MO"
        fleet.beat("R9", "MR", printer="jam")
        wait_until(lambda: daemon.get(f"/api/v1/incidents/{jam['id']}")["merchant_id"] == "MR", what="moved")
        events = daemon.get(f"/api/v1/incidents/{jam['id']}/events")
        assert {"reason": "terminal_moved", "from_merchant_id": "MO", "to_merchant_id": "MR"} in [
            e["detail"] for e in events]


@BOTH_BACKENDS
def test_hours_api_shapes_and_refusals(daemon: Daemon) -> None:
    """GET of a merchant never seen: source none; PUT configured hours, GET them back; a bad body is a
    422 naming what is wrong; DELETE returns to learning (none again here)."""
    daemon.start()
    assert daemon.get("/api/v1/merchants/MH/hours") == {"source": "none", "timezone": "Asia/Shanghai", "weekly": {}}
    body = {"timezone": "Europe/Berlin", "weekly": {"mon": ["08:00-22:00"], "sat": ["10:00-02:00"]}}
    put = daemon.post("/api/v1/merchants/MH/hours", body, method="PUT")
    assert put == {"source": "configured", **body}
    assert daemon.get("/api/v1/merchants/MH/hours") == put
    with pytest.raises(urllib.error.HTTPError) as refused:
        daemon.post("/api/v1/merchants/MH/hours", {"timezone": "Asia/Shanghai", "weekly": {"mon": ["8-22"]}},
                    method="PUT")
    assert refused.value.code == 422
    assert "HH:MM" in json.loads(refused.value.read())["detail"]
    refused.value.close()
    assert daemon.post("/api/v1/merchants/MH/hours", method="DELETE")["source"] == "none"
    daemon.stop()
    daemon.start()
    assert daemon.get("/api/v1/merchants/MH/hours")["source"] == "none"
    daemon.post("/api/v1/merchants/MH/hours", body, method="PUT")
    daemon.stop()
    daemon.start()
    assert daemon.get("/api/v1/merchants/MH/hours") == {"source": "configured", **body}
