"""The daemon's paging path, live: a real daemon pushes its pageable incidents to a real
Alertmanager running the shipped alertmanager.yml, whose webhooks point at a local
receiver (the live-Alertmanager fixture of test_alertmanager.py, reused as is)."""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.deploy import test_alertmanager as am_tests
from tests.publish import Publisher, heartbeat
from tests.services import Broker, Daemon, wait_until

pytestmark = [pytest.mark.broker, pytest.mark.slow]

# The live Alertmanager (shipped config, group_wait/group_interval 1 s, webhook receiver).
alertmanager = am_tests.alertmanager
LiveAlertmanager = am_tests._LiveAlertmanager

TAMPERED, TAMPERED_MERCHANT = "PG-T1", "PG-M1"
PAPER_LOW, PAPER_LOW_MERCHANT = "PG-T2", "PG-M2"
RESEND_S = 1


class Beater(threading.Thread):
    """Heartbeats every second for a few terminals, with fields the test can change."""

    def __init__(self, publisher: Publisher, terminals: dict[str, tuple[str, dict[str, Any]]]) -> None:
        super().__init__(name="beater", daemon=True)
        self.pub = publisher
        self.terminals = terminals
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def set(self, tid: str, **fields: Any) -> None:
        with self.lock:
            self.terminals[tid][1].update(fields)

    def run(self) -> None:
        seq = 0
        try:
            while not self.stopping.is_set():
                seq += 1
                with self.lock:
                    beats = [(tid, heartbeat(tid, mid, seq=seq, **fields)) for tid, (mid, fields) in
                             self.terminals.items()]
                for tid, body in beats:
                    self.pub.send(f"term/{tid}/heartbeat", body)
                self.stopping.wait(1.0)
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)
        if self.error is not None:
            raise self.error


def _am_alerts(am: LiveAlertmanager, **filters: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{am.url}/api/v2/alerts", params=filters, timeout=5)
    assert r.status_code == 200, r.text
    alerts: list[dict[str, Any]] = r.json()
    return alerts


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_tamper_pages_once_resolved_it_clears_and_minor_never_pages(
    alertmanager: LiveAlertmanager, daemon: Daemon, broker: Broker, prefix: str
) -> None:
    """With `notify.min_severity = "major"`, a tamper (critical) reaches the pager webhook
    through Alertmanager as FleetwatchIncident naming its incident id, kind, severity,
    scope, terminal and merchant; a paper_low printer incident (minor) open at the same
    time is never pushed to Alertmanager at all. When the tamper clears (heartbeats say
    `tamper: false`) the daemon resolves the incident and ends the alert itself: it
    leaves Alertmanager's active alerts and the pager gets the resolved notification,
    ending earlier than the alert would have expired on its own."""
    daemon.overrides = {
        "detect": {"heartbeat_interval_s": 1},
        "notify": {"alertmanager_url": alertmanager.url, "min_severity": "major", "resend_s": RESEND_S},
    }
    daemon.start()
    publisher = Publisher(broker.url, prefix, client_id=f"pager-{prefix}")
    beater = Beater(publisher, {
        TAMPERED: (TAMPERED_MERCHANT, {"tamper": True}),
        PAPER_LOW: (PAPER_LOW_MERCHANT, {"printer": "paper_low"}),
    })
    seen_in_am: set[str] = set()  # every incident id Alertmanager ever listed

    def am_alerts(**filters: str) -> list[dict[str, Any]]:
        alerts = _am_alerts(alertmanager, **filters)
        seen_in_am.update(a["labels"].get("incident_id", "") for a in alerts)
        return alerts

    try:
        beater.start()

        # The daemon opened both incidents.
        def opened() -> tuple[dict[str, Any], dict[str, Any]] | None:
            open_ = {(i["kind"], i["terminal_id"]): i for i in daemon.incidents(status="open")}
            tamper, printer = open_.get(("tamper", TAMPERED)), open_.get(("printer", PAPER_LOW))
            return (tamper, printer) if tamper and printer else None

        tamper, printer = wait_until(opened, timeout=30, interval=0.2, what="tamper and paper_low incidents")
        assert (tamper["cause"], tamper["severity"], tamper["scope"]) == ("tamper", "critical", "terminal")
        assert (printer["cause"], printer["severity"]) == ("paper_low", "minor")
        assert printer["suppressed"] is False  # minor by severity, not silenced by a parent

        # The pager gets the tamper, with the labels routing and on-call rely on.
        def paged() -> tuple[str, dict[str, Any], dict[str, Any]] | None:
            am_alerts()
            for path, note in alertmanager.notes.wait_for(0, 0):
                for alert in note["alerts"]:
                    if alert["labels"].get("incident_id") == tamper["id"] and alert["status"] == "firing":
                        return path, note, alert
            return None

        path, note, alert = wait_until(paged, timeout=30, interval=0.2, what="the tamper page")
        assert path == "/pager"
        assert note["status"] == "firing"
        labels = alert["labels"]
        assert labels["alertname"] == "FleetwatchIncident"
        assert labels["incident_id"] == tamper["id"]
        assert labels["kind"] == "tamper"
        assert labels["severity"] == "critical"
        assert labels["scope"] == "terminal"
        assert labels["merchant_id"] == TAMPERED_MERCHANT
        assert labels["terminal_id"] == TAMPERED

        firing = [a for a in am_alerts(active="true") if a["labels"].get("incident_id") == tamper["id"]]
        assert len(firing) == 1, firing
        last_firing_end = _time(firing[0]["endsAt"])

        # The tamper clears: `tamper: false` for clear_after_intervals (3) resolves it.
        beater.set(TAMPERED, tamper=False)

        def resolved() -> dict[str, Any] | None:
            nonlocal last_firing_end
            for a in am_alerts(active="true"):
                if a["labels"].get("incident_id") == tamper["id"]:
                    last_firing_end = max(last_firing_end, _time(a["endsAt"]))
            incident: dict[str, Any] = daemon.get(f"/api/v1/incidents/{tamper['id']}")
            return incident if incident["status"] == "resolved" else None

        wait_until(resolved, timeout=30, interval=0.2, what="the tamper incident to resolve in the daemon")

        def ended() -> dict[str, Any] | None:
            if any(a["labels"].get("incident_id") == tamper["id"] for a in am_alerts(active="true")):
                return None
            for path, note in alertmanager.notes.wait_for(0, 0):
                alerts: list[dict[str, Any]] = note["alerts"]
                for a in alerts:
                    if a["labels"].get("incident_id") == tamper["id"] and a["status"] == "resolved":
                        assert path == "/pager"
                        return a
            return None

        gone = wait_until(ended, timeout=30, interval=0.2, what="Alertmanager to resolve the tamper alert")
        # The daemon ended the alert (endsAt = when it resolved), rather than letting it
        # run out at the endsAt of its last re-send (4 x resend_s ahead).
        assert _time(gone["endsAt"]) < last_firing_end, (gone["endsAt"], last_firing_end)

        # The minor incident is still open and was never pushed.
        still = daemon.get(f"/api/v1/incidents/{printer['id']}")
        assert still["status"] == "open", still
        am_alerts()  # everything Alertmanager holds: active, silenced, inhibited, unprocessed
        assert printer["id"] not in seen_in_am
        assert tamper["id"] in seen_in_am
        notified = {a["labels"].get("terminal_id") for _, n in alertmanager.notes.wait_for(0, 0) for a in n["alerts"]}
        assert PAPER_LOW not in notified, notified
    finally:
        beater.stop()
        publisher.close()
