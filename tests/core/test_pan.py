"""PAN candidate detection (CONTRACT.md §1): what is a card number and what is not."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetwatch.core import pan


def luhn_complete(body: str) -> str:
    """``body`` plus the check digit that makes it Luhn-valid."""
    for check in "0123456789":
        if pan.luhn_ok(body + check):
            return body + check
    raise AssertionError("unreachable: one check digit always fits")


def luhn_break(number: str) -> str:
    """Same length, same prefix, Luhn-invalid (last digit changed)."""
    last = (int(number[-1]) + 1) % 10
    return number[:-1] + str(last)


VISA = "4111111111111111"
AMEX = "378282246310005"
MASTERCARD = "5555555555554444"
VISA_13 = luhn_complete("422222222222")
NINETEEN = luhn_complete("622126000000000000")


@pytest.mark.parametrize(
    ("digits", "valid"),
    [
        (VISA, True),
        (AMEX, True),
        (MASTERCARD, True),
        ("6011111111111117", True),
        (VISA_13, True),
        (NINETEEN, True),
        (luhn_break(VISA), False),
        (luhn_break(AMEX), False),
        ("0", True),
        ("18", True),
        ("19", False),
    ],
)
def test_luhn(digits: str, valid: bool) -> None:
    """The Luhn check agrees with the card networks' published test numbers."""
    assert pan.luhn_ok(digits) is valid


@pytest.mark.parametrize(
    "text",
    [
        VISA,
        f"card {VISA} declined",
        f"x{VISA}y",
        "card 4111 1111 1111 1111 declined",
        "4111-1111-1111-1111",
        "4111 1111-1111 1111",
        f"{NINETEEN[:4]} {NINETEEN[4:8]} {NINETEEN[8:12]} {NINETEEN[12:16]} {NINETEEN[16:]}",
        f"{NINETEEN[:4]}-{NINETEEN[4:8]}-{NINETEEN[8:12]}-{NINETEEN[12:16]}-{NINETEEN[16:]}",
        "amex 3782 822463 10005 ok",
        "3782-822463-10005",
        VISA_13,
        NINETEEN,
        f"ref {MASTERCARD}.",
        "5555 4111 1111 1111 1111",
        "4111 1111 1111 1111 123",
    ],
)
def test_candidates_found(text: str) -> None:
    """Consecutive and grouped (4-4-4-4(-3), 4-6-5; spaces or dashes) Luhn-valid PANs are found.

    Also an overlapping grouping ("5555 4111 ...": the card starts at the second group)
    and a 16-digit card followed by a stray 3-digit group whose 19-digit reading fails Luhn.
    """
    assert pan.text_has_pan(text)


@pytest.mark.parametrize(
    "text",
    [
        luhn_break(VISA),
        f"card {luhn_break(VISA)} declined",
        luhn_complete("1" * 15),
        luhn_complete("7" * 15),
        luhn_complete("8" * 15),
        luhn_complete("9" * 15),
        luhn_complete("1795447531"[:10] + "12"),
        "411111111111",
        VISA + "0000",
        "9" + VISA,
        "4111  1111  1111  1111",
        "4111_1111_1111_1111",
        "4111 1111 1111",
        "T00012345-000913",
        "433012345678",
        "2026-11-22T10:15:02.120Z",
        "",
        "4111\n1111\n1111\n1111",
    ],
)
def test_non_candidates(text: str) -> None:
    """Luhn-invalid numbers, wrong first digits (1, 7, 8, 9), runs too short or too long,
    wrong separators and ordinary ids/dates are not card numbers."""
    assert not pan.text_has_pan(text)


def test_luhn_valid_with_every_bad_prefix_is_not_a_candidate() -> None:
    """Only the networks' prefixes 2-6 count, for every length 13..19."""
    for first in "0789" + "1":
        for length in range(13, 20):
            assert not pan.text_has_pan(luhn_complete(first + "4" * (length - 2)))


