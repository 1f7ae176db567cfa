"""Alertmanager config: valid for amtool, routes as documented, and, live, one outage
becomes one notification."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.deploy.tools import DEPLOY, free_port, require_binary, run_tool, stop_process, wait_until_ready

CONFIG = DEPLOY / "alertmanager" / "alertmanager.yml"


def test_amtool_check_config() -> None:
    """amtool accepts alertmanager.yml (routes, inhibit rules, receivers)."""
    out = run_tool([require_binary("amtool"), "check-config", str(CONFIG)])
    assert "SUCCESS" in out, out
    assert "null" in CONFIG.read_text()


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        ("alertname=FleetwatchIncident kind=host_outage scope=fleet severity=critical", "oncall-pager"),
        ("alertname=FleetwatchIncident kind=tamper scope=terminal severity=critical", "oncall-pager"),
        ("alertname=FleetwatchIncident kind=network scope=group severity=major", "oncall-pager"),
        ("alertname=FleetwatchIncident kind=network scope=terminal severity=major", "field-service"),
        ("alertname=FleetwatchIncident kind=printer scope=merchant severity=major", "field-service"),
        ("alertname=FleetwatchIncident kind=printer scope=terminal severity=minor", "ops-tickets"),
        ("alertname=FleetwatchIncident kind=power scope=terminal severity=info", "null"),
        ("alertname=FleetwatchIncident kind=settlement_gap scope=terminal severity=major", "settlement-desk"),
        (
            "alertname=FleetwatchSettlementMoneyAtStake kind=settlement_gap scope=fleet severity=major",
            "settlement-desk",
        ),
        ("alertname=FleetwatchDown severity=critical", "oncall-pager"),
        ("alertname=FleetwatchStoreSlow severity=major", "oncall-pager"),
        ("alertname=FleetwatchMqttFlapping severity=minor", "ops-tickets"),
    ],
)
def test_routing_by_severity_and_scope(labels: str, receiver: str) -> None:
    """An alert with these labels is routed to this receiver (amtool's route test):
    critical pages, single-terminal majors go to field service, info goes nowhere."""
    run_tool(
        [
            require_binary("amtool"),
            "config",
            "routes",
            "test",
            f"--config.file={CONFIG}",
            f"--verify.receivers={receiver}",
            *labels.split(),
        ]
    )


# --------------------------------------------------------------------- live Alertmanager


class _Notifications:
    """What the webhook receiver got: (path, payload) in arrival order."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []
        self.cond = threading.Condition()

    def add(self, path: str, payload: dict[str, Any]) -> None:
        with self.cond:
            self.items.append((path, payload))
            self.cond.notify_all()

    def wait_for(self, count: int, timeout: float) -> list[tuple[str, dict[str, Any]]]:
        with self.cond:
            self.cond.wait_for(lambda: len(self.items) >= count, timeout=timeout)
            return list(self.items)


def _receiver(notes: _Notifications) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            notes.add(self.path, json.loads(body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # quiet test output
            return

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


class _LiveAlertmanager:
    def __init__(self, url: str, notes: _Notifications) -> None:
        self.url = url
        self.notes = notes

    def post(self, alerts: list[dict[str, Any]]) -> None:
        r = httpx.post(f"{self.url}/api/v2/alerts", json=alerts, timeout=5)
        assert r.status_code == 200, r.text

    def settle(self, count: int, *, timeout: float = 15.0, quiet: float = 3.0) -> list[tuple[str, dict[str, Any]]]:
        """Wait for ``count`` notifications in all, then ``quiet`` seconds more so any
        extra notification (the failure we look for) has time to arrive."""
        self.notes.wait_for(count, timeout)
        time.sleep(quiet)
        return self.notes.wait_for(count, 0)


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[_LiveAlertmanager]:
    """The real alertmanager.yml with its webhooks pointed at a local receiver and
    group_wait/group_interval shortened to 1s; everything else unchanged."""
    binary = require_binary("alertmanager")
    notes = _Notifications()
    server = _receiver(notes)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    text = CONFIG.read_text()
    assert "http://127.0.0.1:5001/" in text
    text = text.replace("http://127.0.0.1:5001/", f"http://127.0.0.1:{server.server_address[1]}/")
    text = re.sub(r"(group_wait|group_interval):\s*\S+", r"\1: 1s", text)
    config = tmp_path / "alertmanager.yml"
    config.write_text(text)
    port = free_port()
    log = tmp_path / "alertmanager.log"
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
                "--log.level=info",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_ready(proc, log=log, port=port, http_path="/-/ready")
        yield _LiveAlertmanager(f"http://127.0.0.1:{port}", notes)
    finally:
        stop_process(proc)
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _now(delta_s: float = 0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=delta_s)).isoformat().replace("+00:00", "Z")


def _incident(
    incident_id: str,
    kind: str,
    cause: str,
    severity: str,
    scope: str,
    *,
    terminal: str | None = None,
    merchant: str | None = None,
    ends: str | None = None,
) -> dict[str, Any]:
    labels = {
        "alertname": "FleetwatchIncident",
        "incident_id": incident_id,
        "kind": kind,
        "cause": cause,
        "severity": severity,
        "scope": scope,
        "source": "fleetwatch",
    }
    if terminal:
        labels["terminal_id"] = terminal
    if merchant:
        labels["merchant_id"] = merchant
    alert: dict[str, Any] = {
        "labels": labels,
        "annotations": {"summary": f"{kind} {cause}", "description": f"{scope} {kind} incident"},
        "startsAt": _now(-60),
    }
    if ends:
        alert["endsAt"] = ends
    return alert


def _alert_ids(payload: dict[str, Any]) -> set[str]:
    return {a["labels"]["incident_id"] for a in payload["alerts"]}


def _post_outage(alertmanager: _LiveAlertmanager, fleet: dict[str, Any], terminals: list[dict[str, Any]]) -> None:
    """The upstream alert first, then the terminal ones, as the daemon does: Alertmanager's
    inhibitor learns of a source alert asynchronously, so posting both in one request races."""
    alertmanager.post([fleet])
    time.sleep(0.5)
    alertmanager.post(terminals)


def test_outage_storm_is_one_notification(alertmanager: _LiveAlertmanager) -> None:
    """A fleet host_outage plus 50 terminal network alerts it explains reach the pager as
    exactly one notification carrying only the fleet alert (the terminal ones are
    inhibited); resolving the outage sends one resolved notification, still without any
    terminal alert."""
    fleet = _incident("I-FLEET", "host_outage", "host_errors", "critical", "fleet")
    terminals = [
        _incident(f"I-T{i}", "network", "comm_errors", "major", "terminal", terminal=f"T{i:05d}", merchant=f"M{i % 7}")
        for i in range(50)
    ]
    _post_outage(alertmanager, fleet, terminals)

    got = alertmanager.settle(1)
    assert len(got) == 1, [(p, _alert_ids(n)) for p, n in got]
    path, note = got[0]
    assert path == "/pager"
    assert note["status"] == "firing"
    assert _alert_ids(note) == {"I-FLEET"}
    assert note["groupLabels"] == {"alertname": "FleetwatchIncident", "kind": "host_outage", "scope": "fleet"}

    # resolve everything: the fleet alert last, as the daemon would after its children
    end = _now()
    alertmanager.post(
        [
            *(
                _incident(
                    a["labels"]["incident_id"],
                    "network",
                    "comm_errors",
                    "major",
                    "terminal",
                    terminal=a["labels"]["terminal_id"],
                    merchant=a["labels"]["merchant_id"],
                    ends=end,
                )
                for a in terminals
            ),
            _incident("I-FLEET", "host_outage", "host_errors", "critical", "fleet", ends=end),
        ]
    )
    got = alertmanager.settle(2)
    assert len(got) == 2, [(p, n["status"], _alert_ids(n)) for p, n in got]
    path, note = got[1]
    assert (path, note["status"]) == ("/pager", "resolved")
    assert _alert_ids(note) == {"I-FLEET"}


def test_children_notify_once_the_outage_is_gone(alertmanager: _LiveAlertmanager) -> None:
    """Inhibition is what silenced the terminals: when the fleet alert resolves while 50
    terminals still fail, they reach field service as one notification (grouped by
    kind, not one per terminal), and the pager gets the outage's resolution."""
    fleet = _incident("I-FLEET", "host_outage", "offline_wave", "critical", "fleet")
    terminals = [
        _incident(f"I-T{i}", "network", "offline", "major", "terminal", terminal=f"T{i:05d}", merchant="M1")
        for i in range(50)
    ]
    _post_outage(alertmanager, fleet, terminals)
    got = alertmanager.settle(1)
    assert [(p, _alert_ids(n)) for p, n in got] == [("/pager", {"I-FLEET"})]

    alertmanager.post([_incident("I-FLEET", "host_outage", "offline_wave", "critical", "fleet", ends=_now())])
    got = alertmanager.settle(3)
    assert len(got) == 3, [(p, n["status"], len(n["alerts"])) for p, n in got]
    later = dict(got[1:])
    assert later["/pager"]["status"] == "resolved"
    assert _alert_ids(later["/pager"]) == {"I-FLEET"}
    assert later["/field-service"]["status"] == "firing"
    assert _alert_ids(later["/field-service"]) == {f"I-T{i}" for i in range(50)}


def test_hardware_alerts_are_not_inhibited_by_an_outage(alertmanager: _LiveAlertmanager) -> None:
    """During a host outage, a tamper on one terminal still pages: the outage explains
    network trouble only."""
    alertmanager.post(
        [
            _incident("I-FLEET", "host_outage", "host_errors", "critical", "fleet"),
            _incident("I-TAMPER", "tamper", "tamper", "critical", "terminal", terminal="T1", merchant="M1"),
        ]
    )
    got = alertmanager.settle(2)
    assert len(got) == 2
    assert sorted(i for _, note in got for i in _alert_ids(note)) == ["I-FLEET", "I-TAMPER"]
    assert {path for path, _ in got} == {"/pager"}


# ------------------------------------------------------- inhibition: only what the upstream explains

KIT_A920_241 = {"model": "A920", "fw": "2.4.1", "net_type": "4g"}
KIT_A920_250 = {"model": "A920", "fw": "2.5.0", "net_type": "wifi"}
KIT_P60 = {"model": "P60", "fw": "3.0.2", "net_type": "wifi"}
KIT_N910 = {"model": "N910", "fw": "6.1.0", "net_type": "eth"}


def _upstream(incident_id: str, cause: str, group: dict[str, str] | None = None) -> dict[str, Any]:
    """An upstream alert as the daemon labels it (alert_for): a group one carries its attributes."""
    alert = _incident(incident_id, "host_outage", cause, "critical", "group" if group else "fleet")
    if group:
        alert["labels"]["group"] = ",".join(f"{k}={v}" for k, v in sorted(group.items()))
        alert["labels"].update(group)
    return alert


def _child(incident_id: str, kind: str, cause: str, kit: dict[str, str] | None = None, *,
           scope: str = "terminal") -> dict[str, Any]:
    """A terminal alert carries its terminal's kit; a merchant one has none."""
    severity = "minor" if cause == "weak_signal" else "critical" if kind == "tamper" else "major"
    alert = _incident(incident_id, kind, cause, severity, scope, terminal=incident_id if scope == "terminal" else None,
                      merchant="M-" + incident_id)
    if kit:
        alert["labels"].update(kit)
    return alert


INHIBITION_ROUNDS: list[tuple[str, list[dict[str, Any]], list[tuple[dict[str, Any], bool]]]] = [
    ("fleet host_errors + A920 2.4.1 offline wave", [
        _upstream("U-FLEET-HOST", "host_errors"),
        _upstream("U-KIT-WAVE", "offline_wave", {"model": "A920", "fw": "2.4.1"}),
    ], [
        (_child("C-LINK-P60", "network", "comm_errors", KIT_P60), True),
        (_child("C-LINK-SHOP", "network", "comm_errors", scope="merchant"), True),
        (_child("C-SILENT-P60", "network", "offline", KIT_P60), False),
        (_child("C-SILENT-241", "network", "offline", KIT_A920_241), True),
        (_child("C-SILENT-250", "network", "offline", KIT_A920_250), False),
        (_child("C-SILENT-SHOP", "network", "offline", scope="merchant"), False),
        (_child("C-WEAK", "network", "weak_signal", KIT_P60), False),
        (_child("C-CONFIG-97", "config", "not_registered", KIT_P60), False),
        (_child("C-CONFIG-A0", "config", "keys", KIT_A920_241), False),
        (_child("C-JAM", "printer", "jam", KIT_A920_241), False),
        (_child("C-TAMPER", "tamper", "tamper", KIT_P60), False),
        (_child("C-GAP", "settlement_gap", "not_settled", KIT_P60), False),
    ]),
    ("4g and P60 host_errors + fleet offline wave", [
        _upstream("U-4G-HOST", "host_errors", {"net_type": "4g"}),
        _upstream("U-P60-HOST", "host_errors", {"model": "P60"}),
        _upstream("U-FLEET-WAVE", "offline_wave"),
    ], [
        (_child("C-LINK-4G", "network", "comm_errors", KIT_A920_241), True),
        (_child("C-LINK-P60", "network", "comm_errors", KIT_P60), True),
        (_child("C-LINK-N910", "network", "comm_errors", KIT_N910), False),
        (_child("C-LINK-UNKNOWN-KIT", "network", "comm_errors"), False),
        (_child("C-LINK-SHOP", "network", "comm_errors", scope="merchant"), False),
        (_child("C-SILENT-N910", "network", "offline", KIT_N910), True),
        (_child("C-SILENT-SHOP", "network", "offline", scope="merchant"), True),
        (_child("C-CONFIG-58", "config", "not_permitted", KIT_P60), False),
    ]),
]


def _amtool_query(alertmanager: _LiveAlertmanager, *flags: str) -> set[str]:
    """Incident ids amtool lists with these state flags (``--inhibited``, ``--active``)."""
    out = run_tool([require_binary("amtool"), "alert", "query", *flags, "-o", "json",
                    f"--alertmanager.url={alertmanager.url}", "alertname=FleetwatchIncident"])
    return {a["labels"]["incident_id"] for a in json.loads(out)}


@pytest.mark.parametrize(("name", "sources", "targets"), INHIBITION_ROUNDS, ids=[r[0] for r in INHIBITION_ROUNDS])
def test_an_upstream_alert_inhibits_only_what_it_explains(
    alertmanager: _LiveAlertmanager, name: str, sources: list[dict[str, Any]],
    targets: list[tuple[dict[str, Any], bool]],
) -> None:
    """Both sides, as amtool sees them on the live shipped config: host_errors inhibits the
    comm_errors of terminals in its scope (a group's by model / fw / net_type) and of shops
    (fleet only); offline_wave inhibits offline; silence under a host outage, a link failure
    under a wave, configuration codes, hardware, tamper and money are never inhibited."""
    alertmanager.post(sources)
    time.sleep(0.5)  # the inhibitor learns of source alerts asynchronously
    alertmanager.post([alert for alert, _ in targets])
    expected_inhibited = {a["labels"]["incident_id"] for a, inhibited in targets if inhibited}
    expected_active = {a["labels"]["incident_id"] for a, inhibited in targets if not inhibited}
    sources_ids = {a["labels"]["incident_id"] for a in sources}

    deadline = time.monotonic() + 10
    while True:
        inhibited = _amtool_query(alertmanager, "--inhibited") - sources_ids
        active = _amtool_query(alertmanager, "--active") - sources_ids
        if (inhibited, active) == (expected_inhibited, expected_active) or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert inhibited == expected_inhibited, name
    assert active == expected_active, name
    assert sources_ids <= _amtool_query(alertmanager, "--active"), "an upstream inhibits no upstream"
