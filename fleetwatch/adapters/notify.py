"""Pages on-call: pushes pageable incidents to Alertmanager's API (``/api/v2/alerts``).

Aggregate metrics cannot name a terminal; this path can. An incident is pageable while
it is open, not suppressed by a parent, and at or above ``notify.min_severity``. Each is
sent as an alert with an ``endsAt`` a few resend periods ahead and re-sent every
``notify.resend_s`` while it stays pageable, so alerts expire by themselves if the daemon
dies; when it resolves (or becomes suppressed) it is sent once more ending now.
Alertmanager does the grouping, inhibition and routing (deploy/alertmanager/).

For the inhibition to know which terminals a group incident covers, a group incident's
alert carries its group's attributes as labels (``model``, ``fw``, ``net_type``) and a
terminal incident's alert the terminal's own (looked up once, when the incident is first
seen, so an alert keeps its labels for life).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import httpx
import structlog

from fleetwatch.config import NotifySettings
from fleetwatch.core.model import SEVERITY_RANK, Effect, Incident, IncidentWrite
from fleetwatch.timefmt import rfc3339

log = structlog.get_logger("fleetwatch.notify")

GROUP_ATTRIBUTES = ("model", "fw", "net_type")
"""The attributes a correlation group is made of: labels on group and terminal alerts."""

TerminalGroups = Callable[[str], Mapping[str, str | None]]
"""terminal_id -> its model, fw and net_type as the daemon knows them (None: unknown)."""


def alert_for(
    incident: Incident, *, ends_at: float, generator_url: str = "", kit: Mapping[str, str | None] | None = None,
) -> dict[str, Any]:
    """One Alertmanager alert describing one incident (labels are what routing and inhibition use).

    ``kit``: a terminal incident's terminal attributes (:data:`GROUP_ATTRIBUTES`).
    """
    labels = {
        "alertname": "FleetwatchIncident",
        "source": "fleetwatch",
        "incident_id": incident.id,
        "kind": incident.kind,
        "cause": incident.cause,
        "severity": incident.severity,
        "scope": incident.scope,
    }
    if incident.merchant_id:
        labels["merchant_id"] = incident.merchant_id
    if incident.terminal_id:
        labels["terminal_id"] = incident.terminal_id
    if incident.group:
        labels["group"] = ",".join(f"{k}={v}" for k, v in sorted(incident.group.items()))
    attributes = incident.group if incident.scope == "group" else kit if incident.scope == "terminal" else None
    for name in GROUP_ATTRIBUTES:
        value = (attributes or {}).get(name)
        if value:
            labels[name] = value
    alert: dict[str, Any] = {
        "labels": labels,
        "annotations": {"summary": incident.summary, "description": f"{incident.kind}/{incident.cause}"},
        "startsAt": rfc3339(incident.opened_at),
        "endsAt": rfc3339(ends_at),
    }
    if generator_url:
        alert["generatorURL"] = generator_url
    return alert


class AlertmanagerNotifier:
    """Keeps the set of pageable incidents and mirrors it into Alertmanager."""

    def __init__(
        self, settings: NotifySettings, initial: Iterable[Incident] = (), *,
        terminal_groups: TerminalGroups | None = None,
    ) -> None:
        self._settings = settings
        self._min_rank = SEVERITY_RANK[settings.min_severity]
        self._pageable: dict[str, Incident] = {}
        self._ending: dict[str, Incident] = {}
        self._kits: dict[str, Mapping[str, str | None]] = {}
        """incident id -> its terminal's attributes, taken when the incident was first pageable."""
        self._terminal_groups = terminal_groups
        self._changed = asyncio.Event()
        for incident in initial:
            self._track(incident)

    def is_pageable(self, incident: Incident) -> bool:
        """The core's pageability, at or above ``notify.min_severity``."""
        return incident.is_pageable and SEVERITY_RANK[incident.severity] >= self._min_rank

    def on_commit(self, effects: Sequence[Effect]) -> None:
        """Commit listener: notice pageable incidents appearing and disappearing."""
        for effect in effects:
            if isinstance(effect, IncidentWrite):
                self._track(effect.incident)

    def _track(self, incident: Incident) -> None:
        if self.is_pageable(incident):
            if incident.id not in self._pageable:
                self._changed.set()
                if incident.terminal_id and incident.scope == "terminal" and self._terminal_groups is not None:
                    self._kits.setdefault(incident.id, dict(self._terminal_groups(incident.terminal_id)))
            self._pageable[incident.id] = incident
        elif incident.id in self._pageable:
            self._ending[incident.id] = self._pageable.pop(incident.id)
            self._changed.set()

    def pending_alerts(self, now: float) -> list[dict[str, Any]]:
        """What to post now: every pageable incident, plus endings not yet delivered."""
        horizon = now + 4 * self._settings.resend_s
        url = self._settings.generator_url
        kits = self._kits
        alerts = [alert_for(i, ends_at=horizon, generator_url=url, kit=kits.get(i.id)) for i in self._pageable.values()]
        alerts += [alert_for(i, ends_at=now, generator_url=url, kit=kits.get(i.id)) for i in self._ending.values()]
        return alerts

    async def run(self) -> None:
        """Post on every change, and re-send everything every ``resend_s``."""
        endpoint = self._settings.alertmanager_url.rstrip("/") + "/api/v2/alerts"
        async with httpx.AsyncClient(timeout=5.0) as client:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=self._settings.resend_s)
                self._changed.clear()
                await asyncio.sleep(0.2)  # let a burst of changes land in one post
                await self._post(client, endpoint)

    async def _post(self, client: httpx.AsyncClient, endpoint: str) -> None:
        ending = dict(self._ending)
        alerts = self.pending_alerts(time.time())
        if not alerts:
            return
        try:
            response = await client.post(endpoint, json=alerts)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            # Everything stays queued; the next change or resend period tries again.
            log.warning("alertmanager push failed; will retry", error=str(exc), alerts=len(alerts))
            return
        for incident_id in ending:
            self._ending.pop(incident_id, None)
            if incident_id not in self._pageable:
                self._kits.pop(incident_id, None)
