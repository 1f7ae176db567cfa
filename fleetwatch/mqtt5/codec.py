"""MQTT 5 packets as bytes: the encoders a subscriber and a notice publisher need, and a
reader that takes the broker's byte stream apart. Pure: no I/O, no asyncio, no logging.

Why it is written for speed the way it is: every message of a fleet passes
:meth:`FrameReader.feed`, so the PUBLISH path is inline in the parse loop (no object per
packet, no property dict when the packet has no properties, one ``str`` and one
``bytes`` made per message) and hands ``(topic, payload, qos, retain, packet_id)``
straight to one synchronous callback. Every other packet type is rare and goes through
:class:`Packet` and the generic property parser.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = 8, 9, 10, 11, 12, 13, 14, 15

PROTOCOL_LEVEL: Final = 5
MAX_REMAINING_LENGTH: Final = 268_435_455

PINGREQ_FRAME: Final = b"\xc0\x00"

# ---- reason codes (MQTT 5.0, section 2.4) ------------------------------------------

REASON_NAMES: Final[dict[int, str]] = {
    0x00: "success",
    0x01: "granted QoS 1",
    0x02: "granted QoS 2",
    0x04: "disconnect with will message",
    0x10: "no matching subscribers",
    0x11: "no subscription existed",
    0x18: "continue authentication",
    0x19: "re-authenticate",
    0x80: "unspecified error",
    0x81: "malformed packet",
    0x82: "protocol error",
    0x83: "implementation specific error",
    0x84: "unsupported protocol version",
    0x85: "client identifier not valid",
    0x86: "bad user name or password",
    0x87: "not authorized",
    0x88: "server unavailable",
    0x89: "server busy",
    0x8A: "banned",
    0x8B: "server shutting down",
    0x8C: "bad authentication method",
    0x8D: "keep alive timeout",
    0x8E: "session taken over",
    0x8F: "topic filter invalid",
    0x90: "topic name invalid",
    0x91: "packet identifier in use",
    0x92: "packet identifier not found",
    0x93: "receive maximum exceeded",
    0x94: "topic alias invalid",
    0x95: "packet too large",
    0x96: "message rate too high",
    0x97: "quota exceeded",
    0x98: "administrative action",
    0x99: "payload format invalid",
    0x9A: "retain not supported",
    0x9B: "QoS not supported",
    0x9C: "use another server",
    0x9D: "server moved",
    0x9E: "shared subscriptions not supported",
    0x9F: "connection rate exceeded",
    0xA0: "maximum connect time",
    0xA1: "subscription identifiers not supported",
    0xA2: "wildcard subscriptions not supported",
}
"""Every reason code of the standard with its name as the standard words it (lower case)."""

MALFORMED: Final = 0x81
PROTOCOL_ERROR: Final = 0x82
RECEIVE_MAXIMUM_EXCEEDED: Final = 0x93
TOPIC_ALIAS_INVALID: Final = 0x94


def reason_name(code: int) -> str:
    """The standard's name of a reason code, or ``reason 0xNN`` for one it does not define."""
    return REASON_NAMES.get(code, f"reason 0x{code:02X}")


class ProtocolViolation(ValueError):
    """The broker sent bytes that are not valid MQTT 5; ``code`` is the reason to disconnect with."""

    def __init__(self, message: str, code: int = MALFORMED) -> None:
        super().__init__(message)
        self.code = code


# ---- properties (section 2.2.2.2) --------------------------------------------------

P_PAYLOAD_FORMAT, P_MESSAGE_EXPIRY, P_CONTENT_TYPE = 0x01, 0x02, 0x03
P_RESPONSE_TOPIC, P_CORRELATION_DATA, P_SUBSCRIPTION_ID = 0x08, 0x09, 0x0B
P_SESSION_EXPIRY, P_ASSIGNED_CLIENT_ID, P_SERVER_KEEP_ALIVE = 0x11, 0x12, 0x13
P_AUTH_METHOD, P_AUTH_DATA, P_REQUEST_PROBLEM_INFO = 0x15, 0x16, 0x17
P_WILL_DELAY, P_REQUEST_RESPONSE_INFO, P_RESPONSE_INFO = 0x18, 0x19, 0x1A
P_SERVER_REFERENCE, P_REASON_STRING = 0x1C, 0x1F
P_RECEIVE_MAXIMUM, P_TOPIC_ALIAS_MAXIMUM, P_TOPIC_ALIAS = 0x21, 0x22, 0x23
P_MAXIMUM_QOS, P_RETAIN_AVAILABLE, P_USER_PROPERTY, P_MAXIMUM_PACKET_SIZE = 0x24, 0x25, 0x26, 0x27
P_WILDCARD_SUB_AVAILABLE, P_SUB_ID_AVAILABLE, P_SHARED_SUB_AVAILABLE = 0x28, 0x29, 0x2A

