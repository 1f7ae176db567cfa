"""Payments, batch closes and host settlements with real-world outcome mixes.

Most attempts are approved; cardholder and issuer declines (05, 51, 55 and friends)
come at the rates acquirers report (a few percent), contactless dominates entry, and a
healthy chip reader still falls back to magstripe about one time in a hundred. None
of this normal noise is a fault, which is the point: a daemon scored on this traffic
must open nothing for it. Tallies follow the contract's BatchClose arithmetic (sales
and completions add, refunds and voids subtract, preauths do not count), so the
simulator's own BatchClose and Settlement agree with what the daemon can tally from
the transactions unless a settlement fault says otherwise.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from fleetwatch.sim.fleet import PRINTER_FAULTS, Outgoing, Terminal, Topics, encode

CARDHOLDER_DECLINES = (("05", 40), ("51", 30), ("55", 18), ("14", 3), ("54", 3), ("57", 2), ("61", 2),
                       ("65", 1), ("75", 1))
"""Issuer / cardholder response codes and their relative frequency among declines."""

BASE_DECLINE_RATE = 0.05
BASE_CANCEL_RATE = 0.01
BASE_FALLBACK_RATE = 0.01
BASE_HOST_TIMEOUT_RATE = 0.001
PARTIAL_RATE = 0.002

READ_ERROR = {"stage": "read", "code": "CHIP_READ_FAIL", "detail": "no ATR"}
PIN_ABORT = {"stage": "pin", "code": "PIN_TIMEOUT", "detail": "cardholder left"}
HOST_TIMEOUT = {"stage": "host", "code": "RESP_TIMEOUT", "detail": "no response 30s"}

TYPES = (("sale", 88), ("refund", 3), ("void", 2), ("preauth", 4), ("completion", 3))
ENTRIES = (("ctls", 60), ("chip", 36), ("msr", 2), ("manual", 1), ("fallback", 1))


def _weighted(rng: random.Random, table: tuple[tuple[str, int], ...]) -> str:
    return rng.choices([k for k, _ in table], weights=[w for _, w in table])[0]


def _amount(rng: random.Random) -> int:
    """A ticket size in minor units: lognormal around 60 yuan, cents rounded to 10."""
    return max(100, int(rng.lognormvariate(8.7, 0.9)) // 10 * 10)


def _count(t: Terminal, currency: str, sign: int, amount: int) -> None:
    entry = t.tally.setdefault(currency, [0, 0])
    entry[0] += 1
    entry[1] += sign * amount


def txn(t: Terminal, now_ms: int, rng: random.Random, topics: Topics) -> Outgoing:
    """The terminal's next payment attempt, shaped by its condition (faults)."""
    t.txn_no += 1
    n = t.txn_no
    currency = t.currencies[-1] if len(t.currencies) > 1 and rng.random() < 0.15 else t.currencies[0]
    kind = _weighted(rng, TYPES)
    amount = _amount(rng)
    orig: tuple[str, int, str] | None = None
    if kind == "void":
        sales = [s for s in t.recent_sales if s[2] == currency]
        if sales:
            orig = sales[-1]
            amount = orig[1]
        else:
            kind = "sale"
    elif kind == "completion":
        auths = [a for a in t.open_preauths if a[2] == currency]
        if auths:
            orig = auths[0]
            amount = min(orig[1], amount)
        else:
            kind = "sale"
    entry = _weighted(rng, ENTRIES)
    body: dict[str, Any] = {
        "v": 1, "terminal_id": t.terminal_id, "merchant_id": t.merchant_id, "ts": now_ms,
        "txn_id": f"{t.terminal_id}-{n:07d}", "stan": f"{n % 1_000_000:06d}",
        "rrn": f"{(now_ms // 1000) % 10_000:04d}{n % 100_000_000:08d}", "batch_no": t.batch_no,
        "type": kind, "amount_minor": amount, "currency": currency, "entry": entry,
        "card_ref": f"{rng.getrandbits(32):08x}", "offline": False, "error": None,
    }
    if orig is not None:
        body["orig_txn_id"] = orig[0]
    _decide(t, body, rng)
    if body["outcome"] == "approved":
        _apply_approved(t, body, orig)
    return Outgoing(t.index, topics.term(t.terminal_id, "txn"), encode(body), 1, False, "txn")


