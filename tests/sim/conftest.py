"""Fixtures for the simulator tests: a private Mosquitto per module.

Per module rather than the session broker: the simulator publishes under the default
prefix with retained states, which other tests must never see.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.services import Broker


@pytest.fixture(scope="module")
def broker_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A Mosquitto of our own (never the shared one on 1883), with queues big enough not to drop."""
    b = Broker(tmp_path_factory.mktemp("mosquitto"))
    b.start()
    yield b.port
    b.stop()
