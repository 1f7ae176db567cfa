"""The decision vocabulary shared by the pure core, the store and the API.

Rules and the settlement book speak in *findings* ("this condition holds now") and
*clears* ("it no longer holds"); the incident book turns them into incident
transitions; the pipeline hands the resulting *effects* to the store. Everything here
is plain data so the core stays free of I/O and easy to test.

Times are epoch seconds as floats (the daemon's clock) unless a name ends in ``_ms``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import Any, Final, Literal

Kind = Literal["reader", "printer", "network", "power", "tamper", "config", "settlement_gap", "host_outage"]
Scope = Literal["terminal", "merchant", "group", "fleet"]
Severity = Literal["info", "minor", "major", "critical"]
Status = Literal["open", "acknowledged", "resolved"]

KINDS: tuple[Kind, ...] = (
    "reader", "printer", "network", "power", "tamper", "config", "settlement_gap", "host_outage",
)
SCOPES: tuple[Scope, ...] = ("terminal", "merchant", "group", "fleet")
SEVERITIES: tuple[Severity, ...] = ("info", "minor", "major", "critical")
SEVERITY_RANK: dict[str, int] = {s: i for i, s in enumerate(SEVERITIES)}
STATUSES: tuple[Status, ...] = ("open", "acknowledged", "resolved")

TerminalStateLabel = Literal["online", "offline", "shutdown", "closed_hours", "maintenance", "suspended"]
TERMINAL_STATES: tuple[TerminalStateLabel, ...] = (
    "online", "offline", "shutdown", "closed_hours", "maintenance", "suspended",
)
"""What ``fleetwatch_terminals{state}`` and the API call a terminal's state: the three a
terminal reports or is judged to be in; ``closed_hours``, silent in its shop's usual closed
hours (CONTRACT.md §8); ``maintenance``, an operator's window over them; and ``suspended``,
the acquirer's decision over all of them (§7). A ``closed`` terminal is not counted at all."""

LIVENESS_STATES: tuple[str, ...] = ("online", "offline", "shutdown", "closed_hours")
"""The states a terminal's own liveness can be in (what the store keeps as ``terminals.state``)."""

MessageType = Literal["heartbeat", "txn", "batch", "state", "settlement", "status"]
MESSAGE_TYPES: tuple[MessageType, ...] = ("heartbeat", "txn", "batch", "state", "settlement", "status")
"""The contract's payload types (CONTRACT.md §1, §7): ``fleetwatch_messages_received_total{type}``."""

AcquirerStatusName = Literal["active", "suspended", "closed"]
ACQUIRER_STATUSES: tuple[AcquirerStatusName, ...] = ("active", "suspended", "closed")
"""What the acquirer's host may say of a terminal (CONTRACT.md §7)."""

RejectReason = Literal["json", "schema", "version", "too_large", "topic", "spoof", "pan"]
REJECT_REASONS: tuple[RejectReason, ...] = ("json", "schema", "version", "too_large", "topic", "spoof", "pan")
"""Why a message is refused: ``fleetwatch_messages_rejected_total{reason}``, all present from the start."""

Blame = Literal["none", "cardholder", "host", "link", "config", "reader", "printer", "operator"]
BLAMES: tuple[Blame, ...] = ("none", "cardholder", "host", "link", "config", "reader", "printer", "operator")
"""Whose fault a transaction result is (core/attribution.py); what ``detect.processors`` may name."""

CAUSES: dict[Kind, tuple[str, ...]] = {
    "reader": ("self_test", "read_failures"),
    "printer": ("fault", "no_paper", "jam", "cover_open", "overheat", "paper_low", "print_errors"),
    "network": ("offline", "comm_errors", "weak_signal"),
    "power": ("battery_critical", "battery_low"),
    "tamper": ("tamper",),
    "config": ("invalid_merchant", "not_permitted", "not_registered", "keys", "batch_sync", "suspended", "closed"),
    "settlement_gap": ("batch_not_closed", "totals_mismatch", "not_settled", "settled_short", "saf_backlog"),
    "host_outage": ("host_errors", "offline_wave"),
}
"""The contract's closed set of causes per kind (CONTRACT.md §3, §7), the one list of them.

Within a kind the order is importance, most important first: when several causes of a
terminal kind hold at once, the first names the incident (``no_paper`` over
``paper_low``, ``offline`` over ``comm_errors``)."""

