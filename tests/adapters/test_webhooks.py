"""The delivery worker against a real HTTP receiver on loopback (CONTRACT §6).

The outbox is the in-memory store (the store contract suite holds SQLite and PostgreSQL to
the same answers); events are made by the real rules and glue from incident writes, so
the bodies are the ones a daemon sends.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from bench.receiver import Answer, Receiver, Request
from fleetwatch.adapters.catalogues import load_catalogues
from fleetwatch.adapters.webhooks import WebhookDelivery, verify
from fleetwatch.config import Settings
from fleetwatch.core.catalogue import Context
from fleetwatch.core.model import Effect, Incident, IncidentEvent, IncidentWrite
from fleetwatch.merchant_notifications import Notifications
from fleetwatch.testing import MemoryStore

SECRET = "s3cret-s3cret-s3cret"
NOW = time.time()


def settings(url: str, **notify: Any) -> Settings:
    hook = {"name": "sms", "url": url, "secret": SECRET, "lang": "en"}
    return Settings(detect={"heartbeat_interval_s": 1},
                    notify={"merchant_webhooks": [hook], "retry_initial_s": 0.05, "retry_max_s": 0.2,
                            "poll_s": 0.05, **notify})


def inc(iid: str, tid: str, at: float, **kw: Any) -> Incident:
    return Incident(id=iid, key=f"terminal|{tid}|printer", kind="printer", cause=kw.pop("cause", "no_paper"),
                    scope="terminal", severity="major", status=kw.pop("status", "open"), opened_at=at, updated_at=at,
                    summary="", terminal_id=tid, merchant_id="M1", **kw)


def w(i: Incident) -> IncidentWrite:
    return IncidentWrite(i, IncidentEvent(i.id, i.updated_at, "updated"))


async def outbox_with_events(s: Settings, incidents: int = 2) -> MemoryStore:
    """Each incident opened, changed cause and resolved, long ago: 3 events each, all due."""
    store = MemoryStore()
    notes = Notifications.from_settings(s, load_catalogues(), Context())
    assert notes is not None
    t = NOW - 3600
    for n in range(incidents):
        i = inc(f"I{n}", f"T{n}", t)
        steps = [i, replace(i, cause="jam", updated_at=t + 60),
                 replace(i, cause="jam", status="resolved", resolved_at=t + 120, updated_at=t + 120)]
        for step in steps:
            effects: list[Effect] = [w(step)]
            await store.write([*effects, *notes.derive(effects, step.updated_at)])
    return store


class Outcomes(Counter[tuple[str, str, str]]):
    def __call__(self, channel: str, event_type: str, outcome: str) -> None:
        self[(channel, event_type, outcome)] += 1


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(SECRET.encode()).start()
    yield r
    r.stop()


async def deliver_until(worker: WebhookDelivery, done: Any) -> None:
    """Run the worker until ``done()`` (polled: the receiver is in another thread), at most 15 s."""
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(15.0):
            while not await done():  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    finally:
        await worker.stop()
        await task


async def test_a_receiver_down_for_its_first_attempts_gets_every_event_once_in_order(receiver: Receiver) -> None:
    down_for = 3

    def flaky(_r: Request, attempt: int) -> Answer:
        return (503, {}) if attempt <= down_for else (200, {})

    receiver.policy = flaky
    s = settings(receiver.url)
    store = await outbox_with_events(s)
    outcomes = Outcomes()
    worker = WebhookDelivery(store, s.notify, on_outcome=outcomes, on_depth=lambda _: None)
    await deliver_until(worker, lambda: _none_pending(store))
    requests, log = receiver.snapshot()
    assert all(r.signature_ok for r in requests)
    events = [r.event for r in log]
    assert len(events) == 6
    assert len({e["event_id"] for e in events}) == 6
    for iid in ("I0", "I1"):
        mine = [e for e in events if e["item"]["incident_id"] == iid]
        assert [e["type"] for e in mine] == ["notice.opened", "notice.updated", "notice.resolved"]
        assert [e["item"]["cause"] for e in mine] == ["no_paper", "jam", "jam"]
    assert all(r.event_id == r.event["event_id"] for r in requests)  # the Idempotency-Key is the event_id
    assert Counter(r.event_id for r in requests) == {e["event_id"]: down_for + 1 for e in events}
    assert outcomes[("sms", "notice.opened", "sent")] == 2
    assert outcomes[("sms", "notice.opened", "retry")] == 2 * down_for
    [row] = (await store.list_notifications(status="sent", limit=1))[0]
    assert row.attempts == down_for + 1


async def _none_pending(store: MemoryStore) -> bool:
    return await store.count_pending_notifications() == 0


async def test_a_400_is_failed_at_once_and_the_notice_goes_on(receiver: Receiver) -> None:
    def refuse_opens(r: Request, _attempt: int) -> Answer:
        return (400, {}) if r.event["type"] == "notice.opened" else (200, {})

    receiver.policy = refuse_opens
    s = settings(receiver.url)
    store = await outbox_with_events(s, incidents=1)
    outcomes = Outcomes()
    worker = WebhookDelivery(store, s.notify, on_outcome=outcomes, on_depth=lambda _: None)
    await deliver_until(worker, lambda: _none_pending(store))
    requests, _ = receiver.snapshot()
    assert [r.event["type"] for r in requests] == ["notice.opened", "notice.updated", "notice.resolved"]
    [failed] = (await store.list_notifications(status="failed"))[0]
    assert (failed.type, failed.attempts, failed.last_error) == ("notice.opened", 1, "HTTP 400")
    assert outcomes[("sms", "notice.opened", "failed")] == 1


async def test_retry_after_is_honoured(receiver: Receiver) -> None:
    receiver.policy = lambda _r, attempt: (429, {"Retry-After": "30"}) if attempt == 1 else (200, {})
    s = settings(receiver.url)
    store = await outbox_with_events(s, incidents=1)
    worker = WebhookDelivery(store, s.notify, on_outcome=Outcomes(), on_depth=lambda _: None)

    async def tried() -> bool:
        return len(receiver.snapshot()[0]) >= 1 and (await store.due_notifications(NOW + 10**6, 10))[0].attempts == 1

    before = time.time()
    await deliver_until(worker, tried)
    [row] = await store.due_notifications(NOW + 10**6, 10)
    assert row.next_at >= before + 30
    assert row.last_error == "HTTP 429"


async def test_an_event_undelivered_past_the_horizon_is_failed(receiver: Receiver) -> None:
    receiver.policy = lambda _r, _a: (500, {})
    s = settings(receiver.url, give_up_after_s=1.0)
    store = await outbox_with_events(s, incidents=1)  # due an hour ago: past the horizon at once
    outcomes = Outcomes()
    worker = WebhookDelivery(store, s.notify, on_outcome=outcomes, on_depth=lambda _: None)
    await deliver_until(worker, lambda: _none_pending(store))
    failed = (await store.list_notifications(status="failed"))[0]
    assert len(failed) == 3
    assert all(r.last_error == "gave up: HTTP 500" for r in failed)
    assert outcomes[("sms", "notice.resolved", "failed")] == 1


async def test_a_receiver_that_refuses_connections_is_retried_like_a_5xx() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:  # a port nobody listens on once closed
        port = probe.getsockname()[1]
    cfg = settings(f"http://127.0.0.1:{port}/hook")
    store = await outbox_with_events(cfg, incidents=1)
    outcomes = Outcomes()
    worker = WebhookDelivery(store, cfg.notify, on_outcome=outcomes, on_depth=lambda _: None)

    async def retried_twice() -> bool:
        return (await store.due_notifications(NOW + 10**6, 10))[0].attempts >= 2

    await deliver_until(worker, retried_twice)
    [row] = await store.due_notifications(NOW + 10**6, 10)  # still pending: the open, the rest wait behind it
    assert row.type == "notice.opened"
    assert row.last_error is not None
    assert row.last_error.startswith(f"cannot connect to 127.0.0.1:{port}")
    assert outcomes[("sms", "notice.opened", "retry")] >= 2
    assert outcomes[("sms", "notice.opened", "failed")] == 0


async def test_a_stopped_worker_resumes_with_the_same_event_ids(receiver: Receiver) -> None:
    receiver.policy = lambda _r, _a: (503, {})
    s = settings(receiver.url)
    store = await outbox_with_events(s)
    first = WebhookDelivery(store, s.notify, on_outcome=Outcomes(), on_depth=lambda _: None)

    async def tried_all() -> bool:
        return len({r.event_id for r in receiver.snapshot()[0]}) == 2  # the two opens (the rest wait in order)

    await deliver_until(first, tried_all)
    receiver.policy = lambda _r, _a: (200, {})
    second = WebhookDelivery(store, s.notify, on_outcome=Outcomes(), on_depth=lambda _: None)
    await deliver_until(second, lambda: _none_pending(store))
    requests, log = receiver.snapshot()
    stored = {r.event_id for r in (await store.list_notifications(status="sent"))[0]}
    assert {r.event_id for r in requests} == stored == {r.event_id for r in log}
    assert len(log) == 6


def test_signature_helper() -> None:
    body = json.dumps({"a": 1}).encode()
    header = "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()
    assert verify(b"k", body, header)
    assert not verify(b"k", body + b" ", header)
