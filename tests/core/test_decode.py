"""Decoder: topic + bytes -> Envelope | Rejection, per CONTRACT.md §1."""

from __future__ import annotations

import json
import re
from typing import Any, get_args

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetwatch.core import fields, pan
from fleetwatch.core.decode import Decoder, Rejection
from fleetwatch.core.messages import (
    BatchClose,
    Envelope,
    Heartbeat,
    Settlement,
    StateMsg,
    TxnResult,
)
from fleetwatch.core.model import REJECT_REASONS, RejectReason

PREFIX = "fleet/v1"
TID = "T00012345"
VISA = "4111111111111111"
AMEX = "378282246310005"
LUHN_TS = next(t for t in (str(2_095_447_531_000 + i) for i in range(10)) if pan.luhn_ok(t))
"""A 13-digit epoch-ms time (year 2036) starting with 2 that passes Luhn."""

# The contract's examples, verbatim (CONTRACT.md §1).
HEARTBEAT = """{"v":1,"terminal_id":"T00012345","merchant_id":"M0042","ts":1795447531123,"seq":8812,
 "model":"A920","serial":"1851234567","fw":"2.4.1","app":"pay-3.1.0","uptime_s":86400,
 "power":{"battery_pct":83,"charging":false},
 "net":{"type":"4g","rssi_dbm":-71,"host_rtt_ms":120,"host_reachable":true},
 "printer":"ok",
 "reader":{"chip":"ok","msr":"ok","ctls":"ok"},
 "saf":{"pending":0,"oldest_ts":null},
 "tamper":false}"""
TXN = """{"v":1,"terminal_id":"T00012345","merchant_id":"M0042","ts":1795447532000,
 "txn_id":"T00012345-000913","stan":"000913","rrn":"433012345678","batch_no":17,
 "type":"sale","amount_minor":12800,"currency":"CNY",
 "entry":"chip","card_ref":"c9f1e2a4","outcome":"approved","rc":"00",
 "error":null,"offline":false}"""
BATCH = """{"v":1,"terminal_id":"T00012345","merchant_id":"M0042","ts":1795490000000,
 "batch_no":17,"count":132,"amount_minor":1532000,"currency":"CNY","result":"confirmed"}"""
STATE = """{"v":1,"terminal_id":"T00012345","state":"online","ts":1795447531000}"""
SETTLEMENT = """{"v":1,"merchant_id":"M0042","terminal_id":"T00012345","batch_no":17,
 "business_date":"2026-11-22","settled_count":132,"settled_amount_minor":1532000,
 "currency":"CNY","credited_at":1795530000000}"""

EXAMPLES: dict[str, tuple[str, str, type[Any]]] = {
    "heartbeat": (f"{PREFIX}/term/{TID}/heartbeat", HEARTBEAT, Heartbeat),
    "txn": (f"{PREFIX}/term/{TID}/txn", TXN, TxnResult),
    "batch": (f"{PREFIX}/term/{TID}/batch", BATCH, BatchClose),
    "state": (f"{PREFIX}/term/{TID}/state", STATE, StateMsg),
    "settlement": (f"{PREFIX}/host/settlement", SETTLEMENT, Settlement),
}
TOPICS = [topic for topic, _, _ in EXAMPLES.values()]
HB_TOPIC = EXAMPLES["heartbeat"][0]
TXN_TOPIC = EXAMPLES["txn"][0]
STATE_TOPIC = EXAMPLES["state"][0]
SETTLEMENT_TOPIC = EXAMPLES["settlement"][0]

DECODER = Decoder(PREFIX)


def with_fields(example: str, **changes: Any) -> bytes:
    """An example payload with fields replaced (``None`` deletes)."""
    doc = json.loads(example)
    for key, value in changes.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    return json.dumps(doc).encode()


def decode(topic: str, payload: bytes | str, retained: bool = False) -> Envelope | Rejection:
    data = payload.encode() if isinstance(payload, str) else payload
    return DECODER.decode(topic, data, 1_800_000_000.5, retained)


