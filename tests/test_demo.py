"""`fleetwatch demo` greets a newcomer with where everything is, not with a dump of settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.services import free_port

pytestmark = pytest.mark.broker

FLEETWATCH = str(Path(sys.executable).with_name("fleetwatch"))


def test_demo_banner_names_broker_store_api_token_and_what_to_try(tmp_path: Path) -> None:
    """The real demo (its own Mosquitto, daemon and simulator, stopped after a few seconds) prints
    the broker URL, the store path, the API URL and token, curl lines to try and where the docs are;
    the daemon's start line is short, and the demo stops cleanly (exit 0)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWATCH_")}
    done = subprocess.run([FLEETWATCH, "demo", "--terminals", "8", "--http", f"127.0.0.1:{port}", "--duration", "3"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    banner, _, log = done.stderr.partition("Ctrl-C stops everything.")
    store = tmp_path / "var" / "demo" / "fleetwatch.db"
    assert "broker  mqtt://127.0.0.1:" in banner
    assert f"store   {store}" in banner
    assert f"API     http://127.0.0.1:{port}   token: demo" in banner
    assert f"curl -H 'Authorization: Bearer demo' http://127.0.0.1:{port}/api/v1/terminals" in banner
    assert "docs/" in banner
    start = next(json.loads(line) for line in log.splitlines() if '"fleetwatch starting"' in line)
    assert set(start) == {"event", "level", "timestamp", "version", "broker", "store", "listen"}
    assert max(len(line) for line in done.stderr.splitlines()) < 400  # no settings dump
    assert store.exists()
