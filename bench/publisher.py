"""Write a pre-encoded stream over several connections, as fast as allowed or at a set rate.

Flow control is the broker's PUBACKs: each connection keeps at most ``window`` QoS 1
messages unacknowledged (below 65535, so packet ids are never reused while in
flight), and asyncio's ``drain()`` applies TCP backpressure. ``expect_acks=False`` is
for the null sink, which swallows bytes and acknowledges nothing: that measures the
publisher alone.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from bench.stream import Lane, Stream
from fleetwatch.sim.client import WireClient


@dataclass(frozen=True)
class PublishResult:
    messages: int
    qos1: int
    bytes: int
    started: float
    written: float
    """Wall time when the last frame was handed to the socket."""
    acked: float
    """Wall time when the last QoS 1 PUBACK arrived (== written without acks)."""

    @property
    def write_rate(self) -> float:
        return self.messages / max(1e-9, self.written - self.started)

    @property
    def acked_rate(self) -> float:
        return self.messages / max(1e-9, self.acked - self.started)


async def _pump(client: WireClient, lane: Lane, *, t0: float, rate: float | None, window: int,
                expect_acks: bool) -> None:
    sent = 0
    for frames, q1, n in lane.chunks:
        if expect_acks and q1:
            await client.wait_outstanding(max(0, window - q1))
        client.write_raw(frames, q1 if expect_acks else 0)
        await client.drain()
        sent += n
        if rate:
            ahead = t0 + sent / rate - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)


async def connect_all(port: int, lanes: int, name: str = "bench-pub") -> list[WireClient]:
    clients = [WireClient("127.0.0.1", port, f"{name}-{i}", keepalive=0) for i in range(lanes)]
    await asyncio.gather(*(c.connect() for c in clients))
    return clients


async def publish(clients: list[WireClient], stream: Stream, *, rate: float | None = None, window: int = 20000,
                  expect_acks: bool = True, ack_timeout: float = 120.0) -> PublishResult:
    """Write every lane on its connection; ``rate`` is total messages per second (None: flat out)."""
    per_lane = None if rate is None else rate / len(stream.lanes)
    started = time.time()
    t0 = time.monotonic()
    await asyncio.gather(*(_pump(c, lane, t0=t0, rate=per_lane, window=window, expect_acks=expect_acks)
                           for c, lane in zip(clients, stream.lanes, strict=True)))
    written = time.time()
    if expect_acks:
        await asyncio.gather(*(c.wait_outstanding(0, ack_timeout) for c in clients))
    acked = time.time()
    return PublishResult(stream.messages, sum(lane.qos1 for lane in stream.lanes),
                         sum(lane.size for lane in stream.lanes), started, written, acked)
