"""The shipped Grafana dashboards, statically: complete panels, valid PromQL, and only
metrics and labels the daemon exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.deploy.dashboards import (
    dashboard_files,
    iter_panels,
    load,
    panel_queries,
    substitute,
    template_values,
)
from tests.deploy.promql import metric_names, selectors
from tests.deploy.rulesfile import parse_rules
from tests.deploy.tools import DASHBOARDS, RULES_FILE, require_binary, run_tool
from tests.deploy.vocabulary import check_selector, known_series

EXPECTED = {"fleet-overview.json", "incidents.json", "settlement.json", "daemon-health.json"}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
FILES = dashboard_files()


def test_the_four_dashboards_ship() -> None:
    """dashboards/ holds the four dashboards, each with a unique uid and title."""
    assert {f.name for f in FILES} == EXPECTED
    models = [load(f) for f in FILES]
    assert len({m["uid"] for m in models}) == len(models)
    assert len({m["title"] for m in models}) == len(models)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_panel_has_a_datasource_and_a_query(path: Path) -> None:
    """Every non-row panel and every target uses the `datasource` template variable and
    has a non-empty expr with a unique refId; panel ids are unique; panels sit on the grid."""
    model = load(path)
    variables = {v["name"]: v for v in model["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in iter_panels(model)]
    assert len(ids) == len(set(ids))
    panels = [p for p in iter_panels(model) if p["type"] != "row"]
    assert panels
    for panel in panels:
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        assert {"x", "y", "w", "h"} <= panel["gridPos"].keys()
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        refids = [t["refId"] for t in panel["targets"]]
        assert len(refids) == len(set(refids)), panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", DATASOURCE) == DATASOURCE, panel["title"]
            assert str(target.get("expr", "")).strip(), f"{panel['title']}: empty expr"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_queries_use_only_exported_metrics(path: Path) -> None:
    """Every query reads metrics from the daemon's list (or recording rules of the rules
    file, or `up`), with labels those metrics have and label values they can take."""
    model = load(path)
    allowed = known_series() | {r.name for r in parse_rules(RULES_FILE) if r.kind == "record"}
    for query in panel_queries(model):
        names = metric_names(query)
        assert names, f"no metric in {query!r}"
        assert names <= allowed, f"{path.name}: unknown {names - allowed} in {query!r}"
        for name, matchers in selectors(query):
            check_selector(name, matchers, where=f"{path.name}: {query}")


def test_panel_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses every panel query (substituted as Grafana sends it) as PromQL:
    they are wrapped as recording rules and checked with `promtool check rules`."""
    lines = ["groups:", "  - name: dashboards", "    rules:"]
    count = 0
    for path in FILES:
        for i, query in enumerate(panel_queries(load(path))):
            lines += [
                f"      - record: dashboard:{path.stem.replace('-', '_')}:q{i}",
                f"        expr: {json.dumps(query)}",
            ]
            count += 1
    rules = tmp_path / "dashboard-queries.yml"
    rules.write_text("\n".join(lines) + "\n")
    out = run_tool([require_binary("promtool"), "check", "rules", str(rules)])
    assert f"SUCCESS: {count} rules found" in out, out


def test_template_variables_are_few_and_filled() -> None:
    """Only the datasource and model variables exist, `model` has an All value, and no
    query is left with a variable Grafana would not fill."""
    for path in FILES:
        model = load(path)
        names = {v["name"] for v in model["templating"]["list"]}
        assert names <= {"datasource", "model"}, path.name
        assert template_values(model).get("model", ".*") == ".*"
        for query in panel_queries(model):
            assert "$" not in query, query
            assert "[[" not in query, query


def test_panel_queries_substitutes_grafana_variables() -> None:
    """panel_queries turns Grafana's built-ins and template variables into what Grafana
    would send; an unknown variable is an error, not a silent pass."""
    model = {
        "templating": {
            "list": [
                {"name": "datasource", "type": "datasource"},
                {"name": "model", "type": "query", "includeAll": True, "allValue": ".*"},
                {"name": "currency", "type": "custom"},
            ]
        },
        "panels": [
            {
                "type": "row",
                "panels": [
                    {
                        "targets": [
                            {"expr": 'rate(x{model=~"$model"}[$__rate_interval])'},
                            {"expr": 'increase(x{c=~"${currency}"}[$__range]) / [[model]] $__interval'},
                        ]
                    }
                ],
            },
        ],
    }
    assert panel_queries(model) == [
        'rate(x{model=~".*"}[1m])',
        'increase(x{c=~".*"}[5m]) / .* 15s',
    ]
    with pytest.raises(KeyError):
        substitute("rate(x[$nope])", {})


def test_grafana_provisioning_points_at_the_dashboards() -> None:
    """The provisioning files define the Prometheus datasource the dashboards default to
    (uid `prometheus`) and a file provider for the dashboard folder."""
    datasources = (DASHBOARDS / "provisioning" / "datasources.yml").read_text()
    assert re.search(r"uid: prometheus\n\s+type: prometheus", datasources)
    assert "url: http://127.0.0.1:9090" in datasources
    providers = (DASHBOARDS / "provisioning" / "dashboards.yml").read_text()
    assert "type: file" in providers
    assert "path: /etc/grafana/dashboards/fleetwatch" in providers
    for path in FILES:
        current = next(v for v in load(path)["templating"]["list"] if v["name"] == "datasource")["current"]
        assert current["value"] == "prometheus", path.name
