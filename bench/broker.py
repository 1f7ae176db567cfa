"""A private Mosquitto for each benchmark run, and a watch on its ``$SYS`` counters.

The harness never measures against a shared broker: another user's traffic would be
in the figures. Its config raises ``max_queued_messages`` (the default 1000 drops QoS 1
messages for a subscriber that falls behind: docs "Measured facts") and
``max_inflight_messages``, and publishes ``$SYS`` every second so drops are visible.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fleetwatch.sim import wire
from fleetwatch.sim.client import WireClient

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    """A TCP port nobody listens on right now (loopback)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def broker_config(port: int, *, max_queued: int = 1_000_000, max_inflight: int = 1000) -> str:
    """The mosquitto.conf the harness and the tests use."""
    return (
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        f"max_queued_messages {max_queued}\n"
        f"max_inflight_messages {max_inflight}\n"
        "sys_interval 1\n"
        "persistence false\n"
    )


def wait_port(port: int, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {within} s")


@dataclass
class Broker:
    """A running private Mosquitto."""

    port: int
    proc: subprocess.Popen[bytes]
    workdir: Path

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid


@contextlib.contextmanager
def mosquitto(**config: int) -> Iterator[Broker]:
    """Start ``mosquitto -c tmp.conf`` on a free loopback port; stop it afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix="fw-broker-"))
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(broker_config(port, **config))
    log = (workdir / "mosquitto.log").open("wb")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port)
        yield Broker(port, proc, workdir)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class SysWatch:
    """Latest value of every ``$SYS/broker/...`` counter, kept current by a subscription."""

    values: dict[str, str] = field(default_factory=dict)
    client: WireClient | None = None

    def _on(self, msg: wire.Message) -> None:
        self.values[msg.topic.removeprefix("$SYS/broker/")] = msg.payload.decode("utf-8", "replace")

    async def start(self, port: int) -> None:
        self.client = WireClient("127.0.0.1", port, f"bench-sys-{port}", on_message=self._on)
        await self.client.connect()
        await self.client.subscribe("$SYS/broker/#", 0)

    def number(self, key: str) -> float:
        try:
            return float(self.values.get(key, "0"))
        except ValueError:
            return 0.0

    async def settle(self, seconds: float = 2.5) -> None:
        """Wait for at least one more ``$SYS`` publication (``sys_interval`` is 1 s)."""
        await asyncio.sleep(seconds)

    def dropped(self) -> float:
        """Messages the broker dropped (the counter, or any drop in the last minute)."""
        return max(self.number("publish/messages/dropped"), self.number("load/publish/dropped/1min"))

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.close()
