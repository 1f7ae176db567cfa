"""Session fixtures: one private Mosquitto per test session, a daemon per test."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import Broker, Daemon

_prefixes = itertools.count()


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A real Mosquitto on a free loopback port, owned by this test session."""
    b = Broker(tmp_path_factory.mktemp("mosquitto"))
    b.start()
    yield b
    b.stop()


@pytest.fixture
def prefix() -> str:
    """A topic prefix no other test uses, so tests sharing the broker never see each other."""
    return f"t{next(_prefixes)}/fleet/v1"


@pytest.fixture
def daemon(tmp_path: Path, broker: Broker, prefix: str, request: pytest.FixtureRequest) -> Iterator[Daemon]:
    """A daemon (not started) wired to the session broker and a fresh store."""
    d = Daemon(tmp_path, broker.url, prefix=prefix, client_id=f"fw-{request.node.name[:40]}")
    yield d
    if d.proc is not None:
        d.kill()
