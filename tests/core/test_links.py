"""Signed merchant links: HMAC over "{merchant_id}.{exp}", checked in constant time."""

from __future__ import annotations

import hashlib
import hmac

from fleetwatch.core.links import LinkCheck, check, link_path, sign

KEY = b"k" * 32


def test_the_signature_is_the_contracts_hmac() -> None:
    assert sign(KEY, "M0042", 1795447531) == hmac.new(KEY, b"M0042.1795447531", hashlib.sha256).hexdigest()
    assert link_path(KEY, "M0042", 7) == f"/m/M0042?exp=7&sig={sign(KEY, 'M0042', 7)}"


def test_good_tampered_expired_and_foreign_links() -> None:
    """Only the untouched link for that merchant, before exp, is valid."""
    sig = sign(KEY, "M1", 2000)
    assert check(KEY, "M1", "2000", sig, 1000.0) is LinkCheck.VALID
    assert check(KEY, "M2", "2000", sig, 1000.0) is LinkCheck.INVALID  # another merchant's link
    assert check(KEY, "M1", "2001", sig, 1000.0) is LinkCheck.INVALID  # tampered expiry
    assert check(KEY, "M1", "2000", sig[:-1] + ("0" if sig[-1] != "0" else "1"), 1000.0) is LinkCheck.INVALID
    assert check(KEY, "M1", "2000", sig, 2000.0) is LinkCheck.EXPIRED
    assert check(b"other key", "M1", "2000", sig, 1000.0) is LinkCheck.INVALID  # the key was rotated


def test_malformed_parts_are_invalid_not_errors() -> None:
    sig = sign(KEY, "M1", 2000)
    for merchant, exp, s in [("M1", None, sig), ("M1", "2000", None), ("M1", "-5", sig), ("M1", "2e3", sig),
                             ("M1", "2000", sig.upper()), ("M/1", "2000", sig), ("", "2000", sig),
                             ("M1", "2000", sig + "00"), ("M" * 33, "2000", sig)]:
        assert check(KEY, merchant, exp, s, 1000.0) is LinkCheck.INVALID, (merchant, exp, s)
