"""Real services for the tests: Mosquitto, PostgreSQL and the fleetwatch daemon as processes.

Each test session starts its own broker and its own PostgreSQL cluster on free loopback
ports with a config written here, so CI and a developer's machine behave the same
whatever else runs on 1883 or 5432 (those are never touched).
The daemon runs as a real subprocess (``python -m fleetwatch run``) so tests can send it
SIGTERM or SIGKILL exactly as systemd or a crash would.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import json
import os
import pwd
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest

BOTH_BACKENDS = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
"""Run a daemon test on both store backends (the ``backend`` fixture in conftest.py)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if not found:
        raise RuntimeError("mosquitto is not installed: run `apt-get install -y mosquitto` (scripts/test does)")
    return found


@dataclass
class Broker:
    """A private Mosquitto; ``restart()`` keeps the port and the persistence file."""

    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            "max_queued_messages 1000000\n"
            "max_inflight_messages 1000\n"
            "log_dest none\n"
            # As root Mosquitto drops to its own user, which cannot write the persistence file
            # in the test's root-owned folder: sessions would not survive a restart.
            + ("user root\n" if os.geteuid() == 0 else ""),
            encoding="utf-8",
        )
        self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


def postgres_bindir() -> Path:
    """Debian's PostgreSQL binaries (the newest installed version), or pg_config's."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if found:
        return found[-1].parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        bindir = Path(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True)
                      .stdout.strip())
        if (bindir / "initdb").exists():
            return bindir
    raise RuntimeError("PostgreSQL is not installed: run `apt-get install -y postgresql` (scripts/test does)")


@dataclass
class Postgres:
    """A private PostgreSQL cluster: initdb in a temp folder, one server on a free port, stopped by pid.

    initdb refuses to run as root, so as root the cluster belongs to the ``postgres``
    user (its folder is made outside pytest's root-only temp tree). The server listens on
    127.0.0.1 only, with password authentication (so the URLs the tests use carry a real
    password to mask), no Unix socket, and without fsync: the tests kill daemons, never
    the machine. The default collation is ICU's en-US, where "a" sorts before "B": only
    the store's ``COLLATE "C"`` columns make its pages match SQLite's.
    """

    port: int = field(default_factory=free_port)
    user: str = "fwtest"
    password: str = "fw-test-secret"
    fsync: bool = False
    """Off for tests (they kill daemons, never the machine); the bench turns it on."""
    workdir: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    _names: Iterator[int] = field(default_factory=itertools.count)

    def start(self) -> None:
        bindir = postgres_bindir()
        owner = "postgres" if os.geteuid() == 0 else None
        self.workdir = Path(tempfile.mkdtemp(prefix="fleetwatch-pg-"))
        (self.workdir / "pw").write_text(self.password + "\n", encoding="utf-8")
        if owner is not None:
            entry = pwd.getpwnam(owner)
            for path in (self.workdir, self.workdir / "pw"):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        data = self.workdir / "data"
        subprocess.run(
            [str(bindir / "initdb"), "-D", str(data), "-U", self.user, f"--pwfile={self.workdir / 'pw'}",
             "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8",
             "--locale-provider=icu", "--icu-locale=en-US", "--no-sync", "--no-instructions"],
            user=owner, cwd=self.workdir, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        with (self.workdir / "server.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [str(bindir / "postgres"), "-D", str(data), "-p", str(self.port),
                 "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
                 "-c", f"fsync={'on' if self.fsync else 'off'}",
                 "-c", f"full_page_writes={'on' if self.fsync else 'off'}", "-c", "max_connections=200"],
                user=owner, cwd=self.workdir, stdout=log, stderr=log,
            )
        wait_port(self.port, timeout=30)
        deadline = time.monotonic() + 30
        while True:  # the port opens before the server accepts sessions
            try:
                self.execute("SELECT 1")
                return
            except (OSError, asyncpg.PostgresError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def new_database(self, prefix: str = "fw") -> str:
        """A fresh, empty database; returns its URL."""
        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        self.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def execute(self, sql: str, database: str = "postgres") -> None:
        run_sync(_pg_execute(self.url(database), sql))

    def stop(self) -> None:
        """Fast shutdown (SIGINT) of our own server by its pid, then remove the cluster."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


def run_sync(coro: Any) -> Any:
    """Run a coroutine to completion from synchronous code, even inside a running loop (in a thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _pg_execute(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _pg_fetch(url: str, sql: str) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(url)
    try:
        return [tuple(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


def pg_rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows of a query on a PostgreSQL database, from synchronous test code."""
    rows: list[tuple[Any, ...]] = run_sync(_pg_fetch(url, sql))
    return rows


@dataclass
class Daemon:
    """``fleetwatch run`` in a subprocess with a config written for the test."""

    workdir: Path
    broker_url: str
    prefix: str = "fleet/v1"
    token: str = "test-token"
    client_id: str = "fleetwatch-test"
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    http_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    store_url: str | None = None
    """None: a SQLite file in ``workdir``; else e.g. a PostgreSQL URL."""
    extra_toml: str = ""
    """Appended to the config as written (arrays of tables, e.g. ``[[notify.merchant_webhooks]]``)."""

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def db_path(self) -> Path:
        return self.workdir / "fleetwatch.db"

    @property
    def log_path(self) -> Path:
        return self.workdir / "daemon.log"

    def config_text(self) -> str:
        sections: dict[str, dict[str, Any]] = {
            "mqtt": {"url": self.broker_url, "topic_prefix": self.prefix, "client_id": self.client_id,
                     "reconnect_max_s": 1.0},
            "store": {"url": self.store_url or f"sqlite:///{self.db_path}"},
            "http": {"listen": f"127.0.0.1:{self.http_port}", "api_token": self.token},
            "log": {"format": "json", "reject_log_interval_s": 0},
        }
        if self.store_url is not None:
            # On PostgreSQL the daemon holds a lease; a restart after SIGKILL waits for it to expire.
            sections["ha"] = {"lease_s": 2.0}
        for section, values in self.overrides.items():
            sections.setdefault(section, {}).update(values)
        lines: list[str] = []
        for section, values in sections.items():
            lines.append(f"[{section}]")
            lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
        return "\n".join(lines) + "\n" + self.extra_toml

    def start(self, *, wait_ready: bool = True) -> None:
        config = self.workdir / "fleetwatch.toml"
        config.write_text(self.config_text(), encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWATCH_")}
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen([sys.executable, "-m", "fleetwatch", "run", "--config", str(config)],
                                         stdout=log, stderr=log, env=env)
        if wait_ready:
            self.wait_ready()

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.logs()[-3000:]}")
            if self.ready_status() == 200:
                return
            time.sleep(0.05)
        raise TimeoutError(f"daemon not ready:\n{self.logs()[-3000:]}")

    def ready_status(self) -> int | None:
        """/readyz's status code, or None while nothing answers (every response is closed)."""
        try:
            with urllib.request.urlopen(f"{self.api}/readyz", timeout=1) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            exc.close()  # it holds the response's socket
            return int(exc.code)
        except OSError:
            return None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        self.proc = None
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` in the daemon's store, whichever backend it uses (read-only for SQLite)."""
        if self.store_url is not None:
            return pg_rows(self.store_url, sql)
        with contextlib.closing(sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True)) as conn:
            return list(conn.execute(sql))

    def logs(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def get(self, path: str, *, auth: bool = True) -> Any:
        req = urllib.request.Request(f"{self.api}{path}",
                                     headers={"Authorization": f"Bearer {self.token}"} if auth else {})
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
            return json.loads(body) if r.headers.get_content_type() == "application/json" else body.decode()

    def post(self, path: str, body: Any = None, method: str = "POST") -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.api}{path}", data=data, method=method,
                                     headers={"Authorization": f"Bearer {self.token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def incidents(self, **query: str) -> list[dict[str, Any]]:
        params = {"status": "all", "limit": "1000", **query}
        items: list[dict[str, Any]] = []
        cursor = None
        while True:
            qs = "&".join(f"{k}={v}" for k, v in ({**params, "cursor": cursor} if cursor else params).items())
            page = self.get(f"/api/v1/incidents?{qs}")
            items += page["items"]
            cursor = page["next_cursor"]
            if not cursor:
                return items

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        text = self.get("/metrics", auth=False)
        total = 0.0
        for line in text.splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            metric_name, _, label_text = head.partition("{")
            if metric_name != name:
                continue
            if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
                total += float(value)
        return total


def wait_until(predicate: Any, timeout: float = 15.0, interval: float = 0.1, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns a truthy value (returned), or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last value: {last!r}")


@contextlib.contextmanager
def running(daemon: Daemon) -> Iterator[Daemon]:
    daemon.start()
    try:
        yield daemon
    finally:
        if daemon.proc is not None:
            with contextlib.suppress(Exception):
                daemon.stop()