def rejected(result: Envelope | Rejection, reason: RejectReason) -> Rejection:
    assert isinstance(result, Rejection), result
    assert result.reason == reason, result
    return result


def accepted(result: Envelope | Rejection) -> Envelope:
    assert isinstance(result, Envelope), result
    return result


# ---- accepted --------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(EXAMPLES))
@pytest.mark.parametrize("retained", [False, True])
def test_contract_examples_accepted(kind: str, retained: bool) -> None:
    """Every example in the contract decodes to its Struct, with the delivery facts kept."""
    topic, payload, cls = EXAMPLES[kind]
    env = accepted(decode(topic, payload, retained=retained))
    assert env.kind == kind
    assert isinstance(env.msg, cls)
    assert env.received_at == 1_800_000_000.5
    assert env.retained is retained


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        (TXN_TOPIC, with_fields(TXN, txn_id="T00012345-000913", rrn="433012345678", stan="000913")),
        (TXN_TOPIC, with_fields(TXN, txn_id=VISA, rrn=VISA, stan="411111111111")),
        (TXN_TOPIC, with_fields(TXN, merchant_id=AMEX)),
        (f"{PREFIX}/term/{VISA}/txn", with_fields(TXN, terminal_id=VISA)),
        (HB_TOPIC, with_fields(HEARTBEAT, ts=int(LUHN_TS), seq=int(VISA), uptime_s=int(AMEX))),
        (HB_TOPIC, with_fields(HEARTBEAT, ts=4222222222222, saf={"pending": 1, "oldest_ts": int(LUHN_TS)})),
        (TXN_TOPIC, with_fields(TXN, amount_minor=int(VISA))),
        (TXN_TOPIC, with_fields(TXN, amount_minor=int(AMEX), unknown_number=5555555555554444)),
        (HB_TOPIC, with_fields(HEARTBEAT, serial="4111111111111112")),
        (HB_TOPIC, with_fields(HEARTBEAT, serial="1" + VISA[1:])),
        (HB_TOPIC, with_fields(HEARTBEAT, serial="7" + "4" * 14 + "9")),
        (SETTLEMENT_TOPIC, with_fields(SETTLEMENT, merchant_id=AMEX, terminal_id=VISA)),
    ],
)
def test_not_a_pan_is_accepted(topic: str, payload: bytes) -> None:
    """Long digit runs that are not card numbers never cause a rejection: top-level
    identifiers (txn_id, rrn, stan, merchant_id, terminal_id, even Luhn-valid), JSON
    numbers (ts in epoch ms, amounts, unknown numeric fields), Luhn-invalid strings,
    and strings starting with a digit outside 2-6."""
    accepted(decode(topic, payload))


def test_unknown_fields_are_ignored() -> None:
    """Forward compatibility: newer firmware may add fields."""
    accepted(decode(HB_TOPIC, with_fields(HEARTBEAT, new_thing={"a": [1, "x"]})))


def test_custom_prefix() -> None:
    """The prefix is configuration; a trailing slash is tolerated."""
    for prefix in ("acme/pos", "acme/pos/"):
        dec = Decoder(prefix)
        assert isinstance(dec.decode(f"acme/pos/term/{TID}/state", STATE.encode(), 0.0, False), Envelope)
        result = dec.decode(STATE_TOPIC, STATE.encode(), 0.0, False)
        assert isinstance(result, Rejection)
        assert result.reason == "topic"


# ---- every reject reason ---------------------------------------------------------


