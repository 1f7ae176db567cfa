"""Composition root: open the adapters, restore the engine, run, and shut down in order.

Shutdown order (SIGTERM/SIGINT): stop MQTT intake first (nothing new arrives), let the
writer commit what is in hand (its QoS 1 acknowledgements go out if the connection is
still there; otherwise the broker redelivers and the engine drops the duplicates), stop
HTTP, close the store, exit 0. A store failure is unrecoverable: exit 1 and let the
supervisor restart us; nothing acknowledged was lost because PUBACK waits for commit.

The store backend is chosen here, and only here, by the scheme of ``store.url``
(``sqlite:///`` or ``postgresql://``/``postgres://``); everything else sees the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import time
from collections.abc import Generator
from pathlib import Path

import structlog
import uvicorn

from fleetwatch.adapters.http import build_app
from fleetwatch.adapters.metrics import Metrics
from fleetwatch.adapters.mqtt import GmqttSource
from fleetwatch.adapters.notify import AlertmanagerNotifier
from fleetwatch.adapters.postgres import PostgresStore
from fleetwatch.adapters.sqlite import SqliteStore
from fleetwatch.config import Settings, StoreSettings, effective_settings
from fleetwatch.core.engine import Engine
from fleetwatch.core.model import Effect, Incident
from fleetwatch.errors import StoreError
from fleetwatch.pipeline import Pipeline
from fleetwatch.ports import Store
from fleetwatch.storage.restore import feed_in_thread
from fleetwatch.storage.retention import RetentionJob, retention_seconds

log = structlog.get_logger("fleetwatch.app")

SHUTDOWN_GRACE_S = 4.0
RECENT_TXN_KEYS = 200_000


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the daemon owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def api_token(settings: Settings) -> str:
    """The configured token, or a generated one written (0600) where the operator can read it."""
    configured = settings.http.api_token.get_secret_value()
    if configured:
        return configured
    beside = Path(settings.store.sqlite_path).parent if settings.store.backend == "sqlite" else Path()
    path = Path(settings.http.token_file or beside / "api-token")
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    log.warning("no http.api_token configured: generated one", token_file=str(path))
    return token


async def open_store(settings: StoreSettings) -> Store:
    """The backend ``store.url`` names, opened and migrated (StoreError if it cannot be)."""
    if settings.backend == "postgresql":
        return await PostgresStore.open(settings.url, dead_letters_kept=settings.dead_letters_kept)
    return await SqliteStore.open(settings.sqlite_path, dead_letters_kept=settings.dead_letters_kept)


async def run_daemon(settings: Settings) -> int:
    """Run until a signal (exit 0) or an unrecoverable store error (exit 1)."""
    log.info("fleetwatch starting", settings=effective_settings(settings))
    started = time.perf_counter()
    try:
        store = await open_store(settings.store)
    except StoreError as exc:
        log.error("cannot open the store", error=str(exc))
        return 1
    try:
        return await _run_with_store(settings, store, started)
    except StoreError as exc:
        log.error("store failed", error=str(exc))
        return 1
    finally:
        with contextlib.suppress(Exception):
            await store.close()


async def restore_engine(engine: Engine, store: Store, now: float) -> list[Incident]:
    """Rebuild the engine from the store; returns the open incidents (the notifier wants them)."""
    open_incidents = await store.load_open_incidents()
    batches = await store.load_open_batches()
    txn_keys = await store.load_recent_txn_keys(RECENT_TXN_KEYS)
    await feed_in_thread(
        lambda terminals: engine.restore(terminals, open_incidents, batches, txn_keys, now),
        store.terminal_chunks(),
    )
    return open_incidents


async def _run_with_store(settings: Settings, store: Store, started: float) -> int:
    engine = Engine(settings.detect, settings.settlement)
    open_incidents = await restore_engine(engine, store, time.time())
    log.info("state restored", store=store.location, seconds=round(time.perf_counter() - started, 3))
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

    app = build_app(
        token=api_token(settings), exposition=metrics.exposition, reads=store, decisions=engine, commit=commit,
        ready=lambda: source.connected, clock=time.time,
    )
    host, port = settings.http.host_port
    server = _QuietServer(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                         lifespan="off"))
    notifier = AlertmanagerNotifier(settings.notify, open_incidents) if settings.notify.alertmanager_url else None
    if notifier is not None:
        pipeline.add_commit_listener(notifier.on_commit)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    retention = RetentionJob(
        store, retention_seconds(settings.store.retain_days, settings.detect.day_s), clock=time.time,
        every_s=settings.store.retention_every_s, chunk=settings.store.retention_chunk,
        on_deleted=lambda table, n: metrics.store_rows_deleted.labels(table=table).inc(n),
        on_size=metrics.store_size.set,
    )

    tasks = {
        asyncio.create_task(pipeline.run_writer(), name="writer"),
        asyncio.create_task(pipeline.run_sweeper(), name="sweeper"),
        asyncio.create_task(retention.run(), name="retention"),
        asyncio.create_task(source.run(pipeline.on_message), name="mqtt"),
        asyncio.create_task(server.serve(), name="http"),
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
    code = await _shutdown(pipeline, source, server, tasks, failure)
    stopper.cancel()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
    return code


async def _shutdown(
    pipeline: Pipeline, source: GmqttSource, server: uvicorn.Server,
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
    server.should_exit = True
    for task in tasks:
        if task is not writer and not task.done():
            task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    log.info("fleetwatch stopped", exit_code=code)
    return code
