"""A minimal asyncio MQTT client over :mod:`fleetwatch.sim.wire`, for simulators and benches.

Why not paho or gmqtt: a simulated terminal needs exactly four things (a CONNECT with
a Last Will, fire-and-forget PUBLISH, counting PUBACKs, and dying uncleanly on purpose
so the broker really publishes the Will), and the benchmark needs to write
pre-encoded frames at memory speed. Both are a few dozen lines here, and a few hundred
of these clients cost almost nothing (no thread each, as paho's loop would take).

Not a general client: no reconnect loop (the caller decides, because a simulated link
flap is a decision), no QoS 2, no persistence of unacknowledged messages.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from fleetwatch.sim import wire


class ClientError(ConnectionError):
    """The broker refused us or the connection broke while we needed it."""


class WireClient:
    """One MQTT connection: connect, publish, count acknowledgements, die on purpose."""

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        *,
        version: int = wire.MQTT311,
        keepalive: int = 60,
        will: wire.Will | None = None,
        username: str | None = None,
        password: str | None = None,
        on_message: Callable[[wire.Message], None] | None = None,
    ) -> None:
        self.host, self.port, self.client_id = host, port, client_id
        self.version, self.keepalive, self.will = version, keepalive, will
        self.username, self.password = username, password
        self.on_message = on_message
        self.sent_qos1 = 0
        """QoS 1 PUBLISHes written (including those inside pre-encoded blobs)."""
        self.acked = 0
        """PUBACKs received."""
        self.pinging = True
        """Set False to let the keepalive lapse (a dead device: the broker fires the Will)."""
        self._next_id = 0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._progress = asyncio.Event()
        self._subacks: dict[int, asyncio.Future[None]] = {}
        self.closed = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self.closed.is_set()

    @property
    def outstanding(self) -> int:
        """QoS 1 messages written but not yet acknowledged by the broker."""
        return self.sent_qos1 - self.acked

    async def connect(self, within: float = 10.0) -> None:
        """Open the TCP connection, send CONNECT and wait for a successful CONNACK."""
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), within)
        except (OSError, TimeoutError) as exc:
            raise ClientError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        self._reader, self._writer = reader, writer
        self.closed.clear()
        writer.write(
            wire.connect(
                self.client_id, version=self.version, keepalive=self.keepalive, will=self.will,
                username=self.username, password=self.password,
            )
        )
        buf = bytearray()
        try:
            while True:
                chunk = await asyncio.wait_for(reader.read(65536), within)
                if not chunk:
                    raise ClientError("broker closed the connection before CONNACK")
                buf += chunk
                pkts = wire.split_packets(buf)
                if pkts:
                    break
        except TimeoutError as exc:
            raise ClientError("no CONNACK in time") from exc
        code = wire.connack_code(pkts[0])
        if code != 0:
            raise ClientError(f"broker refused the connection: code {code}")
        for pkt in pkts[1:]:
            self._handle(pkt)
        name = f"mqtt-{self.client_id}"
        self._tasks = [asyncio.create_task(self._read_loop(buf), name=f"{name}-read")]
        if self.keepalive:
            self._tasks.append(asyncio.create_task(self._ping_loop(), name=f"{name}-ping"))

    def _handle(self, pkt: wire.Packet) -> None:
        if pkt.type == wire.PUBACK:
            self.acked += 1
            self._progress.set()
        elif pkt.type == wire.PUBLISH:
            msg = wire.parse_publish(pkt, version=self.version)
            if msg.qos == 1 and self._writer is not None:
                self._writer.write(wire.puback(msg.packet_id))
            if self.on_message is not None:
                self.on_message(msg)
        elif pkt.type == wire.SUBACK:
            fut = self._subacks.pop(wire.packet_id_of(pkt), None)
            if fut is not None and not fut.done():
                fut.set_result(None)
        elif pkt.type == wire.DISCONNECT:
            self.closed.set()

    async def _read_loop(self, buf: bytearray) -> None:
        assert self._reader is not None
        try:
            while True:
                chunk = await self._reader.read(262144)
                if not chunk:
                    break
                buf += chunk
                for pkt in wire.split_packets(buf):
                    self._handle(pkt)
        except (OSError, wire.WireError):
            pass
        finally:
            self.closed.set()
            self._progress.set()

    async def _ping_loop(self) -> None:
        while not self.closed.is_set():
            await asyncio.sleep(self.keepalive / 2)
            if self.pinging and self._writer is not None and not self.closed.is_set():
                self._writer.write(wire.PINGREQ_FRAME)

    def _packet_id(self) -> int:
        self._next_id = self._next_id % 0xFFFF + 1
        return self._next_id

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        """Write one PUBLISH (fire and forget; QoS 1 acknowledgements are counted)."""
        if not self.connected:
            raise ClientError(f"{self.client_id} is not connected")
        assert self._writer is not None
        pid = self._packet_id() if qos else 0
        self._writer.write(wire.publish(topic, payload, qos=qos, retain=retain, packet_id=pid,
                                        version=self.version))
        if qos:
            self.sent_qos1 += 1

    def write_raw(self, frames: bytes | memoryview, qos1_count: int) -> None:
        """Write pre-encoded PUBLISH frames holding ``qos1_count`` QoS 1 messages."""
        if not self.connected:
            raise ClientError(f"{self.client_id} is not connected")
        assert self._writer is not None
        self._writer.write(frames)
        self.sent_qos1 += qos1_count

    async def drain(self) -> None:
        """Wait until the socket buffer has room again (asyncio flow control)."""
        if self._writer is not None:
            try:
                await self._writer.drain()
            except OSError as exc:
                raise ClientError(f"{self.client_id}: connection lost: {exc}") from exc

    async def wait_outstanding(self, at_most: int, within: float | None = None) -> None:
        """Wait until at most ``at_most`` QoS 1 messages are unacknowledged."""
        async with asyncio.timeout(within):
            while self.outstanding > at_most:
                if self.closed.is_set():
                    raise ClientError(f"{self.client_id}: closed with {self.outstanding} unacknowledged")
                self._progress.clear()
                await self._progress.wait()

    async def subscribe(self, topic_filter: str, qos: int = 0, within: float = 10.0) -> None:
        """Subscribe and wait for the SUBACK."""
        assert self._writer is not None
        pid = self._packet_id()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._subacks[pid] = fut
        self._writer.write(wire.subscribe(pid, topic_filter, qos, version=self.version))
        await asyncio.wait_for(fut, within)

    def abort(self) -> None:
        """Drop the TCP connection without DISCONNECT: the broker publishes our Will."""
        if self._writer is not None:
            self._writer.transport.abort()
        self._stop_tasks()
        self.closed.set()

    async def close(self) -> None:
        """Clean DISCONNECT (the broker discards the Will) and close the socket."""
        if self._writer is not None and not self.closed.is_set():
            with contextlib.suppress(OSError):
                self._writer.write(wire.DISCONNECT_FRAME)
                await self._writer.drain()
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        self._stop_tasks()
        self.closed.set()

    def _stop_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks = []
