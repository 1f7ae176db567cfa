"""Compact per-terminal state: what the engine remembers of each of up to a million terminals.

One :class:`TerminalState` per terminal, a ``__slots__`` object of flat fields (no
per-terminal dicts), with the repeated strings (merchant, model, firmware, app, network
type) interned through one shared :class:`Interner` so a million terminals of five
models hold five model strings. Rarely used detector state (the link and print rate windows, the
reader's card window) lives in small side objects allocated only for terminals that
need them. ``bench``-style measurement: about 450 bytes per healthy terminal.

Two facts are decided here because every rule depends on them:

- **Liveness** is the daemon's receive time of any non-retained message of the
  terminal (``last_seen``); the terminal's clock (``ts``) only orders its own events.
- **Order**: a heartbeat older than the last one seen since boot (by the terminal's
  own clock, with no reboot in between) is *out of order*: it proves liveness but
  does not overwrite newer state and is not judged again. A reboot is a drop of
  ``seq`` or of ``uptime_s`` that the clock difference cannot explain.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum
from typing import Final

from fleetwatch.core.messages import Heartbeat
from fleetwatch.core.model import TerminalRecord
from fleetwatch.core.rates import TerminalRates

ONLINE: Final = "online"
OFFLINE: Final = "offline"
SHUTDOWN: Final = "shutdown"


class Interner:
    """Shares one copy of each repeated string (model, firmware, merchant id, ...)."""

    __slots__ = ("_table",)

    def __init__(self) -> None:
        self._table: dict[str, str] = {}

    def __call__(self, s: str | None) -> str | None:
        """The shared copy of ``s`` (None stays None)."""
        if s is None:
            return None
        return self._table.setdefault(s, s)

    def __len__(self) -> int:
        return len(self._table)

    @property
    def setdefault(self) -> Callable[[str | None, str | None], str | None]:
        """The table's own ``setdefault``: the same as calling the interner, without a Python
        frame per string (restore interns six strings for each of a million terminals).
        A None key maps to None, harmlessly."""
        return self._table.setdefault  # type: ignore[return-value]


class Order(IntEnum):
    """How a heartbeat relates to what was seen before from the same terminal."""

    FIRST = 0
    IN_ORDER = 1
    REBOOT = 2
    OUT_OF_ORDER = 3


class ReaderStats:
    """A terminal's recent card reads, counted over distinct cards.

    The window is the last ``reader_window_cards`` card events within
    ``reader_window_intervals``. Only *failing* events are stored (index, time, card);
    healthy ones are counted, so a healthy terminal costs three numbers. The baseline
    is the failing share of the first full window, frozen once learned, so a reader
    that wears slowly does not make its own wear the new normal.
    """

    __slots__ = ("base_cards", "base_fails", "baseline", "events", "fails", "last_at")

    def __init__(self) -> None:
        self.events = 0
        self.last_at = 0.0
        self.fails: list[tuple[int, float, str]] | None = None
        self.baseline: float | None = None
        self.base_cards = 0
        self.base_fails = 0


class TerminalState:
    """Everything the engine keeps of one terminal; flat slots, interned strings."""

    __slots__ = (
        "app",
        "batt_fired",
        "battery_pct",
        "charging",
        "conds",
        "dirty",
        "flap_until",
        "fw",
        "last_hb_at",
        "last_seen",
        "last_ts_ms",
        "maintenance_until",
        "merchant_id",
        "model",
        "net_type",
        "persisted_seen",
        "printer",
        "rates",
        "reader",
        "reader_fault",
        "reboots",
        "resolved_conds",
        "rssi_dbm",
        "saf_oldest_ts_ms",
        "saf_pending",
        "sched",
        "seq",
        "serial",
        "state",
        "state_at",
        "tamper",
        "terminal_id",
        "uptime_s",
        "weak_since",
    )

    def __init__(self, terminal_id: str) -> None:
        self.terminal_id = terminal_id
        self.merchant_id: str | None = None
        self.model: str | None = None
        self.fw: str | None = None
        self.app: str | None = None
        self.serial: str | None = None
        self.net_type: str | None = None
        self.last_seen: float | None = None
        self.last_hb_at: float | None = None
        self.last_ts_ms: int | None = None
        self.seq: int | None = None
        self.uptime_s: int | None = None
        self.reboots = 0
        self.state: str = ONLINE
        self.state_at: float | None = None
        self.battery_pct: int | None = None
        self.charging: bool | None = None
        self.rssi_dbm: int | None = None
        self.printer: str | None = None
        self.reader_fault = False
        self.saf_pending: int | None = None
        self.saf_oldest_ts_ms: int | None = None
        self.tamper = False
        self.maintenance_until: float | None = None
        # detector bookkeeping (not persisted; rebuilt from open incidents at start)
        self.conds = 0
        """Bit set of the (kind, cause) conditions that currently hold (rules.COND_BITS)."""
        self.persisted_seen: float | None = None
        """``last_seen`` as of the last record handed to the store: freshness alone is
        re-persisted only once it is this much older (Engine, persist_freshness_intervals)."""
        self.resolved_conds = 0
        """Conditions an operator resolved by hand while they still held: seeing them gone
        later must still be told to the incident book, so the next one opens fresh."""
        self.batt_fired = 0
        """Battery alerts already raised since the last charge (1 low, 2 critical)."""
        self.weak_since: float | None = None
        self.flap_until: float | None = None
        """While a just-recovered offline terminal is watched for flapping."""
        self.sched: float | None = None
        """Deadline currently queued in the engine's silence heap (None: not queued)."""
        self.rates: TerminalRates | None = None
        """Link and print attempt windows (core/rates.py), from the first failure on."""
        self.reader: ReaderStats | None = None
        self.dirty = False

    def in_maintenance(self, now: float) -> bool:
        """True while an operator has put the terminal in maintenance."""
        until = self.maintenance_until
        return until is not None and now < until


