"""The golden scenarios (../shared/scenarios, copied to tests/data, and this project's own) through a real broker.

Each scenario is replayed in real time by the shared `replay.py` into its own topic
prefix, with its own daemon configured as the scenario says, all scenarios at once (they
are light, and real time is what takes long). Then the shared `score.py` judges the
daemon's API exactly as the acceptance suite does; this project's own scenarios are also
judged by the expectations score.py does not know (parents, still open at, group).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.golden import OWN_SCENARIOS, check_extra, shared_dir
from tests.screens import Screens
from tests.services import Broker, Daemon

pytestmark = [pytest.mark.broker, pytest.mark.slow]

DATA = Path(__file__).resolve().parents[1] / "data"
SCENARIOS = ["decline-storm", "printer-lifecycle", "reader-wear", "offline-and-flap", "host-outage",
             "settlement-day"]


def scenario_head(name: str) -> dict[str, Any]:
    with (DATA / f"{name}.jsonl").open(encoding="utf-8") as fh:
        head: dict[str, Any] = json.loads(fh.readline())
    return head


def scenario_config(name: str) -> dict[str, dict[str, Any]]:
    config: dict[str, dict[str, Any]] = scenario_head(name).get("config", {})
    return config


def replay(name: str, broker: Broker, prefix: str) -> float:
    """Run the shared replay tool; returns the start time (epoch ms) it printed first."""
    proc = subprocess.run(
        [sys.executable, str(shared_dir() / "tools" / "replay.py"), str(DATA / f"{name}.jsonl"),
         "--url", broker.url, "--prefix", prefix],
        capture_output=True, text=True, timeout=180, check=True,
    )
    return float(proc.stdout.split()[0])


def score(name: str, start: float, daemon: Daemon) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(shared_dir() / "tools" / "score.py"), str(DATA / f"{name}.expect.json"),
         "--start", str(start), "--api", daemon.api, "--token", daemon.token],
        capture_output=True, text=True, timeout=60, check=False,
    )


class Run:
    def __init__(self, name: str, daemon: Daemon, screens: Screens) -> None:
        self.name, self.daemon, self.screens = name, daemon, screens
        self.start: float | None = None
        self.error: BaseException | None = None
        self.at_end: list[dict[str, Any]] = []
        """Every incident as the API listed it just after the stream ended."""


def replay_all(names: list[str], tag: str, broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """The scenarios replayed concurrently, each into its own daemon; their incidents read at the end."""
    shared_dir()  # fails at once, naming where it looked, when the shared tools are not there
    runs: dict[str, Run] = {}
    for i, name in enumerate(names):
        workdir = tmp_path_factory.mktemp(name)
        daemon = Daemon(workdir, broker.url, prefix=f"{tag}{i}/fleet/v1", client_id=f"fw-{tag}-{name}",
                        overrides=scenario_config(name))
        daemon.start()
        runs[name] = Run(name, daemon, Screens(broker, daemon.prefix))

    def play(run: Run) -> None:
        try:
            run.start = replay(run.name, broker, run.daemon.prefix)
            time.sleep(1.0)  # let the last messages and sweeps commit
            run.at_end = run.daemon.incidents(status="all")
        except BaseException as exc:
            run.error = exc

    threads = [threading.Thread(target=play, args=(run,)) for run in runs.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return runs


def stop_all(runs: dict[str, Run]) -> None:
    for run in runs.values():
        run.screens.close()
        if run.daemon.proc is not None:
            run.daemon.stop()


@pytest.fixture(scope="module")
def golden_runs(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Run]]:
    """The shared scenarios replayed concurrently, each into its own daemon."""
    runs = replay_all(SCENARIOS, "golden", broker, tmp_path_factory)
    yield runs
    stop_all(runs)


@pytest.fixture(scope="module")
def own_runs(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Run]]:
    """This project's scenarios, replayed concurrently after the shared ones (one group at a time
    keeps a two-core machine from falling behind real time)."""
    runs = replay_all(list(OWN_SCENARIOS), "own", broker, tmp_path_factory)
    yield runs
    stop_all(runs)


@pytest.mark.parametrize("name", SCENARIOS)
def test_golden_scenario_passes_every_expectation(golden_runs: dict[str, Run], name: str) -> None:
    """score.py finds every expected incident and no forbidden one."""
    run = golden_runs[name]
    assert run.error is None, run.error
    assert run.start is not None
    result = score(name, run.start, run.daemon)
    assert result.returncode == 0, result.stdout + result.stderr + run.daemon.logs()[-2000:]


def _merchants_of(name: str) -> dict[str, str]:
    with (DATA / f"{name}.jsonl").open(encoding="utf-8") as fh:
        fh.readline()
        events = [json.loads(line) for line in fh if line.strip()]
    return {e["payload"]["terminal_id"]: e["payload"]["merchant_id"] for e in events
            if "merchant_id" in e["payload"] and "terminal_id" in e["payload"]}


def test_host_outage_tells_each_affected_shop_once(golden_runs: dict[str, Run]) -> None:
    """Over the API every affected merchant has exactly one notice, the upstream one, listing its
    failing terminals; on the broker every failing terminal's screen was given exactly two
    messages (the upstream notice, then an empty screen) and no other terminal got any.

    Only what happened within the scenario counts: once the replay ends every terminal falls
    silent, which is an offline wave of its own a little later."""
    run = golden_runs["host-outage"]
    assert run.start is not None
    end = run.start / 1000 + 39.199
    end_text = datetime.fromtimestamp(end, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def notices(merchant: str) -> list[dict[str, Any]]:
        items = run.daemon.get(f"/api/v1/merchants/{merchant}/notices?lang=en")["items"]
        return [i for i in items if i["opened_at"] <= end_text]

    terminal_incidents = [i for i in run.daemon.incidents() if i["scope"] == "terminal" and i["opened_at"] <= end_text]
    failing = {i["terminal_id"]: i["merchant_id"] for i in terminal_incidents}
    assert len(failing) == 140
    for merchant in sorted(set(failing.values())):
        items = notices(merchant)
        mine = sorted(t for t, m in failing.items() if m == merchant)
        assert [(i["kind"], i["whose"], i["terminal_ids"]) for i in items] == [("host_outage", "upstream", mine)]
        assert items[0]["title"] == "Bank system problem"
    quiet = sorted(set(_merchants_of("host-outage").values()) - set(failing.values()))
    assert quiet
    assert notices(quiet[0]) == []
    with run.screens._lock:
        published = Counter(t for (t, _), at in zip(run.screens.live, run.screens.times, strict=True) if at <= end)
    assert set(published) == set(failing)
    for tid in failing:
        upstream, cleared = run.screens.items(tid, until=end)
        assert [(i["whose"], i["title"]) for i in upstream] == [("upstream", "银行系统故障")]
        assert cleared == []


def test_settlement_day_shows_the_money_late(golden_runs: dict[str, Run]) -> None:
    """SM2's unsettled batch: one acquirer notice carrying the money as the merchant reads it
    (the terminals falling silent after the replay are notices of their own)."""
    run = golden_runs["settlement-day"]
    items = run.daemon.get("/api/v1/merchants/SM2/notices?lang=zh-CN")["items"]
    [item] = [i for i in items if i["kind"] == "settlement_gap"]
    assert (item["cause"], item["whose"], item["status"]) == ("not_settled", "acquirer", "open")
    assert [(m["amount_minor"], m["currency"], m["display"], m["batch_no"]) for m in item["money"]] == [
        (468704, "CNY", "¥4,687.04", 21)]
    assert "¥4,687.04" in item["what_happened"]


@pytest.mark.parametrize("name", OWN_SCENARIOS)
def test_own_scenario_passes_every_expectation(own_runs: dict[str, Run], name: str) -> None:
    """score.py finds every expected incident and no forbidden one, and the parents, still-open
    times and groups the scenario expects hold as the API listed them when the stream ended."""
    run = own_runs[name]
    assert run.error is None, run.error
    assert run.start is not None
    result = score(name, run.start, run.daemon)
    assert result.returncode == 0, result.stdout + result.stderr + run.daemon.logs()[-2000:]
    expect = json.loads((DATA / f"{name}.expect.json").read_text(encoding="utf-8"))
    end = run.start + scenario_head(name)["duration_ms"]
    items = [i for i in run.at_end if _opened_ms(i) <= end]
    assert check_extra(items, expect, run.start) == []


def _opened_ms(item: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(item["opened_at"]).replace("Z", "+00:00")).timestamp() * 1000


def test_sigkill_mid_scenario_keeps_incidents_without_twins(broker: Broker, tmp_path: Path) -> None:
    """Killed with SIGKILL in the middle of printer-lifecycle and restarted: still passes, and no twins."""
    name = "printer-lifecycle"
    daemon = Daemon(tmp_path, broker.url, prefix="golden-kill/fleet/v1", client_id="fw-golden-kill",
                    overrides=scenario_config(name))
    daemon.start()
    result: dict[str, float] = {}
    player = threading.Thread(target=lambda: result.setdefault("start", replay(name, broker, daemon.prefix)))
    player.start()
    time.sleep(12)
    before = {(i["terminal_id"], i["kind"]): i["id"] for i in daemon.incidents(status="open")}
    daemon.kill()
    daemon.start()
    after_restart = {(i["terminal_id"], i["kind"]): i["id"] for i in daemon.incidents(status="open")}
    player.join()
    time.sleep(1.0)
    try:
        assert before, "the scenario should have open incidents at 12 s"
        assert {k: v for k, v in after_restart.items() if k in before} == before
        verdict = score(name, result["start"], daemon)
        assert verdict.returncode == 0, verdict.stdout
        per_terminal_kind = Counter((i["terminal_id"], i["kind"]) for i in daemon.incidents())
        assert max(per_terminal_kind.values()) == 1, per_terminal_kind
    finally:
        daemon.stop()
