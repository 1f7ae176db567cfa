"""The MQTT frame encoder/decoder, pure (no broker)."""

from __future__ import annotations

import pytest

from fleetwatch.sim import wire


@pytest.mark.parametrize("n", [0, 1, 127, 128, 16383, 16384, 2_097_151, 2_097_152, 268_435_455])
def test_varint_round_trips(n: int) -> None:
    """Remaining lengths survive encode/decode at every byte-count boundary of the spec."""
    enc = wire.varint(n)
    assert wire.read_varint(enc, 0) == (n, len(enc))


def test_varint_rejects_out_of_range() -> None:
    """Values the protocol cannot carry are refused instead of silently truncated."""
    with pytest.raises(wire.WireError):
        wire.varint(268_435_456)


@pytest.mark.parametrize("version", [wire.MQTT311, wire.MQTT5])
@pytest.mark.parametrize(("qos", "retain"), [(0, False), (1, True)])
def test_publish_parses_back(version: int, qos: int, retain: bool) -> None:
    """A PUBLISH we encode decodes to the same topic, payload, QoS, retain flag and packet id."""
    frame = wire.publish("fleet/v1/term/T1/txn", b'{"v":1}', qos=qos, retain=retain,
                         packet_id=7 if qos else 0, version=version)
    buf = bytearray(frame)
    (pkt,) = wire.split_packets(buf)
    assert buf == b""
    msg = wire.parse_publish(pkt, version=version)
    assert (msg.topic, msg.payload, msg.qos, msg.retain) == ("fleet/v1/term/T1/txn", b'{"v":1}', qos, retain)
    assert msg.packet_id == (7 if qos else 0)


def test_split_keeps_incomplete_tail() -> None:
    """A packet cut by TCP segmentation stays in the buffer until its rest arrives."""
    a = wire.publish("t", b"x" * 300)
    b = wire.publish("u", b"y")
    buf = bytearray(a + b[:2])
    assert [p.type for p in wire.split_packets(buf)] == [wire.PUBLISH]
    assert bytes(buf) == b[:2]
    buf += b[2:]
    assert wire.parse_publish(wire.split_packets(buf)[0]).topic == "u"


def test_connect_carries_will_flags() -> None:
    """CONNECT with a retained QoS 1 Will sets the will, will-QoS and will-retain flags."""
    frame = wire.connect("c1", will=wire.Will("s/t", b"offline", qos=1, retain=True), keepalive=30)
    (pkt,) = wire.split_packets(bytearray(frame))
    assert pkt.type == wire.CONNECT
    flags = pkt.body[7]
    assert flags & 0x04
    assert (flags >> 3) & 0x03 == 1
    assert flags & 0x20
    assert flags & 0x02


def test_qos1_needs_packet_id() -> None:
    """QoS 1 without a packet id would be a protocol error at the broker: refused here."""
    with pytest.raises(wire.WireError):
        wire.publish("t", b"", qos=1)
