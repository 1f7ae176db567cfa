"""One list per vocabulary: the docs, the store's schema, the dashboards and Alertmanager's routes
say exactly what fleetwatch/core/model.py (and, for the MQTT connect failures, ports.py) says.

Each check reads the shipped file as it is and compares it with the model, so adding a kind,
cause, state or reason to the model without the docs (or the other way round) fails here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, get_args

import pytest

from fleetwatch.core import model, notify_events
from fleetwatch.core.messages import TerminalStateName
from fleetwatch.ports import CONNECT_FAILURE_REASONS
from fleetwatch.storage.migrations import DIALECTS, Dialect, migrations
from tests.deploy.dashboards import dashboard_files, load
from tests.deploy.vocabulary import SERIES

REPO = Path(__file__).resolve().parents[1]
CONTRACT = REPO / "docs" / "contract.md"
DETECTION = REPO / "docs" / "detection.md"
ALERTMANAGER = REPO / "deploy" / "alertmanager" / "alertmanager.yml"

CLOSED_SETS: dict[str, tuple[str, ...]] = {
    "scopes": model.SCOPES,
    "severities": model.SEVERITIES,
    "statuses": model.STATUSES,
    "terminal states": model.TERMINAL_STATES,
    "message types": model.MESSAGE_TYPES,
    "reject reasons": model.REJECT_REASONS,
    "MQTT connect failures": CONNECT_FAILURE_REASONS,
}
"""The rows of docs/contract.md's "Other closed sets" table, by their first column."""

LABEL_VALUES: dict[str, frozenset[str]] = {
    "kind": frozenset(model.KINDS),
    "cause": frozenset(c for causes in model.CAUSES.values() for c in causes),
    "severity": frozenset(model.SEVERITIES),
    "scope": frozenset(model.SCOPES),
    "state": frozenset(model.TERMINAL_STATES),
    "status": frozenset(model.STATUSES),
}
"""Labels whose values are closed, wherever a routing rule or a dashboard variable names them."""

_TICKED = re.compile(r"`([^`]+)`")


def section(text: str, heading: str) -> str:
    """The body of a Markdown section (up to the next heading of the same or a higher level)."""
    level = heading.split(" ", 1)[0]
    start = text.index(f"\n{heading}\n") + len(heading) + 2
    ends = [m.start() for m in re.finditer(rf"\n#{{1,{len(level)}}} ", text[start:])]
    return text[start:start + ends[0]] if ends else text[start:]


