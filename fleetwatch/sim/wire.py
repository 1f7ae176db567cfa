"""A tiny MQTT 3.1.1 / 5 frame encoder and decoder: bytes in, bytes out, no I/O.

The simulator and the benchmark harness write their own frames instead of going
through paho or gmqtt because the publisher must never be the bottleneck of a
benchmark: a pre-encoded PUBLISH frame is a ``bytes`` object that the event loop
writes as it is, at memory speed, while a full client spends microseconds per
message in Python. Only the packets a publisher and a simple subscriber need are here
(CONNECT with a Last Will, PUBLISH, PUBACK, SUBSCRIBE, PINGREQ, DISCONNECT), and the
parser understands what a broker sends back (CONNACK, PUBACK, SUBACK, PUBLISH,
PINGRESP, DISCONNECT). Being pure, it is tested without a broker and then once through
Mosquitto to prove the broker accepts it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14

MQTT311, MQTT5 = 4, 5

PINGREQ_FRAME = b"\xc0\x00"
DISCONNECT_FRAME = b"\xe0\x00"
"""A normal DISCONNECT; for MQTT 5 an empty body means reason 0 (normal)."""

_PROP_SESSION_EXPIRY = 0x11
_PROP_RECEIVE_MAXIMUM = 0x21
MAX_REMAINING_LENGTH = 268_435_455


class WireError(ValueError):
    """Bytes that are not a well-formed MQTT packet (or a value that cannot be encoded)."""


def varint(n: int) -> bytes:
    """MQTT variable byte integer (remaining length, property lengths)."""
    if not 0 <= n <= MAX_REMAINING_LENGTH:
        raise WireError(f"variable byte integer out of range: {n}")
    out = bytearray()
    while True:
        n, byte = divmod(n, 128)
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def read_varint(buf: bytes | bytearray | memoryview, pos: int) -> tuple[int, int] | None:
    """Decode a variable byte integer at ``pos``: (value, next position), or None if incomplete."""
    value, shift = 0, 0
    for i in range(4):
        if pos + i >= len(buf):
            return None
        byte = buf[pos + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos + i + 1
        shift += 7
    raise WireError("variable byte integer longer than 4 bytes")


def utf8(s: str) -> bytes:
    """A length-prefixed UTF-8 string."""
    data = s.encode("utf-8")
    return struct.pack("!H", len(data)) + data


def binary(data: bytes) -> bytes:
    """Length-prefixed binary data (Will payload, password)."""
    if len(data) > 0xFFFF:
        raise WireError("binary field longer than 65535 bytes")
    return struct.pack("!H", len(data)) + data


@dataclass(frozen=True, slots=True)
class Will:
    """A Last Will: what the broker publishes when the connection dies uncleanly."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


def connect(
    client_id: str,
    *,
    version: int = MQTT311,
    keepalive: int = 60,
    clean: bool = True,
    will: Will | None = None,
    username: str | None = None,
    password: str | None = None,
    session_expiry: int | None = None,
    receive_maximum: int | None = None,
) -> bytes:
    """Encode a CONNECT packet (MQTT 3.1.1 when ``version`` is 4, MQTT 5 when 5)."""
    if version not in (MQTT311, MQTT5):
        raise WireError(f"unsupported protocol version {version}")
    flags = 0x02 if clean else 0
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
    if username is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    body = bytearray(utf8("MQTT") + bytes([version, flags]) + struct.pack("!H", keepalive))
    if version == MQTT5:
        props = bytearray()
        if session_expiry is not None:
            props += bytes([_PROP_SESSION_EXPIRY]) + struct.pack("!I", session_expiry)
        if receive_maximum is not None:
            props += bytes([_PROP_RECEIVE_MAXIMUM]) + struct.pack("!H", receive_maximum)
        body += varint(len(props)) + props
    body += utf8(client_id)
    if will is not None:
        if version == MQTT5:
            body += varint(0)  # no will properties
        body += utf8(will.topic) + binary(will.payload)
    if username is not None:
        body += utf8(username)
    if password is not None:
        body += binary(password.encode("utf-8"))
    return bytes([CONNECT << 4]) + varint(len(body)) + bytes(body)


