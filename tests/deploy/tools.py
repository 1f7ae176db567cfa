"""Helpers for the deploy tests: find the real binaries, free ports, wait for services.

The deploy tests run the real tools (promtool, amtool, alertmanager, mosquitto). A
missing tool is a failure with the install command, never a skip: CI installs them.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DASHBOARDS = REPO / "dashboards"
RULES_FILE = DEPLOY / "prometheus" / "rules" / "fleetwatch.rules.yml"
RULE_TESTS_DIR = DEPLOY / "prometheus" / "tests"

# binary -> (other names it goes by, Debian package that ships it)
_PACKAGES: dict[str, tuple[tuple[str, ...], str]] = {
    "promtool": ((), "prometheus"),
    "prometheus": ((), "prometheus"),
    "amtool": ((), "prometheus-alertmanager"),
    # Debian ships the Alertmanager server as prometheus-alertmanager
    "alertmanager": (("prometheus-alertmanager",), "prometheus-alertmanager"),
    "mosquitto": ((), "mosquitto"),
    "mosquitto_passwd": ((), "mosquitto"),
}


def require_binary(name: str) -> str:
    """Path of the binary ``name``; fails the test with the apt-get line when missing."""
    aliases, package = _PACKAGES.get(name, ((), name))
    for candidate in (name, *aliases):
        found = shutil.which(candidate) or shutil.which(candidate, path="/usr/sbin:/sbin")
        if found:
            return found
    pytest.fail(
        f"{name} is not installed; the deploy tests need the real tool: apt-get update && apt-get install -y {package}",
        pytrace=False,
    )


def run_tool(args: list[str], *, cwd: Path | None = None, timeout: float = 120) -> str:
    """Run a tool, fail the test with its output when it exits non-zero; return stdout+stderr."""
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {proc.returncode}:\n{output}", pytrace=False)
    return output


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Terminate a process this test started, kill it if it does not stop."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def wait_until_ready(
    proc: subprocess.Popen[bytes],
    *,
    log: Path,
    port: int,
    http_path: str | None = None,
    timeout: float = 20.0,
) -> None:
    """Wait for ``port`` to accept connections (and ``http_path`` to answer 200)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args!r} exited {proc.returncode} at start:\n{_tail(log)}", pytrace=False)
        try:
            if http_path is None:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            elif httpx.get(f"http://127.0.0.1:{port}{http_path}", timeout=0.5).status_code == 200:
                return
        except (OSError, httpx.HTTPError):
            pass
        time.sleep(0.1)
    pytest.fail(f"{proc.args!r} not ready on port {port} after {timeout}s:\n{_tail(log)}", pytrace=False)


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-4000:]
    except OSError:
        return "(no log)"
