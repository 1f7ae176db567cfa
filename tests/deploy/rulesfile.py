"""Read the Prometheus rules file and the promtool test files without a YAML library.

PyYAML is not a project dependency, so this is a small line scanner for the style the
rules file documents in its header: one ``- record:`` / ``- alert:`` per rule and
``expr: |`` blocks. ``test_prometheus.py`` checks its count against promtool's own, so a
rule this scanner misses fails the tests instead of escaping coverage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

_ITEM = re.compile(r"^(?P<indent>\s*)- (?P<kind>record|alert): *(?P<name>\S+)\s*$")
_KEY = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_]+): ?(?P<value>.*)$")


@dataclass
class Rule:
    kind: str  # "record" or "alert"
    name: str
    expr: str = ""
    for_: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def parse_rules(path: Path) -> list[Rule]:
    """Every recording and alerting rule of ``path``, in file order."""
    lines = path.read_text().splitlines()
    rules: list[Rule] = []
    current: Rule | None = None
    item_indent = -1
    section: str | None = None  # "labels" / "annotations" while inside one
    section_indent = -1
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        m = _ITEM.match(line)
        if m:
            current = Rule(kind=m["kind"], name=m["name"])
            rules.append(current)
            item_indent = len(m["indent"])
            section = None
            continue
        if current is None or indent <= item_indent:
            current = None if indent <= item_indent else current
            continue
        if section is not None and indent > section_indent:
            km = _KEY.match(line)
            if km:
                target = current.labels if section == "labels" else current.annotations
                target[km["key"]] = _unquote(km["value"])
            continue
        section = None
        km = _KEY.match(line)
        if not km:
            continue
        key, value = km["key"], km["value"].strip()
        if key == "expr":
            if value in ("|", ">", "|-", ">-"):
                block: list[str] = []
                while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                    block.append(lines[i].strip())
                    i += 1
                current.expr = " ".join(b for b in block if b)
            else:
                current.expr = _unquote(value)
        elif key == "for":
            current.for_ = value
        elif key in ("labels", "annotations"):
            section = key
            section_indent = indent
    return rules


@dataclass
class AlertCase:
    file: str
    alertname: str
    eval_time: str
    firing: bool


def parse_alert_cases(path: Path) -> list[AlertCase]:
    """The ``alert_rule_test`` cases of a promtool test file: alertname, and whether any
    alert is expected (``exp_alerts: []`` means the rule must stay quiet)."""
    cases: list[AlertCase] = []
    eval_time = ""
    pending: AlertCase | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("- eval_time:"):
            eval_time = line.split(":", 1)[1].strip()
        elif line.startswith("alertname:"):
            pending = AlertCase(path.name, line.split(":", 1)[1].strip(), eval_time, firing=False)
            cases.append(pending)
        elif line.startswith("exp_alerts:") and pending is not None:
            pending.firing = line.split(":", 1)[1].strip() != "[]"
            pending = None
    return cases


def parse_tested_exprs(path: Path) -> list[str]:
    """The ``expr:`` of every ``promql_expr_test`` case of a promtool test file."""
    return [
        line.split(":", 1)[1].strip()
        for line in (raw.strip() for raw in path.read_text().splitlines())
        if line.startswith(("- expr:", "expr:"))
    ]
