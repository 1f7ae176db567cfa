"""The MQTT MessageSource, on our lean MQTT 5 client (docs/decisions/0006-adapter-on-the-lean-client.md).

What this adapter adds to :mod:`fleetwatch.mqtt5` (which only speaks the protocol):

* **Acknowledge after commit.** Every delivery is handed to the sink synchronously, from
  the client's parse loop: no task, no queue, no log call per message. A QoS 1 delivery
  is acknowledged from the done-callback of the future the sink returns (the future of
  the store batch holding it). All the QoS 1 deliveries of one batch share that future,
  so the adapter adds **one** callback per batch and it acknowledges the whole batch at
  once (the client writes those PUBACKs in one ``write``). A failed commit is never
  acknowledged (the broker redelivers; the engine drops a duplicate txn_id), and an ack
  is bound to the connection that delivered the message: after a reconnect the broker
  redelivers instead (DUP set), because the packet id may by then name another message.
* **Our reconnect policy.** The client never reconnects by itself; :meth:`MqttSource.run`
  reconnects forever with full-jitter exponential backoff, logs each state change once
  and counts reconnects. It connects only when ``run()`` is called, so a standby that
  never runs its source never takes the shared session over.
* **A refused login is not fatal.** A wrong password, a client the broker does not
  authorise or a broker that is not up yet are all retried with the same backoff: the
  operator can fix the broker's password file or ACL without restarting fleetwatch. Each
  failed attempt is classified (the CONNACK reason code's name, or ``unreachable``,
  ``tls``, ``timeout``, ...; ``ports.CONNECT_FAILURE_REASONS``), counted by the
  ``on_connect_failed`` callback, logged once per change of reason, and kept in
  ``failure`` for ``/readyz``. Only unreadable TLS files stop the daemon, at start
  (``credentials.mqtt_tls_context``): retrying cannot make a missing file appear.

The session is persistent (clean start off, a session expiry), so QoS 1 messages
published while the daemon is away are queued by the broker and delivered afterwards;
Receive Maximum (``mqtt.receive_maximum``) bounds what the broker sends us unacknowledged.

**Publishing** (the terminals' retained notices, CONTRACT §5) goes through the same
session: :meth:`MqttSource.publish` queues a retained QoS 1 message in the
:class:`Outbox`, which keeps only the newest payload per topic and one message per topic
in flight, at most ``mqtt.publish_max_inflight`` at once. Nothing is handed to the client
while disconnected (so a newer payload still replaces an older one); what was in flight
when the connection dropped is resent by the client, DUP set, after the reconnect. The
``on_acked`` callback runs once the broker has the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Final
from urllib.parse import unquote, urlsplit

import structlog

from fleetwatch.config import MqttSettings
from fleetwatch.credentials import mqtt_tls_context
from fleetwatch.logs import RateLimitedLog
from fleetwatch.mqtt5 import Client, ConnectOptions, ConnectRefused, MqttError, PublishRefused, SubscribeRefused
from fleetwatch.mqtt5.client import Connection
from fleetwatch.ports import MQTT5_CONNACK_REASONS, ConnectFailure, MessageSink

log = structlog.get_logger("fleetwatch.mqtt")

Acked = Callable[[], None]

TOPIC_SUFFIXES = ("term/+/heartbeat", "term/+/txn", "term/+/batch", "term/+/state", "host/settlement",
                  "host/terminal/+/status")

CONNECT_TIMEOUT_S: Final = 10.0
"""How long one attempt may take to get its CONNACK, and then its SUBACK."""


def subscription_topics(prefix: str) -> list[str]:
    """The contract's topic families under ``prefix`` (CONTRACT §1, and the acquirer's statuses of §7)."""
    return [f"{prefix}/{suffix}" for suffix in TOPIC_SUFFIXES]


def connect_failure(exc: BaseException) -> ConnectFailure:
    """Classify a failed connection attempt into a bounded reason and the peer's own words."""
    if isinstance(exc, ConnectRefused):  # LoginRefused too: the CONNACK's reason code
        return ConnectFailure(MQTT5_CONNACK_REASONS.get(exc.code, "other"), str(exc))
    if isinstance(exc, SubscribeRefused):
        return ConnectFailure("subscribe_refused", f"broker refused the subscription: {exc}")
    if isinstance(exc, ssl.SSLError):  # before OSError: SSLError is one
        return ConnectFailure("tls", f"TLS failed: {getattr(exc, 'verify_message', None) or exc.reason or exc}")
    if isinstance(exc, TimeoutError):
        return ConnectFailure("timeout", "no answer from the broker in time")
    if isinstance(exc, OSError):
        return ConnectFailure("unreachable", f"cannot reach the broker: {exc.strerror or exc}")
    if isinstance(exc, MqttError):
        return ConnectFailure("other", str(exc))
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