@pytest.mark.parametrize(
    "topic",
    [
        "other/v1/term/T1/heartbeat",
        f"{PREFIX}/term/T1/unknown",
        f"{PREFIX}/term/T1/heartbeat/extra",
        f"{PREFIX}/term/T1",
        f"{PREFIX}/term//heartbeat",
        f"{PREFIX}/term/T 1/heartbeat",
        f"{PREFIX}/term/T_1/heartbeat",
        f"{PREFIX}/term/{'A' * 33}/heartbeat",
        f"{PREFIX}/term/T1\n/heartbeat",
        f"{PREFIX}/host/settlement/x",
        f"{PREFIX}/host/T1/settlement",
        f"{PREFIX}/TERM/T1/heartbeat",
        "",
    ],
)
def test_topic_rejected(topic: str) -> None:
    """Anything but the five topic shapes, or a malformed terminal id, is reason ``topic``."""
    result = rejected(decode(topic, HEARTBEAT), "topic")
    assert result.terminal_id is None


def test_topic_with_pan_is_masked() -> None:
    """A foreign topic is kept for the operator, but never with a card number in it."""
    result = rejected(decode(f"junk/{VISA}", b"{}"), "topic")
    assert VISA not in result.topic


@pytest.mark.parametrize(
    ("size", "reason"),
    [(8192, None), (8193, "too_large"), (100_000, "too_large")],
)
def test_size_limit(size: int, reason: RejectReason | None) -> None:
    """8 KiB is allowed, one byte more is ``too_large`` (checked before parsing)."""
    base = json.loads(STATE)
    base["pad"] = ""
    filler = size - len(json.dumps(base, separators=(",", ":")).encode())
    base["pad"] = "x" * filler
    payload = json.dumps(base, separators=(",", ":")).encode()
    assert len(payload) == size
    result = decode(STATE_TOPIC, payload)
    if reason is None:
        accepted(result)
    else:
        too_large = rejected(result, reason)
        assert too_large.terminal_id == TID
        assert too_large.payload_excerpt is not None
        assert len(too_large.payload_excerpt) == 256


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not json",
        b'{"v":1,',
        b'{"v":1}}',
        b"\xef\xbb\xbf" + STATE.encode(),
        b'{"v":1,"terminal_id":"T00012345","state":"online","ts":1,"x":"\xff"}',
        b"\xff\xfe",
        b'{"v":NaN}',
        b"[" * 4000 + b"]" * 4000,
        STATE[:-1].encode() + b',"x":' + b"[" * 1500 + b"]" * 1500 + b"}",
        STATE[:-1].encode() + b',"x":' + b"[" * 1500 + b'"' + VISA.encode() + b'"' + b"]" * 1500 + b"}",
    ],
)
def test_json_rejected(payload: bytes) -> None:
    """Not UTF-8 JSON (malformed, BOM, invalid UTF-8 even in an unknown field, NaN,
    absurd nesting, also where it would keep a card number from being checked) is
    reason ``json``."""
    rejected(decode(STATE_TOPIC, payload), "json")