def test_every_length_13_to_19_with_good_prefix_is_a_candidate() -> None:
    """Consecutive runs of 13..19 digits are candidates; 12 and 20 are not."""
    for first in "23456":
        for length in range(12, 21):
            number = luhn_complete(first + "0" * (length - 2))
            assert pan.text_has_pan(f"x {number} y") is (13 <= length <= 19)


@pytest.mark.parametrize(
    ("doc", "found"),
    [
        ({"error": {"stage": "read", "detail": "card 4111 1111 1111 1111 declined"}}, True),
        ({"list": [1, 2, ["deep", {"x": f"..{AMEX}.."}]]}, True),
        ([VISA], True),
        (VISA, True),
        ({VISA: 1}, True),
        ({"txn_id": VISA, "rrn": VISA, "stan": VISA, "merchant_id": AMEX, "terminal_id": VISA}, False),
        ({"txn_id": {"nested": VISA}}, True),
        ({"txn_id": [VISA]}, True),
        ({"outer": {"txn_id": VISA}}, True),
        ({"amount_minor": int(VISA), "ts": int(luhn_complete("279544753112"))}, False),
        ({"amount_minor": float(VISA)}, False),
        ({"note": luhn_break(VISA)}, False),
    ],
)
def test_payload_scan(doc: object, found: bool) -> None:
    """Strings anywhere (nested objects, arrays, keys) are scanned; numbers never;
    top-level identifier strings are skipped, but not identifiers that hide objects,
    and not identifier names below the top level."""
    assert pan.payload_has_pan(json.dumps(doc).encode()) is found


def test_duplicate_key_cannot_hide_a_pan() -> None:
    """A dict would keep only the last of two equal keys; the scan sees both."""
    payload = b'{"note": "card ' + VISA.encode() + b'", "note": "ok"}'
    assert pan.payload_has_pan(payload) is True


def test_escaped_digits_are_seen() -> None:
    """A PAN spelt with ``\\u00XX`` escapes takes the slow path and is found."""
    escaped = "".join(f"\\u{ord(c):04x}" for c in VISA)
    payload = b'{"note": "' + escaped.encode() + b'"}'
    assert pan.might_contain_pan(payload)
    assert pan.payload_has_pan(payload) is True
    spaced = b'{"note": "4111\\u00201111\\u00201111\\u00201111"}'
    assert pan.payload_has_pan(spaced) is True


@pytest.mark.parametrize(
    "payload",
    [
        b'{"v":1,"ts":1795447531123,"seq":8812,"serial":"1851234567","rrn":"433012345678"}',
        b'{"txn_id":"T00012345-000913","stan":"000913","amount_minor":12800}',
    ],
)
def test_prefilter_quiet_on_common_traffic(payload: bytes) -> None:
    """The cheap bytes check does not fire on the contract's ordinary fields (hot path)."""
    assert not pan.might_contain_pan(payload)
    assert pan.payload_has_pan(payload) is False


@pytest.mark.parametrize("payload", [b'{"note": "' + VISA.encode() + b'", ', b'\xff"' + VISA.encode() + b'"'])
def test_unparseable_after_prefilter_hit_is_unknown(payload: bytes) -> None:
    """When the prefilter fires but the payload is not UTF-8 JSON, the answer is None (unchecked)."""
    assert pan.payload_has_pan(payload) is None


