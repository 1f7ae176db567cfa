"""Pages on-call: pushes pageable incidents to Alertmanager's API (``/api/v2/alerts``).

Aggregate metrics cannot name a terminal; this path can. An incident is pageable while
it is open, not suppressed by a parent, and at or above ``notify.min_severity``. Each is
sent as an alert with an ``endsAt`` a few resend periods ahead and re-sent every
``notify.resend_s`` while it stays pageable, so alerts expire by themselves if the daemon
dies; when it resolves (or becomes suppressed) it is sent once more ending now.
Alertmanager does the grouping, inhibition and routing (deploy/alertmanager/).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Sequence
from typing import Any

import httpx
import structlog

from fleetwatch.config import NotifySettings
from fleetwatch.core.model import SEVERITY_RANK, Effect, Incident, IncidentWrite
from fleetwatch.timefmt import rfc3339

log = structlog.get_logger("fleetwatch.notify")


def alert_for(incident: Incident, *, ends_at: float, generator_url: str = "") -> dict[str, Any]:
    """One Alertmanager alert describing one incident (labels are what routing uses)."""
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

    def __init__(self, settings: NotifySettings, initial: Iterable[Incident] = ()) -> None:
        self._settings = settings
        self._min_rank = SEVERITY_RANK[settings.min_severity]
        self._pageable: dict[str, Incident] = {}
        self._ending: dict[str, Incident] = {}
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
            self._pageable[incident.id] = incident
        elif incident.id in self._pageable:
            self._ending[incident.id] = self._pageable.pop(incident.id)
            self._changed.set()

    def pending_alerts(self, now: float) -> list[dict[str, Any]]:
        """What to post now: every pageable incident, plus endings not yet delivered."""
        horizon = now + 4 * self._settings.resend_s
        url = self._settings.generator_url
        alerts = [alert_for(i, ends_at=horizon, generator_url=url) for i in self._pageable.values()]
        alerts += [alert_for(i, ends_at=now, generator_url=url) for i in self._ending.values()]
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
