"""An asyncio MQTT 5 client for one long-lived session: subscribe and take deliveries,
acknowledge them when told, publish QoS 1 and resend what the broker did not confirm.

Why its shape (docs/decisions/0003-lean-mqtt5-client.md):

* **One synchronous callback per delivery**, called from the socket's ``data_received``
  through :class:`~fleetwatch.mqtt5.codec.FrameReader`: no task, no queue, no log call
  per message.
* **A QoS 1 delivery is acknowledged only when the caller says so**
  (:meth:`Connection.puback`), typically once the message is durable. Acknowledgements
  are bound to the connection that delivered the message: one asked for after that
  connection dropped is not sent, because the broker redelivers the message on the next
  connection and the packet id may by then name another message. Acknowledgements made
  in one loop iteration go out in one write.
* **No reconnect of its own.** :meth:`Client.connect` connects once, when the caller
  decides (a standby must not take a shared session over); the caller owns the retry
  policy. What must outlive a connection (outbound QoS 1 messages not yet confirmed)
  lives in the :class:`Client` and is resent, DUP set, on the next connection.
* Dead connections are found by keepalive: a PINGREQ every half keepalive, and a
  connection on which nothing at all arrived between two of them is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl as ssl_module
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import structlog

from fleetwatch.mqtt5 import codec
from fleetwatch.mqtt5.codec import ConnectOptions, OnPublish, Packet, ProtocolViolation, reason_name

log = structlog.get_logger("fleetwatch.mqtt5")


class MqttError(Exception):
    """Anything this client reports: a refusal, a lost connection, a timeout."""


class ReasonError(MqttError):
    """A refusal with an MQTT 5 reason code; ``reason`` is the standard's name for it."""

    def __init__(self, what: str, code: int, reason_string: str | None = None) -> None:
        self.code = code
        self.reason = reason_name(code)
        self.reason_string = reason_string
        extra = f" ({reason_string})" if reason_string else ""
        super().__init__(f"{what}: {self.reason}{extra}")


class ConnectRefused(ReasonError):
    """The broker answered CONNECT with a failure reason code."""


class LoginRefused(ConnectRefused):
    """CONNECT refused for who we are: bad user name or password, not authorized, banned,
    or a bad authentication method. Retrying with the same credentials will not help."""


LOGIN_REASONS = frozenset({0x86, 0x87, 0x8A, 0x8C})


def connect_refused(code: int, reason_string: str | None = None) -> ConnectRefused:
    """The typed error for a CONNACK reason code."""
    cls = LoginRefused if code in LOGIN_REASONS else ConnectRefused
    return cls("broker refused the connection", code, reason_string)


class SubscribeRefused(ReasonError):
    """A SUBACK refused at least one filter (the first refused one is named)."""


class PublishRefused(ReasonError):
    """The broker answered a QoS 1 PUBLISH with a failure reason code."""


class ConnectionLost(MqttError):
    """The connection ended without our asking."""


class ServerDisconnected(ConnectionLost, ReasonError):
    """The broker sent DISCONNECT (session taken over, shutting down, ...)."""


class KeepaliveTimeout(ConnectionLost):
    """Nothing arrived from the broker for a whole keepalive period."""


@dataclass(frozen=True, slots=True)
class ConnectResult:
    session_present: bool
    receive_maximum: int
    """How many of our QoS 1 publishes the broker takes unacknowledged."""
    keepalive: int
    """The keepalive in force (the broker may override ours)."""


_PUBACK_HEAD = b"\x40\x02"
READ_PER_TURN: Final = 256 * 1024
"""Bytes of deliveries handled before the event loop gets a turn (about a thousand messages
of the contract's mix, some 20 ms of intake)."""


