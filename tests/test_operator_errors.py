"""Every operator mistake: one line on stderr naming it, no traceback, its documented exit code,
and `check-config` refusing exactly the files `run` refuses. The real `fleetwatch` binary runs
over a table of good and bad setups, both commands side by side.

Exit codes (fleetwatch/cli.py, README, docs/operating.md): 0 stopped by a signal, 2
configuration, 3 store, 4 TLS or credential files, 5 HTTP listen address. `check-config` judges
the configuration and reads the TLS files (2 and 4); the store and the listen address are only
met by `run` (check-config accepts those setups: exit 0).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.pki import make_pki
from tests.services import free_port

FLEETWATCH = str(Path(sys.executable).with_name("fleetwatch"))
UNREACHABLE_BROKER = "mqtt://127.0.0.1:9"  # discard port: nothing answers, the daemon keeps retrying


@dataclass(frozen=True)
class Setup:
    """What a case runs with: the config file, the environment, and anything it holds meanwhile."""

    path: Path
    env: dict[str, str]
    port: int


Holder = Callable[[Setup], Any]


@dataclass(frozen=True)
class Case:
    name: str
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    code: int = 0
    """What `run` exits with; 0: it got past every check and was stopped with SIGTERM."""
    names: str = ""
    """What the one error line must say."""
    raw: str | None = None
    """The whole config text instead of sections (broken TOML); None: rendered from sections."""
    env: dict[str, str] = field(default_factory=dict)
    missing_file: bool = False
    hold: Holder | None = None
    """Something held while both commands run (a port, the store's lock)."""
    warns: str = ""
    """A warning both commands must give (deprecated settings)."""

    @property
    def check_code(self) -> int:
        return self.code if self.code in (2, 4) else 0


def toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def render(sections: dict[str, dict[str, Any]]) -> str:
    return "".join(f"[{name}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items())
                   for name, values in sections.items())


@contextmanager
def holding_the_port(setup: Setup) -> Iterator[None]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", setup.port))
        s.listen(1)
        yield


@contextmanager
def holding_the_store(setup: Setup) -> Iterator[None]:
    """What a first daemon on the same store holds (adapters/sqlite.py: PATH.lock)."""
    lock_path = setup.path.parent / "fleetwatch.db.lock"
    with lock_path.open("a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield


PKI = "{pki}"
TLS = {"url": "mqtts://127.0.0.1:9", "ca_file": f"{PKI}/ca.crt", "cert_file": f"{PKI}/client.crt",
       "key_file": f"{PKI}/client.key"}

CASES = [
    # ---- accepted by both: run goes on until stopped ---------------------------------------
    Case("empty file"),
    Case("deprecated settings still start", {"store": {"max_batch": 10}, "settlement": {"sweep_s": 1.0}},
         warns="store.max_batch is deprecated"),
    Case("processor table", {"detect": {"processors": {"acme": {"05": "link", "N7": "config:keys"}},
                                        "processor": "acme"}}),
    Case("mqtts with readable files", {"mqtt": TLS}),
    Case("environment override", env={"FLEETWATCH_DETECT__HEARTBEAT_INTERVAL_S": "15"}),
    # ---- configuration: exit 2 from both -------------------------------------------------------
    Case("config file missing", missing_file=True, code=2, names="config file not found"),
    Case("broken TOML", raw="[mqtt\n", code=2, names="is not valid TOML"),
    Case("bad value", {"detect": {"heartbeat_interval_s": 0}}, code=2,
         names="detect.heartbeat_interval_s: Input should be greater than 0"),
    Case("unknown key", {"store": {"flush_every": 5}}, code=2, names="store.flush_every: unknown setting"),
    Case("unknown section", {"nonsense": {"x": 1}}, code=2, names="nonsense: unknown setting"),
    Case("listen without a port", {"http": {"listen": "localhost"}}, code=2,
         names="http.listen: must be host:port"),
    Case("bad processor entry", {"detect": {"processors": {"acme": {"05": "hosty"}}, "processor": "acme"}},
         code=2, names="detect.processors.acme.05: unknown blame 'hosty'"),
    Case("processor naming no table", {"detect": {"processor": "acme"}}, code=2,
         names="detect.processor 'acme' names no table"),
    Case("TLS files without mqtts", {"mqtt": {**TLS, "url": "mqtt://127.0.0.1:9"}}, code=2,
         names="mqtt.ca_file is set but mqtt.url is not mqtts://"),
    Case("bad broker port", {"mqtt": {"url": "mqtt://127.0.0.1:99999"}}, code=2, names="mqtt.url has a bad port"),
    Case("bad environment value", env={"FLEETWATCH_HTTP__LISTEN": "nowhere"}, code=2,
         names="http.listen: must be host:port"),
    # ---- TLS and credential files: exit 4 from both ---------------------------------------------
    Case("missing CA file", {"mqtt": {**TLS, "ca_file": "/nonexistent/ca.crt"}}, code=4,
         names="mqtt.ca_file /nonexistent/ca.crt: No such file or directory"),
    Case("key file is a directory", {"mqtt": {**TLS, "key_file": PKI}}, code=4, names="mqtt.key_file"),
    Case("key file is not a key", {"mqtt": {**TLS, "key_file": f"{PKI}/ca.crt"}}, code=4,
         names="not a PEM certificate with its unencrypted private key"),
    # ---- met by run only ----------------------------------------------------------------------
    Case("store under a file", {"store": {"url": "sqlite:///{tmp}/config.toml/fleetwatch.db"}}, code=3,
         names="cannot open store"),
    Case("store in use by another daemon", hold=holding_the_store, code=3,
         names="is in use by another fleetwatch process"),
    Case("PostgreSQL store unreachable",
         {"store": {"url": f"postgresql://fw:not-this-one@127.0.0.1:{free_port()}/fleetwatch"}}, code=3,
         names="opening the store failed on postgresql://fw:**********@127.0.0.1:"),
    Case("listen address in use", hold=holding_the_port, code=5, names="http.listen 127.0.0.1:"),
]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    make_pki(d)
    return d


def prepare(case: Case, tmp: Path, pki: Path) -> Setup:
    port = free_port()
    sections: dict[str, dict[str, Any]] = {
        "mqtt": {"url": UNREACHABLE_BROKER}, "store": {"url": f"sqlite:///{tmp}/fleetwatch.db"},
        "http": {"listen": f"127.0.0.1:{port}", "api_token": "t"}, "log": {"format": "json"},
    }
    for name, values in case.sections.items():
        sections.setdefault(name, {}).update(values)
    text = case.raw if case.raw is not None else render(sections)
    text = text.replace("{pki}", str(pki)).replace("{tmp}", str(tmp))
    path = tmp / "config.toml"
    if not case.missing_file:
        path.write_text(text, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWATCH_")} | case.env
    return Setup(path, env, port)


def healthy(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def run_until_stopped_or_exit(setup: Setup) -> tuple[int, str]:
    """`fleetwatch run`: its own exit, or SIGTERM once /healthz answers (it got past every check)."""
    proc = subprocess.Popen([FLEETWATCH, "run", "--config", str(setup.path)], env=setup.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        if healthy(setup.port):
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    try:
        _, stderr = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, stderr = proc.communicate()
    return proc.returncode, stderr


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_run_and_check_config_agree_with_one_line_and_the_documented_code(
    case: Case, tmp_path: Path, pki: Path,
) -> None:
    """check-config and run over the same setup: the same verdict for configuration and TLS files;
    each refusal is one line naming the problem, no traceback, and the documented exit code."""
    setup = prepare(case, tmp_path, pki)
    with ExitStack() as held:
        if case.hold is not None:
            held.enter_context(case.hold(setup))
        check = subprocess.Popen([FLEETWATCH, "check-config", str(setup.path)], env=setup.env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        run_code, run_err = run_until_stopped_or_exit(setup)
        check_out, check_err = check.communicate(timeout=30)

    assert "Traceback" not in run_err + check_err
    assert "not-this-one" not in run_err + check_out + check_err  # a store URL's password is never shown
    assert check.returncode == case.check_code, check_err
    assert run_code == case.code, run_err
    check_lines = check_err.splitlines()
    run_lines = [json.loads(line) for line in run_err.splitlines()]  # JSON lines only, nothing else
    errors = [line for line in run_lines if line["level"] in ("error", "critical")]
    if case.code == 0:
        assert errors == []
        assert json.loads(check_out)["http"]["listen"] == f"127.0.0.1:{setup.port}"
    else:
        assert [(e["exit_code"], case.names in e["event"]) for e in errors] == [(case.code, True)], errors
    if case.check_code:
        assert len(check_lines) == 1, check_err
        assert check_lines[0].startswith("fleetwatch check-config: ")
        assert case.names in check_lines[0]
    warnings = [line["detail"] for line in run_lines if line["level"] == "warning" and "detail" in line]
    if case.warns:
        assert [w for w in check_lines if case.warns in w], check_err
        assert [w for w in warnings if case.warns in w], run_err
        assert "max_batch" not in check_out  # not part of the effective settings any more
    else:
        assert not [line for line in check_lines if "warning" in line]

