"""MQTT connections of the simulated fleet: one per terminal, or a few shared ones.

For a small fleet every terminal has its own connection with a retained QoS 1 Last
Will saying ``offline``, so a simulated link drop is a real unclean disconnect and
the *broker* publishes the Will, exactly the path a daemon meets in the field. A
large fleet (thousands) cannot afford that many sockets on one machine, so a few
shared connections publish on behalf of many terminals, and a dropped link is played
by publishing the retained ``offline`` State the broker would have published.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from urllib.parse import unquote, urlsplit

from fleetwatch.sim import fleet, wire
from fleetwatch.sim.client import ClientError, WireClient
from fleetwatch.sim.fleet import Outgoing, Terminal, Topics

PER_TERMINAL_MAX = 500
"""Above this many terminals ``auto`` mode shares connections (sockets are not free)."""


def parse_url(url: str) -> tuple[str, int, str | None, str | None]:
    """``mqtt://[user:pass@]host[:port]`` -> (host, port, user, password)."""
    parts = urlsplit(url)
    if parts.scheme != "mqtt":
        raise ValueError(f"only mqtt:// URLs are supported by the simulator, not {url!r}")
    return (parts.hostname or "127.0.0.1", parts.port or 1883,
            unquote(parts.username) if parts.username else None,
            unquote(parts.password) if parts.password else None)


def _now_ms() -> int:
    return int(time.time() * 1000)


class FleetPublisher:
    """Owns the fleet's connections and routes each message to its sender's connection."""

    def __init__(self, url: str, topics: Topics, terminals: list[Terminal], *, per_terminal: bool,
                 shared: int = 4, keepalive: int = 60, client_prefix: str = "sim") -> None:
        self.host, self.port, self.user, self.password = parse_url(url)
        self.topics, self.terminals = topics, terminals
        self.per_terminal = per_terminal
        self.keepalive = keepalive
        self.prefix = client_prefix
        self.shared: list[WireClient] = [self._client(f"{client_prefix}-shared-{k}", None)
                                         for k in range(max(1, shared))]
        self.own: dict[int, WireClient] = {}
        self.sent = 0
        self.dropped = 0
        """Messages not sent because the sender's link was down (the terminal was offline)."""

    def _client(self, client_id: str, will: wire.Will | None) -> WireClient:
        return WireClient(self.host, self.port, client_id, keepalive=self.keepalive, will=will,
                          username=self.user, password=self.password)

    def _will(self, t: Terminal) -> wire.Will:
        # A Last Will's ts is the time the terminal connected: it is written then.
        return wire.Will(self.topics.term(t.terminal_id, "state"),
                         fleet.state(t, "offline", _now_ms(), self.topics).payload, qos=1, retain=True)

    async def start(self) -> None:
        """Connect everything and publish each terminal's retained ``online`` birth."""
        await asyncio.gather(*(c.connect() for c in self.shared))
        if self.per_terminal:
            gate = asyncio.Semaphore(64)

            async def one(t: Terminal) -> None:
                async with gate:
                    await self._connect_own(t)

            await asyncio.gather(*(one(t) for t in self.terminals))
        else:
            for t in self.terminals:
                self.send(fleet.state(t, "online", _now_ms(), self.topics))

    async def _connect_own(self, t: Terminal) -> None:
        client = self._client(f"{self.prefix}-{t.terminal_id}", self._will(t))
        await client.connect()
        self.own[t.index] = client
        self.send(fleet.state(t, "online", _now_ms(), self.topics))

    def _conn(self, terminal: int | None) -> WireClient | None:
        if terminal is None:
            return self.shared[0]
        if self.per_terminal:
            return self.own.get(terminal)
        return self.shared[terminal % len(self.shared)]

    def send(self, out: Outgoing) -> bool:
        """Publish one message; False when the sender's connection is down."""
        conn = self._conn(out.terminal)
        if conn is None or not conn.connected:
            self.dropped += 1
            return False
        conn.publish(out.topic, out.payload, qos=out.qos, retain=out.retain)
        self.sent += 1
        return True

    def link_down(self, t: Terminal) -> None:
        """Drop the terminal's link uncleanly; the broker (or we, on its behalf) says ``offline``."""
        if self.per_terminal:
            conn = self.own.pop(t.index, None)
            if conn is not None:
                conn.abort()
        else:
            self.send(fleet.state(t, "offline", t.boot_ms, self.topics))

    def stop_pinging(self, t: Terminal) -> None:
        """Let the keepalive lapse: the broker fires the Will after 1.5 keepalives."""
        conn = self.own.get(t.index) if self.per_terminal else None
        if conn is not None:
            conn.pinging = False

    async def link_up(self, t: Terminal) -> None:
        """Bring the link back: reconnect (new session, new Will) and publish ``online`` again."""
        if self.per_terminal:
            old = self.own.get(t.index)
            if old is not None and old.connected:
                old.pinging = True  # a silent device woke up before the broker gave up on it
                return
            self.own.pop(t.index, None)
            await self._connect_own(t)
        else:
            self.send(fleet.state(t, "online", _now_ms(), self.topics))

    async def reboot(self, t: Terminal) -> None:
        """A clean power cycle: ``shutdown`` State, DISCONNECT, then a fresh connection."""
        self.send(fleet.state(t, "shutdown", _now_ms(), self.topics))
        if self.per_terminal:
            conn = self.own.pop(t.index, None)
            if conn is not None:
                await conn.close()
            await self._connect_own(t)
        else:
            self.send(fleet.state(t, "online", _now_ms(), self.topics))

    def _all(self) -> list[WireClient]:
        return [*self.shared, *self.own.values()]

    @property
    def outstanding(self) -> int:
        return sum(c.outstanding for c in self._all())

    async def flush(self) -> None:
        """Let every socket buffer drain (backpressure from the broker)."""
        await asyncio.gather(*(c.drain() for c in self._all() if c.connected), return_exceptions=True)

    async def close(self, farewell: str | None = "shutdown", within: float = 30.0) -> None:
        """Optionally say ``farewell`` (``shutdown``) for every terminal, wait for acks, disconnect."""
        if farewell:
            for t in self.terminals:
                if t.reachable:
                    self.send(fleet.state(t, farewell, _now_ms(), self.topics))
        for c in self._all():
            if c.connected:
                with contextlib.suppress(ClientError, TimeoutError):
                    await c.wait_outstanding(0, within)
        await asyncio.gather(*(c.close() for c in self._all()), return_exceptions=True)
