"""Session fixtures: one private Mosquitto and one private PostgreSQL per test session, a daemon per test.

A test runs its daemon on SQLite unless it is parametrised over ``backend`` (indirectly,
with ``tests.services.BOTH_BACKENDS``): then once on SQLite and once on a fresh PostgreSQL database.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import Broker, Daemon, Postgres

_prefixes = itertools.count()


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A real Mosquitto on a free loopback port, owned by this test session."""
    b = Broker(tmp_path_factory.mktemp("mosquitto"))
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A real PostgreSQL cluster (initdb in a temp folder, free port), owned by this test session."""
    pg = Postgres()
    try:
        pg.start()
        yield pg
    finally:
        pg.stop()


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The store backend of this test's daemon: sqlite unless parametrised (BOTH_BACKENDS)."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def store_url(backend: str, request: pytest.FixtureRequest) -> str | None:
    """None for SQLite (a file in the test's folder), else a fresh PostgreSQL database."""
    if backend == "sqlite":
        return None
    pg: Postgres = request.getfixturevalue("postgres")
    return pg.new_database()


@pytest.fixture
def prefix() -> str:
    """A topic prefix no other test uses, so tests sharing the broker never see each other."""
    return f"t{next(_prefixes)}/fleet/v1"


@pytest.fixture
def daemon(
    tmp_path: Path, broker: Broker, prefix: str, store_url: str | None, request: pytest.FixtureRequest,
) -> Iterator[Daemon]:
    """A daemon (not started) wired to the session broker and a fresh store."""
    client_id = f"fw-{prefix.split('/', maxsplit=1)[0]}-{request.node.name[:36]}"
    d = Daemon(tmp_path, broker.url, prefix=prefix, client_id=client_id, store_url=store_url)
    yield d
    if d.proc is not None:
        d.kill()
