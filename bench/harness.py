"""The figures: each procedure sets up broker (and daemon), measures, and returns Figures.

Targets (issue 16 and the brief): ingest >= 100,000 msg/s end to end with zero loss, and
>= 0.4 of what ``mosquitto_sub -q 1`` drains from the same stream when each of them runs
**alone** against the broker, one after the other in the same command (0.5 is the
long-term goal). End to end means from the first byte published until the incident of
a closing tamper heartbeat, written after the stream, is visible in the API (so every
message before it was decided and committed); for mosquitto_sub, until it has received
that closing message. <= 1 KiB
RSS per terminal at 1,000,000 terminals; detection latency p99 <= 1 s at 20k msg/s
background; restart to /readyz <= 10 s with 1,000,000 terminals stored; /metrics <=
100 KiB and <= 50 ms at 1,000,000 terminals. On PostgreSQL (issue 15): ingest >= 0.7 of
SQLite's on the same stream and >= 30,000 msg/s; restart <= 15 s with 1,000,000
terminals. A run that loses a message fails (exit 1) whatever its speed: a fast
pipeline that drops money events is worthless.
"""

from __future__ import annotations

import asyncio
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench import stream as streams
from bench.broker import SysWatch, free_port, mosquitto
from bench.daemon import TOKEN, Daemon, new_daemon
from bench.publisher import connect_all, publish
from bench.report import Figure
from fleetwatch import COMPILED
from fleetwatch.sim import fleet
from fleetwatch.sim.client import WireClient
from fleetwatch.sim.fleet import Topics
from fleetwatch.sim.score import epoch

MOSQUITTO_SUB = "/usr/bin/mosquitto_sub"


@dataclass(frozen=True)
class Options:
    terminals: int = 20_000
    messages: int = 200_000
    rate: float | None = None
    connections: int = 4
    fleet: int = 1_000_000
    latency_rate: float = 20_000.0
    latency_seconds: float = 30.0
    smoke: bool = False
    no_daemon: bool = False
    repeat: int = 1
    command: str = "python -m bench"
    store: str = "sqlite"
    """Backend of the daemon in ingest, latency and the fleet figures: sqlite or postgresql."""
    new_database: Callable[[], str] | None = None
    """A fresh PostgreSQL database's URL (a private cluster the command started)."""

    def store_url(self, store: str | None = None) -> str | None:
        """None for SQLite (a file in the daemon's temp folder), else a fresh PostgreSQL database."""
        if (store or self.store) == "sqlite":
            return None
        assert self.new_database is not None, "PostgreSQL figures need a cluster"
        return self.new_database()

    @property
    def suffix(self) -> str:
        """Figure keys and commands of a PostgreSQL run are its own, beside SQLite's."""
        return "" if self.store == "sqlite" else f"_{self.store}"

    @property
    def store_flag(self) -> str:
        return "" if self.store == "sqlite" else f" --store {self.store}"


def _rate(x: float) -> str:
    return f"{x:,.0f} msg/s"


class Drain:
    """``mosquitto_sub -q 1 -t 'fleet/v1/#' -C N`` writing to a file; exits after N messages."""

    def __init__(self, port: int, count: int, workdir: Path) -> None:
        self.out = workdir / "sub.out"
        self.count = count
        with self.out.open("wb") as fh:
            self.proc = subprocess.Popen(
                [MOSQUITTO_SUB, "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-t", "fleet/v1/#",
                 "-C", str(count), "-i", f"bench-sub-{port}"], stdout=fh, stderr=subprocess.DEVNULL)

    def wait(self, within: float) -> float:
        """Wall time at which it had everything (or gave up)."""
        try:
            self.proc.wait(within)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait()
        return time.time()

    def lines(self) -> int:
        with self.out.open("rb") as fh:
            return sum(1 for _ in fh)


