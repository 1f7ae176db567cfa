"""The labels of the alerts the daemon pushes: what Alertmanager's inhibition by group matches on."""

from __future__ import annotations

from fleetwatch.adapters.notify import AlertmanagerNotifier, alert_for
from fleetwatch.config import NotifySettings
from fleetwatch.core.model import Incident, IncidentEvent, IncidentWrite


def _incident(iid: str, kind: str, cause: str, scope: str, **fields: object) -> Incident:
    return Incident(id=iid, key=f"{scope}|{iid}|{kind}", kind=kind, cause=cause, scope=scope,  # type: ignore[arg-type]
                    severity="critical", status="open", opened_at=0.0, updated_at=0.0, summary="s",
                    **fields)  # type: ignore[arg-type]


def test_a_group_alert_carries_its_group_attributes_and_a_fleet_alert_none() -> None:
    """{"model": "A920", "fw": "2.4.1"} -> labels model and fw (besides the combined group label)."""
    group = alert_for(_incident("g", "host_outage", "host_errors", "group", group={"model": "A920", "fw": "2.4.1"}),
                      ends_at=1.0)["labels"]
    assert (group["model"], group["fw"], group["group"]) == ("A920", "2.4.1", "fw=2.4.1,model=A920")
    assert "net_type" not in group
    fleet = alert_for(_incident("f", "host_outage", "host_errors", "fleet"), ends_at=1.0)["labels"]
    assert not {"model", "fw", "net_type"} & set(fleet)


def test_a_terminal_alert_carries_its_terminals_kit_taken_when_first_pageable() -> None:
    """The notifier asks once per incident; a merchant alert gets no kit; unknown parts are left out."""
    asked: list[str] = []
    kits = {"T1": {"model": "P60", "fw": "3.0.2", "net_type": None}}

    def lookup(tid: str) -> dict[str, str | None]:
        asked.append(tid)
        return kits[tid]

    notifier = AlertmanagerNotifier(NotifySettings(alertmanager_url="http://127.0.0.1:1"), terminal_groups=lookup)
    terminal = _incident("i1", "network", "comm_errors", "terminal", terminal_id="T1", merchant_id="M1")
    merchant = _incident("i2", "network", "comm_errors", "merchant", merchant_id="M1")
    for inc in (terminal, merchant):
        notifier.on_commit([IncidentWrite(inc, IncidentEvent(inc.id, 0.0, "opened"))])
    kits["T1"] = {"model": "A920", "fw": "2.4.1", "net_type": "4g"}  # changed later: the alert keeps its labels
    notifier.on_commit([IncidentWrite(terminal, IncidentEvent(terminal.id, 1.0, "updated"))])
    labels = {a["labels"]["incident_id"]: a["labels"] for a in notifier.pending_alerts(2.0)}
    assert (labels["i1"]["model"], labels["i1"]["fw"]) == ("P60", "3.0.2")
    assert "net_type" not in labels["i1"]
    assert not {"model", "fw", "net_type"} & set(labels["i2"])
    assert asked == ["T1"]
