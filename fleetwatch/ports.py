"""The ports between the pipeline and the outside world.

Each is a small Protocol so that swapping an implementation (another MQTT library,
PostgreSQL instead of SQLite) touches one adapter module and nothing else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol


class MessageSink(Protocol):
    """Takes one delivered message, synchronously, in the event loop thread.

    Returns None when the message needs no acknowledgement wait (QoS 0, or already
    durable), or a future that completes once the message's effects are committed: the
    source acknowledges a QoS 1 delivery only then, so a crash never loses it.
    """

    def __call__(self, topic: str, payload: bytes, qos: int, retained: bool) -> asyncio.Future[None] | None:
        ...


class MessageSource(Protocol):
    """A subscription that delivers the contract's topics to a sink until stopped."""

    @property
    def connected(self) -> bool:
        """True while subscribed and receiving."""
        ...

    async def run(self, sink: MessageSink) -> None:
        """Connect, subscribe and deliver; reconnect forever until ``stop()``."""
        ...

    async def stop(self) -> None:
        """Stop taking messages (disconnect cleanly); returns when intake has stopped."""
        ...


class MessagePublisher(Protocol):
    """Retained QoS 1 publishes through the daemon's own connection (terminal notices).

    ``publish`` never blocks: the message is queued (a newer payload for the same topic
    replaces one still waiting), sent while connected, sent again after a reconnect if
    it was in flight, and ``on_acked`` runs once the broker has acknowledged it. An
    empty payload clears the topic's retained message.
    """

    def publish(self, topic: str, payload: bytes, *, on_acked: Callable[[], None] | None = None) -> None:
        ...

    @property
    def publish_backlog(self) -> int:
        """Messages queued or waiting for their acknowledgement."""
        ...
