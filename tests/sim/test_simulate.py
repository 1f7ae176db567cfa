"""The simulator end to end against a real broker: contract-valid traffic, faults, garbage."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fleetwatch.sim.faults import parse_scenario
from fleetwatch.sim.runner import SimOptions, Simulation
from fleetwatch.sim.truth import TruthWriter, read_truth
from tests.sim.contract import check

pytestmark = pytest.mark.broker


def _subscribe(port: int, prefix: str) -> tuple[mqtt.Client, list[tuple[str, bytes]]]:
    got: list[tuple[str, bytes]] = []
    ready = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2)
    c.on_message = lambda _c, _u, m: got.append((m.topic, bytes(m.payload)))
    c.on_subscribe = lambda *_a: ready.set()
    c.on_connect = lambda cl, *_a: cl.subscribe(f"{prefix}/#", qos=1)
    c.connect("127.0.0.1", port)
    c.loop_start()
    assert ready.wait(10)
    return c, got


async def _run(port: int, prefix: str, scenario: dict[str, Any] | None, truth: Path | None,
               **kw: object) -> tuple[Counter[str], list[tuple[str, bytes]]]:
    sub, got = _subscribe(port, prefix)
    opts = SimOptions(url=f"mqtt://127.0.0.1:{port}", prefix=prefix, **kw)  # type: ignore[arg-type]
    writer = TruthWriter(truth)
    sim = Simulation(opts, parse_scenario(scenario or {}), writer)
    counts = await sim.run()
    writer.close()
    expected = sum(counts.values())
    for _ in range(200):
        if len(got) >= expected:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    sub.loop_stop()
    sub.disconnect()
    return counts, got


async def test_small_fleet_publishes_only_contract_valid_messages(broker_port: int) -> None:
    """20 terminals over a compressed business evening: every payload decodes as its contract type,
    every message type appears (birth/shutdown States, heartbeats, txns, batch closes, settlements),
    and each BatchClose equals the sum of the approved money-moving txns of its batch."""
    prefix = "simtest/v1"
    counts, got = await _run(broker_port, prefix, None, None, terminals=20, interval=0.5, speed=20000,
                             duration=4.0, txns_per_day=120, start_hour=20, seed=3)
    bad = [(t, check(t, p, prefix)) for t, p in got if check(t, p, prefix) is not None]
    assert bad == []
    leaves = Counter(t.rsplit("/", 1)[1] for t, _ in got)
    assert {"heartbeat", "txn", "batch", "state", "settlement"} <= set(leaves)
    states = [msgspec.json.decode(p)["state"] for t, p in got if t.endswith("/state")]
    assert states.count("online") == 20
    assert states.count("shutdown") == 20
    assert leaves["txn"] == counts["txn"]  # QoS 1: nothing lost on the way
    tally: Counter[tuple[str, int, str]] = Counter()
    closes = {}
    for t, p in got:
        m = msgspec.json.decode(p)
        if t.endswith("/txn") and m["outcome"] == "approved" and m["type"] != "preauth":
            sign = 1 if m["type"] in ("sale", "completion") else -1
            tally[(m["terminal_id"], m["batch_no"], m["currency"])] += sign * m["amount_minor"]
        elif t.endswith("/batch"):
            closes[(m["terminal_id"], m["batch_no"], m["currency"])] = m["amount_minor"]
    assert closes
    assert all(tally[k] == v for k, v in closes.items())


async def test_scenario_writes_ground_truth_and_garbage_is_invalid(broker_port: int, tmp_path: Path) -> None:
    """A scenario with real faults and noise: each fault is one ground-truth line with the right
    expect_incident, and every garbage message the simulator sent fails the contract check."""
    prefix = "simfault/v1"
    scenario = {"fault": [
        {"kind": "paper_out", "at": 1, "for": 3},
        {"kind": "tamper", "at": 1},
        {"kind": "link_flap", "at": 1, "down": 1, "up": 1, "flaps": 2},
        {"kind": "decline_storm", "at": 1, "for": 4},
        {"kind": "garbage", "at": 1, "for": 4, "every": 0.5},
    ]}
    truth_file = tmp_path / "truth.jsonl"
    counts, got = await _run(broker_port, prefix, scenario, truth_file, terminals=20, interval=0.5,
                             speed=500, duration=4.0, seed=5)
    truth = read_truth(truth_file)
    whats = Counter((t.what, t.expect_incident) for t in truth)
    assert whats[("printer", True)] == 1
    assert whats[("tamper", True)] == 1
    assert whats[("network", True)] == 1
    assert whats[("decline_storm", False)] == 1
    assert whats[("garbage", False)] == 6  # one line per garbage kind
    invalid = Counter(check(t, p, prefix) for t, p in got)
    del invalid[None]
    assert sum(invalid.values()) == counts["garbage"] > 0
    assert set(invalid) <= {"json", "version", "oversize", "spoof", "schema", "pan"}
    flapped = next(t.terminal_id for t in truth if t.what == "network")
    wills = [msgspec.json.decode(p)["state"] for t, p in got if t == f"{prefix}/term/{flapped}/state"]
    assert wills.count("offline") == 2  # the broker published the Last Will at each drop