class Connection(asyncio.Protocol):
    """One TCP/TLS connection of a :class:`Client`: parses, acknowledges, pings."""

    def __init__(self, client: Client, on_message: OnPublish) -> None:
        self._client = client
        self._loop = asyncio.get_running_loop()
        self.reader = codec.FrameReader(on_message, self._on_packet,
                                        alias_maximum=client.options.topic_alias_maximum)
        self.transport: asyncio.Transport | None = None
        self.connack: asyncio.Future[codec.ConnAck] = self._loop.create_future()
        self.closed: asyncio.Future[MqttError | None] = self._loop.create_future()
        self.open = False
        self._acks = bytearray()
        self._flush_handle: asyncio.Handle | None = None
        self._ping_handle: asyncio.TimerHandle | None = None
        self._heard = True
        self._ping_due = False
        self._cause: MqttError | None = None
        self._reported_errors = 0
        self._read_this_turn = 0
        self._turn_marked = False
        self._paused = False

    # ---- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio's classes
        self.open = True

    def data_received(self, data: bytes) -> None:
        self._heard = True
        try:
            self.reader.feed(data)
        except ProtocolViolation as exc:
            self._violation(exc)
            return
        if self.reader.callback_errors != self._reported_errors:
            self._report_callback_errors()
        self._bound_the_turn(len(data))

    def _bound_the_turn(self, size: int) -> None:
        """Read no more than :data:`READ_PER_TURN` bytes per turn of the event loop.

        libuv (uvloop) reads a readable socket up to 32 times in one go before it looks at
        anything else, so a broker handing over a backlog kept the loop in this callback for
        megabytes of messages: timers, the API, the webhooks and our own PUBACKs (sent at
        the end of the iteration) waited 0.3-0.9 s while the daemon drained a flat-out
        stream (a 10 ms timer measured beside ``bench notify``'s ingest figure; 10 ms
        median, 0.1 s at most with the budget). Past the budget reading pauses until the
        loop has turned once; pausing after every read cost about 15 % more CPU per message
        in one run on a loaded machine, so a budget it is.
        """
        self._read_this_turn += size
        if not self._turn_marked:
            self._turn_marked = True
            self._loop.call_soon(self._turned)
        transport = self.transport
        if self._read_this_turn >= READ_PER_TURN and not self._paused and transport is not None:
            self._paused = True
            transport.pause_reading()

    def _turned(self) -> None:
        self._turn_marked = False
        self._read_this_turn = 0
        if self._paused:
            self._paused = False
            transport = self.transport
            if self.open and transport is not None and not transport.is_closing():
                transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self._cancel_timers()
        cause = self._cause
        if cause is None and not self._client.closing:
            cause = ConnectionLost(f"connection lost: {exc}" if exc else "connection closed by the broker")
        if not self.connack.done():
            self.connack.set_exception(cause or ConnectionLost("connection closed before CONNACK"))
            self.connack.exception()  # retrieved by connect(), or nobody waits any more
        if not self.closed.done():
            self.closed.set_result(cause)
        self._client._connection_ended(self)

    # ---- acknowledging -----------------------------------------------------------------

    def puback(self, packet_id: int) -> None:
        """Acknowledge a QoS 1 delivery of this connection (sent with others at the end of
        this loop iteration); nothing is sent once the connection is gone."""
        if self.open:
            self._acks += _PUBACK_HEAD
            self._acks += packet_id.to_bytes(2, "big")
            if self._flush_handle is None:
                self._flush_handle = self._loop.call_soon(self._flush_acks)

    def puback_many(self, packet_ids: Iterable[int]) -> None:
        """:meth:`puback` for several deliveries at once."""
        if self.open:
            acks = self._acks
            for packet_id in packet_ids:
                acks += _PUBACK_HEAD
                acks += packet_id.to_bytes(2, "big")
            if self._flush_handle is None and acks:
                self._flush_handle = self._loop.call_soon(self._flush_acks)

    def _flush_acks(self) -> None:
        self._flush_handle = None
        if self.open and self._acks and self.transport is not None:
            self.transport.write(bytes(self._acks))
        self._acks.clear()

    # ---- writing -------------------------------------------------------------------------

    def write(self, frame: bytes) -> None:
        if self.open and self.transport is not None:
            self.transport.write(frame)

    def close(self, reason: int = 0) -> None:
        """Send DISCONNECT (with ``reason``) and close; ``closed`` resolves once it is down."""
        if self.open and self.transport is not None:
            self._flush_acks()
            self.transport.write(codec.disconnect(reason))
            self.transport.close()

    def abort(self, cause: MqttError) -> None:
        """Drop the connection at once (no DISCONNECT): it is dead or it broke the protocol."""
        if self._cause is None:
            self._cause = cause
        if self.transport is not None:
            self.transport.abort()

    # ---- keepalive -----------------------------------------------------------------------

    def start_keepalive(self, keepalive: int) -> None:
        if keepalive > 0:
            self._ping_handle = self._loop.call_later(keepalive / 2, self._ping, keepalive / 2)

    def _ping(self, every: float) -> None:
        if not self.open:
            return
        if self._ping_due and not self._heard:
            self.abort(KeepaliveTimeout(f"no answer from the broker for {2 * every:g} s"))
            return
        self._heard = False
        self._ping_due = True
        self.write(codec.PINGREQ_FRAME)
        self._ping_handle = self._loop.call_later(every, self._ping, every)

    def _cancel_timers(self) -> None:
        for handle in (self._ping_handle, self._flush_handle):
            if handle is not None:
                handle.cancel()
        self._ping_handle = self._flush_handle = None

    # ---- control packets -----------------------------------------------------------------

    def _on_packet(self, pkt: Packet) -> None:
        kind = pkt.type
        if kind == codec.PINGRESP:
            self._ping_due = False
        elif kind == codec.PUBACK:
            ack = codec.parse_ack(pkt)
            self._client._on_puback(ack)
        elif kind in (codec.SUBACK, codec.UNSUBACK):
            self._client._on_suback(codec.parse_ack(pkt))
        elif kind == codec.CONNACK:
            if self.connack.done():
                raise ProtocolViolation("a second CONNACK", codec.PROTOCOL_ERROR)
            connack = codec.parse_connack(pkt.body)
            if connack.reason < 0x80:
                self._client._connected(self, connack)
            self.connack.set_result(connack)
        elif kind == codec.DISCONNECT:
            gone = codec.parse_disconnect(pkt.body)
            reason_string = gone.properties.get(codec.P_REASON_STRING)
            self._cause = ServerDisconnected("the broker disconnected us", gone.reason,
                                             reason_string if isinstance(reason_string, str) else None)
            if self.transport is not None:
                self.transport.close()
        else:
            raise ProtocolViolation(f"unexpected packet type {kind}", codec.PROTOCOL_ERROR)

    def _violation(self, exc: ProtocolViolation) -> None:
        log.error("mqtt protocol violation by the broker, dropping the connection", error=str(exc),
                  reason=reason_name(exc.code))
        if self.transport is not None:
            self.transport.write(codec.disconnect(exc.code))
        self.abort(ConnectionLost(f"protocol violation: {exc}"))

    def _report_callback_errors(self) -> None:
        new = self.reader.callback_errors - self._reported_errors
        self._reported_errors = self.reader.callback_errors
        err = self.reader.last_error
        log.error("message handler failed; the delivery is not acknowledged", failures=new,
                  error=f"{type(err).__name__}: {err}")


