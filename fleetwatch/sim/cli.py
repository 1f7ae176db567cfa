"""``fleetwatch simulate`` and ``fleetwatch score`` (wired into the main CLI by the lead).

Both return an exit code instead of exiting, so the main CLI and the tests can call
them: 0 success, 1 a failed score (or a broken run), 2 bad arguments or scenario.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from typing import TextIO

import httpx

from fleetwatch.sim import faults, score
from fleetwatch.sim.client import ClientError
from fleetwatch.sim.runner import SimOptions, Simulation, progress_stream, recommended_daemon_config
from fleetwatch.sim.truth import TruthWriter, read_truth


def _simulate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fleetwatch simulate",
                                description="Simulate a fleet of payment terminals publishing to MQTT.")
    p.add_argument("--url", default="mqtt://127.0.0.1:1883", help="broker, mqtt://[user:pass@]host[:port]")
    p.add_argument("--prefix", default="fleet/v1", help="topic prefix (mqtt.topic_prefix)")
    p.add_argument("-n", "--terminals", type=int, default=20)
    p.add_argument("-m", "--merchants", type=int, default=None, help="default: terminals / 3")
    p.add_argument("--interval", type=float, default=60.0,
                   help="heartbeat interval in wall seconds (the daemon's detect.heartbeat_interval_s)")
    p.add_argument("--speed", type=float, default=1.0,
                   help="business clock speed-up: 1440 plays a business day in a minute")
    p.add_argument("--duration", type=float, default=None, help="wall seconds to run (default: until Ctrl-C)")
    p.add_argument("--seed", type=int, default=1, help="same seed, same fleet, traffic and fault targets")
    p.add_argument("--txns-per-day", type=float, default=120.0, help="payments per terminal per business day")
    p.add_argument("--start-hour", type=float, default=9.0, help="business time of day at start (0-24)")
    p.add_argument("--scenario", help="fault scenario (TOML, see sim-scenarios/)")
    p.add_argument("--ground-truth", help="write every injected fault to this JSONL file")
    p.add_argument("--connections", choices=("auto", "per-terminal", "shared"), default="auto",
                   help="auto: one connection (with Last Will) per terminal up to 500 terminals")
    p.add_argument("--shared-connections", type=int, default=4)
    p.add_argument("--keepalive", type=int, default=60, help="MQTT keepalive of each connection, seconds")
    p.add_argument("--no-shutdown", action="store_true",
                   help="at the end, just disconnect (no retained 'shutdown' State per terminal)")
    p.add_argument("--quiet", action="store_true", help="no progress line (also off when stderr is no TTY)")
    return p


def simulate_main(argv: list[str]) -> int:
    """Run the simulator; returns the process exit code."""
    a = _simulate_parser().parse_args(argv)
    if a.terminals < 1 or a.interval <= 0 or a.speed <= 0:
        print("fleetwatch simulate: --terminals, --interval and --speed must be positive", file=sys.stderr)
        return 2
    try:
        specs = faults.load_scenario(a.scenario) if a.scenario else []
    except faults.ScenarioError as exc:
        print(f"fleetwatch simulate: {exc}", file=sys.stderr)
        return 2
    opts = SimOptions(
        url=a.url, prefix=a.prefix, terminals=a.terminals, merchants=a.merchants, interval=a.interval,
        speed=a.speed, duration=a.duration, seed=a.seed, txns_per_day=a.txns_per_day,
        start_hour=a.start_hour, connections=a.connections, shared_connections=a.shared_connections,
        keepalive=a.keepalive, farewell=None if a.no_shutdown else "shutdown",
    )
    if not a.quiet:
        print("daemon settings matching this fleet: "
              + json.dumps(recommended_daemon_config(opts), separators=(",", ":")), file=sys.stderr)
    writer = TruthWriter(a.ground_truth)
    try:
        counts = asyncio.run(_simulate(opts, specs, writer, progress_stream(a.quiet)))
    except (ClientError, faults.ScenarioError, ValueError) as exc:
        print(f"fleetwatch simulate: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, faults.ScenarioError | ValueError) else 1
    finally:
        writer.close()
    if not a.quiet:
        print("sent: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
              + f"; faults injected: {len(writer.records)}", file=sys.stderr)
    return 0


async def _simulate(opts: SimOptions, specs: list[faults.FaultSpec], writer: TruthWriter,
                    progress: TextIO | None) -> dict[str, int]:
    sim = Simulation(opts, specs, writer, progress)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, sim.stop)
    return dict(await sim.run())


def _score_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fleetwatch score",
                                description="Score a daemon's incidents against simulator ground truth.")
    p.add_argument("ground_truth", help="JSONL written by fleetwatch simulate --ground-truth")
    p.add_argument("--api", default="http://127.0.0.1:9464", help="the daemon's HTTP API base URL")
    p.add_argument("--token", default="", help="http.api_token (Bearer)")
    p.add_argument("--grace", type=float, default=30.0,
                   help="seconds after a must-not fault ends in which an incident still counts against it")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def score_main(argv: list[str]) -> int:
    """Fetch incidents, score them; 0 when every expected fault was found and no noise alarmed."""
    a = _score_parser().parse_args(argv)
    try:
        truth = read_truth(a.ground_truth)
    except (OSError, ValueError) as exc:
        print(f"fleetwatch score: cannot read {a.ground_truth}: {exc}", file=sys.stderr)
        return 2
    try:
        incidents = score.fetch_incidents(a.api, a.token)
    except httpx.HTTPError as exc:
        print(f"fleetwatch score: cannot read incidents from {a.api}: {exc}", file=sys.stderr)
        return 1
    report = score.score(truth, incidents, grace=a.grace)
    if a.json:
        print(json.dumps({
            "passed": report.passed,
            "kinds": {k: {"expected": r.expected, "detected": r.detected, "recall": r.recall,
                          "incidents": r.incidents, "precision": r.precision, "p50_s": r.p50, "p95_s": r.p95,
                          "false_alarms": r.false_alarms} for k, r in sorted(report.kinds.items())},
            "missed": [f.to_json() for f in report.missed],
            "false_alarms": [{"incident": i, "fault": f.to_json()} for i, f in report.violations],
        }, indent=2))
    else:
        print(score.render(report))
    return 0 if report.passed else 1