def table_rows(body: str) -> list[list[str]]:
    """The cells of a Markdown table's body rows (header and rule skipped)."""
    rows = [line for line in body.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


def test_contract_page_lists_every_kind_and_cause_in_order_with_its_severity() -> None:
    """docs/contract.md's kinds table: the model's kinds in order, each with its causes in
    priority order and each cause's default severity."""
    rows = table_rows(section(CONTRACT.read_text(encoding="utf-8"), "### Kinds and causes"))
    documented = {}
    for kind_cell, causes_cell in rows:
        kind = _TICKED.fullmatch(kind_cell)
        assert kind, kind_cell
        documented[kind[1]] = [tuple(entry.strip().split("` ")) for entry in causes_cell.lstrip("`").split(", `")]
    expected = {kind: [(cause, model.DEFAULT_SEVERITY[(kind, cause)]) for cause in causes]
                for kind, causes in model.CAUSES.items()}
    assert list(documented) == list(model.KINDS)
    assert documented == expected


def test_contract_page_lists_every_other_closed_set() -> None:
    """docs/contract.md's "Other closed sets" table holds each set of the model, values in order."""
    rows = table_rows(section(CONTRACT.read_text(encoding="utf-8"), "### Other closed sets"))
    documented = {row[0]: tuple(_TICKED.findall(row[1])) for row in rows}
    assert documented == CLOSED_SETS


def test_detection_page_priority_chains_are_the_model_order() -> None:
    """Every `a > b > c` chain in docs/detection.md is one kind's causes in the model's order (the
    order that names an incident when several causes hold), complete; each of the four terminal
    kinds whose causes can hold together has its chain."""
    chains = [re.split(r"\s*>\s*", chain) for chain in _TICKED.findall(DETECTION.read_text(encoding="utf-8"))
              if ">" in chain]
    assert chains
    terminal_kinds = [kind for kind, causes in model.CAUSES.items()
                      if kind in ("reader", "printer", "network", "power")]
    by_kind = {}
    for chain in chains:
        kind = next(k for k, causes in model.CAUSES.items() if chain[0] in causes)
        by_kind[kind] = chain
    assert by_kind == {kind: list(model.CAUSES[kind]) for kind in terminal_kinds}


def test_detection_page_config_causes_are_the_response_code_causes() -> None:
    """The attribution table's config row names the config causes a response code opens (every
    config cause that is not an acquirer's decision), in the model's order."""
    rows = table_rows(section(DETECTION.read_text(encoding="utf-8"), "## Whose fault is a transaction (attribution)"))
    config_row = next(row for row in rows if row[0] == "config")
    named = re.search(r"\(([^)]*)\)", config_row[2])
    assert named
    assert [c.strip() for c in named[1].split(",")] == [
        c for c in model.CAUSES["config"] if ("config", c) not in model.ACQUIRER_DECISIONS]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_store_schema_checks_the_model_values(dialect: Dialect) -> None:
    """The CHECK constraints of each dialect's migrations allow exactly the model's scopes, severities,
    statuses and acquirer statuses, and the outbox's event types and row statuses."""
    sql = "\n".join(m.sql for m in migrations(dialect))
    checks: dict[str, list[tuple[str, ...]]] = {}
    for m in re.finditer(r"CHECK \((\w+) IN \(([^)]*)\)\)", sql):
        checks.setdefault(m[1], []).append(tuple(re.findall(r"'([^']+)'", m[2])))
    assert checks == {"scope": [model.SCOPES], "severity": [model.SEVERITIES],
                      "status": [model.STATUSES, notify_events.ROW_STATUSES],
                      "acquirer_status": [model.ACQUIRER_STATUSES], "type": [notify_events.EVENT_TYPES]}


def test_wire_states_are_terminal_states() -> None:
    """What a State message may say is a subset of the states the daemon counts."""
    assert set(get_args(TerminalStateName)) <= set(model.TERMINAL_STATES)


def matcher_values(text: str) -> list[tuple[str, str, str]]:
    """(label, operator, value) of every `label="v"` / `label=~"a|b"` matcher in a YAML file."""
    return [(m[1], m[2], m[3]) for m in re.finditer(r'\b(\w+)(=~|!=|=)"([^"]*)"', text)]


def test_alertmanager_routes_name_only_model_values() -> None:
    """Routing and inhibition in alertmanager.yml match kinds, severities and scopes by name:
    each name must be one the daemon sends, or the route silently never matches."""
    checked = 0
    for label, _op, value in matcher_values(ALERTMANAGER.read_text(encoding="utf-8")):
        if label in LABEL_VALUES:
            for alternative in value.split("|"):
                assert alternative in LABEL_VALUES[label], f"alertmanager.yml: {label}={alternative!r}"
                checked += 1
    assert checked >= 10  # the routes really were read


def variable_problems(dashboard: dict[str, Any]) -> list[str]:
    """What is wrong with a dashboard's template variables against the model and the metrics."""
    problems = []
    for var in dashboard.get("templating", {}).get("list", []):
        name = var["name"]
        if var.get("type") == "custom":
            options = [o.strip() for o in str(var.get("query", "")).split(",") if o.strip()]
            allowed = LABEL_VALUES.get(name)
            if allowed is not None:
                problems += [f"${name}: {o!r} is no {name}" for o in options if o not in allowed]
        elif var.get("type") == "query":
            query = var.get("query")
            text = query.get("query", "") if isinstance(query, dict) else str(query or "")
            found = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", text.strip())
            if not found:
                problems.append(f"${name}: unsupported query {text!r}")
                continue
            metric, label = found[1], found[2]
            labels = SERIES.get(metric)
            if labels is None:
                problems.append(f"${name}: {metric} is not a metric the daemon exports")
            elif label not in labels:
                problems.append(f"${name}: {metric} has no label {label!r}")
    return problems


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.name)
def test_dashboard_variables_agree_with_the_model(path: Path) -> None:
    """A dashboard's template variables offer only values and labels the daemon has."""
    assert variable_problems(load(path)) == []


def test_variable_check_catches_a_stale_dashboard() -> None:
    """The check above is not vacuous: a custom `kind` variable offering a kind the model lacks,
    and a query variable over a label the metric does not have, are both reported."""
    stale = {"templating": {"list": [
        {"name": "kind", "type": "custom", "query": "printer,paper"},
        {"name": "model", "type": "query", "query": {"query": "label_values(fleetwatch_terminals, modle)"}},
    ]}}
    assert variable_problems(stale) == [
        "$kind: 'paper' is no kind", "$model: fleetwatch_terminals has no label 'modle'"]
