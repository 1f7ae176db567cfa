"""The HTTP surface (CONTRACT.md §3): metrics, health, and the bearer-token API.

FastAPI for the typed API and its OpenAPI document at /openapi.json; served by uvicorn
in the daemon's own event loop, so API actions (ack, resolve, maintenance) go through
the same engine and the same writer as messages, one at a time, never racing them, and
answer only once what they changed is committed.

Errors are answered from one place, always as a JSON body the framework builds: the
domain's request errors (``fleetwatch.errors.RequestError``: not found, conflict, bad
request) by :data:`REQUEST_ERROR_STATUS`; anything else is a bug, answered 500 and
logged once with its traceback, never disguised as "not found".
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from datetime import date
from typing import Annotated, Any, Final, Literal, Protocol

import structlog
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleetwatch import __version__
from fleetwatch.core.hours import HoursError, WeeklyHours
from fleetwatch.core.model import AcquirerStatus, Effect, Incident, NotificationRecord, TerminalRecord, TerminalWrite
from fleetwatch.core.settlement import money_at_stake, reconcile_day
from fleetwatch.errors import BadRequest, Conflict, NotFound, RequestError, UnknownIncident, UnknownTerminal
from fleetwatch.ports import NotificationOutbox, StoreReads
from fleetwatch.timefmt import parse_time, rfc3339

log = structlog.get_logger("fleetwatch.http")

REQUEST_ERROR_STATUS: Final[dict[type[RequestError], int]] = {BadRequest: 400, NotFound: 404, Conflict: 409}
"""The one mapping of the domain's request errors to HTTP status codes (most specific class wins)."""


def request_error_status(exc: RequestError) -> int:
    for cls in type(exc).__mro__:
        if cls in REQUEST_ERROR_STATUS:
            return REQUEST_ERROR_STATUS[cls]
    return 400


class BugsAnswer500:
    """ASGI middleware: an unexpected exception is a 500 with a JSON body, logged once.

    Starlette's own last-resort handler answers in plain text and re-raises, so uvicorn
    logs the traceback a second time; this one stops it here.
    """

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self._app(scope, receive, tracking_send)
        except Exception:
            log.exception("API request failed: a bug, answered 500", method=scope.get("method"),
                          path=scope.get("path"))
            if not started:  # otherwise the client sees the connection end mid-answer
                await JSONResponse({"detail": "internal error (logged by the daemon)"}, status_code=500)(
                    scope, receive, send)


class Decisions(Protocol):
    """The engine's operator actions (IncidentNotOpen when there is nothing to act on) and in-memory views."""

    def acknowledge(self, incident_id: str, now: float) -> list[Effect]: ...
    def resolve(self, incident_id: str, now: float) -> list[Effect]: ...
    def set_maintenance(self, terminal_id: str, until: float | None, now: float) -> list[Effect]: ...
    def set_merchant_maintenance(self, merchant_id: str, until: float | None, now: float) -> list[Effect]: ...
    def set_hours(self, merchant_id: str, hours: WeeklyHours | None, now: float) -> list[Effect]: ...
    def hours_of(self, merchant_id: str) -> tuple[str, str, dict[str, list[str]]]: ...
    def terminal(self, terminal_id: str) -> TerminalRecord | None: ...
    def acquirer_status(self, terminal_id: str) -> AcquirerStatus | None: ...
    def incident(self, incident_id: str) -> Incident | None: ...


Commit = Callable[[list[Effect]], Awaitable[None]]


class Notices(Protocol):
    """Merchant notices for the ops API (fleetwatch.merchant_notices)."""

    def lang(self, requested: str | None, accept_language: str | None) -> str: ...
    async def notice_json(self, merchant_id: str, lang: str, now: float) -> dict[str, Any]: ...
    def link(self, merchant_id: str, now: float, days: float | None) -> tuple[str, int]: ...


class NoticeLinkIn(BaseModel):
    days: float | None = Field(default=None, gt=0, le=3660,
                               description="How long the link works, in days (of detect.day_s); default 30.")


class NoticeLinkOut(BaseModel):
    url: str
    expires_at: str


