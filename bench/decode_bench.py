"""Decode cost per message: msgspec (as fleetwatch does it) against pydantic v2.

Run: ``python -m bench.decode_bench [--n 200000] [--repeat 5]``

Decodes the contract's heartbeat and txn examples (CONTRACT.md §1) N times each way and
prints microseconds per message (best of ``--repeat`` runs, so a noisy neighbour does
not inflate a figure) and the pydantic/msgspec ratio:

- ``Decoder.decode``: what the daemon pays per message: topic parse, size check, PAN
  prefilter, typed msgspec decode, version and spoof checks, Envelope.
- ``msgspec typed``: the typed decode alone (``msgspec.json.Decoder(Heartbeat)``).
- ``pydantic``: ``TypeAdapter(Model).validate_json`` on equivalent models defined below
  (strict, frozen, unknown fields ignored), adapters built once.
- ``prefilter``: the PAN prefilter alone (:func:`fleetwatch.core.pan.might_contain_pan`).

No assertion on the figures: it measures, it does not judge. Importing it does nothing.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Annotated, Literal

import msgspec
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from fleetwatch.core import pan
from fleetwatch.core.decode import Decoder
from fleetwatch.core.messages import Heartbeat, TxnResult

HEARTBEAT = (
    b'{"v":1,"terminal_id":"T00012345","merchant_id":"M0042","ts":1795447531123,"seq":8812,'
    b'"model":"A920","serial":"1851234567","fw":"2.4.1","app":"pay-3.1.0","uptime_s":86400,'
    b'"power":{"battery_pct":83,"charging":false},'
    b'"net":{"type":"4g","rssi_dbm":-71,"host_rtt_ms":120,"host_reachable":true},'
    b'"printer":"ok",'
    b'"reader":{"chip":"ok","msr":"ok","ctls":"ok"},'
    b'"saf":{"pending":0,"oldest_ts":null},'
    b'"tamper":false}'
)
TXN = (
    b'{"v":1,"terminal_id":"T00012345","merchant_id":"M0042","ts":1795447532000,'
    b'"txn_id":"T00012345-000913","stan":"000913","rrn":"433012345678","batch_no":17,'
    b'"type":"sale","amount_minor":12800,"currency":"CNY",'
    b'"entry":"chip","card_ref":"c9f1e2a4","outcome":"approved","rc":"00",'
    b'"error":null,"offline":false}'
)

# ---- pydantic twins of fleetwatch.core.messages (same constraints) ----------------
# Patterns end in ``$``: pydantic-core uses Rust regex, where ``$`` is end of text.

IdStr = Annotated[str, Field(pattern=r"^[A-Za-z0-9.\-]{1,32}$")]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
NonNeg = Annotated[int, Field(ge=0)]
Short = Annotated[str, Field(max_length=64)]
PrinterStatus = Literal["ok", "paper_low", "no_paper", "jam", "cover_open", "overheat", "fault", "absent"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="ignore")


class PPower(_Model):
    battery_pct: Annotated[int, Field(ge=0, le=100)] | None = None
    charging: bool | None = None


class PNet(_Model):
    type: Literal["eth", "wifi", "4g", "5g", "3g", "gprs"] | None = None
    rssi_dbm: int | None = None
    host_rtt_ms: NonNeg | None = None
    host_reachable: bool | None = None


class PReader(_Model):
    chip: Literal["ok", "fault"] | None = None
    msr: Literal["ok", "fault"] | None = None
    ctls: Literal["ok", "fault"] | None = None


class PSaf(_Model):
    pending: NonNeg | None = None
    oldest_ts: NonNeg | None = None


class PHeartbeat(_Model):
    v: int
    terminal_id: IdStr
    merchant_id: IdStr
    ts: NonNeg
    seq: NonNeg
    model: Short | None = None
    serial: Short | None = None
    fw: Short | None = None
    app: Short | None = None
    uptime_s: NonNeg | None = None
    power: PPower | None = None
    net: PNet | None = None
    printer: PrinterStatus | None = None
    reader: PReader | None = None
    saf: PSaf | None = None
    tamper: bool | None = None


class PTxnError(_Model):
    stage: Literal["read", "pin", "connect", "tls", "host", "print"]
    code: Short | None = None
    detail: Annotated[str, Field(max_length=512)] | None = None


class PTxnResult(_Model):
    v: int
    terminal_id: IdStr
    merchant_id: IdStr
    ts: NonNeg
    txn_id: Annotated[str, Field(min_length=1, max_length=64)]
    batch_no: NonNeg
    type: Literal["sale", "refund", "void", "preauth", "completion"]
    amount_minor: NonNeg
    currency: Currency
    outcome: Literal["approved", "declined", "error", "cancelled"]
    stan: Annotated[str, Field(max_length=12)] | None = None
    rrn: Annotated[str, Field(max_length=24)] | None = None
    entry: Literal["chip", "ctls", "msr", "fallback", "manual"] | None = None
    card_ref: Annotated[str, Field(max_length=16)] | None = None
    rc: Annotated[str, Field(pattern=r"^[0-9A-Za-z]{2}$")] | None = None
    error: PTxnError | None = None
    offline: bool | None = None
    orig_txn_id: Annotated[str, Field(min_length=1, max_length=64)] | None = None


def _best_us(fn: Callable[[], object], n: int, repeat: int) -> float:
    """Best-of-``repeat`` mean microseconds per call over ``n`` calls."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter_ns()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter_ns() - start) / n / 1000)
    return best


