"""Prometheus config, rules and rule unit tests, checked with the real promtool."""

from __future__ import annotations

import re

from tests.deploy.promql import metric_names, selectors
from tests.deploy.rulesfile import parse_alert_cases, parse_rules, parse_tested_exprs
from tests.deploy.tools import DEPLOY, RULE_TESTS_DIR, RULES_FILE, require_binary, run_tool
from tests.deploy.vocabulary import SEVERITIES, check_selector, known_series


def test_promtool_check_config() -> None:
    """prometheus.yml is valid for promtool and loads the rules file through rule_files."""
    out = run_tool([require_binary("promtool"), "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")])
    assert "SUCCESS: 1 rule files found" in out, out
    assert str(RULES_FILE.name) in out, out


def test_promtool_check_rules_and_scanner_agree() -> None:
    """The rules file is valid, and the line scanner the other tests use sees every rule
    promtool sees (so no rule escapes the coverage checks below)."""
    out = run_tool([require_binary("promtool"), "check", "rules", str(RULES_FILE)])
    m = re.search(r"SUCCESS: (\d+) rules found", out)
    assert m, out
    rules = parse_rules(RULES_FILE)
    assert len(rules) == int(m.group(1)), [r.name for r in rules]
    assert all(r.expr for r in rules), [r.name for r in rules if not r.expr]


def test_promtool_test_rules_pass() -> None:
    """Every promtool unit test in deploy/prometheus/tests passes."""
    files = sorted(RULE_TESTS_DIR.glob("*.yml"))
    assert files
    out = run_tool([require_binary("promtool"), "test", "rules", *map(str, files)], cwd=RULE_TESTS_DIR)
    assert "FAILED" not in out, out


def test_every_alert_has_firing_and_quiet_cases() -> None:
    """Each alert rule is named by promtool test cases that expect it to fire and that
    expect it to stay quiet; and no test names an alert that does not exist."""
    alerts = {r.name for r in parse_rules(RULES_FILE) if r.kind == "alert"}
    cases = [c for f in sorted(RULE_TESTS_DIR.glob("*.yml")) for c in parse_alert_cases(f)]
    firing = {c.alertname for c in cases if c.firing}
    quiet = {c.alertname for c in cases if not c.firing}
    assert alerts - firing == set(), "alerts without a firing test case"
    assert alerts - quiet == set(), "alerts without a not-firing test case"
    assert {c.alertname for c in cases} - alerts == set(), "test cases for unknown alerts"


def test_every_recording_rule_is_tested() -> None:
    """Each recording rule is the expression of at least one promql_expr_test."""
    records = {r.name for r in parse_rules(RULES_FILE) if r.kind == "record"}
    tested = {e for f in sorted(RULE_TESTS_DIR.glob("*.yml")) for e in parse_tested_exprs(f)}
    assert records - tested == set()


def test_alert_rules_are_labelled_and_documented() -> None:
    """Every alert has a severity from the contract's set, rides out blips with a `for:`
    (the PAN alert excepted: one card number is one too many), a summary, a description
    and a runbook pointing at its section of docs/operating.md."""
    operating = (DEPLOY.parent / "docs" / "operating.md").read_text()
    for rule in parse_rules(RULES_FILE):
        if rule.kind != "alert":
            continue
        assert rule.labels.get("severity") in SEVERITIES, rule
        if rule.name != "FleetwatchPanRejected":
            assert rule.for_, f"{rule.name} has no for:"
        for key in ("summary", "description", "runbook"):
            assert rule.annotations.get(key), f"{rule.name} lacks annotation {key}"
        anchor = f"operating.md#{rule.name.lower()}"
        assert rule.annotations["runbook"].startswith(f"docs/{anchor}"), rule.name
        assert f"### {rule.name}" in operating, f"docs/operating.md has no section for {rule.name}"


def test_rules_use_only_exported_metrics() -> None:
    """Rules read only metrics the daemon exports (or Prometheus' own `up`, or recording
    rules of this file), with labels and label values those metrics have."""
    rules = parse_rules(RULES_FILE)
    allowed = known_series() | {r.name for r in rules if r.kind == "record"}
    for rule in rules:
        unknown = metric_names(rule.expr) - allowed
        assert unknown == set(), f"{rule.name}: {unknown}"
        for name, matchers in selectors(rule.expr):
            check_selector(name, matchers, where=rule.name)
