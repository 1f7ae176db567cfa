"""Signed merchant links: ``/m/{merchant_id}?exp=EPOCH_S&sig=HEX`` (CONTRACT §5).

``sig`` is the lowercase hex HMAC-SHA256 of ``"{merchant_id}.{exp}"`` under
``notice.link_key``. Whoever holds a link sees that one merchant's notices until
``exp``; changing the key (or deleting a generated one) ends every link at once.

The check compares in constant time (:func:`hmac.compare_digest`) and says only
"valid", "expired" or "invalid", never which part was wrong.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from enum import Enum
from typing import Final

MERCHANT_ID: Final = re.compile(r"^[A-Za-z0-9.\-]{1,32}$")
"""The contract's id format: 1 to 32 of ``A-Z a-z 0-9 - .``."""

_EXP: Final = re.compile(r"^[0-9]{1,12}$")
_SIG: Final = re.compile(r"^[0-9a-f]{64}$")


class LinkCheck(Enum):
    VALID = "valid"
    EXPIRED = "expired"
    INVALID = "invalid"


def sign(key: bytes, merchant_id: str, exp: int) -> str:
    """The link signature of ``merchant_id`` until ``exp`` (epoch seconds)."""
    return hmac.new(key, f"{merchant_id}.{exp}".encode(), hashlib.sha256).hexdigest()


def check(key: bytes, merchant_id: str, exp: str | None, sig: str | None, now: float) -> LinkCheck:
    """Is this link good now? Malformed parts are simply invalid (no detail leaks out)."""
    if exp is None or sig is None or not MERCHANT_ID.match(merchant_id) or not _EXP.match(exp):
        return LinkCheck.INVALID
    expected = sign(key, merchant_id, int(exp))
    # Always compare, also for a malformed sig, so timing says nothing about the input.
    same = hmac.compare_digest(expected, sig if _SIG.match(sig) else "0" * 64)
    if not same or not _SIG.match(sig):
        return LinkCheck.INVALID
    return LinkCheck.VALID if int(exp) > now else LinkCheck.EXPIRED


def link_path(key: bytes, merchant_id: str, exp: int) -> str:
    """``/m/M0042?exp=...&sig=...``: the part after the base URL (ids need no escaping)."""
    if not MERCHANT_ID.match(merchant_id):
        raise ValueError(f"not a merchant id: {merchant_id!r}")
    return f"/m/{merchant_id}?exp={exp}&sig={sign(key, merchant_id, exp)}"
