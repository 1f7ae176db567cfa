"""The MQTT MessageSource, on gmqtt over MQTT 5 (docs/decisions/0001-gmqtt.md).

Why the few overrides of gmqtt below:

* **Acknowledge after commit.** With ``optimistic_acknowledgement=False`` gmqtt would
  only PUBACK after an *async* ``on_message`` finishes, which means one asyncio task
  per message. We instead hand every message to the sink synchronously and send the
  PUBACK of a QoS 1 delivery from the done-callback of the future the sink returns (the
  future of the store batch holding it). No task per message; nothing acknowledged
  before it is durable.
* **Our reconnect policy.** gmqtt's own reconnect uses a fixed delay; fleetwatch
  reconnects forever with jittered exponential backoff, logs each state change once
  and counts reconnects, so gmqtt's automatic reconnect is switched off.
* **A refused login is not fatal.** A wrong password, a client the broker does not
  authorise or a broker that is not up yet are all retried with the same backoff: the
  operator can fix the broker's password file or ACL without restarting fleetwatch. Each
  failed attempt is classified (the CONNACK reason code's name, or ``unreachable``,
  ``tls``, ``timeout``, ...; ``ports.CONNECT_FAILURE_REASONS``), counted by the
  ``on_connect_failed`` callback, logged once per change of reason, and kept in
  ``failure`` for ``/readyz``. Only unreadable TLS files stop the daemon, at start
  (``credentials.mqtt_tls_context``): retrying cannot make a missing file appear.

The session is persistent (clean start off, a session expiry), so QoS 1 messages
published while the daemon is away are queued by the broker and delivered afterwards.

**Publishing** (the terminals' retained notices, CONTRACT §5) goes through the same
connection: :meth:`GmqttSource.publish` queues a retained QoS 1 message, at most
``mqtt.publish_max_inflight`` wait for their PUBACK at once, a newer payload for a topic
replaces an older one still queued (a screen only needs its latest state), and whatever
was in flight when the connection dropped is sent again after the reconnect. The
``on_acked`` callback runs once the broker has the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import structlog
from gmqtt import Client, Message, Subscription
from gmqtt.mqtt.constants import MQTTv50
from gmqtt.mqtt.handler import MQTTConnectError

from fleetwatch.config import MqttSettings
from fleetwatch.credentials import mqtt_tls_context
from fleetwatch.logs import RateLimitedLog
from fleetwatch.ports import MQTT5_CONNACK_REASONS, ConnectFailure, MessageSink

log = structlog.get_logger("fleetwatch.mqtt")

Acked = Callable[[], None]

TOPIC_SUFFIXES = ("term/+/heartbeat", "term/+/txn", "term/+/batch", "term/+/state", "host/settlement")


def subscription_topics(prefix: str) -> list[str]:
    """The contract's five topic families under ``prefix``."""
    return [f"{prefix}/{suffix}" for suffix in TOPIC_SUFFIXES]


MQTT311_CONNACK_REASONS: Final[dict[int, str]] = {
    1: "unsupported_protocol_version", 2: "client_identifier_not_valid", 3: "server_unavailable",
    4: "bad_user_name_or_password", 5: "not_authorized", 10: "malformed_packet",
}
"""MQTT 3.1.1's return codes (gmqtt falls back to 3.1.1 for an old broker; 10 is gmqtt's
own "cannot parse the CONNACK"), named as their MQTT 5 counterparts."""


class SubscriptionRefused(Exception):
    """The broker answered our SUBSCRIBE with a failure code (usually its ACL)."""


