"""Payloads a daemon must reject without opening anything: the noise of a real fleet.

Each generator returns one message that breaks exactly one rule of CONTRACT.md §1 and
that would be alarming if it were (wrongly) accepted: the spoofed heartbeat claims the
*other* terminal's printer is out of paper and its case was opened, the PAN-bearing
transaction reports a chip read failure. A daemon that applies any of them opens an
incident, and ``fleetwatch score`` counts that against it.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from fleetwatch.sim.fleet import Outgoing, Terminal, Topics, encode

TEST_PANS = ("4111111111111111", "5500005555555559", "378282246310005", "6011111111111117",
             "4111 1111 1111 1111", "5500-0055-5555-5559")
"""Luhn-valid test card numbers (consecutive and grouped forms), never real cards."""


def _heartbeat_body(t: Terminal, now_ms: int) -> dict[str, object]:
    return {"v": 1, "terminal_id": t.terminal_id, "merchant_id": t.merchant_id, "ts": now_ms,
            "seq": t.seq, "model": t.kit.model, "fw": t.kit.fw, "printer": "no_paper", "tamper": True}


def malformed(t: Terminal, other: Terminal, now_ms: int, rng: random.Random, topics: Topics) -> Outgoing:
    """Truncated JSON, as a terminal crashing mid-write sends it."""
    raw = encode(_heartbeat_body(t, now_ms))
    cut = rng.randrange(5, len(raw) - 1)
    return Outgoing(t.index, topics.term(t.terminal_id, "heartbeat"), raw[:cut], 0, False, "garbage")


def wrong_version(t: Terminal, other: Terminal, now_ms: int, rng: random.Random, topics: Topics) -> Outgoing:
    """A future schema version (``v: 2``): rejected with reason ``version``."""
    body = _heartbeat_body(t, now_ms) | {"v": 2}
    return Outgoing(t.index, topics.term(t.terminal_id, "heartbeat"), encode(body), 0, False, "garbage")


def oversize(t: Terminal, other: Terminal, now_ms: int, rng: random.Random, topics: Topics) -> Outgoing:
    """A payload over the contract's 8 KiB limit (a firmware dumping its log into a field)."""
    body = _heartbeat_body(t, now_ms) | {"debug_log": "x" * 9000}
    return Outgoing(t.index, topics.term(t.terminal_id, "heartbeat"), encode(body), 0, False, "garbage")


def spoofed(t: Terminal, other: Terminal, now_ms: int, rng: random.Random, topics: Topics) -> Outgoing:
    """``other``'s heartbeat on ``t``'s topic: a spoof, applied to neither terminal."""
    body = _heartbeat_body(other, now_ms)
    return Outgoing(t.index, topics.term(t.terminal_id, "heartbeat"), encode(body), 0, False, "garbage")


def schema(t: Terminal, other: Terminal, now_ms: int, rng: random.Random, topics: Topics) -> Outgoing:
    """A required field with the wrong type (``seq`` as text) and an unknown printer state."""
    body = _heartbeat_body(t, now_ms) | {"seq": "eight", "printer": "on_fire"}
    return Outgoing(t.index, topics.term(t.terminal_id, "heartbeat"), encode(body), 0, False, "garbage")


def pan(t: Terminal, other: Terminal, now_ms: int, rng: random.Random, topics: Topics) -> Outgoing:
    """A transaction leaking a card number in a string field: rejected whole as ``pan``."""
    number = rng.choice(TEST_PANS)
    body = {"v": 1, "terminal_id": t.terminal_id, "merchant_id": t.merchant_id, "ts": now_ms,
            "txn_id": f"{t.terminal_id}-X{rng.randrange(10**6):06d}", "batch_no": t.batch_no, "type": "sale",
            "amount_minor": 1000, "currency": "CNY", "entry": "chip", "outcome": "error",
            "error": {"stage": "read", "code": "CHIP_READ_FAIL", "detail": f"card {number} unreadable"}}
    if rng.random() < 0.5 and " " not in number and "-" not in number:
        body["card_ref"] = number
    return Outgoing(t.index, topics.term(t.terminal_id, "txn"), encode(body), 1, False, "garbage")


Generator = Callable[[Terminal, Terminal, int, random.Random, Topics], Outgoing]

GENERATORS: dict[str, Generator] = {
    "malformed_json": malformed,
    "wrong_version": wrong_version,
    "oversize": oversize,
    "spoofed_topic": spoofed,
    "schema": schema,
    "pan": pan,
}
"""Every garbage kind by the name a scenario file and the ground truth use."""
