"""Raw receive cost of the MQTT clients alone: ``python -m bench.mqtt_bench [--messages N] [--repeat R]``.

Each receiver runs in its own process against one private Mosquitto and takes the same
pre-encoded stream (the contract's mix: heartbeats QoS 0, one txn in ten QoS 1), doing
nothing with a message but count it and acknowledge the QoS 1 ones at once:

* ``mosquitto_sub -q 1`` (C, libmosquitto): the reference;
* ``gmqtt``: gmqtt 0.8 over MQTT 5 as the adapter used it before issue 16 (a synchronous
  ``on_message`` and the QoS 1 handler replaced so the PUBACK is sent by us), and
  ``gmqtt-trimmed`` (its read path replaced by our codec): only when gmqtt is installed
  (``pip install '.[compare]'``), since fleetwatch itself no longer depends on it;
* ``lean``: :mod:`fleetwatch.mqtt5`.

Reported per receiver: the drain rate (messages / time from the first byte published
to the last message received) and the receiver's own CPU time per message (less
sensitive to what else the machine runs than the rate). Receivers run one after the
other, in rotating order, ``--repeat`` times. Exit 1 when a receiver missed a message.
Supports docs/decisions/0003.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import uvloop

from bench import stream as streams
from bench.broker import mosquitto
from bench.publisher import connect_all, publish
from fleetwatch.mqtt5 import Client, ConnectOptions
from fleetwatch.mqtt5.codec import FrameReader, Packet

MOSQUITTO_SUB = "/usr/bin/mosquitto_sub"
TOPIC_FILTER = "fleet/v1/#"


# ---- the receivers (run in a child process) ------------------------------------------


class _Counter:
    def __init__(self, total: int, done: asyncio.Future[None]) -> None:
        self.total = total
        self.n = 0
        self.done = done
        self.last = 0.0


async def _receive_lean(port: int, total: int) -> _Counter:
    loop = asyncio.get_running_loop()
    counter = _Counter(total, loop.create_future())
    client: Client

    def on_message(topic: str, payload: bytes, qos: int, retain: bool, packet_id: int) -> None:
        if qos:
            conn = client.connection
            if conn is not None:
                conn.puback(packet_id)
        counter.n += 1
        if counter.n >= counter.total and not counter.done.done():
            counter.last = time.time()
            counter.done.set_result(None)

    client = Client(ConnectOptions(f"bench-lean-{os.getpid()}", keepalive=60, receive_maximum=1000), on_message)
    await client.connect("127.0.0.1", port)
    await client.subscribe([(TOPIC_FILTER, 1)])
    counter.client = client  # type: ignore[attr-defined]
    return counter


async def _receive_gmqtt(port: int, total: int) -> _Counter:
    from gmqtt import Client as GClient  # noqa: PLC0415 - optional (pip install '.[compare]')
    from gmqtt import Subscription  # noqa: PLC0415
    from gmqtt.mqtt.constants import MQTTv50  # noqa: PLC0415

    loop = asyncio.get_running_loop()
    counter = _Counter(total, loop.create_future())
    client = GClient(f"bench-gmqtt-{os.getpid()}", optimistic_acknowledgement=False, receive_maximum=1000)
    handler = client._package_handler

    def count() -> None:
        counter.n += 1
        if counter.n >= counter.total and not counter.done.done():
            counter.last = time.time()
            counter.done.set_result(None)

    def on_message(_client: Any, topic: str, payload: bytes, qos: int, properties: Any) -> None:
        count()

    def on_qos1(mid: int, payload: bytes, topic: str, properties: Any) -> None:
        handler._send_puback(mid)
        count()

    subscribed: asyncio.Future[None] = loop.create_future()

    def on_subscribe(*_args: Any) -> None:
        if not subscribed.done():
            subscribed.set_result(None)

    client.on_message = on_message
    client.on_subscribe = on_subscribe
    handler._handle_qos_1_publish_packet = on_qos1
    await client.connect("127.0.0.1", port, keepalive=60, version=MQTTv50)
    client.subscribe([Subscription(TOPIC_FILTER, qos=1)])
    await subscribed
    counter.client = client  # type: ignore[attr-defined]
    return counter


async def _receive_gmqtt_trimmed(port: int, total: int) -> _Counter:
    """gmqtt with its read path cut short: PUBLISH parsed by our codec straight from its
    buffer into the callback; every other packet still goes through gmqtt's handler."""
    from gmqtt.mqtt.package import Package  # noqa: PLC0415 - optional (pip install '.[compare]')

    counter = await _receive_gmqtt(port, total)
    gclient = counter.client  # type: ignore[attr-defined]
    conn = gclient._connection
    handler = gclient._package_handler

    def on_publish(topic: str, payload: bytes, qos: int, retain: bool, packet_id: int) -> None:
        if qos:
            handler._send_puback(packet_id)
        counter.n += 1
        if counter.n >= counter.total and not counter.done.done():
            counter.last = time.time()
            counter.done.set_result(None)

    def on_packet(pkt: Packet) -> None:
        conn.put_package(Package((pkt.type << 4) | pkt.flags, pkt.body))

    reader = FrameReader(on_publish, on_packet)

    def read_packet(data: bytes) -> int:
        conn._last_data_in = time.monotonic()
        return reader._parse(bytes(data), len(data))

    conn._protocol._read_packet = read_packet
    return counter


