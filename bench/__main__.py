"""``python -m bench {publisher|ingest|stores|memory|restart|metrics|latency|failover|notify|hotpath|silence|all}...``.

``--smoke``: tiny and fast.

``--store postgresql`` runs memory, restart and metrics on PostgreSQL; stores and failover
always start a private PostgreSQL cluster.

Prints each figure as a table and rewrites its section of docs/PERFORMANCE.md
(``--no-report`` to leave the file alone). Exit 1 when any figure missed its target or
lost a message, so CI can run ``python -m bench ingest --smoke``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from pathlib import Path

from bench import failover, harness, hotpath, notices, notify_bench, report, silence_bench


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("what", nargs="+",
                   choices=("publisher", "ingest", "stores", "memory", "restart", "metrics", "latency", "notices",
                            "failover", "notify", "hotpath", "silence", "all"))
    p.add_argument("--smoke", action="store_true", help="tiny and fast (2,000 messages); no speed targets")
    p.add_argument("--terminals", type=int, default=None, help="fleet of the ingest stream (default 20,000)")
    p.add_argument("--messages", type=int, default=None, help="messages in the ingest stream (default 200,000)")
    p.add_argument("--repeat", type=int, default=1, help="ingest: run each receiver this many times (median)")
    p.add_argument("--rate", type=float, default=None, help="publish at this many msg/s (default: flat out)")
    p.add_argument("--connections", type=int, default=4, help="publisher connections")
    p.add_argument("--fleet", type=int, default=1_000_000, help="terminals for memory/restart/metrics")
    p.add_argument("--no-daemon", action="store_true", help="ingest: broker and mosquitto_sub only")
    p.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite",
                   help="the daemon's store in memory/restart/metrics (stores compares both)")
    p.add_argument("--report", type=Path, default=Path("docs/PERFORMANCE.md"))
    p.add_argument("--no-report", action="store_true")
    a = p.parse_args(argv)
    smoke = a.smoke
    opts = harness.Options(
        terminals=a.terminals or (200 if smoke else 20_000),
        messages=a.messages or (2_000 if smoke else 200_000),
        rate=a.rate, connections=a.connections, fleet=a.fleet, smoke=smoke, no_daemon=a.no_daemon,
        repeat=max(1, a.repeat), store=a.store,
    )
    what = set(a.what)
    cluster = None
    if a.store == "postgresql" or what & {"stores", "failover"}:
        from tests.services import Postgres  # noqa: PLC0415 - a private cluster only for PostgreSQL figures

        cluster = Postgres(fsync=True)
        cluster.start()
        opts = dataclasses.replace(opts, new_database=cluster.new_database)
    try:
        figs = asyncio.run(_run(what, opts))
    finally:
        if cluster is not None:
            cluster.stop()
    for fig in figs:
        print(fig.table())
        print()
        if not a.no_report:
            report.write(a.report, fig)
    if not a.no_report:
        print(f"updated {a.report}")
    return 0 if all(f.ok for f in figs) else 1


async def _run(what: set[str], opts: harness.Options) -> list[report.Figure]:
    """Run the chosen figures; memory, restart and metrics share one million-terminal fleet."""
    if "all" in what:
        what = {"ingest", "latency", "memory", "restart", "metrics"}
    figs: list[report.Figure] = []
    if "publisher" in what:
        figs.append(await harness.figure_publisher(opts))
    if "hotpath" in what:
        figs.append(await asyncio.to_thread(hotpath.figure, max(3, opts.repeat), opts.smoke))
    if "silence" in what:
        figs.append(await asyncio.to_thread(silence_bench.figure, opts.smoke))
    if "ingest" in what:
        figs += await harness.figure_ingest(opts)
    if "stores" in what:
        figs.append(await harness.figure_stores(opts))
    if "latency" in what:
        figs.append(await harness.figure_latency(opts))
    if "failover" in what:
        figs.append(await failover.figure_failover(opts))
    if "notices" in what:
        suffix = " --smoke" if opts.smoke else ""
        cmd = f"{opts.command} notices{suffix}"
        figs.append(await notices.figure_page(cmd, opts.smoke))
        figs.append(await notices.figure_ingest(cmd, opts))
        figs.append(await asyncio.to_thread(notices.figure_outage, cmd, opts.smoke))
    if "notify" in what:
        cmd = f"{opts.command} notify{' --smoke' if opts.smoke else ''}"
        figs.append(await notify_bench.figure_outbox(cmd, opts.smoke))
        figs.append(await notify_bench.figure_ingest(cmd, opts))
    fleet_figs = what & {"memory", "restart", "metrics"}
    if fleet_figs:
        figs += await harness.figure_fleet(opts, fleet_figs)
    return figs


if __name__ == "__main__":
    sys.exit(main())
