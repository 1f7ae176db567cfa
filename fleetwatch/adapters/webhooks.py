"""Delivers merchant notifications from the outbox to the receivers' webhooks (CONTRACT §6).

The rows were written by the pipeline in the transaction of the incident change behind
them (``fleetwatch/merchant_notifications.py``); this worker only reads what is due,
POSTs it, and records what happened, so a crash or restart at any point loses nothing:
a row is ``pending`` until a 2xx (or a final failure) is committed, and the next start
sends it again under the same ``event_id`` (the receiver's ``Idempotency-Key``).

- **One row per receiver and notice at a time**, oldest first (the store hands out only
  the oldest pending row of each), so a receiver sees a notice's events in order.
- **Outcomes** are the pure policy's (``core/delivery_policy.py``): 2xx ends it (``sent``);
  408, 429, 5xx and network errors are retried with exponential backoff and jitter, or
  after ``Retry-After`` when the receiver says so; any other status is final (``failed``,
  counted, logged once per receiver and status). An event still undelivered
  ``notify.give_up_after_s`` after it was due is ``failed``.
- **Signed**: ``X-Fleetwatch-Signature: sha256=<hex>`` is the HMAC-SHA256 of the exact body
  bytes with the receiver's secret.
- **Throughput**: ``notify.delivery_concurrency`` senders sharing one lean HTTP/1.1 client
  (``fleetwatch/http11.py``: a keep-alive connection per request in flight, reused per
  receiver); results are committed in small batches, not one transaction per event.

The worker is started and stopped as a unit (``run`` / ``stop``) by ``app.py``'s
background tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import random
import time
from collections.abc import Callable
from typing import Final

import structlog

from fleetwatch import __version__
from fleetwatch.config import NotifySettings
from fleetwatch.core.delivery_policy import RECEIVER_GONE, Backoff, Unreachable, decide
from fleetwatch.core.model import DeliveryResult, NotificationRecord
from fleetwatch.http11 import Client, TransportError
from fleetwatch.logs import RateLimitedLog
from fleetwatch.ports import NotificationOutbox
from fleetwatch.timefmt import rfc3339

log = structlog.get_logger("fleetwatch.webhooks")

FETCH_LIMIT: Final = 1000
RESULTS_PER_COMMIT: Final = 200
COMMIT_EVERY_S: Final = 0.05
STOP_GRACE_S: Final = 1.5
"""On stop, requests in flight get this long; one cut short stays pending and is sent again
(same event_id) by the next run."""
START_MARGIN_S: Final = 1.0
"""The worker sends a row only this long after it is due: until then the rules may still take
it back (``core/notify_events.py`` stops changing a row ``margin_s`` before it is due)."""

Outcome = Callable[[str, str, str], None]
"""(channel, event type, outcome ``sent`` | ``failed`` | ``retry``) -> None: the metrics."""


USER_AGENT: Final = f"fleetwatch/{__version__}".encode()
CONTENT_TYPE: Final = b"application/json; charset=utf-8"


def signature(secret: bytes, body: bytes) -> str:
    """The ``X-Fleetwatch-Signature`` value of ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def with_sent_at(body: str, sent_at: str) -> bytes:
    """The stored body (a JSON object without ``sent_at``) with ``sent_at`` as its last member."""
    return (body[:-1] + ',"sent_at":"' + sent_at + '"}').encode()