def connect_failure(exc: BaseException) -> ConnectFailure:
    """Classify a failed connection attempt into a bounded reason and the peer's own words."""
    if isinstance(exc, MQTTConnectError):
        code = getattr(exc, "_code", None)
        name = MQTT5_CONNACK_REASONS.get(code) or MQTT311_CONNACK_REASONS.get(code) or "other"  # type: ignore[arg-type]
        return ConnectFailure(name, f"broker refused the connection: {exc.message}")
    if isinstance(exc, ssl.SSLError):  # before OSError: SSLError is one
        return ConnectFailure("tls", f"TLS failed: {getattr(exc, 'verify_message', None) or exc.reason or exc}")
    if isinstance(exc, TimeoutError):
        return ConnectFailure("timeout", "no answer from the broker in time")
    if isinstance(exc, OSError):
        return ConnectFailure("unreachable", f"cannot reach the broker: {exc.strerror or exc}")
    if isinstance(exc, SubscriptionRefused):
        return ConnectFailure("subscribe_refused", f"broker refused the subscription: {exc}")
    return ConnectFailure("other", f"{type(exc).__name__}: {exc}")


def backoff_delay(attempt: int, cap: float) -> float:
    """Full-jitter exponential backoff: uniform(0, min(cap, 0.5 * 2**attempt)).

    Jitter keeps a fleet of daemons (or a restarted broker's clients) from
    reconnecting in lockstep.
    """
    return random.uniform(0.0, min(cap, 0.5 * 2 ** min(attempt, 16)))


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    tls: ssl.SSLContext | None
    username: str | None
    password: str | None


def broker_address(settings: MqttSettings) -> BrokerAddress:
    """Parse ``mqtt.url`` and the TLS/credential settings into connection arguments."""
    url = urlsplit(settings.url)
    secure = url.scheme == "mqtts"
    tls_context = mqtt_tls_context(settings)  # CredentialFileError naming the file
    username = settings.username or (unquote(url.username) if url.username else None)
    password: str | None = None
    if settings.password is not None:
        password = settings.password.get_secret_value()
    elif url.password:
        password = unquote(url.password)
    return BrokerAddress(
        host=url.hostname or "127.0.0.1",
        port=url.port or (8883 if secure else 1883),
        tls=tls_context,
        username=username,
        password=password,
    )


@dataclass(slots=True)
class Outbox:
    """Outgoing retained QoS 1 messages: newest payload per topic, a bounded in-flight window.

    One message per topic is in flight at a time, so a topic's messages reach the broker
    in order; a newer payload queued meanwhile is sent after the PUBACK of the older.
    """

    limit: int
    queued: dict[str, tuple[bytes, Acked | None]] = field(default_factory=dict)
    inflight: dict[int, tuple[str, bytes, Acked | None]] = field(default_factory=dict)
    busy: set[str] = field(default_factory=set)

    def put(self, topic: str, payload: bytes, on_acked: Acked | None) -> None:
        self.queued.pop(topic, None)  # the newest goes to the back of the line
        self.queued[topic] = (payload, on_acked)

    def sendable(self) -> list[tuple[str, bytes, Acked | None]]:
        """Take what may be sent now (room in the window, topic not in flight)."""
        room = self.limit - len(self.inflight)
        if room <= 0 or not self.queued:
            return []
        picked: list[str] = []
        for topic in self.queued:  # stops after `room` picks: at most room + len(busy) looked at
            if topic not in self.busy:
                picked.append(topic)
                if len(picked) >= room:
                    break
        return [(topic, *self.queued.pop(topic)) for topic in picked]

    def sent(self, mid: int, topic: str, payload: bytes, on_acked: Acked | None) -> None:
        self.inflight[mid] = (topic, payload, on_acked)
        self.busy.add(topic)

    def acked(self, mid: int) -> tuple[str, bytes, Acked | None] | None:
        found = self.inflight.pop(mid, None)
        if found is not None:
            self.busy.discard(found[0])
        return found

    def requeue(self) -> None:
        """The connection dropped: what was in flight goes back, unless something newer is queued."""
        for topic, payload, on_acked in self.inflight.values():
            if topic not in self.queued:
                self.queued[topic] = (payload, on_acked)
        self.inflight.clear()
        self.busy.clear()

    def __len__(self) -> int:
        return len(self.queued) + len(self.inflight)


