"""The store backends under one contract: SQLite, PostgreSQL and the in-memory fake.

``store`` is parametrised over all three; ``db`` over the two databases, for what only a
database has (migrations, files, reopening). Each test gets a fresh, empty store.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from fleetwatch.adapters.postgres import PostgresStore
from fleetwatch.adapters.sqlite import SqliteStore
from fleetwatch.ports import Store
from fleetwatch.storage.migrations import Dialect
from fleetwatch.testing import MemoryStore
from tests.services import Postgres

Opener = Callable[..., Awaitable[Any]]


@dataclass
class Db:
    """One database backend: how to open a store on it and how to look at it from outside."""

    name: str
    open: Opener
    """``await db.open(dead_letters_kept=...)`` opens (or reopens) the store on the same database."""
    location: str

    @property
    def dialect(self) -> Dialect:
        return "sqlite" if self.name == "sqlite" else "postgresql"

    async def rows(self, sql: str) -> list[tuple[Any, ...]]:
        if self.name == "sqlite":
            with sqlite3.connect(self.location) as lite:
                return list(lite.execute(sql))
        conn = await asyncpg.connect(self.location)
        try:
            return [tuple(r) for r in await conn.fetch(sql)]
        finally:
            await conn.close()

    async def execute(self, sql: str) -> None:
        if self.name == "sqlite":
            with sqlite3.connect(self.location) as lite:
                lite.execute(sql)
            return
        conn = await asyncpg.connect(self.location)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def columns(self, table: str) -> tuple[str, ...]:
        """The table's columns in their order."""
        if self.name == "sqlite":
            return tuple(r[1] for r in await self.rows(f"PRAGMA table_info({table})"))
        return tuple(r[0] for r in await self.rows(
            "SELECT column_name FROM information_schema.columns "
            f"WHERE table_name = '{table}' AND table_schema = current_schema() ORDER BY ordinal_position"))


def make_db(name: str, tmp_path: Path, request: pytest.FixtureRequest) -> Db:
    if name == "sqlite":
        path = str(tmp_path / "nested" / "dir" / "fleetwatch.db")

        async def open_sqlite(**kw: Any) -> SqliteStore:
            return await SqliteStore.open(path, **kw)

        return Db(name, open_sqlite, path)
    pg: Postgres = request.getfixturevalue("postgres")
    url = pg.new_database("store")

    async def open_postgres(**kw: Any) -> PostgresStore:
        return await PostgresStore.open(url, **kw)

    return Db(name, open_postgres, url)


async def set_lease(store: Any, db: Db | None, token: int) -> None:
    """Put ``token`` in the lease row, as a takeover by another instance would."""
    if db is None:
        store.set_lease(token)
        return
    await db.execute("DELETE FROM leases WHERE name = 'active'")
    await db.execute(f"INSERT INTO leases (name, holder, token, expires_at) VALUES ('active', 'other', {token}, 0)")


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Db:
    return make_db(str(request.param), tmp_path, request)


@pytest.fixture(params=["sqlite", "postgresql", "memory"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_db(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Db | None:
    """The database behind ``store`` (None for the fake)."""
    return None if kind == "memory" else make_db(kind, tmp_path, request)


@pytest.fixture
async def store(store_db: Db | None) -> AsyncIterator[Store]:
    """A fresh store of each backend, keeping 5 dead letters."""
    s: Store = MemoryStore(dead_letters_kept=5) if store_db is None else await store_db.open(dead_letters_kept=5)
    yield s
    await s.close()