async def figure_publisher(opts: Options) -> Figure:
    """The publisher alone: into a null sink, into Mosquitto, and Mosquitto drained by mosquitto_sub."""
    fig = Figure("publisher", "Publisher alone (bench harness)", f"{opts.command} publisher"
                 + (" --smoke" if opts.smoke else ""))
    terms = streams.make_terminals(opts.terminals)
    t0 = time.perf_counter()
    st = streams.mix(terms, opts.messages, connections=opts.connections)
    enc = time.perf_counter() - t0
    fig.rows.append(("pre-encoding (not measured in rates)", f"{st.messages / enc:,.0f} msg/s", "", None))
    port = free_port()
    sink = await asyncio.create_subprocess_exec(sys.executable, "-m", "bench.sink", str(port),
                                                stdout=asyncio.subprocess.PIPE)
    try:
        assert sink.stdout is not None
        await sink.stdout.readline()
        clients = await connect_all(port, opts.connections, "bench-null")
        res = await publish(clients, st, expect_acks=False)
        await asyncio.gather(*(c.close() for c in clients))
        fig.rows.append((f"into a null sink ({res.bytes / 1e6:.0f} MB)", _rate(res.write_rate),
                         "> 2x ingest", res.write_rate >= 80_000 or opts.smoke or None))
    finally:
        sink.terminate()
        await sink.wait()
    with mosquitto() as broker:
        clients = await connect_all(broker.port, opts.connections)
        res = await publish(clients, st)
        await asyncio.gather(*(c.close() for c in clients))
        fig.rows.append(("into Mosquitto, no subscriber (acked)", _rate(res.acked_rate), "", None))
    with mosquitto() as broker:
        sysw = SysWatch()
        await sysw.start(broker.port)
        drain = Drain(broker.port, st.messages, broker.workdir)
        await asyncio.sleep(0.5)
        clients = await connect_all(broker.port, opts.connections)
        res = await publish(clients, st)
        done = await asyncio.to_thread(drain.wait, 120.0)
        got = drain.lines()
        await asyncio.gather(*(c.close() for c in clients))
        await sysw.settle()
        fig.rows.append(("into Mosquitto, publisher acked", _rate(res.acked_rate), "", None))
        fig.rows.append(("mosquitto_sub -q 1 drain", _rate(got / (done - res.started)), "", None))
        fig.rows.append(("mosquitto_sub messages received", f"{got:,} / {st.messages:,}", "all",
                         got == st.messages))
        fig.rows.append(("broker drops ($SYS)", f"{sysw.dropped():.0f}", "0", sysw.dropped() == 0))
        await sysw.stop()
    fig.notes.append(f"{opts.terminals:,} terminals, {st.messages:,} messages (90% heartbeats QoS 0, "
                     f"10% txns QoS 1), {opts.connections} connections, MQTT 3.1.1")
    return fig


INGEST_TARGET = 100_000.0
RATIO_TARGET = 0.4


@dataclass
class IngestRun:
    """One receiver alone against a fresh broker: what it got and how fast."""

    rate: float
    """messages (the stream and its closing message) / seconds from first byte to the end mark"""
    received: float
    publisher_rate: float
    dropped: float
    cpu_us: float
    """the receiver's own CPU time per message over the measurement (less sensitive than
    the rate to whatever else the machine is running)"""
    txns_stored: int = 0
    exit_code: int = 0


async def _stream_then_close(port: int, st: streams.Stream, opts: Options) -> tuple[float, float]:
    """Publish the stream, then (all acknowledged by the broker) its closing message; returns
    the wall time of the first byte and the publisher's acknowledged rate."""
    clients = await connect_all(port, opts.connections)
    closer = WireClient("127.0.0.1", port, "bench-closer", keepalive=0)
    await closer.connect()
    res = await publish(clients, st, rate=opts.rate)
    closer.write_raw(st.closing, 1)
    await closer.wait_outstanding(0, 60.0)
    await asyncio.gather(*(c.close() for c in (*clients, closer)))
    return res.started, res.acked_rate


async def _reference_alone(st: streams.Stream, opts: Options) -> IngestRun:
    """``mosquitto_sub -q 1`` alone: first byte to its last message (the closing one)."""
    total = st.messages + 1
    with mosquitto() as broker:
        sysw = SysWatch()
        await sysw.start(broker.port)
        drain = Drain(broker.port, total, broker.workdir)
        await asyncio.sleep(0.5)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started, pub_rate = await _stream_then_close(broker.port, st, opts)
        done = await asyncio.to_thread(drain.wait, 300.0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)  # mosquitto_sub: the one child reaped since
        cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        got = drain.lines()
        await sysw.settle()
        run = IngestRun(got / (done - started), got, pub_rate, sysw.dropped(), cpu / total * 1e6)
        await sysw.stop()
    return run