class _ManualReconnectClient(Client):  # type: ignore[misc]  # gmqtt ships no type hints
    """gmqtt Client whose built-in reconnect is disabled: GmqttSource owns that loop."""

    async def reconnect(self, delay: bool = False) -> None:
        return None


class GmqttSource:
    """Subscribes to the contract's topics and feeds a MessageSink, reconnecting forever."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        on_connected_change: Callable[[bool], None] | None = None,
        on_reconnect: Callable[[], None] | None = None,
        on_connect_failed: Callable[[ConnectFailure], None] | None = None,
    ) -> None:
        self._settings = settings
        self._address = broker_address(settings)
        self._topics = subscription_topics(settings.topic_prefix)
        self._on_connected_change = on_connected_change or (lambda _up: None)
        self._on_reconnect = on_reconnect or (lambda: None)
        self._on_connect_failed = on_connect_failed or (lambda _failure: None)
        self._client: Any = None
        self._connected = False
        self._failure: ConnectFailure | None = None
        self._refusal: str | None = None
        self._stopping = asyncio.Event()
        self._lost = asyncio.Event()
        self._subscribed = asyncio.Event()
        self._sink: MessageSink | None = None
        self._outbox = Outbox(settings.publish_max_inflight)
        self._refused_log = RateLimitedLog(60.0)

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def failure(self) -> ConnectFailure | None:
        return self._failure

    async def run(self, sink: MessageSink) -> None:
        self._sink = sink
        attempt = 0
        while not self._stopping.is_set():
            try:
                await self._connect_and_subscribe()
            except Exception as exc:  # every failure is retried: the broker may be restarting or be fixed
                failure = connect_failure(exc)
                self._on_connect_failed(failure)
                if failure != self._failure:
                    log.warning("mqtt connect failed, retrying with backoff", reason=failure.reason,
                                detail=failure.detail, url=self._safe_url())
                    self._failure = failure
                await self._drop_client()
                attempt += 1
                await self._sleep_or_stop(backoff_delay(attempt, self._settings.reconnect_max_s))
                continue
            if attempt:
                self._on_reconnect()
            if self._failure is not None:
                log.info("mqtt connected after failed attempts", attempts=attempt, last_reason=self._failure.reason)
            attempt, self._failure = 0, None
            self._set_connected(True)
            self._drain()
            await self._wait_lost_or_stop()
            self._set_connected(False)
            self._outbox.requeue()
            if not self._stopping.is_set():
                log.warning("mqtt connection lost, reconnecting")
                attempt = 1
                await self._drop_client()
                await self._sleep_or_stop(backoff_delay(attempt, self._settings.reconnect_max_s))

    # ---- publishing (MessagePublisher) ----------------------------------------------

    def publish(self, topic: str, payload: bytes, *, on_acked: Acked | None = None) -> None:
        """Queue a retained QoS 1 message (b"" clears the retained one); sent when connected."""
        self._outbox.put(topic, payload, on_acked)
        self._drain()

    @property
    def publish_backlog(self) -> int:
        """Messages queued or in flight."""
        return len(self._outbox)

    def _drain(self) -> None:
        client = self._client
        if client is None or not self._connected:
            return
        for topic, payload, on_acked in self._outbox.sendable():
            try:
                mid, _ = client._connection.publish(Message(topic, payload, qos=1, retain=True))
            except Exception:  # the transport is closing: send again after the reconnect
                self._outbox.put(topic, payload, on_acked)
                return
            self._outbox.sent(mid, topic, payload, on_acked)

    def _puback_handler(self, client: Any) -> Callable[[int, bytes], None]:
        handler = client._package_handler
        original = handler._handle_puback_packet

        def handle(cmd: int, packet: bytes) -> None:
            original(cmd, packet)
            if client is not self._client or len(packet) < 2:
                return
            (mid,) = struct.unpack("!H", packet[:2])
            reason = packet[2] if len(packet) > 2 else 0
            done = self._outbox.acked(mid)
            if done is not None:
                topic, _, on_acked = done
                if reason >= 0x80:
                    # Refused (0x87: the ACL does not let us write it): retrying cannot help.
                    if self._refused_log.should_log("puback")[0]:
                        log.error("broker refused a notice publish", topic=topic, reason_code=hex(reason))
                elif on_acked is not None:
                    on_acked()
            self._drain()

        return handle

    async def stop(self) -> None:
        self._stopping.set()
        client = self._client
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), timeout=2)
        self._set_connected(False)

    # ---- connection ---------------------------------------------------------------

    async def _connect_and_subscribe(self) -> None:
        self._lost.clear()
        self._subscribed.clear()
        self._refusal = None
        client = _ManualReconnectClient(
            self._settings.client_id,
            clean_session=False,
            optimistic_acknowledgement=False,
            session_expiry_interval=self._settings.session_expiry_s,
            receive_maximum=self._settings.receive_maximum,
        )
        client.on_message = self._on_qos0_message
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        # QoS 1 deliveries go through our handler: ack from the commit future, no task.
        client._package_handler._handle_qos_1_publish_packet = self._qos1_handler(client)
        client._package_handler._handle_puback_packet = self._puback_handler(client)
        if self._address.username is not None:
            client.set_auth_credentials(self._address.username, self._address.password)
        self._client = client
        await asyncio.wait_for(
            client.connect(
                self._address.host,
                self._address.port,
                ssl=self._address.tls or False,
                keepalive=self._settings.keepalive_s,
                version=MQTTv50,
            ),
            timeout=10,
        )
        client.subscribe([Subscription(topic, qos=1) for topic in self._topics])
        await asyncio.wait_for(self._subscribed.wait(), timeout=10)
        if self._refusal is not None:
            raise SubscriptionRefused(self._refusal)
        log.info("mqtt subscribed", url=self._safe_url(), topics=len(self._topics))

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), timeout=1)

    async def _wait_lost_or_stop(self) -> None:
        lost = asyncio.ensure_future(self._lost.wait())
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({lost, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            stop.cancel()

    async def _sleep_or_stop(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    def _set_connected(self, up: bool) -> None:
        if up != self._connected:
            self._connected = up
            self._on_connected_change(up)

    def _safe_url(self) -> str:
        return f"{'mqtts' if self._address.tls else 'mqtt'}://{self._address.host}:{self._address.port}"

    # ---- gmqtt callbacks ----------------------------------------------------------

    def _on_disconnect(self, client: Any, packet: Any, exc: Any = None) -> None:
        if client is self._client:
            self._lost.set()

    def _on_subscribe(self, client: Any, mid: int, qos: Any, properties: Any) -> None:
        failed = [q for q in qos if q >= 0x80]
        if failed:
            self._refusal = ", ".join(MQTT5_CONNACK_REASONS.get(q, hex(q)) for q in sorted(set(failed)))
        self._subscribed.set()

    def _on_qos0_message(self, client: Any, topic: str, payload: bytes, qos: int, properties: Any) -> None:
        """QoS 0 (and, via gmqtt, QoS 2, which the contract does not use) deliveries."""
        assert self._sink is not None
        self._sink(topic, payload, qos, bool(properties.get("retain")))

    def _qos1_handler(self, client: Any) -> Callable[[int, bytes, str, dict[str, Any]], None]:
        handler = client._package_handler

        def handle(mid: int, payload: bytes, topic: str, properties: dict[str, Any]) -> None:
            assert self._sink is not None
            if isinstance(topic, bytes):  # gmqtt passes undecodable topics through as bytes
                topic = topic.decode("utf-8", "replace")
            durable = self._sink(topic, payload, 1, bool(properties.get("retain")))
            if durable is None:
                handler._send_puback(mid)
                return

            def ack(future: asyncio.Future[None]) -> None:
                # A failed commit is never acknowledged: the broker redelivers it.
                if not future.cancelled() and future.exception() is None and client is self._client:
                    handler._send_puback(mid)

            durable.add_done_callback(ack)

        return handle
