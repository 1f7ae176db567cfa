"""Use the mypyc-compiled hot path only when it was built from the sources beside it.

setup.py compiles the modules in fleetwatch/compiled.txt and writes
``compiled-sources.json`` (each module's source hash) next to them. Python prefers an
extension module to the ``.py`` of the same name, so after an edit, a ``git pull`` or a
branch switch an editable install would silently run the old code. This module runs
first on ``import fleetwatch`` and, when any compiled module's source no longer matches
its hash, loads *every* compiled module from its source instead (all or none: compiled
modules call each other directly, so a mix would still run old code), saying so in one
line on stderr. An extension the last build did not list (left over from an older build)
is never used either. ``FLEETWATCH_PURE=1`` does the same on purpose, for comparing both
builds in one run (``python -m bench hotpath``).

Hashing about twenty files costs a millisecond or two per start.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

PACKAGE_DIR = Path(__file__).resolve().parent
MANIFEST = PACKAGE_DIR / "compiled-sources.json"


class _SourceFirst(importlib.abc.MetaPathFinder):
    """Finds the listed modules' ``.py`` files ahead of the compiled extensions."""

    def __init__(self, sources: dict[str, Path]) -> None:
        self.sources = sources

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        source = self.sources.get(fullname)
        return None if source is None else importlib.util.spec_from_file_location(fullname, source)


def _module_name(relative: str) -> str:
    return relative.removesuffix(".py").replace("/", ".")


def _manifest() -> dict[str, str]:
    try:
        data = json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def stale_sources(manifest: dict[str, str], root: Path) -> list[str]:
    """Compiled modules whose ``.py`` beside them differs from what was compiled."""
    stale = []
    for relative, digest in manifest.items():
        source = root / relative
        if source.exists() and hashlib.sha256(source.read_bytes()).hexdigest() != digest:
            stale.append(relative)
    return stale


def orphans(manifest: dict[str, str], root: Path) -> list[str]:
    """Sources with an extension beside them that the last build did not list (a module
    taken off fleetwatch/compiled.txt, or a build without mypyc over an older one)."""
    found = set()
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        for ext in (root / "fleetwatch").rglob(f"*{suffix}"):
            source = ext.with_name(ext.name.removesuffix(suffix) + ".py")
            if source.exists():
                found.add(source.relative_to(root).as_posix())
    return sorted(found - manifest.keys())


def choose() -> bool:
    """Install the source-first finder when some extensions must not be used; returns
    whether the compiled modules are in use."""
    manifest = _manifest()
    root = PACKAGE_DIR.parent
    left_over = orphans(manifest, root)
    if left_over:
        sys.meta_path.insert(0, _SourceFirst({_module_name(m): root / m for m in left_over}))
    if not manifest:
        return False
    sources = {_module_name(m): root / m for m in manifest if (root / m).exists()}
    if os.environ.get("FLEETWATCH_PURE") == "1":
        sys.meta_path.insert(0, _SourceFirst(sources))
        return False
    stale = stale_sources(manifest, root)
    if stale:
        sys.meta_path.insert(0, _SourceFirst(sources))
        print(f"fleetwatch: {stale[0]}{f' and {len(stale) - 1} more' if len(stale) > 1 else ''} changed since "
              "the build compiled it; running the pure-Python modules (pip install -e . compiles them again)",
              file=sys.stderr)
        return False
    return True


COMPILED = choose()
"""True when the mypyc-compiled hot path is what runs (the bench notes say which)."""