async def _daemon_alone(st: streams.Stream, opts: Options, *, pure: bool = False) -> IngestRun:
    """The daemon alone: first byte to the closing tamper incident visible in the API.
    ``pure``: with its hot path as plain Python (FLEETWATCH_PURE=1), for the comparison."""
    total = st.messages + 1
    with mosquitto() as broker:
        sysw = SysWatch()
        await sysw.start(broker.port)
        daemon = new_daemon(broker.port)
        if pure:
            daemon.env["FLEETWATCH_PURE"] = "1"
        await asyncio.to_thread(daemon.start)
        await sysw.settle(1.2)
        cpu0 = daemon.cpu_seconds()
        started, pub_rate = await _stream_then_close(broker.port, st, opts)
        seen = await asyncio.to_thread(daemon.wait_incident, st.closing_terminal, "tamper")
        cpu = daemon.cpu_seconds() - cpu0
        with httpx.Client(timeout=10.0) as http:
            received = daemon.received(http)
        await sysw.settle()
        code = await asyncio.to_thread(daemon.stop)
        rate = total / (seen - started) if seen is not None else 0.0
        run = IngestRun(rate, received, pub_rate, sysw.dropped(), cpu / total * 1e6, daemon.count("transactions"),
                        code)
        await sysw.stop()
    return run


async def figure_ingest(opts: Options) -> list[Figure]:
    """Figures 1 and 2: the daemon end to end, and its ratio to mosquitto_sub, each alone."""
    cmd = (f"{opts.command} ingest" + (" --smoke" if opts.smoke else "")
           + (f" --repeat {opts.repeat}" if opts.repeat > 1 else ""))
    ingest = Figure("ingest", "Sustained end-to-end ingest (figure 1)", cmd)
    ratio = Figure("ratio", "Ingest relative to mosquitto_sub, each alone (figure 2)", cmd)
    st = streams.mix(streams.make_terminals(opts.terminals), opts.messages, connections=opts.connections)
    total = st.messages + 1
    refs: list[IngestRun] = []
    runs: list[IngestRun] = []
    pures: list[IngestRun] = []
    # A compiled install is also run as plain Python, in the same rounds (what mypyc buys).
    sides = ["ref"] + ([] if opts.no_daemon else ["daemon"] + (["pure"] if COMPILED else []))
    for i in range(opts.repeat):
        # rotate the order, so no side always runs on a machine another just warmed
        for side in sides[i % len(sides):] + sides[:i % len(sides)]:
            if side == "ref":
                refs.append(await _reference_alone(st, opts))
            elif side == "daemon":
                runs.append(await _daemon_alone(st, opts))
            else:
                pures.append(await _daemon_alone(st, opts, pure=True))
    ref_rate = statistics.median(r.rate for r in refs)
    ratio.rows.append(("mosquitto_sub -q 1 alone", _rate(ref_rate), "", None))
    ratio.rows.append(("mosquitto_sub received", f"{min(r.received for r in refs):,.0f} / {total:,}", "all",
                       all(r.received == total for r in refs)))
    ref_cpu = statistics.median(r.cpu_us for r in refs)
    ratio.rows.append(("mosquitto_sub CPU per message", f"{ref_cpu:.1f} µs", "", None))
    if runs:
        rate = statistics.median(r.rate for r in runs)
        ingest.rows.append(("publisher (acked by broker)", _rate(statistics.median(r.publisher_rate for r in runs)),
                            "", None))
        dropped = max(r.dropped for r in runs)
        ingest.rows.append(("broker drops ($SYS)", f"{dropped:.0f}", "0", dropped == 0))
        ingest.rows.append(("daemon end to end (first byte to closing incident in API)", _rate(rate),
                            f">= {INGEST_TARGET:,.0f} msg/s", None if opts.smoke else rate >= INGEST_TARGET))
        ingest.rows.append(("daemon messages received", f"{min(r.received for r in runs):,.0f} / {total:,}", "all",
                            all(r.received >= total for r in runs)))
        ingest.rows.append(("transactions stored (SQLite rows)", f"{min(r.txns_stored for r in runs):,} / "
                            f"{st.txns:,}", "all", all(r.txns_stored == st.txns for r in runs)))
        ingest.rows.append(("daemon exit code on SIGTERM", str(max(r.exit_code for r in runs)), "0",
                            all(r.exit_code == 0 for r in runs)))
        ratio.rows.append(("daemon alone", _rate(rate), "", None))
        cpu = statistics.median(r.cpu_us for r in runs)
        ratio.rows.append(("daemon CPU per message (all threads)", f"{cpu:.1f} µs", "", None))
        ratio.rows.append(("daemon / mosquitto_sub", f"{rate / ref_rate:.2f}", f">= {RATIO_TARGET} (goal 0.5)",
                           None if opts.smoke else rate / ref_rate >= RATIO_TARGET))
    if pures:
        pure_rate = statistics.median(r.rate for r in pures)
        ratio.rows.append(("daemon alone, hot path as pure Python", _rate(pure_rate), "", None))
        ratio.rows.append(("its messages received", f"{min(r.received for r in pures):,.0f} / {total:,}", "all",
                           all(r.received >= total for r in pures)))
        ratio.rows.append(("its CPU per message (all threads)",
                           f"{statistics.median(r.cpu_us for r in pures):.1f} µs", "", None))
        ratio.rows.append(("compiled / pure Python (rate)", f"{rate / pure_rate:.2f}", "", None))
    else:
        ingest.notes.append("--no-daemon: broker and mosquitto_sub only")
    if opts.repeat > 1:
        pairs = ", ".join(f"{r.rate:,.0f}" for r in refs)
        ratio.notes.append(f"median of {opts.repeat} runs each, rotating which goes first; mosquitto_sub: {pairs}"
                           + ("; daemon: " + ", ".join(f"{r.rate:,.0f}" for r in runs) if runs else "")
                           + ("; pure Python: " + ", ".join(f"{r.rate:,.0f}" for r in pures) if pures else ""))
    ratio.notes.append("daemon built with its hot path compiled by mypyc (fleetwatch/compiled.txt)" if COMPILED
                       else "daemon built as pure Python (no mypyc at install)")
    load = os.getloadavg()[0]
    ratio.notes.append(f"load average (1 min) at the end: {load:.1f} on {os.cpu_count()} CPUs; the CPU per "
                       "message is the figure least disturbed by other load")
    ingest.notes.append(f"{opts.terminals:,} terminals, {st.messages:,} messages ({st.heartbeats:,} heartbeats "
                        f"QoS 0, {st.txns:,} txns QoS 1) and one closing tamper heartbeat QoS 1, rate "
                        f"{'unthrottled' if opts.rate is None else _rate(opts.rate)}; a fresh broker for each "
                        "receiver, which runs alone")
    return [ingest, ratio]


