"""PAN (card number) detection, per CONTRACT.md §1.

No message may carry a card number: a JSON *string* anywhere in a payload that holds a
PAN candidate gets the whole message rejected, and nothing of it is kept. A candidate
is 13 to 19 ASCII digits starting with 2-6 (the card networks' prefixes) that pass the
Luhn check and are written either as one run bounded by non-digits, or grouped
4-4-4-4(-3) or 4-6-5 with single spaces or dashes.

What is deliberately *not* a candidate:

- JSON numbers (``ts`` in epoch ms passes Luhn one time in ten, so do amounts);
- the string values of the top-level identifier fields (``terminal_id merchant_id
  txn_id stan rrn``), which have formats of their own (a 15-digit acquirer merchant id
  passes Luhn one time in ten).

Cost: this runs on every message, so it is split in two. :func:`might_contain_pan` is
one ``bytes.translate`` and one compiled regex over the raw payload (about a
microsecond for a heartbeat); on the contract's heartbeat and txn it does not hit (the
13-digit ``ts`` starts with 1, and a hit outside every string, such as a ``ts`` from
2033 on, is dismissed by counting quotes). Only when it hits does
:func:`payload_has_pan` parse the JSON and look at string values. The parse keeps
duplicate keys (``object_pairs_hook``) because a plain dict would silently drop the
first of two equal keys, and with it a card number the check must see.

Pure: no I/O, no logging. Nothing here ever returns or formats the digits it found.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Final

from mypy_extensions import mypyc_attr

IDENTIFIER_FIELDS: Final[frozenset[str]] = frozenset({"terminal_id", "merchant_id", "txn_id", "stan", "rrn"})
"""Top-level keys whose string values are identifiers, not scanned (CONTRACT.md §1)."""

_BYTE_CLASSES: Final = bytes(
    0x61 if 0x32 <= b <= 0x36 else 0x62 if 0x30 <= b <= 0x39 or b in (0x20, 0x2D) else 0x2E
    for b in range(256)
)
"""``bytes.translate`` table: 2-6 -> ``a``, other digits, space, dash -> ``b``, else ``.``."""

_PREFILTER: Final = re.compile(rb"a[ab]{12}")
"""Necessary condition for a literal candidate, run on the translated payload.

Every candidate form is a 2-6 digit followed by at least 12 characters of digits,
spaces or dashes. Matching that with one regex on the raw bytes is about twice as slow: the
translation is one C pass, and the regex then scans two-letter text.
"""

_ESCAPED: Final = re.compile(rb"\\u00(?:3[0-9]|2[0dD])")
"""JSON may spell a digit, space or dash as a ``\\u00XX`` escape; such a payload takes
the slow path rather than letting an escaped card number slip through."""

_STR_PREFILTER: Final = re.compile(r"[2-6][0-9 \-]{12}")
"""Same test on one decoded string, so most strings skip the three exact patterns."""

_CONSECUTIVE: Final = re.compile(r"(?<![0-9])[2-6][0-9]{12,18}(?![0-9])")

_GROUPED_4444: Final = re.compile(
    r"(?<![0-9])(?=([2-6][0-9]{3}[ \-][0-9]{4}[ \-][0-9]{4}[ \-][0-9]{4})(?![0-9])([ \-][0-9]{3}(?![0-9]))?)"
)
"""4-4-4-4 with an optional -3 tail, as a zero-width lookahead so overlapping groupings
("5555 4111 1111 1111 1111") are all tried; both the 16- and 19-digit readings are
checked, since the 16 digits before a stray 3-digit group may be the card."""

_GROUPED_465: Final = re.compile(r"(?<![0-9])[2-6][0-9]{3}[ \-][0-9]{6}[ \-][0-9]{5}(?![0-9])")

_LUHN_DOUBLED: Final = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)
"""Digit sum of 2*d for d in 0..9."""


def luhn_ok(digits: str) -> bool:
    """True when an ASCII digit string passes the Luhn (mod 10) check."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        total += _LUHN_DOUBLED[d] if i & 1 else d
    return total % 10 == 0


def _digits(s: str) -> str:
    return s.replace(" ", "").replace("-", "")


