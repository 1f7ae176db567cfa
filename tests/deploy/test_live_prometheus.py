"""The daemon's /metrics, the shipped rules and the shipped dashboards, live: a real
Prometheus scrapes a real daemon that watches a small scripted fleet.

One module fixture starts the daemon (heartbeat interval 1 s), a Prometheus whose config
is derived from deploy/prometheus/prometheus.yml (scrape target rewritten to the daemon,
1 s scrape and evaluation) with the shipped rules files, and a publisher thread playing a
fleet of 60 terminals at 15 merchants: heartbeats every second, sales, one batch that is
closed and settled, a printer out of paper, a tamper, two terminals going silent and one
garbage message. The tests then read the daemon and Prometheus as operators would.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.dashboards import dashboard_files, load, panel_queries
from tests.deploy.promql import selectors
from tests.deploy.tools import DEPLOY, free_port, require_binary, stop_process, wait_until_ready
from tests.publish import Publisher, batch, heartbeat, settlement, state, txn
from tests.services import Broker, Daemon, wait_until

pytestmark = [pytest.mark.broker, pytest.mark.slow]

PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
RULES_DIR = DEPLOY / "prometheus" / "rules"

# ------------------------------------------------------------------ the scripted fleet

MODELS = ("A920", "P60", "N910")
# Ids that cannot be mistaken for anything else in an exposition (no digit-only tails
# that could match a bucket bound or a version).
TERMINALS = tuple(f"LPT-{i:03d}" for i in range(60))
MERCHANTS = tuple(f"LPM-{j:02d}" for j in range(15))
NO_PAPER = TERMINALS[1]
TAMPER = TERMINALS[2]
SILENT = (TERMINALS[3], TERMINALS[4])  # different merchants: no merchant-wide parent
BATCH_TERMINAL = TERMINALS[6]
GARBAGE_TERMINAL = TERMINALS[7]
SCRIPTED_ROUNDS = 20  # one round per second: ~20 s of scripted traffic
FAULTS_FROM = 3  # round at which the printer and tamper faults start
SILENT_FROM = 5  # round from which the silent terminals publish nothing more
BATCH_SALES = 3
BATCH_AMOUNT = 12800


def merchant_of(tid: str) -> str:
    return MERCHANTS[TERMINALS.index(tid) % len(MERCHANTS)]


def model_of(tid: str) -> str:
    return MODELS[TERMINALS.index(tid) % len(MODELS)]


class FleetPlayer(threading.Thread):
    """Publishes the scripted rounds, then keeps the fleet beating (faults held, silent
    terminals silent) until stopped, so the fleet stays as scripted while tests run."""

    def __init__(self, publisher: Publisher) -> None:
        super().__init__(name="fleet-player", daemon=True)
        self.pub = publisher
        self.scripted = threading.Event()
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self._txn_no = 0

    def run(self) -> None:
        try:
            start = time.monotonic()
            r = 0
            while not self.stopping.is_set():
                self._round(r)
                self.pub.flush()
                if r == SCRIPTED_ROUNDS - 1:
                    self.scripted.set()
                r += 1
                # Keep a 1 s cadence from the start, without drifting on a slow round.
                self.stopping.wait(max(0.0, start + r - time.monotonic()))
        except BaseException as exc:  # surfaced by the fixture, never swallowed
            self.error = exc
            self.scripted.set()

    def stop(self) -> None:
        self.stopping.set()
        if self.is_alive():
            self.join(timeout=10)

    def _send(self, suffix: str, payload: dict[str, Any] | str, *, retain: bool = False) -> None:
        self.pub.send(suffix, payload, retain=retain, wait=False)

    def _sale(self, tid: str, **fields: Any) -> None:
        self._txn_no += 1
        self._send(f"term/{tid}/txn", txn(tid, f"{tid}-{self._txn_no:06d}", mid=merchant_of(tid),
                                          stan=f"{self._txn_no:06d}", **fields))

    def _round(self, r: int) -> None:
        if r == 0:
            for tid in TERMINALS:
                self._send(f"term/{tid}/state", state(tid, "online"), retain=True)
        for tid in TERMINALS:
            if tid in SILENT and r >= SILENT_FROM:
                continue
            faults: dict[str, Any] = {}
            if r >= FAULTS_FROM and tid == NO_PAPER:
                faults["printer"] = "no_paper"
            if r >= FAULTS_FROM and tid == TAMPER:
                faults["tamper"] = True
            self._send(f"term/{tid}/heartbeat",
                       heartbeat(tid, merchant_of(tid), seq=r + 1, model=model_of(tid), uptime_s=600 + r, **faults))
        if r >= SCRIPTED_ROUNDS:
            return  # keep-alive only
        # Everyday business: a few sales a second, a decline now and then (never from the
        # silent terminals: any message proves liveness, nor from the settling batch).
        busy = [t for t in TERMINALS if t not in SILENT and t != BATCH_TERMINAL]
        for k in range(5):
            self._sale(busy[(r * 5 + k) % len(busy)])
        if r % 4 == 1:
            self._sale(busy[(r * 7) % len(busy)], outcome="declined", rc="51")
        # One batch on one terminal goes the whole way: sales, close, settlement.
        if 1 <= r <= BATCH_SALES:
            self._sale(BATCH_TERMINAL, batch_no=42, amount_minor=BATCH_AMOUNT)
        mid = merchant_of(BATCH_TERMINAL)
        if r == 8:
            self._send(f"term/{BATCH_TERMINAL}/batch",
                       batch(BATCH_TERMINAL, mid, batch_no=42, count=BATCH_SALES,
                             amount_minor=BATCH_SALES * BATCH_AMOUNT))
        if r == 10:
            self._send("host/settlement",
                       settlement(BATCH_TERMINAL, mid, batch_no=42, settled_count=BATCH_SALES,
                                  settled_amount_minor=BATCH_SALES * BATCH_AMOUNT,
                                  business_date=datetime.now(UTC).date().isoformat()))
        if r == 6:
            self._send(f"term/{GARBAGE_TERMINAL}/heartbeat", "{this is not json")


# ------------------------------------------------------------------ Prometheus


def prometheus_config(workdir: Path, *, daemon_port: int, web_port: int) -> Path:
    """deploy/prometheus/prometheus.yml for this test: the fleetwatch job scrapes the test
    daemon, everything scrapes and evaluates every second, rules are the shipped ones.

    The shipped recording group sets its own ``interval: 30s`` (overriding the global
    evaluation_interval); the copy of the rules file runs every group at 1 s too, so a
    rule is evaluated within seconds of the data it reads. Nothing else in the rules
    changes. Alertmanager (9093) is pointed at a port nobody listens on: no alert here
    has its ``for:`` satisfied within the test, and none may reach a real Alertmanager.
    """
    rules_dir = workdir / "rules"
    rules_dir.mkdir()
    shipped = sorted(RULES_DIR.glob("*.rules.yml"))
    assert shipped, RULES_DIR
    for path in shipped:
        text = re.sub(r"(?m)^(\s+interval:)\s*\S+\s*$", r"\1 1s", path.read_text())
        (rules_dir / path.name).write_text(text)

    text = PROMETHEUS_YML.read_text()
    edits = [
        (r"(?m)^(\s+(?:scrape_interval|scrape_timeout|evaluation_interval)):\s*\S+", r"\1: 1s"),
        (r"(?m)^(\s+- )rules/\*\.rules\.yml", rf"\g<1>{rules_dir}/*.rules.yml"),
        (r"127\.0\.0\.1:9464", f"127.0.0.1:{daemon_port}"),
        (r"127\.0\.0\.1:9090", f"127.0.0.1:{web_port}"),
        (r"127\.0\.0\.1:9093", f"127.0.0.1:{free_port()}"),
    ]
    for pattern, replacement in edits:
        text, count = re.subn(pattern, replacement, text)
        assert count, f"prometheus.yml no longer has {pattern!r}: update this test's derivation"
    assert "job_name: fleetwatch" in text
    config = workdir / "prometheus.yml"
    config.write_text(text)
    return config


@dataclass
class Prometheus:
    url: str

    def query(self, expr: str, *, at: float | None = None) -> dict[str, Any]:
        """The raw /api/v1/query answer (``at``: evaluation time, epoch seconds)."""
        params: dict[str, str] = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        r = httpx.get(f"{self.url}/api/v1/query", params=params, timeout=10)
        answer: dict[str, Any] = r.json()
        return answer

    def vector(self, expr: str) -> dict[tuple[tuple[str, str], ...], float]:
        """A successful instant vector as {sorted labels: value}."""
        answer = self.query(expr)
        assert answer.get("status") == "success", (expr, answer)
        assert answer["data"]["resultType"] == "vector", (expr, answer)
        return {tuple(sorted(s["metric"].items())): float(s["value"][1]) for s in answer["data"]["result"]}

    def by(self, label: str, expr: str) -> dict[str, float]:
        """``expr``'s samples keyed by one label's value."""
        return {dict(k).get(label, ""): v for k, v in self.vector(expr).items()}


@dataclass
class LiveStack:
    daemon: Daemon
    prometheus: Prometheus
    incidents: list[dict[str, Any]] = field(default_factory=list)


def _open_by(incidents: list[dict[str, Any]]) -> dict[tuple[str, str, str | None], dict[str, Any]]:
    return {(i["kind"], i["cause"], i["terminal_id"]): i for i in incidents if i["status"] != "resolved"}


EXPECTED_OPEN = {
    ("printer", "no_paper", NO_PAPER),
    ("tamper", "tamper", TAMPER),
    *(("network", "offline", tid) for tid in SILENT),
}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, broker: Broker) -> Iterator[LiveStack]:
    """Daemon + Prometheus + the scripted fleet, settled: the scripted incidents are open
    in the daemon, Prometheus has scraped the final fleet state and the recording rules
    have been evaluated on it."""
    prometheus_bin = require_binary("prometheus")
    workdir = tmp_path_factory.mktemp("live-prometheus")
    (workdir / "daemon").mkdir()
    prefix = f"lp{uuid.uuid4().hex[:8]}/fleet/v1"
    daemon = Daemon(workdir / "daemon", broker.url, prefix=prefix, client_id="fw-live-prometheus",
                    overrides={"detect": {"heartbeat_interval_s": 1}})
    web_port = free_port()
    config = prometheus_config(workdir, daemon_port=daemon.http_port, web_port=web_port)
    log = workdir / "prometheus.log"
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(_stop_daemon, daemon)
        daemon.start()
        with log.open("wb") as log_file:
            proc = subprocess.Popen(
                [
                    prometheus_bin,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={workdir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{web_port}",
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        cleanup.callback(stop_process, proc)
        publisher = Publisher(broker.url, prefix, client_id="live-prometheus-fleet")
        cleanup.callback(publisher.close)
        player = FleetPlayer(publisher)
        cleanup.callback(player.stop)
        yield _settle(daemon, proc, log, web_port, player)


def _stop_daemon(daemon: Daemon) -> None:
    if daemon.proc is not None:
        try:
            daemon.stop()
        except subprocess.TimeoutExpired:
            daemon.kill()


def _settle(daemon: Daemon, proc: subprocess.Popen[bytes], log: Path, web_port: int,
            player: FleetPlayer) -> LiveStack:
    """Start the fleet and wait until daemon and Prometheus both reflect it."""
    wait_until_ready(proc, log=log, port=web_port, http_path="/-/ready", timeout=60)
    prom = Prometheus(f"http://127.0.0.1:{web_port}")
    player.start()
    assert player.scripted.wait(SCRIPTED_ROUNDS * 4), "the scripted fleet did not finish"
    if player.error is not None:
        raise player.error

    def scripted_incidents() -> list[dict[str, Any]] | None:
        incidents = daemon.incidents()
        return incidents if _open_by(incidents).keys() >= EXPECTED_OPEN else None

    try:
        incidents = wait_until(scripted_incidents, timeout=60, interval=0.5, what="the scripted incidents")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\ndaemon log:\n{daemon.logs()[-4000:]}") from exc

    # Prometheus has scraped the settled fleet, and the recording rules have run on it.
    expected_states = {"online": len(TERMINALS) - len(SILENT), "offline": len(SILENT)}

    def settled() -> bool:
        raw = prom.by("state", 'sum by (state) (fleetwatch_terminals{state=~"online|offline"})')
        recorded = prom.by("state", 'fleetwatch:terminals:sum_by_state{state=~"online|offline"}')
        tamper = prom.by("kind", 'fleetwatch:incidents_open_terminal:share_by_kind{kind="tamper"}')
        return raw == expected_states and recorded == expected_states and tamper.get("tamper", 0) > 0

    wait_until(settled, timeout=60, interval=0.5, what="Prometheus to scrape and record the scripted fleet")
    return LiveStack(daemon, prom, incidents)


# ------------------------------------------------------------------ tests


def scrape(daemon: Daemon) -> str:
    r = httpx.get(f"{daemon.api}/metrics", timeout=10)
    assert r.status_code == 200, r.text
    return r.text


def test_promtool_check_metrics_accepts_the_live_exposition(live: LiveStack) -> None:
    """`promtool check metrics` (Prometheus' exposition linter: naming, units, counter
    suffixes, HELP texts) finds no problem in a live scrape of a daemon that has seen
    traffic, incidents, a settlement and a rejected message."""
    text = scrape(live.daemon)
    assert "fleetwatch_messages_received_total" in text
    proc = subprocess.run([require_binary("promtool"), "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=60, check=False)
    output = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0, f"promtool check metrics exited {proc.returncode}:\n{output}"
    assert output == "", f"promtool check metrics reported problems:\n{output}"


# Parsing `offset` in a dashboard query, for the history panels.
_OFFSET = re.compile(r"\boffset\s+(\d+)([smhdwy])\b")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def history_offset(query: str) -> float | None:
    """The offset (seconds) of a query whose every selector looks the same distance back
    (``x offset 1d``); None for a query without offset. A query mixing offsets, or
    mixing offset and current selectors, is not a history query and is refused."""
    found = {int(n) * _UNIT_S[u] for n, u in _OFFSET.findall(query)}
    if not found:
        return None
    mixed = f"{query!r}: mixed offsets; teach test_every_dashboard_panel_has_data how to evaluate it"
    assert len(found) == 1, mixed
    assert len(_OFFSET.findall(query)) == len(selectors(query)), mixed
    return float(found.pop())


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.name)
def test_every_dashboard_panel_has_data(live: LiveStack, path: Path) -> None:
    """Every panel query of the dashboard, as Grafana sends it, is accepted by a real
    Prometheus (status success) and returns at least one series from the live daemon and
    the shipped recording rules: no panel shows "No data" on a freshly deployed stack.

    History panels (``... offset 1d`` / ``offset 1w``, yesterday's and last week's line)
    cannot have data on a Prometheus that started seconds ago, whatever the daemon does.
    They are evaluated unchanged at ``now + offset``: the query then reads exactly the
    samples it will read a day/week after deployment, i.e. the ones we have now, so its
    syntax, metric and labels are still checked against the live series.
    """
    queries = panel_queries(load(path))
    assert queries
    problems: list[str] = []
    for query in queries:
        offset = history_offset(query)
        at = None if offset is None else time.time() + offset
        answer = live.prometheus.query(query, at=at)
        if answer.get("status") != "success":
            problems.append(f"{query!r}: {answer.get('errorType')}: {answer.get('error')}")
        elif not answer["data"]["result"]:
            when = "" if at is None else f" (evaluated at now+{offset:.0f}s)"
            problems.append(f"{query!r}{when}: empty result ({answer['data']['resultType']})")
    assert not problems, f"{path.name}: panels without data:\n" + "\n".join(problems)


def test_dashboards_show_the_scripted_fleet(live: LiveStack) -> None:
    """The panels' numbers are the fleet's, not just zeros: Prometheus sees 58 terminals
    online and 2 offline over the three models, the scripted incidents by kind, the
    settlement flow (its batch closed and settled in full, so no gap for it; the gaps
    shown are the daemon's open ones) and the rejected message, as the dashboard queries
    read them."""
    prom = live.prometheus
    # Polled: a publisher stalled >3 s on a loaded machine makes terminals flap briefly.
    states = {"online": 58.0, "offline": 2.0, "shutdown": 0.0, "closed_hours": 0.0, "maintenance": 0.0,
              "suspended": 0.0}
    wait_until(lambda: prom.by("state", 'sum by (state) (fleetwatch_terminals{model=~".*"})') == states,
               timeout=30, interval=0.5, what=f"terminals by state == {states}")
    expected = {m: float(sum(model_of(t) == m for t in TERMINALS if t not in SILENT)) for m in MODELS}

    def online_by_model() -> dict[str, float]:
        by_model = prom.by("model", 'sum by (model) (fleetwatch_terminals{state="online", model=~".*"})')
        return {m: v for m, v in by_model.items() if v}

    wait_until(lambda: online_by_model() == expected, timeout=30, interval=0.5,
               what=f"online terminals by model == {expected}")
    wait_until(lambda: [*prom.vector("fleetwatch:terminals_online:ratio").values()] == pytest.approx([58 / 60]),
               timeout=30, interval=0.5, what="fleetwatch:terminals_online:ratio == 58/60")

    open_by_kind = prom.by("kind", "sum by (kind) (fleetwatch_incidents_open)")
    assert open_by_kind["tamper"] >= 1
    assert open_by_kind["printer"] >= 1
    assert open_by_kind["network"] >= 2
    assert prom.by("severity", "sum by (severity) (fleetwatch_incidents_pageable)")["critical"] >= 1
    received = prom.by("type", "sum by (type) (fleetwatch_messages_received_total)")
    assert received["heartbeat"] > 0
    assert received["txn"] > 0
    assert received["batch"] >= 1
    assert received["settlement"] >= 1
    assert prom.by("reason", "sum by (reason) (fleetwatch_messages_rejected_total)")["json"] >= 1
    # The scripted batch was closed and settled in full: no gap for it. Other terminals'
    # batches may legitimately have one (the tampered terminal's open batch is at risk),
    # and the settlement panels count exactly the gaps the daemon has open.
    gap_incidents = [i for i in live.daemon.incidents(kind="settlement_gap") if i["status"] != "resolved"]
    assert not [i for i in gap_incidents if i["terminal_id"] == BATCH_TERMINAL], gap_incidents
    by_cause = {c: float(sum(i["cause"] == c for i in gap_incidents)) for c in {i["cause"] for i in gap_incidents}}

    def gaps_open() -> dict[str, float]:
        return {c: v for c, v in prom.by("cause", "sum by (cause) (fleetwatch_settlement_gaps_open)").items() if v}

    wait_until(lambda: gaps_open() == by_cause, timeout=30, interval=0.5,
               what=f"fleetwatch_settlement_gaps_open by cause == {by_cause}")


def test_exposition_names_no_terminal_merchant_or_incident(live: LiveStack) -> None:
    """The exposition's size does not grow with the fleet: no terminal id, merchant id or
    incident id of the scripted fleet appears in any label value (the daemon knows them:
    its API lists the scripted incidents), and the model label only takes the fleet's
    models (plus the zero-filler ``other``)."""
    text = scrape(live.daemon)
    known_ids = {i["id"] for i in live.daemon.incidents()}
    assert known_ids, "the daemon has no incidents: the check below would prove nothing"
    forbidden = set(TERMINALS) | set(MERCHANTS) | known_ids
    leaks: list[str] = []
    models: set[str] = set()
    series = 0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series += 1
            for label, value in sample.labels.items():
                if label == "model":
                    models.add(value)
                leaks += [f"{sample.name}{{{label}={value!r}}} holds {bad}" for bad in forbidden if bad in value]
    assert series > 0
    assert not leaks, "\n".join(leaks)
    assert models <= {*MODELS, "other"}, models