@pytest.mark.parametrize(
    "payload",
    [
        with_fields(STATE, v=2),
        with_fields(STATE, v=0),
        with_fields(STATE, v="1"),
        with_fields(STATE, v=True),
        with_fields(STATE, v=1.0),
        b'{"v":2}',
        b'{"v":2,"state":"bogus","ts":"x"}',
    ],
)
def test_version_rejected(payload: bytes) -> None:
    """``v`` present and not the integer 1 is reason ``version``, even when the rest of
    the schema is also wrong. (A missing ``v`` is a schema error: see below.)"""
    rejected(decode(STATE_TOPIC, payload), "version")


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        (STATE_TOPIC, with_fields(STATE, v=None)),
        (STATE_TOPIC, with_fields(STATE, ts=None)),
        (STATE_TOPIC, with_fields(STATE, state="bogus")),
        (STATE_TOPIC, with_fields(STATE, ts="1795447531000")),
        (STATE_TOPIC, with_fields(STATE, ts=1.5)),
        (STATE_TOPIC, with_fields(STATE, ts=-1)),
        (STATE_TOPIC, with_fields(STATE, terminal_id="T00012345\n")),
        (STATE_TOPIC, b"[1,2]"),
        (STATE_TOPIC, b'"just a string"'),
        (STATE_TOPIC, b"null"),
        (HB_TOPIC, with_fields(HEARTBEAT, printer="smoking")),
        (HB_TOPIC, with_fields(HEARTBEAT, power={"battery_pct": 101})),
        (TXN_TOPIC, with_fields(TXN, currency="cny")),
        (TXN_TOPIC, with_fields(TXN, card_ref="x" * 17)),
        (TXN_TOPIC, with_fields(TXN, error={"code": "E1"})),
        (SETTLEMENT_TOPIC, with_fields(SETTLEMENT, business_date="22/11/2026")),
        (SETTLEMENT_TOPIC, with_fields(SETTLEMENT, business_date="2026-11-22\n")),
        (f"{PREFIX}/term/{TID}/batch", with_fields(BATCH, result=None)),
    ],
)
def test_schema_rejected(topic: str, payload: bytes) -> None:
    """Valid JSON that does not fit the message type (missing ``v`` or required field,
    wrong type, enum or pattern, not an object) is reason ``schema``."""
    rejected(decode(topic, payload), "schema")


def test_schema_detail_never_quotes_the_payload() -> None:
    """msgspec quotes a bad enum value; the detail drops it but keeps the field path."""
    result = rejected(decode(HB_TOPIC, with_fields(HEARTBEAT, printer="secret-value")), "schema")
    assert "secret-value" not in result.detail
    assert "$.printer" in result.detail


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        (HB_TOPIC, with_fields(HEARTBEAT, terminal_id="T99999999")),
        (TXN_TOPIC, with_fields(TXN, terminal_id="t00012345")),
        (f"{PREFIX}/term/{TID}/batch", with_fields(BATCH, terminal_id="T00012345.")),
        (STATE_TOPIC, with_fields(STATE, terminal_id="OTHER")),
    ],
)
def test_spoof_rejected(topic: str, payload: bytes) -> None:
    """A payload terminal_id differing from the topic's is ``spoof``; the rejection names
    the topic's terminal, never the claimed one."""
    result = rejected(decode(topic, payload), "spoof")
    assert result.terminal_id == TID


def test_settlement_has_no_spoof_check() -> None:
    """The settlement topic carries no terminal id, so any payload terminal_id is fine."""
    env = accepted(decode(SETTLEMENT_TOPIC, with_fields(SETTLEMENT, terminal_id="ANY-OTHER")))
    assert isinstance(env.msg, Settlement)


def test_settlement_rejection_has_no_terminal() -> None:
    """Rejection.terminal_id comes from the topic only; settlement has none."""
    result = rejected(decode(SETTLEMENT_TOPIC, b"{}"), "schema")
    assert result.terminal_id is None


# ---- PAN -------------------------------------------------------------------------

PAN_CASES = [
    (TXN_TOPIC, with_fields(
        TXN, outcome="error", error={"stage": "read", "detail": "card 4111 1111 1111 1111 declined"},
    )),
    (TXN_TOPIC, with_fields(TXN, error={"stage": "read", "code": "E", "detail": "amex 3782 822463 10005"})),
    (HB_TOPIC, with_fields(HEARTBEAT, model=f"dump:{VISA}:end")),
    (HB_TOPIC, with_fields(HEARTBEAT, debug=[{"x": ["4111-1111-1111-1111"]}])),
    (HB_TOPIC, with_fields(HEARTBEAT, meta={"txn_id": VISA})),
    (TXN_TOPIC, with_fields(TXN, card_ref=VISA)),
    (TXN_TOPIC, with_fields(TXN, orig_txn_id=VISA)),
    (TXN_TOPIC, with_fields(TXN, txn_id=[VISA])),
]
PAN_AND_BROKEN = [
    (STATE_TOPIC, with_fields(STATE, v=2, note=VISA)),
    (STATE_TOPIC, with_fields(STATE, state="bogus", note=f"card {VISA}")),
    (STATE_TOPIC, with_fields(STATE, terminal_id="SOMEONE-ELSE", note=VISA)),
    (STATE_TOPIC, json.dumps([f"x {AMEX}"]).encode()),
    (STATE_TOPIC, json.dumps(VISA).encode()),
    (SETTLEMENT_TOPIC, json.dumps({"v": 7, "nested": {"deeper": [f"pan={VISA};"]}}).encode()),
]


