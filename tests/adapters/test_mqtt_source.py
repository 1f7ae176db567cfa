"""The MQTT port's receiving side against a real Mosquitto: acknowledged only after commit,
one callback per batch, and what was not acknowledged redelivered on the next connection."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from fleetwatch.adapters.mqtt import MqttSource
from fleetwatch.config import MqttSettings
from tests.publish import Publisher
from tests.services import Broker

pytestmark = pytest.mark.broker


class Sink:
    """A MessageSink that hands every QoS 1 delivery the future of the current "batch"."""

    def __init__(self) -> None:
        self.got: list[tuple[str, bytes, int]] = []
        self.batch: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def __call__(self, topic: str, payload: bytes, qos: int, retained: bool) -> asyncio.Future[None] | None:
        self.got.append((topic, payload, qos))
        return self.batch if qos else None


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()


@contextlib.asynccontextmanager
async def running(source: MqttSource, sink: Sink) -> AsyncIterator[None]:
    task = asyncio.create_task(source.run(sink), name="mqtt-test")
    try:
        yield
    finally:
        await source.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(predicate: Callable[[], bool], within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - state changed by the client's callbacks
            await asyncio.sleep(0.02)


def settings(broker: Broker) -> MqttSettings:
    return MqttSettings(url=broker.url, client_id="src-1", topic_prefix="s1", receive_maximum=20)


async def session(broker: Broker, resolve: Callable[[asyncio.Future[None]], None] | None, n: int) -> Sink:
    """Connect the daemon's session, take ``n`` deliveries, settle their batch with ``resolve``."""
    source, sink = MqttSource(settings(broker)), Sink()
    async with running(source, sink):
        await until(lambda: len(sink.got) >= n)
        if resolve is not None:
            resolve(sink.batch)
        await asyncio.sleep(0.3)  # time for the PUBACKs to reach the broker (none if not resolved)
    return sink


async def test_qos1_is_acknowledged_only_after_its_batch_commits(own_broker: Broker) -> None:
    """Deliveries whose batch never completed, or failed, are redelivered (DUP) on the next
    connection; once the batch completes they are acknowledged and the broker forgets them."""
    first = MqttSource(settings(own_broker))
    async with running(first, Sink()):  # creates the persistent session and its subscriptions
        await until(lambda: first.connected)
    pub = Publisher(own_broker.url, "s1")
    try:
        for i in range(5):
            pub.send(f"term/T{i}/txn", f"txn {i}".encode(), wait=False)
        pub.flush()
    finally:
        pub.close()

    pending = await session(own_broker, None, 5)  # never committed
    assert sorted(p for _t, p, _q in pending.got) == [f"txn {i}".encode() for i in range(5)]

    failed = await session(own_broker, lambda f: f.set_exception(RuntimeError("store down")), 5)
    assert sorted(p for _t, p, _q in failed.got) == [f"txn {i}".encode() for i in range(5)]

    committed = await session(own_broker, lambda f: f.set_result(None), 5)
    assert len(committed.got) == 5

    after = MqttSource(settings(own_broker))
    sink = Sink()
    async with running(after, sink):
        await until(lambda: after.connected)
        await asyncio.sleep(0.5)
    assert sink.got == []  # all five acknowledged, in one callback's write


async def test_nothing_connects_before_run_is_called() -> None:
    """Building the source opens no connection (a standby never takes the shared session over);
    ``run()`` does, and sends CONNECT with our client id."""
    seen: list[bytes] = []
    arrived = asyncio.Event()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.read(64))
        arrived.set()
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        source = MqttSource(MqttSettings(url=f"mqtt://127.0.0.1:{port}", client_id="standby-1",
                                         topic_prefix="s2", reconnect_max_s=0.5))
        await asyncio.sleep(0.3)
        assert seen == []
        async with running(source, Sink()):
            await asyncio.wait_for(arrived.wait(), 5)
        assert seen[0][0] == 0x10  # CONNECT
        assert b"standby-1" in seen[0]
    finally:
        server.close()
        await server.wait_closed()
