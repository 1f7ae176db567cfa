"""Logs read by a person on a terminal, by a machine otherwise: the real `fleetwatch run` on a
pseudo-terminal renders with structlog's console renderer (tests/test_operator_errors.py checks
that every line is JSON when stderr is a pipe)."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.services import free_port

FLEETWATCH = str(Path(sys.executable).with_name("fleetwatch"))
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def read_until(fd: int, needle: str, timeout: float) -> str:
    """What the terminal shows until ``needle`` appears (or the other side closes, or time runs out)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while needle.encode() not in ANSI.sub("", seen.decode(errors="replace")).encode():
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    return ANSI.sub("", seen.decode(errors="replace"))


def test_run_on_a_terminal_logs_readable_lines(tmp_path: Path) -> None:
    """With stderr on a terminal and log.format auto, the daemon's lines are console text (level in
    brackets, key=value pairs, the broker's password masked), not JSON, from start to stop."""
    config = tmp_path / "fleetwatch.toml"
    config.write_text(
        '[mqtt]\nurl = "mqtt://fleetwatch:hunter2@127.0.0.1:9"\n'
        f'[store]\nurl = "sqlite:///{tmp_path}/fleetwatch.db"\n'
        f'[http]\nlisten = "127.0.0.1:{free_port()}"\napi_token = "t"\n',
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWATCH_") and k != "NO_COLOR"}
    master, slave = pty.openpty()
    proc = subprocess.Popen([FLEETWATCH, "run", "--config", str(config)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=slave, env=env)
    os.close(slave)
    try:
        shown = read_until(master, "mqtt connect failed", timeout=30)
        proc.send_signal(signal.SIGTERM)
        shown += read_until(master, "fleetwatch stopped", timeout=15)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    lines = [line for line in shown.splitlines() if line.strip()]
    assert lines
    assert not [line for line in lines if line.lstrip().startswith("{")], shown
    start = next(line for line in lines if "fleetwatch starting" in line)
    assert "[info" in start
    assert "broker=mqtt://fleetwatch:**********@127.0.0.1:9" in start
    assert any("[warning" in line and "reason=unreachable" in line for line in lines), shown
    assert "hunter2" not in shown
