"""The daemon under test, as a subprocess: start with a temp config, wait for /readyz, read, stop.

The harness treats fleetwatch as a black box through its operator surface only (the
config file, ``/readyz``, ``/metrics``, the API, SIGTERM, and finally its store: the
SQLite file opened read-only, or the PostgreSQL database), so the figures hold for what
operators run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx

from bench.broker import free_port

TOKEN = "bench"


def daemon_config(mqtt_port: int, http_port: int, db: Path, *, interval: float = 60.0,
                  store_url: str | None = None) -> str:
    """The temp config the brief prescribes (TOML); the store is SQLite at ``db`` unless ``store_url``."""
    return (
        "[mqtt]\n"
        f'url = "mqtt://127.0.0.1:{mqtt_port}"\n'
        'topic_prefix = "fleet/v1"\n'
        'client_id = "fleetwatch-bench"\n'
        "[store]\n"
        f'url = "{store_url or f"sqlite:///{db}"}"\n'
        "[http]\n"
        f'listen = "127.0.0.1:{http_port}"\n'
        f'api_token = "{TOKEN}"\n'
        "[detect]\n"
        f"heartbeat_interval_s = {interval:g}\n"
    )


def metric_sum(text: str, name: str) -> float:
    """Sum of every sample of ``name`` (all label sets) in a Prometheus text page."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (len(line) == len(name) or line[len(name)] in " {"):
            try:
                total += float(line.rsplit(" ", 1)[1])
            except (IndexError, ValueError):
                continue
    return total


@dataclass
class Daemon:
    """One fleetwatch process and the files it owns."""

    mqtt_port: int
    workdir: Path
    interval: float = 60.0
    proc: subprocess.Popen[bytes] | None = None
    http_port: int = 0
    store_url: str | None = None
    """None: SQLite in ``workdir``; else a PostgreSQL URL."""
    extra_config: str = ""
    """TOML sections appended to the config (e.g. ``[notice]`` settings)."""
    env: dict[str, str] = field(default_factory=dict)
    """Added to the daemon's environment (``FLEETWATCH_PURE=1`` runs the hot path as Python)."""

    @property
    def db(self) -> Path:
        return self.workdir / "fw.db"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, within: float = 120.0, *, wait: bool = True) -> float:
        """Start and wait until ``/readyz`` answers 200; returns the seconds that took. ``wait``
        False: return once the process runs (a standby never answers 200)."""
        self.http_port = free_port()
        conf = self.workdir / "fleetwatch.toml"
        conf.write_text(daemon_config(self.mqtt_port, self.http_port, self.db, interval=self.interval,
                                      store_url=self.store_url) + self.extra_config)
        log = (self.workdir / "daemon.log").open("ab")
        cmd = os.environ.get("FLEETWATCH_BENCH_CMD")
        argv = cmd.split() if cmd else [sys.executable, "-m", "fleetwatch"]
        t0 = time.monotonic()
        self.proc = subprocess.Popen([*argv, "run", "--config", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **self.env})
        log.close()
        if not wait:
            return 0.0
        with httpx.Client(timeout=2.0) as http:
            while time.monotonic() - t0 < within:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"fleetwatch exited with {self.proc.returncode}; see {self.workdir}/daemon.log")
                try:
                    if http.get(f"{self.api}/readyz").status_code == 200:
                        return time.monotonic() - t0
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
        raise RuntimeError(f"fleetwatch not ready after {within} s; see {self.workdir}/daemon.log")

    def metrics(self, http: httpx.Client) -> tuple[str, float]:
        """(page, seconds the scrape took)."""
        t0 = time.perf_counter()
        r = http.get(f"{self.api}/metrics")
        r.raise_for_status()
        return r.text, time.perf_counter() - t0

    def received(self, http: httpx.Client) -> float:
        return metric_sum(self.metrics(http)[0], "fleetwatch_messages_received_total")

    def wait_received(self, target: float, *, idle_timeout: float = 30.0) -> tuple[float, float]:
        """Poll until the daemon counted ``target`` messages or stalls; (count, wall time reached)."""
        last, last_change = -1.0, time.monotonic()
        with httpx.Client(timeout=10.0) as http:
            while True:
                n = self.received(http)
                now = time.time()
                if n >= target:
                    return n, now
                if n != last:
                    last, last_change = n, time.monotonic()
                elif time.monotonic() - last_change > idle_timeout:
                    return n, now
                time.sleep(0.05)

    def wait_incident(self, terminal_id: str, kind: str, *, within: float = 300.0, every: float = 0.05) -> float | None:
        """Poll the API until an incident of ``kind`` for ``terminal_id`` is visible (committed to
        the store); the wall time it was first seen, or None after ``within`` seconds."""
        deadline = time.monotonic() + within
        headers = {"Authorization": f"Bearer {TOKEN}"}
        params = {"status": "all", "terminal_id": terminal_id, "kind": kind}
        with httpx.Client(timeout=10.0, headers=headers) as http:
            while time.monotonic() < deadline:
                r = http.get(f"{self.api}/api/v1/incidents", params=params)
                if r.status_code == 200 and r.json().get("items"):
                    return time.time()
                time.sleep(every)
        return None

    def wait_store_settled(self, *, settle_s: float = 3.0, timeout: float = 300.0) -> bool:
        """Poll until nothing waits for the store (``fleetwatch_store_queue_depth`` 0 across
        ``settle_s``, longer than the coalescing window of terminal rows); False on timeout."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=10.0) as http:
            while time.monotonic() < deadline:
                if metric_sum(self.metrics(http)[0], "fleetwatch_store_queue_depth") == 0:
                    time.sleep(settle_s)
                    if metric_sum(self.metrics(http)[0], "fleetwatch_store_queue_depth") == 0:
                        return True
                time.sleep(0.5)
        return False

    def cpu_seconds(self) -> float:
        """User + system CPU time the daemon process (all its threads) has used so far."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_bytes(self) -> int:
        """VmRSS of the daemon process."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def stop(self, within: float = 60.0) -> int:
        """SIGTERM and wait; returns the exit code (the contract wants 0)."""
        if self.proc is None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(within)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self.proc = None

    def count(self, table: str) -> int:
        """Rows of ``table`` in the stopped daemon's store (the SQLite file opened read-only)."""
        if self.store_url is not None:
            return asyncio.run(_pg_count(self.store_url, table))
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        try:
            return int(con.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # table: a fixed name from our code
        finally:
            con.close()


async def _pg_count(url: str, table: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))  # table: a fixed name from our code
    finally:
        await conn.close()


def new_daemon(mqtt_port: int, interval: float = 60.0, extra_config: str = "", store_url: str | None = None) -> Daemon:
    return Daemon(mqtt_port, Path(tempfile.mkdtemp(prefix="fw-bench-")), interval, store_url=store_url,
                  extra_config=extra_config)
