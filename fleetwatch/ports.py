"""The ports between the pipeline and the outside world.

Each is a small Protocol so that swapping an implementation (another MQTT library,
PostgreSQL instead of SQLite) touches one adapter module and nothing else.
"""

from __future__ import annotations

import asyncio
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
