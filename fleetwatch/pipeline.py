"""The one way a message goes: decode -> engine -> batched store write -> acknowledgement.

The pipeline is the only place that sees both the pure core and the adapters. It is
fed synchronously by the message source (no task per message), collects the engine's
effects, and a single writer task commits them in one transaction per batch. QoS 1
deliveries are acknowledged from the future of the batch that holds them, so nothing
acknowledged can be lost; a failed commit is never acknowledged and stops the daemon.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import structlog

from fleetwatch.adapters.metrics import Metrics
from fleetwatch.config import Settings
from fleetwatch.core.decode import Decoder, Rejection
from fleetwatch.core.messages import Envelope
from fleetwatch.core.model import MESSAGE_TYPES, BatchRecord, Effect, IncidentWrite, TerminalRecord, TerminalWrite
from fleetwatch.core.snapshot import FleetSnapshot
from fleetwatch.logs import RateLimitedLog
from fleetwatch.ports import StoreWriter

log = structlog.get_logger("fleetwatch.pipeline")

CommitListener = Callable[[Sequence[Effect]], None]
SweepListener = Callable[[float], None]
Derive = Callable[[Sequence[Effect], float], list[Effect]]
"""Effects -> more effects for the same transaction (see ``Pipeline.derive_with``)."""

TERMINALS_PER_WRITE = 1_000
"""Terminal rows per store transaction (about 13 ms of SQLite work here when idle): small
enough that the QoS 1 acknowledgements and incidents sharing the transaction are not held
back, since the broker's inflight window divided by the commit time bounds QoS 1
throughput. 1,000 rather than 5,000 shortened the end of ``python -m bench ingest`` (the
closing incident waits for the write in progress): 100.8k vs 96.5k msg/s, four rounds
each alternated in one run (docs/PERFORMANCE.md)."""


class Decider(Protocol):
    """What the pipeline needs of the engine (core/engine.py's Engine)."""

    def apply(self, env: Envelope) -> list[Effect]: ...
    def tick(self, now: float) -> list[Effect]: ...
    def behind(self, now: float) -> bool: ...
    def connection_changed(self, connected: bool, now: float) -> None: ...
    def take_dirty_terminals(self) -> list[TerminalRecord]: ...
    def take_dirty_batches(self) -> list[BatchRecord]: ...
    def snapshot(self, now: float) -> FleetSnapshot: ...


class Pipeline:
    """Decodes, decides and persists; owns the pending batch and its commit future."""

    def __init__(
        self,
        settings: Settings,
        engine: Decider,
        store: StoreWriter,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._store = store
        self._metrics = metrics
        self._clock = clock
        self._decoder = Decoder(settings.mqtt.topic_prefix)
        self._reject_log = RateLimitedLog(settings.log.reject_log_interval_s)
        self._error_log = RateLimitedLog(settings.log.reject_log_interval_s)
        self._pending: list[Effect] = []
        self._future: asyncio.Future[None] | None = None
        self._oldest_pending: float | None = None
        self._wake = asyncio.Event()
        self._closing = False
        self._drain_deadline = float("inf")
        self._last_terminal_flush = 0.0
        self._terminal_backlog: list[TerminalRecord] = []
        self._operator_terminals: set[str] = set()
        """Terminals whose row an operator action writes in the next flush (TerminalWrite)."""
        self._last_snapshot = 0.0
        self._listeners: list[CommitListener] = []
        self._sweep_listeners: list[SweepListener] = []
        self._derive: Derive | None = None
        metrics.ingest_lag.set_function(self._lag)
        # Accepted messages are counted in plain integers (one dict update per message) and
        # handed to Prometheus before each scrape: a child counter's increment takes a lock.
        self._received = {kind: metrics.received.labels(type=kind) for kind in MESSAGE_TYPES}
        self._received_n = dict.fromkeys(MESSAGE_TYPES, 0)
        self._received_told = dict.fromkeys(MESSAGE_TYPES, 0)
        metrics.before_scrape(self.publish_counts)

    # ---- intake (synchronous, event loop thread) -----------------------------------

    def on_message(self, topic: str, payload: bytes, qos: int, retained: bool) -> asyncio.Future[None] | None:
        """MessageSink: decide now, persist in the next batch; QoS 1 waits for that commit."""
        if self._closing:
            # Intake has stopped: frames the MQTT library still had buffered are refused, and a
            # refused QoS 1 delivery is never acknowledged, so the broker hands it over again.
            return None if qos == 0 else self._refused()
        now = self._clock()
        decoded = self._decoder.decode(topic, payload, now, retained)
        if isinstance(decoded, Rejection):
            self._reject(decoded, now)
        else:
            self._received_n[decoded.kind] += 1
            try:
                self._add(self._engine.apply(decoded), now)
            except Exception:
                self._metrics.processing_errors.inc()
                if self._error_log.should_log(decoded.kind)[0]:
                    log.exception("processing a message failed", topic=topic, kind=decoded.kind)
        if qos == 0:
            return None
        self._mark_pending(now)
        return self._batch_future()

    def publish_counts(self) -> None:
        """Hand the message counts kept since the last call to the Prometheus counters."""
        told = self._received_told
        for kind, n in self._received_n.items():
            if n != told[kind]:
                self._received[kind].inc(n - told[kind])
                told[kind] = n

    def submit(self, effects: Sequence[Effect]) -> asyncio.Future[None]:
        """Queue effects decided outside the message flow (API actions); the future is their commit."""
        self._operator_terminals.update(e.record.terminal_id for e in effects if isinstance(e, TerminalWrite))
        now = self._clock()
        self._add(effects, now)
        self._mark_pending(now)
        return self._batch_future()

    def connection_changed(self, connected: bool) -> None:
        """The broker subscription came up or went down (operating hours learn only watched time)."""
        self._engine.connection_changed(connected, self._clock())

    def add_commit_listener(self, listener: CommitListener) -> None:
        """Called with each committed batch's effects (notifications, metrics)."""
        self._listeners.append(listener)

    def derive_with(self, derive: Derive) -> None:
        """Effects derived from each batch before it is written, committed in its transaction
        (the merchant notifications' outbox rows: an event commits with its incident change)."""
        self._derive = derive

    def add_sweep_listener(self, listener: SweepListener) -> None:
        """Called on every sweep, after the engine's tick (terminal notices are published then)."""
        self._sweep_listeners.append(listener)

    def _reject(self, rejection: Rejection, now: float) -> None:
        self._metrics.rejected.labels(reason=rejection.reason).inc()
        should, suppressed = self._reject_log.should_log(rejection.reason)
        if should:
            # The payload is never logged; for `pan` the decoder's detail holds no digits.
            log.warning(
                "message rejected", reason=rejection.reason, topic=rejection.topic,
                detail=rejection.detail, suppressed_since_last=suppressed,
            )
        if self._settings.store.dead_letters_kept:
            self._add([rejection.dead_letter(now)], now)

    def _add(self, effects: Sequence[Effect], now: float) -> None:
        if effects:
            self._pending.extend(effects)
            self._mark_pending(now)

    def _mark_pending(self, now: float) -> None:
        if self._oldest_pending is None:
            self._oldest_pending = now
        self._wake.set()

    def _batch_future(self) -> asyncio.Future[None]:
        if self._future is None:
            self._future = asyncio.get_running_loop().create_future()
        return self._future

    @staticmethod
    def _refused() -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.cancel()
        return future

    def _lag(self) -> float:
        oldest = self._oldest_pending
        return 0.0 if oldest is None else max(0.0, self._clock() - oldest)

    # ---- the writer task -------------------------------------------------------------

    async def run_writer(self) -> None:
        """Commit pending effects every flush interval; on close, drain and return."""
        flush_s = self._settings.store.flush_interval_ms / 1000
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._closing:
                await asyncio.sleep(flush_s)
            await self.flush()
            if self._closing and not self._pending and self._future is None:
                if not self._terminal_backlog:
                    return
                if time.monotonic() >= self._drain_deadline:
                    # Terminal rows are derived state (the next heartbeat restores them);
                    # every acknowledged message's own records are already committed.
                    log.warning("exiting before all terminal state was written",
                                terminals_not_written=len(self._terminal_backlog))
                    self._terminal_backlog.clear()
                    return

    async def flush(self) -> None:
        """One store transaction with everything pending, then release its acknowledgements."""
        effects, future = self._pending, self._future
        self._pending, self._future, self._oldest_pending = [], None, None
        now = self._clock()
        if self._closing or now - self._last_terminal_flush >= self._settings.store.terminal_flush_s:
            self._terminal_backlog.extend(self._engine.take_dirty_terminals())
            self._last_terminal_flush = now
        written_now, self._operator_terminals = self._operator_terminals, set()
        if written_now and self._terminal_backlog:
            # Rows waiting in the backlog are older than an operator's TerminalWrite: written
            # after it, they would undo it.
            self._terminal_backlog = [t for t in self._terminal_backlog if t.terminal_id not in written_now]
        # Bounded: a write of a few thousand terminal rows keeps the QoS 1 acks of its batch
        # prompt; the rest waits for the next flush (oldest first, so a newer copy of the same
        # terminal, taken later, is always written after an older one).
        terminals = self._terminal_backlog[:TERMINALS_PER_WRITE]
        del self._terminal_backlog[:TERMINALS_PER_WRITE]
        self._metrics.store_queue.set(len(self._terminal_backlog))
        if self._terminal_backlog:
            self._wake.set()
        batches = self._engine.take_dirty_batches()
        if effects and self._derive is not None:
            effects = [*effects, *self._derived(effects, now)]
        if not (effects or terminals or batches):
            if future is not None:
                future.set_result(None)
            return
        started = time.perf_counter()
        try:
            await self._store.write(effects, terminals, batches)
        except BaseException as exc:
            if future is not None and not future.done():
                future.set_exception(exc)
                future.exception()  # mark retrieved: the writer task re-raises it
            raise
        self._metrics.store_write.observe(time.perf_counter() - started)
        if future is not None:
            future.set_result(None)
        self._after_commit(effects)

    def _derived(self, effects: Sequence[Effect], now: float) -> list[Effect]:
        assert self._derive is not None
        try:
            return self._derive(effects, now)
        except Exception:
            # A bug in a derived feature must not stop intake: counted, logged (rate-limited).
            self._metrics.processing_errors.inc()
            if self._error_log.should_log("derive")[0]:
                log.exception("deriving effects failed")
            return []

    def _after_commit(self, effects: Sequence[Effect]) -> None:
        now = self._clock()
        for effect in effects:
            if isinstance(effect, IncidentWrite):
                self._count_incident(effect, now)
        for listener in self._listeners:
            try:
                listener(effects)
            except Exception:
                log.exception("commit listener failed")

    def _count_incident(self, write: IncidentWrite, now: float) -> None:
        incident, event = write.incident, write.event
        if event.type in ("opened", "reopened", "resolved", "escalated", "cause_changed"):
            # Suppressed children of an outage would be thousands of lines saying one thing.
            emit = log.debug if incident.suppressed else log.info
            emit(f"incident {event.type}", incident_id=incident.id, kind=incident.kind, cause=incident.cause,
                 severity=incident.severity, scope=incident.scope, terminal_id=incident.terminal_id,
                 merchant_id=incident.merchant_id, parent_id=incident.parent_id)
        if event.type in ("opened", "reopened"):
            self._metrics.opened.labels(kind=incident.kind, scope=incident.scope).inc()
            if write.detected_from is not None:
                self._metrics.detection_latency.labels(kind=incident.kind).observe(
                    max(0.0, now - write.detected_from)
                )
        elif event.type == "resolved":
            self._metrics.resolved.labels(kind=incident.kind, scope=incident.scope).inc()
            self._metrics.incident_duration.labels(kind=incident.kind).observe(
                max(0.0, event.at - incident.opened_at)
            )

    # ---- the sweeper task ------------------------------------------------------------

    async def run_sweeper(self) -> None:
        """Let time pass in the engine: silence, deadlines, hysteresis, windows."""
        period = self._settings.detect.intervals(self._settings.detect.sweep_intervals)
        while not self._closing:
            await asyncio.sleep(period)
            await self.sweep_until_current()

    async def sweep_until_current(self) -> None:
        """One sweep, then more at once while the engine is behind (a tick stops at its budget
        of silence checks, so a million deadlines falling together do not stall the loop)."""
        self.sweep()
        while not self._closing and self._engine.behind(self._clock()):
            await asyncio.sleep(0)  # intake and the API run between the rounds
            self.sweep()

    def sweep(self) -> None:
        now = self._clock()
        try:
            self._add(self._engine.tick(now), now)
        except Exception:
            self._metrics.processing_errors.inc()
            if self._error_log.should_log("tick")[0]:
                log.exception("engine tick failed")
        for listener in self._sweep_listeners:
            try:
                listener(now)
            except Exception:
                self._metrics.processing_errors.inc()
                if self._error_log.should_log("sweep-listener")[0]:
                    log.exception("sweep listener failed")
        if now - self._last_snapshot >= 1.0:
            self.refresh_snapshot(now)
        # Even without traffic, coalesced terminal rows must reach the store.
        self._wake.set()

    def refresh_snapshot(self, now: float) -> None:
        """Swap in a fresh immutable snapshot for the metrics collector."""
        self._last_snapshot = now
        self._metrics.snapshot = self._engine.snapshot(now)
        self._metrics.store_queue.set(len(self._pending) + len(self._terminal_backlog))

    # ---- shutdown --------------------------------------------------------------------

    def close(self, terminal_budget_s: float = 3.0) -> None:
        """Stop taking messages; the writer commits every pending effect and returns.

        Coalesced terminal rows are written for at most ``terminal_budget_s`` more, so
        a stop stays within the supervisor's grace period even after a flood of new
        terminals.
        """
        self._closing = True
        self._drain_deadline = time.monotonic() + terminal_budget_s
        self._wake.set()
        log.info("draining", effects=len(self._pending), terminals_waiting=len(self._terminal_backlog))