ACQUIRER_DECISIONS: frozenset[tuple[str, str]] = frozenset({("config", "suspended"), ("config", "closed")})
"""Causes that record an acquirer's decision about a terminal (CONTRACT.md §7), not a fault.

Merchants are told of them at once whatever the severity or the hour (§6); they are never
paged (severity ``info``) and never share a merchant parent (each terminal's decision has
its own reason and its own money)."""

RESOLVED_BY_DECISION: frozenset[str] = frozenset({"suspended", "closed"})
"""``resolved_by`` of the incidents an acquirer's decision ended: the decision's own notice
explains them, so the merchant is not shown them as fixed (CONTRACT.md §5)."""

DEFAULT_SEVERITY: dict[tuple[str, str], Severity] = {
    **{(kind, cause): "major" for kind, causes in CAUSES.items() for cause in causes},
    ("printer", "paper_low"): "minor",
    ("printer", "print_errors"): "minor",
    ("network", "weak_signal"): "minor",
    ("power", "battery_low"): "minor",
    ("tamper", "tamper"): "critical",
    ("host_outage", "host_errors"): "critical",
    ("host_outage", "offline_wave"): "critical",
    ("config", "suspended"): "info",
    ("config", "closed"): "info",
}
"""Each (kind, cause)'s default severity, from the contract's table."""


def decision_key(terminal_id: str) -> str:
    """The key of a terminal's acquirer-decision record (``config`` ``suspended`` / ``closed``).

    A key of its own, beside the terminal's ``config`` key, so that a closed terminal that
    still transacts can have its ``config``/``not_registered`` open while the closure record
    keeps watching its money (CONTRACT.md §7)."""
    return f"terminal|{terminal_id}|config|decision"


def group_json(group: dict[str, str] | None) -> str | None:
    """Canonical text of a group object, so equal groups give equal keys."""
    return None if group is None else json.dumps(group, sort_keys=True, separators=(",", ":"))


def incident_key(
    scope: Scope,
    kind: Kind,
    *,
    terminal_id: str | None = None,
    merchant_id: str | None = None,
    group: dict[str, str] | None = None,
    gap: tuple[int, str, str] | None = None,
) -> str:
    """The contract's dedupe key (CONTRACT.md §3 "Scopes, keys and parents") as text.

    At most one incident is open per key. ``gap`` is (batch_no, currency, cause) and
    only applies to terminal-scope ``settlement_gap`` incidents.
    """
    if scope == "terminal":
        base = f"terminal|{terminal_id}|{kind}"
        if kind == "settlement_gap" and gap is not None:
            batch_no, currency, cause = gap
            return f"{base}|{batch_no}|{currency}|{cause}"
        return base
    if scope == "merchant":
        return f"merchant|{merchant_id}|{kind}"
    if scope == "group":
        return f"group|{group_json(group)}|{kind}"
    return f"fleet|{kind}"


@dataclass(frozen=True, slots=True)
class Finding:
    """A rule's statement that a condition holds at ``at`` (receive time)."""

    key: str
    kind: Kind
    cause: str
    severity: Severity
    scope: Scope
    summary: str
    at: float
    terminal_id: str | None = None
    merchant_id: str | None = None
    group: dict[str, str] | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    detected_from: float | None = None
    """Receive time of the message that decided it, for the detection-latency histogram."""


@dataclass(frozen=True, slots=True)
class Clear:
    """A rule's statement that the condition behind ``key`` is absent at ``at``.

    ``immediate`` resolves at once (money arrived); otherwise the incident book applies
    hysteresis (``clear_after_intervals``) so a flapping condition keeps one incident.
    """

    key: str
    at: float
    immediate: bool = False
    evidence: dict[str, Any] | None = None