def _decide(t: Terminal, body: dict[str, Any], rng: random.Random) -> None:
    """Set outcome / rc / error from the terminal's condition, worst cause first."""
    r = rng.random()
    if t.tls_fail:
        body.update(outcome="error", error={"stage": "tls", "code": "CERT_EXPIRED",
                                            "detail": "server certificate verify failed"})
        return
    if r < t.host_fail:
        if rng.random() < 0.6:
            body.update(outcome="declined", rc=rng.choice(("91", "96")))
        else:
            body.update(outcome="error", error={"stage": "connect", "code": "TCP_TIMEOUT",
                                                "detail": "connect timeout 15s"})
        return
    if body["entry"] in ("chip", "fallback") and rng.random() < max(t.reader_wear, 0.0):
        if rng.random() < 0.5:
            body.update(outcome="error", error=READ_ERROR)
            return
        body["entry"] = "fallback"
    r = rng.random()
    decline_rate = max(t.decline_share, BASE_DECLINE_RATE)
    if r < BASE_CANCEL_RATE:
        body.update(outcome="cancelled", error=PIN_ABORT)
    elif r < BASE_CANCEL_RATE + decline_rate:
        body.update(outcome="declined", rc=_weighted(rng, CARDHOLDER_DECLINES))
    elif r < BASE_CANCEL_RATE + decline_rate + BASE_HOST_TIMEOUT_RATE:
        body.update(outcome="error", error=HOST_TIMEOUT)
    else:
        body.update(outcome="approved", rc="00")
        if body["type"] == "sale" and rng.random() < PARTIAL_RATE:
            body.update(rc="10", amount_minor=max(100, body["amount_minor"] // 2 // 10 * 10))
        if t.printer in PRINTER_FAULTS:
            body["error"] = {"stage": "print", "code": t.printer.upper(), "detail": "receipt not printed"}


def _apply_approved(t: Terminal, body: dict[str, Any], orig: tuple[str, int, str] | None) -> None:
    kind, amount, currency = body["type"], body["amount_minor"], body["currency"]
    if kind in ("sale", "completion"):
        _count(t, currency, +1, amount)
        if kind == "sale":
            t.recent_sales = [*t.recent_sales[-9:], (body["txn_id"], amount, currency)]
        elif orig is not None:
            t.open_preauths.remove(orig)
    elif kind == "refund":
        _count(t, currency, -1, amount)
    elif kind == "void":
        _count(t, currency, -1, amount)
        if orig is not None:
            t.recent_sales.remove(orig)
    elif kind == "preauth":
        t.open_preauths = [*t.open_preauths[-9:], (body["txn_id"], amount, currency)]


@dataclass(frozen=True, slots=True)
class ClosedBatch:
    """A batch the terminal closed, waiting for the host to settle it."""

    terminal: int
    terminal_id: str
    merchant_id: str
    batch_no: int
    currency: str
    count: int
    amount: int
    business_date: str


def close_batches(
    t: Terminal, now_ms: int, business_date: str, topics: Topics
) -> list[tuple[Outgoing, ClosedBatch]]:
    """Close the open batch: one BatchClose per currency that saw money, then the next batch.

    A terminal that took no money-moving payment has nothing to close and keeps its
    batch number. Open preauths stay open across batches, as on real terminals.
    """
    out = []
    for currency, (count, amount) in sorted(t.tally.items()):
        if count == 0:
            continue
        body = {"v": 1, "terminal_id": t.terminal_id, "merchant_id": t.merchant_id, "ts": now_ms,
                "batch_no": t.batch_no, "count": count, "amount_minor": amount, "currency": currency,
                "result": "confirmed"}
        msg = Outgoing(t.index, topics.term(t.terminal_id, "batch"), encode(body), 1, False, "batch")
        out.append((msg, ClosedBatch(t.index, t.terminal_id, t.merchant_id, t.batch_no, currency, count,
                                     amount, business_date)))
    if out:
        t.batch_no += 1
        t.tally = {}
        t.recent_sales = []
    return out


def settlement(b: ClosedBatch, now_ms: int, topics: Topics, short_by: int = 0) -> Outgoing:
    """The acquirer host's Settlement for one closed batch (gross; ``short_by`` missing)."""
    body = {"v": 1, "merchant_id": b.merchant_id, "terminal_id": b.terminal_id, "batch_no": b.batch_no,
            "business_date": b.business_date, "settled_count": b.count,
            "settled_amount_minor": b.amount - short_by, "currency": b.currency, "credited_at": now_ms}
    return Outgoing(None, topics.settlement, encode(body), 1, False, "settlement")
