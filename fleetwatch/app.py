"""Composition root: open the adapters, restore the engine, run, and shut down in order.

Shutdown order (SIGTERM/SIGINT): stop MQTT intake first (nothing new arrives), let the
writer commit what is in hand (its QoS 1 acknowledgements go out if the connection is
still there; otherwise the broker redelivers and the engine drops the duplicates), stop
HTTP, close the store, exit 0. A store failure is unrecoverable: exit 1 and let the
supervisor restart us; nothing acknowledged was lost because PUBACK waits for commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Generator, Mapping
from pathlib import Path

import structlog
import uvicorn

from fleetwatch.adapters.catalogues import load_catalogues
from fleetwatch.adapters.http import build_app
from fleetwatch.adapters.metrics import Metrics
from fleetwatch.adapters.mqtt import GmqttSource
from fleetwatch.adapters.notice_page import merchant_app, merchant_router
from fleetwatch.adapters.notify import AlertmanagerNotifier
from fleetwatch.adapters.sqlite import SqliteStore
from fleetwatch.config import Settings, effective_settings
from fleetwatch.core.calendar import Calendar
from fleetwatch.core.catalogue import Catalogue, Context
from fleetwatch.core.engine import Engine
from fleetwatch.core.model import Effect
from fleetwatch.core.screens import TerminalScreens
from fleetwatch.errors import ConfigError, StoreError
from fleetwatch.merchant_notices import MerchantNotices, NoticeApi, NoticeLinks, new_secret
from fleetwatch.pipeline import Pipeline
from fleetwatch.terminal_notices import TerminalNotices, clear_published

log = structlog.get_logger("fleetwatch.app")

SHUTDOWN_GRACE_S = 4.0
RECENT_TXN_KEYS = 200_000


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the daemon owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


API_TOKEN_SECRET = "http.api_token"
LINK_KEY_SECRET = "notice.link_key"


async def api_token(settings: Settings, store: SqliteStore) -> str:
    """The configured token, or the one generated into the store (shared by every instance on
    it), written (0600) where the operator can read it."""
    configured = settings.http.api_token.get_secret_value()
    if configured:
        return configured
    token = await store.secret(API_TOKEN_SECRET, new_secret())
    path = Path(settings.http.token_file or Path(settings.store.sqlite_path).parent / "api-token")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    log.warning("no http.api_token configured: using the one generated in the store", token_file=str(path))
    return token


async def link_key(settings: Settings, store: SqliteStore) -> bytes:
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


async def run_daemon(settings: Settings) -> int:
    """Run until a signal (exit 0) or an unrecoverable store error (exit 1)."""
    log.info("fleetwatch starting", settings=effective_settings(settings))
    started = time.perf_counter()
    try:
        store = await SqliteStore.open(settings.store.sqlite_path, dead_letters_kept=settings.store.dead_letters_kept)
    except StoreError as exc:
        log.error("cannot open the store", error=str(exc))
        return 1
    try:
        return await _run_with_store(settings, store, started)
    except ConfigError as exc:
        log.error("configuration error", error=str(exc))
        return 2
    finally:
        with contextlib.suppress(Exception):
            await store.close()


async def _run_with_store(settings: Settings, store: SqliteStore, started: float) -> int:
    catalogues = load_catalogues(settings.notice.catalogue_dir)
    engine = Engine(settings.detect, settings.settlement)
    open_incidents = await store.load_open_incidents()
    members = await store.load_open_upstream_members()
    engine.restore(
        store.iter_terminals(),
        open_incidents,
        await store.load_open_batches(),
        await store.load_recent_txn_keys(RECENT_TXN_KEYS),
        time.time(),
        upstream_members=members,
    )
    log.info("state restored", seconds=round(time.perf_counter() - started, 3))
    metrics = Metrics()
    pipeline = Pipeline(settings, engine, store, metrics)
    pipeline.refresh_snapshot(time.time())

    def connection_changed(up: bool) -> None:
        metrics.mqtt_connected.set(1 if up else 0)
        log.info("mqtt connection state", connected=up)

    source = GmqttSource(settings.mqtt, on_connected_change=connection_changed,
                         on_reconnect=metrics.mqtt_reconnects.inc)

    async def commit(effects: list[Effect]) -> None:
        await pipeline.submit(effects)

    calendar = calendar_of(settings)
    notices = MerchantNotices(store, catalogues, notice_context(settings), calendar,
                              recent_hours=settings.notice.recent_hours, default_lang=settings.notice.default_lang)
    links = NoticeLinks(await link_key(settings, store), notice_base_url(settings), calendar)
    app = build_app(
        token=await api_token(settings, store), exposition=metrics.exposition, reads=store, decisions=engine,
        commit=commit, ready=lambda: source.connected, clock=time.time, notices=NoticeApi(notices, links),
    )
    pages = merchant_router(notices, links, time.time)
    servers = [_server(app, settings.http.host_port)]
    notice_listen = settings.notice.host_port
    if notice_listen is None:
        app.include_router(pages)
    else:
        servers.append(_server(merchant_app(pages), notice_listen))
    await _start_terminal_notices(settings, store, engine, pipeline, source=source, metrics=metrics,
                                  catalogues=catalogues, members=members)
    notifier = AlertmanagerNotifier(settings.notify, open_incidents) if settings.notify.alertmanager_url else None
    if notifier is not None:
        pipeline.add_commit_listener(notifier.on_commit)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    tasks = {
        asyncio.create_task(pipeline.run_writer(), name="writer"),
        asyncio.create_task(pipeline.run_sweeper(), name="sweeper"),
        asyncio.create_task(source.run(pipeline.on_message), name="mqtt"),
        *(asyncio.create_task(server.serve(), name=f"http-{i}") for i, server in enumerate(servers)),
    }
    if notifier is not None:
        tasks.add(asyncio.create_task(notifier.run(), name="notifier"))
    stopper = asyncio.create_task(stop.wait(), name="signal")
    done, _ = await asyncio.wait(tasks | {stopper}, return_when=asyncio.FIRST_COMPLETED)
    failure = next((t for t in tasks if t in done and not t.cancelled() and t.exception()), None)
    if failure is not None:
        log.error("fatal error, stopping", task=failure.get_name(), error=repr(failure.exception()))
    else:
        log.info("stopping on signal")
    code = await _shutdown(pipeline, source, servers, tasks, failure)
    stopper.cancel()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
    return code


def _server(app: object, host_port: tuple[str, int]) -> uvicorn.Server:
    host, port = host_port
    return _QuietServer(uvicorn.Config(app, host=host, port=port, log_level="warning",  # type: ignore[arg-type]
                                       access_log=False, lifespan="off"))


async def _start_terminal_notices(
    settings: Settings, store: SqliteStore, engine: Engine, pipeline: Pipeline, *, source: GmqttSource,
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
    screens.restore(engine.open_incidents(), members, await store.load_terminal_notices(shown_only=True))
    glue = TerminalNotices(screens, source, prefix, submit, time.time,
                           on_published=metrics.terminal_notices.inc, on_acked=metrics.terminal_notices_acked.inc)
    pipeline.add_commit_listener(glue.on_commit)
    pipeline.add_sweep_listener(glue.on_sweep)


async def _shutdown(
    pipeline: Pipeline, source: GmqttSource, servers: list[uvicorn.Server],
    tasks: set[asyncio.Task[None]], failure: asyncio.Task[None] | None,
) -> int:
    await source.stop()
    pipeline.close(terminal_budget_s=SHUTDOWN_GRACE_S - 1.5)
    writer = next(t for t in tasks if t.get_name() == "writer")
    code = 0 if failure is None else 1
    if not writer.done():
        started = time.perf_counter()
        try:
            await asyncio.wait_for(writer, timeout=SHUTDOWN_GRACE_S)
            log.info("writer drained", seconds=round(time.perf_counter() - started, 3))
        except TimeoutError:
            log.error("writer did not drain in time")
            code = 1
        except StoreError as exc:
            log.error("final store write failed", error=str(exc))
            code = 1
    elif writer.exception() is not None:
        code = 1
    for server in servers:
        server.should_exit = True
    for task in tasks:
        if task is not writer and not task.done():
            task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    log.info("fleetwatch stopped", exit_code=code)
    return code
