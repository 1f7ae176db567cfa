"""Compiles fleetwatch's hot path with mypyc when it can; pure Python otherwise.

Everything else about the package is in pyproject.toml. The modules listed in
fleetwatch/compiled.txt are the ones every message goes through (decode, the engine and
the rules it runs, the MQTT frame parser); compiled, they take about a quarter less CPU
per message (docs/decisions/0010-compile-the-hot-path-with-mypyc.md). The build falls back
to plain Python, with one line saying why, when FLEETWATCH_PURE=1 is set, when mypyc cannot
be imported or when there is no C compiler: such a machine still gets a working daemon. A
compiler that is there but fails stops the build (FLEETWATCH_PURE=1 gets past it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import sys
import sysconfig
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
LIST = HERE / "fleetwatch" / "compiled.txt"
MANIFEST = "compiled-sources.json"
"""Written beside the compiled modules: each one's source hash, for the import guard
in fleetwatch/_compiled.py (a compiled module whose source changed is not used)."""


def compiled_modules() -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in LIST.read_text().splitlines())
    return [line for line in lines if line]


def source_hashes(root: Path) -> dict[str, str]:
    return {
        module: hashlib.sha256((root / module).read_bytes()).hexdigest()
        for module in compiled_modules()
    }


class BuildWithManifest(build_ext):
    """build_ext that also writes the manifest of what it compiled, where the modules land."""

    def run(self) -> None:
        super().run()
        target = HERE if self.inplace else Path(self.build_lib)
        manifest = target / "fleetwatch" / MANIFEST
        manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_text(json.dumps(source_hashes(HERE), indent=1, sort_keys=True) + "\n")


def extensions() -> list[Any]:
    """mypyc's extensions, or none (then an in-place manifest of an older compiled build is
    removed, so fleetwatch/_compiled.py uses none of its extensions)."""
    built = _compiled_extensions()
    if not built:
        (HERE / "fleetwatch" / MANIFEST).unlink(missing_ok=True)
    return built


def _compiled_extensions() -> list[Any]:
    if os.environ.get("FLEETWATCH_PURE") == "1":
        print("fleetwatch: FLEETWATCH_PURE=1, building without mypyc", file=sys.stderr)
        return []
    compiler = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")[:1]
    if not compiler or shutil.which(compiler[0]) is None:
        print(f"fleetwatch: no C compiler ({' '.join(compiler) or 'CC unset'}); building pure Python", file=sys.stderr)
        return []
    try:
        from mypyc.build import mypycify  # noqa: PLC0415 - optional: only a compiled build needs mypy
    except ImportError as exc:
        print(f"fleetwatch: mypyc is not available ({exc}); building pure Python", file=sys.stderr)
        return []
    return list(mypycify(compiled_modules(), opt_level="3", debug_level="0"))


ext_modules = extensions()
setup(ext_modules=ext_modules, cmdclass={"build_ext": BuildWithManifest} if ext_modules else {})
