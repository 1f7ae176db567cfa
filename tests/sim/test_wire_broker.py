"""The frame encoder and client against a real Mosquitto: the broker accepts what we write."""

from __future__ import annotations

import asyncio
import threading

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fleetwatch.sim import wire
from fleetwatch.sim.client import WireClient

pytestmark = pytest.mark.broker


class Collector:
    """A paho subscriber (an independent implementation) recording what arrives."""

    def __init__(self, port: int, topic: str) -> None:
        self.got: list[tuple[str, bytes, int, bool]] = []
        self.ready = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.c.on_message = lambda _c, _u, m: self.got.append((m.topic, bytes(m.payload), m.qos, bool(m.retain)))
        self.c.on_subscribe = lambda *_a: self.ready.set()
        self.c.on_connect = lambda c, *_a: c.subscribe(topic, qos=1)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert self.ready.wait(10)

    def stop(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


async def _wait_for(cond: object, seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if cond():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("version", [wire.MQTT311, wire.MQTT5])
async def test_frames_round_trip_through_mosquitto(broker_port: int, version: int) -> None:
    """QoS 0/1 PUBLISH frames we encode (3.1.1 and 5) reach a paho subscriber byte for byte, all acked."""
    topic = f"wire-{version}/t"
    sub = Collector(broker_port, f"wire-{version}/#")
    client = WireClient("127.0.0.1", broker_port, f"wire-test-{version}", version=version)
    await client.connect()
    sent = [(topic, f'{{"n":{i}}}'.encode(), i % 2) for i in range(50)]
    for t, p, q in sent:
        client.publish(t, p, qos=q)
    await client.wait_outstanding(0, 10)
    await _wait_for(lambda: len(sub.got) >= len(sent))
    await client.close()
    sub.stop()
    assert client.acked == 25
    assert [(t, p, q) for t, p, q, _ in sub.got] == sent


async def test_pre_encoded_blob_is_accepted(broker_port: int) -> None:
    """Many frames written as one pre-encoded blob (the benchmark path) all arrive and are acked."""
    sub = Collector(broker_port, "blob/#")
    client = WireClient("127.0.0.1", broker_port, "wire-blob")
    await client.connect()
    blob = b"".join(wire.publish("blob/x", str(i).encode(), qos=1, packet_id=i + 1) for i in range(300))
    client.write_raw(blob, 300)
    await client.wait_outstanding(0, 10)
    await _wait_for(lambda: len(sub.got) >= 300)
    await client.close()
    sub.stop()
    assert [p for _, p, _, _ in sub.got] == [str(i).encode() for i in range(300)]


async def test_abort_publishes_the_will(broker_port: int) -> None:
    """Dropping the socket without DISCONNECT makes the broker publish our retained QoS 1 Will."""
    sub = Collector(broker_port, "will/#")
    client = WireClient("127.0.0.1", broker_port, "wire-will",
                        will=wire.Will("will/T1/state", b"offline", qos=1, retain=True))
    await client.connect()
    client.publish("will/T1/state", b"online", qos=1, retain=True)
    await client.wait_outstanding(0, 10)
    client.abort()
    await _wait_for(lambda: any(p == b"offline" for _, p, _, _ in sub.got))
    sub.stop()
    assert [p for _, p, _, _ in sub.got] == [b"online", b"offline"]