_BYTE, _TWO, _FOUR, _VARINT, _UTF8, _BINARY, _PAIR = range(7)
_PROPERTY_TYPES: Final[dict[int, int]] = {
    P_PAYLOAD_FORMAT: _BYTE, P_MESSAGE_EXPIRY: _FOUR, P_CONTENT_TYPE: _UTF8, P_RESPONSE_TOPIC: _UTF8,
    P_CORRELATION_DATA: _BINARY, P_SUBSCRIPTION_ID: _VARINT, P_SESSION_EXPIRY: _FOUR,
    P_ASSIGNED_CLIENT_ID: _UTF8, P_SERVER_KEEP_ALIVE: _TWO, P_AUTH_METHOD: _UTF8, P_AUTH_DATA: _BINARY,
    P_REQUEST_PROBLEM_INFO: _BYTE, P_WILL_DELAY: _FOUR, P_REQUEST_RESPONSE_INFO: _BYTE,
    P_RESPONSE_INFO: _UTF8, P_SERVER_REFERENCE: _UTF8, P_REASON_STRING: _UTF8, P_RECEIVE_MAXIMUM: _TWO,
    P_TOPIC_ALIAS_MAXIMUM: _TWO, P_TOPIC_ALIAS: _TWO, P_MAXIMUM_QOS: _BYTE, P_RETAIN_AVAILABLE: _BYTE,
    P_USER_PROPERTY: _PAIR, P_MAXIMUM_PACKET_SIZE: _FOUR, P_WILDCARD_SUB_AVAILABLE: _BYTE,
    P_SUB_ID_AVAILABLE: _BYTE, P_SHARED_SUB_AVAILABLE: _BYTE,
}

Properties = dict[int, object]
"""Property id -> value; user properties (and repeated subscription ids) as lists."""

_U16: Final = struct.Struct("!H")
_U32: Final = struct.Struct("!I")


