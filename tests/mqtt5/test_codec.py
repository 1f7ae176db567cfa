"""The MQTT 5 codec without a broker: what we encode is what the standard says, and the
reader delivers exactly the packets in the stream however the stream is cut."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetwatch.mqtt5 import codec
from fleetwatch.mqtt5.codec import ConnectOptions, FrameReader, Packet, ProtocolViolation

Delivery = tuple[str, bytes, int, bool, int]


def reader(alias_maximum: int = 0) -> tuple[FrameReader, list[Delivery], list[Packet]]:
    got: list[Delivery] = []
    other: list[Packet] = []
    r = FrameReader(lambda *m: got.append(m), other.append, alias_maximum=alias_maximum)
    return r, got, other


def publish_with_props(topic: str, payload: bytes, props: list[tuple[int, object]], *, qos: int = 0,
                       packet_id: int = 0) -> bytes:
    """A PUBLISH carrying properties (our encoder never adds any; brokers may)."""
    head = codec.utf8(topic) + (struct.pack("!H", packet_id) if qos else b"") + codec.encode_properties(props)
    return bytes([0x30 | qos << 1]) + codec.varint(len(head) + len(payload)) + head + payload


def test_connect_carries_identity_credentials_session_and_flow_control() -> None:
    frame = codec.connect(ConnectOptions("fw-1", keepalive=30, clean_start=False, session_expiry=3600,
                                         receive_maximum=1000, username="fleet", password=b"s3cret pass"))
    assert frame[0] == 0x10
    length, pos = codec.read_varint(frame, 1, len(frame)) or (0, 0)
    assert pos + length == len(frame)
    body = frame[pos:]
    assert body[:7] == b"\x00\x04MQTT\x05"
    flags = body[7]
    assert flags == 0xC0  # user name and password, clean start off
    assert struct.unpack("!H", body[8:10]) == (30,)
    props, after = codec.parse_properties(body, 10, len(body))
    assert props == {codec.P_SESSION_EXPIRY: 3600, codec.P_RECEIVE_MAXIMUM: 1000}
    assert body[after:] == b"\x00\x04fw-1" + b"\x00\x05fleet" + b"\x00\x0bs3cret pass"


def test_connect_with_clean_start_and_no_credentials_has_neither_flag() -> None:
    frame = codec.connect(ConnectOptions("x"))
    assert frame[2 + 7] == 0x02


@pytest.mark.parametrize(("qos", "retain", "dup", "packet_id"), [(0, False, False, 0), (1, True, False, 7),
                                                                  (1, False, True, 65535)])
def test_publish_round_trips_through_the_reader(qos: int, retain: bool, dup: bool, packet_id: int) -> None:
    r, got, other = reader()
    r.feed(codec.publish("fleet/v1/term/T1/txn", b'{"v":1}', qos=qos, retain=retain, packet_id=packet_id, dup=dup))
    assert got == [("fleet/v1/term/T1/txn", b'{"v":1}', qos, retain, packet_id)]
    assert other == []
    assert r.duplicates == (1 if dup else 0)


def test_set_dup_marks_a_frame_as_redelivery() -> None:
    frame = codec.publish("t", b"p", qos=1, packet_id=3, retain=True)
    r, got, _ = reader()
    r.feed(codec.set_dup(frame))
    assert got == [("t", b"p", 1, True, 3)]
    assert r.duplicates == 1


def test_zero_length_retained_publish_is_valid() -> None:
    r, got, _ = reader()
    r.feed(codec.publish("fleet/v1/term/T1/notice", b"", qos=1, retain=True, packet_id=1))
    assert got == [("fleet/v1/term/T1/notice", b"", 1, True, 1)]


def test_a_stream_cut_byte_by_byte_delivers_the_same_packets() -> None:
    frames = [codec.publish(f"a/{i}", bytes([i]) * (i * 50), qos=i % 2, packet_id=i % 2 * (i + 1))
              for i in range(10)]
    stream = b"".join(frames) + b"\xd0\x00"  # and a PINGRESP
    whole, got_whole, other_whole = reader()
    whole.feed(stream)
    cut, got_cut, other_cut = reader()
    for i in range(len(stream)):
        cut.feed(stream[i : i + 1])
    assert got_cut == got_whole
    assert len(got_whole) == 10
    assert other_cut == other_whole == [Packet(codec.PINGRESP, 0, b"")]


def test_a_large_packet_in_many_chunks_arrives_whole() -> None:
    payload = bytes(range(256)) * 4000  # about 1 MB: a four-byte remaining length
    frame = codec.publish("big", payload, qos=1, packet_id=9)
    r, got, _ = reader()
    for i in range(0, len(frame), 1000):
        r.feed(frame[i : i + 1000])
    assert got == [("big", payload, 1, False, 9)]


@given(st.lists(st.tuples(st.text(min_size=1, max_size=40), st.binary(max_size=300), st.integers(0, 1),
                          st.booleans()), max_size=20),
       st.lists(st.integers(1, 64), min_size=1, max_size=50))
def test_any_chunking_of_any_publishes_delivers_them_in_order(
        messages: list[tuple[str, bytes, int, bool]], cuts: list[int]) -> None:
    frames = [codec.publish(t, p, qos=q, retain=r, packet_id=q * (i + 1)) for i, (t, p, q, r) in enumerate(messages)]
    stream = b"".join(frames)
    rd, got, _ = reader()
    pos = i = 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        rd.feed(stream[pos : pos + step])
        pos += step
        i += 1
    assert got == [(t, p, q, r, q * (i + 1)) for i, (t, p, q, r) in enumerate(messages)]


def test_publish_properties_are_skipped_and_user_properties_do_not_disturb_the_payload() -> None:
    r, got, _ = reader()
    r.feed(publish_with_props("t/1", b"body", [(codec.P_MESSAGE_EXPIRY, 60),
                                                (codec.P_USER_PROPERTY, ("k", "v")),
                                                (codec.P_USER_PROPERTY, ("k", "w")),
                                                (codec.P_CONTENT_TYPE, "application/json")], qos=1, packet_id=4))
    assert got == [("t/1", b"body", 1, False, 4)]


def test_topic_aliases_set_by_the_broker_are_resolved() -> None:
    r, got, _ = reader(alias_maximum=10)
    r.feed(publish_with_props("fleet/v1/term/T9/heartbeat", b"1", [(codec.P_TOPIC_ALIAS, 3)]))
    r.feed(publish_with_props("", b"2", [(codec.P_TOPIC_ALIAS, 3)]))
    r.feed(publish_with_props("fleet/v1/term/T8/heartbeat", b"3", [(codec.P_TOPIC_ALIAS, 3)]))
    r.feed(publish_with_props("", b"4", [(codec.P_TOPIC_ALIAS, 3)]))
    assert [(t, p) for t, p, *_ in got] == [("fleet/v1/term/T9/heartbeat", b"1"), ("fleet/v1/term/T9/heartbeat", b"2"),
                                            ("fleet/v1/term/T8/heartbeat", b"3"), ("fleet/v1/term/T8/heartbeat", b"4")]


def test_an_unknown_or_out_of_range_alias_is_a_protocol_violation() -> None:
    r, _, _ = reader(alias_maximum=10)
    with pytest.raises(ProtocolViolation) as unknown:
        r.feed(publish_with_props("", b"x", [(codec.P_TOPIC_ALIAS, 2)]))
    assert unknown.value.code == codec.PROTOCOL_ERROR
    r, _, _ = reader(alias_maximum=0)
    with pytest.raises(ProtocolViolation) as outside:
        r.feed(publish_with_props("t", b"x", [(codec.P_TOPIC_ALIAS, 1)]))
    assert outside.value.code == codec.TOPIC_ALIAS_INVALID


@pytest.mark.parametrize("bad", [
    b"\x34\x05\x00\x01t\x00\x01",          # QoS 2 to a QoS 1 subscriber
    b"\x30\xff\xff\xff\xff\x01",            # remaining length longer than four bytes
    b"\x30\x01\x00",                        # PUBLISH too short for its topic length
    b"\x30\x03\x00\x01t",                   # no property length
    b"\x30\x05\x00\x01t\x05\x99",           # properties running past the packet
    b"\x30\x06\x00\x01t\x02\x7f\x00",       # an unknown property
])
def test_malformed_packets_raise_instead_of_delivering(bad: bytes) -> None:
    r, got, _ = reader()
    with pytest.raises(ProtocolViolation):
        r.feed(bad)
    assert got == []


def test_an_invalid_utf8_topic_is_delivered_with_replacement_characters() -> None:
    frame = b"\x30\x06\x00\x02\xff\xfe\x00x"
    r, got, _ = reader()
    r.feed(frame)
    assert got == [("\ufffd\ufffd", b"x", 0, False, 0)]


def test_a_failing_callback_is_counted_and_the_stream_goes_on() -> None:
    seen: list[str] = []

    def on_publish(topic: str, payload: bytes, qos: int, retain: bool, packet_id: int) -> None:
        if topic == "bad":
            raise RuntimeError("boom")
        seen.append(topic)

    r = FrameReader(on_publish, lambda _p: None)
    r.feed(codec.publish("a", b"") + codec.publish("bad", b"") + codec.publish("b", b""))
    assert seen == ["a", "b"]
    assert r.callback_errors == 1
    assert isinstance(r.last_error, RuntimeError)


def test_connack_suback_puback_and_disconnect_are_parsed_with_their_reasons() -> None:
    connack = codec.parse_connack(b"\x01\x00" + codec.encode_properties([(codec.P_RECEIVE_MAXIMUM, 20),
                                                                          (codec.P_SERVER_KEEP_ALIVE, 15)]))
    assert connack == codec.ConnAck(True, 0, {codec.P_RECEIVE_MAXIMUM: 20, codec.P_SERVER_KEEP_ALIVE: 15})
    assert codec.parse_connack(b"\x00\x86").reason == 0x86
    suback = codec.parse_ack(Packet(codec.SUBACK, 0, b"\x00\x05\x00\x01\x87"))
    assert suback == codec.Ack(5, (1, 0x87))
    assert codec.parse_ack(Packet(codec.PUBACK, 0, b"\x00\x09")) == codec.Ack(9, (0,))
    refused = codec.parse_ack(Packet(codec.PUBACK, 0, b"\x00\x09\x87" + codec.encode_properties(
        [(codec.P_REASON_STRING, "acl")])))
    assert refused == codec.Ack(9, (0x87,), {codec.P_REASON_STRING: "acl"})
    assert codec.parse_disconnect(b"") == codec.Disconnect(0)
    assert codec.parse_disconnect(b"\x8e") == codec.Disconnect(0x8E)


def test_subscribe_and_disconnect_encodings() -> None:
    frame = codec.subscribe(3, [("a/+", 1), ("b/#", 0)])
    assert frame == b"\x82\x0f\x00\x03\x00" + b"\x00\x03a/+\x01" + b"\x00\x03b/#\x00"
    assert codec.disconnect() == b"\xe0\x00"
    assert codec.disconnect(0x04) == b"\xe0\x02\x04\x00"
    assert codec.puback(258) == b"\x40\x02\x01\x02"


def test_every_reason_code_has_the_standards_name() -> None:
    assert codec.reason_name(0x86) == "bad user name or password"
    assert codec.reason_name(0x87) == "not authorized"
    assert codec.reason_name(0x8E) == "session taken over"
    assert codec.reason_name(0x42) == "reason 0x42"
    assert len(codec.REASON_NAMES) == 43


def test_a_property_given_twice_is_refused() -> None:
    block = codec.encode_properties([(codec.P_RECEIVE_MAXIMUM, 1), (codec.P_RECEIVE_MAXIMUM, 2)])
    with pytest.raises(ProtocolViolation):
        codec.parse_properties(block, 0, len(block))
