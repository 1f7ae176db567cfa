"""The active/standby examples in deploy/ha/ (docs/SCALING.md) say what the daemon needs.

Static checks, no systemd or Docker: the example config is one the daemon accepts and
names a PostgreSQL store; the instances of the compose file share the broker session
(one client id) and the store but not an HTTP port; and every unit restarts an instance
that stepped down (exit 6) or lost its store (exit 3), never one with a bad config.
"""

from __future__ import annotations

import re

from fleetwatch.cli import EXIT_CODES
from fleetwatch.config import load_settings
from fleetwatch.errors import ConfigError, LeaseLost, StoreError
from tests.deploy.tools import DEPLOY, require_binary, run_tool

HA = DEPLOY / "ha"


def _directives(path_text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for raw in path_text.splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_the_example_config_is_valid_and_on_postgresql() -> None:
    settings = load_settings(HA / "fleetwatch-ha.toml")
    assert settings.store.backend == "postgresql"
    assert settings.ha.lease_s < settings.ha.takeover_s
    assert settings.mqtt.client_id == "fleetwatch"


def test_the_compose_instances_share_client_id_and_store_but_not_a_port() -> None:
    text = (HA / "docker-compose.ha.yml").read_text()
    assert re.findall(r"^  (fleetwatch-\w+):$", text, re.M) == ["fleetwatch-a", "fleetwatch-b"]
    assert len(re.findall(r"FLEETWATCH_MQTT__CLIENT_ID:", text)) == 1  # in the shared anchor
    assert len(re.findall(r"FLEETWATCH_STORE__URL: postgresql://", text)) == 1
    listens = re.findall(r"FLEETWATCH_HTTP__LISTEN: (\S+)", text)
    assert len(listens) == 2
    assert len(set(listens)) == 2
    assert "<<: *env" in text
    assert "restart: unless-stopped" in text
    targets = re.search(r'targets: \[(.*)\]', (HA / "prometheus-ha.yml").read_text())
    assert targets is not None
    assert {t.strip(' "') for t in targets.group(1).split(",")} == set(listens)


def test_units_restart_an_instance_that_stepped_down_but_not_a_bad_config() -> None:
    for unit in (HA / "fleetwatch@.service", DEPLOY / "systemd" / "fleetwatch.service"):
        d = _directives(unit.read_text())
        assert d["Restart"] == ["on-failure"], unit
        prevented = set(d.get("RestartPreventExitStatus", [""])[0].split())
        assert str(EXIT_CODES[ConfigError]) in prevented
        assert not prevented & {str(EXIT_CODES[LeaseLost]), str(EXIT_CODES[StoreError])}, unit


def test_the_ha_prometheus_config_is_valid() -> None:
    out = run_tool([require_binary("promtool"), "check", "config", str(HA / "prometheus-ha.yml")])
    assert "SUCCESS" in out