def read_varint(buf: bytes | bytearray | memoryview, pos: int, end: int) -> tuple[int, int] | None:
    """A variable byte integer at ``pos``: (value, next position), None if cut off before ``end``."""
    value = shift = 0
    for i in range(4):
        if pos + i >= end:
            return None
        byte = buf[pos + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos + i + 1
        shift += 7
    raise ProtocolViolation("variable byte integer longer than 4 bytes")


def _utf8_at(buf: bytes | bytearray | memoryview, pos: int, end: int) -> tuple[str, int]:
    if pos + 2 > end:
        raise ProtocolViolation("string length cut off")
    n = buf[pos] << 8 | buf[pos + 1]
    if pos + 2 + n > end:
        raise ProtocolViolation("string cut off")
    try:
        return bytes(buf[pos + 2 : pos + 2 + n]).decode("utf-8"), pos + 2 + n
    except UnicodeDecodeError as exc:
        raise ProtocolViolation("string is not UTF-8") from exc


def parse_properties(buf: bytes | bytearray | memoryview, pos: int, end: int) -> tuple[Properties, int]:
    """The property block at ``pos`` (its length first): (properties, position after it)."""
    got = read_varint(buf, pos, end)
    if got is None:
        raise ProtocolViolation("property length cut off")
    length, pos = got
    stop = pos + length
    if stop > end:
        raise ProtocolViolation("properties run past the packet")
    props: Properties = {}
    while pos < stop:
        pid = buf[pos]
        kind = _PROPERTY_TYPES.get(pid)
        pos += 1
        value: object
        if kind is None:
            raise ProtocolViolation(f"unknown property 0x{pid:02X}")
        if kind == _BYTE:
            if pos + 1 > stop:
                raise ProtocolViolation("property cut off")
            value, pos = buf[pos], pos + 1
        elif kind == _TWO:
            if pos + 2 > stop:
                raise ProtocolViolation("property cut off")
            value, pos = buf[pos] << 8 | buf[pos + 1], pos + 2
        elif kind == _FOUR:
            if pos + 4 > stop:
                raise ProtocolViolation("property cut off")
            value, pos = _U32.unpack_from(buf, pos)[0], pos + 4
        elif kind == _VARINT:
            got = read_varint(buf, pos, stop)
            if got is None:
                raise ProtocolViolation("property cut off")
            value, pos = got
        elif kind == _UTF8:
            value, pos = _utf8_at(buf, pos, stop)
        elif kind == _BINARY:
            if pos + 2 > stop:
                raise ProtocolViolation("property cut off")
            n = buf[pos] << 8 | buf[pos + 1]
            if pos + 2 + n > stop:
                raise ProtocolViolation("property cut off")
            value, pos = bytes(buf[pos + 2 : pos + 2 + n]), pos + 2 + n
        else:
            key, pos = _utf8_at(buf, pos, stop)
            val, pos = _utf8_at(buf, pos, stop)
            value = (key, val)
        if pid in (P_USER_PROPERTY, P_SUBSCRIPTION_ID):
            listed = props.setdefault(pid, [])
            assert isinstance(listed, list)
            listed.append(value)
        elif pid in props:
            raise ProtocolViolation(f"property 0x{pid:02X} given twice", PROTOCOL_ERROR)
        else:
            props[pid] = value
    return props, stop


# ---- encoders ------------------------------------------------------------------------


def varint(n: int) -> bytes:
    """MQTT variable byte integer."""
    if not 0 <= n <= MAX_REMAINING_LENGTH:
        raise ValueError(f"variable byte integer out of range: {n}")
    out = bytearray()
    while True:
        n, byte = divmod(n, 128)
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8(s: str) -> bytes:
    """A length-prefixed UTF-8 string."""
    data = s.encode("utf-8")
    if len(data) > 0xFFFF:
        raise ValueError("string longer than 65535 bytes")
    return _U16.pack(len(data)) + data


def _frame(first: int, body: bytes | bytearray) -> bytes:
    return bytes([first]) + varint(len(body)) + bytes(body)


def encode_properties(props: Iterable[tuple[int, object]]) -> bytes:
    """A property block (length first) from (id, value) pairs, in the order given."""
    out = bytearray()
    for pid, value in props:
        kind = _PROPERTY_TYPES[pid]
        out.append(pid)
        if kind == _BYTE:
            out.append(int(value))  # type: ignore[call-overload]
        elif kind == _TWO:
            out += _U16.pack(value)
        elif kind == _FOUR:
            out += _U32.pack(value)
        elif kind == _VARINT:
            out += varint(int(value))  # type: ignore[call-overload]
        elif kind == _UTF8:
            out += utf8(str(value))
        elif kind == _BINARY:
            data = bytes(value)  # type: ignore[call-overload]
            out += _U16.pack(len(data)) + data
        else:
            assert isinstance(value, tuple)
            out += utf8(str(value[0])) + utf8(str(value[1]))
    return varint(len(out)) + bytes(out)


@dataclass(frozen=True, slots=True)
class ConnectOptions:
    """What CONNECT says: identity, credentials, session and flow control."""

    client_id: str
    keepalive: int = 60
    clean_start: bool = True
    session_expiry: int = 0
    """Seconds the broker keeps the session after a disconnect (0: it ends with the connection)."""
    receive_maximum: int = 65535
    """QoS 1 deliveries the broker may have unacknowledged at once (1..65535)."""
    topic_alias_maximum: int = 0
    """Topic aliases the broker may use towards us (0: none)."""
    maximum_packet_size: int | None = None
    username: str | None = None
    password: bytes | None = None


def connect(opts: ConnectOptions) -> bytes:
    """Encode CONNECT (no Will)."""
    if not 1 <= opts.receive_maximum <= 0xFFFF:
        raise ValueError("receive_maximum must be 1..65535")
    flags = 0x02 if opts.clean_start else 0
    if opts.username is not None:
        flags |= 0x80
    if opts.password is not None:
        flags |= 0x40
    props: list[tuple[int, object]] = []
    if opts.session_expiry:
        props.append((P_SESSION_EXPIRY, opts.session_expiry))
    if opts.receive_maximum != 0xFFFF:
        props.append((P_RECEIVE_MAXIMUM, opts.receive_maximum))
    if opts.topic_alias_maximum:
        props.append((P_TOPIC_ALIAS_MAXIMUM, opts.topic_alias_maximum))
    if opts.maximum_packet_size:
        props.append((P_MAXIMUM_PACKET_SIZE, opts.maximum_packet_size))
    body = bytearray(utf8("MQTT"))
    body += bytes([PROTOCOL_LEVEL, flags]) + _U16.pack(opts.keepalive)
    body += encode_properties(props)
    body += utf8(opts.client_id)
    if opts.username is not None:
        body += utf8(opts.username)
    if opts.password is not None:
        if len(opts.password) > 0xFFFF:
            raise ValueError("password longer than 65535 bytes")
        body += _U16.pack(len(opts.password)) + opts.password
    return _frame(CONNECT << 4, body)


def subscribe(packet_id: int, filters: Iterable[tuple[str, int]]) -> bytes:
    """Encode SUBSCRIBE for (topic filter, maximum QoS) pairs (no-local off, retain as published)."""
    body = bytearray(_U16.pack(packet_id)) + b"\x00"
    for topic_filter, qos in filters:
        body += utf8(topic_filter) + bytes([qos & 0x03])
    return _frame((SUBSCRIBE << 4) | 0x02, body)


def publish(topic: str, payload: bytes, *, qos: int = 0, retain: bool = False, packet_id: int = 0,
            dup: bool = False) -> bytes:
    """Encode PUBLISH without properties; ``packet_id`` (1..65535) is needed for QoS 1."""
    if qos not in (0, 1):
        raise ValueError("only QoS 0 and 1 are published")
    head = bytearray(utf8(topic))
    if qos:
        if not 1 <= packet_id <= 0xFFFF:
            raise ValueError("QoS 1 needs a packet id in 1..65535")
        head += _U16.pack(packet_id)
    head += b"\x00"
    first = (PUBLISH << 4) | (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0)
    return bytes([first]) + varint(len(head) + len(payload)) + bytes(head) + payload


def set_dup(frame: bytes) -> bytes:
    """The same PUBLISH frame marked as a redelivery (DUP flag set)."""
    return bytes([frame[0] | 0x08]) + frame[1:]


def puback(packet_id: int) -> bytes:
    """PUBACK, reason success (the short form)."""
    return b"\x40\x02" + _U16.pack(packet_id)


def disconnect(reason: int = 0, session_expiry: int | None = None) -> bytes:
    """DISCONNECT with a reason code (and optionally a new session expiry)."""
    if reason == 0 and session_expiry is None:
        return b"\xe0\x00"
    props: list[tuple[int, object]] = [] if session_expiry is None else [(P_SESSION_EXPIRY, session_expiry)]
    return _frame(DISCONNECT << 4, bytes([reason]) + encode_properties(props))


# ---- the reader --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Packet:
    """A packet other than PUBLISH: type, flags and body (the rare path)."""

    type: int
    flags: int
    body: bytes


@dataclass(frozen=True, slots=True)
class ConnAck:
    session_present: bool
    reason: int
    properties: Properties = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Ack:
    """PUBACK, SUBACK or UNSUBACK: the packet id, its reason code(s) and properties."""

    packet_id: int
    reasons: tuple[int, ...]
    properties: Properties = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Disconnect:
    reason: int
    properties: Properties = field(default_factory=dict)


def parse_connack(body: bytes) -> ConnAck:
    if len(body) < 2:
        raise ProtocolViolation("CONNACK too short")
    props, _ = parse_properties(body, 2, len(body)) if len(body) > 2 else ({}, 2)
    return ConnAck(bool(body[0] & 0x01), body[1], props)


def parse_ack(pkt: Packet) -> Ack:
    """PUBACK (one reason, which may be left out for success), SUBACK or UNSUBACK (one per filter)."""
    body = pkt.body
    if len(body) < 2:
        raise ProtocolViolation("acknowledgement too short")
    packet_id = body[0] << 8 | body[1]
    if pkt.type == PUBACK:
        if len(body) == 2:
            return Ack(packet_id, (0,))
        props, _ = parse_properties(body, 3, len(body)) if len(body) > 3 else ({}, 3)
        return Ack(packet_id, (body[2],), props)
    props, pos = parse_properties(body, 2, len(body))
    return Ack(packet_id, tuple(body[pos:]), props)


def parse_disconnect(body: bytes) -> Disconnect:
    if not body:
        return Disconnect(0)
    props, _ = parse_properties(body, 1, len(body)) if len(body) > 1 else ({}, 1)
    return Disconnect(body[0], props)


OnPublish = Callable[[str, bytes, int, bool, int], None]
"""(topic, payload, qos, retain, packet_id); packet_id is 0 for QoS 0."""
OnPacket = Callable[[Packet], None]


class FrameReader:
    """Takes the broker's byte stream in arbitrary chunks and dispatches every whole packet.

    PUBLISH goes to ``on_publish`` from inside the parse loop; everything else to
    ``on_packet`` as a :class:`Packet`. ``duplicates`` counts deliveries flagged DUP (a
    broker resending what it had sent on an earlier connection). Topic aliases sent by
    the broker are resolved here, so the callback always sees the full topic.
    A malformed stream raises :class:`ProtocolViolation`; the connection cannot continue.
    An exception from ``on_publish`` does not stop the stream: it is counted in
    ``callback_errors`` (the last one kept in ``last_error``) for the caller to report,
    and that message is simply not acknowledged.
    """

    __slots__ = ("_aliases", "_buf", "_need", "alias_maximum", "callback_errors", "duplicates", "last_error",
                 "max_packet", "on_packet", "on_publish")

    def __init__(self, on_publish: OnPublish, on_packet: OnPacket, *, alias_maximum: int = 0,
                 max_packet: int = MAX_REMAINING_LENGTH) -> None:
        self.on_publish = on_publish
        self.on_packet = on_packet
        self.alias_maximum = alias_maximum
        self.max_packet = max_packet
        self.duplicates = 0
        self.callback_errors = 0
        self.last_error: Exception | None = None
        self._aliases: dict[int, str] = {}
        self._buf = bytearray()
        self._need = 0

    def feed(self, data: bytes | bytearray) -> None:
        """Parse every complete packet; keep an incomplete tail for the next call.

        The tail is only re-parsed once enough bytes for its first packet have come, so
        a large packet arriving in many chunks costs one copy, not one per chunk.
        """
        buf = self._buf
        if buf:
            buf += data
            if len(buf) < self._need:
                return
            data = bytes(buf)
            buf.clear()
        end = len(data)
        pos = self._parse(data, end)
        if pos < end:
            buf += memoryview(data)[pos:]

    def _parse(self, data: bytes | bytearray, end: int) -> int:
        on_publish = self.on_publish
        pos = 0
        self._need = 0
        while pos + 2 <= end:
            first = data[pos]
            b = data[pos + 1]
            if b < 0x80:
                length, start = b, pos + 2
            elif pos + 2 < end and data[pos + 2] < 0x80:  # 128 B .. 16 KiB: every contract payload
                length, start = (b & 0x7F) | data[pos + 2] << 7, pos + 3
            else:
                got = read_varint(data, pos + 1, end)
                if got is None:
                    break
                length, start = got
            stop = start + length
            if stop > end:
                if length > self.max_packet:
                    raise ProtocolViolation(f"packet of {length} bytes is over the limit", 0x95)
                self._need = stop - pos
                break
            if first >> 4 == PUBLISH:
                qos = (first >> 1) & 0x03
                if start + 2 > stop:
                    raise ProtocolViolation("PUBLISH too short")
                tend = start + 2 + (data[start] << 8 | data[start + 1])
                topic = data[start + 2 : tend].decode("utf-8", "replace")
                if qos:
                    if qos > 1:
                        raise ProtocolViolation("QoS 2 delivery to a QoS 1 subscription", PROTOCOL_ERROR)
                    if tend + 2 > stop:
                        raise ProtocolViolation("PUBLISH too short")
                    packet_id = data[tend] << 8 | data[tend + 1]
                    p = tend + 2
                    if first & 0x08:
                        self.duplicates += 1
                else:
                    packet_id = 0
                    p = tend
                if p >= stop:
                    raise ProtocolViolation("PUBLISH without its property length")
                if data[p]:
                    topic, p = self._publish_properties(data, p, stop, topic)
                else:
                    p += 1
                try:
                    on_publish(topic, bytes(data[p:stop]), qos, bool(first & 0x01), packet_id)
                except Exception as exc:  # the consumer's bug must not cost the other messages
                    self.callback_errors += 1
                    self.last_error = exc
            else:
                self.on_packet(Packet(first >> 4, first & 0x0F, bytes(data[start:stop])))
            pos = stop
        return pos

    def _publish_properties(self, data: bytes | bytearray, pos: int, stop: int, topic: str) -> tuple[str, int]:
        """The rare PUBLISH with properties: only the topic alias changes what we deliver."""
        props, pos = parse_properties(data, pos, stop)
        alias = props.get(P_TOPIC_ALIAS)
        if alias is None:
            if not topic:
                raise ProtocolViolation("PUBLISH with neither topic nor alias", PROTOCOL_ERROR)
            return topic, pos
        assert isinstance(alias, int)
        if not 1 <= alias <= self.alias_maximum:
            raise ProtocolViolation(f"topic alias {alias} outside 1..{self.alias_maximum}", TOPIC_ALIAS_INVALID)
        if topic:
            self._aliases[alias] = topic
            return topic, pos
        known = self._aliases.get(alias)
        if known is None:
            raise ProtocolViolation(f"topic alias {alias} used before it was set", PROTOCOL_ERROR)
        return known, pos

    def reset(self) -> None:
        """Forget buffered bytes and aliases (a new connection starts from nothing)."""
        self._buf.clear()
        self._need = 0
        self._aliases.clear()