Signal = Finding | Clear


@dataclass(slots=True)
class Incident:
    """One incident as the API serves it, plus the bookkeeping the lifecycle needs."""

    id: str
    key: str
    kind: Kind
    cause: str
    scope: Scope
    severity: Severity
    status: Status
    opened_at: float
    updated_at: float
    summary: str
    terminal_id: str | None = None
    merchant_id: str | None = None
    group: dict[str, str] | None = None
    resolved_at: float | None = None
    acknowledged_at: float | None = None
    parent_id: str | None = None
    suppressed: bool = False
    previous_id: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    clearing_since: float | None = None
    """When the condition was last seen to clear; None while it holds (hysteresis)."""

    @property
    def is_open(self) -> bool:
        return self.status != "resolved"

    @property
    def is_pageable(self) -> bool:
        """Open, not explained by an open parent, and above ``info``: what on-call may be paged
        for. ``info`` records (the acquirer's decisions) are never paged (CONTRACT.md §7)."""
        return self.is_open and not self.suppressed and self.severity != "info"


EventType = Literal[
    "opened", "updated", "escalated", "cause_changed", "acknowledged", "resolved",
    "suppressed", "unsuppressed", "reopened",
]


@dataclass(frozen=True, slots=True)
class IncidentEvent:
    """One row of an incident's audit trail."""

    incident_id: str
    at: float
    type: EventType
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class TerminalRecord:
    """What the store keeps of one terminal; the engine's state is rebuilt from it at start."""

    terminal_id: str
    merchant_id: str | None = None
    model: str | None = None
    fw: str | None = None
    app: str | None = None
    serial: str | None = None
    net_type: str | None = None
    last_seen: float | None = None
    """Daemon receive time of the last non-retained message of any kind."""
    last_heartbeat_at: float | None = None
    last_ts_ms: int | None = None
    seq: int | None = None
    uptime_s: int | None = None
    reboots: int = 0
    state: str = "online"
    """online | offline | shutdown | closed_hours (maintenance is a separate flag, the
    acquirer's status a record of its own)."""
    state_at: float | None = None
    battery_pct: int | None = None
    charging: bool | None = None
    rssi_dbm: int | None = None
    printer: str | None = None
    reader_fault: bool = False
    saf_pending: int | None = None
    saf_oldest_ts_ms: int | None = None
    tamper: bool = False
    maintenance_until: float | None = None

    # Written out (the dataclass keeps its fields, repr and eq): the generated __init__ is
    # interpreted even in a compiled module, and this record is built on the hot path.
    # tests/core/test_hand_inits.py holds it to the fields.
    def __init__(  # noqa: PLR0917 -- positional too, like the generated one
        self,
        terminal_id: str,
        merchant_id: str | None = None,
        model: str | None = None,
        fw: str | None = None,
        app: str | None = None,
        serial: str | None = None,
        net_type: str | None = None,
        last_seen: float | None = None,
        last_heartbeat_at: float | None = None,
        last_ts_ms: int | None = None,
        seq: int | None = None,
        uptime_s: int | None = None,
        reboots: int = 0,
        state: str = "online",
        state_at: float | None = None,
        battery_pct: int | None = None,
        charging: bool | None = None,
        rssi_dbm: int | None = None,
        printer: str | None = None,
        reader_fault: bool = False,
        saf_pending: int | None = None,
        saf_oldest_ts_ms: int | None = None,
        tamper: bool = False,
        maintenance_until: float | None = None,
    ) -> None:
        self.terminal_id = terminal_id
        self.merchant_id = merchant_id
        self.model = model
        self.fw = fw
        self.app = app
        self.serial = serial
        self.net_type = net_type
        self.last_seen = last_seen
        self.last_heartbeat_at = last_heartbeat_at
        self.last_ts_ms = last_ts_ms
        self.seq = seq
        self.uptime_s = uptime_s
        self.reboots = reboots
        self.state = state
        self.state_at = state_at
        self.battery_pct = battery_pct
        self.charging = charging
        self.rssi_dbm = rssi_dbm
        self.printer = printer
        self.reader_fault = reader_fault
        self.saf_pending = saf_pending
        self.saf_oldest_ts_ms = saf_oldest_ts_ms
        self.tamper = tamper
        self.maintenance_until = maintenance_until