Thunk = Callable[[], object]


def _cases() -> list[tuple[str, Thunk, Thunk, Thunk, Thunk]]:
    """(name, Decoder.decode, msgspec typed, pydantic, PAN prefilter) thunks per message."""
    decoder = Decoder("fleet/v1")
    hb_ms = msgspec.json.Decoder(Heartbeat)
    txn_ms = msgspec.json.Decoder(TxnResult)
    hb_pd = TypeAdapter(PHeartbeat)
    txn_pd = TypeAdapter(PTxnResult)
    hb_topic = "fleet/v1/term/T00012345/heartbeat"
    txn_topic = "fleet/v1/term/T00012345/txn"
    return [
        (
            "heartbeat",
            lambda: decoder.decode(hb_topic, HEARTBEAT, 0.0, False),
            lambda: hb_ms.decode(HEARTBEAT),
            lambda: hb_pd.validate_json(HEARTBEAT),
            lambda: pan.might_contain_pan(HEARTBEAT),
        ),
        (
            "txn",
            lambda: decoder.decode(txn_topic, TXN, 0.0, False),
            lambda: txn_ms.decode(TXN),
            lambda: txn_pd.validate_json(TXN),
            lambda: pan.might_contain_pan(TXN),
        ),
    ]


def run(n: int, repeat: int) -> list[str]:
    """Measure and return the report lines."""
    lines = [
        f"decode cost, µs/message, best of {repeat} x {n} iterations",
        f"{'message':<10} {'Decoder':>9} {'msgspec':>9} {'pydantic':>9} {'ratio':>7} {'prefilter':>10}",
    ]
    for name, full_fn, ms_fn, pd_fn, pre_fn in _cases():
        full, typed, pyd, pre = (_best_us(fn, n, repeat) for fn in (full_fn, ms_fn, pd_fn, pre_fn))
        lines.append(f"{name:<10} {full:>9.2f} {typed:>9.2f} {pyd:>9.2f} {pyd / typed:>6.1f}x {pre:>10.2f}")
    lines += [
        "Decoder   = fleetwatch Decoder.decode: route, size, PAN prefilter, typed decode, checks",
        "msgspec   = msgspec.json.Decoder(type).decode alone",
        "pydantic  = TypeAdapter(model).validate_json alone (strict, equivalent constraints)",
        "ratio     = pydantic / msgspec; prefilter = pan.might_contain_pan alone",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=200_000, help="iterations per measurement")
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement; the best is kept")
    args = parser.parse_args()
    for line in run(args.n, args.repeat):
        print(line)


if __name__ == "__main__":
    main()