async def figure_stores(opts: Options) -> Figure:
    """PostgreSQL beside SQLite: the same pre-encoded stream into a fresh daemon on each store."""
    fig = Figure("stores", "Ingest on PostgreSQL beside SQLite (same stream)",
                 f"{opts.command} stores" + (" --smoke" if opts.smoke else ""))
    st = streams.mix(streams.make_terminals(opts.terminals), opts.messages, connections=opts.connections)
    rates: dict[str, float] = {}
    for store in ("sqlite", "postgresql"):
        with mosquitto() as broker:
            daemon = new_daemon(broker.port, store_url=opts.store_url(store))
            await asyncio.to_thread(daemon.start)
            clients = await connect_all(broker.port, opts.connections)
            res = await publish(clients, st, rate=opts.rate)
            received, done = await asyncio.to_thread(daemon.wait_received, st.messages)
            await asyncio.gather(*(c.close() for c in clients))
            rates[store] = received / (done - res.started)
            code = await asyncio.to_thread(daemon.stop)
            rows = await asyncio.to_thread(daemon.count, "transactions")
        fig.rows.append((f"{store}: daemon ingest (counted in /metrics)", _rate(rates[store]), "", None))
        fig.rows.append((f"{store}: messages received", f"{received:,.0f} / {st.messages:,}", "all",
                         received >= st.messages))
        fig.rows.append((f"{store}: transactions stored", f"{rows:,} / {st.txns:,}", "all", rows == st.txns))
        fig.rows.append((f"{store}: exit code on SIGTERM", str(code), "0", code == 0))
    ratio = rates["postgresql"] / rates["sqlite"]
    fig.rows.append(("PostgreSQL / SQLite", f"{ratio:.2f}", ">= 0.7", None if opts.smoke else ratio >= 0.7))
    fig.rows.append(("PostgreSQL ingest", _rate(rates["postgresql"]), ">= 30,000 msg/s",
                     None if opts.smoke else rates["postgresql"] >= 30_000))
    fig.notes.append(f"{opts.terminals:,} terminals, {st.messages:,} messages ({st.heartbeats:,} heartbeats QoS 0, "
                     f"{st.txns:,} txns QoS 1), no mosquitto_sub beside the daemon; SQLite first, then a private "
                     "PostgreSQL 15 cluster with fsync on (a commit waits for the disk; SQLite's WAL with "
                     "synchronous=NORMAL does not) on the same machine")
    return fig


