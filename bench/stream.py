"""Pre-encoded benchmark streams: the contract's message mix as ready-to-write MQTT frames.

Encoding happens before the clock starts, so during the measured window the publisher
only hands ``bytes`` to the socket and cannot be the bottleneck. Payloads come from
the simulator's own generators (realistic JSON, unique ``txn_id`` per terminal), so
the daemon decodes what it would decode in the field.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

from fleetwatch.sim import business, fleet, wire
from fleetwatch.sim.fleet import Terminal, Topics

CHUNK = 256
"""Messages per write: big enough to amortise the event loop, small enough to pace."""


@dataclass
class Lane:
    """One connection's share of a stream: chunks of frames, each with its QoS 1 count."""

    chunks: list[tuple[bytes, int, int]] = field(default_factory=list)
    """(frames, QoS 1 messages in them, messages in them)"""

    @property
    def messages(self) -> int:
        return sum(c[2] for c in self.chunks)

    @property
    def qos1(self) -> int:
        return sum(c[1] for c in self.chunks)

    @property
    def size(self) -> int:
        return sum(len(c[0]) for c in self.chunks)


@dataclass
class Stream:
    """A whole stream split over connections, with what a receiver should count."""

    lanes: list[Lane]
    heartbeats: int = 0
    txns: int = 0
    txn_ids: dict[str, int] = field(default_factory=dict)
    """terminal_id -> txns published for it (zero-loss check per terminal)."""
    closing: bytes = b""
    """One QoS 1 PUBLISH (packet id 1) of a tamper heartbeat, written after the stream: its
    incident visible in the API marks the end of an end-to-end measurement."""
    closing_terminal: str = ""

    @property
    def messages(self) -> int:
        return self.heartbeats + self.txns


def make_terminals(n: int, seed: int = 7) -> list[Terminal]:
    """A healthy fleet of ``n`` terminals in ``n / 4`` merchants."""
    rng = random.Random(seed)
    return fleet.build_terminals(n, max(1, n // 4), rng, int(time.time() * 1000))


class _Lanes:
    def __init__(self, connections: int, version: int) -> None:
        self.lanes = [Lane() for _ in range(connections)]
        self.buf: list[bytearray] = [bytearray() for _ in range(connections)]
        self.counts = [[0, 0] for _ in range(connections)]
        self.ids = [0] * connections
        self.version = version

    def add(self, lane: int, topic: str, payload: bytes, qos: int) -> None:
        pid = 0
        if qos:
            self.ids[lane] = self.ids[lane] % 0xFFFF + 1
            pid = self.ids[lane]
        self.buf[lane] += wire.publish(topic, payload, qos=qos, packet_id=pid, version=self.version)
        c = self.counts[lane]
        c[0] += 1
        c[1] += qos
        if c[0] >= CHUNK:
            self.cut(lane)

    def cut(self, lane: int) -> None:
        n, q = self.counts[lane]
        if n:
            self.lanes[lane].chunks.append((bytes(self.buf[lane]), q, n))
            self.buf[lane] = bytearray()
            self.counts[lane] = [0, 0]

    def done(self) -> list[Lane]:
        for i in range(len(self.lanes)):
            self.cut(i)
        return self.lanes


def mix(terminals: list[Terminal], messages: int, *, prefix: str = "fleet/v1", txn_share: float = 0.1,
        heartbeat_qos: int = 0, connections: int = 4, seed: int = 7, version: int = wire.MQTT311) -> Stream:
    """``messages`` messages: heartbeats round-robin over the fleet, every 10th a QoS 1 txn.

    A terminal always uses the same connection, so its own messages stay in order.
    """
    rng = random.Random(seed)
    topics = Topics(prefix)
    lanes = _Lanes(connections, version)
    stream = Stream([])
    every = round(1 / txn_share) if txn_share > 0 else 0
    n = len(terminals)
    hb_i = tx_i = 0
    now = int(time.time() * 1000)
    for i in range(messages):
        if every and i % every == every - 1:
            t = terminals[(tx_i * 7919) % n]
            tx_i += 1
            out = business.txn(t, now, rng, topics)
            stream.txns += 1
            stream.txn_ids[t.terminal_id] = stream.txn_ids.get(t.terminal_id, 0) + 1
        else:
            t = terminals[hb_i % n]
            hb_i += 1
            out = fleet.heartbeat(t, now, rng, topics)
            stream.heartbeats += 1
        lanes.add(t.index % connections, out.topic, out.payload, heartbeat_qos if out.kind == "heartbeat" else 1)
    stream.lanes = lanes.done()
    closer = terminals[0]
    closer.tamper = True
    out = fleet.heartbeat(closer, now, rng, topics)
    closer.tamper = False
    stream.closing = wire.publish(out.topic, out.payload, qos=1, packet_id=1, version=version)
    stream.closing_terminal = closer.terminal_id
    return stream


def one_heartbeat_each(terminals: list[Terminal], *, prefix: str = "fleet/v1", connections: int = 4,
                       qos: int = 0) -> Stream:
    """One heartbeat per terminal: loads a fleet of any size into a daemon."""
    rng = random.Random(11)
    topics = Topics(prefix)
    lanes = _Lanes(connections, wire.MQTT311)
    now = int(time.time() * 1000)
    for t in terminals:
        out = fleet.heartbeat(t, now, rng, topics)
        lanes.add(t.index % connections, out.topic, out.payload, qos)
    return Stream(lanes.done(), heartbeats=len(terminals))
