"""The metrics the daemon exports (docs: CONTRACT.md §4 plus the team's metric list),
with their label sets and closed label values, for the static dashboard and rule checks.

The closed value sets are the daemon's own lists (fleetwatch/core/model.py, and the MQTT
source's connect-failure reasons in fleetwatch/ports.py), never copies: a dashboard or rule
that selects a value the daemon cannot emit fails here the day the model changes."""

from __future__ import annotations

from fleetwatch.core import lease, model
from fleetwatch.ports import CONNECT_FAILURE_REASONS

KINDS = frozenset(model.KINDS)
SCOPES = frozenset(model.SCOPES)
SEVERITIES = frozenset(model.SEVERITIES)
MESSAGE_TYPES = frozenset(model.MESSAGE_TYPES)
REJECT_REASONS = frozenset(model.REJECT_REASONS)
STATES = frozenset(model.TERMINAL_STATES)
GAP_CAUSES = frozenset(model.CAUSES["settlement_gap"])
CAUSES = frozenset(cause for causes in model.CAUSES.values() for cause in causes)
CONNECT_FAILURES = frozenset(CONNECT_FAILURE_REASONS)
ROLES = frozenset(role.value for role in lease.ROLES)

# label -> closed set of values, or None when the values are open (currency, model...)
_Labels = dict[str, frozenset[str] | None]

METRICS: dict[str, _Labels] = {
    "fleetwatch_messages_received_total": {"type": MESSAGE_TYPES},
    "fleetwatch_messages_rejected_total": {"reason": REJECT_REASONS},
    "fleetwatch_ingest_lag_seconds": {},
    "fleetwatch_terminals": {"state": STATES, "model": None},
    "fleetwatch_incidents_open": {"kind": KINDS, "severity": SEVERITIES, "scope": SCOPES},
    "fleetwatch_incidents_pageable": {"kind": KINDS, "severity": SEVERITIES, "scope": SCOPES},
    "fleetwatch_incidents_opened_total": {"kind": KINDS, "scope": SCOPES},
    "fleetwatch_incidents_resolved_total": {"kind": KINDS, "scope": SCOPES},
    "fleetwatch_settlement_unsettled_amount": {"currency": None, "cause": GAP_CAUSES},
    "fleetwatch_settlement_oldest_unsettled_age_seconds": {"currency": None},
    "fleetwatch_settlement_gaps_open": {"cause": GAP_CAUSES},
    "fleetwatch_mqtt_connected": {},
    "fleetwatch_mqtt_reconnects_total": {},
    "fleetwatch_mqtt_connect_failures_total": {"reason": CONNECT_FAILURES},
    "fleetwatch_store_queue_depth": {},
    "fleetwatch_build_info": {"version": None},
    "fleetwatch_role": {"role": ROLES},
    # Prometheus' own scrape health series
    "up": {},
}
HISTOGRAMS: dict[str, _Labels] = {
    "fleetwatch_incident_duration_seconds": {"kind": KINDS},
    "fleetwatch_detection_latency_seconds": {"kind": KINDS},
    "fleetwatch_store_write_seconds": {},
}
# Labels Prometheus attaches to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})


def _all_series() -> dict[str, _Labels]:
    series = dict(METRICS)
    for base, labels in HISTOGRAMS.items():
        series[f"{base}_bucket"] = {**labels, "le": None}
        series[f"{base}_sum"] = labels
        series[f"{base}_count"] = labels
    return series


SERIES = _all_series()


def known_series() -> set[str]:
    """Every series name the dashboards and rules may select."""
    return set(SERIES)


def check_selector(name: str, matchers: list[tuple[str, str, str]], *, where: str) -> None:
    """Assert a selector uses labels the metric has, and (for ``=``) values it can take."""
    labels = SERIES.get(name)
    if labels is None:  # a recording rule: its labels are checked where it is defined
        return
    for label, op, value in matchers:
        assert label in labels or label in TARGET_LABELS, f"{where}: {name} has no label {label!r}"
        allowed = labels.get(label)
        if op == "=" and allowed is not None:
            assert value in allowed, f"{where}: {name}{{{label}={value!r}}} can never match"
        if op == "=~" and allowed is not None and "$" not in value:
            for alternative in value.split("|"):
                if alternative.isidentifier():
                    assert alternative in allowed, f"{where}: {name}{{{label}=~{value!r}}}"