class IncidentOut(BaseModel):
    id: str
    kind: str
    cause: str
    scope: str
    terminal_id: str | None
    merchant_id: str | None
    group: dict[str, str] | None
    severity: str
    status: str
    opened_at: str
    updated_at: str
    resolved_at: str | None
    summary: str
    parent_id: str | None
    suppressed: bool
    previous_id: str | None
    evidence: dict[str, Any]

    @classmethod
    def of(cls, i: Incident) -> IncidentOut:
        return cls(
            id=i.id, kind=i.kind, cause=i.cause, scope=i.scope, terminal_id=i.terminal_id,
            merchant_id=i.merchant_id, group=i.group, severity=i.severity, status=i.status,
            opened_at=rfc3339(i.opened_at) or "", updated_at=rfc3339(i.updated_at) or "",
            resolved_at=rfc3339(i.resolved_at), summary=i.summary, parent_id=i.parent_id,
            suppressed=i.suppressed, previous_id=i.previous_id, evidence=i.evidence,
        )


class IncidentPage(BaseModel):
    items: list[IncidentOut]
    next_cursor: str | None


class IncidentEventOut(BaseModel):
    at: str
    type: str
    detail: dict[str, Any]


class TerminalOut(BaseModel):
    terminal_id: str
    merchant_id: str | None
    model: str | None
    fw: str | None
    app: str | None
    serial: str | None
    net_type: str | None
    state: str
    in_maintenance: bool
    maintenance_until: str | None
    last_seen: str | None
    last_heartbeat_at: str | None
    seq: int | None
    uptime_s: int | None
    reboots: int
    battery_pct: int | None
    charging: bool | None
    rssi_dbm: int | None
    printer: str | None
    reader_fault: bool
    saf_pending: int | None
    tamper: bool
    acquirer_status: str = Field(description="active, suspended or closed: the acquirer's decision (CONTRACT §7).")
    reason: str | None = Field(description="The acquirer's reason code for the status.")
    since: str | None = Field(description="When the acquirer's status began (RFC 3339).")

    @classmethod
    def of(cls, t: TerminalRecord, now: float, status: AcquirerStatus | None = None) -> TerminalOut:
        in_maintenance = t.maintenance_until is not None and t.maintenance_until > now
        active = status is None or status.status == "active"
        return cls(
            terminal_id=t.terminal_id, merchant_id=t.merchant_id, model=t.model, fw=t.fw, app=t.app,
            serial=t.serial, net_type=t.net_type, state=t.state, in_maintenance=in_maintenance,
            maintenance_until=rfc3339(t.maintenance_until) if in_maintenance else None,
            last_seen=rfc3339(t.last_seen), last_heartbeat_at=rfc3339(t.last_heartbeat_at), seq=t.seq,
            uptime_s=t.uptime_s, reboots=t.reboots, battery_pct=t.battery_pct, charging=t.charging,
            rssi_dbm=t.rssi_dbm, printer=t.printer, reader_fault=t.reader_fault,
            saf_pending=t.saf_pending, tamper=t.tamper,
            acquirer_status="active" if status is None else status.status,
            reason=None if active or status is None else status.reason,
            since=None if active or status is None else rfc3339(status.since),
        )


class NotificationOut(BaseModel):
    """One outbox row (CONTRACT §6): one event for one receiver."""

    event_id: str
    receiver: str
    type: str
    merchant_id: str
    status: str
    attempts: int
    last_error: str | None
    created_at: str | None
    sent_at: str | None

    @classmethod
    def of(cls, r: NotificationRecord) -> NotificationOut:
        return cls(event_id=r.event_id, receiver=r.receiver, type=r.type, merchant_id=r.merchant_id,
                   status=r.status, attempts=r.attempts, last_error=r.last_error, created_at=rfc3339(r.created_at),
                   sent_at=rfc3339(r.sent_at))


class NotificationPage(BaseModel):
    items: list[NotificationOut]
    next_cursor: str | None


class TerminalPage(BaseModel):
    items: list[TerminalOut]
    next_cursor: str | None


class MaintenanceIn(BaseModel):
    until: str | float = Field(description="End of the maintenance window: RFC 3339 time or epoch seconds.")


class MerchantMaintenanceOut(BaseModel):
    merchant_id: str
    until: str | None = Field(description="End of the window (RFC 3339); null once it is ended.")
    terminal_ids: list[str] = Field(description="The merchant's terminals the window was set on.")


class HoursOut(BaseModel):
    source: Literal["configured", "learned", "none"]
    timezone: str
    weekly: dict[str, list[str]] = Field(description='Opening ranges per day, e.g. {"mon": ["08:00-22:00"]}; '
                                                     "a day not listed is closed.")


class GapPage(BaseModel):
    items: list[IncidentOut]
    total_at_stake_minor: dict[str, int] = Field(description="Money at stake per currency, minor units.")


class CurrencyDayOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    currency: str
    approved_minor: int
    approved_count: int
    batched_minor: int
    settled_minor: int
    difference_minor: int = Field(description="approved - settled")
    batches: int
    unclosed_batches: int
    unsettled_batches: int


class Reconciliation(BaseModel):
    merchant_id: str
    business_date: str
    currencies: list[CurrencyDayOut]


_bearer = HTTPBearer(auto_error=False)
_ID = r"^[A-Za-z0-9.\-]{1,32}$"


def _future(value: str | float, now: float) -> float:
    """A maintenance window's end: a time in the future, else a 422 saying what is wrong."""
    try:
        until = parse_time(value)
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=f"bad time: {exc}") from exc
    if until <= now:
        raise HTTPException(status_code=422, detail="maintenance must end in the future")
    return until


def _merchant_window(merchant_id: str, until: float | None, effects: list[Effect]) -> MerchantMaintenanceOut:
    tids = sorted({e.record.terminal_id for e in effects if isinstance(e, TerminalWrite)})
    return MerchantMaintenanceOut(merchant_id=merchant_id, until=rfc3339(until), terminal_ids=tids)


def _notice_routes(app: FastAPI, auth: list[Any], notices: Notices, clock: Callable[[], float]) -> None:
    """GET /api/v1/merchants/{id}/notices and POST .../notice-link (CONTRACT §5)."""

    @app.get("/api/v1/merchants/{merchant_id}/notices", dependencies=auth)
    async def merchant_notices(
        request: Request, merchant_id: Annotated[str, Path(pattern=_ID)], lang: str | None = None,
    ) -> dict[str, Any]:
        chosen = notices.lang(lang, request.headers.get("accept-language"))
        return await notices.notice_json(merchant_id, chosen, clock())

    @app.post("/api/v1/merchants/{merchant_id}/notice-link", dependencies=auth)
    async def notice_link(
        merchant_id: Annotated[str, Path(pattern=_ID)], body: NoticeLinkIn | None = None,
    ) -> NoticeLinkOut:
        url, exp = notices.link(merchant_id, clock(), body.days if body is not None else None)
        return NoticeLinkOut(url=url, expires_at=rfc3339(exp) or "")


