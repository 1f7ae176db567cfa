"""Settlement gaps (不进账) end to end: a scripted day of card traffic through a real broker.

A seeded "day" for 100 terminals over 30 merchants: sales (some partial approvals),
preauths and completions, refunds, voids of sales, declines and cancellations, the
night's BatchCloses and the host's T+1 Settlements. Ten batches on ten different
merchants go wrong: 5 are never closed, 3 are settled short, 2 are never settled. The
expected money is computed here from the script itself, counted the way the contract
counts a batch, never read back from the daemon.

Deadlines are seconds (``batch_close_deadline_s`` / ``settlement_deadline_s``) and the
fleet beats every second throughout, so silence never muddies the result.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.publish import Publisher, heartbeat, now_ms
from tests.services import Broker, Daemon, wait_until

pytestmark = [pytest.mark.broker, pytest.mark.slow]

SEED = 20261122
TERMINALS = 100
MERCHANTS = 30
CLOSE_DEADLINE_S = 15.0
SETTLE_DEADLINE_S = 12.0
GAP_CAUSES = ("batch_not_closed", "totals_mismatch", "not_settled", "settled_short")
FAULTS = ["batch_not_closed"] * 5 + ["settled_short"] * 3 + ["not_settled"] * 2

Msg = tuple[str, dict[str, Any]]
GapKey = tuple[str, int, str, str]
"""(terminal_id, batch_no, currency, cause): the contract's key of a batch gap."""


# ---- the scripted day ----------------------------------------------------------------------

@dataclass
class Batch:
    """One (terminal, batch_no, currency) with its traffic and the tally it must produce."""

    tid: str
    mid: str
    batch_no: int
    currency: str
    txns: list[dict[str, Any]] = field(default_factory=list)
    count: int = 0
    amount: int = 0
    fault: str | None = None
    shortfall: int = 0

    def close(self, ts: int) -> Msg:
        return f"term/{self.tid}/batch", {
            "v": 1, "terminal_id": self.tid, "merchant_id": self.mid, "ts": ts, "batch_no": self.batch_no,
            "count": self.count, "amount_minor": self.amount, "currency": self.currency, "result": "confirmed"}

    def settlement(self, day: str, credited_at: int, amount: int, count: int) -> Msg:
        return "host/settlement", {
            "v": 1, "merchant_id": self.mid, "terminal_id": self.tid, "batch_no": self.batch_no,
            "business_date": day, "settled_count": count, "settled_amount_minor": amount,
            "currency": self.currency, "credited_at": credited_at}


