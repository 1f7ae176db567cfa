"""The message streams of this project's own golden scenarios (tests/data, beside the shared six).

Each scenario is a deterministic fleet script in the shared format (first line the head
with ``config`` and ``duration_ms``, then one event per line; every ``ts`` is 0 in the
file and becomes start + ``at_ms`` at replay). Their expectations,
``tests/data/NAME.expect.json``, were written by hand from the contract before the streams
were first replayed; the extra keys they use (``parent``, ``open_at_ms``, ``group``,
``merchant_id``, ``forbidden_extra``) are judged by :func:`tests.golden.check_extra`.

``python -m tests.scenario_streams`` rewrites the ``.jsonl`` files; a test checks the
committed files are what this module produces.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "data"
KITS = [("A920", "2.4.1", "4g"), ("A920", "2.5.0", "wifi"), ("P60", "3.0.2", "wifi"),
        ("N910", "6.1.0", "eth"), ("V200c", "5.2.3", "eth")]
CONFIG: dict[str, Any] = {"detect": {"heartbeat_interval_s": 1, "offline_after_missed": 3}}
CONNECT = {"stage": "connect", "code": "ETIMEDOUT", "detail": "no TCP connection to the host"}
TLS = {"stage": "tls", "code": "CERT_EXPIRED", "detail": "server certificate rejected"}
HOST = {"stage": "host", "code": "TIMEOUT", "detail": "no answer from the host"}
PRINT = {"stage": "print", "code": "P02", "detail": "receipt not printed"}

Event = dict[str, Any]


@dataclass
class Term:
    tid: str
    mid: str
    kit: tuple[str, str, str]
    phase_ms: int
    serial: str
    seq: int = 0
    txns: int = 0
    silent_from_ms: int | None = None
    fields: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    """(from at_ms, heartbeat fields): later entries override earlier ones."""


class Stream:
    """A fleet beating every second plus the payments, closes and settlements a script adds."""

    def __init__(self, name: str, description: str, duration_ms: int) -> None:
        self.name, self.description, self.duration_ms = name, description, duration_ms
        self.terms: dict[str, Term] = {}
        self.events: list[Event] = []

    def add(self, tid: str, mid: str, kit: tuple[str, str, str]) -> Term:
        n = len(self.terms)
        t = Term(tid, mid, kit, phase_ms=(n * 37) % 1000, serial=f"{1_851_000_000 + n}")
        self.terms[tid] = t
        return t

    def _emit(self, at_ms: int, topic: str, payload: dict[str, Any], qos: int = 1) -> None:
        self.events.append({"at_ms": at_ms, "topic": f"fleet/v1/{topic}", "qos": qos, "payload": payload})

    def heartbeats(self) -> None:
        for t in self.terms.values():
            at = t.phase_ms
            while at < self.duration_ms:
                if t.silent_from_ms is not None and at >= t.silent_from_ms:
                    break
                t.seq += 1
                model, fw, net = t.kit
                hb: dict[str, Any] = {
                    "v": 1, "terminal_id": t.tid, "merchant_id": t.mid, "ts": 0, "seq": t.seq,
                    "model": model, "serial": t.serial, "fw": fw, "app": "pay-3.1.0", "uptime_s": 3600 + t.seq,
                    "power": {"battery_pct": 80, "charging": False},
                    "net": {"type": net, "rssi_dbm": -70, "host_rtt_ms": 110, "host_reachable": True},
                    "printer": "ok", "reader": {"chip": "ok", "msr": "ok", "ctls": "ok"},
                    "saf": {"pending": 0, "oldest_ts": None}, "tamper": False,
                }
                for since, extra in t.fields:
                    if at >= since:
                        hb.update(extra)
                self._emit(at, f"term/{t.tid}/heartbeat", hb, qos=0)
                at += 1000

    def pay(self, at_ms: int, tid: str, *, outcome: str = "approved", rc: str | None = "00",
            error: dict[str, str] | None = None, amount: int = 12800, batch_no: int = 1) -> None:
        t = self.terms[tid]
        t.txns += 1
        body: dict[str, Any] = {
            "v": 1, "terminal_id": tid, "merchant_id": t.mid, "ts": 0, "txn_id": f"{tid}-{t.txns:06d}",
            "stan": f"{t.txns:06d}", "batch_no": batch_no, "type": "sale", "amount_minor": amount,
            "currency": "CNY", "entry": "ctls", "card_ref": f"c{abs(hash_str(tid)) % 10**6:06d}{t.txns:04d}"[:16],
            "outcome": outcome, "error": error, "offline": False,
        }
        if rc is not None:
            body["rc"] = rc
        self._emit(at_ms, f"term/{tid}/txn", body)

    def close(self, at_ms: int, tid: str, batch_no: int, count: int, amount: int) -> None:
        t = self.terms[tid]
        self._emit(at_ms, f"term/{tid}/batch", {
            "v": 1, "terminal_id": tid, "merchant_id": t.mid, "ts": 0, "batch_no": batch_no, "count": count,
            "amount_minor": amount, "currency": "CNY", "result": "confirmed"})

    def settle(self, at_ms: int, tid: str, batch_no: int, count: int, amount: int) -> None:
        t = self.terms[tid]
        self._emit(at_ms, "host/settlement", {
            "v": 1, "merchant_id": t.mid, "terminal_id": tid, "batch_no": batch_no, "business_date": "2026-11-22",
            "settled_count": count, "settled_amount_minor": amount, "currency": "CNY", "credited_at": 0})

    def every_second(self, tid: str, start_ms: int, end_ms: int, offset_ms: int = 500) -> Iterator[tuple[int, int]]:
        """(n, at_ms) for one attempt a second of ``tid`` between ``start_ms`` and ``end_ms``."""
        at = start_ms - start_ms % 1000 + self.terms[tid].phase_ms + offset_ms
        if at < start_ms:
            at += 1000
        n = 0
        while at < end_ms:
            yield n, at
            n += 1
            at += 1000

    def healthy_sales(self, per_second: int, exclude: set[str], end_ms: int | None = None) -> None:
        """A few approved sales each second on terminals not in ``exclude`` (a fleet at work)."""
        pool = [t for t in self.terms if t not in exclude]
        k = 0
        for second in range((end_ms or self.duration_ms) // 1000):
            for j in range(per_second):
                tid = pool[k % len(pool)]
                k += 7
                at = second * 1000 + 100 + j * (800 // max(per_second, 1))
                silent = self.terms[tid].silent_from_ms
                if silent is None or at < silent:
                    self.pay(at, tid)

    def write(self, directory: Path = DATA) -> Path:
        head = {"scenario": self.name, "description": self.description, "config": CONFIG,
                "duration_ms": self.duration_ms}
        self.events.sort(key=lambda e: e["at_ms"])  # stable: a terminal's own order is kept
        path = directory / f"{self.name}.jsonl"
        with path.open("w", encoding="utf-8") as f:
            f.write(json.dumps(head, ensure_ascii=False) + "\n")
            for e in self.events:
                f.write(json.dumps(e, separators=(",", ":")) + "\n")
        return path


def hash_str(s: str) -> int:
    """A stable string hash (Python's own is salted per process)."""
    h = 0
    for c in s:
        h = (h * 131 + ord(c)) % 2**31
    return h


# ---- the scenarios ----------------------------------------------------------------------------

def outage_bystanders() -> Stream:
    s = Stream(
        "outage-bystanders",
        "100 terminals in 50 two-terminal shops, five kits. From 10 s to 24 s the acquirer host fails: 30 "
        "terminals (one per shop, every kit) get rc 91, connect timeouts or host timeouts on every attempt. At "
        "15 s three other terminals (BY081, BY087, BY093: their shop's other terminal is fine) go silent for "
        "good. Expected: one fleet host_outage/host_errors; the link failures are its children; the three "
        "silent terminals open network/offline with no parent and stay pageable (silence is not a host error); "
        "no merchant incident for their shops.",
        36000,
    )
    for i in range(100):
        s.add(f"BY{i:03d}", f"BM{i // 2:03d}", KITS[i % 5])
    failing = {2 * m + m % 2: ("rc91", "connect", "host")[m % 3] for m in range(30)}
    for tid in ("BY081", "BY087", "BY093"):
        s.terms[tid].silent_from_ms = 15000
    for i, mode in failing.items():
        tid = f"BY{i:03d}"
        for _, at in s.every_second(tid, 10000, 24000):
            if mode == "rc91":
                s.pay(at, tid, outcome="declined", rc="91")
            else:
                s.pay(at, tid, outcome="error", rc=None, error=CONNECT if mode == "connect" else HOST)
    s.healthy_sales(10, exclude={f"BY{i:03d}" for i in failing})
    s.heartbeats()
    return s


def dark_shop_tls() -> Stream:
    s = Stream(
        "dark-shop-tls",
        "100 terminals in 50 two-terminal shops (20 of them A920 2.4.1) and three special shops. Shop DARK "
        "(DK1 is A920 2.4.1, DK2 P60, DK3 N910) goes silent at 5 s; shop CUT (CT1 A920 2.4.1, CT2 P60, CT3 "
        "V200c) keeps beating but every payment fails to connect from 5 s on; shop NEAR (two A920 2.4.1) fails "
        "TLS from 38 s; from 45 s to 55 s every other A920 2.4.1 fails TLS (a certificate expired on that "
        "firmware). Expected: one group host_outage naming model A920 fw 2.4.1; DARK and CUT, dark 40 intervals "
        "before it with one terminal of the firmware each, keep their own merchant incidents; NEAR, which "
        "opened a few intervals before the cluster and is all A920 2.4.1, is adopted by it.",
        66000,
    )
    for i in range(100):
        s.add(f"DT{i:03d}", f"DM{i // 2:03d}", KITS[i % 5])
    for tid, kit in (("DK1", KITS[0]), ("DK2", KITS[2]), ("DK3", KITS[3])):
        s.add(tid, "DARK", kit).silent_from_ms = 5000
    for tid, kit in (("CT1", KITS[0]), ("CT2", KITS[2]), ("CT3", KITS[4])):
        s.add(tid, "CUT", kit)
        for _, at in s.every_second(tid, 5000, 66000):
            s.pay(at, tid, outcome="error", rc=None, error=CONNECT)
    for tid in ("NR1", "NR2"):
        s.add(tid, "NEAR", KITS[0])
        for _, at in s.every_second(tid, 38000, 55000):
            s.pay(at, tid, outcome="error", rc=None, error=TLS)
    cluster = [f"DT{i:03d}" for i in range(0, 100, 5)]
    for tid in cluster:
        for _, at in s.every_second(tid, 45000, 55000):
            s.pay(at, tid, outcome="error", rc=None, error=TLS)
    special = {"DK1", "DK2", "DK3", "CT1", "CT2", "CT3", "NR1", "NR2"}
    s.healthy_sales(8, exclude=special | set(cluster))
    s.heartbeats()
    return s


def _pattern_attempts(s: Stream, tid: str, span: tuple[int, int], fails: Callable[[int], bool],
                      outcomes: tuple[Callable[[int], None], Callable[[int], None]]) -> None:
    """One attempt a second in ``span``: attempt n fails when ``fails(n)``; outcomes (failure, success)."""
    failure, success = outcomes
    for n, at in s.every_second(tid, *span):
        (failure if fails(n) else success)(at)


def intermittent_link() -> Stream:
    s = Stream(
        "intermittent-link",
        "40 terminals in 20 shops. IL01's own link fails 4 attempts in 5 (one a second) from 5 s to 45 s, then "
        "every attempt goes through until 60 s. IL03 fails the same way from 5 s to 35 s and then stops "
        "trading (it keeps beating). IL05's printer fails every other receipt from 5 s to 35 s, then prints "
        "again. IL07's link fails every attempt from 5 s to 15 s except one that goes through at 10 s. The "
        "rest of the fleet is fine. Expected: one incident each, open as long as the failures go on (a "
        "success never ends it), resolved a few intervals after they stop (or after the terminal stopped "
        "trading); nothing else.",
        62000,
    )
    for i in range(40):
        s.add(f"IL{i:02d}", f"IM{i // 2:02d}", KITS[i % 5])

    def link_fail(tid: str) -> Callable[[int], None]:
        return lambda at: s.pay(at, tid, outcome="error", rc=None, error=CONNECT)

    def ok(tid: str) -> Callable[[int], None]:
        return lambda at: s.pay(at, tid)

    _pattern_attempts(s, "IL01", (5000, 45000), lambda n: n % 5 != 4, (link_fail("IL01"), ok("IL01")))
    _pattern_attempts(s, "IL01", (45000, 60000), lambda n: False, (link_fail("IL01"), ok("IL01")))
    _pattern_attempts(s, "IL03", (5000, 35000), lambda n: n % 5 != 4, (link_fail("IL03"), ok("IL03")))
    _pattern_attempts(s, "IL05", (5000, 35000), lambda n: n % 2 == 0,
                      (lambda at: s.pay(at, "IL05", error=PRINT), ok("IL05")))
    _pattern_attempts(s, "IL05", (35000, 50000), lambda n: False, (ok("IL05"), ok("IL05")))
    _pattern_attempts(s, "IL07", (5000, 15000), lambda n: n != 5, (link_fail("IL07"), ok("IL07")))
    _pattern_attempts(s, "IL07", (15000, 40000), lambda n: False, (ok("IL07"), ok("IL07")))
    s.healthy_sales(3, exclude={"IL01", "IL03", "IL05", "IL07"})
    s.heartbeats()
    return s


def busy_burst() -> Stream:
    s = Stream(
        "busy-burst",
        "40 terminals in 20 shops. Three busy terminals pay four times a second from 2 s to 38 s. From 10 s to "
        "20 s, 30% of BB01's attempts fail to connect and 30% of BB03's receipts fail to print, spread evenly; "
        "70% of BB05's attempts fail to connect. Expected: BB05 opens network/comm_errors and resolves after "
        "the burst; BB01 and BB03 open nothing (a low share for a short burst is not a broken link or printer).",
        40000,
    )
    for i in range(40):
        s.add(f"BB{i:02d}", f"BN{i // 2:02d}", KITS[i % 5])

    def thirty(k: int) -> bool:
        return k % 10 in (0, 3, 6)

    def seventy(k: int) -> bool:
        return k % 10 < 7

    for tid, fails, error in (("BB01", thirty, CONNECT), ("BB03", thirty, PRINT), ("BB05", seventy, CONNECT)):
        k = 0
        at = 2000 + s.terms[tid].phase_ms // 4
        while at < 38000:
            burst = 10000 <= at < 20000
            if burst and fails(k):
                if error is PRINT:
                    s.pay(at, tid, error=PRINT)
                else:
                    s.pay(at, tid, outcome="error", rc=None, error=error)
            else:
                s.pay(at, tid)
            k += burst
            at += 250
    s.healthy_sales(3, exclude={"BB01", "BB03", "BB05"})
    s.heartbeats()
    return s


def tamper_later_batches() -> Stream:
    s = Stream(
        "tamper-later-batches",
        "20 terminals in 10 shops. TB01 approves three sales in batch 1 (384.00 CNY) and reports tamper from "
        "6 s on while it keeps trading: batch 2 (two sales) is closed at 12 s and settled at 14 s, batch 3 "
        "closed at 20 s and settled at 22 s. TB03's hardware is swapped at 6 s with batch 4 open (100.00 CNY); "
        "its batch 5 closes and settles on time. TB05 reports tamper at 6 s with nothing open. Expected: "
        "tamper incidents for TB01 and TB05, batch_not_closed for TB01's batch 1 and TB03's batch 4 only; "
        "no gap for the later batches.",
        26000,
    )
    for i in range(20):
        s.add(f"TB{i:02d}", f"TM{i // 2:02d}", KITS[i % 5])
    s.terms["TB01"].fields.append((6000, {"tamper": True}))
    s.terms["TB05"].fields.append((6000, {"tamper": True}))
    s.terms["TB03"].fields.append((6000, {"serial": "1859999999"}))
    for at in (2200, 3200, 4200):
        s.pay(at, "TB01", amount=12800, batch_no=1)
    for at in (8200, 9200):
        s.pay(at, "TB01", amount=5000, batch_no=2)
    s.close(12200, "TB01", 2, 2, 10000)
    s.settle(14200, "TB01", 2, 2, 10000)
    for at in (16200, 17200):
        s.pay(at, "TB01", amount=7000, batch_no=3)
    s.close(20200, "TB01", 3, 2, 14000)
    s.settle(22200, "TB01", 3, 2, 14000)
    for at in (2300, 3300):
        s.pay(at, "TB03", amount=5000, batch_no=4)
    s.pay(8300, "TB03", amount=9000, batch_no=5)
    s.close(12300, "TB03", 5, 1, 9000)
    s.settle(14300, "TB03", 5, 1, 9000)
    s.pay(2400, "TB05", amount=3000, batch_no=1)
    s.close(3400, "TB05", 1, 1, 3000)
    s.settle(4400, "TB05", 1, 1, 3000)
    s.pay(8400, "TB05", amount=4000, batch_no=2)
    s.close(12400, "TB05", 2, 1, 4000)
    s.settle(14400, "TB05", 2, 1, 4000)
    s.heartbeats()
    return s


BUILDERS: dict[str, Callable[[], Stream]] = {
    "outage-bystanders": outage_bystanders,
    "dark-shop-tls": dark_shop_tls,
    "intermittent-link": intermittent_link,
    "busy-burst": busy_burst,
    "tamper-later-batches": tamper_later_batches,
}


def main(argv: list[str]) -> int:
    for name in argv or list(BUILDERS):
        path = BUILDERS[name]().write()
        print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
