"""Composition root: open the adapters, restore the engine, run, and shut down in order.

Start order: the HTTP address is bound and the TLS files read *before* the store is
opened and restored, so an operator's mistake there is reported in a second, not after
restoring a million terminals.

Shutdown order (SIGTERM/SIGINT): stop MQTT intake first (nothing new arrives), let the
writer commit what is in hand (its QoS 1 acknowledgements go out if the connection is
still there; otherwise the broker redelivers and the engine drops the duplicates), stop
HTTP, close the store, return 0. A fatal error (the store failing, a task that crashed)
goes through the same ordered shutdown and is then raised: the CLI turns it into one
log line and its exit code (a store failure exits 3 and the supervisor restarts us;
nothing acknowledged was lost because PUBACK waits for commit).

The store backend is chosen here, and only here, by the scheme of ``store.url``
(``sqlite:///`` or ``postgresql://``/``postgres://``); everything else sees the port.

**Active or standby** (CONTRACT.md §9, docs/SCALING.md). On PostgreSQL several instances
may share the store and the broker's ``mqtt.client_id``; only the one holding the lease
(fleetwatch/ha.py) is active. The gate is one place, :func:`run_daemon`: the HTTP
servers start at once (a :class:`Switchboard` answers as a standby: ``/readyz`` 503,
``/api/`` and ``/m/`` 503), then the instance waits for the lease, and only once it holds
it (its fencing token set on the store) does it restore the engine and build
:func:`_run_with_store`'s world: the broker connection (same client id, clean start off,
so the broker hands over the session and every QoS 1 message queued in it), the writer,
the sweeper, retention, terminal notices, Alertmanager and every other background
worker. So a standby never connects to the broker and never runs a worker; anything
added to ``_run_with_store`` is gated with them. An active that cannot renew its lease
stops intake first (the same ordered shutdown) and exits 6 (LeaseLost); its supervisor
starts it again as a standby. A clean stop releases the lease, so a standby takes over
at once. On SQLite the instance is simply active.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from pathlib import Path
from typing import Final

import structlog
import uvicorn

from fleetwatch import __version__
from fleetwatch.adapters.catalogues import load_catalogues
from fleetwatch.adapters.http import Switchboard, build_app
from fleetwatch.adapters.metrics import Metrics
from fleetwatch.adapters.mqtt import MqttSource
from fleetwatch.adapters.notice_page import merchant_app, merchant_router
from fleetwatch.adapters.notify import AlertmanagerNotifier
from fleetwatch.adapters.postgres import PostgresStore
from fleetwatch.adapters.sqlite import SqliteStore
from fleetwatch.adapters.webhooks import WebhookDelivery
from fleetwatch.config import Settings, StoreSettings, deprecated_settings, start_summary
from fleetwatch.core.calendar import Calendar
from fleetwatch.core.catalogue import Catalogue, Context
from fleetwatch.core.engine import Engine
from fleetwatch.core.lease import Role
from fleetwatch.core.model import Effect, Incident, NotificationWrite
from fleetwatch.core.screens import TerminalScreens
from fleetwatch.credentials import write_token_file
from fleetwatch.errors import LeaseLost, ListenError, StoreError
from fleetwatch.ha import LeaseKeeper, LeaseThread, instance_name
from fleetwatch.merchant_notices import MerchantNotices, NoticeApi, NoticeLinks, new_secret
from fleetwatch.merchant_notifications import Notifications
from fleetwatch.pipeline import Pipeline
from fleetwatch.ports import ConnectFailure, Leases, Store
from fleetwatch.storage.restore import feed_in_thread
from fleetwatch.storage.retention import RetentionJob, retention_seconds
from fleetwatch.terminal_notices import TerminalNotices, clear_published

log = structlog.get_logger("fleetwatch.app")

GC_THRESHOLDS: Final = (50_000, 20, 10)
"""The cyclic collector's thresholds once the fleet is restored (Python's default: 700, 10, 10).

