"""The ports between the pipeline and the outside world.

Each is a small Protocol so that swapping an implementation (another MQTT library,
PostgreSQL instead of SQLite) touches one adapter module and nothing else.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Final, Protocol

MQTT5_CONNACK_REASONS: Final[dict[int, str]] = {
    0x80: "unspecified_error", 0x81: "malformed_packet", 0x82: "protocol_error",
    0x83: "implementation_specific_error", 0x84: "unsupported_protocol_version",
    0x85: "client_identifier_not_valid", 0x86: "bad_user_name_or_password", 0x87: "not_authorized",
    0x88: "server_unavailable", 0x89: "server_busy", 0x8A: "banned", 0x8C: "bad_authentication_method",
    0x90: "topic_name_invalid", 0x95: "packet_too_large", 0x97: "quota_exceeded",
    0x99: "payload_format_invalid", 0x9A: "retain_not_supported", 0x9B: "qos_not_supported",
    0x9C: "use_another_server", 0x9D: "server_moved", 0x9F: "connection_rate_exceeded",
}
"""The MQTT 5 CONNACK refusal reason codes (MQTT 5.0 §3.2.2.2) by their spec names."""

CONNECT_FAILURE_REASONS: Final[tuple[str, ...]] = (
    "unreachable", "tls", "timeout", "subscribe_refused", "other",
    *MQTT5_CONNACK_REASONS.values(),
)
"""Every value of ``fleetwatch_mqtt_connect_failures_total{reason}`` (all present from the
start): the broker's own CONNACK reasons, and what can fail around them (no TCP
connection, a TLS handshake or certificate failure, no answer in time, a refused
subscription, anything else)."""


@dataclass(frozen=True, slots=True)
class ConnectFailure:
    """Why the last attempt to connect to the broker failed.

    ``reason`` is one of CONNECT_FAILURE_REASONS (a bounded metric label); ``detail`` is
    what the broker or the network said, for the log and ``/readyz``, never a secret.
    """

    reason: str
    detail: str


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

    @property
    def failure(self) -> ConnectFailure | None:
        """Why the source is not connected (None while connected or before the first attempt ends)."""
        ...

    async def run(self, sink: MessageSink) -> None:
        """Connect, subscribe and deliver; reconnect forever until ``stop()``.

        A refused login is retried like any other failure (the broker's password file may
        be fixed at any time); it is reported through ``failure``, never raised.
        """
        ...

    async def stop(self) -> None:
        """Stop taking messages (disconnect cleanly); returns when intake has stopped."""
        ...