def publish(
    topic: str | bytes,
    payload: bytes,
    *,
    qos: int = 0,
    retain: bool = False,
    packet_id: int = 0,
    version: int = MQTT311,
    dup: bool = False,
) -> bytes:
    """Encode a PUBLISH packet. ``packet_id`` (1..65535) is required for QoS 1."""
    if qos not in (0, 1):
        raise WireError("only QoS 0 and 1 are supported")
    if qos and not 1 <= packet_id <= 0xFFFF:
        raise WireError("QoS 1 needs a packet id in 1..65535")
    topic_b = topic if isinstance(topic, bytes) else topic.encode("utf-8")
    head = struct.pack("!H", len(topic_b)) + topic_b
    if qos:
        head += struct.pack("!H", packet_id)
    if version == MQTT5:
        head += b"\x00"  # no publish properties
    flags = (PUBLISH << 4) | (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0)
    return bytes([flags]) + varint(len(head) + len(payload)) + head + payload


def puback(packet_id: int) -> bytes:
    """Encode a PUBACK (success; the short form is valid in both versions)."""
    return b"\x40\x02" + struct.pack("!H", packet_id)


def subscribe(packet_id: int, topic_filter: str, qos: int = 0, *, version: int = MQTT311) -> bytes:
    """Encode a SUBSCRIBE for one topic filter."""
    body = struct.pack("!H", packet_id)
    if version == MQTT5:
        body += b"\x00"
    body += utf8(topic_filter) + bytes([qos])
    return bytes([(SUBSCRIBE << 4) | 0x02]) + varint(len(body)) + body


@dataclass(frozen=True, slots=True)
class Packet:
    """One decoded packet: its type (high nibble), flags (low nibble) and body."""

    type: int
    flags: int
    body: bytes


def split_packets(buf: bytearray) -> list[Packet]:
    """Remove every complete packet from the front of ``buf`` and return them in order.

    An incomplete packet at the end stays in ``buf`` for the next read.
    """
    out: list[Packet] = []
    pos = 0
    while pos < len(buf):
        first = buf[pos]
        rl = read_varint(buf, pos + 1)
        if rl is None:
            break
        length, start = rl
        if start + length > len(buf):
            break
        out.append(Packet(first >> 4, first & 0x0F, bytes(buf[start : start + length])))
        pos = start + length
    del buf[:pos]
    return out


@dataclass(frozen=True, slots=True)
class Message:
    """A PUBLISH as a subscriber receives it."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    packet_id: int


def parse_publish(pkt: Packet, *, version: int = MQTT311) -> Message:
    """Decode the body of a PUBLISH packet."""
    if pkt.type != PUBLISH:
        raise WireError(f"not a PUBLISH packet: type {pkt.type}")
    body = pkt.body
    if len(body) < 2:
        raise WireError("PUBLISH too short")
    (tlen,) = struct.unpack_from("!H", body, 0)
    pos = 2 + tlen
    topic = body[2:pos].decode("utf-8")
    qos = (pkt.flags >> 1) & 0x03
    packet_id = 0
    if qos:
        (packet_id,) = struct.unpack_from("!H", body, pos)
        pos += 2
    if version == MQTT5:
        rl = read_varint(body, pos)
        if rl is None:
            raise WireError("PUBLISH properties truncated")
        plen, pos = rl
        pos += plen
    return Message(topic, body[pos:], qos, bool(pkt.flags & 0x01), packet_id)


def connack_code(pkt: Packet) -> int:
    """The CONNACK's return code (3.1.1) or reason code (5): 0 means accepted."""
    if pkt.type != CONNACK or len(pkt.body) < 2:
        raise WireError("not a CONNACK")
    return pkt.body[1]


def packet_id_of(pkt: Packet) -> int:
    """The packet id of a PUBACK or SUBACK."""
    if len(pkt.body) < 2:
        raise WireError("packet too short for a packet id")
    return int(struct.unpack_from("!H", pkt.body, 0)[0])
