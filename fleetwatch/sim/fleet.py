"""The simulated fleet: terminals, their hardware kits, and the heartbeats they send.

A terminal here is plain mutable state. Faults (``faults.py``) change that state, and
the messages follow from it: a terminal whose printer ran out of paper says so in its
heartbeat and stamps ``error.stage = print`` on approved receipts, exactly as the real
one would. So a fault is injected once, in the model, never patched into payloads
one message type at a time. Everything random draws from one seeded ``random.Random``,
so ``--seed`` reproduces a run's traffic and its faults.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec


@dataclass(frozen=True, slots=True)
class Kit:
    """One model / firmware / link combination, with how common it is in the field."""

    model: str
    fw: str
    net: str
    printer: bool
    battery: bool
    weight: int


KITS: tuple[Kit, ...] = (
    Kit("A920", "2.4.1", "4g", printer=True, battery=True, weight=28),
    Kit("A920", "2.5.0", "wifi", printer=True, battery=True, weight=10),
    Kit("P60", "3.0.2", "wifi", printer=True, battery=True, weight=16),
    Kit("N910", "6.1.0", "eth", printer=True, battery=False, weight=16),
    Kit("V200c", "5.2.3", "eth", printer=True, battery=False, weight=14),
    Kit("A80", "1.9.3", "eth", printer=True, battery=False, weight=10),
    Kit("A77", "1.4.0", "4g", printer=False, battery=True, weight=6),
)
"""Countertops on Ethernet, portables on 4G/Wi-Fi, one printerless handheld (``absent``)."""

PRINTER_FAULTS = frozenset({"no_paper", "jam", "cover_open", "overheat", "fault"})
"""Printer states in which a receipt cannot be printed."""


class Outgoing(NamedTuple):
    """One message to publish; ``terminal`` is the sender's index (None: the host)."""

    terminal: int | None
    topic: str
    payload: bytes
    qos: int
    retain: bool
    kind: str


@dataclass(slots=True)
class Terminal:
    """One terminal's identity, counters and (fault-controlled) condition."""

    index: int
    terminal_id: str
    merchant_id: str
    kit: Kit
    serial: str
    currencies: tuple[str, ...]
    boot_ms: int
    batch_no: int
    battery: int = 100
    charging: bool = True
    rssi: int = -65
    seq: int = 0
    txn_no: int = 0
    # condition, set by faults
    printer: str = "ok"
    reader_chip: str = "ok"
    reader_wear: float = 0.0
    tamper: bool = False
    silent: bool = False
    link_down: bool = False
    host_fail: float = 0.0
    tls_fail: bool = False
    decline_share: float = 0.0
    min_attempt_rate: float = 0.0
    """Attempts per second while a fault makes the cashier retry (0: normal traffic)."""
    skip_close: bool = False
    settle_short: int = 0
    never_settle: bool = False
    # business
    tally: dict[str, list[int]] = field(default_factory=dict)
    """currency -> [count, net amount] of approved money-moving txns in the open batch."""
    recent_sales: list[tuple[str, int, str]] = field(default_factory=list)
    open_preauths: list[tuple[str, int, str]] = field(default_factory=list)

    @property
    def reachable(self) -> bool:
        """Whether the terminal can talk at all (no silence, no dropped link)."""
        return not (self.silent or self.link_down)


def _pick_kit(rng: random.Random) -> Kit:
    return rng.choices(KITS, weights=[k.weight for k in KITS])[0]


def build_terminals(n: int, merchants: int, rng: random.Random, now_ms: int) -> list[Terminal]:
    """``n`` terminals spread over ``merchants`` shops (some shops have several).

    About one merchant in twelve is a tourist shop that also takes HKD or USD, so it
    closes one batch per currency. Batch numbers and uptimes start at random points, as
    a fleet that has been running for a while would.
    """
    merchants = max(1, min(merchants, n))
    shops = [f"M{m:04d}" for m in range(merchants)]
    extra = {m: rng.choice(("HKD", "USD")) for m in shops if rng.random() < 1 / 12}
    out = []
    for i in range(n):
        # the first `merchants` terminals give each shop one; the rest land anywhere
        mid = shops[i] if i < merchants else rng.choice(shops)
        kit = _pick_kit(rng)
        out.append(
            Terminal(
                index=i, terminal_id=f"T{i:05d}", merchant_id=mid, kit=kit,
                serial=f"{rng.randrange(10**9, 10**10)}",
                currencies=("CNY", extra[mid]) if mid in extra else ("CNY",),
                boot_ms=now_ms - rng.randrange(3600, 30 * 86400) * 1000,
                batch_no=rng.randrange(1, 900),
                battery=rng.randrange(45, 100) if kit.battery else 100,
                charging=not kit.battery or rng.random() < 0.3,
                rssi=rng.randrange(-88, -55),
                printer="ok" if kit.printer else "absent",
            )
        )
    return out


def encode(obj: dict[str, Any]) -> bytes:
    """Compact JSON, as terminals send it."""
    return msgspec.json.encode(obj)


class Topics:
    """Topic names under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix.rstrip("/")

    def term(self, terminal_id: str, leaf: str) -> str:
        return f"{self.prefix}/term/{terminal_id}/{leaf}"

    @property
    def settlement(self) -> str:
        return f"{self.prefix}/host/settlement"


def heartbeat(t: Terminal, now_ms: int, rng: random.Random, topics: Topics) -> Outgoing:
    """The terminal's next heartbeat, reflecting its current condition."""
    t.seq += 1
    kit = t.kit
    if kit.battery:
        # drains slowly on battery, charges on the cradle; never low enough to alarm
        t.battery = min(100, t.battery + 2) if t.charging else max(30, t.battery - rng.choice((0, 0, 1)))
        if rng.random() < 0.02:
            t.charging = not t.charging
    t.rssi = max(-95, min(-50, t.rssi + rng.randint(-2, 2)))
    net: dict[str, Any] = {
        "type": kit.net,
        "host_rtt_ms": rng.randrange(60, 260),
        "host_reachable": not (t.host_fail >= 0.5 or t.tls_fail),
    }
    if kit.net != "eth":
        net["rssi_dbm"] = t.rssi
    power: dict[str, Any] = {"charging": t.charging}
    if kit.battery:
        power["battery_pct"] = t.battery
    body = {
        "v": 1, "terminal_id": t.terminal_id, "merchant_id": t.merchant_id, "ts": now_ms,
        "seq": t.seq, "model": kit.model, "serial": t.serial, "fw": kit.fw, "app": "pay-3.1.0",
        "uptime_s": max(0, (now_ms - t.boot_ms) // 1000), "power": power, "net": net,
        "printer": t.printer,
        "reader": {"chip": t.reader_chip, "msr": "ok", "ctls": "ok"},
        "saf": {"pending": 0, "oldest_ts": None},
        "tamper": t.tamper,
    }
    return Outgoing(t.index, topics.term(t.terminal_id, "heartbeat"), encode(body), 0, False, "heartbeat")


def state(t: Terminal, name: str, ts_ms: int, topics: Topics) -> Outgoing:
    """A retained State (``online`` birth, ``shutdown``, or ``offline`` sent on its behalf)."""
    body = {"v": 1, "terminal_id": t.terminal_id, "state": name, "ts": ts_ms}
    return Outgoing(t.index, topics.term(t.terminal_id, "state"), encode(body), 1, True, "state")


def reboot(t: Terminal, now_ms: int) -> None:
    """Power-cycle: ``seq`` restarts at 1 and ``uptime_s`` drops (how a daemon sees a reboot)."""
    t.seq = 0
    t.boot_ms = now_ms
