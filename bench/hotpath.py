"""CPU per message of each stage of the daemon's hot path, in one process: ``python -m bench hotpath``.

No broker, no sockets, no store: the ingest bench's pre-encoded stream (the contract's
mix, 20,000 terminals) is taken apart stage by stage, each stage timed alone over the
whole stream in the thread's own CPU time (``time.thread_time``: time spent waiting for a
core does not count), best of ``--repeat`` runs:

* ``mqtt parse``: :class:`fleetwatch.mqtt5.codec.FrameReader` over the stream's bytes as
  a broker would deliver them (MQTT 5 frames), callback doing nothing;
* ``decode``: :meth:`fleetwatch.core.decode.Decoder.decode` of every message;
* ``engine``: :meth:`fleetwatch.core.engine.Engine.apply` of every decoded message, on a
  fresh engine each run (the first ninth of the stream creates the terminals);
* ``intake``: the whole synchronous path of one delivery as the daemon runs it: the
  parse loop calling the MQTT adapter, which calls ``Pipeline.on_message`` (decode,
  engine, counters, the pending batch) and registers the acknowledgement; commits are
  completed (with nothing written) every 1,000 messages, as the writer would.

Less sensitive to other load than ``python -m bench ingest`` (it is one process on one
core, and the best run is kept), so it is the figure to compare changes to the hot path
with. What it leaves out: the store's writer thread and the broker's socket.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from bench import stream as streams
from bench.report import Figure
from fleetwatch import COMPILED
from fleetwatch.adapters.metrics import Metrics
from fleetwatch.adapters.mqtt import MqttSource
from fleetwatch.config import MqttSettings, Settings
from fleetwatch.core.decode import Decoder, Rejection
from fleetwatch.core.engine import Engine
from fleetwatch.core.messages import Envelope
from fleetwatch.mqtt5.codec import FrameReader, Packet
from fleetwatch.pipeline import Pipeline
from fleetwatch.sim import wire

PREFIX = "fleet/v1"
Delivery = tuple[str, bytes, int, bool, int]


@dataclass(frozen=True, slots=True)
class StageTimes:
    """Best-of-N microseconds per message for each stage."""

    mqtt: float
    decode: float
    engine: float
    intake: float
    messages: int


def _frames(st: streams.Stream) -> list[bytes]:
    return [chunk for lane in st.lanes for chunk, _q, _n in lane.chunks]


def _deliveries(frames: list[bytes]) -> list[Delivery]:
    got: list[Delivery] = []
    reader = FrameReader(lambda *d: got.append(d), _no_packet)
    for chunk in frames:
        reader.feed(chunk)
    return got


def _no_packet(_pkt: Packet) -> None:
    raise AssertionError("the stream holds only PUBLISH packets")


def _best(repeat: int, run: Callable[[], float]) -> float:
    times = []
    for _ in range(repeat):
        gc.collect()
        times.append(run())
    return min(times)


def _time_parse(frames: list[bytes]) -> float:
    def nothing(_t: str, _p: bytes, _q: int, _r: bool, _i: int) -> None:
        return None

    reader = FrameReader(nothing, _no_packet)
    t0 = time.thread_time()
    for chunk in frames:
        reader.feed(chunk)
    return time.thread_time() - t0


def _time_decode(deliveries: list[Delivery], now: float) -> tuple[float, list[Envelope]]:
    decoder = Decoder(PREFIX)
    decode = decoder.decode
    t0 = time.thread_time()
    out = [decode(topic, payload, now, retain) for topic, payload, _q, retain, _i in deliveries]
    took = time.thread_time() - t0
    envs = [e for e in out if isinstance(e, Envelope)]
    rejected = [e for e in out if isinstance(e, Rejection)]
    if rejected:
        raise AssertionError(f"the stream should decode cleanly: {rejected[0]}")
    return took, envs


def _time_engine(envs: list[Envelope], settings: Settings) -> float:
    engine = Engine(settings.detect, settings.settlement)
    apply = engine.apply
    t0 = time.thread_time()
    for env in envs:
        apply(env)
    return time.thread_time() - t0


class _NullStore:
    def write(self, *_args: object) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


async def _time_intake(frames: list[bytes], settings: Settings) -> float:
    engine = Engine(settings.detect, settings.settlement)
    pipeline = Pipeline(settings, engine, _NullStore(), Metrics())
    source = MqttSource(MqttSettings(topic_prefix=PREFIX))
    source._sink = pipeline.on_message  # the adapter's own delivery callback, without a socket
    reader = FrameReader(source._on_publish, _no_packet)
    t0 = time.thread_time()
    for n, chunk in enumerate(frames, 1):
        reader.feed(chunk)
        if n % 4 == 0:  # about every 1,000 messages: complete the batch as a commit would
            await _commit(pipeline)
    return time.thread_time() - t0


async def _commit(pipeline: Pipeline) -> None:
    future = pipeline._future  # what the writer does after a commit, minus the store
    pipeline._pending, pipeline._future = [], None
    if future is not None:
        future.set_result(None)
    await asyncio.sleep(0)  # let the acknowledgement callbacks run


def measure(terminals: int = 20_000, messages: int = 200_000, repeat: int = 5) -> StageTimes:
    st = streams.mix(streams.make_terminals(terminals), messages, connections=1, prefix=PREFIX,
                     version=wire.MQTT5)
    frames = _frames(st)
    deliveries = _deliveries(frames)
    n = len(deliveries)
    settings = Settings(mqtt=MqttSettings(topic_prefix=PREFIX))
    now = time.time()
    envs: list[Envelope] = []

    def decode_run() -> float:
        nonlocal envs
        took, envs = _time_decode(deliveries, now)
        return took

    mqtt = _best(repeat, lambda: _time_parse(frames))
    decode = _best(repeat, decode_run)
    engine = _best(repeat, lambda: _time_engine(envs, settings))
    intake = _best(repeat, lambda: asyncio.run(_time_intake(frames, settings)))
    us = 1e6 / n
    return StageTimes(mqtt * us, decode * us, engine * us, intake * us, n)


def measure_pure(terminals: int, messages: int, repeat: int) -> StageTimes:
    """The same measurement with the hot path as plain Python (FLEETWATCH_PURE=1), in a
    fresh interpreter: a process that imported the compiled modules cannot unload them."""
    run = subprocess.run([sys.executable, "-m", "bench.hotpath", str(terminals), str(messages), str(repeat)],
                         env={**os.environ, "FLEETWATCH_PURE": "1"}, capture_output=True, text=True, check=True)
    return StageTimes(**json.loads(run.stdout))


_STAGES: Final = (
    ("mqtt", "MQTT parse (FrameReader)"),
    ("decode", "decode (Decoder.decode)"),
    ("engine", "engine (Engine.apply)"),
    ("intake", "intake: parse + adapter + Pipeline.on_message"),
)


def figure(repeat: int = 5, smoke: bool = False) -> Figure:
    """Each stage as built (mypyc-compiled when the install is) and, beside it in the same
    run, as plain Python."""
    terminals, messages = (200, 2_000) if smoke else (20_000, 200_000)
    t = measure(terminals, messages, repeat)
    fig = Figure("hotpath", "Hot path CPU per message, stage by stage (one process)",
                 "python -m bench hotpath" + (" --smoke" if smoke else ""))
    pure = measure_pure(terminals, messages, repeat) if COMPILED else None
    for attr, label in _STAGES:
        if pure is None:
            fig.rows.append((f"{label}, pure Python", f"{getattr(t, attr):.2f} µs", "", None))
        else:
            fig.rows.append((f"{label}, compiled", f"{getattr(t, attr):.2f} µs", "", None))
            fig.rows.append((f"{label}, pure Python", f"{getattr(pure, attr):.2f} µs", "", None))
    fig.rows.append(("intake as a rate on one free core", f"{1e6 / t.intake:,.0f} msg/s", "", None))
    if pure is not None:
        fig.rows.append(("intake CPU, compiled / pure Python", f"{t.intake / pure.intake:.2f}", "", None))
    fig.notes.append(f"{terminals:,} terminals, {t.messages:,} messages of the ingest mix; best of {repeat} "
                     f"runs; load average (1 min) {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    fig.notes.append("compiled: the modules in fleetwatch/compiled.txt built by mypyc (setup.py)" if COMPILED else
                     "this install is pure Python (built without mypyc), so there is nothing to compare")
    return fig


if __name__ == "__main__":  # measure_pure's child: python -m bench.hotpath TERMINALS MESSAGES REPEAT
    print(json.dumps(dataclasses.asdict(measure(*(int(a) for a in sys.argv[1:4])))))