@dataclass
class Day:
    """The whole script: terminals, batches, and the messages in the order they are sent."""

    terminals: list[tuple[str, str]]
    batches: list[Batch]
    business_date: str
    close_ts: int
    credited_at: int

    @property
    def faulty(self) -> list[Batch]:
        return [b for b in self.batches if b.fault is not None]

    def txn_messages(self) -> list[Msg]:
        """Every terminal's day, interleaved in the terminals' own time order."""
        txns = sorted((t for b in self.batches for t in b.txns), key=lambda t: (t["ts"], t["txn_id"]))
        return [(f"term/{t['terminal_id']}/txn", t) for t in txns]

    def close_messages(self) -> list[Msg]:
        """The night's auto-close: every batch but the ones that are never closed."""
        return [b.close(self.close_ts) for b in self.batches if b.fault != "batch_not_closed"]

    def settlement_messages(self) -> list[Msg]:
        """T+1 settlements: the short ones first, then the healthy ones; two never come."""
        short = [b.settlement(self.business_date, self.credited_at, b.amount - b.shortfall, b.count)
                 for b in self.batches if b.fault == "settled_short"]
        healthy = [b.settlement(self.business_date, self.credited_at, b.amount, b.count)
                   for b in self.batches if b.fault is None]
        return short + healthy

    def late_messages(self) -> list[Msg]:
        """What makes every merchant whole: late closes, late settlements, top-ups, a correction."""
        out: list[Msg] = []
        later = self.credited_at + 3_600_000
        short_seen = 0
        for b in self.faulty:
            if b.fault == "batch_not_closed":
                out += [b.close(self.close_ts + 7_200_000),
                        b.settlement(self.business_date, later, b.amount, b.count)]
            elif b.fault == "not_settled":
                out.append(b.settlement(self.business_date, later, b.amount, b.count))
            else:
                short_seen += 1
                if short_seen == 1:  # a corrected statement: same credited_at replaces the short one
                    out.append(b.settlement(self.business_date, self.credited_at, b.amount, b.count))
                else:  # a top-up: a further credit of the missing money
                    out.append(b.settlement(self.business_date, later, b.shortfall, 0))
        return out

    def expected_gaps(self) -> dict[GapKey, int]:
        """Each faulty batch's gap and its money at stake (the shortfall for settled_short)."""
        return {(b.tid, b.batch_no, b.currency, b.fault): (b.shortfall if b.fault == "settled_short" else b.amount)
                for b in self.faulty if b.fault is not None}

    def totals(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for (_t, _n, currency, _c), amount in self.expected_gaps().items():
            out[currency] = out.get(currency, 0) + amount
        return out

    def reconciliation(self, mid: str) -> list[dict[str, Any]]:
        """The merchant's day per currency as the reconciliation view must show it (before late news)."""
        days: dict[str, dict[str, Any]] = {}
        for b in self.batches:
            if b.mid != mid:
                continue
            closed = b.fault != "batch_not_closed"
            settled = {None: b.amount, "settled_short": b.amount - b.shortfall}.get(b.fault, 0)
            d = days.setdefault(b.currency, {
                "currency": b.currency, "approved_minor": 0, "approved_count": 0, "batched_minor": 0,
                "settled_minor": 0, "difference_minor": 0, "batches": 0, "unclosed_batches": 0,
                "unsettled_batches": 0})
            d["approved_minor"] += b.amount
            d["approved_count"] += b.count
            d["batched_minor"] += b.amount if closed else 0
            d["settled_minor"] += settled
            d["batches"] += 1
            d["unclosed_batches"] += not closed
            d["unsettled_batches"] += b.fault in ("batch_not_closed", "not_settled")
        for d in days.values():
            d["difference_minor"] = d["approved_minor"] - d["settled_minor"]
        return sorted(days.values(), key=lambda d: str(d["currency"]))


def _fill(rng: random.Random, b: Batch, day_start_ms: int) -> None:
    """A batch's day of traffic; the tally is counted here the way a BatchClose counts."""
    unit = 100 if b.currency == "CNY" else 10
    seq = iter(range(1, 10_000))
    times = iter(sorted(rng.sample(range(8 * 3_600_000, 22 * 3_600_000, 1000), 40)))

    def txn(kind: str, amount: int, outcome: str = "approved", rc: str | None = "00",
            **extra: Any) -> dict[str, Any]:
        n = next(seq)
        body: dict[str, Any] = {
            "v": 1, "terminal_id": b.tid, "merchant_id": b.mid, "ts": day_start_ms + next(times),
            "txn_id": f"{b.tid}-{b.batch_no}-{b.currency}-{n:03d}", "stan": f"{n:06d}",
            "rrn": f"{rng.randrange(10**11, 10**12)}", "batch_no": b.batch_no, "type": kind,
            "amount_minor": amount, "currency": b.currency, "entry": rng.choice(["chip", "ctls", "ctls", "msr"]),
            "card_ref": f"c{rng.randrange(16**7):07x}", "outcome": outcome, "error": None, "offline": False,
            **extra}
        if rc is not None:
            body["rc"] = rc
        b.txns.append(body)
        return body

    sales: list[dict[str, Any]] = []
    for _ in range(rng.randint(6, 10)):
        if rng.random() < 0.1:  # partial approval: amount_minor is the approved amount
            sales.append(txn("sale", rng.randint(20, 400) * unit, rc="10"))
        else:
            sales.append(txn("sale", rng.randint(20, 500) * unit))
        b.count += 1
        b.amount += sales[-1]["amount_minor"]
        if rng.random() < 0.25:  # the card behind it was declined first
            txn("sale", rng.randint(20, 500) * unit, "declined", rng.choice(["05", "51", "55", "14"]))
    if rng.random() < 0.4:  # hotel-style: a preauth, then its completion for less
        pre = txn("preauth", rng.randint(200, 800) * unit)
        done = rng.randint(100, pre["amount_minor"] // unit) * unit
        txn("completion", done, orig_txn_id=pre["txn_id"])
        b.count += 1
        b.amount += done
    for _ in range(rng.randint(0, 2)):
        refund = rng.randint(1, 19) * unit
        txn("refund", refund)
        b.count += 1
        b.amount -= refund
    if rng.random() < 0.5:
        voided = rng.choice(sales)
        txn("void", voided["amount_minor"], orig_txn_id=voided["txn_id"])
        b.count += 1
        b.amount -= voided["amount_minor"]
    if rng.random() < 0.2:
        txn("sale", rng.randint(20, 500) * unit, "cancelled", None,
            error={"stage": "pin", "code": "USER_CANCEL", "detail": "cancelled at PIN entry"})
    assert b.amount > 0, "every scripted batch owes its merchant money"


def build_day(seed: int = SEED, terminals: int = TERMINALS, merchants: int = MERCHANTS) -> Day:
    """The seeded script. Faulty batches sit on ten different merchants."""
    rng = random.Random(seed)
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    yesterday = today - timedelta(days=1)
    day_start_ms = int(yesterday.timestamp() * 1000)
    roster = [(f"T{i:05d}", f"M{i % merchants:03d}") for i in range(terminals)]
    batches: list[Batch] = []
    hkd_takers = {tid for i, (tid, _) in enumerate(roster) if i % 7 == 0}
    for tid, mid in roster:
        batch_no = rng.randint(1, 999)
        for currency in ("CNY", "HKD") if tid in hkd_takers else ("CNY",):
            b = Batch(tid, mid, batch_no, currency)
            _fill(rng, b, day_start_ms)
            batches.append(b)
    # ten faulty batches on ten different merchants; three of them in HKD
    order = list(range(len(batches)))
    rng.shuffle(order)
    chosen: list[Batch] = []
    merchants_hit: set[str] = set()
    for want_hkd in (True, True, True, False, False, False, False, False, False, False):
        for i in order:
            b = batches[i]
            if b.mid not in merchants_hit and (b.currency == "HKD") == want_hkd:
                chosen.append(b)
                merchants_hit.add(b.mid)
                break
    rng.shuffle(chosen)
    for b, fault in zip(chosen, FAULTS, strict=True):
        b.fault = fault
        if fault == "settled_short":
            b.shortfall = rng.randint(1, b.amount // 2)
    return Day(roster, batches, yesterday.date().isoformat(),
               close_ts=day_start_ms + 23 * 3_600_000, credited_at=int((today + timedelta(hours=6)).timestamp() * 1000))


# ---- a fleet that beats every second ------------------------------------------------------

class Heartbeats:
    """Every terminal beats once per second (QoS 0) on the publisher's connection, in a thread."""

    def __init__(self, pub: Publisher, terminals: list[tuple[str, str]]) -> None:
        self._pub = pub
        self._terminals = terminals
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.rounds = 0

    def _run(self) -> None:
        seq = 1
        next_at = time.monotonic()
        while not self._stop.is_set():
            for tid, mid in self._terminals:
                body = json.dumps(heartbeat(tid, mid, seq=seq), separators=(",", ":"))
                self._pub.client.publish(f"{self._pub.prefix}/term/{tid}/heartbeat", body, qos=0)
            self.rounds += 1
            seq += 1
            next_at += 1.0
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def __enter__(self) -> Heartbeats:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)


@contextmanager
def fleet_connection(broker: Broker, daemon: Daemon, terminals: list[tuple[str, str]]) -> Iterator[Publisher]:
    pub = Publisher(broker.url, daemon.prefix)
    try:
        with Heartbeats(pub, terminals):
            yield pub
    finally:
        pub.close()


def send_all(pub: Publisher, messages: list[Msg]) -> None:
    """QoS 1 without waiting per message; returns once the broker has all of them."""
    for suffix, body in messages:
        pub.send(suffix, body, wait=False)
    pub.flush()


# ---- reading the daemon ----------------------------------------------------------------------

def gap_key(inc: dict[str, Any]) -> GapKey:
    ev = inc["evidence"]
    return inc["terminal_id"], int(ev["batch_no"]), str(ev["currency"]), inc["cause"]


def open_gaps(daemon: Daemon) -> dict[GapKey, dict[str, Any]]:
    return {gap_key(i): i for i in daemon.incidents(status="open", kind="settlement_gap", scope="terminal")}


def reconciliation(daemon: Daemon, day: Day, mid: str) -> dict[str, Any]:
    found: dict[str, Any] = daemon.get(
        f"/api/v1/settlement/reconciliation?merchant_id={mid}&business_date={day.business_date}")
    return found


def reconciled(daemon: Daemon, day: Day, mid: str) -> bool:
    """The store has caught up: the view shows the merchant's day as the script computes it."""
    view = reconciliation(daemon, day, mid)
    return bool(view["merchant_id"] == mid and view["currencies"] == day.reconciliation(mid))


def unsettled(daemon: Daemon) -> dict[tuple[str, str], float]:
    """The non-zero ``fleetwatch_settlement_unsettled_amount`` series by (currency, cause)."""
    out: dict[tuple[str, str], float] = {}
    for currency in ("CNY", "HKD"):
        for cause in GAP_CAUSES:
            value = daemon.metric("fleetwatch_settlement_unsettled_amount", currency=currency, cause=cause)
            if value:
                out[currency, cause] = value
    return out


def configure(daemon: Daemon, close_s: float = CLOSE_DEADLINE_S, settle_s: float = SETTLE_DEADLINE_S) -> None:
    daemon.overrides = {
        "detect": {"heartbeat_interval_s": 1.0},
        "settlement": {"batch_close_deadline_s": close_s, "settlement_deadline_s": settle_s},
    }


def wait_online(daemon: Daemon, count: int) -> None:
    wait_until(lambda: daemon.metric("fleetwatch_terminals", state="online") >= count, timeout=20,
               what=f"{count} terminals online")


def wait_for_gaps(daemon: Daemon, day: Day, traffic_done: float) -> dict[GapKey, dict[str, Any]]:
    """Wait for the expected gaps, then until every batch's deadline has surely come, and read."""
    expected = set(day.expected_gaps())
    wait_until(lambda: expected <= set(open_gaps(daemon)), timeout=max(CLOSE_DEADLINE_S, SETTLE_DEADLINE_S) + 40,
               what="the ten gaps to open")
    # every deadline of every batch (counted from receive times) has come: nothing more may open
    time.sleep(max(0.0, traffic_done + max(CLOSE_DEADLINE_S, SETTLE_DEADLINE_S) + 3 - time.monotonic()))
    return open_gaps(daemon)


def assert_gaps(daemon: Daemon, day: Day, found: dict[GapKey, dict[str, Any]]) -> None:
    expected = day.expected_gaps()
    assert set(found) == set(expected)
    by_key = {(b.tid, b.batch_no, b.currency): b for b in day.batches}
    for key, inc in found.items():
        b = by_key[key[:3]]
        ev = inc["evidence"]
        assert (inc["scope"], inc["severity"], inc["merchant_id"]) == ("terminal", "major", b.mid), key
        assert ev["amount_minor"] == expected[key], key
        assert (ev["tally_count"], ev["tally_amount_minor"]) == (b.count, b.amount), key
        if b.fault == "settled_short":
            assert ev["shortfall_minor"] == b.shortfall
            assert ev["settled_amount_minor"] == b.amount - b.shortfall
        if b.fault == "not_settled":
            assert ev["close_amount_minor"] == b.amount
        assert inc["parent_id"] is None
        assert inc["suppressed"] is False
    # nothing else is open: no merchant parent (ten different merchants), no offline, nothing
    others = [i for i in daemon.incidents(status="open") if i["scope"] != "terminal" or i["kind"] != "settlement_gap"]
    assert others == []


def assert_resolves(daemon: Daemon, pub: Publisher, day: Day) -> list[dict[str, Any]]:
    """The late news arrives: every gap resolves at once and nothing is left open."""
    send_all(pub, day.late_messages())
    wait_until(lambda: not daemon.incidents(status="open"), timeout=20, what="every gap resolved")
    every = daemon.incidents(status="all")
    assert all(i["status"] == "resolved" for i in every)
    # nothing but terminal gaps ever opened (no offline across a restart, no parent)
    assert {(i["kind"], i["scope"]) for i in every} == {("settlement_gap", "terminal")}
    gaps = daemon.get("/api/v1/settlement/gaps")
    assert (gaps["items"], gaps["total_at_stake_minor"]) == ([], {})
    wait_until(lambda: unsettled(daemon) == {}, what="the unsettled gauges back at 0")  # refreshed each second
    return every


def expected_set(day: Day) -> list[tuple[str, int, str, str, int]]:
    return sorted((*key, amount) for key, amount in day.expected_gaps().items())


def final_set(incidents: list[dict[str, Any]]) -> list[tuple[str, int, str, str, int]]:
    """(terminal, batch_no, currency, cause, amount) of every incident, sorted, twins kept."""
    return sorted((*gap_key(i), int(i["evidence"]["amount_minor"]))
                  for i in incidents if i["kind"] == "settlement_gap")


# ---- the tests ---------------------------------------------------------------------------------

def test_script_is_deterministic_and_well_formed() -> None:
    """The seeded day is the same every time, and its faults are spread as the e2e tests assume."""
    a, b = build_day(), build_day()
    assert a.expected_gaps() == b.expected_gaps()
    assert [m[1]["txn_id"] for m in a.txn_messages()] == [m[1]["txn_id"] for m in b.txn_messages()]
    assert len({x.mid for x in a.faulty}) == 10
    assert sorted(x.fault or "" for x in a.faulty) == sorted(FAULTS)
    assert {x.currency for x in a.faulty} == {"CNY", "HKD"}
    assert len({mid for _, mid in a.terminals}) == MERCHANTS
    assert len({m[1]["txn_id"] for m in a.txn_messages()}) == len(a.txn_messages())


def test_a_day_of_traffic_gives_exactly_the_ten_gaps_and_late_money_resolves_them(
        daemon: Daemon, broker: Broker) -> None:
    """100 terminals, 30 merchants, a seeded day through Mosquitto: exactly the 10 gaps open, with
    the computed money (shortfall for settled_short) and nothing else; the gaps API totals per
    currency, the reconciliation view of every merchant, and the unsettled-amount gauge per
    cause all match the script's own sums; the late closes, settlements and top-ups resolve all 10."""
    day = build_day()
    configure(daemon)
    daemon.start()
    with fleet_connection(broker, daemon, day.terminals) as pub:
        wait_online(daemon, TERMINALS)
        send_all(pub, day.txn_messages())
        send_all(pub, day.close_messages())
        send_all(pub, day.settlement_messages())
        traffic_done = time.monotonic()
        found = wait_for_gaps(daemon, day, traffic_done)
        assert_gaps(daemon, day, found)

        gaps = daemon.get("/api/v1/settlement/gaps")
        assert gaps["total_at_stake_minor"] == day.totals()
        assert {gap_key(i) for i in gaps["items"]} == set(day.expected_gaps())

        for mid in sorted({m for _, m in day.terminals}):
            wait_until(lambda m=mid: reconciled(daemon, day, m), timeout=10, what=f"reconciliation of {mid}")
            assert reconciliation(daemon, day, mid)["currencies"] == day.reconciliation(mid)

        # the gauge in major units, non-zero exactly for the (currency, cause) pairs with gaps
        want: dict[tuple[str, str], float] = {}
        for (_t, _n, currency, cause), amount in day.expected_gaps().items():
            want[currency, cause] = want.get((currency, cause), 0) + amount / 100
        assert {cause for _, cause in want} == set(FAULTS)
        shown = wait_until(lambda: (u := unsettled(daemon)) == pytest.approx(want) and u, what="unsettled gauges")
        assert set(shown) == set(want)

        every = assert_resolves(daemon, pub, day)
    # each gap opened once, and kept the money it was opened for
    assert final_set(every) == expected_set(day)


@pytest.mark.parametrize(("backend", "kill_point"),
                         [("sqlite", "mid_txns"), ("sqlite", "after_short_settlements"), ("postgresql", "mid_txns")],
                         indirect=["backend"])
def test_sigkill_in_the_middle_of_the_day_changes_nothing(daemon: Daemon, broker: Broker, kill_point: str) -> None:
    """The same seeded day with the daemon SIGKILLed in the middle (mid-ingest of the day's
    transactions, or once the short settlements have opened their gaps) and restarted, with
    traffic queued by the broker while it was down: the ten gaps, their causes and money are
    exactly the uninterrupted run's, the late news resolves them, and no gap has a twin. Also on
    PostgreSQL: ingest, gaps, the gaps API and restore after SIGKILL through the other backend."""
    day = build_day()
    configure(daemon)
    daemon.start()
    txns, closes, settlements = day.txn_messages(), day.close_messages(), day.settlement_messages()
    with fleet_connection(broker, daemon, day.terminals) as pub:
        wait_online(daemon, TERMINALS)
        if kill_point == "mid_txns":
            half = len(txns) // 2
            send_all(pub, txns[:half])
            wait_until(lambda: daemon.metric("fleetwatch_messages_received_total", type="txn") >= half // 2,
                       what="part of the day ingested")
            daemon.kill()
            send_all(pub, txns[half:])  # queued by the broker for the daemon's session
            daemon.start()
            send_all(pub, closes)
            send_all(pub, settlements)
        else:
            short = [m for m in settlements if any(
                b.fault == "settled_short" and (b.tid, b.batch_no, b.currency)
                == (m[1]["terminal_id"], m[1]["batch_no"], m[1]["currency"]) for b in day.faulty)]
            assert len(short) == 3
            rest = settlements[len(short):]
            send_all(pub, txns)
            send_all(pub, closes)
            send_all(pub, short + rest[: len(rest) // 2])
            wait_until(lambda: sum(k[3] == "settled_short" for k in open_gaps(daemon)) == 3,
                       what="the short settlements' gaps open before the kill")
            daemon.kill()
            send_all(pub, rest[len(rest) // 2:])  # queued while the daemon is down
            daemon.start()
        wait_online(daemon, TERMINALS)
        traffic_done = time.monotonic()
        found = wait_for_gaps(daemon, day, traffic_done)
        assert_gaps(daemon, day, found)
        assert daemon.get("/api/v1/settlement/gaps")["total_at_stake_minor"] == day.totals()
        every = assert_resolves(daemon, pub, day)
    # the uninterrupted run's set (asserted by the test above) and no twins across the kill
    assert final_set(every) == expected_set(day)


def test_gaps_on_several_terminals_of_one_merchant_share_one_merchant_incident(
        daemon: Daemon, broker: Broker) -> None:
    """Gaps on 3 of a merchant's 4 terminals (two currencies) open one merchant-scope
    settlement_gap whose evidence sums the children's money per currency; the three terminal
    gaps carry its id and are suppressed; a lone gap at another merchant stays on its own;
    once the money arrives the children and the parent resolve."""
    rng = random.Random(SEED + 1)
    day_start = int((datetime.now(UTC) - timedelta(days=1)).replace(
        hour=0, minute=0, second=0, microsecond=0).timestamp() * 1000)
    shop = [(f"MX-{i}", "MX") for i in range(4)]
    other = [("OT-1", "MO"), ("OT-2", "MO")]
    batches: list[Batch] = []
    for tid, mid in shop + other:
        b = Batch(tid, mid, 7, "CNY")
        _fill(rng, b, day_start)
        batches.append(b)
    hkd = Batch("MX-2", "MX", 7, "HKD")
    _fill(rng, hkd, day_start)
    batches.append(hkd)
    faults = {("MX-0", "CNY"): "settled_short", ("MX-1", "CNY"): "not_settled", ("MX-2", "HKD"): "batch_not_closed",
              ("OT-1", "CNY"): "not_settled"}
    for b in batches:
        b.fault = faults.get((b.tid, b.currency))
        if b.fault == "settled_short":
            b.shortfall = rng.randint(1, b.amount // 2)
    day = Day(shop + other, batches, datetime.fromtimestamp(day_start / 1000, UTC).date().isoformat(),
              close_ts=day_start + 23 * 3_600_000, credited_at=now_ms())
    configure(daemon, close_s=4.0, settle_s=4.0)
    daemon.start()
    with fleet_connection(broker, daemon, day.terminals) as pub:
        wait_online(daemon, len(day.terminals))
        send_all(pub, day.txn_messages() + day.close_messages() + day.settlement_messages())
        expected = day.expected_gaps()
        wait_until(lambda: set(expected) <= set(open_gaps(daemon)), timeout=30, what="the four gaps")

        def merchant_parent() -> dict[str, Any] | None:
            found = daemon.incidents(status="open", kind="settlement_gap", scope="merchant")
            return found[0] if len(found) == 1 and found[0]["evidence"].get("gaps") == 3 else None

        parent = wait_until(merchant_parent, timeout=15, what="one merchant parent over three gaps")
        assert parent["merchant_id"] == "MX"
        sums: dict[str, int] = {}
        for (tid, _n, currency, _c), amount in expected.items():
            if tid.startswith("MX"):
                sums[currency] = sums.get(currency, 0) + amount
        assert parent["evidence"]["amount_minor"] == sums
        assert parent["evidence"]["failing_terminals"] == 3
        gaps = open_gaps(daemon)
        assert set(gaps) == set(expected)
        for key, inc in gaps.items():
            mine = key[0].startswith("MX")
            assert inc["parent_id"] == (parent["id"] if mine else None), key
            assert inc["suppressed"] is mine, key
        merchants = daemon.incidents(status="all", scope="merchant")
        assert [m["id"] for m in merchants] == [parent["id"]]  # none for MO: 1 of its 2 terminals
        # the gaps endpoint totals terminal gaps only: the parent's money is not counted twice
        assert daemon.get("/api/v1/settlement/gaps")["total_at_stake_minor"] == day.totals()

        send_all(pub, day.late_messages())
        wait_until(lambda: not daemon.incidents(status="open"), timeout=20, what="children and parent resolved")
    assert len(daemon.incidents(status="all", scope="merchant")) == 1
