"""The compiled hot path is used only when it matches its sources (fleetwatch/_compiled.py)."""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import fleetwatch
from fleetwatch import _compiled

ROOT = Path(fleetwatch.__file__).resolve().parent.parent
LISTED = [line.split("#", 1)[0].strip() for line in (ROOT / "fleetwatch" / "compiled.txt").read_text().splitlines()]
LISTED = [m for m in LISTED if m]
REPORT = (
    "import json, fleetwatch, importlib\n"
    "mods = [m.removesuffix('.py').replace('/', '.') for m in json.loads(input())]\n"
    "print(json.dumps([fleetwatch.COMPILED, [importlib.import_module(m).__file__ for m in mods]]))\n"
)


def _import_in(tree: Path, *, env: dict[str, str] | None = None) -> tuple[bool, list[str], str]:
    """(COMPILED, file of each listed module, stderr) in a fresh interpreter importing from ``tree``."""
    run = subprocess.run([sys.executable, "-c", REPORT], input=json.dumps(LISTED), capture_output=True, text=True,
                         cwd=tree, env={**os.environ, "PYTHONPATH": str(tree), **(env or {})}, timeout=60, check=True)
    compiled, files = json.loads(run.stdout)
    return compiled, files, run.stderr


def _copy_of_the_install(tmp_path: Path) -> Path:
    """The package as installed here, with its compiled modules if it has them."""
    tree = (tmp_path / "tree").resolve()
    shutil.copytree(ROOT / "fleetwatch", tree / "fleetwatch", ignore=shutil.ignore_patterns("__pycache__"))
    for shared in ROOT.glob("*__mypyc*"):  # mypyc's shared library sits beside the package
        shutil.copy2(shared, tree / shared.name)
    return tree


def test_every_listed_module_exists() -> None:
    assert LISTED
    assert all((ROOT / m).is_file() for m in LISTED)


def test_a_changed_source_is_found_stale(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text("y = 2\n")
    manifest = {m: hashlib.sha256((tmp_path / m).read_bytes()).hexdigest() for m in ("a.py", "b.py")}
    assert _compiled.stale_sources(manifest, tmp_path) == []
    (tmp_path / "b.py").write_text("y = 3\n")
    assert _compiled.stale_sources(manifest, tmp_path) == ["b.py"]


def test_the_build_in_use_is_what_the_manifest_says() -> None:
    """Compiled: every listed module is its extension; not compiled: every one is its source."""
    compiled, files, stderr = _import_in(ROOT)
    assert compiled == _compiled.MANIFEST.exists()
    suffix = ".so" if compiled else ".py"
    assert all(f.endswith(suffix) for f in files), files
    assert stderr == ""


def test_one_stale_module_makes_every_listed_module_run_from_source(tmp_path: Path) -> None:
    tree = _copy_of_the_install(tmp_path)
    manifest = tree / "fleetwatch" / _compiled.MANIFEST.name
    hashes = json.loads(manifest.read_text()) if manifest.exists() else {
        m: hashlib.sha256((ROOT / m).read_bytes()).hexdigest() for m in LISTED}
    hashes["fleetwatch/core/engine.py"] = "0" * 64  # as if engine.py was edited after the build
    manifest.write_text(json.dumps(hashes))
    compiled, files, stderr = _import_in(tree)
    assert compiled is False
    assert files == [str(tree / m) for m in LISTED]
    assert "fleetwatch/core/engine.py changed since the build compiled it" in stderr


def test_fleetwatch_pure_runs_the_sources_without_a_word(tmp_path: Path) -> None:
    compiled, files, stderr = _import_in(_copy_of_the_install(tmp_path), env={"FLEETWATCH_PURE": "1"})
    assert compiled is False
    assert all(f.endswith(".py") for f in files)
    assert stderr == ""


def test_an_extension_left_over_from_an_older_build_is_never_imported(tmp_path: Path) -> None:
    """A module taken off compiled.txt keeps its old extension in an editable tree; that file
    (here: junk that would fail to load) must not shadow the source."""
    tree = _copy_of_the_install(tmp_path)
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    (tree / "fleetwatch" / f"timefmt{suffix}").write_bytes(b"not an extension")
    run = subprocess.run([sys.executable, "-c", "import fleetwatch.timefmt as m; print(m.__file__)"],
                         capture_output=True, text=True, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
                         timeout=60, check=True)
    assert run.stdout.strip() == str(tree / "fleetwatch" / "timefmt.py")