@pytest.mark.parametrize(("topic", "payload"), PAN_CASES + PAN_AND_BROKEN)
def test_pan_rejected_and_nothing_kept(topic: str, payload: bytes) -> None:
    """A PAN candidate in any string (nested objects and arrays, grouped or consecutive,
    an identifier name below the top level, an identifier holding a non-string) is
    ``pan`` whatever else is wrong (version, schema, spoof); no excerpt, no digit in
    the detail, and the dead letter keeps nothing either."""
    result = rejected(decode(topic, payload), "pan")
    assert result.payload_excerpt is None
    assert not re.search(r"[0-9]", result.detail)
    assert result.dead_letter(1.0).payload_excerpt is None


def test_duplicate_key_pan_rejected() -> None:
    """A second occurrence of a key cannot launder the first one's card number."""
    payload = STATE[:-1].encode() + b',"note":"' + VISA.encode() + b'","note":"ok"}'
    rejected(decode(STATE_TOPIC, payload), "pan")


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"note":"' + VISA.encode() + b'", ', "json"),
        (b'{"note":"card 4111 1111 1111 1111"} trailing', "json"),
    ],
)
def test_unparseable_payload_excerpt_is_masked(payload: bytes, reason: RejectReason) -> None:
    """Not JSON means no ``pan`` (the contract's order), but the excerpt masks the card."""
    result = rejected(decode(STATE_TOPIC, payload), reason)
    assert result.payload_excerpt is not None
    assert "1111" not in result.payload_excerpt
    assert VISA not in result.payload_excerpt


def test_too_large_excerpt_is_masked() -> None:
    """``too_large`` comes before ``pan``, so its excerpt must mask the card itself."""
    payload = b'{"note":"card ' + VISA.encode() + b'","pad":"' + b"x" * 9000 + b'"}'
    result = rejected(decode(STATE_TOPIC, payload), "too_large")
    assert result.payload_excerpt is not None
    assert VISA not in result.payload_excerpt


# ---- Rejection shape -------------------------------------------------------------


def test_reject_reasons_cover_the_literal() -> None:
    """REJECT_REASONS lists exactly the Literal's values (metrics pre-create every label)."""
    assert set(REJECT_REASONS) == set(get_args(RejectReason))
    assert set(REJECT_REASONS) == {"json", "schema", "version", "too_large", "topic", "spoof", "pan"}


def test_excerpt_is_truncated_and_replaces_bad_utf8() -> None:
    """Excerpts are at most 256 characters and survive invalid UTF-8."""
    payload = b'{"v":3,"pad":"' + "é".encode() * 500 + b'\xff"}'
    result = rejected(decode(STATE_TOPIC, payload), "json")
    assert result.payload_excerpt is not None
    assert len(result.payload_excerpt) == 256


def test_dead_letter_carries_the_rejection() -> None:
    """Rejection.dead_letter builds the store effect with the receive time."""
    result = rejected(decode(STATE_TOPIC, b"[]"), "schema")
    letter = result.dead_letter(12.5)
    assert (letter.topic, letter.reason, letter.detail, letter.received_at) == (
        STATE_TOPIC, "schema", result.detail, 12.5,
    )
    assert letter.payload_excerpt == "[]"


# ---- properties ------------------------------------------------------------------