@dataclass(slots=True)
class AcquirerStatus:
    """The acquirer's word on one terminal (CONTRACT.md §7), as applied or waiting for the terminal.

    One per terminal the acquirer ever spoke of; a terminal the daemon does not know yet keeps
    its status here until it appears (the store keeps them alike)."""

    terminal_id: str
    status: str = "active"
    """active | suspended | closed (:data:`ACQUIRER_STATUSES`)."""
    reason: str | None = None
    note: str | None = None
    since: float | None = None
    """When the status began: the acquirer's ``ts`` (epoch s), or when a cleared one was applied."""
    ts_ms: int | None = None
    """The ``ts`` of the newest status applied: an older one is ignored."""
    merchant_id: str | None = None
    """As the acquirer wrote it (informational)."""
    received_at: float | None = None


@dataclass(slots=True)
class MerchantHoursRecord:
    """A merchant's operating hours as the store keeps them (CONTRACT.md §8, core/hours.py).

    ``learned`` packs the history of whole days (24 fields of ``learn_days + 1`` bits), ``today``
    the day in progress (``day``), ``configured`` the operator's weekly hours (the API's JSON)."""

    merchant_id: str
    learned: int | None = None
    learn_days: int = 7
    day: int = 0
    today: int = 0
    configured: dict[str, Any] | None = None


# ---- effects: what the pipeline asks the store to persist -------------------------

@dataclass(frozen=True, slots=True)
class IncidentWrite:
    """Persist the incident's current snapshot and one audit event, in one transaction."""

    incident: Incident
    event: IncidentEvent
    detected_from: float | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    topic: str
    reason: str
    detail: str
    received_at: float
    payload_excerpt: str | None
    """Truncated payload; always None for reason ``pan`` (nothing of it is kept)."""




@dataclass(slots=True)
class BatchRecord:
    """Reconciliation state of one batch: one (terminal, batch_no, currency).

    The settlement book keeps one per open batch and the store persists it (coalesced),
    so a restart resumes every tally without replaying transactions. Money is integer
    minor units; times are daemon receive times (epoch s) unless named ``_ms``.
    """

    terminal_id: str
    batch_no: int
    currency: str
    merchant_id: str
    tally_count: int = 0
    """Approved money-moving txns (sale, completion, refund, void) counted like BatchClose."""
    tally_amount_minor: int = 0
    """Net: sales + completions - refunds - voids (a voided refund adds back)."""
    first_approved_at: float | None = None
    first_approved_ts_ms: int | None = None
    last_txn_at: float | None = None
    closed_at: float | None = None
    close_count: int | None = None
    close_amount_minor: int | None = None
    close_result: str | None = None
    close_ts_ms: int | None = None
    settled_at: float | None = None
    settled_count: int | None = None
    settled_amount_minor: int | None = None
    business_date: str | None = None
    credited_at_ms: int | None = None
    watch: bool = False
    """Put under watch by a tamper or hardware swap while the batch was open."""
    done: bool = False
    """Settled in full and matched: nothing more to watch; not loaded at start."""

    # Written out (the dataclass keeps its fields, repr and eq): the generated __init__ is
    # interpreted even in a compiled module, and this record is built on the hot path.
    # tests/core/test_hand_inits.py holds it to the fields.
    def __init__(  # noqa: PLR0917 -- positional too, like the generated one
        self,
        terminal_id: str,
        batch_no: int,
        currency: str,
        merchant_id: str,
        tally_count: int = 0,
        tally_amount_minor: int = 0,
        first_approved_at: float | None = None,
        first_approved_ts_ms: int | None = None,
        last_txn_at: float | None = None,
        closed_at: float | None = None,
        close_count: int | None = None,
        close_amount_minor: int | None = None,
        close_result: str | None = None,
        close_ts_ms: int | None = None,
        settled_at: float | None = None,
        settled_count: int | None = None,
        settled_amount_minor: int | None = None,
        business_date: str | None = None,
        credited_at_ms: int | None = None,
        watch: bool = False,
        done: bool = False,
    ) -> None:
        self.terminal_id = terminal_id
        self.batch_no = batch_no
        self.currency = currency
        self.merchant_id = merchant_id
        self.tally_count = tally_count
        self.tally_amount_minor = tally_amount_minor
        self.first_approved_at = first_approved_at
        self.first_approved_ts_ms = first_approved_ts_ms
        self.last_txn_at = last_txn_at
        self.closed_at = closed_at
        self.close_count = close_count
        self.close_amount_minor = close_amount_minor
        self.close_result = close_result
        self.close_ts_ms = close_ts_ms
        self.settled_at = settled_at
        self.settled_count = settled_count
        self.settled_amount_minor = settled_amount_minor
        self.business_date = business_date
        self.credited_at_ms = credited_at_ms
        self.watch = watch
        self.done = done


    def copy(self) -> BatchRecord:
        """A detached copy: what the settlement book hands out of its live records.

        Every field positionally (:data:`_BATCH_FIELDS`), about a fifth of the cost of
        ``dataclasses.replace``, which the store flush paid for every batch a transaction touched.
        """
        return BatchRecord(*_BATCH_FIELDS(self))