def classify_heartbeat(st: TerminalState, hb: Heartbeat, interval_s: float) -> Order:
    """Decide whether ``hb`` is new, a reboot, or an old heartbeat delivered late.

    The terminal's clock orders its own events; uptime that fell by more than the
    clock moved (with a tolerance of two intervals) is a reboot even if the clock was
    reset; a lower ``seq`` with a newer clock is a reboot as well.
    """
    if st.seq is None or st.last_ts_ms is None:
        return Order.FIRST
    tol = max(2.0 * interval_s, 5.0)
    if hb.uptime_s is not None and st.uptime_s is not None:
        expected = st.uptime_s + (hb.ts - st.last_ts_ms) / 1000.0
        if hb.uptime_s < expected - tol and hb.uptime_s < st.uptime_s:
            return Order.REBOOT
    if hb.seq > st.seq:
        return Order.IN_ORDER
    if hb.ts <= st.last_ts_ms:
        return Order.OUT_OF_ORDER
    return Order.REBOOT if hb.seq < st.seq else Order.IN_ORDER


def to_record(st: TerminalState) -> TerminalRecord:
    """The store's view of a terminal (detector bookkeeping is not persisted)."""
    return TerminalRecord(
        terminal_id=st.terminal_id, merchant_id=st.merchant_id, model=st.model, fw=st.fw,
        app=st.app, serial=st.serial, net_type=st.net_type, last_seen=st.last_seen,
        last_heartbeat_at=st.last_hb_at, last_ts_ms=st.last_ts_ms, seq=st.seq,
        uptime_s=st.uptime_s, reboots=st.reboots, state=st.state, state_at=st.state_at,
        battery_pct=st.battery_pct, charging=st.charging, rssi_dbm=st.rssi_dbm,
        printer=st.printer, reader_fault=st.reader_fault, saf_pending=st.saf_pending,
        saf_oldest_ts_ms=st.saf_oldest_ts_ms, tamper=st.tamper,
        maintenance_until=st.maintenance_until,
    )


def from_record(rec: TerminalRecord, interner: Interner) -> TerminalState:
    """Rebuild a terminal's state from the store at start (a million times: kept lean)."""
    intern = interner.setdefault
    st = TerminalState(rec.terminal_id)
    st.merchant_id = intern(rec.merchant_id, rec.merchant_id)
    st.model = intern(rec.model, rec.model)
    st.fw = intern(rec.fw, rec.fw)
    st.app = intern(rec.app, rec.app)
    st.serial = rec.serial
    st.net_type = intern(rec.net_type, rec.net_type)
    st.last_seen = rec.last_seen
    st.last_hb_at = rec.last_heartbeat_at
    st.last_ts_ms = rec.last_ts_ms
    st.seq = rec.seq
    st.uptime_s = rec.uptime_s
    st.reboots = rec.reboots
    st.state = rec.state if rec.state in (ONLINE, OFFLINE, SHUTDOWN) else ONLINE
    st.state_at = rec.state_at
    st.battery_pct = rec.battery_pct
    st.charging = rec.charging
    st.rssi_dbm = rec.rssi_dbm
    st.printer = intern(rec.printer, rec.printer)
    st.reader_fault = rec.reader_fault
    st.saf_pending = rec.saf_pending
    st.saf_oldest_ts_ms = rec.saf_oldest_ts_ms
    st.tamper = rec.tamper
    st.maintenance_until = rec.maintenance_until
    st.persisted_seen = rec.last_seen
    return st
