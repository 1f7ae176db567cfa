"""Read the shipped Grafana dashboards: panels, targets, and their queries as Grafana
would send them to Prometheus.

``panel_queries`` is reused by the live test that runs every panel against a real
Prometheus scraping the daemon, so it substitutes variables exactly once, here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tests.deploy.tools import DASHBOARDS

# Grafana's built-in variables, with the values a 5-minute panel at a 15s step would get.
BUILTINS: Mapping[str, str] = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "5m",
    "__range_s": "300",
    "__range_ms": "300000",
}

_VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)(?::[^\]]*)?\]\]|\$(\w+)")


def dashboard_files() -> list[Path]:
    """The dashboard JSON models shipped in dashboards/ (provisioning excluded)."""
    return sorted(DASHBOARDS.glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including the panels folded inside collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def template_values(dashboard: Mapping[str, Any]) -> dict[str, str]:
    """What each template variable stands for in a query: its ``All`` value, else ``.*``."""
    values: dict[str, str] = {}
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "datasource":
            continue
        all_value = var.get("allValue")
        values[var["name"]] = all_value if var.get("includeAll") and all_value else ".*"
    return values


def substitute(expr: str, variables: Mapping[str, str]) -> str:
    """``expr`` with ``$var``, ``${var}``, ``${var:fmt}`` and ``[[var]]`` replaced.

    An unknown variable raises ``KeyError``: a query Grafana cannot fill is a bug.
    """

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name in BUILTINS:
            return BUILTINS[name]
        if name in variables:
            return variables[name]
        raise KeyError(f"unknown Grafana variable ${name} in {expr!r}")

    return _VARIABLE.sub(repl, expr)


def panel_targets(dashboard: Mapping[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """``(panel, target)`` for every query target of every panel."""
    for panel in iter_panels(dashboard):
        for target in panel.get("targets", []):
            yield panel, target


def panel_queries(dashboard_json: Mapping[str, Any]) -> list[str]:
    """Every target ``expr`` of the dashboard, variables substituted as Grafana would:
    ``$__rate_interval`` -> ``1m``, ``$__interval`` -> ``15s``, ``$__range`` -> ``5m``,
    template variables -> their ``All`` value or ``.*``. Hidden targets included."""
    variables = template_values(dashboard_json)
    return [substitute(str(target.get("expr", "")), variables) for _, target in panel_targets(dashboard_json)]
