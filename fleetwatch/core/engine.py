"""The engine: one accepted message (or one tick of the clock) in, effects for the store out.

Pure and single-threaded: ``now`` is always passed in (a message's ``received_at`` or the
sweeper's clock); nothing here does I/O. The pipeline calls exactly the public methods
below. Inside, a message goes:

    state (liveness, order, reboot, serial) -> rule table -> incident book
                      \\-> settlement book ----------------/       \\-> correlator

and the clock goes through :meth:`Engine.tick`: silence (a deadline heap: only the
terminals whose deadline passed are looked at, never all of them), link and print rate
windows that asked to be looked at again, settlement deadlines, hysteresis, and the
correlator's windows.

The engine owns the fleet census (:class:`~fleetwatch.core.census.FleetCensus`): every
change of a terminal's state, merchant or group is told to it in one place, and the
correlator reads its denominators from it. For each new terminal incident the engine
asks the correlator for the parent that explains it and hands both to the incident book;
what the book touched goes back to the correlator to re-judge merchants.

Liveness is the receive time of any non-retained message from the terminal. A
retained State is history: it never proves liveness and never opens anything. After
:meth:`Engine.restore`, silence is not judged until ``offline_after_missed`` intervals
have passed (the daemon itself was away). The same holds while the daemon's own
subscription is down and for ``offline_after_missed`` intervals after it comes back
(:meth:`Engine.connection_changed`): a broker outage silences every terminal at once,
and is not an outage of every terminal. Settlement deadlines wait for the reconnection
too, so the QoS 1 settlements the broker kept for us arrive before a gap is judged.

Two things explain a silence before it becomes an outage (:meth:`Engine._silent`): the
acquirer's decision (a suspended or closed terminal, :mod:`fleetwatch.core.acquirer`:
nothing opens, nothing feeds an upstream) and the shop's hours
(:mod:`fleetwatch.core.hours`: a silence from closing time makes the terminal
``closed_hours`` until the usual opening plus ``hours_grace_intervals``). Every message
that proves liveness also tells the hours book that the merchant is there.
"""

from __future__ import annotations

import heapq
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import tzinfo
from typing import Final

from mypy_extensions import mypyc_attr

from fleetwatch.config import DetectSettings, SettlementSettings
from fleetwatch.core.acquirer import ACTIVE, CLOSED, SUSPENDED, AcquirerStatuses, decision_finding
from fleetwatch.core.attribution import HOST_SIDE, Attributor
from fleetwatch.core.calendar import Calendar
from fleetwatch.core.census import FLEET, FleetCensus, group_labels
from fleetwatch.core.correlation import Correlator
from fleetwatch.core.hours import OperatingHours, WeeklyHours
from fleetwatch.core.incidents import IncidentBook
from fleetwatch.core.messages import (
    BatchClose,
    Envelope,
    Heartbeat,
    Settlement,
    StateMsg,
    StatusCleared,
    TerminalStatus,
    TxnResult,
)
from fleetwatch.core.model import (
    AcquirerStatus,
    AcquirerStatusWrite,
    BatchRecord,
    Clear,
    Effect,
    Finding,
    Incident,
    MerchantHoursRecord,
    MerchantHoursWrite,
    Signal,
    TerminalRecord,
    TerminalWrite,
    TxnWrite,
    UpstreamMembersWrite,
    decision_key,
)
from fleetwatch.core.rates import FleetRates
from fleetwatch.core.rules import (
    COND_BITS,
    HEARTBEAT_RULES,
    HEARTBEAT_RULES_SUSPENDED,
    KIND_MASK,
    OFFLINE_BIT,
    RATE_BITS,
    RULE_KINDS,
    SUSPENDED_KINDS,
    TXN_RULES,
    TXN_RULES_CLOSED,
    TXN_RULES_SUSPENDED,
    Ctx,
    came_back,
    forget_conditions,
    rates_due,
    resume_rate,
    run_rules,
    terminal_key,
    went_offline,
)
from fleetwatch.core.settlement import SettlementBook
from fleetwatch.core.snapshot import FleetSnapshot, bound_models, freeze, incident_counts
from fleetwatch.core.state import (
    CLOSED_HOURS,
    OFFLINE,
    ONLINE,
    SHUTDOWN,
    Interner,
    Order,
    TerminalState,
    classify_heartbeat,
    from_record,
    to_record,
)
from fleetwatch.core.upstreams import HOST_ERRORS
from fleetwatch.errors import IncidentNotOpen, UnknownMerchant

MAINTENANCE = "maintenance"
HOURS_PRESENCE_INTERVALS = 1.5
"""A merchant counts as present this long after each message, for learning its hours (a beat
that comes a little late is not silence)."""


SILENCE_CHECKS_PER_TICK: Final = 20_000
"""At most this many silence deadlines are looked at by one :meth:`Engine.tick`.

After a restart every restored terminal's deadline falls at the same moment (the end of
the restart's grace), and most are only re-queued because the terminal was heard again
since: a million of them took one tick of 2.8 s (``python -m bench silence``), a stalled
event loop (no intake, no API, no /healthz). Bounded, one tick takes about a tenth of a
second there; :meth:`Engine.behind` tells the sweeper to tick again at once, after letting
intake and the API run (``Pipeline.sweep_until_current``)."""

_QUIET_PRINTER: Final = frozenset({"ok", "absent"})
"""Printer statuses that hold no condition (rules.printer_state drops, never holds)."""


def _uuid_hex() -> str:
    return uuid.uuid4().hex