Intake allocates a few objects per message and almost none of them are cyclic garbage
(reference counting frees them), yet at the default a young collection starts every 700
allocations and a full one, which walks everything created since the freeze (every new
terminal's state among it), whenever the survivors grew by a quarter. Under ``python -m
bench ingest`` (200,000 messages, 20,000 new terminals) the collector took 0.43 s of the
daemon's 5 s of CPU after the freeze: 517 young, 47 middle and 3 full collections (0.26 s
of it); at these thresholds 0.18 s in 7 young ones. Full collections keep Python's own
pacing (``10``), so a cycle that does survive (a traceback, a stopped task) is still freed.
"""

SHUTDOWN_GRACE_S = 4.0


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the daemon owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


API_TOKEN_SECRET = "http.api_token"
LINK_KEY_SECRET = "notice.link_key"


async def api_token(settings: Settings, store: Store) -> str:
    """The configured token, or the one generated into the store (shared by every instance on
    it), written (0600) where the operator can read it."""
    configured = settings.http.api_token.get_secret_value()
    if configured:
        return configured
    token = await store.secret(API_TOKEN_SECRET, new_secret())
    # Beside a SQLite file; with PostgreSQL in systemd's StateDirectory, else the working directory.
    beside = (Path(settings.store.sqlite_path).parent if settings.store.backend == "sqlite"
              else Path(os.environ.get("STATE_DIRECTORY", ".")))
    path = Path(settings.http.token_file or beside / "api-token")
    write_token_file(path, token)  # CredentialFileError naming the file
    log.warning("no http.api_token configured: using the one generated in the store", token_file=str(path))
    return token


async def link_key(settings: Settings, store: Store) -> bytes:
    """``notice.link_key``, or the one generated into the store at first start."""
    configured = settings.notice.link_key.get_secret_value()
    if configured:
        return configured.encode()
    return (await store.secret(LINK_KEY_SECRET, new_secret())).encode()


def notice_base_url(settings: Settings) -> str:
    """Where signed links point: ``notice.public_url``, else the address ``/m/`` is served on."""
    if settings.notice.public_url:
        return settings.notice.public_url
    return f"http://{settings.notice.listen or settings.http.listen}"


def notice_context(settings: Settings) -> Context:
    n = settings.notice
    return Context(support_phone=n.support_phone, acquirer_name=n.acquirer_name, settle_days=n.settle_days)


def calendar_of(settings: Settings) -> Calendar:
    return Calendar(settings.detect.day_s, settings.detect.zone)


def terminal_groups(engine: Engine, terminal_id: str) -> dict[str, str | None]:
    """A terminal's group attributes, for its alerts' labels (Alertmanager's inhibition by group)."""
    rec = engine.terminal(terminal_id)
    if rec is None:
        return {}
    return {"model": rec.model, "fw": rec.fw, "net_type": rec.net_type}


def bind_listener(host_port: tuple[str, int], setting: str, listen: str) -> socket.socket:
    """Bind an address now (uvicorn serves on it later): a busy or foreign address is a ListenError."""
    host, port = host_port
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ListenError(f"{setting} {listen}: {exc.strerror or exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ListenError(f"{setting} {listen}: {exc.strerror or exc}") from exc
    return sock


def not_ready_reason(connected: bool, failure: ConnectFailure | None) -> str | None:
    """What ``/readyz`` says while the daemon is not ready (the store is open by then)."""
    if connected:
        return None
    if failure is None:
        return "mqtt: not connected, connecting"
    return f"mqtt: {failure.reason}: {failure.detail}"


async def run_daemon(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT (returns 0); raise what stopped it otherwise (the CLI maps it to an exit code)."""
    log.info("fleetwatch starting", version=__version__, **start_summary(settings))
    for warning in deprecated_settings(settings):
        log.warning("deprecated setting", detail=warning)
    started = time.perf_counter()
    catalogues = load_catalogues(settings.notice.catalogue_dir)  # a bad operator file: ConfigError, at once
    listeners = [bind_listener(settings.http.host_port, "http.listen", settings.http.listen)]
    try:
        notice_listen = settings.notice.host_port
        if notice_listen is not None:
            listeners.append(bind_listener(notice_listen, "notice.listen", settings.notice.listen))
        metrics = Metrics()
        connection_listeners: list[Callable[[bool], None]] = []

        def connection_changed(up: bool) -> None:
            metrics.mqtt_connected.set(1 if up else 0)
            log.info("mqtt connection state", connected=up)
            for listener in connection_listeners:
                listener(up)

        def connect_failed(failure: ConnectFailure) -> None:
            metrics.mqtt_connect_failures.labels(reason=failure.reason).inc()

        source = MqttSource(settings.mqtt, on_connected_change=connection_changed,
                             on_reconnect=metrics.mqtt_reconnects.inc, on_connect_failed=connect_failed)
        role = RoleState(metrics, instance_name())
        boards = [Switchboard(metrics.exposition, role.status) for _ in listeners]
        servers = [(_server(board, sock.getsockname()[:2]), sock) for board, sock in zip(boards, listeners,
                                                                                         strict=True)]
        # A signal from here on is a clean stop, after the checks still to come (the store, the
        # token file): /healthz answers from the start, and a stop never skips a verdict.
        with _signals() as stop:
            serving = {asyncio.create_task(server.serve(sockets=[sock]), name=f"http-{i}")
                       for i, (server, sock) in enumerate(servers)}
            try:
                return await _open_and_run(settings, started, role, metrics=metrics, source=source,
                                           catalogues=catalogues, connection_listeners=connection_listeners,
                                           boards=boards, servers=[server for server, _ in servers],
                                           serving=serving, stop=stop)
            finally:
                for server, _ in servers:
                    server.should_exit = True
                await asyncio.gather(*serving, return_exceptions=True)
    finally:
        for listener in listeners:
            listener.close()


async def _open_and_run(
    settings: Settings, started: float, role: RoleState, *, metrics: Metrics, source: MqttSource,
    catalogues: Mapping[str, Catalogue], connection_listeners: list[Callable[[bool], None]],
    boards: list[Switchboard], servers: list[uvicorn.Server], serving: set[asyncio.Task[None]],
    stop: asyncio.Event,
) -> int:
    """Open the store, wait to be active (the gate), then run as the active instance."""
    store, leases = await open_store(settings.store, application_name=f"fleetwatch {role.instance}")
    keeper: LeaseThread | None = None
    try:
        keeper = None if leases is None else LeaseThread(leases, role.instance, settings.ha.lease_s,
                                                          on_role=role.changed, stall_s=settings.ha.takeover_s)
        role.keeper = None if keeper is None else keeper.keeper
        holding: asyncio.Task[None] | None = None
        if keeper is None:
            role.changed(Role.ACTIVE, "the store is SQLite: a single instance")
        elif not await _wait_for_lease(keeper, stop):
            log.info("stopping on signal (standby)")
            return 0
        else:
            store.fence(keeper.token)
            # Renewed from now on, through the restore (a million terminals take longer than a lease).
            holding = asyncio.create_task(_hold_lease(keeper), name="lease")
        try:
            return await _run_with_store(
                settings, store, started, metrics=metrics, source=source, catalogues=catalogues,
                connection_listeners=connection_listeners, boards=boards, servers=servers, serving=serving,
                stop=stop, holding=holding,
            )
        finally:
            if holding is not None:
                holding.cancel()
                await asyncio.gather(holding, return_exceptions=True)
            if keeper is not None:
                for board in boards:
                    board.install(None)
                await keeper.release()
    finally:
        if keeper is not None:
            await keeper.close()
        with contextlib.suppress(Exception):
            await store.close()


class RoleState:
    """This instance's role as ``/readyz``, ``fleetwatch_role`` and the log say it."""

    def __init__(self, metrics: Metrics, instance: str) -> None:
        self._metrics = metrics
        self.instance = instance
        self.role = Role.STANDBY
        self.keeper: LeaseKeeper | None = None

    def changed(self, role: Role, why: str) -> None:
        self.role = role
        self._metrics.set_role(role)
        log.info("role changed", role=role.value, reason=why, instance=self.instance)

    def status(self) -> tuple[str, str]:
        """(role, why not ready) for the Switchboard, while the daemon's app is not installed."""
        if self.role is Role.ACTIVE:
            return self.role.value, "restoring the state from the store"
        if self.keeper is None:
            return self.role.value, "opening the store"
        return self.role.value, self.keeper.standby_reason()


@contextlib.contextmanager
def _signals() -> Generator[asyncio.Event, None, None]:
    """SIGTERM/SIGINT set the event while the daemon runs (from standby to shutdown)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _wait_for_lease(keeper: LeaseThread, stop: asyncio.Event) -> bool:
    """Standby until the lease is ours (True) or a signal came first (False)."""
    acquire = asyncio.create_task(keeper.acquire(), name="lease-acquire")
    stopper = asyncio.create_task(stop.wait(), name="signal")
    await asyncio.wait({acquire, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if acquire.done():
        acquire.result()
        return True
    acquire.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await acquire
    return False


async def open_store(settings: StoreSettings, *, application_name: str = "fleetwatch") -> tuple[Store, Leases | None]:
    """The backend ``store.url`` names, opened and migrated (StoreError if it cannot be), and its
    lease when several instances may share it (PostgreSQL; None for SQLite, one process's file)."""
    if settings.backend == "postgresql":
        pg = await PostgresStore.open(settings.url, dead_letters_kept=settings.dead_letters_kept,
                                      application_name=application_name)
        return pg, pg
    return await SqliteStore.open(settings.sqlite_path, dead_letters_kept=settings.dead_letters_kept), None


async def restore_engine(
    engine: Engine, store: Store, now: float, recent_txn_keys: int,
) -> tuple[list[Incident], dict[str, list[tuple[str, str | None]]]]:
    """Rebuild the engine from the store; returns the open incidents and the upstreams' members."""
    open_incidents = await store.load_open_incidents()
    members = await store.load_open_upstream_members()
    batches = await store.load_open_batches()
    txn_keys = await store.load_recent_txn_keys(recent_txn_keys)
    statuses = await store.load_acquirer_statuses()
    hours = await store.load_merchant_hours()
    await feed_in_thread(
        lambda terminals: engine.restore(terminals, open_incidents, batches, txn_keys, now,
                                         upstream_members=members, statuses=statuses, hours=hours),
        store.terminal_chunks(),
    )
    return open_incidents, members


async def _run_with_store(
    settings: Settings, store: Store, started: float, *, metrics: Metrics, source: MqttSource,
    catalogues: Mapping[str, Catalogue], connection_listeners: list[Callable[[bool], None]],
    boards: list[Switchboard], servers: list[uvicorn.Server], serving: set[asyncio.Task[None]],
    stop: asyncio.Event, holding: asyncio.Task[None] | None,
) -> int:
    """The active instance: restore, then serve, ingest and run every background worker.

    ``holding`` renews the lease (None on SQLite); it ends with LeaseLost when it cannot.
    """
    engine = Engine(settings.detect, settings.settlement)
    active_since = time.perf_counter()
    open_incidents, members = await restore_engine(engine, store, time.time(), settings.detect.recent_txn_keys)
    # The restored fleet lives as long as the process: move it out of the collector's
    # reach, so no full collection walks a million terminals again (issue 16).
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    log.info("state restored", seconds=round(time.perf_counter() - started, 3))
    pipeline = Pipeline(settings, engine, store, metrics)
    pipeline.refresh_snapshot(time.time())
    connection_listeners.append(pipeline.connection_changed)
    pipeline.connection_changed(source.connected)  # not yet: nothing is judged before we can hear the fleet
    if holding is not None:
        connection_listeners.append(_takeover_timer(settings, active_since))

    async def commit(effects: list[Effect]) -> None:
        await pipeline.submit(effects)

    calendar = calendar_of(settings)
    notices = MerchantNotices(store, catalogues, notice_context(settings), calendar,
                              recent_hours=settings.notice.recent_hours, default_lang=settings.notice.default_lang,
                              zone_of=engine.merchant_zone)
    links = NoticeLinks(await link_key(settings, store), notice_base_url(settings), calendar)
    app = build_app(
        token=await api_token(settings, store), exposition=metrics.exposition, reads=store, decisions=engine,
        commit=commit, not_ready_reason=lambda: not_ready_reason(source.connected, source.failure),
        clock=time.time, notices=NoticeApi(notices, links), outbox=store,
    )
    pages = merchant_router(notices, links, time.time)
    if len(boards) > 1:
        boards[1].install(merchant_app(pages))
    else:
        app.include_router(pages)
    boards[0].install(app)
    await _start_terminal_notices(settings, store, engine, pipeline, source=source, metrics=metrics,
                                  catalogues=catalogues, members=members)
    notifier = AlertmanagerNotifier(
        settings.notify, open_incidents, terminal_groups=lambda tid: terminal_groups(engine, tid),
    ) if settings.notify.alertmanager_url else None
    if notifier is not None:
        pipeline.add_commit_listener(notifier.on_commit)
    delivery = await _start_notifications(settings, store, pipeline, metrics=metrics, catalogues=catalogues,
                                          open_incidents=open_incidents, members=members)

    retention = RetentionJob(
        store, retention_seconds(settings.store.retain_days, settings.detect.day_s), clock=time.time,
        every_s=settings.store.retention_every_s, chunk=settings.store.retention_chunk,
        on_deleted=lambda table, n: metrics.store_rows_deleted.labels(table=table).inc(n),
        on_size=metrics.store_size.set,
    )

    if holding is not None and holding.done():
        holding.result()  # the lease was lost during the restore: never connect (LeaseLost)
    tasks = {
        asyncio.create_task(pipeline.run_writer(), name="writer"),
        asyncio.create_task(pipeline.run_sweeper(), name="sweeper"),
        asyncio.create_task(retention.run(), name="retention"),
        asyncio.create_task(source.run(pipeline.on_message), name="mqtt"),
        *serving,
    }
    if holding is not None:
        tasks.add(holding)
    # Background workers (they act on the outside world: only an active instance runs them).
    if notifier is not None:
        tasks.add(asyncio.create_task(notifier.run(), name="notifier"))
    if delivery is not None:
        tasks.add(asyncio.create_task(delivery.run(), name="webhooks"))
    stopper = asyncio.create_task(stop.wait(), name="signal")
    done, _ = await asyncio.wait(tasks | {stopper}, return_when=asyncio.FIRST_COMPLETED)
    failure = _failure_of(tasks & done)
    if failure is not None:
        log.info("stopping after a fatal error", task=next(t.get_name() for t in tasks & done))
    else:
        log.info("stopping on signal")
    failure = await _shutdown(pipeline, source, servers, tasks, failure)
    stopper.cancel()
    if failure is not None:
        raise failure
    return 0


async def _hold_lease(keeper: LeaseThread) -> None:
    """Renew the lease; once it cannot be renewed, stop (LeaseLost: the ordered shutdown stops
    intake first, so nothing more is acknowledged, and the CLI exits 6)."""
    why = await keeper.hold()
    raise LeaseLost(f"stepped down: {why}")


def _takeover_timer(settings: Settings, active_since: float) -> Callable[[bool], None]:
    """Logs, at the first subscription after taking the lease, how long the takeover took."""
    done = False

    def on_connection(up: bool) -> None:
        nonlocal done
        if not up or done:
            return
        done = True
        seconds = time.perf_counter() - active_since
        budget = settings.ha.takeover_s - settings.ha.lease_s  # the lease's expiry takes the rest
        emit = log.warning if seconds > budget else log.info
        emit("active: restored and subscribed", seconds=round(seconds, 3), budget_s=budget)

    return on_connection


def _failure_of(finished: set[asyncio.Task[None]]) -> BaseException | None:
    """Why a task the daemon needs ended early: its exception, or the fact that it returned."""
    for task in finished:
        if task.cancelled():
            return RuntimeError(f"task {task.get_name()} was cancelled")
        exc = task.exception()
        return exc if exc is not None else RuntimeError(f"task {task.get_name()} ended unexpectedly")
    return None


def _server(app: object, host_port: tuple[str, int]) -> uvicorn.Server:
    host, port = host_port
    # log_config=None: uvicorn's loggers go through ours (logs.py), so a JSON stream stays JSON.
    return _QuietServer(uvicorn.Config(app, host=host, port=port, log_level="warning",  # type: ignore[arg-type]
                                       access_log=False, lifespan="off", log_config=None))


async def _start_terminal_notices(
    settings: Settings, store: Store, engine: Engine, pipeline: Pipeline, *, source: MqttSource,
    metrics: Metrics, catalogues: Mapping[str, Catalogue], members: dict[str, list[tuple[str, str | None]]],
) -> None:
    """The terminals' screens: publish what changes, or clear everything when switched off."""
    submit = pipeline.submit
    prefix = settings.mqtt.topic_prefix
    metrics.publish_backlog.set_function(lambda: source.publish_backlog)
    if not settings.notice.publish_to_terminals:
        cleared = clear_published(await store.load_terminal_notices(), source, prefix, submit, time.time)
        if cleared:
            log.info("notice.publish_to_terminals is off: clearing retained terminal notices", terminals=cleared)
        return
    detect = settings.detect
    window = detect.intervals(detect.correlation_window_intervals)
    screens = TerminalScreens(catalogues[settings.notice.terminal_lang], notice_context(settings), window)
    screens.restore(engine.open_incidents(), members, await store.load_terminal_notices(shown_only=True),
                    closed=engine.closed_terminals())
    glue = TerminalNotices(screens, source, prefix, submit, time.time,
                           on_published=metrics.terminal_notices.inc, on_acked=metrics.terminal_notices_acked.inc)
    pipeline.add_commit_listener(glue.on_commit)
    pipeline.add_sweep_listener(glue.on_sweep)


async def _start_notifications(
    settings: Settings, store: Store, pipeline: Pipeline, *, metrics: Metrics, catalogues: Mapping[str, Catalogue],
    open_incidents: list[Incident], members: dict[str, list[tuple[str, str | None]]],
) -> WebhookDelivery | None:
    """Merchant notifications (CONTRACT §6): the rules restored from the outbox and fed every
    batch before it is written; the worker that delivers the outbox. None without receivers."""
    notifications = Notifications.from_settings(settings, catalogues, notice_context(settings))
    if notifications is None:
        return None
    notifications.restore(open_incidents, members, await store.load_notification_state(), time.time())
    pipeline.derive_with(notifications.derive)
    metrics.notification_channels(w.name for w in settings.notify.merchant_webhooks)
    delivery = WebhookDelivery(store, settings.notify, on_outcome=metrics.notification_outcome,
                               on_depth=metrics.notification_queue.set)

    def wake(effects: Sequence[Effect]) -> None:
        if any(isinstance(e, NotificationWrite) for e in effects):
            delivery.wake()

    pipeline.add_commit_listener(wake)
    return delivery


async def _shutdown(
    pipeline: Pipeline, source: MqttSource, servers: list[uvicorn.Server],
    tasks: set[asyncio.Task[None]], failure: BaseException | None,
) -> BaseException | None:
    """Stop in order; returns what the daemon failed with (the first failure wins), None on a clean stop."""
    await source.stop()
    pipeline.close(terminal_budget_s=SHUTDOWN_GRACE_S - 1.5)
    writer = next(t for t in tasks if t.get_name() == "writer")
    if not writer.done():
        started = time.perf_counter()
        try:
            await asyncio.wait_for(writer, timeout=SHUTDOWN_GRACE_S)
            log.info("writer drained", seconds=round(time.perf_counter() - started, 3))
        except TimeoutError:
            failure = failure or StoreError(f"the store did not take the last writes within {SHUTDOWN_GRACE_S} s")
        except StoreError as exc:
            failure = failure or exc
    for server in servers:
        server.should_exit = True
    for task in tasks:
        if task is not writer and not task.done():
            task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    log.info("fleetwatch stopped", clean=failure is None)
    return failure