FLEET_LOAD_RATE = 20_000.0
"""Heartbeats per second while loading the fleet: a million terminals beating once a
minute send about 17,000 a second, so this is the fleet's own pace (with some margin),
not a flood that no fleet produces."""


async def _load(port: int, terms: list[fleet.Terminal], connections: int, rate: float | None) -> None:
    st = streams.one_heartbeat_each(terms, connections=connections, qos=1)
    clients = await connect_all(port, connections, f"bench-load-{terms[0].index}")
    await publish(clients, st, rate=rate)
    await asyncio.gather(*(c.close() for c in clients))


def _scrape(daemon: Daemon, times: int) -> tuple[int, float]:
    with httpx.Client(timeout=30.0) as http:
        runs = [daemon.metrics(http) for _ in range(times)]
    return len(runs[-1][0].encode()), statistics.median(t for _, t in runs)


async def figure_fleet(opts: Options, want: set[str]) -> list[Figure]:
    """Figures 3, 5 and 6 in one sequence: load 1k, scrape; load 1M, scrape, RSS; restart."""
    n = 2_000 if opts.smoke else opts.fleet
    small = min(1_000, n)
    figs: dict[str, Figure] = {}
    suffix = opts.store_flag + (" --smoke" if opts.smoke else "")
    on = "" if opts.store == "sqlite" else " on PostgreSQL"
    with mosquitto() as broker:
        daemon = new_daemon(broker.port, store_url=opts.store_url())
        await asyncio.to_thread(daemon.start)
        rss0 = daemon.rss_bytes()
        terms = streams.make_terminals(n)
        load_rate = opts.rate or FLEET_LOAD_RATE
        await _load(broker.port, terms[:small], opts.connections, load_rate)
        await asyncio.to_thread(daemon.wait_received, small)
        await asyncio.sleep(1)
        if "metrics" in want:
            size1k, t1k = await asyncio.to_thread(_scrape, daemon, 20)
        await _load(broker.port, terms[small:], opts.connections, load_rate)
        received, _ = await asyncio.to_thread(daemon.wait_received, n, idle_timeout=60.0)
        del terms
        settled = await asyncio.to_thread(daemon.wait_store_settled)  # terminal rows reach the store
        if "metrics" in want:
            size, t = await asyncio.to_thread(_scrape, daemon, 10)
            f = figs["metrics"] = Figure("metrics" + opts.suffix, f"/metrics size and scrape time (figure 6){on}",
                                         f"{opts.command} metrics{suffix}")
            f.rows += [("size at 1,000 terminals", f"{size1k / 1024:.1f} KiB", "", None),
                       ("scrape at 1,000 terminals (median of 20)", f"{t1k * 1000:.1f} ms", "", None),
                       (f"size at {n:,} terminals", f"{size / 1024:.1f} KiB", "<= 100 KiB", size <= 100 * 1024),
                       (f"scrape at {n:,} terminals (median of 10)", f"{t * 1000:.1f} ms", "<= 50 ms",
                        t <= 0.05)]
        if "memory" in want:
            rss = daemon.rss_bytes()
            f = figs["memory"] = Figure("memory" + opts.suffix, f"Memory per terminal (figure 3){on}",
                                        f"{opts.command} memory{suffix}")
            f.rows += [(f"VmRSS with {received:,.0f} terminals", f"{rss / 2**20:,.0f} MiB", "", None),
                       ("VmRSS at start (empty store)", f"{rss0 / 2**20:,.0f} MiB", "", None),
                       ("RSS per terminal (total / terminals)", f"{rss / n:,.0f} B", "<= 1024 B",
                        None if opts.smoke else rss / n <= 1024),
                       ("RSS per terminal (growth / terminals)", f"{(rss - rss0) / n:,.0f} B", "", None)]
        await asyncio.to_thread(daemon.stop)
        if "restart" in want:
            ready = await asyncio.to_thread(daemon.start)
            f = figs["restart"] = Figure("restart" + opts.suffix, f"Restart to /readyz (figure 5){on}",
                                         f"{opts.command} restart{suffix}")
            limit = 10 if opts.store == "sqlite" else 15
            f.rows.append((f"/readyz 200 after start, {n:,} terminals stored", f"{ready:.2f} s", f"<= {limit} s",
                           ready <= limit))
            if "memory" in want:
                # The same fleet restored from the store, without the transient objects of
                # a million live messages fragmenting the heap.
                restored = daemon.rss_bytes()
                figs["memory"].rows.append(("RSS per terminal after restart (restored from the store)",
                                            f"{restored / n:,.0f} B", "<= 1024 B",
                                            None if opts.smoke else restored / n <= 1024))
            await asyncio.to_thread(daemon.stop)
        rows = await asyncio.to_thread(daemon.count, "terminals")
        for f in figs.values():
            f.notes.append(f"store holds {rows:,} terminal rows; fleet loaded by one QoS 1 heartbeat each "
                           f"at {load_rate:,.0f} msg/s" + ("" if settled else "; store still behind at stop"))
    return [figs[k] for k in ("memory", "restart", "metrics") if k in figs]