RECEIVERS: dict[str, Callable[[int, int], Any]] = {
    "lean": _receive_lean, "gmqtt": _receive_gmqtt, "gmqtt-trimmed": _receive_gmqtt_trimmed,
}


def available_receivers() -> list[str]:
    """The receivers this machine can run: gmqtt's only where gmqtt is installed."""
    with_gmqtt = importlib.util.find_spec("gmqtt") is not None
    return ["mosquitto_sub", *(["gmqtt", "gmqtt-trimmed"] if with_gmqtt else []), "lean"]


async def _child(kind: str, port: int, total: int) -> None:
    counter = await RECEIVERS[kind](port, total)
    cpu0 = time.process_time()
    print("ready", flush=True)
    await counter.done
    cpu = time.process_time() - cpu0
    print(json.dumps({"received": counter.n, "last": counter.last, "cpu": cpu}), flush=True)


def child_main(kind: str, port: int, total: int) -> None:
    uvloop.run(_child(kind, port, total))  # as the daemon runs


# ---- the parent ------------------------------------------------------------------------


async def _run_python(kind: str, port: int, st: streams.Stream) -> dict[str, float]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.mqtt_bench", "--child", kind, "--port", str(port), "--messages",
        str(st.messages), stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    line = await proc.stdout.readline()
    if line.strip() != b"ready":
        raise RuntimeError(f"{kind} receiver did not start: {line!r}")
    clients = await connect_all(port, 4, f"bench-pub-{kind}")
    res = await publish(clients, st)
    out = json.loads(await asyncio.wait_for(proc.stdout.readline(), 300))
    await proc.wait()
    await asyncio.gather(*(c.close() for c in clients))
    return {"rate": out["received"] / (out["last"] - res.started), "cpu_us": out["cpu"] / st.messages * 1e6,
            "received": out["received"]}


async def _run_c(port: int, st: streams.Stream) -> dict[str, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = await asyncio.create_subprocess_exec(
        MOSQUITTO_SUB, "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-t", TOPIC_FILTER, "-C", str(st.messages),
        "-i", f"bench-c-{port}", stdout=asyncio.subprocess.DEVNULL)
    await asyncio.sleep(0.5)
    clients = await connect_all(port, 4, "bench-pub-c")
    res = await publish(clients, st)
    await asyncio.wait_for(proc.wait(), 300)
    done = time.time()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # mosquitto_sub is the only child reaped since
    await asyncio.gather(*(c.close() for c in clients))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"rate": st.messages / (done - res.started), "cpu_us": cpu / st.messages * 1e6, "received": st.messages}


async def measure(messages: int, repeat: int, kinds: list[str]) -> dict[str, list[dict[str, float]]]:
    st = streams.mix(streams.make_terminals(20_000), messages)
    results: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    with mosquitto() as broker:
        for r in range(repeat):
            order = kinds[r % len(kinds):] + kinds[:r % len(kinds)]
            for kind in order:
                got = await (_run_c(broker.port, st) if kind == "mosquitto_sub" else
                             _run_python(kind, broker.port, st))
                results[kind].append(got)
                print(f"  run {r + 1} {kind:<14} {got['rate']:>10,.0f} msg/s  {got['cpu_us']:6.2f} µs CPU/msg",
                      flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.mqtt_bench", description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=200_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--clients", default=",".join(available_receivers()),
                   help="comma-separated receivers (default: every one installed here)")
    p.add_argument("--child", choices=sorted(RECEIVERS), help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        child_main(a.child, a.port, a.messages)
        return 0
    kinds = a.clients.split(",")
    results = asyncio.run(measure(a.messages, a.repeat, kinds))
    print(f"\nmedian of {a.repeat}, {a.messages:,} messages (90% heartbeats QoS 0, 10% txns QoS 1), 20,000 terminals")
    print(f"{'receiver':<14} {'drain rate':>14} {'CPU per message':>16} {'received':>10}")
    for kind, runs in results.items():
        rate = statistics.median(x["rate"] for x in runs)
        cpu = statistics.median(x["cpu_us"] for x in runs)
        got = min(x["received"] for x in runs)
        print(f"{kind:<14} {rate:>10,.0f} msg/s {cpu:>12.2f} µs {got:>10,.0f}")
    complete = all(x["received"] == a.messages for runs in results.values() for x in runs)
    if not complete:
        print("a receiver missed messages")
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
