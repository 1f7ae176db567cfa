"""A small run of the benchmark harness, so CI notices when bench/ stops working."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import fleetwatch
from bench.mqtt_bench import available_receivers

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_ingest_smoke_runs_end_to_end_without_loss() -> None:
    """`python -m bench ingest --smoke` starts broker + daemon, streams, and reports zero loss.

    The smoke has no speed targets (timing is never asserted in tests); it fails only when
    a message or a stored transaction is missing or the daemon does not exit cleanly.
    """
    result = subprocess.run(
        [sys.executable, "-m", "bench", "ingest", "--smoke", "--no-report"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "transactions stored" in result.stdout


@pytest.mark.slow
def test_mqtt_client_bench_runs_every_receiver_to_the_end() -> None:
    """`python -m bench.mqtt_bench` on a small stream: every receiver installed here (mosquitto_sub,
    the lean client, and gmqtt plain and trimmed where gmqtt is) gets every message, or the bench
    exits 1."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.mqtt_bench", "--messages", "2000", "--repeat", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    receivers = available_receivers()
    assert {"mosquitto_sub", "lean"} <= set(receivers)
    for receiver in receivers:
        assert f"\n{receiver} " in result.stdout


def test_hotpath_bench_runs_every_stage() -> None:
    """`python -m bench hotpath --smoke` times each stage of the hot path on a small stream
    (it fails if a message of the stream is rejected or a stage breaks)."""
    result = subprocess.run(
        [sys.executable, "-m", "bench", "hotpath", "--smoke", "--no-report"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for stage in ("MQTT parse", "decode", "engine", "intake"):
        assert stage in result.stdout
    # A compiled install is measured beside its pure-Python self in the same run.
    assert ("intake CPU, compiled / pure Python" in result.stdout) == fleetwatch.COMPILED


def test_silence_bench_catches_up_without_taking_anyone_offline() -> None:
    """`python -m bench silence --smoke`: restored terminals heard again are re-queued, never
    judged offline, bounded or not (the bench exits 1 otherwise)."""
    result = subprocess.run(
        [sys.executable, "-m", "bench", "silence", "--smoke", "--no-report"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "terminals taken offline" in result.stdout