def connect_options(settings: MqttSettings, address: BrokerAddress) -> ConnectOptions:
    """CONNECT for the daemon's one persistent session (clean start off, a session expiry)."""
    return ConnectOptions(
        client_id=settings.client_id,
        keepalive=settings.keepalive_s,
        clean_start=False,
        session_expiry=settings.session_expiry_s,
        receive_maximum=settings.receive_maximum,
        username=address.username,
        password=address.password.encode("utf-8") if address.password is not None else None,
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

    def sent(self, key: int, topic: str, payload: bytes, on_acked: Acked | None) -> None:
        self.inflight[key] = (topic, payload, on_acked)
        self.busy.add(topic)

    def acked(self, key: int) -> tuple[str, bytes, Acked | None] | None:
        found = self.inflight.pop(key, None)
        if found is not None:
            self.busy.discard(found[0])
        return found

    def __len__(self) -> int:
        return len(self.queued) + len(self.inflight)


class MqttSource:
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
        self._client = Client(connect_options(settings, self._address), self._on_publish,
                              outbound_inflight=settings.publish_max_inflight)
        self._connected = False
        self._failure: ConnectFailure | None = None
        self._stopping = asyncio.Event()
        self._sink: MessageSink | None = None
        self._outbox = Outbox(settings.publish_max_inflight)
        self._keys = itertools.count(1)
        self._refused_log = RateLimitedLog(60.0)
        # The acknowledgements of the batch being filled: its commit future, the connection
        # the deliveries came on, and their packet ids (one done-callback per batch).
        self._batch_future: asyncio.Future[None] | None = None
        self._batch_conn: Connection | None = None
        self._batch_ids: list[int] = []

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def failure(self) -> ConnectFailure | None:
        return self._failure

    @property
    def duplicates(self) -> int:
        """Deliveries the broker flagged DUP on the current connection (redelivered after a reconnect)."""
        conn = self._client.connection
        return conn.reader.duplicates if conn is not None else 0

    async def run(self, sink: MessageSink) -> None:
        """Connect (only now), subscribe and deliver; reconnect with backoff until ``stop()``."""
        self._sink = sink
        attempt = 0
        while not self._stopping.is_set():
            try:
                await self._connect_and_subscribe()
            except Exception as exc:  # every failure is retried: the broker may be restarting or be fixed
                if self._stopping.is_set():
                    break  # stop() closed the attempt in progress
                failure = connect_failure(exc)
                self._on_connect_failed(failure)
                if failure != self._failure:
                    log.warning("mqtt connect failed, retrying with backoff", reason=failure.reason,
                                detail=failure.detail, url=self._safe_url())
                    self._failure = failure
                await self._drop_connection()
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
            cause = await self._wait_lost_or_stop()
            self._set_connected(False)
            if not self._stopping.is_set():
                log.warning("mqtt connection lost, reconnecting", cause=str(cause) if cause else None)
                attempt = 1
                await self._drop_connection()
                await self._sleep_or_stop(backoff_delay(attempt, self._settings.reconnect_max_s))

    async def stop(self) -> None:
        """Stop intake: DISCONNECT (the session stays, its unacknowledged deliveries redelivered later)."""
        self._stopping.set()
        with contextlib.suppress(Exception):
            await self._client.disconnect(within=2.0)
        self._set_connected(False)

    # ---- receiving (the client's parse loop calls this once per PUBLISH) -----------------

    def _on_publish(self, topic: str, payload: bytes, qos: int, retain: bool, packet_id: int) -> None:
        sink = self._sink
        assert sink is not None
        durable = sink(topic, payload, qos, retain)
        if not qos:
            return
        conn = self._client.connection
        if conn is None:
            return  # not acknowledged: the broker redelivers it
        if durable is None:
            conn.puback(packet_id)
        elif durable is self._batch_future and conn is self._batch_conn:
            self._batch_ids.append(packet_id)
        else:
            ids = [packet_id]
            self._batch_future, self._batch_conn, self._batch_ids = durable, conn, ids
            durable.add_done_callback(partial(_acknowledge, conn, ids))

    # ---- publishing (MessagePublisher) ---------------------------------------------------

    def publish(self, topic: str, payload: bytes, *, on_acked: Acked | None = None) -> None:
        """Queue a retained QoS 1 message (b"" clears the retained one); sent when connected."""
        self._outbox.put(topic, payload, on_acked)
        self._drain()

    @property
    def publish_backlog(self) -> int:
        """Messages queued or in flight."""
        return len(self._outbox)

    def _drain(self) -> None:
        if not self._connected:
            return
        for topic, payload, on_acked in self._outbox.sendable():
            key = next(self._keys)
            self._outbox.sent(key, topic, payload, on_acked)
            self._client.publish(topic, payload, retain=True).add_done_callback(partial(self._published, key))

    def _published(self, key: int, future: asyncio.Future[None]) -> None:
        done = self._outbox.acked(key)
        if done is not None and not future.cancelled():
            topic, _, on_acked = done
            exc = future.exception()
            if exc is None:
                if on_acked is not None:
                    on_acked()
            elif self._refused_log.should_log("puback")[0]:
                # Refused (0x87: the ACL does not let us write it): retrying cannot help.
                code = hex(exc.code) if isinstance(exc, PublishRefused) else None
                log.error("broker refused a notice publish", topic=topic, reason_code=code, error=str(exc))
        self._drain()

    # ---- connection ----------------------------------------------------------------------

    async def _connect_and_subscribe(self) -> None:
        client = self._client
        address = self._address
        await client.connect(address.host, address.port, ssl=address.tls, within=CONNECT_TIMEOUT_S)
        await client.subscribe([(topic, 1) for topic in self._topics], within=CONNECT_TIMEOUT_S)
        log.info("mqtt subscribed", url=self._safe_url(), topics=len(self._topics))

    async def _drop_connection(self) -> None:
        with contextlib.suppress(Exception):
            await self._client.disconnect(within=1.0)

    async def _wait_lost_or_stop(self) -> MqttError | None:
        lost = asyncio.ensure_future(self._client.wait_closed())
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({lost, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not lost.done():
                lost.cancel()
        return lost.result() if lost.done() and not lost.cancelled() else None

    async def _sleep_or_stop(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    def _set_connected(self, up: bool) -> None:
        if up != self._connected:
            self._connected = up
            self._on_connected_change(up)

    def _safe_url(self) -> str:
        return f"{'mqtts' if self._address.tls else 'mqtt'}://{self._address.host}:{self._address.port}"


def _acknowledge(conn: Connection, packet_ids: list[int], future: asyncio.Future[None]) -> None:
    """A batch committed: acknowledge its QoS 1 deliveries (on their connection, if it is still up).
    A failed or refused commit is never acknowledged: the broker redelivers."""
    if not future.cancelled() and future.exception() is None:
        conn.puback_many(packet_ids)
