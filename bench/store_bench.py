"""How fast is a store backend? ``python -m bench.store_bench [--store sqlite|postgresql] [--terminals N]``.

Two figures matter for sizing: how many effect rows one ``write()`` commits per second
(in batches of 5,000 effects, a busy flush interval's worth), and how long a restart
spends streaming the terminals for a large fleet (restore blocks readiness). Prints the
figures; asserts nothing. SQLite runs in a temporary directory; PostgreSQL in a private
cluster started for the run (tests/services.py), or the database ``--url`` names.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from pathlib import Path

from fleetwatch.adapters.postgres import PostgresStore
from fleetwatch.adapters.sqlite import SqliteStore
from fleetwatch.core.model import (
    BatchRecord,
    DeadLetter,
    Effect,
    Incident,
    IncidentEvent,
    IncidentWrite,
    SettlementWrite,
    TerminalRecord,
    TxnRecord,
    TxnWrite,
)
from fleetwatch.storage.rows import prepare

Store = SqliteStore | PostgresStore

BATCH_EFFECTS = 5000


def _terminal(i: int, now: float) -> TerminalRecord:
    return TerminalRecord(
        terminal_id=f"T{i:08d}", merchant_id=f"M{i // 20:06d}", model="A920", fw="2.4.1",
        app="pay-3.1.0", serial=f"S{i:010d}", net_type="4g", last_seen=now, last_heartbeat_at=now,
        last_ts_ms=int(now * 1000), seq=i % 10_000, uptime_s=86_400, battery_pct=80, charging=False,
        rssi_dbm=-71, printer="ok", saf_pending=0,
    )


def _mixed_effects(batch: int, now: float, rng: random.Random) -> list[Effect]:
    """About 90% txns, 4% incident writes, 3% settlements, 3% dead letters."""
    effects: list[Effect] = []
    for n in range(BATCH_EFFECTS):
        seq = batch * BATCH_EFFECTS + n
        term = f"T{rng.randrange(100_000):08d}"
        roll = rng.random()
        if roll < 0.90:
            effects.append(TxnWrite(TxnRecord(
                terminal_id=term, txn_id=f"{term}-{seq:09d}", merchant_id="M000042", batch_no=17,
                currency="CNY", type="sale", outcome="approved", amount_minor=12_800,
                ts_ms=int(now * 1000), received_at=now, rc="00", entry="chip", signed_amount_minor=12_800,
            )))
        elif roll < 0.94:
            inc = Incident(
                id=f"I{seq:012d}", key=f"terminal|{term}|printer|{seq}", kind="printer", cause="no_paper",
                scope="terminal", severity="major", status="open", opened_at=now, updated_at=now,
                summary="Printer out of paper", terminal_id=term, merchant_id="M000042",
                evidence={"printer": "no_paper", "since": now},
            )
            effects.append(IncidentWrite(inc, IncidentEvent(inc.id, now, "opened", {"cause": "no_paper"})))
        elif roll < 0.97:
            effects.append(SettlementWrite(
                terminal_id=term, merchant_id="M000042", batch_no=17, currency="CNY",
                business_date="2026-11-22", settled_count=132, settled_amount_minor=1_532_000,
                credited_at_ms=int(now * 1000), received_at=now,
            ))
        else:
            effects.append(DeadLetter(
                topic=f"fleet/v1/term/{term}/txn", reason="schema", detail="missing field currency",
                received_at=now, payload_excerpt='{"v":1,"terminal_id":"' + term + '"}',
            ))
    return effects


async def bench_writes(store: Store, batches: int) -> None:
    rng = random.Random(7)
    now = time.time()
    dirty_terminals = [_terminal(i, now) for i in range(200)]
    dirty_batches = [BatchRecord(f"T{i:08d}", 17, "CNY", "M000042", tally_count=3) for i in range(50)]
    rows = 0
    elapsed = 0.0
    for b in range(batches):
        effects = _mixed_effects(b, now, rng)
        t0 = time.perf_counter()
        prepared = prepare(effects, dirty_terminals, dirty_batches)
        await store.write_prepared(prepared)
        elapsed += time.perf_counter() - t0
        rows += prepared.row_count
    print(
        f"write(): {batches} batches of {BATCH_EFFECTS} mixed effects (+200 terminals, +50 batches): "
        f"{rows:,} rows in {elapsed:.2f} s = {rows / elapsed:,.0f} rows/s, "
        f"{elapsed / batches * 1000:.1f} ms per batch (prepare + commit)"
    )


async def bench_load(store: Store, terminals: int) -> None:
    now = time.time()
    t0 = time.perf_counter()
    chunk = 100_000
    for start in range(0, terminals, chunk):
        records = [_terminal(i, now) for i in range(start, min(start + chunk, terminals))]
        await store.write((), terminals=records)
    print(f"generated and wrote {terminals:,} terminals in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    loaded = sum([len(chunk) async for chunk in store.terminal_chunks()])
    took = time.perf_counter() - t0
    print(f"terminal_chunks(): {loaded:,} terminals in {took:.2f} s = {loaded / took:,.0f} rows/s")
    t0 = time.perf_counter()
    count = await store.count_terminals()
    print(f"count_terminals(): {count:,} in {(time.perf_counter() - t0) * 1000:.0f} ms")


async def run(store: Store, terminals: int, batches: int) -> None:
    try:
        print(f"store: {store.location}")
        await bench_writes(store, batches)
        await bench_load(store, terminals)
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--url", help="an existing PostgreSQL database (default: a private cluster)")
    parser.add_argument("--terminals", type=int, default=1_000_000)
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()
    if args.store == "sqlite":
        with tempfile.TemporaryDirectory(prefix="fleetwatch-bench-") as tmp:
            asyncio.run(_run_sqlite(str(Path(tmp) / "bench.db"), args.terminals, args.batches))
        return
    if args.url:
        asyncio.run(_run_postgres(args.url, args.terminals, args.batches))
        return
    from tests.services import Postgres  # noqa: PLC0415 - the private cluster only when asked for

    cluster = Postgres(fsync=True)
    cluster.start()
    try:
        asyncio.run(_run_postgres(cluster.new_database("bench"), args.terminals, args.batches))
    finally:
        cluster.stop()


async def _run_sqlite(path: str, terminals: int, batches: int) -> None:
    await run(await SqliteStore.open(path), terminals, batches)


async def _run_postgres(url: str, terminals: int, batches: int) -> None:
    await run(await PostgresStore.open(url), terminals, batches)


if __name__ == "__main__":
    main()