def iter_pan_spans(text: str) -> Iterator[tuple[int, int]]:
    """Yield (start, end) of every PAN candidate in ``text``; spans may overlap.

    Spans, not digits, so callers can mask without ever holding the number.
    """
    if _STR_PREFILTER.search(text) is None:
        return
    for m in _CONSECUTIVE.finditer(text):
        if luhn_ok(m.group()):
            yield m.span()
    for m in _GROUPED_465.finditer(text):
        if luhn_ok(_digits(m.group())):
            yield m.span()
    for m in _GROUPED_4444.finditer(text):
        base = _digits(m.group(1))
        if luhn_ok(base):
            yield m.start(1), m.end(1)
        tail = m.group(2)
        if tail is not None and luhn_ok(base + tail[1:]):
            yield m.start(1), m.end(2)


def text_has_pan(text: str) -> bool:
    """True when one string holds at least one PAN candidate."""
    return next(iter_pan_spans(text), None) is not None


def redact(text: str) -> str:
    """``text`` with every digit of every PAN candidate replaced by ``*``.

    For excerpts of messages rejected for another reason (malformed JSON, schema): the
    contract only scans string values of parsed JSON, but an operator would not expect
    a dead-letter excerpt to hold a card number either.
    """
    spans = list(iter_pan_spans(text))
    if not spans:
        return text
    chars = list(text)
    for start, end in spans:
        for i in range(start, end):
            if chars[i].isdigit():
                chars[i] = "*"
    return "".join(chars)


def might_contain_pan(payload: bytes) -> bool:
    """Cheap necessary condition: False means no string in ``payload`` can hold a PAN.

    True only means "look closer": identifiers also trip it. A run of digits that lies
    outside every string is a JSON number and never a candidate: without backslashes
    (which could escape a quote) a position is inside a string exactly when an odd
    number of quotes comes before it. That keeps numbers such as epoch-millisecond
    timestamps from 2033 on (they start with 2) off the slow path.
    """
    classes = payload.translate(_BYTE_CLASSES)
    m = _PREFILTER.search(classes)
    if m is None:
        return b"\\" in payload and _ESCAPED.search(payload) is not None
    if b"\\" in payload:
        return True
    while m is not None:
        if payload.count(b'"', 0, m.start()) & 1:
            return True
        m = _PREFILTER.search(classes, m.end())  # a run never spans a quote, so skip it whole
    return False


@mypyc_attr(native_class=False)  # compiled, a class may not subclass list
class _Obj(list[tuple[str, object]]):
    """A JSON object as its (key, value) pairs, duplicates kept, distinct from arrays."""

    __slots__ = ()


def _ignore_number(_text: str) -> None:
    """Numbers are never candidates, so the parse does not even build them."""


def parse_for_scan(text: str) -> object:
    """Parse JSON text keeping every key/value pair; numbers become ``None``.

    Raises ``ValueError`` (malformed JSON) or ``RecursionError`` (absurd nesting): the
    caller decides what an unscannable payload means.
    """
    return json.loads(
        text,
        object_pairs_hook=_Obj,
        parse_int=_ignore_number,
        parse_float=_ignore_number,
        parse_constant=_ignore_number,
    )


def value_has_pan(doc: object) -> bool:
    """True when a string anywhere in ``doc`` (from :func:`parse_for_scan`) holds a PAN.

    Object keys are scanned too: the contract speaks of values, but a card number used
    as a key is still a card number in the message. The string values of the top-level
    identifier fields are skipped. Iterative, so nesting depth cannot overflow the stack.
    """
    stack: list[object] = []
    if isinstance(doc, _Obj):
        for key, value in doc:
            if text_has_pan(key):
                return True
            if not (key in IDENTIFIER_FIELDS and isinstance(value, str)):
                stack.append(value)
    else:
        stack.append(doc)
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if text_has_pan(item):
                return True
        elif isinstance(item, _Obj):
            for key, value in item:
                if text_has_pan(key):
                    return True
                stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)
    return False


def payload_has_pan(payload: bytes) -> bool | None:
    """Does a raw payload carry a PAN candidate in a string?

    ``False`` (the common case, prefilter only), ``True``, or ``None`` when the
    prefilter hit but the payload cannot be parsed as UTF-8 JSON, so it could not be
    checked and must not be accepted.
    """
    if not might_contain_pan(payload):
        return False
    try:
        doc = parse_for_scan(payload.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    return value_has_pan(doc)
