"""A test-side contract check: does one MQTT message satisfy CONTRACT.md §1?

Written independently of the daemon's decoder (which another engineer owns), from the
contract text, so the simulator is checked against the contract rather than against
whatever the daemon happens to accept.
"""

from __future__ import annotations

import re

import msgspec

from fleetwatch.core.fields import invalid_field
from fleetwatch.core.messages import BatchClose, Heartbeat, Message, Settlement, StateMsg, TxnResult

TYPES: dict[str, type[Message]] = {
    "heartbeat": Heartbeat, "txn": TxnResult, "batch": BatchClose, "state": StateMsg, "settlement": Settlement,
}
_PAN = re.compile(r"(?<!\d)(?:\d{13,19}|\d{4}[ -]\d{4}[ -]\d{4}[ -]\d{4}(?:[ -]\d{3})?|\d{4}[ -]\d{6}[ -]\d{5})(?!\d)")
_IDS = {"terminal_id", "merchant_id", "txn_id", "stan", "rrn"}


def luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def has_pan(obj: object, key: str = "") -> bool:
    """A PAN candidate in any string value outside the identifier fields."""
    if isinstance(obj, dict):
        return any(has_pan(v, k) for k, v in obj.items())
    if isinstance(obj, list):
        return any(has_pan(v) for v in obj)
    if isinstance(obj, str) and key not in _IDS:
        for m in _PAN.finditer(obj):
            digits = re.sub(r"\D", "", m.group())
            if digits[0] in "23456" and luhn(digits):
                return True
    return False


def check(topic: str, payload: bytes, prefix: str) -> str | None:
    """None when the message is contract-valid, else the reason it is not."""
    if len(payload) > 8192:
        return "oversize"
    parts = topic.removeprefix(prefix + "/").split("/")
    if parts == ["host", "settlement"]:
        leaf, topic_tid = "settlement", None
    elif len(parts) == 3 and parts[0] == "term":
        leaf, topic_tid = parts[2], parts[1]
    else:
        return "topic"
    try:
        raw = msgspec.json.decode(payload)
    except msgspec.DecodeError:
        return "json"
    if not isinstance(raw, dict):
        return "json"
    if has_pan(raw):
        return "pan"
    if raw.get("v") != 1:
        return "version"
    try:
        msg = msgspec.json.decode(payload, type=TYPES[leaf])
    except (KeyError, msgspec.ValidationError):
        return "schema"
    if invalid_field(msg) is not None:  # the identifier, currency and rc formats (not msgspec patterns)
        return "schema"
    if topic_tid is not None and getattr(msg, "terminal_id", None) != topic_tid:
        return "spoof"
    return None
