"""Static checks of the shipped packaging: systemd unit, Dockerfile, docker-compose.

No systemd or Docker daemon is needed; these catch drift (a lost hardening directive,
a mount of a file that moved, a command line that no longer matches the contract).
"""

from __future__ import annotations

import json
import re

from fleetwatch.cli import EXIT_CODES
from fleetwatch.errors import ConfigError
from tests.deploy.tools import DEPLOY, REPO

UNIT = DEPLOY / "systemd" / "fleetwatch.service"
COMPOSE = DEPLOY / "docker-compose.yml"
COMMAND = "fleetwatch run --config /etc/fleetwatch/fleetwatch.toml"


def _unit() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_systemd_unit_is_sandboxed_and_stops_in_time() -> None:
    """The unit runs the contract's command as a dynamic user with a state directory,
    a read-only system, no home, no new privileges, private /tmp, IP/Unix sockets only,
    restarts on failure except for a configuration error (exit 2, which a restart cannot
    fix: fleetwatch.cli.EXIT_CODES) and gives SIGTERM 10 seconds."""
    u = _unit()
    expected = {
        "Type": "simple",
        "ExecStart": f"/usr/bin/{COMMAND}",
        "DynamicUser": "yes",
        "StateDirectory": "fleetwatch",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "Restart": "on-failure",
        "RestartPreventExitStatus": str(EXIT_CODES[ConfigError]),
        "TimeoutStopSec": "10",
        "KillSignal": "SIGTERM",
        "WantedBy": "multi-user.target",
    }
    for key, value in expected.items():
        assert u.get(key) == [value], (key, u.get(key))
    # nothing may write outside the state directory
    assert "ReadWritePaths" not in u


def test_dockerfile_runs_the_daemon_as_non_root() -> None:
    """The image is python:3.11-slim and installs the wheel a build stage with a C compiler
    made (setup.py with it, so the hot path is compiled), switches to a non-root user and
    runs the contract's command."""
    text = (REPO / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)(?: AS (\w+))?\s*$", text, re.M)
    assert stages == [("python:3.11", "build"), ("python:3.11-slim", "")]
    build, image = text.split("\nFROM python:3.11-slim")
    assert re.search(r"^COPY pyproject\.toml setup\.py ", build, re.M)
    assert re.search(r"^RUN pip wheel --no-deps --wheel-dir /wheels \.$", build, re.M)
    assert re.search(r"^COPY --from=build /wheels /wheels$", image, re.M)
    assert re.search(r"^RUN pip install /wheels/\*\.whl", image, re.M)
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users
    assert not users[-1].startswith(("root", "0"))
    entrypoint = json.loads(re.findall(r"^ENTRYPOINT (\[.*\])", text, re.M)[-1])
    cmd = json.loads(re.findall(r"^CMD (\[.*\])", text, re.M)[-1])
    assert " ".join(entrypoint + cmd) == COMMAND


def test_compose_mounts_existing_files_at_the_paths_configs_expect() -> None:
    """docker-compose runs the five services; every bind mount source exists in the
    repository (except the broker password file ops create); the mount targets are
    where mosquitto.conf, prometheus.yml and the Grafana provisioning look."""
    text = COMPOSE.read_text()
    services = re.findall(r"^  ([a-z][\w-]*):\s*$", text.split("\nvolumes:")[0], re.M)
    assert services == ["mosquitto", "fleetwatch", "prometheus", "alertmanager", "grafana"]
    mounts = re.findall(r"^\s+- (\.\.?/[^:]+):([^:\s]+)(?::ro)?\s*$", text, re.M)
    assert mounts
    targets = {}
    for source, target in mounts:
        targets[target] = source
        if source.endswith("/passwd"):
            continue
        assert (DEPLOY / source).resolve().exists(), source
    mosquitto_conf = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    for directive in ("password_file", "acl_file"):
        path = re.search(rf"^{directive} (\S+)", mosquitto_conf, re.M)
        assert path, directive
        assert path.group(1) in targets, directive
    assert targets["/etc/prometheus/rules"] == "./prometheus/rules"
    providers = (REPO / "dashboards" / "provisioning" / "dashboards.yml").read_text()
    path = re.search(r"path: (\S+)", providers)
    assert path
    assert targets[path.group(1)] == "../dashboards"
    assert re.search(r"context: \.\.\n\s+dockerfile: Dockerfile", text)