def test_deep_nesting_does_not_overflow() -> None:
    """The walk is iterative; absurd nesting is reported as unchecked, never raises."""
    deep = b"[" * 4000 + b'"' + VISA.encode() + b'"' + b"]" * 4000
    assert pan.payload_has_pan(deep) is None
    doc: object = VISA
    for _ in range(5000):
        doc = [doc]
    assert pan.value_has_pan(doc) is True


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"card {VISA} ok", "card **************** ok"),
        ("pay 4111-1111-1111-1111!", "pay ****-****-****-****!"),
        ("nothing 12345 here", "nothing 12345 here"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    """Redaction masks exactly the candidate's digits and keeps everything else."""
    assert pan.redact(text) == expected


@given(st.text())
def test_scan_never_raises_on_any_text(text: str) -> None:
    """Any string can be scanned and redacted; redaction keeps the length."""
    pan.text_has_pan(text)
    assert len(pan.redact(text)) == len(text)


@given(st.binary(max_size=2048))
def test_payload_scan_never_raises_on_any_bytes(payload: bytes) -> None:
    """Any bytes give True, False or None, never an exception."""
    assert pan.payload_has_pan(payload) in (True, False, None)


@given(
    st.sampled_from([VISA, AMEX, MASTERCARD, VISA_13, NINETEEN]),
    st.text(alphabet=st.characters(exclude_categories=["Nd"]), max_size=20),
    st.text(alphabet=st.characters(exclude_categories=["Nd"]), max_size=20),
)
def test_embedded_pan_always_found(number: str, before: str, after: str) -> None:
    """A Luhn-valid PAN between any non-digit text is found, in the string and in a payload."""
    text = before + number + after
    assert pan.text_has_pan(text)
    assert pan.payload_has_pan(json.dumps({"note": text}).encode()) is True
    assert number not in pan.redact(text)


# ---- numbers are dismissed by the prefilter itself (quote parity) -------------------------

TS_2036 = next(t for t in (str(2_095_447_531_000 + i) for i in range(10)) if pan.luhn_ok(t))
"""An epoch-ms timestamp of 2036: 13 digits starting with 2 that pass Luhn."""


def _reference_has_pan(payload: bytes) -> bool | None:
    """The scan as it was before quote parity: any prefilter hit means a full parse."""
    hit = pan._PREFILTER.search(payload.translate(pan._BYTE_CLASSES)) is not None
    if not hit and not (b"\\" in payload and pan._ESCAPED.search(payload)):
        return False
    try:
        doc = pan.parse_for_scan(payload.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    return pan.value_has_pan(doc)


@pytest.mark.parametrize("payload", [
    f'{{"v":1,"ts":{TS_2036},"seq":1}}'.encode(),
    f'{{"amount_minor":{VISA},"saf":{{"oldest_ts":{TS_2036}}}}}'.encode(),
    f'[{TS_2036}, {AMEX}]'.encode(),
])
def test_long_numbers_outside_strings_do_not_trip_the_prefilter(payload: bytes) -> None:
    """From 2033 every epoch-ms ts starts with 2; numbers are never candidates, so they stay on the fast path."""
    assert pan.might_contain_pan(payload) is False
    assert pan.payload_has_pan(payload) is False


@pytest.mark.parametrize("payload", [
    f'{{"ts":{TS_2036},"note":"card {VISA}"}}'.encode(),
    f'{{"ts":{TS_2036},"{VISA}":1}}'.encode(),
    f'{{"ts":{TS_2036},"note":"a \\"quoted\\" {VISA}"}}'.encode(),
])
def test_a_card_number_in_a_string_after_a_long_number_is_still_found(payload: bytes) -> None:
    assert pan.might_contain_pan(payload) is True
    assert pan.payload_has_pan(payload) is True


json_leaves = st.one_of(
    st.integers(min_value=0, max_value=10**19),
    st.sampled_from([VISA, AMEX, MASTERCARD, TS_2036, f"x {VISA} y", "5555 5555 5555 4444", 'q"uote', "plain"]),
    st.text(alphabet="0123456789 -\"\\ab", max_size=25),
)
json_docs = st.recursive(json_leaves, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(["a", "ts", "note", VISA, "terminal_id"]), inner,
                                                 max_size=4)), max_leaves=8)


@given(json_docs)
def test_quote_parity_gives_the_same_answer_as_a_full_scan(doc: object) -> None:
    payload = json.dumps(doc).encode()
    assert pan.payload_has_pan(payload) == _reference_has_pan(payload)
