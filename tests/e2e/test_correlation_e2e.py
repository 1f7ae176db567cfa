"""Correlation end to end: a scripted fleet of 500+ terminals beating every second through Mosquitto.

One paho connection plays the whole fleet: heartbeats at QoS 0 every second, payments at
QoS 1 half a second later (cashiers do not pay in step with the heartbeat), nothing waits
per message. The daemon runs with ``heartbeat_interval_s = 1`` and the contract's default
multiples (correlation window 5, upstream clear 5, clear after 3, offline after 3).

- many terminals failing against the host at once is one fleet ``host_outage`` and no page
  per terminal;
- a certificate expired on one model+firmware is one ``group`` host_outage naming that kit;
- a shop whose three terminals all go silent is one merchant incident over three suppressed
  terminal incidents, while lone silent terminals elsewhere stand on their own.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from tests.publish import Publisher, heartbeat, now_ms, state
from tests.services import Broker, Daemon, wait_until

pytestmark = [pytest.mark.broker, pytest.mark.slow]

SEED = 7
KITS = [("A920", "2.4.1", "4g"), ("A920", "2.5.0", "wifi"), ("P60", "3.0.2", "wifi"),
        ("N910", "6.1.0", "eth"), ("V200c", "5.2.3", "eth")]
SUBORDINATE_SCOPES = ("terminal", "merchant")


@dataclass
class Term:
    tid: str
    mid: str
    model: str
    fw: str
    net: str
    seq: int = 0
    uptime_s: int = 86_400
    serial: str = ""
    silent: bool = False
    down_rounds: int = 0
    """Rounds left without heartbeats while rebooting (0: up)."""
    failing: str | None = None
    """None, or how every payment attempt fails: ``rc91`` ``rc96`` ``connect`` ``tls``."""
    txns: int = 0


class Fleet:
    """The whole fleet on one paho connection, driven by a thread at 2 Hz.

    Even half-ticks: a heartbeat from every terminal that is up and not silent (QoS 0).
    Odd half-ticks: one payment attempt from every failing terminal, and a few approved
    sales on healthy ones (QoS 1, not waited for).
    """

    def __init__(self, broker: Broker, daemon: Daemon, terms: list[Term], *, sales_per_round: int = 20) -> None:
        self.pub = Publisher(broker.url, daemon.prefix)
        self.terms = {t.tid: t for t in terms}
        self.lock = threading.Lock()
        self.rng = random.Random(SEED)
        self.sales_per_round = sales_per_round
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        for i, t in enumerate(terms):
            t.serial = f"{1_850_000_000 + i}"

    # -- control, from the test's thread -------------------------------------------------

    def fail(self, tids: list[str], mode: str | Callable[[str], str]) -> None:
        with self.lock:
            for tid in tids:
                self.terms[tid].failing = mode if isinstance(mode, str) else mode(tid)

    def heal(self) -> None:
        with self.lock:
            for t in self.terms.values():
                t.failing = None

    def silence(self, tids: list[str]) -> None:
        with self.lock:
            for tid in tids:
                self.terms[tid].silent = True

    def reboot(self, tids: list[str], down_rounds: int = 2) -> None:
        """Clean shutdown, a couple of missed beats, birth, and ``seq`` / ``uptime_s`` from scratch."""
        with self.lock:
            for tid in tids:
                t = self.terms[tid]
                self._send(f"term/{tid}/state", state(tid, "shutdown"), qos=1, retain=True)
                t.down_rounds, t.seq, t.uptime_s = down_rounds, 0, 0

    # -- the thread ----------------------------------------------------------------------

    def _send(self, suffix: str, body: dict[str, Any], *, qos: int, retain: bool = False) -> None:
        self.pub.client.publish(f"{self.pub.prefix}/{suffix}", json.dumps(body, separators=(",", ":")),
                                qos=qos, retain=retain)

    def _beat(self) -> None:
        for t in self.terms.values():
            if t.silent:
                continue
            if t.down_rounds:
                t.down_rounds -= 1
                if t.down_rounds == 0:
                    self._send(f"term/{t.tid}/state", state(t.tid, "online"), qos=1, retain=True)
                continue
            t.seq += 1
            t.uptime_s += 1
            body = heartbeat(t.tid, t.mid, seq=t.seq, model=t.model, fw=t.fw, serial=t.serial,
                             uptime_s=t.uptime_s)
            body["net"] = {**body["net"], "type": t.net}
            self._send(f"term/{t.tid}/heartbeat", body, qos=0)

    def _pay(self, t: Term, outcome: str = "approved", rc: str | None = "00",
             error: dict[str, str] | None = None) -> None:
        t.txns += 1
        body: dict[str, Any] = {
            "v": 1, "terminal_id": t.tid, "merchant_id": t.mid, "ts": now_ms(), "txn_id": f"{t.tid}-{t.txns:05d}",
            "stan": f"{t.txns:06d}", "batch_no": 1, "type": "sale", "amount_minor": self.rng.randint(100, 90_000),
            "currency": "CNY", "entry": "ctls", "card_ref": f"c{self.rng.randrange(16**7):07x}",
            "outcome": outcome, "error": error, "offline": False}
        if rc is not None:
            body["rc"] = rc
        self._send(f"term/{t.tid}/txn", body, qos=1)

    def _attempts(self) -> None:
        healthy = []
        for t in self.terms.values():
            if t.silent or t.down_rounds:
                continue
            if t.failing in ("rc91", "rc96"):
                self._pay(t, "declined", t.failing[2:])
            elif t.failing in ("connect", "tls"):
                self._pay(t, "error", None, {"stage": t.failing, "code": "E_" + t.failing.upper(),
                                             "detail": "no answer from the acquirer host"})
            else:
                healthy.append(t)
        for t in self.rng.sample(healthy, min(self.sales_per_round, len(healthy))):
            self._pay(t)

    def _run(self) -> None:
        half = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            with self.lock:
                if half % 2 == 0:
                    self._beat()
                else:
                    self._attempts()
            half += 1
            next_at += 0.5
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def __enter__(self) -> Fleet:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.pub.close()


@contextmanager
def running_fleet(daemon: Daemon, broker: Broker, terms: list[Term]) -> Iterator[Fleet]:
    daemon.overrides = {"detect": {"heartbeat_interval_s": 1.0}}
    daemon.start()
    with Fleet(broker, daemon, terms) as fleet:
        wait_until(lambda: daemon.metric("fleetwatch_terminals", state="online") == len(terms), timeout=20,
                   what=f"{len(terms)} terminals online")
        time.sleep(3)  # a few quiet intervals: the fleet's failing baseline is learned as ~0
        yield fleet


def roster(n: int, merchants: int, kit: Callable[[int], tuple[str, str, str]]) -> list[Term]:
    """``n`` terminals, terminal i in merchant ``i % merchants`` (neighbours are in different shops)."""
    return [Term(f"C{i:04d}", f"CM{i % merchants:03d}", *kit(i)) for i in range(n)]


# ---- reading the daemon ----------------------------------------------------------------------

def scrape(daemon: Daemon) -> str:
    text: str = daemon.get("/metrics", auth=False)
    return text


def metric_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        metric_name, _, label_text = head.partition("{")
        if line.startswith("#") or metric_name != name:
            continue
        if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            total += float(value)
    return total


class PageWatch:
    """Samples ``fleetwatch_incidents_pageable`` by scope every time a wait polls."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.max: Counter[str] = Counter()

    def sample(self) -> str:
        text = scrape(self.daemon)
        for scope in ("terminal", "merchant", "group", "fleet"):
            self.max[scope] = max(self.max[scope], int(metric_sum(text, "fleetwatch_incidents_pageable", scope=scope)))
        return text

    def scrape_when(self, check: Callable[[str], bool], what: str) -> str:
        """The first scrape that passes ``check``: the gauges are a snapshot refreshed each second."""
        def fresh() -> str | None:
            text = self.sample()
            return text if check(text) else None
        found: str = wait_until(fresh, timeout=10, interval=0.25, what=what)
        return found

    def until(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        def polled() -> Any:
            self.sample()
            return predicate()
        return wait_until(polled, timeout=timeout, interval=0.25, what=what)


def by_kind(incidents: list[dict[str, Any]], kind: str, *scopes: str) -> list[dict[str, Any]]:
    return [i for i in incidents if i["kind"] == kind and (not scopes or i["scope"] in scopes)]


# ---- (a) a host outage across the fleet ----------------------------------------------------

def test_host_outage_across_the_fleet_is_one_fleet_incident_and_no_terminal_page(
        daemon: Daemon, broker: Broker) -> None:
    """500 terminals in 250 merchants; 30% of them (all kits, all shops) start failing within
    3 s, half with rc 91/96 from the host and half with connect-stage errors: exactly one
    fleet-scope ``host_outage`` opens, every terminal or merchant incident that opens is its
    suppressed child, ``fleetwatch_incidents_pageable`` for scope terminal (and merchant)
    stays 0 while the fleet one is the single page; once the failures stop it resolves
    after its quiet period and every child resolves with it (none is left paging alone)."""
    rng = random.Random(SEED)
    terms = roster(500, 250, lambda i: KITS[i % len(KITS)])
    failing = rng.sample([t.tid for t in terms], 150)
    modes = {tid: ("rc91", "rc96", "connect", "connect")[i % 4] for i, tid in enumerate(failing)}
    link_failing = sorted(tid for tid, m in modes.items() if m == "connect")
    with running_fleet(daemon, broker, terms) as fleet:
        watch = PageWatch(daemon)
        for chunk in (failing[:50], failing[50:100], failing[100:]):
            fleet.fail(chunk, modes.__getitem__)
            watch.sample()
            time.sleep(1)

        def fleet_outage() -> dict[str, Any] | None:
            ups = by_kind(daemon.incidents(status="open"), "host_outage")
            return ups[0] if len(ups) == 1 and ups[0]["scope"] == "fleet" else None

        outage = watch.until(fleet_outage, 20, "one fleet host_outage")
        # the link failures wait one correlation window on each terminal, then open as its children
        watch.until(lambda: len(by_kind(daemon.incidents(status="open"), "network", "terminal"))
                    >= len(link_failing), 25, "the terminals' comm_errors incidents")
        during = watch.scrape_when(
            lambda t: metric_sum(t, "fleetwatch_incidents_open", scope="terminal") >= len(link_failing),
            "the gauges to show the children")
        open_now = daemon.incidents(status="open")
        fleet.heal()
        healed_at = time.monotonic()

        assert metric_sum(during, "fleetwatch_incidents_pageable", scope="fleet", kind="host_outage") == 1
        assert metric_sum(during, "fleetwatch_incidents_pageable", scope="terminal") == 0
        assert metric_sum(during, "fleetwatch_incidents_pageable", scope="merchant") == 0
        assert metric_sum(during, "fleetwatch_incidents_open", scope="terminal") >= len(link_failing)
        assert (outage["cause"], outage["severity"], outage["group"]) == ("host_errors", "critical", None)
        assert [i["id"] for i in open_now if i["scope"] not in SUBORDINATE_SCOPES] == [outage["id"]]

        watch.until(lambda: daemon.incidents(status="open") == [], 30, "the outage and its children resolved")
        resolved_after = time.monotonic() - healed_at

    every = daemon.incidents(status="all")
    ups = by_kind(every, "host_outage")
    assert [(u["id"], u["scope"]) for u in ups] == [(outage["id"], "fleet")]
    subordinate = [i for i in every if i["scope"] in SUBORDINATE_SCOPES]
    assert subordinate, "the link failures opened terminal incidents"
    for inc in subordinate:
        assert (inc["parent_id"], inc["suppressed"]) == (outage["id"], True), inc
        assert inc["terminal_id"] in modes or inc["scope"] == "merchant", inc
    terminal_children = {i["terminal_id"] for i in subordinate if i["scope"] == "terminal"}
    assert terminal_children == set(link_failing)
    assert watch.max["terminal"] == 0, dict(watch.max)
    assert watch.max["merchant"] == 0, dict(watch.max)
    for inc in subordinate:
        events = [e["type"] for e in daemon.get(f"/api/v1/incidents/{inc['id']}/events")]
        assert "unsuppressed" not in events, (inc["terminal_id"], events)

    opened = Counter(i["scope"] for i in every)
    print(f"\n[host outage figures] terminals={len(terms)} merchants=250 "
          f"terminals_affected={len(failing)} (rc91/96={len(failing) - len(link_failing)}, "
          f"connect={len(link_failing)}) fleet_evidence_failing={ups[0]['evidence'].get('failing_terminals')} "
          f"incidents_opened={dict(opened)} pageable_max={dict(watch.max)} "
          f"pageable_terminal_incidents=0 resolved_within_s={resolved_after:.1f}")


# ---- (b) a certificate expired on one model+firmware ----------------------------------------

def test_tls_failures_after_reboot_on_one_kit_are_one_group_outage_naming_it(
        daemon: Daemon, broker: Broker) -> None:
    """All 60 terminals of A920 fw 2.4.1 among 500 (A920 2.5.0, P60, N910 and V200c are fine,
    other terminals share their 4G network) reboot (clean shutdown, ``seq`` and ``uptime_s``
    from scratch) and then fail every attempt at stage ``tls``: one ``group`` host_outage opens
    whose ``group`` is ``{"model": "A920", "fw": "2.4.1"}``, no fleet one, and the kit's
    terminal incidents are its suppressed children."""
    def kit(i: int) -> tuple[str, str, str]:
        if i % 8 == 0 and i < 480:
            return "A920", "2.4.1", "4g"
        model, fw, net = KITS[1 + i % 4]
        return model, fw, ("4g" if i % 3 == 0 else net)

    terms = roster(500, 250, kit)
    kit_tids = [t.tid for t in terms if (t.model, t.fw) == ("A920", "2.4.1")]
    assert len(kit_tids) == 60
    with running_fleet(daemon, broker, terms) as fleet:
        watch = PageWatch(daemon)
        fleet.reboot(kit_tids)
        wait_until(lambda: all(daemon.get(f"/api/v1/terminals/{tid}")["reboots"] >= 1 for tid in kit_tids[:5]),
                   timeout=15, what="the reboots seen")
        fleet.fail(kit_tids, "tls")

        def group_outage() -> dict[str, Any] | None:
            ups = by_kind(daemon.incidents(status="open"), "host_outage")
            return ups[0] if ups else None

        outage = watch.until(group_outage, 20, "a host_outage")
        watch.until(lambda: len(by_kind(daemon.incidents(status="open"), "network", "terminal")) >= len(kit_tids),
                    25, "the kit's comm_errors incidents")

        def counting_the_whole_kit() -> dict[str, Any] | None:
            # The outage may open as soon as enough of the kit fails and refreshes its
            # evidence as the rest does: it must come to name all of it.
            up = group_outage()
            return up if up is not None and up["evidence"]["failing_terminals"] == len(kit_tids) else None

        watch.until(counting_the_whole_kit, 20, "the outage's evidence counting the whole kit")
        every = daemon.incidents(status="all")
        fleet.heal()

    ups = by_kind(every, "host_outage")
    assert len(ups) == 1, [(u["scope"], u["group"]) for u in ups]
    assert (outage["scope"], outage["group"], outage["cause"]) == ("group", {"model": "A920", "fw": "2.4.1"},
                                                                   "host_errors")
    assert by_kind(every, "host_outage", "fleet") == []
    assert ups[0]["evidence"]["failing_terminals"] == len(kit_tids)
    subordinate = [i for i in every if i["scope"] in SUBORDINATE_SCOPES]
    assert {i["terminal_id"] for i in subordinate if i["scope"] == "terminal"} == set(kit_tids)
    for inc in subordinate:
        assert (inc["kind"], inc["parent_id"], inc["suppressed"]) == ("network", outage["id"], True), inc
    assert watch.max["terminal"] == 0, dict(watch.max)
    assert watch.max["fleet"] == 0, dict(watch.max)


# ---- (c) one shop goes dark vs. lone terminals going silent ----------------------------------

def test_a_dark_shop_is_one_merchant_incident_and_lone_silent_terminals_stand_alone(
        daemon: Daemon, broker: Broker) -> None:
    """Among 503 beating terminals, the 3 terminals of shop SHOP1 and 3 terminals of 3 other
    (two-terminal) merchants go silent at the same moment: the shop's three become one
    merchant-scope network incident with the three terminal incidents as its suppressed
    children; the three lone ones open three unsuppressed terminal incidents and no
    merchant or upstream incident."""
    terms = roster(500, 250, lambda i: KITS[i % len(KITS)])
    shop = [Term(f"SHOP1-{n}", "SHOP1", *KITS[n]) for n in range(3)]
    terms += shop
    shop_tids = [t.tid for t in shop]
    lone = ["C0010", "C0111", "C0222"]  # merchants CM010, CM111, CM222: one of two terminals each
    assert len({t.mid for t in terms if t.tid in lone}) == 3
    with running_fleet(daemon, broker, terms) as fleet:
        watch = PageWatch(daemon)
        fleet.silence(shop_tids + lone)

        def settled() -> list[dict[str, Any]] | None:
            found = daemon.incidents(status="open")
            terminals = by_kind(found, "network", "terminal")
            merchants = by_kind(found, "network", "merchant")
            return found if len(terminals) == 6 and len(merchants) == 1 else None

        watch.until(settled, 20, "six offline terminals and the shop's incident")
        time.sleep(2)  # two more intervals: nothing else forms around them
        found = daemon.incidents(status="open")
        text = watch.scrape_when(
            lambda t: metric_sum(t, "fleetwatch_incidents_open", kind="network") == 7, "the gauges to show all 7")

    assert sorted((i["scope"], i["kind"]) for i in found) == [("merchant", "network")] + [("terminal", "network")] * 6
    parent = by_kind(found, "network", "merchant")[0]
    assert (parent["merchant_id"], parent["cause"], parent["parent_id"]) == ("SHOP1", "offline", None)
    assert parent["evidence"]["failing_terminals"] == 3
    for inc in by_kind(found, "network", "terminal"):
        assert inc["cause"] == "offline"
        if inc["terminal_id"] in shop_tids:
            assert (inc["parent_id"], inc["suppressed"]) == (parent["id"], True), inc
        else:
            assert inc["terminal_id"] in lone
            assert (inc["parent_id"], inc["suppressed"]) == (None, False), inc
    assert {i["terminal_id"] for i in found if i["scope"] == "terminal"} == set(shop_tids + lone)
    assert metric_sum(text, "fleetwatch_incidents_pageable", kind="network", scope="terminal") == 3
    assert metric_sum(text, "fleetwatch_incidents_pageable", kind="network", scope="merchant") == 1
    assert metric_sum(text, "fleetwatch_incidents_open", kind="host_outage") == 0
    assert watch.max["fleet"] == 0, dict(watch.max)
    assert watch.max["group"] == 0, dict(watch.max)