async def figure_latency(opts: Options) -> Figure:
    """Figure 4: opened_at - publish time for faults injected under background load."""
    fig = Figure("latency", "Detection latency under load (figure 4)", f"{opts.command} latency"
                 + (" --smoke" if opts.smoke else ""))
    seconds = 5.0 if opts.smoke else opts.latency_seconds
    bg_rate = 2_000.0 if opts.smoke else opts.latency_rate
    terms = streams.make_terminals(opts.terminals)
    st = streams.mix(terms, int(bg_rate * seconds), connections=opts.connections)
    probes = streams.make_terminals(40, seed=99)
    for p in probes:
        p.terminal_id = f"L{p.index:04d}"
    topics, rng = Topics("fleet/v1"), random.Random(5)
    injected: dict[str, float] = {}
    with mosquitto() as broker:
        daemon = new_daemon(broker.port)
        await asyncio.to_thread(daemon.start)
        probe = WireClient("127.0.0.1", broker.port, "bench-probe", keepalive=0)
        await probe.connect()
        for p in probes:  # healthy first, so every fault is a change the daemon has to notice
            out = fleet.heartbeat(p, int(time.time() * 1000), rng, topics)
            probe.publish(out.topic, out.payload, qos=1)
        clients = await connect_all(broker.port, opts.connections)
        background = asyncio.ensure_future(publish(clients, st, rate=bg_rate))
        await asyncio.sleep(1.0)
        gap = (seconds - 2.0) / len(probes)
        for i, p in enumerate(probes):
            kind = i % 3
            if kind == 0:
                p.printer = "no_paper"
            elif kind == 1:
                p.tamper = True
            else:
                p.reader_chip = "fault"
            out = fleet.heartbeat(p, int(time.time() * 1000), rng, topics)
            injected[p.terminal_id] = time.time()
            probe.publish(out.topic, out.payload, qos=1)
            await probe.drain()
            await asyncio.sleep(gap)
        await background
        await asyncio.sleep(3.0)
        lat: list[float] = []
        missing = 0
        async with httpx.AsyncClient(timeout=10.0, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            for tid, at in injected.items():
                r = await http.get(f"{daemon.api}/api/v1/incidents", params={"status": "all", "terminal_id": tid})
                items = r.json().get("items", []) if r.status_code == 200 else []
                opened = [_epoch(i["opened_at"]) for i in items if i.get("opened_at")]
                if opened:
                    lat.append(max(0.0, min(opened) - at))
                else:
                    missing += 1
        await probe.close()
        await asyncio.gather(*(c.close() for c in clients))
        await asyncio.to_thread(daemon.stop)
    lat.sort()
    p50 = lat[len(lat) // 2] if lat else float("nan")
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else float("nan")
    fig.rows += [("faults detected", f"{len(lat)} / {len(injected)}", "all", missing == 0),
                 ("latency p50", f"{p50 * 1000:.0f} ms", "", None),
                 ("latency p99", f"{p99 * 1000:.0f} ms", "<= 1000 ms", p99 <= 1.0)]
    fig.notes.append(f"background {bg_rate:,.0f} msg/s from {opts.terminals:,} terminals for {seconds:.0f} s; "
                     "faults: printer no_paper, tamper, reader self-test (one heartbeat each)")
    return fig


def _epoch(stamp: str) -> float:
    return epoch(stamp) or float("nan")