class Switchboard:
    """The ASGI app the HTTP servers run from the start: the daemon's app once installed, and
    until then (or again after stepping down) the answers of an instance that is not serving.

    A standby (CONTRACT.md §9) and an active still restoring its state answer ``/healthz``
    200, ``/metrics`` (their role, their lease), ``/readyz`` 503 with the role and the reason,
    and 503 for everything else (``/api/``, ``/m/``): their store may be seconds behind, and
    an action must go through the one engine that holds the lease.
    """

    def __init__(self, exposition: Callable[[], bytes], status: Callable[[], tuple[str, str]]) -> None:
        """``status`` answers (role, why not ready) while no app is installed."""
        self._exposition = exposition
        self._status = status
        self._app: ASGIApp | None = None

    def install(self, app: ASGIApp | None) -> None:
        """Serve ``app`` from now on (None: back to the not-serving answers)."""
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self._app
        if app is not None:
            await app(scope, receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope.get("path", "")
        response: Response
        if path == "/healthz":
            response = JSONResponse({"status": "ok"})
        elif path == "/metrics":
            response = Response(self._exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")
        else:
            role, reason = self._status()
            body: dict[str, str | None] = (
                {"status": "not ready", "role": role, "reason": reason} if path == "/readyz" else {"detail": reason}
            )
            response = JSONResponse(body, status_code=503, headers={"Retry-After": "1"})
        await response(scope, receive, send)


class BearerToken:
    """Dependency: 401 unless ``Authorization: Bearer <token>`` matches (constant-time compare).

    A module-level class rather than a closure because FastAPI resolves the (postponed)
    annotations of dependencies in their module's namespace.
    """

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    def __call__(self, cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
        if cred is None or not secrets.compare_digest(cred.credentials.encode(), self._token):
            raise HTTPException(status_code=401, detail="missing or wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})


def build_app(
    *,
    token: str,
    exposition: Callable[[], bytes],
    reads: StoreReads,
    decisions: Decisions,
    commit: Commit,
    not_ready_reason: Callable[[], str | None],
    clock: Callable[[], float],
    notices: Notices | None = None,
    outbox: NotificationOutbox | None = None,
) -> FastAPI:
    """The ASGI app; every dependency is passed in so tests can build it around fakes.

    ``not_ready_reason`` answers None when the daemon is ready (store open, MQTT
    subscribed), else why not, for ``/readyz``.
    """
    app = FastAPI(title="fleetwatch", version=__version__, summary="Card-terminal fleet incidents")
    app.add_middleware(BugsAnswer500)
    auth = [Depends(BearerToken(token))]

    @app.exception_handler(RequestError)
    async def _request_error(_request: Request, exc: RequestError) -> Response:
        return JSONResponse({"detail": str(exc)}, status_code=request_error_status(exc))

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint() -> Response:
        return Response(exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz(response: Response) -> dict[str, str | None]:
        # CONTRACT.md §9's shape. Only the active instance serves this app (a standby's answers
        # are the Switchboard's).
        reason = not_ready_reason()
        if reason is None:
            return {"status": "ready", "role": "active", "reason": None}
        response.status_code = 503
        return {"status": "not ready", "role": "active", "reason": reason}

    @app.get("/api/v1/incidents", dependencies=auth)
    async def list_incidents(  # noqa: PLR0917 - FastAPI reads query parameters from the signature
        status: Literal["open", "acknowledged", "resolved", "all"] = "open",
        kind: str | None = None, terminal_id: str | None = None, merchant_id: str | None = None,
        scope: str | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100, cursor: str | None = None,
    ) -> IncidentPage:
        items, next_cursor = await reads.list_incidents(
            status=status, kind=kind, terminal_id=terminal_id, merchant_id=merchant_id,
            scope=scope, limit=limit, cursor=cursor,
        )
        return IncidentPage(items=[IncidentOut.of(i) for i in items], next_cursor=next_cursor)

    async def _incident_or_404(incident_id: str) -> Incident:
        found = decisions.incident(incident_id) or await reads.get_incident(incident_id)
        if found is None:
            raise UnknownIncident(incident_id)
        return found

    @app.get("/api/v1/incidents/{incident_id}", dependencies=auth)
    async def get_incident(incident_id: str) -> IncidentOut:
        return IncidentOut.of(await _incident_or_404(incident_id))

    @app.get("/api/v1/incidents/{incident_id}/events", dependencies=auth)
    async def incident_events(incident_id: str) -> list[IncidentEventOut]:
        await _incident_or_404(incident_id)
        return [IncidentEventOut(at=rfc3339(e.at) or "", type=e.type, detail=e.detail)
                for e in await reads.incident_events(incident_id)]

    async def _act(incident_id: str, action: Callable[[str, float], list[Effect]]) -> IncidentOut:
        current = await _incident_or_404(incident_id)
        if current.status == "resolved":
            return IncidentOut.of(current)
        await commit(action(incident_id, clock()))  # IncidentNotOpen (409) when the engine does not hold it
        return IncidentOut.of(await _incident_or_404(incident_id))

    @app.post("/api/v1/incidents/{incident_id}/ack", dependencies=auth)
    async def ack(incident_id: str) -> IncidentOut:
        return await _act(incident_id, decisions.acknowledge)

    @app.post("/api/v1/incidents/{incident_id}/resolve", dependencies=auth)
    async def resolve(incident_id: str) -> IncidentOut:
        return await _act(incident_id, decisions.resolve)

    @app.get("/api/v1/notifications", dependencies=auth)
    async def list_notifications(
        status: str = "all", merchant_id: str | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: str | None = None,
    ) -> NotificationPage:
        if outbox is None:
            return NotificationPage(items=[], next_cursor=None)
        items, next_cursor = await outbox.list_notifications(status=status, merchant_id=merchant_id, limit=limit,
                                                             cursor=cursor)
        return NotificationPage(items=[NotificationOut.of(r) for r in items], next_cursor=next_cursor)

    @app.get("/api/v1/terminals", dependencies=auth)
    async def list_terminals(
        merchant_id: str | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: str | None = None,
    ) -> TerminalPage:
        items, next_cursor = await reads.list_terminals(merchant_id=merchant_id, limit=limit, cursor=cursor)
        now = clock()
        fresh = [decisions.terminal(t.terminal_id) or t for t in items]
        return TerminalPage(items=[TerminalOut.of(t, now, decisions.acquirer_status(t.terminal_id)) for t in fresh],
                            next_cursor=next_cursor)

    async def _terminal_or_404(terminal_id: str) -> TerminalRecord:
        found = decisions.terminal(terminal_id) or await reads.get_terminal(terminal_id)
        if found is None:
            raise UnknownTerminal(terminal_id)
        return found

    def _terminal_out(t: TerminalRecord) -> TerminalOut:
        return TerminalOut.of(t, clock(), decisions.acquirer_status(t.terminal_id))

    @app.get("/api/v1/terminals/{terminal_id}", dependencies=auth)
    async def get_terminal(terminal_id: str) -> TerminalOut:
        return _terminal_out(await _terminal_or_404(terminal_id))

    @app.post("/api/v1/terminals/{terminal_id}/maintenance", dependencies=auth)
    async def start_maintenance(terminal_id: str, body: MaintenanceIn) -> TerminalOut:
        await _terminal_or_404(terminal_id)
        until = _future(body.until, clock())
        await commit(decisions.set_maintenance(terminal_id, until, clock()))
        return _terminal_out(await _terminal_or_404(terminal_id))

    @app.delete("/api/v1/terminals/{terminal_id}/maintenance", dependencies=auth)
    async def end_maintenance(terminal_id: str) -> TerminalOut:
        await _terminal_or_404(terminal_id)
        await commit(decisions.set_maintenance(terminal_id, None, clock()))
        return _terminal_out(await _terminal_or_404(terminal_id))

    @app.post("/api/v1/merchants/{merchant_id}/maintenance", dependencies=auth)
    async def start_merchant_maintenance(
        merchant_id: Annotated[str, Path(pattern=_ID)], body: MaintenanceIn,
    ) -> MerchantMaintenanceOut:
        until = _future(body.until, clock())
        return _merchant_window(merchant_id, until, await _commit(decisions.set_merchant_maintenance(
            merchant_id, until, clock())))

    @app.delete("/api/v1/merchants/{merchant_id}/maintenance", dependencies=auth)
    async def end_merchant_maintenance(merchant_id: Annotated[str, Path(pattern=_ID)]) -> MerchantMaintenanceOut:
        return _merchant_window(merchant_id, None, await _commit(decisions.set_merchant_maintenance(
            merchant_id, None, clock())))

    async def _commit(effects: list[Effect]) -> list[Effect]:
        await commit(effects)
        return effects

    @app.get("/api/v1/merchants/{merchant_id}/hours", dependencies=auth)
    async def get_hours(merchant_id: Annotated[str, Path(pattern=_ID)]) -> HoursOut:
        source, zone, weekly = decisions.hours_of(merchant_id)
        return HoursOut(source=source, timezone=zone, weekly=weekly)

    @app.put("/api/v1/merchants/{merchant_id}/hours", dependencies=auth)
    async def put_hours(merchant_id: Annotated[str, Path(pattern=_ID)], body: dict[str, Any]) -> HoursOut:
        try:
            hours = WeeklyHours.parse(body)
        except HoursError as exc:
            raise HTTPException(status_code=422, detail=f"bad hours: {exc}") from exc
        await commit(decisions.set_hours(merchant_id, hours, clock()))
        return await get_hours(merchant_id)

    @app.delete("/api/v1/merchants/{merchant_id}/hours", dependencies=auth)
    async def delete_hours(merchant_id: Annotated[str, Path(pattern=_ID)]) -> HoursOut:
        await commit(decisions.set_hours(merchant_id, None, clock()))
        return await get_hours(merchant_id)

    @app.get("/api/v1/settlement/gaps", dependencies=auth)
    async def settlement_gaps(
        merchant_id: str | None = None, terminal_id: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
    ) -> GapPage:
        items, _ = await reads.list_incidents(
            status="open", kind="settlement_gap", merchant_id=merchant_id, terminal_id=terminal_id, limit=limit,
        )
        return GapPage(items=[IncidentOut.of(i) for i in items], total_at_stake_minor=money_at_stake(items))

    @app.get("/api/v1/settlement/reconciliation", dependencies=auth)
    async def reconciliation(merchant_id: str, business_date: date) -> Reconciliation:
        batches = await reads.batches_for(merchant_id, business_date.isoformat())
        return Reconciliation(
            merchant_id=merchant_id, business_date=business_date.isoformat(),
            currencies=[CurrencyDayOut.model_validate(day) for day in reconcile_day(batches)],
        )

    if notices is not None:
        _notice_routes(app, auth, notices, clock)

    @app.api_route("/api/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], dependencies=auth,
                   include_in_schema=False)
    async def unknown_api_path(rest: str) -> Response:
        """Registered last: an unknown path under /api/ is 401 without a token, 404 with one."""
        raise HTTPException(status_code=404, detail=f"no such API path: /api/{rest}")

    return app