topics = st.one_of(
    st.sampled_from(TOPICS),
    st.text(max_size=80),
    st.builds(lambda tid, leaf: f"{PREFIX}/term/{tid}/{leaf}", st.text(max_size=40), st.text(max_size=12)),
)

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    json_scalars | st.text(),
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=10), kids, max_size=5),
    max_leaves=30,
)


def check_result(result: Envelope | Rejection) -> None:
    """The invariants every decode result keeps."""
    assert isinstance(result, Envelope | Rejection)
    if isinstance(result, Rejection):
        assert result.reason in REJECT_REASONS
        if result.reason == "pan":
            assert result.payload_excerpt is None
        elif result.payload_excerpt is not None:
            assert len(result.payload_excerpt) <= 256


@settings(max_examples=300)
@given(topics, st.binary(max_size=9000))
def test_any_bytes_on_any_topic_never_raise(topic: str, payload: bytes) -> None:
    """Whatever arrives, decode answers Envelope or Rejection; it never raises."""
    check_result(DECODER.decode(topic, payload, 0.0, False))


@settings(max_examples=300)
@given(st.sampled_from(TOPICS), json_values)
def test_any_json_value_never_raises(topic: str, value: Any) -> None:
    """Arbitrary JSON documents never raise."""
    check_result(DECODER.decode(topic, json.dumps(value).encode(), 0.0, False))


@settings(max_examples=300)
@given(st.sampled_from(list(EXAMPLES)), st.data())
def test_mutated_examples_never_raise(kind: str, data: st.DataObject) -> None:
    """Contract examples with one field replaced by any JSON value never raise, and only
    fail for a reason that follows from the change."""
    topic, example, _ = EXAMPLES[kind]
    doc = json.loads(example)
    key = data.draw(st.sampled_from(sorted(doc)))
    doc[key] = data.draw(json_values)
    result = DECODER.decode(topic, json.dumps(doc).encode(), 0.0, False)
    check_result(result)
    if isinstance(result, Rejection):
        assert result.reason in {"schema", "version", "spoof", "pan", "too_large"}


@settings(max_examples=200)
@given(
    st.sampled_from(list(EXAMPLES)),
    st.sampled_from([VISA, AMEX, "4111 1111 1111 1111", "3782-822463-10005", "5555555555554444"]),
    st.text(alphabet=st.characters(exclude_categories=["Nd", "Cs"]), max_size=10),
    st.data(),
)
def test_injected_pan_always_rejected(kind: str, number: str, around: str, data: st.DataObject) -> None:
    """A card number put into a new string field of any valid message is always ``pan``."""
    topic, example, _ = EXAMPLES[kind]
    doc = json.loads(example)
    field = data.draw(st.sampled_from(["note", "debug", "x"]))
    doc[field] = {"inner": [around + number + around]}
    result = DECODER.decode(topic, json.dumps(doc).encode(), 0.0, False)
    assert isinstance(result, Rejection)
    assert result.reason == "pan"
    assert result.payload_excerpt is None


# ---- the checks that replaced msgspec's patterns (same answers, cheaper) -----------------

ID_PATTERN = re.compile(r"^[A-Za-z0-9.\-]{1,32}\Z")


@given(st.text(alphabet=st.sampled_from("Aa0.-_ \n٣éZ9/"), max_size=40))
@settings(max_examples=2000)
def test_is_id_agrees_with_the_contract_pattern(s: str) -> None:
    assert fields.is_id(s) == bool(ID_PATTERN.search(s))


@given(st.text(max_size=5))
@settings(max_examples=2000)
def test_currency_and_rc_checks_agree_with_their_patterns(s: str) -> None:
    assert fields.is_currency(s) == bool(re.search(r"^[A-Z]{3}\Z", s))
    assert fields.is_rc(s) == bool(re.search(r"^[0-9A-Za-z]{2}\Z", s))


@given(st.text(alphabet=st.sampled_from("ab/.-_ 1\nT٣"), max_size=30), st.sampled_from(
    ["heartbeat", "txn", "batch", "state", "notice", "heartbeat/x", ""]))
