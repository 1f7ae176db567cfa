"""Active/standby end to end (CONTRACT.md §9): two daemon processes on one PostgreSQL store and
one broker, with the same ``mqtt.client_id``.

The shortest lease that still proves it (``ha.lease_s`` = 2 s, set by tests/services.py for
every PostgreSQL daemon) keeps each takeover to a few seconds; the contract's
``ha.takeover_s`` (15 s) is the bound a takeover must meet. Speed itself is measured by
``python -m bench failover`` (docs/PERFORMANCE.md), not here.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.publish import Publisher, batch, heartbeat, now_ms, publisher, txn
from tests.services import Broker, Daemon, Postgres, pg_rows, wait_until

pytestmark = [pytest.mark.broker, pytest.mark.slow]

TAKEOVER_S = 15.0
"""ha.takeover_s's default: what each takeover must stay within."""


def readyz(d: Daemon) -> tuple[int | None, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"{d.api}/readyz", timeout=2) as r:
            return int(r.status), json.loads(r.read())
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read())
        exc.close()
        return int(exc.code), body
    except OSError:
        return None, {}


def status_of(d: Daemon, path: str) -> int:
    req = urllib.request.Request(f"{d.api}{path}", headers={"Authorization": f"Bearer {d.token}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)


def is_standby(d: Daemon) -> bool:
    code, body = readyz(d)
    return code == 503 and body.get("role") == "standby"


def start_standby(d: Daemon) -> None:
    d.start(wait_ready=False)
    wait_until(lambda: is_standby(d), timeout=20, what=f"standby on {d.api}")


@dataclass
class Pair:
    a: Daemon
    b: Daemon
    store_url: str

    def txn_count(self) -> tuple[int, int]:
        rows = pg_rows(self.store_url, "SELECT count(*), count(DISTINCT (terminal_id, txn_id)) FROM transactions")
        return int(rows[0][0]), int(rows[0][1])


@pytest.fixture
def pair(tmp_path: Path, broker: Broker, postgres: Postgres, prefix: str) -> Iterator[Pair]:
    url = postgres.new_database("ha")
    client_id = f"fw-ha-{prefix.split('/', maxsplit=1)[0]}"
    daemons = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        daemons.append(Daemon(tmp_path / name, broker.url, prefix=prefix, client_id=client_id, store_url=url))
    yield Pair(daemons[0], daemons[1], url)
    for d in daemons:
        if d.proc is not None:
            d.kill()


def test_a_standby_serves_only_health_and_takes_over_when_the_active_stops(pair: Pair, broker: Broker) -> None:
    a, b = pair.a, pair.b
    a.start()
    start_standby(b)
    wait_until(lambda: "holds the lease" in readyz(b)[1].get("reason", ""), what="the standby names the holder")
    body = readyz(b)[1]
    assert body["status"] == "not ready"
    assert a.proc is not None
    assert f":{a.proc.pid}:" in body["reason"]
    assert readyz(a) == (200, {"status": "ready", "role": "active", "reason": None})
    assert status_of(b, "/healthz") == 200
    for path in ("/api/v1/incidents", "/api/v1/terminals/T1", "/m/M1"):
        assert status_of(b, path) == 503, path
    assert (b.metric("fleetwatch_role", role="standby"), b.metric("fleetwatch_role", role="active")) == (1, 0)
    assert (a.metric("fleetwatch_role", role="active"), a.metric("fleetwatch_role", role="standby")) == (1, 0)
    assert b.metric("fleetwatch_mqtt_connected") == 0

    with publisher(broker.url, a.prefix) as pub:
        pub.send("term/T1/txn", txn("T1", "before"))
        wait_until(lambda: pair.txn_count()[0] == 1, what="the active stores the txn")
        time.sleep(2.0)  # the standby must not have taken the broker session meanwhile
        assert a.metric("fleetwatch_mqtt_reconnects_total") == 0
        assert a.metric("fleetwatch_mqtt_connected") == 1

        stopped = time.monotonic()
        assert a.stop() == 0
        pub.send("term/T1/txn", txn("T1", "between"))  # queued in the broker's session for whoever is next
        wait_until(lambda: readyz(b)[0] == 200, timeout=TAKEOVER_S, what="the standby takes over")
        took = time.monotonic() - stopped
        assert took < 2.0 + 5.0, f"a released lease is taken at once, not after its expiry ({took:.1f} s)"
        wait_until(lambda: pair.txn_count()[0] == 2, what="the queued txn reaches the new active")
    assert readyz(b)[1]["role"] == "active"
    assert b.metric("fleetwatch_role", role="active") == 1
    roles = [json.loads(line)["role"] for line in b.logs().splitlines() if '"role changed"' in line]
    assert roles == ["standby", "active"]
    start_standby(a)  # back, as the standby
    assert b.stop() == 0
    wait_until(lambda: readyz(a)[0] == 200, timeout=TAKEOVER_S, what="the old active takes over again")
    assert a.stop() == 0


# ---- a crash under load, three times ----------------------------------------------------------

TERMINALS = 200
MERCHANTS = 20
RATE = 2000.0
FAULTY = ("T0003", "T0042", "T0107")
"""Terminals out of paper from the start: one printer incident each, whatever happens."""
MISMATCH = "T0150"
"""Its BatchClose claims one transaction more than it made: one totals_mismatch gap."""


def tid(i: int) -> str:
    return f"T{i:04d}"


def mid_of(i: int) -> str:
    return f"M{i % MERCHANTS:02d}"


@dataclass
class Load:
    """QoS 1 txns at a steady rate from a thread, each terminal's count and amount tallied here."""

    broker_url: str
    prefix: str
    rate: float
    sent: dict[str, list[int]] = field(default_factory=lambda: {tid(i): [0, 0] for i in range(TERMINALS)})
    total: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _pub: Publisher | None = None

    def start(self) -> None:
        self._pub = Publisher(self.broker_url, self.prefix, client_id=f"load-{self.prefix.split('/')[0]}")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self._pub is not None
        t0 = time.monotonic()
        while not self._stop.is_set():
            for _ in range(50):
                n = self.total
                i = n % TERMINALS
                amount = 100 + n % 977
                self._pub.send(f"term/{tid(i)}/txn", txn(tid(i), f"X{n:07d}", mid_of(i), amount_minor=amount),
                               wait=False)
                self.sent[tid(i)][0] += 1
                self.sent[tid(i)][1] += amount
                self.total += 1
            ahead = t0 + self.total / self.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)

    def stop(self) -> Publisher:
        """Stop sending; returns the publisher once the broker has every message."""
        self._stop.set()
        assert self._thread is not None
        assert self._pub is not None
        self._thread.join(10)
        self._pub.flush()
        return self._pub


def open_incidents(url: str) -> list[tuple[str, str, str]]:
    return sorted((r[0], r[1], r[2]) for r in pg_rows(
        url, "SELECT coalesce(terminal_id, ''), kind, cause FROM incidents WHERE status <> 'resolved'"))


def test_the_active_killed_under_load_three_times_loses_and_doubles_nothing(pair: Pair, broker: Broker) -> None:
    """SIGKILL of the active at 2,000 QoS 1 msg/s, three times: each time the standby takes over within
    ha.takeover_s; afterwards every published txn is stored exactly once, the open incidents are those
    the script makes (what a run without kills opens: three printers, one mismatch; no twin, none
    missing, nothing resolved and reopened), and every batch's tally equals its BatchClose."""
    active, standby = pair.a, pair.b
    active.start()
    start_standby(standby)
    with publisher(broker.url, active.prefix) as pub:
        for i in range(TERMINALS):
            printer = "no_paper" if tid(i) in FAULTY else "ok"
            pub.send(f"term/{tid(i)}/heartbeat", heartbeat(tid(i), mid_of(i), printer=printer), wait=False)
        pub.flush()
    wait_until(lambda: len(open_incidents(pair.store_url)) == len(FAULTY), what="the printer incidents")

    load = Load(broker.url, active.prefix, RATE)
    load.start()
    takeovers = []
    try:
        for _ in range(3):
            time.sleep(3.0)
            before = pair.txn_count()[0]
            killed = time.monotonic()
            active.kill()
            wait_until(lambda d=standby: readyz(d)[0] == 200, timeout=TAKEOVER_S, interval=0.05,
                       what="the standby takes over")
            takeovers.append(round(time.monotonic() - killed, 2))
            wait_until(lambda b=before: pair.txn_count()[0] > b, what="the new active commits")
            start_standby(active)
            active, standby = standby, active
        time.sleep(1.0)
    finally:
        pub_load = load.stop()
    try:
        total = load.total
        wait_until(lambda: pair.txn_count()[0] >= total, timeout=60, interval=0.5, what="every txn stored")
        for i in range(TERMINALS):
            count, amount = load.sent[tid(i)]
            if tid(i) == MISMATCH:
                count += 1
            pub_load.send(f"term/{tid(i)}/batch", batch(tid(i), mid_of(i), count=count, amount_minor=amount,
                                                         ts=now_ms()), wait=False)
        pub_load.flush()
    finally:
        pub_load.close()
    wait_until(lambda: pg_rows(pair.store_url, "SELECT count(*) FROM batches WHERE closed_at IS NOT NULL")[0][0]
               == TERMINALS, timeout=30, what="every BatchClose applied")
    wait_until(lambda: len(open_incidents(pair.store_url)) == len(FAULTY) + 1, timeout=10,
               what="the mismatch gap")

    print(f"takeovers after SIGKILL (s): {takeovers}; txns: {total}")
    assert pair.txn_count() == (total, total)
    assert open_incidents(pair.store_url) == sorted(
        [(t, "printer", "no_paper") for t in FAULTY] + [(MISMATCH, "settlement_gap", "totals_mismatch")])
    assert pg_rows(pair.store_url, "SELECT count(*) FROM incidents")[0][0] == len(FAULTY) + 1  # none resolved/reopened
    tallies = {r[0]: (r[1], r[2], r[3], r[4]) for r in pg_rows(
        pair.store_url, "SELECT terminal_id, tally_count, tally_amount_minor, close_count, close_amount_minor "
        "FROM batches")}
    assert len(tallies) == TERMINALS
    for t, (tally_count, tally_amount, close_count, close_amount) in tallies.items():
        count, amount = load.sent[t]
        assert (tally_count, tally_amount) == (count, amount), t
        assert (close_count, close_amount) == ((count + 1) if t == MISMATCH else count, amount), t
    assert active.stop() == 0
    assert standby.stop() == 0


# ---- the active loses the database ---------------------------------------------------------------


def test_an_active_that_loses_its_database_connections_stops_and_the_standby_loses_nothing(
    pair: Pair, broker: Broker,
) -> None:
    """pg_terminate_backend on every connection of the active, under QoS 1 load: it stops (exit 3, its
    writer failed, or 6, its lease could not be renewed), the standby takes over, and every txn the
    broker accepted is stored exactly once: nothing the old active acknowledged was lost."""
    a, b = pair.a, pair.b
    a.start()
    start_standby(b)
    load = Load(broker.url, a.prefix, RATE / 4)
    load.start()
    try:
        time.sleep(2.0)
        assert a.proc is not None
        killed = pg_rows(pair.store_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         f"WHERE application_name LIKE 'fleetwatch %:{a.proc.pid}:%'")
        assert len(killed) >= 2  # the writer, the lease, the pool
        code = a.proc.wait(timeout=15)
        a.proc = None
        assert code in (3, 6), a.logs()[-2000:]
        wait_until(lambda: readyz(b)[0] == 200, timeout=TAKEOVER_S, what="the standby takes over")
        time.sleep(1.0)
    finally:
        load.stop().close()
    wait_until(lambda: pair.txn_count()[0] >= load.total, timeout=30, interval=0.5, what="every txn stored")
    assert pair.txn_count() == (load.total, load.total)
    assert b.stop() == 0


def test_an_active_whose_lease_is_taken_away_exits_6_and_commits_nothing_more(pair: Pair, broker: Broker) -> None:
    """The lease row handed to someone else (what a standby's takeover leaves when the active
    did not notice its lease run out): at its next renewal, or its next commit refused by the
    fencing token, the active steps down with exit 6; the standby takes the expired lease and
    stores what was published meanwhile, once."""
    a, b = pair.a, pair.b
    a.start()
    start_standby(b)
    with publisher(broker.url, a.prefix) as pub:
        pub.send("term/T1/txn", txn("T1", "before"))
        wait_until(lambda: pair.txn_count()[0] == 1, what="the active stores the txn")
        pg_rows(pair.store_url, "UPDATE leases SET holder = 'intruder', token = token + 1, expires_at = 0 "
                "WHERE name = 'active' RETURNING token")
        assert a.proc is not None
        assert a.proc.wait(timeout=15) == 6
        a.proc = None
        # the intruder, or the standby if it claimed the expired row first
        assert '"stepped down: ' in a.logs()
        assert "holds the lease now (token" in a.logs()
        pub.send("term/T1/txn", txn("T1", "after"))
        wait_until(lambda: readyz(b)[0] == 200, timeout=TAKEOVER_S, what="the standby takes over")
        wait_until(lambda: pair.txn_count()[0] == 2, what="the txn published meanwhile reaches the new active")
    tokens = pg_rows(pair.store_url, "SELECT holder, token FROM leases")
    assert tokens[0][1] == 3
    assert tokens[0][0] != "intruder"
    assert b.stop() == 0


def test_the_lease_is_renewed_through_a_restore_longer_than_the_lease(pair: Pair) -> None:
    """600,000 terminals take longer to restore than a 1 s lease lasts (200,000 did in pure
    Python, not once compiled): the active renews it throughout (a standby would otherwise take
    over mid-restore), stays active with its first token, and becomes ready."""
    a = pair.a
    a.start()
    assert a.stop() == 0  # migrated, lease released
    assert pg_rows(pair.store_url, "WITH added AS (INSERT INTO terminals (terminal_id, merchant_id, model, last_seen) "
                   "SELECT 'R' || lpad(i::text, 7, '0'), 'M' || (i % 5000), 'A920', extract(epoch FROM now()) "
                   "FROM generate_series(1, 600000) AS i RETURNING 1) SELECT count(*) FROM added") == [(600_000,)]
    a.overrides["ha"] = {"lease_s": 1.0}
    a.start(wait_ready=False)
    a.wait_ready(timeout=60)
    time.sleep(2.0)
    took = [json.loads(line) for line in a.logs().splitlines() if '"active: restored and subscribed"' in line][-1]
    assert took["seconds"] > 1.0, "the restore must outlast the lease for this test to prove anything"
    assert "stepped down" not in a.logs()
    assert pg_rows(pair.store_url, "SELECT token FROM leases") == [(2,)]  # the first start's was 1
    assert readyz(a)[0] == 200
    assert a.stop() == 0
