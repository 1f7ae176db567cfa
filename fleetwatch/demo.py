"""``fleetwatch demo``: a private broker, the daemon and a small simulated fleet, together.

For a newcomer's first five minutes: nothing to configure, nothing left running
afterwards. The broker gets a free loopback port and a throw-away config; the store is
``./var/demo/fleetwatch.db``; the API token is ``demo``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from fleetwatch.config import Settings, load_settings

DEMO_TOKEN = "demo"
DEMO_MERCHANT = "M0000"
CONFIG = Path("var/demo/fleetwatch.toml")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_broker(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        raise SystemExit("fleetwatch demo needs mosquitto: apt-get install mosquitto")
    port = _free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n"
        "max_inflight_messages 1000\nlog_dest none\n",
        encoding="utf-8",
    )
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return proc, port
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("mosquitto did not start")


def banner(*, broker_url: str, store: Path, http: str, terminals: int, link: str = "") -> str:
    """What a newcomer needs first: where everything is, the token, and what to type."""
    api = f"http://{http}"
    auth = f"-H 'Authorization: Bearer {DEMO_TOKEN}'"
    return "\n".join([
        "",
        "fleetwatch demo",
        f"  broker  {broker_url}   (a private Mosquitto, stopped with the demo)",
        f"  store   {store}",
        f"  API     {api}   token: {DEMO_TOKEN}",
        f"  fleet   {terminals} simulated terminals with a few injected faults",
        "",
        "Try:",
        f"  curl {auth} {api}/api/v1/terminals",
        f"  curl {auth} '{api}/api/v1/incidents?status=all'",
        f"  curl {api}/metrics",
        f"  curl {api}/openapi.json      (every API route)",
        *([f"A shop's own page ({DEMO_MERCHANT}; its terminal T00000 is tampered with after about a minute):",
           f"  {link}",
           f"  another shop's: fleetwatch notice-link --config {CONFIG} M0001"] if link else []),
        "Docs: README.md and docs/ in the fleetwatch repository; docs/detection.md says what each incident means.",
        "",
        "Ctrl-C stops everything.",
        "",
    ])


def run_demo(*, terminals: int, http: str, duration: float) -> int:
    """Run broker + daemon + simulator until Ctrl-C (or ``duration`` seconds)."""
    from fleetwatch.app import run_daemon
    from fleetwatch.logs import configure_logging

    store = Path("var/demo/fleetwatch.db").resolve()
    store.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fleetwatch-demo-") as tmp:
        broker, port = _start_broker(Path(tmp))
        url = f"mqtt://127.0.0.1:{port}"
        CONFIG.resolve().write_text(
            "# Written by `fleetwatch demo` (its settings, for `fleetwatch notice-link --config ...`).\n"
            f'[mqtt]\nurl = "{url}"\nclient_id = "fleetwatch-demo"\n'
            f'[store]\nurl = "sqlite:///{store}"\n'
            f'[http]\nlisten = "{http}"\napi_token = "{DEMO_TOKEN}"\n'
            '[detect]\nheartbeat_interval_s = 5\n[log]\nlevel = "info"\n'
            '[notice]\nacquirer_name = "Demo Acquirer"\nsupport_phone = "400-000-0000"\n',
            encoding="utf-8",
        )
        settings = load_settings(CONFIG)
        configure_logging(settings.log)
        link = _notice_link(settings)
        simulator = subprocess.Popen([
            sys.executable, "-m", "fleetwatch", "simulate", "--url", url, "--terminals", str(terminals),
            "--merchants", str(max(1, terminals // 4)), "--interval", "5", "--speed", "60", "--quiet",
            "--scenario", str(Path(__file__).parent / "sim" / "demo.toml"),
        ])
        print(banner(broker_url=url, store=store, http=http, terminals=terminals, link=link), file=sys.stderr,
              flush=True)
        if duration > 0:
            threading.Timer(duration, _interrupt).start()
        try:
            return asyncio.run(run_daemon(settings))
        finally:
            for proc in (simulator, broker):
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)


def _notice_link(settings: Settings) -> str:
    """A signed link to the demo merchant's page (the link key is generated into the store)."""
    from fleetwatch.cli import notice_link

    return asyncio.run(notice_link(settings, DEMO_MERCHANT, days=1, seconds=None))


def _interrupt() -> None:
    """Stop the demo the way Ctrl-C does, so the daemon shuts down in order."""
    os.kill(os.getpid(), signal.SIGINT)