@settings(max_examples=2000)
def test_route_accepts_exactly_the_topics_the_contract_pattern_does(tid: str, leaf: str) -> None:
    topic = f"{PREFIX}/term/{tid}/{leaf}"
    pattern = re.compile(rf"{re.escape(PREFIX)}/term/([A-Za-z0-9.\-]{{1,32}})/(heartbeat|txn|batch|state)")
    m = pattern.fullmatch(topic)
    assert DECODER.route(topic) == (None if m is None else (m.group(2), m.group(1)))


@pytest.mark.parametrize(
    ("topic", "payload", "field"),
    [
        (HB_TOPIC, with_fields(HEARTBEAT, merchant_id="M 42"), "merchant_id"),
        (HB_TOPIC, with_fields(HEARTBEAT, merchant_id=""), "merchant_id"),
        (HB_TOPIC, with_fields(HEARTBEAT, merchant_id="M" * 33), "merchant_id"),
        (HB_TOPIC, with_fields(HEARTBEAT, merchant_id="M٣"), "merchant_id"),
        (TXN_TOPIC, with_fields(TXN, merchant_id="M0042\n"), "merchant_id"),
        (TXN_TOPIC, with_fields(TXN, currency="CN"), "currency"),
        (TXN_TOPIC, with_fields(TXN, currency="ÇNY"), "currency"),
        (TXN_TOPIC, with_fields(TXN, rc="0"), "rc"),
        (TXN_TOPIC, with_fields(TXN, rc="0_"), "rc"),
        (f"{PREFIX}/term/{TID}/batch", with_fields(BATCH, currency="cny"), "currency"),
        (f"{PREFIX}/term/{TID}/batch", with_fields(BATCH, merchant_id="M/1"), "merchant_id"),
        (STATE_TOPIC, with_fields(STATE, terminal_id="T 1"), "terminal_id"),
    ],
)
def test_identifier_currency_and_rc_formats_are_schema_errors_naming_the_field(
        topic: str, payload: bytes, field: str) -> None:
    result = rejected(decode(topic, payload), "schema")
    assert result.detail.endswith(f"at `$.{field}`")
    assert result.terminal_id == TID


def test_punctuation_only_identifiers_are_valid_as_the_pattern_says() -> None:
    accepted(decode(HB_TOPIC, with_fields(HEARTBEAT, merchant_id="-.-")))
    accepted(decode(f"{PREFIX}/term/.-./heartbeat", with_fields(HEARTBEAT, terminal_id=".-.")))


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        # a malformed merchant id with a spoofed terminal id: schema comes before spoof
        (with_fields(HEARTBEAT, merchant_id="M 1", terminal_id="T99999999"), "schema"),
        # a malformed claimed terminal id is a schema error, not a spoof
        (with_fields(HEARTBEAT, terminal_id="T9 9"), "schema"),
        # a malformed merchant id in a version-2 message: version comes before schema
        (with_fields(HEARTBEAT, merchant_id="M 1", v=2), "version"),
        # and a card number before everything
        (with_fields(HEARTBEAT, merchant_id="M 1", v=2, app=f"x {VISA}"), "pan"),
    ],
)
def test_the_order_of_reasons_is_unchanged_for_the_new_checks(payload: bytes, reason: RejectReason) -> None:
    rejected(decode(HB_TOPIC, payload), reason)


def test_invalid_field_checks_a_message_built_without_a_topic() -> None:
    """Outside the decoder (no topic to compare with) the payload's terminal id is checked too."""
    msg = msgspec.json.decode(with_fields(STATE, terminal_id="bad id"), type=StateMsg)
    assert fields.invalid_field(msg) == f"{fields.ID_RULE} - at `$.terminal_id`"
    good = msgspec.json.decode(STATE.encode(), type=StateMsg)
    assert fields.invalid_field(good) is None
