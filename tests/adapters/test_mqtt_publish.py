"""The MQTT port's publishing side (terminal notices) against a real Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fleetwatch.adapters.mqtt import MqttSource, Outbox
from fleetwatch.config import MqttSettings
from tests.services import Broker

pytestmark = pytest.mark.broker


class Reader:
    """A paho subscriber that records (topic, payload, retain) of what it is given."""

    def __init__(self, port: int, topic: str) -> None:
        self.got: list[tuple[str, bytes, bool]] = []
        self.cond = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()

    def _on_message(self, _c: mqtt.Client, _u: object, m: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.got.append((m.topic, bytes(m.payload), bool(m.retain)))
            self.cond.notify_all()

    def wait(self, n: int, timeout: float = 10.0) -> list[tuple[str, bytes, bool]]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.got) >= n, timeout), self.got
            return list(self.got)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()


@contextlib.asynccontextmanager
async def running(source: MqttSource) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(source.run(lambda *_: None), name="mqtt-test")
    try:
        yield task
    finally:
        await source.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(predicate: Callable[[], bool], within: float = 10.0) -> None:
    """Poll a condition the broker's answers change (no event to wait on: they arrive in the client's callbacks)."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - state changed by another library's callbacks
            await asyncio.sleep(0.02)


async def test_publishes_retained_and_acknowledged(own_broker: Broker) -> None:
    """A published notice is retained by the broker (a later subscriber gets it) and on_acked runs."""
    source = MqttSource(MqttSettings(url=own_broker.url, client_id="pub-1", topic_prefix="p1"))
    acked: list[str] = []
    async with running(source):
        await until(lambda: source.connected)
        source.publish("p1/term/T1/notice", b'{"items":[]}', on_acked=lambda: acked.append("T1"))
        await until(lambda: acked == ["T1"])
        assert source.publish_backlog == 0
    reader = Reader(own_broker.port, "p1/term/+/notice")
    try:
        assert reader.wait(1) == [("p1/term/T1/notice", b'{"items":[]}', True)]
    finally:
        reader.close()


async def test_queued_while_the_broker_is_down_and_sent_after_the_reconnect(own_broker: Broker) -> None:
    """Publishes made while disconnected wait; only the newest per topic is sent once back."""
    source = MqttSource(MqttSettings(url=own_broker.url, client_id="pub-2", topic_prefix="p2",
                                      reconnect_max_s=0.5))
    acked: list[bytes] = []
    async with running(source):
        await until(lambda: source.connected)
        own_broker.stop()
        await until(lambda: not source.connected)
        for payload in (b"old", b"newer", b"newest"):
            source.publish("p2/term/T1/notice", payload, on_acked=lambda p=payload: acked.append(p))  # type: ignore[misc]
        source.publish("p2/term/T2/notice", b"t2", on_acked=lambda: acked.append(b"t2"))
        assert source.publish_backlog == 2
        own_broker.start()
        await until(lambda: len(acked) == 2, within=20)
        assert sorted(acked) == [b"newest", b"t2"]
    reader = Reader(own_broker.port, "p2/term/+/notice")
    try:
        assert sorted(reader.wait(2)) == [("p2/term/T1/notice", b"newest", True), ("p2/term/T2/notice", b"t2", True)]
    finally:
        reader.close()


def test_outbox_window_and_order() -> None:
    """At most ``limit`` in flight, one per topic; a newer payload waits for the older's ack and
    replaces one still queued. (What was in flight when a connection dropped is the client's to
    resend, DUP set: tests/mqtt5/test_client_broker.py.)"""
    box = Outbox(limit=2)
    box.put("a", b"a1", None)
    box.put("b", b"b1", None)
    box.put("c", b"c1", None)
    sent = box.sendable()
    assert [(t, p) for t, p, _ in sent] == [("a", b"a1"), ("b", b"b1")]
    box.sent(1, "a", b"a1", None)
    box.sent(2, "b", b"b1", None)
    box.put("a", b"a2", None)
    assert box.sendable() == []
    assert box.acked(1) is not None
    assert [(t, p) for t, p, _ in box.sendable()] == [("c", b"c1")]
    box.sent(3, "c", b"c1", None)
    box.put("c", b"c2", None)
    box.put("c", b"c3", None)
    assert sorted((t, p) for t, (p, _) in box.queued.items()) == [("a", b"a2"), ("c", b"c3")]
    assert len(box) == 4
    assert box.sendable() == []  # the window is full (b1 and c1 in flight)
    assert box.acked(3) is not None
    assert [(t, p) for t, p, _ in box.sendable()] == [("a", b"a2")]  # the window has room for one, a first
