"""A little PromQL reading for the static tests: which metrics and labels a query uses.

Not a parser: strings, label matchers, ranges and grouping clauses are blanked out, and
what remains that looks like an identifier and is not a function call or a keyword is a
metric name. Good enough for the queries in this repository, whose syntax promtool
checks separately.
"""

from __future__ import annotations

import re

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_BRACES = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w.:$])([A-Za-z_:][A-Za-z0-9_:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "offset",
        "bool",
        "and",
        "or",
        "unless",
        "atan2",
        "inf",
        "nan",
        "Inf",
        "NaN",
        "start",
        "end",
    }
)
_SELECTOR = re.compile(r"(?<![\w.:$])([A-Za-z_:][A-Za-z0-9_:]*)(?![\w:])\s*(\{[^{}]*\})?")
_MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


def metric_names(expr: str) -> set[str]:
    """Names of the series a PromQL expression selects (functions and keywords excluded)."""
    text = _STRING.sub('""', expr)
    text = _BRACES.sub("{}", text)
    text = _BRACKETS.sub("[]", text)
    text = _GROUPING.sub(" ", text)
    return {m for m in _IDENT.findall(text) if m not in _KEYWORDS}


def selectors(expr: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """``(metric, [(label, op, value), ...])`` for every series selector with a name."""
    names = metric_names(expr)
    found: list[tuple[str, list[tuple[str, str, str]]]] = []
    for m in _SELECTOR.finditer(expr):
        name, braces = m.group(1), m.group(2)
        if name not in names:
            continue
        found.append((name, _MATCHER.findall(braces or "")))
    return found