class WebhookDelivery:
    """The delivery worker: due rows in, POSTs out, results back to the store."""

    def __init__(
        self, outbox: NotificationOutbox, settings: NotifySettings, *, on_outcome: Outcome,
        on_depth: Callable[[int], None], clock: Callable[[], float] = time.time, rng: random.Random | None = None,
    ) -> None:
        self._outbox = outbox
        self._settings = settings
        self._targets: dict[str, tuple[str, float]] = {}
        self._secrets = {w.name: w.secret.get_secret_value().encode() for w in settings.merchant_webhooks}
        self._on_outcome = on_outcome
        self._on_depth = on_depth
        self._clock = clock
        self._rng = rng or random.Random()
        self._backoff = Backoff.of(settings)
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._in_hand: set[str] = set()
        """Event ids queued, in flight, or with a result not yet committed."""
        self._fetches = 0
        self._settled: dict[str, int] = {}
        """Event id -> fetches started before its result was committed: a fetch that started
        earlier may still return it as pending, and must not send it again."""
        self._results: list[DeliveryResult] = []
        self._results_ready = asyncio.Event()
        self._recording = True
        self._queue: asyncio.Queue[NotificationRecord] = asyncio.Queue()
        self._errors = RateLimitedLog(3600.0)

    def wake(self) -> None:
        """New rows were committed: look now rather than at the next poll."""
        self._wake.set()

    async def stop(self) -> None:
        """Finish the requests in flight, commit their results, and return from ``run``."""
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        """Until ``stop``: fetch what is due, deliver it, record the outcomes."""
        n = self._settings.delivery_concurrency
        async with Client(user_agent=USER_AGENT) as client:
            self._targets = {w.name: (w.url, w.timeout_s) for w in self._settings.merchant_webhooks}
            senders = [asyncio.create_task(self._sender(client), name=f"webhook-sender-{i}") for i in range(n)]
            recorder = asyncio.create_task(self._recorder(), name="webhook-recorder")
            try:
                await self._fetcher()
            finally:
                while not self._queue.empty():  # not started: they stay pending for the next run
                    self._in_hand.discard(self._queue.get_nowait().event_id)
                    self._queue.task_done()
                with contextlib.suppress(TimeoutError):  # requests in flight get a moment to finish
                    await asyncio.wait_for(self._queue.join(), timeout=STOP_GRACE_S)
                for task in senders:
                    task.cancel()
                await asyncio.gather(*senders, return_exceptions=True)
                self._recording = False  # a flag, not cancel(): wait_for may swallow a cancel (Python 3.11)
                self._results_ready.set()
                await recorder
                await self._commit_results()

    # ---- tasks -----------------------------------------------------------------------

    async def _fetcher(self) -> None:
        last_depth = 0.0
        while not self._stopping.is_set():
            now = self._clock()
            if self._queue.qsize() < FETCH_LIMIT // 4:
                gen = self._fetches
                self._fetches += 1
                rows = await self._outbox.due_notifications(now, FETCH_LIMIT, margin_s=START_MARGIN_S)
                settled = self._settled
                for row in rows:
                    eid = row.event_id
                    if eid in self._in_hand or settled.get(eid, -1) > gen:
                        continue  # in hand, or its result committed after this fetch's snapshot began
                    self._in_hand.add(eid)
                    self._queue.put_nowait(row)
                for eid in [e for e, at in settled.items() if at <= gen]:
                    del settled[eid]  # every later fetch sees its result
                if now - last_depth >= 1.0:
                    last_depth = now
                    self._on_depth(await self._outbox.count_pending_notifications())
                if len(rows) >= FETCH_LIMIT // 2:
                    await asyncio.sleep(0.01)
                    continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._settings.poll_s)
            self._wake.clear()

    async def _sender(self, client: Client) -> None:
        while True:
            row = await self._queue.get()
            try:
                try:
                    result = await self._attempt(client, row)
                except Exception as exc:  # a bug must not take a sender (and its row) out for good
                    if self._errors.should_log(f"bug:{type(exc).__name__}")[0]:
                        log.exception("webhook delivery failed unexpectedly; will retry", event_id=row.event_id)
                    wait = self._backoff.delay(row.attempts + 1, self._rng)
                    result = DeliveryResult(row.event_id, "pending", row.attempts + 1, self._clock() + wait,
                                            f"{type(exc).__name__}: {exc}"[:200], None)
                self._results.append(result)
                if len(self._results) >= RESULTS_PER_COMMIT:
                    self._results_ready.set()
            finally:
                self._queue.task_done()

    async def _recorder(self) -> None:
        while self._recording:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._results_ready.wait(), timeout=COMMIT_EVERY_S)
            self._results_ready.clear()
            await self._commit_results()

    async def _commit_results(self) -> None:
        if not self._results:
            return
        results, self._results = self._results, []
        await self._outbox.record_deliveries(results)  # a store failure stops the daemon (exit 3)
        for r in results:
            self._in_hand.discard(r.event_id)
            self._settled[r.event_id] = self._fetches
        if any(r.status != "pending" for r in results):
            self._wake.set()  # the next event of those notices may be due now

    # ---- one attempt -----------------------------------------------------------------

    async def _attempt(self, client: Client, row: NotificationRecord) -> DeliveryResult:
        target = self._targets.get(row.receiver)
        attempts = row.attempts + 1
        now = self._clock()
        if target is None:
            return self._final(row, attempts, now, "failed", RECEIVER_GONE)
        url, timeout = target
        body = with_sent_at(row.body, rfc3339(now) or "")
        headers = [(b"Content-Type", CONTENT_TYPE), (b"Idempotency-Key", row.event_id.encode()),
                   (b"X-Fleetwatch-Event", row.type.encode()),
                   (b"X-Fleetwatch-Signature", signature(self._secrets[row.receiver], body).encode())]
        answer: int | Unreachable
        retry_after: str | None = None
        try:
            response = await client.post(url, headers, body, timeout)
        except TransportError as exc:
            answer = Unreachable(str(exc))
        else:
            answer, retry_after = response.status, response.header(b"retry-after")
        decision = decide(answer, retry_after, attempts=attempts, due_at=row.due_at, now=self._clock(),
                          settings=self._settings, rng=self._rng)
        if decision.outcome == "retry":
            self._on_outcome(row.receiver, row.type, "retry")
            return DeliveryResult(row.event_id, "pending", attempts, decision.next_at, decision.error, None)
        if decision.gave_up:
            if self._errors.should_log(f"{row.receiver}:give-up")[0]:
                log.warning("webhook event given up", receiver=row.receiver, event_id=row.event_id,
                            attempts=attempts, last_error=decision.error)
        elif decision.outcome == "failed" and self._errors.should_log(f"{row.receiver}:{answer}")[0]:
            log.warning("webhook refused an event; not retried", receiver=row.receiver, status=answer,
                        event_id=row.event_id)
        return self._final(row, attempts, decision.next_at, decision.outcome, decision.error)

    def _final(self, row: NotificationRecord, attempts: int, now: float, status: str,
               error: str | None) -> DeliveryResult:
        self._on_outcome(row.receiver, row.type, status)
        return DeliveryResult(row.event_id, status, attempts, now, error, now if status == "sent" else None)


def verify(secret: bytes, body: bytes, header: str | None) -> bool:
    """What a receiver does with ``X-Fleetwatch-Signature`` (tests and docs use this)."""
    return header is not None and hmac.compare_digest(signature(secret, body), header)

