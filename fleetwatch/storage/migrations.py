"""Versioned schema files, one folder per SQL dialect, and the rules for applying them.

``schema/<dialect>/NNNN_name.sql``: numbered from 0001 without gaps, each applied once in
its own transaction together with its row in ``schema_version``. Both dialects ship the
same numbers and names (a test checks it), so a version number means the same tables on
SQLite and on PostgreSQL; the files differ only where the dialects must (the generated
``id`` column, ``COLLATE "C"`` on PostgreSQL's text columns). A store whose schema is newer
than the code knows is refused, never guessed at: it was written by a newer fleetwatch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Final, Literal

from fleetwatch.errors import StoreError

Dialect = Literal["sqlite", "postgresql"]
DIALECTS: Final[tuple[Dialect, ...]] = ("sqlite", "postgresql")

_MIGRATION_FILE: Final = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

SCHEMA_VERSION_DDL: Final = (
    "CREATE TABLE IF NOT EXISTS schema_version ("
    "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
)
"""The bookkeeping table, spelled the same in both dialects."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations(dialect: Dialect) -> list[Migration]:
    """The migration files shipped in the package for ``dialect``, in order."""
    folder = resources.files("fleetwatch.storage").joinpath("schema", dialect)
    found = []
    for entry in folder.iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), entry.name, entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise StoreError(f"{dialect} migration files are not numbered 0001.. without gaps: "
                         f"{[m.name for m in found]}")
    return found


def pending(known: list[Migration], current: int, where: str) -> list[Migration]:
    """The migrations a store at schema version ``current`` still needs.

    StoreError when ``current`` is newer than every migration this code ships: the store
    was written by a newer fleetwatch, and running older code against it could lose data.
    """
    newest = known[-1].version if known else 0
    if current > newest:
        raise StoreError(
            f"{where} has schema version {current}, newer than this fleetwatch knows ({newest}); "
            "run the newer fleetwatch or restore a backup"
        )
    return known[current:]