_BATCH_FIELDS: Final = attrgetter(*(f.name for f in fields(BatchRecord)))


@dataclass(frozen=True, slots=True)
class TxnRecord:
    """One accepted transaction as stored (no PAN exists in the contract; card_ref is a token)."""

    terminal_id: str
    txn_id: str
    merchant_id: str
    batch_no: int
    currency: str
    type: str
    outcome: str
    amount_minor: int
    ts_ms: int
    received_at: float
    rc: str | None = None
    entry: str | None = None
    error_stage: str | None = None
    orig_txn_id: str | None = None
    signed_amount_minor: int = 0
    """This txn's effect on its batch tally (0 when it does not move money)."""

    # Written out (the dataclass keeps its fields, repr and eq): the generated __init__ is
    # interpreted even in a compiled module, and this record is built on the hot path.
    # tests/core/test_hand_inits.py holds it to the fields.
    def __init__(  # noqa: PLR0917 -- positional too, like the generated one
        self,
        terminal_id: str,
        txn_id: str,
        merchant_id: str,
        batch_no: int,
        currency: str,
        type: str,
        outcome: str,
        amount_minor: int,
        ts_ms: int,
        received_at: float,
        rc: str | None = None,
        entry: str | None = None,
        error_stage: str | None = None,
        orig_txn_id: str | None = None,
        signed_amount_minor: int = 0,
    ) -> None:
        object.__setattr__(self, "terminal_id", terminal_id)
        object.__setattr__(self, "txn_id", txn_id)
        object.__setattr__(self, "merchant_id", merchant_id)
        object.__setattr__(self, "batch_no", batch_no)
        object.__setattr__(self, "currency", currency)
        object.__setattr__(self, "type", type)
        object.__setattr__(self, "outcome", outcome)
        object.__setattr__(self, "amount_minor", amount_minor)
        object.__setattr__(self, "ts_ms", ts_ms)
        object.__setattr__(self, "received_at", received_at)
        object.__setattr__(self, "rc", rc)
        object.__setattr__(self, "entry", entry)
        object.__setattr__(self, "error_stage", error_stage)
        object.__setattr__(self, "orig_txn_id", orig_txn_id)
        object.__setattr__(self, "signed_amount_minor", signed_amount_minor)


@dataclass(frozen=True, slots=True)
class TxnWrite:
    """Persist one accepted transaction (QoS 1: acknowledged only after this commits)."""

    txn: TxnRecord

    # Written out (the dataclass keeps its fields, repr and eq): the generated __init__ is
    # interpreted even in a compiled module, and this record is built on the hot path.
    # tests/core/test_hand_inits.py holds it to the fields.
    def __init__(
        self,
        txn: TxnRecord,
    ) -> None:
        object.__setattr__(self, "txn", txn)


