"""Per-terminal state: order, reboots, serial swaps, records, and its size."""

from __future__ import annotations

import sys

import pytest

from fleetwatch.config import DetectSettings, SettlementSettings
from fleetwatch.core.engine import Engine
from fleetwatch.core.messages import Heartbeat
from fleetwatch.core.state import Interner, Order, TerminalState, classify_heartbeat, from_record, to_record
from tests.golden import heartbeat_env


def _state_after(seq: int, ts_ms: int, uptime: int) -> TerminalState:
    st = TerminalState("T1")
    st.seq, st.last_ts_ms, st.uptime_s = seq, ts_ms, uptime
    return st


def _hb(seq: int, ts_ms: int, uptime: int) -> Heartbeat:
    msg = heartbeat_env("T1", ts_ms / 1000, seq, uptime_s=uptime, ts=ts_ms).msg
    assert isinstance(msg, Heartbeat)
    return msg


@pytest.mark.parametrize(("seq", "ts_ms", "uptime", "order"), [
    (11, 1_060_000, 3660, Order.IN_ORDER),       # next beat
    (9, 940_000, 3540, Order.OUT_OF_ORDER),      # an older beat delivered late
    (10, 1_000_000, 3600, Order.OUT_OF_ORDER),   # the same beat again
    (1, 1_060_000, 20, Order.REBOOT),            # seq and uptime reset, clock moved on
    (1, 500_000, 20, Order.REBOOT),              # reboot with the clock reset too
    (3, 1_060_000, 4000, Order.REBOOT),          # seq reset with a newer clock
])
def test_classify_heartbeat(seq: int, ts_ms: int, uptime: int, order: Order) -> None:
    """The terminal's clock orders its own beats; an unexplained uptime drop is a reboot."""
    st = _state_after(10, 1_000_000, 3600)
    assert classify_heartbeat(st, _hb(seq, ts_ms, uptime), 60.0) is order


def test_out_of_order_beat_proves_liveness_but_does_not_overwrite() -> None:
    """A late old heartbeat refreshes last_seen, not the newer printer state."""
    e = Engine(DetectSettings(heartbeat_interval_s=1), SettlementSettings())
    e.apply(heartbeat_env("T1", 10.0, 10, uptime_s=100))
    effects = e.apply(heartbeat_env("T1", 11.0, 9, uptime_s=99, ts=9000, printer="no_paper"))
    rec = e.terminal("T1")
    assert rec is not None
    assert rec.last_seen == 11.0
    assert rec.seq == 10
    assert rec.printer == "ok"
    assert effects == []


def test_reboot_and_serial_change_are_counted() -> None:
    """A reboot increments reboots; a new serial is remembered."""
    e = Engine(DetectSettings(heartbeat_interval_s=1), SettlementSettings())
    e.apply(heartbeat_env("T1", 10.0, 500, uptime_s=5000))
    e.apply(heartbeat_env("T1", 11.0, 1, uptime_s=3, serial="NEW"))
    rec = e.terminal("T1")
    assert rec is not None
    assert rec.reboots == 1
    assert rec.serial == "NEW"


def test_record_round_trip_and_interning() -> None:
    """to_record/from_record keep every persisted field; strings are shared."""
    e = Engine(DetectSettings(heartbeat_interval_s=1), SettlementSettings())
    e.apply(heartbeat_env("T1", 10.0, 5, power={"battery_pct": 40, "charging": True}))
    rec = e.terminal("T1")
    assert rec is not None
    intern = Interner()
    back = to_record(from_record(rec, intern))
    assert back == rec
    a, b = intern("A920"), intern("".join(["A9", "20"]))
    assert a is b


def test_dirty_terminals_are_coalesced() -> None:
    """Many beats of one terminal between flushes give one record."""
    e = Engine(DetectSettings(heartbeat_interval_s=1), SettlementSettings())
    for i in range(5):
        e.apply(heartbeat_env("T1", 10.0 + i, i + 1))
    assert [r.terminal_id for r in e.take_dirty_terminals()] == ["T1"]
    assert e.take_dirty_terminals() == []


def test_state_is_compact() -> None:
    """A healthy terminal's state object stays well under ~600 bytes (flat slots, no dicts)."""
    st = TerminalState("T00000001")
    assert not hasattr(st, "__dict__")
    assert sys.getsizeof(st) < 400