# Compiled by mypyc (setup.py): a class defined in Python may still extend it, since
# tests/core/test_heartbeat_fast_path.py holds it against a subclass with the fast path off.
@mypyc_attr(allow_interpreted_subclasses=True)
class Engine:
    """All detection state of the daemon, driven by messages and the clock."""

    def __init__(
        self, detect: DetectSettings, settlement: SettlementSettings, *,
        new_id: Callable[[], str] | None = None, silence_checks_per_tick: int = SILENCE_CHECKS_PER_TICK,
    ) -> None:
        self._cfg = detect
        self._silence_checks = silence_checks_per_tick
        self._interval = detect.heartbeat_interval_s
        self._offline_after = detect.intervals(detect.offline_after_missed)
        self._flap_after = detect.intervals(detect.flap_silence_intervals)
        self._clear_after = detect.intervals(detect.clear_after_intervals)
        self._fresh_after = detect.intervals(detect.persist_freshness_intervals)
        self._weak_clear_dbm = detect.weak_signal_dbm + 3
        self._battery_low = detect.battery_low_pct
        self._intern = Interner()
        self._terms: dict[str, TerminalState] = {}
        self._dirty: list[TerminalState] = []
        self._silence: list[tuple[float, str]] = []
        self._wakes: list[tuple[float, str]] = []
        self._judge_from = float("-inf")
        self._started_at = float("-inf")
        self._blind = False
        """The subscription is down: no silence is judged and no settlement deadline falls
        (the messages that would answer them cannot reach us)."""
        self._settle_from = float("-inf")
        self._census = FleetCensus()
        self._book = IncidentBook(detect, new_id or _uuid_hex)
        self._corr = Correlator(detect, self._book, self._census, self._labels_of)
        self._settle = SettlementBook(settlement)
        self._attr = Attributor(detect)
        self._rates = FleetRates(detect)
        self._ctx = Ctx(detect, self._rates)
        self._recent: dict[tuple[str, str], None] = {}
        self._maint: dict[str, float] = {}
        self._grace = detect.intervals(detect.hours_grace_intervals)
        self._statuses = AcquirerStatuses()
        self._hours = OperatingHours(
            Calendar(detect.day_s, detect.zone), learn_days=detect.hours_learn_days,
            cover_s=detect.intervals(HOURS_PRESENCE_INTERVALS), default_timezone=detect.timezone,
        )
        self._deferred: list[Effect] = []
        """Effects decided inside a step that returns others (a terminal that appears with a
        status waiting for it, one that moved to another merchant): handed out with them."""

    # ---- start ----------------------------------------------------------------------------

    def restore(
        self, terminals: Iterable[TerminalRecord], incidents: Iterable[Incident],
        batches: Iterable[BatchRecord], recent_txn_keys: Iterable[tuple[str, str]], now: float,
        *, upstream_members: Mapping[str, Iterable[tuple[str, str | None]]] | None = None,
        statuses: Iterable[AcquirerStatus] = (), hours: Iterable[MerchantHoursRecord] = (),
    ) -> None:
        """Resume from the store: terminals, open incidents, open batches, recent txn ids,
        the terminals each open upstream is built on, the acquirer's statuses (applied and
        waiting) and the merchants' hours."""
        self._started_at = now
        self._judge_from = now + self._offline_after
        self._statuses.restore(statuses)
        self._hours.restore(hours, now)
        online_groups: Counter[tuple[str, ...]] = Counter()
        for rec in terminals:
            st = from_record(rec, self._intern)
            self._adopt(st, online_groups)
        heapq.heapify(self._silence)  # _adopt appended the deadlines unordered: one O(n) heapify
        self._census.joined_online_in_bulk(online_groups.items())  # once per kit, not per terminal
        self._book.restore(incidents)
        gap_keys: list[str] = []
        for inc in self._book.open_incidents():
            if inc.scope == "terminal" and inc.terminal_id is not None:
                if inc.kind == "settlement_gap":
                    gap_keys.append(inc.key)
                    continue
                bit = COND_BITS.get((inc.kind, inc.cause))
                if bit is not None:
                    st = self._terms.get(inc.terminal_id) or self._create(inc.terminal_id, inc.merchant_id, now)
                    st.conds |= bit
                    if bit & RATE_BITS:
                        heapq.heappush(self._wakes, (resume_rate(st, bit, now, self._cfg), st.terminal_id))
                    if inc.kind == "power":
                        st.batt_fired |= 3 if inc.cause == "battery_critical" else 1
        self._corr.restore(self._book.open_incidents())
        for incident_id, rows in (upstream_members or {}).items():
            self._corr.upstreams.restore_members(incident_id, (tid for tid, _ in rows))
        self._corr.upstreams.take_fresh()  # restored: nothing new for the store
        self._settle.restore(batches, now)
        self._settle.adopt_open_keys(gap_keys, now)
        for key in recent_txn_keys:
            self._remember_txn(key)

    def _adopt(self, st: TerminalState, online_groups: Counter[tuple[str, ...]]) -> None:
        """Index a restored terminal and queue its silence deadline."""
        self._terms[st.terminal_id] = st
        status = self._statuses.get(st.terminal_id)
        if status is not None and status.status != ACTIVE:
            st.acq = status.status
        label = _counted(st)
        self._census.joined_quietly(label, st.model, st.merchant_id)
        if label == ONLINE:
            online_groups[group_labels(st.model, st.fw, st.net_type)] += 1
        if st.maintenance_until is not None:
            self._maint[st.terminal_id] = st.maintenance_until
        if st.tamper:
            self._settle.note_tampered(st.terminal_id)
        due = self._due(st)
        if due is not None:
            st.sched = due
            self._silence.append((due, st.terminal_id))

    def _create(self, terminal_id: str, merchant_id: str | None, now: float) -> TerminalState:
        st = TerminalState(terminal_id)
        st.merchant_id = self._intern(merchant_id)
        self._terms[terminal_id] = st
        status = self._statuses.get(terminal_id)
        if status is not None and status.status != ACTIVE:
            st.acq = status.status  # the acquirer spoke of it before it appeared (CONTRACT §7)
            self._deferred.append(AcquirerStatusWrite(replace(status), st.merchant_id))
            self._deferred.extend(self._signals([self._decision(st, status, now)], now))
        self._census.joined(_counted(st), None, group_labels(None, None, None), st.merchant_id)
        return st

    def _labels_of(self, terminal_id: str) -> tuple[str, ...]:
        """A terminal's correlation groups now (the correlator's view of it)."""
        st = self._terms.get(terminal_id)
        return (FLEET,) if st is None else group_labels(st.model, st.fw, st.net_type)

    # ---- messages -------------------------------------------------------------------------

    def apply(self, env: Envelope) -> list[Effect]:
        """Decide on one accepted message; ``env.received_at`` is now."""
        msg = env.msg
        out: list[Effect]
        if isinstance(msg, Heartbeat):
            out = self._heartbeat(msg, env.received_at)
            return self._with_deferred(out) if self._deferred else out
        if isinstance(msg, TxnResult):
            out = self._txn(msg, env.received_at)
        elif isinstance(msg, StateMsg):
            out = self._state_msg(msg, env.received_at, env.retained)
        elif isinstance(msg, BatchClose):
            out = self._batch(msg, env.received_at)
        elif isinstance(msg, Settlement):
            out = self._settlement(msg, env.received_at)
        elif isinstance(msg, (TerminalStatus, StatusCleared)):
            out = self._acquirer_status(msg, env.received_at)
        else:
            out = []
        return self._with_deferred(out) if self._deferred else out

    def _with_deferred(self, out: list[Effect]) -> list[Effect]:
        deferred, self._deferred = self._deferred, []
        return [*deferred, *out]

    def _heartbeat(self, hb: Heartbeat, now: float) -> list[Effect]:
        st = self._terms.get(hb.terminal_id)
        if st is None:
            st = self._create(hb.terminal_id, hb.merchant_id, now)
        elif self._steady(st, hb, now):
            return []
        ctx = self._ctx.reset(st, hb, now)
        back = self._alive(st, now)
        order = classify_heartbeat(st, hb, self._interval)
        if order is Order.OUT_OF_ORDER:
            return self._signals(back, now) if back else []
        serial_changed = self._absorb(st, hb, now, order)
        sigs = run_rules(ctx, HEARTBEAT_RULES if st.acq is None else _HEARTBEAT_RULES_BY_STATUS[st.acq])
        money = self._settle.on_heartbeat(hb, now, serial_changed=serial_changed)
        if back or sigs or money:
            return self._signals([*back, *sigs, *money], now)
        return []

    def _steady(self, st: TerminalState, hb: Heartbeat, now: float) -> bool:
        """The heartbeat fast path: take a heartbeat that changes nothing but freshness.

        Most heartbeats come from a healthy, online terminal and repeat what the last one
        said. For those the full path (liveness, ordering, absorbing every field, the five
        heartbeat rules, the settlement book) decides nothing: every rule finds its
        condition off and nothing to drop, nothing is marked for the store but freshness.
        This checks that case field by field and, only if it holds, applies exactly what
        the full path would have applied (last seen, the operating hours' presence, the
        freshness mark, seq, ts, uptime, battery, signal); otherwise it changes nothing
        and returns False for the full path to run. The property test in
        tests/core/test_heartbeat_fast_path.py holds both paths to the same effects and
        the same state.
        """
        if (st.conds or st.resolved_conds or st.acq is not None or st.state != ONLINE or st.sched is None
                or hb.merchant_id != st.merchant_id or hb.tamper or (hb.tamper is False and st.tamper)):
            return False
        if classify_heartbeat(st, hb, self._interval) is not Order.IN_ORDER:
            return False
        rssi: int | None = None
        net = hb.net
        if net is not None:
            if net.type is not None and net.type != st.net_type:
                return False
            rssi = net.rssi_dbm
            if rssi is not None and rssi <= self._weak_clear_dbm:
                return False  # weak, or in the 3 dB band where only the rule knows what to do
        if ((hb.model is not None and hb.model != st.model) or (hb.fw is not None and hb.fw != st.fw)
                or (hb.app is not None and hb.app != st.app) or (hb.serial is not None and hb.serial != st.serial)):
            return False
        printer = hb.printer
        if printer is not None and (printer != st.printer or printer not in _QUIET_PRINTER):
            return False
        r = hb.reader
        if r is not None and (st.reader_fault or r.chip == "fault" or r.msr == "fault" or r.ctls == "fault"):
            return False
        pw = hb.power
        if pw is not None:
            if pw.charging != st.charging:
                return False
            pct = pw.battery_pct
            if pct is not None and pw.charging is not True and pct <= self._battery_low:
                return False
        saf = hb.saf
        if saf is not None and (saf.pending != st.saf_pending or saf.oldest_ts != st.saf_oldest_ts_ms):
            return False
        if not self._settle.steady_heartbeat(hb):
            return False
        # From here on the heartbeat is taken: what _alive and _absorb would do, and the
        # side effects of the rules that find nothing (battery re-armed by charging, the
        # weak-signal clock stopped by a good signal).
        st.last_seen = now
        self._hours.saw(hb.merchant_id, now)
        if not st.dirty and (st.persisted_seen is None or now - st.persisted_seen >= self._fresh_after):
            self._mark(st)
        st.last_hb_at = now
        st.last_ts_ms = hb.ts
        st.seq = hb.seq
        if hb.uptime_s is not None:
            st.uptime_s = hb.uptime_s
        if pw is not None:
            st.battery_pct = pw.battery_pct
            if pw.charging is True and pw.battery_pct is not None:
                st.batt_fired = 0
        if rssi is not None:
            st.rssi_dbm = rssi
            st.weak_since = None
        return True

    def _absorb(self, st: TerminalState, hb: Heartbeat, now: float, order: Order) -> bool:
        """Take a new heartbeat's facts into the state; True when the serial changed."""
        st.last_hb_at = now
        st.last_ts_ms = hb.ts
        if order is Order.REBOOT:
            st.reboots += 1
            self._mark(st)
        st.seq = hb.seq
        if hb.uptime_s is not None:
            st.uptime_s = hb.uptime_s
        if hb.merchant_id != st.merchant_id:
            self._set_merchant(st, hb.merchant_id, now)
        net = hb.net
        net_type = net.type if net is not None and net.type is not None else st.net_type
        model = hb.model if hb.model is not None else st.model
        fw = hb.fw if hb.fw is not None else st.fw
        if model != st.model or fw != st.fw or net_type != st.net_type:
            self._regroup(st, model, fw, net_type)
        if hb.app is not None and hb.app != st.app:
            st.app = self._intern(hb.app)
            self._mark(st)
        serial_changed = False
        if hb.serial is not None and hb.serial != st.serial:
            serial_changed = st.serial is not None
            if serial_changed:
                st.reader = None  # a new device learns its own reader baseline
            st.serial = hb.serial
            self._mark(st)
        pw = hb.power
        if pw is not None:
            if pw.charging != st.charging:
                self._mark(st)
            st.battery_pct, st.charging = pw.battery_pct, pw.charging
        if net is not None and net.rssi_dbm is not None:
            st.rssi_dbm = net.rssi_dbm
        if hb.printer is not None and hb.printer != st.printer:
            st.printer = self._intern(hb.printer)
            self._mark(st)
        r = hb.reader
        if r is not None:
            fault = r.chip == "fault" or r.msr == "fault" or r.ctls == "fault"
            if fault != st.reader_fault:
                st.reader_fault = fault
                self._mark(st)
        saf = hb.saf
        if saf is not None and (saf.pending, saf.oldest_ts) != (st.saf_pending, st.saf_oldest_ts_ms):
            st.saf_pending, st.saf_oldest_ts_ms = saf.pending, saf.oldest_ts
            self._mark(st)
        if hb.tamper is not None and hb.tamper != st.tamper:
            st.tamper = hb.tamper
            self._mark(st)
        return serial_changed

    def _txn(self, txn: TxnResult, now: float) -> list[Effect]:
        key = (txn.terminal_id, txn.txn_id)
        if key in self._recent:
            return []  # QoS 1 redelivery: applied once (and no proof of life now)
        self._remember_txn(key)
        st = self._terms.get(txn.terminal_id)
        if st is None:
            st = self._create(txn.terminal_id, txn.merchant_id, now)
        ctx = self._ctx.reset(st, txn, now)
        sigs: list[Signal] = list(self._alive(st, now))
        if txn.merchant_id != st.merchant_id:
            self._set_merchant(st, txn.merchant_id, now)
        verdict = self._attr.attribute(txn)
        ctx.attribution = verdict
        if verdict.blame in HOST_SIDE and st.acq is None:  # a suspended terminal's declines feed no upstream
            self._corr.record_host_failure(st.terminal_id, group_labels(st.model, st.fw, st.net_type), now)
        sigs.extend(run_rules(ctx, TXN_RULES if st.acq is None else _TXN_RULES_BY_STATUS[st.acq]))
        if ctx.wake is not None:
            heapq.heappush(self._wakes, (ctx.wake, st.terminal_id))
        record, money = self._settle.on_txn(txn, now)
        out: list[Effect] = [TxnWrite(record)]
        sigs.extend(money)
        if st.acq == CLOSED:
            sigs.extend(self._closure_money(st, now))
        if sigs:
            out.extend(self._signals(sigs, now))
        return out

    def _state_msg(self, msg: StateMsg, now: float, retained: bool) -> list[Effect]:
        st = self._terms.get(msg.terminal_id)
        if st is None:
            st = self._create(msg.terminal_id, None, now)
        if retained:
            self._retained_state(st, msg, now)
            return []
        ctx = self._ctx.reset(st, msg, now)
        if msg.state == "offline":  # the broker's Last Will: news, but not the terminal speaking
            if st.state != ONLINE:
                return []
            return self._signals(self._silent(st, now, "last_will"), now)
        sigs: list[Signal] = list(self._alive(st, now))
        if msg.state == "shutdown":
            self._set_state(st, SHUTDOWN, now)
            st.flap_until = None
            sigs.extend(came_back(ctx))
        return self._signals(sigs, now) if sigs else []

    def _retained_state(self, st: TerminalState, msg: StateMsg, now: float) -> None:
        """History handed over on subscribe: only a clean shutdown newer than all we know counts.

        It then spares a terminal that was switched off while the daemon was away the
        silence judgement; it never proves liveness and never opens anything.
        """
        if msg.state != "shutdown" or st.state != ONLINE:
            return
        if st.last_seen is not None and st.last_seen >= self._started_at:
            return
        if st.last_ts_ms is not None and msg.ts < st.last_ts_ms:
            return
        self._set_state(st, SHUTDOWN, now)
        self._mark(st)

    def _batch(self, b: BatchClose, now: float) -> list[Effect]:
        st = self._terms.get(b.terminal_id)
        if st is None:
            st = self._create(b.terminal_id, b.merchant_id, now)
        self._ctx.reset(st, b, now)
        sigs: list[Signal] = list(self._alive(st, now))
        sigs.extend(self._settle.on_batch(b, now))
        if st.acq == CLOSED:
            sigs.extend(self._closure_money(st, now))
        return self._signals(sigs, now) if sigs else []

    def _settlement(self, s: Settlement, now: float) -> list[Effect]:
        write, sigs = self._settle.on_settlement(s, now)
        st = self._terms.get(s.terminal_id)
        if st is not None and st.acq == CLOSED:
            sigs = [*sigs, *self._closure_money(st, now)]
        out: list[Effect] = [write]
        if sigs:
            out.extend(self._signals(sigs, now))
        return out

    # ---- the acquirer's decisions (CONTRACT §7) ----------------------------------------------

    def _acquirer_status(self, msg: TerminalStatus | StatusCleared, now: float) -> list[Effect]:
        """The acquirer's status of a terminal: retained or not, it is the current truth
        (an older ``ts`` than the one applied is ignored). Kept for a terminal not seen yet."""
        status = self._statuses.decide(msg, now)
        if status is None:
            return []
        st = self._terms.get(msg.terminal_id)
        out: list[Effect] = [AcquirerStatusWrite(replace(status), None if st is None else st.merchant_id)]
        if st is not None:
            out.extend(self._decide(st, status, now))
        return out

    def _decide(self, st: TerminalState, status: AcquirerStatus, now: float) -> list[Effect]:
        """Apply a new status: what it ends resolves, its record opens, the census follows.

        Suspended: the open network and config incidents resolve (``resolved_by``
        ``suspended``); closed: every open incident but settlement gaps (``closed``); the
        previous decision's record resolves (by the new status). Back to active, the
        silence clock starts again now.
        """
        before, after = st.acq, (None if status.status == ACTIVE else status.status)
        tid, book = st.terminal_id, self._book
        if before == after:  # the same decision with a new reason or note: its record says so
            return self._signals([self._decision(st, status, now)], now) if after is not None else []
        out: list[Effect] = []
        if before is not None:
            out.extend(book.resolve_now(decision_key(tid), now, after or ACTIVE, record=True))
        ended = SUSPENDED_KINDS if after == SUSPENDED else RULE_KINDS if after == CLOSED else ()
        for kind in ended:
            out.extend(book.resolve_now(terminal_key(tid, kind), now, status.status, record=True))
        if ended:
            forget_conditions(st, ended)
            self._corr.forget_terminal(tid)
        counted = _counted(st)
        st.acq = after
        self._census.state_changed(counted, _counted(st), st.model, group_labels(st.model, st.fw, st.net_type),
                                   st.merchant_id)
        if after is None:
            st.watch_from = now  # silence is judged from now on, as for a terminal just seen
            if st.state == OFFLINE:
                self._set_state(st, ONLINE, now)
            self._schedule(st)
            out.extend(self._corr.judge_merchants(book.take_touched(), now))
            return out
        out.extend(self._signals([self._decision(st, status, now)], now))
        if after == CLOSED:
            out.extend(self._signals(self._closure_money(st, now), now))
        return out

    def _decision(self, st: TerminalState, status: AcquirerStatus, now: float) -> Finding:
        money = self._settle.unsettled(st.terminal_id) if status.status == CLOSED else ()
        return decision_finding(st.terminal_id, st.merchant_id, status, now, money)

    def _closure_money(self, st: TerminalState, now: float) -> list[Signal]:
        """A closed terminal's money moved: its closure record follows what is still to come,
        and resolves (``resolved_by`` ``settled``) once all of it is settled."""
        key = decision_key(st.terminal_id)
        record = self._book.open_at(key)
        status = self._statuses.get(st.terminal_id)
        if record is None or record.cause != CLOSED or status is None:
            return []
        money = self._settle.unsettled(st.terminal_id)
        if money:
            return [decision_finding(st.terminal_id, st.merchant_id, status, now, money)]
        return [Clear(key, now, immediate=True, evidence={
            "resolved_by": "settled", "resolved_at": now, "unsettled": [], "unsettled_minor": {}})]

    # ---- liveness -------------------------------------------------------------------------

    def _alive(self, st: TerminalState, now: float) -> Sequence[Signal]:
        """The terminal spoke (ctx must point at it): last seen, back online, deadline; and
        its merchant is there (operating hours learn from it)."""
        st.last_seen = now
        merchant_id = st.merchant_id
        if merchant_id is not None:
            self._hours.saw(merchant_id, now)
        if not st.dirty and (st.persisted_seen is None or now - st.persisted_seen >= self._fresh_after):
            self._mark(st)  # freshness only: written at most every persist_freshness_intervals
        back: Sequence[Signal] = ()
        if st.state != ONLINE:
            self._set_state(st, ONLINE, now)
            self._corr.record_back(st.terminal_id)
            if st.conds & OFFLINE_BIT:
                back = came_back(self._ctx)
                st.flap_until = now + self._clear_after
        if st.sched is None:
            self._schedule(st)
        return back

    def _due(self, st: TerminalState) -> float | None:
        """When this terminal's silence must next be judged (None: not judged now)."""
        seen = st.last_seen
        if st.state == CLOSED_HOURS and seen is not None:
            return max(self._after_hours_due(st, seen), self._judge_from)
        if st.state != ONLINE or seen is None:
            return None
        if st.watch_from is not None and st.watch_from > seen:
            seen = st.watch_from
        due = seen + self._offline_after
        fu = st.flap_until
        if fu is not None and seen + self._flap_after <= fu:
            due = seen + self._flap_after
        mu = st.maintenance_until
        if mu is not None and due < mu + self._offline_after:
            due = mu + self._offline_after
        return max(due, self._judge_from)

    def _schedule(self, st: TerminalState) -> None:
        due = self._due(st)
        if due is not None:
            st.sched = due
            heapq.heappush(self._silence, (due, st.terminal_id))

    def _silent(self, st: TerminalState, now: float, reason: str) -> Sequence[Signal]:
        """The terminal fell silent (its deadline, or a live Last Will): offline, unless the
        acquirer's decision or its shop's hours explain it.

        Suspended or closed: offline quietly, nothing opens and no upstream counts it
        (CONTRACT §7). At closing time (core/hours.py): ``closed_hours`` until the usual
        opening plus ``hours_grace_intervals``, counted by no upstream either (§8).
        """
        if st.acq is not None:
            self._set_state(st, OFFLINE, now)
            return ()
        seen = st.last_seen if st.last_seen is not None else now
        opening = self._hours.closing(st.merchant_id, seen, now)
        if opening is not None and opening + self._grace > now:
            self._set_state(st, CLOSED_HOURS, now)
            st.flap_until = None
            self._schedule(st)
            return ()
        return self._offline(st, now, reason)

    def _after_hours_due(self, st: TerminalState, seen: float) -> float:
        """When a ``closed_hours`` terminal is overdue: its shop's usual opening plus the grace."""
        opening = self._hours.closing(st.merchant_id, seen, st.state_at if st.state_at is not None else seen)
        return seen + self._offline_after if opening is None else opening + self._grace

    def _overdue(self, st: TerminalState, now: float) -> Sequence[Signal]:
        """Still silent after the shop's usual opening and the grace: offline as usual."""
        if st.acq is not None:
            self._set_state(st, OFFLINE, now)
            return ()
        seen = st.last_seen if st.last_seen is not None else now
        opening = self._hours.closing(st.merchant_id, seen, st.state_at if st.state_at is not None else seen)
        return self._offline(st, now, "silence", {"closed_hours_until": opening})

    def _offline(
        self, st: TerminalState, now: float, reason: str, evidence: Mapping[str, object] | None = None,
    ) -> Sequence[Signal]:
        """The terminal is offline now (silence, a flap, or a live Last Will)."""
        self._set_state(st, OFFLINE, now)
        self._mark(st)
        self._corr.record_offline(st.terminal_id, group_labels(st.model, st.fw, st.net_type), now)
        ctx = self._ctx.reset(st, None, now)
        return went_offline(ctx, reason, st.last_seen, evidence)

    def _set_state(self, st: TerminalState, new: str, now: float) -> None:
        old = st.state
        if old == new:
            return
        counted = _counted(st)
        st.state, st.state_at = new, now
        self._census.state_changed(counted, _counted(st), st.model, group_labels(st.model, st.fw, st.net_type),
                                   st.merchant_id)
        self._mark(st)

    def _set_merchant(self, st: TerminalState, merchant_id: str, now: float) -> None:
        """The terminal now reports another merchant: it moves, with its open incidents
        (settlement gaps stay with their batch's merchant); both merchants are recounted."""
        old = st.merchant_id
        self._census.merchant_changed(_counted(st), old, merchant_id)
        st.merchant_id = self._intern(merchant_id)
        self._mark(st)
        if old is None:
            return
        tid = st.terminal_id
        keys = [terminal_key(tid, kind) for kind in RULE_KINDS] + [decision_key(tid)]
        moved = self._book.move_terminal(keys, merchant_id, now)
        if moved:
            for write in moved:
                self._corr.rejudge(old, write.incident.kind)
            self._deferred.extend(moved)
            self._deferred.extend(self._corr.judge_merchants(self._book.take_touched(), now))

    def _regroup(self, st: TerminalState, model: str | None, fw: str | None, net_type: str | None) -> None:
        """Model, firmware or link type changed: move the terminal between groups."""
        new_model, new_fw, new_net = self._intern(model), self._intern(fw), self._intern(net_type)
        self._census.regrouped(_counted(st), st.model, group_labels(st.model, st.fw, st.net_type),
                               new_model, group_labels(new_model, new_fw, new_net))
        st.model, st.fw, st.net_type = new_model, new_fw, new_net
        self._mark(st)

    def _mark(self, st: TerminalState) -> None:
        if not st.dirty:
            st.dirty = True
            self._dirty.append(st)

    def _remember_txn(self, key: tuple[str, str]) -> None:
        cap = self._cfg.recent_txn_keys
        if cap <= 0:
            return
        self._recent[key] = None
        if len(self._recent) > cap:
            del self._recent[next(iter(self._recent))]

    # ---- clock ----------------------------------------------------------------------------

    def tick(self, now: float) -> list[Effect]:
        """Judge silence and every deadline that has come; cost follows what is due."""
        sigs: list[Signal] = []
        heap = self._silence
        checks = self._silence_checks
        while checks and self.behind(now):
            checks -= 1
            due, tid = heapq.heappop(heap)
            st = self._terms.get(tid)
            if st is None or st.sched != due:
                continue
            st.sched = None
            real = self._due(st)
            if real is None:
                continue
            if real > now:
                st.sched = real
                heapq.heappush(heap, (real, tid))
                continue
            if st.state == CLOSED_HOURS:
                sigs.extend(self._overdue(st, now))
                continue
            seen = st.last_seen or 0.0
            flapping = st.flap_until is not None and seen + self._flap_after <= st.flap_until
            sigs.extend(self._silent(st, now, "flap" if flapping else "silence"))
        wakes = self._wakes
        again: list[tuple[float, str]] = []
        while wakes and wakes[0][0] <= now:
            _, tid = heapq.heappop(wakes)
            st = self._terms.get(tid)
            if st is not None:
                ctx = self._ctx.reset(st, None, now)
                sigs.extend(rates_due(ctx))
                if ctx.wake is not None:
                    again.append((ctx.wake, tid))
        for wake in again:  # pushed after the loop: a wake due now waits for the next tick
            heapq.heappush(wakes, wake)
        self._rates.tick(now, host_outage_open=self._corr.upstreams.any_open(HOST_ERRORS))
        if not self._blind and now >= self._settle_from:
            sigs.extend(self._settle.tick(now))
        out: list[Effect] = self._signals(sigs, now) if sigs else []
        out.extend(self._book.tick(now))
        out.extend(self._corr.tick(now))
        out.extend(self._corr.judge_merchants(self._book.take_touched(), now))
        out.extend(self._member_writes(now))
        out.extend(MerchantHoursWrite(r) for r in self._hours.take_dirty())
        for tid in [t for t, until in self._maint.items() if until <= now]:
            del self._maint[tid]
        return self._with_deferred(out) if self._deferred else out

    def behind(self, now: float) -> bool:
        """Silence deadlines due by ``now`` are still waiting (a tick stopped at its budget,
        :data:`SILENCE_CHECKS_PER_TICK`): tick again."""
        heap = self._silence
        return bool(heap) and heap[0][0] <= now and not self._blind

    def _signals(self, sigs: Iterable[Signal], now: float) -> list[Effect]:
        """Findings and clears into the book (a new incident with the parent that explains
        it), then the merchants whose incidents changed are judged again."""
        out: list[Effect] = []
        book, corr = self._book, self._corr
        for sig in sigs:
            parent = corr.parent_for_new(sig) if isinstance(sig, Finding) else None
            out.extend(book.apply(sig, parent=parent))
        out.extend(corr.judge_merchants(book.take_touched(), now))
        out.extend(self._member_writes(now))
        return out

    def _member_writes(self, now: float) -> list[Effect]:
        """The terminals the open upstreams newly counted, with their merchants, for the store."""
        fresh = self._corr.upstreams.take_fresh()
        if not fresh:
            return []
        rows: dict[str, list[tuple[str, str | None]]] = {}
        for incident_id, tid in fresh:
            st = self._terms.get(tid)
            rows.setdefault(incident_id, []).append((tid, None if st is None else st.merchant_id))
        return [UpstreamMembersWrite(iid, tuple(r), now) for iid, r in rows.items()]

    # ---- operator actions -----------------------------------------------------------------

    def acknowledge(self, incident_id: str, now: float) -> list[Effect]:
        """Ack an open incident; IncidentNotOpen when the engine holds no such open incident."""
        if self._book.get(incident_id) is None:
            raise IncidentNotOpen(incident_id)
        return list(self._book.acknowledge(incident_id, now))

    def resolve(self, incident_id: str, now: float) -> list[Effect]:
        """Manual resolve; if the condition still holds, its next evidence opens a new incident."""
        inc = self._book.get(incident_id)
        if inc is None:
            raise IncidentNotOpen(incident_id)
        out: list[Effect] = list(self._book.resolve(incident_id, now))
        own_condition = inc.key != decision_key(inc.terminal_id or "")  # not an acquirer's record
        if own_condition and inc.scope == "terminal" and inc.terminal_id is not None and inc.kind in KIND_MASK:
            st = self._terms.get(inc.terminal_id)
            if st is not None:
                mask = KIND_MASK[inc.kind]
                st.resolved_conds |= st.conds & mask
                st.conds &= ~mask
        out.extend(self._corr.judge_merchants(self._book.take_touched(), now))
        return out

    def set_maintenance(self, terminal_id: str, until: float | None, now: float) -> list[Effect]:
        """Put a terminal in maintenance until ``until`` (None ends it): nothing opens for it.

        The terminal's row is an effect of its own, so the operator's answer waits for it
        to be committed (a restart right after the API call keeps the window)."""
        st = self._terms.get(terminal_id)
        if st is None:
            st = self._create(terminal_id, None, now)
        st.maintenance_until = until
        if until is not None and until > now:
            self._maint[terminal_id] = until
        else:
            self._maint.pop(terminal_id, None)
        self._mark(st)
        if st.sched is None:
            self._schedule(st)
        return [*self._with_deferred([]), TerminalWrite(to_record(st))] if self._deferred \
            else [TerminalWrite(to_record(st))]

    def set_merchant_maintenance(self, merchant_id: str, until: float | None, now: float) -> list[Effect]:
        """Every terminal of the merchant in maintenance until ``until`` (None ends it).

        UnknownMerchant when no terminal the daemon knows belongs to it. Looks at every
        terminal once (an operator's action, not a message's)."""
        tids = sorted(t for t, st in self._terms.items() if st.merchant_id == merchant_id)
        if not tids:
            raise UnknownMerchant(merchant_id)
        out: list[Effect] = []
        for tid in tids:
            out.extend(self.set_maintenance(tid, until, now))
        return out

    def merchant_terminals(self, merchant_id: str) -> list[TerminalRecord]:
        """The merchant's terminals as the engine knows them now (terminal_id order)."""
        return [to_record(st) for _, st in sorted(self._terms.items()) if st.merchant_id == merchant_id]

    # ---- operating hours (CONTRACT §8) ----------------------------------------------------

    def connection_changed(self, connected: bool, now: float) -> None:
        """The subscription came up or went down. While it is down nothing we cannot hear
        is judged (silence, settlement deadlines); once it is back, both wait
        ``offline_after_missed`` intervals, as after a restart, so every terminal can be
        heard again and the broker can hand over what it kept. Only slots watched while
        connected are learned as operating hours."""
        self._hours.connection_changed(connected, now)
        if not connected:
            self._blind = True
        elif self._blind:
            self._blind = False
            self._judge_from = max(self._judge_from, now + self._offline_after)
            self._settle_from = max(self._settle_from, now + self._offline_after)

    def set_hours(self, merchant_id: str, hours: WeeklyHours | None, now: float) -> list[Effect]:
        """Configured hours for a merchant (None: back to learning); the write is an effect, so
        the API answers once it is committed."""
        self._hours.configure(merchant_id, hours)
        return [MerchantHoursWrite(self._hours.record(merchant_id))]

    def hours_of(self, merchant_id: str) -> tuple[str, str, dict[str, list[str]]]:
        """(source, timezone, weekly): configured, learned or none (``GET .../hours``)."""
        return self._hours.view(merchant_id)

    def merchant_zone(self, merchant_id: str) -> tzinfo | None:
        """The time zone of the merchant's configured hours (None: it has none; use detect.timezone)."""
        return self._hours.zone_of(merchant_id)

    def closed_slots(self, merchant_id: str) -> frozenset[int]:
        """The merchant's learned usual closed slots of the day (0..23)."""
        return self._hours.closed_slots(merchant_id)

    # ---- reading --------------------------------------------------------------------------

    def take_dirty_terminals(self) -> list[TerminalRecord]:
        """Records of the terminals changed since the last call (one per terminal)."""
        dirty, self._dirty = self._dirty, []
        out = []
        for st in dirty:
            st.dirty = False
            st.persisted_seen = st.last_seen
            out.append(to_record(st))
        return out

    def take_dirty_batches(self) -> list[BatchRecord]:
        """Batch records changed since the last call (the settlement book's)."""
        return self._settle.take_dirty()

    def terminal(self, terminal_id: str) -> TerminalRecord | None:
        """What the engine knows of one terminal."""
        st = self._terms.get(terminal_id)
        return None if st is None else to_record(st)

    def acquirer_status(self, terminal_id: str) -> AcquirerStatus | None:
        """The acquirer's status of a terminal (also one waiting for the terminal to appear)."""
        status = self._statuses.get(terminal_id)
        return None if status is None else replace(status)

    def closed_terminals(self) -> list[tuple[str, str | None]]:
        """(terminal_id, merchant_id) of the terminals the acquirer closed (their screens stay clear)."""
        out = []
        for status in self._statuses.not_active():
            st = self._terms.get(status.terminal_id)
            if status.status == CLOSED and st is not None:
                out.append((st.terminal_id, st.merchant_id))
        return sorted(out, key=lambda pair: pair[0])

    def incident(self, incident_id: str) -> Incident | None:
        """An open incident (resolved ones live in the store)."""
        return self._book.get(incident_id)

    def open_incidents(self) -> list[Incident]:
        """Every open incident (a restart's starting point for the terminal screens)."""
        return list(self._book.open_incidents())

    def upstream_terminals(self, incident_id: str) -> frozenset[str]:
        """The terminals an open upstream (fleet or group host_outage) incident is built on:
        every terminal in its scope whose failures of its cause it counted, incidents of
        their own or not (rc 91/96 alone opens none). Empty for any other incident."""
        return self._corr.upstreams.terminals_of(incident_id)

    def snapshot(self, now: float) -> FleetSnapshot:
        """Immutable counts for /metrics; cost follows models and open incidents, not terminals."""
        tally: Counter[tuple[str, str | None]] = Counter(self._census.tally)
        for tid, until in self._maint.items():
            st = self._terms.get(tid)
            if st is not None and until > now and st.acq is None:  # the acquirer's word counts first
                tally[(st.state, st.model)] -= 1
                tally[(MAINTENANCE, st.model)] += 1
        open_, pageable = incident_counts(self._book.open_incidents())
        money = self._settle.summary(now)
        return FleetSnapshot(
            at=now,
            terminals=freeze(bound_models(tally)),  # type: ignore[arg-type]
            incidents_open=freeze(open_),  # type: ignore[arg-type]
            incidents_pageable=freeze(pageable),  # type: ignore[arg-type]
            unsettled_minor=freeze(money.unsettled_minor),  # type: ignore[arg-type]
            oldest_unsettled_age_s=freeze(money.oldest_unsettled_age_s),  # type: ignore[arg-type]
            gaps_open=freeze(money.open_gaps),  # type: ignore[arg-type]
            open_batches=money.open_batches,
        )


_HEARTBEAT_RULES_BY_STATUS = {SUSPENDED: HEARTBEAT_RULES_SUSPENDED, CLOSED: ()}
_TXN_RULES_BY_STATUS = {SUSPENDED: TXN_RULES_SUSPENDED, CLOSED: TXN_RULES_CLOSED}


def _counted(st: TerminalState) -> str | None:
    """The state the census counts a terminal in: its liveness, ``suspended``, or None (closed)."""
    acq = st.acq
    if acq is None:
        return st.state
    return SUSPENDED if acq == SUSPENDED else None