class Client:
    """One MQTT 5 session: connect when told, subscribe, take deliveries, publish QoS 1.

    ``on_message(topic, payload, qos, retain, packet_id)`` is called synchronously for
    every delivery; a QoS 1 delivery stays unacknowledged until
    ``client.connection.puback(packet_id)`` (take ``connection`` when the message
    arrives, not later). ``outbound_inflight`` bounds our own unconfirmed QoS 1
    publishes (also bounded by the broker's Receive Maximum); the rest wait in order.
    """

    def __init__(self, options: ConnectOptions, on_message: OnPublish, *, outbound_inflight: int = 100) -> None:
        if outbound_inflight < 1:
            raise ValueError("outbound_inflight must be at least 1")
        self.options = options
        self.on_message = on_message
        self.outbound_inflight = outbound_inflight
        self.connection: Connection | None = None
        """The connection in use, set as soon as the broker accepted it."""
        self.closing = False
        self._server_receive_max = 65535
        self._next_id = 0
        self._inflight: dict[int, tuple[bytes, asyncio.Future[None]]] = {}
        """Our QoS 1 publishes sent and not confirmed, by packet id, in send order."""
        self._queued: deque[tuple[str, bytes, bool, asyncio.Future[None]]] = deque()
        self._subacks: dict[int, asyncio.Future[codec.Ack]] = {}
        self._pending_conn: Connection | None = None
        self._latest: Connection | None = None

    @property
    def connected(self) -> bool:
        return self.connection is not None and self.connection.open

    @property
    def inflight(self) -> int:
        """Our QoS 1 publishes written and not yet confirmed."""
        return len(self._inflight)

    @property
    def outbound_pending(self) -> int:
        """Our QoS 1 publishes not yet confirmed by the broker (in flight and waiting)."""
        return len(self._inflight) + len(self._queued)

    # ---- connecting ----------------------------------------------------------------------

    async def connect(self, host: str, port: int, *, ssl: ssl_module.SSLContext | None = None,
                      server_hostname: str | None = None, within: float = 10.0) -> ConnectResult:
        """Open a connection and wait for the broker's CONNACK.

        Raises :class:`ConnectRefused` (:class:`LoginRefused` for credentials) with the
        reason's name, :class:`ConnectionLost`, ``OSError`` or ``TimeoutError``.
        """
        if self.connected:
            raise MqttError("already connected")
        self.closing = False
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(within):
            _transport, conn = await loop.create_connection(
                lambda: Connection(self, self.on_message), host, port, ssl=ssl,
                server_hostname=(server_hostname or host) if ssl is not None else None)
            self._pending_conn = conn
            conn.write(codec.connect(self.options))
            try:
                connack = await conn.connack
            except BaseException:
                conn.abort(ConnectionLost("no CONNACK"))
                raise
            finally:
                self._pending_conn = None
        if connack.reason >= 0x80:
            reason_string = connack.properties.get(codec.P_REASON_STRING)
            conn.abort(ConnectionLost("refused"))
            raise connect_refused(connack.reason, reason_string if isinstance(reason_string, str) else None)
        keepalive = connack.properties.get(codec.P_SERVER_KEEP_ALIVE, self.options.keepalive)
        assert isinstance(keepalive, int)
        return ConnectResult(connack.session_present, self._server_receive_max, keepalive)

    def _connected(self, conn: Connection, connack: codec.ConnAck) -> None:
        """CONNACK accepted: from here on, deliveries on ``conn`` can be acknowledged."""
        props = connack.properties
        receive_max = props.get(codec.P_RECEIVE_MAXIMUM, 65535)
        self._server_receive_max = receive_max if isinstance(receive_max, int) else 65535
        keepalive = props.get(codec.P_SERVER_KEEP_ALIVE, self.options.keepalive)
        self.connection = self._latest = conn
        conn.start_keepalive(keepalive if isinstance(keepalive, int) else self.options.keepalive)
        self._resend(dup=connack.session_present)

    def _connection_ended(self, conn: Connection) -> None:
        if self.connection is conn:
            self.connection = None
            for fut in self._subacks.values():
                if not fut.done():
                    fut.set_exception(ConnectionLost("connection lost before SUBACK"))
            self._subacks.clear()

    async def wait_closed(self) -> MqttError | None:
        """Wait until the latest connection ends (at once if it has); returns why (None when we
        closed it, or when there never was one)."""
        conn = self._latest
        if conn is None:
            return None
        return await asyncio.shield(conn.closed)

    async def disconnect(self, reason: int = 0, within: float = 2.0) -> None:
        """Send DISCONNECT and wait (briefly) for the connection to close."""
        self.closing = True
        conn = self.connection or self._pending_conn
        if conn is None:
            return
        conn.close(reason)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(conn.closed), within)
        if conn.open:
            conn.abort(ConnectionLost("closed"))

    # ---- subscribing ---------------------------------------------------------------------

    async def subscribe(self, filters: Sequence[tuple[str, int]], within: float = 10.0) -> tuple[int, ...]:
        """Subscribe to (filter, maximum QoS) pairs; returns the granted QoS per filter.

        Raises :class:`SubscribeRefused` naming the first filter the broker refused.
        """
        conn = self.connection
        if conn is None or not conn.open:
            raise ConnectionLost("not connected")
        packet_id = self._new_id()
        fut: asyncio.Future[codec.Ack] = asyncio.get_running_loop().create_future()
        self._subacks[packet_id] = fut
        conn.write(codec.subscribe(packet_id, filters))
        try:
            ack = await asyncio.wait_for(fut, within)
        finally:
            self._subacks.pop(packet_id, None)
        for (topic_filter, _qos), code in zip(filters, ack.reasons, strict=False):
            if code >= 0x80:
                raise SubscribeRefused(f"subscription to {topic_filter!r} refused", code)
        return ack.reasons

    def _on_suback(self, ack: codec.Ack) -> None:
        fut = self._subacks.get(ack.packet_id)
        if fut is not None and not fut.done():
            fut.set_result(ack)

    # ---- publishing ----------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> asyncio.Future[None]:
        """Publish at QoS 1; the future completes when the broker confirms it.

        Accepted while disconnected: the message waits and goes out on the next
        connection. Unconfirmed messages are resent, DUP set, after a reconnect. The
        future fails with :class:`PublishRefused` when the broker refuses the message
        (it is then not resent). A zero-length retained ``payload`` clears the topic's
        retained message.
        """
        codec.utf8(topic)  # fail now, in the caller, for a topic that cannot be encoded
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queued.append((topic, payload, retain, fut))
        self._send_queued()
        return fut

    def _window(self) -> int:
        return min(self.outbound_inflight, self._server_receive_max)

    def _send_queued(self) -> None:
        conn = self.connection
        if conn is None or not conn.open:
            return
        window = self._window()
        while self._queued and len(self._inflight) < window:
            topic, payload, retain, fut = self._queued.popleft()
            if fut.done():  # cancelled by the caller before it was sent
                continue
            packet_id = self._new_id()
            frame = codec.publish(topic, payload, qos=1, retain=retain, packet_id=packet_id)
            self._inflight[packet_id] = (frame, fut)
            conn.write(frame)

    def _resend(self, *, dup: bool) -> None:
        """After a (re)connect: the unconfirmed publishes first, in their order, then the queue.

        With the session resumed they are resent as duplicates under their packet ids
        (MQTT 5, 4.4). If the broker lost the session they are sent again as new
        messages: a notice must reach the terminal either way.
        """
        conn = self.connection
        assert conn is not None
        for frame, _fut in self._inflight.values():
            conn.write(codec.set_dup(frame) if dup else frame)
        self._send_queued()

    def _on_puback(self, ack: codec.Ack) -> None:
        sent = self._inflight.pop(ack.packet_id, None)
        if sent is None:
            return  # a confirmation we no longer wait for (sent twice across a reconnect)
        _frame, fut = sent
        if not fut.done():
            code = ack.reasons[0]
            if code >= 0x80:
                reason_string = ack.properties.get(codec.P_REASON_STRING)
                fut.set_exception(PublishRefused("broker refused a publish", code,
                                                 reason_string if isinstance(reason_string, str) else None))
            else:
                fut.set_result(None)
        self._send_queued()

    def fail_pending(self, exc: BaseException) -> int:
        """Give up on every unconfirmed publish (the caller stops for good); returns how many."""
        futures = [fut for _frame, fut in self._inflight.values()] + [item[3] for item in self._queued]
        self._inflight.clear()
        self._queued.clear()
        for fut in futures:
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()
        return len(futures)

    def _new_id(self) -> int:
        """A packet id that no unconfirmed PUBLISH or SUBSCRIBE of ours holds."""
        for _ in range(0xFFFF):
            self._next_id = self._next_id % 0xFFFF + 1
            if self._next_id not in self._inflight and self._next_id not in self._subacks:
                return self._next_id
        raise MqttError("no free packet id")
