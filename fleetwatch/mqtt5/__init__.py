"""A lean MQTT 5 client: a pure packet codec (:mod:`.codec`) and an asyncio client (:mod:`.client`).

Not an adapter: the MQTT adapter uses it behind the ``MessageSource`` port, and the
simulator and benchmarks may use it too. See docs/decisions/0003-lean-mqtt5-client.md.
"""

from fleetwatch.mqtt5.client import (
    Client,
    ConnectionLost,
    ConnectRefused,
    ConnectResult,
    KeepaliveTimeout,
    LoginRefused,
    MqttError,
    PublishRefused,
    ServerDisconnected,
    SubscribeRefused,
)
from fleetwatch.mqtt5.codec import ConnectOptions, ProtocolViolation, reason_name

__all__ = [
    "Client",
    "ConnectOptions",
    "ConnectRefused",
    "ConnectResult",
    "ConnectionLost",
    "KeepaliveTimeout",
    "LoginRefused",
    "MqttError",
    "ProtocolViolation",
    "PublishRefused",
    "ServerDisconnected",
    "SubscribeRefused",
    "reason_name",
]
