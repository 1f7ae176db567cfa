"""Wire models of the contract's payloads (CONTRACT.md §1, and the acquirer's terminal status of §7).

They are msgspec Structs rather than pydantic models because decoding is on the
per-message hot path and msgspec validates the same schema several times faster
(bench/decode_bench.py measures both; docs/decisions/0002-decode-with-msgspec.md).

Shapes follow the contract exactly: required fields have no default, optional ones
default to ``None`` ("unknown", never "ok"), unknown fields are ignored so newer
firmware can add fields without being rejected.

The four terminal messages (Heartbeat, TxnResult, BatchClose, StateMsg) carry their
identifiers, currency and response code as plain ``str`` for msgspec and are checked
by :func:`fleetwatch.core.fields.invalid_field` after the typed decode, with string methods instead of one
regex per field: a regex in msgspec costs about as much as the whole rest of a
heartbeat's decode, and the payload's ``terminal_id`` needs no check of its own at all
when it equals the topic's, which the topic pattern has already validated. The rare
Settlement keeps its patterns in the schema.

Every Struct here is declared ``gc=False``: it holds only strings, numbers and other
such Structs, so it can never be part of a reference cycle, and the garbage collector
need not track the five or six objects a heartbeat decodes into (tracked allocations
are what trigger collections on the hot path).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from fleetwatch.core.model import AcquirerStatusName, MessageType

IdStr = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9.\-]{1,32}\Z")]
"""terminal_id / merchant_id: 1 to 32 characters of ``A-Z a-z 0-9 - .``."""

Currency = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}\Z")]
"""ISO 4217 alphabetic code."""

CheckedId = str
"""An :data:`IdStr` checked by :func:`fleetwatch.core.fields.invalid_field` rather than by a msgspec pattern."""
CheckedCurrency = str
"""A :data:`Currency` checked by :func:`fleetwatch.core.fields.invalid_field`."""
CheckedRc = str
"""A two-character host response code (``[0-9A-Za-z]{2}``) checked by :func:`fleetwatch.core.fields.invalid_field`."""

EpochMs = Annotated[int, msgspec.Meta(ge=0)]

PrinterStatus = Literal["ok", "paper_low", "no_paper", "jam", "cover_open", "overheat", "fault", "absent"]
ReaderStatus = Literal["ok", "fault"]
NetType = Literal["eth", "wifi", "4g", "5g", "3g", "gprs"]
TxnType = Literal["sale", "refund", "void", "preauth", "completion"]
Entry = Literal["chip", "ctls", "msr", "fallback", "manual"]
Outcome = Literal["approved", "declined", "error", "cancelled"]
ErrorStage = Literal["read", "pin", "connect", "tls", "host", "print"]
BatchResult = Literal["confirmed", "mismatch", "unconfirmed"]
TerminalStateName = Literal["online", "shutdown", "offline"]


class Power(msgspec.Struct, frozen=True, gc=False):
    battery_pct: Annotated[int, msgspec.Meta(ge=0, le=100)] | None = None
    charging: bool | None = None


class Net(msgspec.Struct, frozen=True, gc=False):
    type: NetType | None = None
    rssi_dbm: int | None = None
    host_rtt_ms: Annotated[int, msgspec.Meta(ge=0)] | None = None
    host_reachable: bool | None = None


class Reader(msgspec.Struct, frozen=True, gc=False):
    chip: ReaderStatus | None = None
    msr: ReaderStatus | None = None
    ctls: ReaderStatus | None = None


class Saf(msgspec.Struct, frozen=True, gc=False):
    pending: Annotated[int, msgspec.Meta(ge=0)] | None = None
    oldest_ts: EpochMs | None = None


class Heartbeat(msgspec.Struct, frozen=True, gc=False):
    v: int
    terminal_id: CheckedId
    merchant_id: CheckedId
    ts: EpochMs
    seq: Annotated[int, msgspec.Meta(ge=0)]
    model: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    serial: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    fw: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    app: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    uptime_s: Annotated[int, msgspec.Meta(ge=0)] | None = None
    power: Power | None = None
    net: Net | None = None
    printer: PrinterStatus | None = None
    reader: Reader | None = None
    saf: Saf | None = None
    tamper: bool | None = None


class TxnError(msgspec.Struct, frozen=True, gc=False):
    stage: ErrorStage
    code: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    detail: Annotated[str, msgspec.Meta(max_length=512)] | None = None


class TxnResult(msgspec.Struct, frozen=True, gc=False):
    v: int
    terminal_id: CheckedId
    merchant_id: CheckedId
    ts: EpochMs
    txn_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    batch_no: Annotated[int, msgspec.Meta(ge=0)]
    type: TxnType
    amount_minor: Annotated[int, msgspec.Meta(ge=0)]
    currency: CheckedCurrency
    outcome: Outcome
    stan: Annotated[str, msgspec.Meta(max_length=12)] | None = None
    rrn: Annotated[str, msgspec.Meta(max_length=24)] | None = None
    entry: Entry | None = None
    card_ref: Annotated[str, msgspec.Meta(max_length=16)] | None = None
    rc: CheckedRc | None = None
    error: TxnError | None = None
    offline: bool | None = None
    orig_txn_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None


class BatchClose(msgspec.Struct, frozen=True, gc=False):
    v: int
    terminal_id: CheckedId
    merchant_id: CheckedId
    ts: EpochMs
    batch_no: Annotated[int, msgspec.Meta(ge=0)]
    count: Annotated[int, msgspec.Meta(ge=0)]
    amount_minor: int
    currency: CheckedCurrency
    result: BatchResult


class StateMsg(msgspec.Struct, frozen=True, gc=False):
    v: int
    terminal_id: CheckedId
    state: TerminalStateName
    ts: EpochMs


class Settlement(msgspec.Struct, frozen=True, gc=False):
    v: int
    merchant_id: IdStr
    terminal_id: IdStr
    batch_no: Annotated[int, msgspec.Meta(ge=0)]
    business_date: Annotated[str, msgspec.Meta(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")]
    settled_count: Annotated[int, msgspec.Meta(ge=0)]
    settled_amount_minor: int
    currency: Currency
    credited_at: EpochMs


class TerminalStatus(msgspec.Struct, frozen=True, gc=False):
    """The acquirer's decision about one terminal (CONTRACT.md §7), published retained by its host.

    ``reason`` is the acquirer's short code (``risk_review`` ...; free text allowed) and picks
    the merchant notice's words; ``note`` is shown to the merchant as written (the PAN rule
    applies to it like to every string); ``merchant_id`` is informational.
    """

    v: int
    terminal_id: CheckedId
    status: AcquirerStatusName
    ts: EpochMs
    merchant_id: CheckedId | None = None
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None
    note: Annotated[str, msgspec.Meta(max_length=500)] | None = None


class StatusCleared(msgspec.Struct, frozen=True, gc=False):
    """An empty retained payload on a terminal's status topic: the status is cleared (active)."""

    terminal_id: str


Payload = Heartbeat | TxnResult | BatchClose | StateMsg | Settlement | TerminalStatus
"""Any payload the typed decoders produce."""

Message = Payload | StatusCleared
"""Any accepted message."""



class Envelope(msgspec.Struct, frozen=True, gc=False):
    """An accepted message with the facts of its delivery.

    ``received_at`` is the daemon's clock (epoch seconds, float): liveness is judged by
    it, never by the terminal's drifting ``ts``. ``retained`` marks broker history
    (a retained State handed over again on subscribe), which never proves liveness.
    """

    kind: MessageType
    msg: Message
    received_at: float
    retained: bool = False