@dataclass(frozen=True, slots=True)
class SettlementWrite:
    """Persist one host Settlement message as received (audit; matching lives in BatchRecord)."""

    terminal_id: str
    merchant_id: str
    batch_no: int
    currency: str
    business_date: str
    settled_count: int
    settled_amount_minor: int
    credited_at_ms: int
    received_at: float


@dataclass(frozen=True, slots=True)
class TerminalWrite:
    """Persist this terminal row now, in the same transaction as the batch that holds it.

    Terminal rows are otherwise written coalesced (``store.terminal_flush_s``); an operator
    action (a maintenance window) must be durable before the API answers, so it travels
    as an effect, whose commit the caller awaits."""

    record: TerminalRecord


@dataclass(frozen=True, slots=True)
class UpstreamMembersWrite:
    """Terminals newly counted among those an open upstream incident is built on.

    ``members`` are (terminal_id, merchant_id) pairs; the store keeps them so the
    merchant page finds every shop an upstream affects, also shops whose terminals only
    got host response codes and have no incident of their own.
    """

    incident_id: str
    members: tuple[tuple[str, str | None], ...]
    at: float


@dataclass(frozen=True, slots=True)
class TerminalNoticeWrite:
    """What the broker acknowledged as a terminal's retained notice (None: cleared)."""

    terminal_id: str
    merchant_id: str | None
    payload: str | None
    at: float


@dataclass(frozen=True, slots=True)
class AcquirerStatusWrite:
    """Persist the acquirer's status of one terminal (a QoS 1 status is acknowledged after it).

    ``merchant_id``: the terminal's merchant as the daemon knows it (None while the terminal
    has not appeared), for whoever follows the terminal's screen."""

    status: AcquirerStatus
    merchant_id: str | None = None


@dataclass(frozen=True, slots=True)
class MerchantHoursWrite:
    """Persist a merchant's learned or configured hours."""

    record: MerchantHoursRecord


@dataclass(frozen=True, slots=True)
class NotificationWrite:
    """One outbox row of a merchant notification (CONTRACT §6), written in the same transaction
    as the incident change that caused it (``core/notify_events.py`` decides it).

    A second write of the same ``event_id`` while the row is still ``pending`` replaces what the
    rules own (type, status, due time, items, body) and leaves the delivery's own columns
    (attempts, next attempt, last error, sent time) alone; a row no longer pending is never
    rewritten (it may be on the wire)."""

    event_id: str
    receiver: str
    merchant_id: str
    notice_id: str
    """The notice's incident id; "" for a digest."""
    type: str
    digest: str
    """"daily" or "hourly" for a digest, else ""."""
    status: str
    due_at: float
    created_at: float
    items_json: str
    """The notice facts behind the row (JSON), for the restart."""
    body: str
    """The event body as sent, without ``sent_at`` (added at each attempt)."""


@dataclass(frozen=True, slots=True)
class NotificationRecord:
    """One outbox row as stored: the rules' columns, then the delivery's."""

    seq: int
    """Insertion order: events are delivered per receiver and notice in this order."""
    event_id: str
    receiver: str
    merchant_id: str
    notice_id: str
    type: str
    digest: str
    status: str
    due_at: float
    created_at: float
    items_json: str
    body: str
    attempts: int = 0
    next_at: float = 0.0
    last_error: str | None = None
    sent_at: float | None = None


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """What one delivery attempt left: sent, failed for good, or pending until ``next_at``."""

    event_id: str
    status: str
    attempts: int
    next_at: float
    last_error: str | None
    sent_at: float | None


Effect = (IncidentWrite | DeadLetter | TxnWrite | SettlementWrite | TerminalWrite | UpstreamMembersWrite
          | TerminalNoticeWrite | AcquirerStatusWrite | MerchantHoursWrite | NotificationWrite)
