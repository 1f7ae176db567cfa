"""The layering docs/ARCHITECTURE.md promises, checked on the source: decisions pure, I/O at the edge."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fleetwatch"

# What the pure core may import besides the standard library's pure modules.
CORE_ALLOWED_THIRD_PARTY = {"msgspec", "pydantic", "mypy_extensions"}  # the last: mypyc_attr, no I/O
CORE_ALLOWED_OWN = ("fleetwatch.core", "fleetwatch.errors", "fleetwatch.config")
# Standard-library modules that do I/O, concurrency or logging: never in core.
CORE_FORBIDDEN_STDLIB = {"asyncio", "socket", "logging", "sqlite3", "threading", "subprocess", "os",
                         "time", "random", "selectors", "ssl", "http", "urllib", "io", "shutil"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted((PACKAGE / "core").glob("*.py")), ids=lambda p: p.name)
def test_core_does_no_io(path: Path) -> None:
    """core/ imports only pure stdlib modules, msgspec/pydantic and its own kin: no asyncio, sockets, files, logs."""
    for module in imported_modules(path):
        top = module.split(".")[0]
        if module == "__future__" or module.startswith(CORE_ALLOWED_OWN):
            continue
        if top in sys.stdlib_module_names:
            assert top not in CORE_FORBIDDEN_STDLIB, f"{path.name} imports {module}"
            continue
        assert top in CORE_ALLOWED_THIRD_PARTY, f"{path.name} imports {module}"


@pytest.mark.parametrize("path", sorted((PACKAGE / "adapters").glob("*.py")), ids=lambda p: p.name)
def test_adapters_never_import_each_other(path: Path) -> None:
    """An adapter can be swapped alone: none imports another (only pipeline and app see them all)."""
    for module in imported_modules(path):
        assert not module.startswith("fleetwatch.adapters"), f"{path.name} imports {module}"
        assert module not in ("fleetwatch.pipeline", "fleetwatch.app"), f"{path.name} imports {module}"


def test_only_the_mqtt_adapter_knows_the_mqtt_client() -> None:
    """Swapping the MQTT client touches one file (docs/decisions/0006-adapter-on-the-lean-client.md):
    besides the client itself only adapters/mqtt.py imports fleetwatch.mqtt5, and nothing imports
    gmqtt any more."""
    users = sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
                   if p.parent.name != "mqtt5"
                   and any(m.startswith("fleetwatch.mqtt5") for m in imported_modules(p)))
    assert users == ["adapters/mqtt.py"]
    assert not [p for p in PACKAGE.rglob("*.py") if any(m.split(".")[0] == "gmqtt" for m in imported_modules(p))]


def test_the_http11_client_is_the_webhook_workers_alone_and_knows_nothing_of_fleetwatch() -> None:
    """fleetwatch/http11.py is a plain HTTP/1.1 client (docs/decisions/0009-lean-webhook-client.md):
    it imports nothing of fleetwatch, and only the webhook adapter uses it."""
    assert not [m for m in imported_modules(PACKAGE / "http11.py") if m.startswith("fleetwatch")]
    users = sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
                   if "fleetwatch.http11" in imported_modules(p))
    assert users == ["adapters/webhooks.py"]


NEUTRAL_STORE_CODE = [*sorted((PACKAGE / "storage").glob("*.py")), PACKAGE / "testing.py"]
DATABASE_DRIVERS = {"sqlite3", "aiosqlite", "asyncpg"}


@pytest.mark.parametrize("path", NEUTRAL_STORE_CODE, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_shared_store_code_knows_no_database(path: Path) -> None:
    """fleetwatch/storage/ (and the fake store) is what every backend shares: it imports no adapter,
    no database driver, and neither pipeline nor app, so any backend can use it and none owns it."""
    for module in imported_modules(path):
        assert not module.startswith("fleetwatch.adapters"), f"{path.name} imports {module}"
        assert module not in ("fleetwatch.pipeline", "fleetwatch.app"), f"{path.name} imports {module}"
        assert module.split(".")[0] not in DATABASE_DRIVERS, f"{path.name} imports {module}"


@pytest.mark.parametrize(("driver", "adapter"), [("asyncpg", "adapters/postgres.py"),
                                                 ("aiosqlite", "adapters/sqlite.py")])
def test_each_database_driver_lives_in_one_adapter(driver: str, adapter: str) -> None:
    """Swapping a database driver touches one file; everything else sees the store port (ports.py)."""
    users = sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
                   if any(m.split(".")[0] == driver for m in imported_modules(p)))
    assert users == [adapter]


@pytest.mark.parametrize("path", sorted((PACKAGE / "mqtt5").glob("*.py")), ids=lambda p: p.name)
def test_the_mqtt5_client_knows_nothing_of_fleetwatch(path: Path) -> None:
    """fleetwatch.mqtt5 is a plain MQTT client: an adapter uses it, it uses no adapter, core or pipeline."""
    for module in imported_modules(path):
        if module.startswith("fleetwatch"):
            assert module.startswith("fleetwatch.mqtt5"), f"{path.name} imports {module}"


def test_the_mqtt5_codec_does_no_io() -> None:
    """The packet codec is pure, so it is tested without a broker."""
    for module in imported_modules(PACKAGE / "mqtt5" / "codec.py"):
        top = module.split(".")[0]
        assert top == "__future__" or (top in sys.stdlib_module_names and top not in CORE_FORBIDDEN_STDLIB), module


def test_nothing_stops_processes_by_name() -> None:
    """Tests, scripts and the package stop only the processes they started, by pid: no pkill,
    killall or pgrep-and-kill by name, which would stop an operator's own Prometheus or broker."""
    repo = PACKAGE.parent
    tracked = subprocess.run(["git", "ls-files"], cwd=repo, capture_output=True, text=True, check=True).stdout
    by_name = re.compile(r"\b(pkill|killall)\b|pgrep[^\n|]*\|\s*xargs\s+kill")
    offenders = []
    for name in tracked.splitlines():
        path = repo / name
        if path.suffix in {".py", ".sh", ".toml", ".yml", ".yaml", ".service", ""} and path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace")
            offenders += [f"{name}: {m[0]}" for m in by_name.finditer(text)
                          if path != Path(__file__).resolve()]
    assert offenders == []
