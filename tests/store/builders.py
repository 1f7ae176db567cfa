"""Records to write in store tests: every field set where it matters, so a column mix-up shows."""

from __future__ import annotations

from fleetwatch.core.model import (
    BatchRecord,
    DeadLetter,
    EventType,
    Incident,
    IncidentEvent,
    IncidentWrite,
    Kind,
    Status,
    TerminalRecord,
    TxnRecord,
)

T0 = 1_795_447_531.125


def incident(
    n: int,
    *,
    key: str | None = None,
    status: Status = "open",
    opened_at: float | None = None,
    terminal_id: str = "T1",
    merchant_id: str = "M1",
    kind: Kind = "printer",
) -> Incident:
    return Incident(
        id=f"inc-{n:05d}", key=key or f"terminal|{terminal_id}|{kind}|{n}", kind=kind,
        cause="no_paper", scope="terminal", severity="major", status=status,
        opened_at=T0 + n if opened_at is None else opened_at, updated_at=T0 + n,
        summary="Printer out of paper", terminal_id=terminal_id, merchant_id=merchant_id,
        resolved_at=T0 + n + 5 if status == "resolved" else None,
    )


def iw(inc: Incident, type_: EventType = "opened") -> IncidentWrite:
    return IncidentWrite(inc, IncidentEvent(inc.id, inc.updated_at, type_, {"status": inc.status}))


def txn(terminal_id: str, txn_id: str, received_at: float = T0) -> TxnRecord:
    return TxnRecord(
        terminal_id=terminal_id, txn_id=txn_id, merchant_id="M1", batch_no=17, currency="CNY",
        type="sale", outcome="approved", amount_minor=12_800, ts_ms=1_795_447_532_000,
        received_at=received_at, rc="00", entry="chip", signed_amount_minor=12_800,
    )


def dead_letter(n: int) -> DeadLetter:
    return DeadLetter(
        topic="fleet/v1/term/T1/txn", reason="schema", detail=f"bad #{n}", received_at=T0 + n,
        payload_excerpt=f'{{"n":{n}}}',
    )


def full_terminal() -> TerminalRecord:
    """Every field set to a non-default value, so a column mix-up cannot go unnoticed."""
    return TerminalRecord(
        terminal_id="T00012345", merchant_id="M0042", model="A920", fw="2.4.1", app="pay-3.1.0",
        serial="1851234567", net_type="4g", last_seen=T0 + 0.5, last_heartbeat_at=T0 + 0.25,
        last_ts_ms=1_795_447_531_123, seq=8812, uptime_s=86_400, reboots=3, state="offline",
        state_at=T0 + 1.5, battery_pct=83, charging=True, rssi_dbm=-71, printer="no_paper",
        reader_fault=True, saf_pending=2, saf_oldest_ts_ms=1_795_447_000_000, tamper=True,
        maintenance_until=T0 + 3600.75,
    )


def full_batch() -> BatchRecord:
    return BatchRecord(
        terminal_id="T00012345", batch_no=17, currency="CNY", merchant_id="M0042", tally_count=132,
        tally_amount_minor=1_532_000, first_approved_at=T0, first_approved_ts_ms=1_795_447_532_000,
        last_txn_at=T0 + 100.5, closed_at=T0 + 200.5, close_count=131, close_amount_minor=1_531_000,
        close_result="mismatch", close_ts_ms=1_795_490_000_000, settled_at=T0 + 300.5,
        settled_count=130, settled_amount_minor=1_530_000, business_date="2026-11-22",
        credited_at_ms=1_795_530_000_000, watch=True, done=False,
    )


def full_incident() -> Incident:
    return Incident(
        id="inc-full", key='group|{"fw":"2.4.1","model":"A920"}|network', kind="network", cause="comm_errors",
        scope="group", severity="critical", status="acknowledged", opened_at=T0, updated_at=T0 + 9.5,
        summary="TLS failures on A920 2.4.1", terminal_id=None, merchant_id=None,
        group={"model": "A920", "fw": "2.4.1"}, resolved_at=None, acknowledged_at=T0 + 4.25,
        parent_id="inc-parent", suppressed=True, previous_id="inc-prev",
        evidence={"terminals": 41, "rate": 0.75, "since": T0, "batches": [17, 18], "note": "证书过期"},
        clearing_since=T0 + 8.0,
    )
