"""Whose fault is a transaction result? A data table, not ``if`` chains (FAILURES.md §1).

The first rule of the product: an outcome is not a fault. A declined card is the
cardholder's or the issuer's business and never feeds a terminal incident. This module
turns one :class:`~fleetwatch.core.messages.TxnResult` into a *blame class*:

``none``        approved, nothing wrong
``cardholder``  issuer decision or cardholder problem (05 51 55 14 ...): never an incident
``host``        issuer/switch/host unavailable (91 92 96): counts toward ``host_outage`` only
``link``        host or link trouble (06 20 22 30 68, stage connect/tls/host): counts toward
                host health, and on one terminal alone toward ``network`` ``comm_errors``
``config``      acquirer or terminal configuration (03 58 97 A0 77): ``config`` incident
``reader``      the card could not be read (stage read, entry fallback)
``printer``     the receipt did not print (stage print)
``operator``    cancelled, PIN aborted or timed out: nobody's fault

Codes are overloaded by processor (one gateway answers ``05 NO EXISTING HOST``), so the
operator extends the built-in ISO 8583 + UnionPay table per processor through
``detect.processors[NAME] = {rc: blame}`` with ``detect.processor = NAME``. A config blame
may name its cause as ``config:keys``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, cast

from fleetwatch.config import DetectSettings
from fleetwatch.core.messages import TxnResult
from fleetwatch.core.model import Blame

BUILTIN_RC: Final[dict[str, Blame]] = {
    # approved (10 partial)
    "00": "none", "08": "none", "10": "none", "11": "none",
    # issuer decision or cardholder problem
    **dict.fromkeys(
        ("01", "02", "04", "05", "07", "12", "13", "14", "33", "34", "38", "41", "43",
         "51", "54", "55", "57", "59", "61", "65", "75"),
        "cardholder",
    ),
    # acquirer / terminal configuration, UnionPay keys and batch sync
    "03": "config", "58": "config", "97": "config", "A0": "config", "77": "config",
    # issuer / switch / host availability
    "91": "host", "92": "host", "96": "host",
    # host or link malfunction
    "06": "link", "20": "link", "22": "link", "30": "link", "68": "link",
}
"""ISO 8583 field 39 (plus UnionPay's A0 and 77) to blame class."""

BUILTIN_CONFIG_CAUSE: Final[dict[str, str]] = {
    "03": "invalid_merchant", "58": "not_permitted", "97": "not_registered",
    "A0": "keys", "77": "batch_sync",
}
"""Which ``config`` cause a configuration response code means."""

STAGE_BLAME: Final[dict[str, Blame]] = {
    "read": "reader", "pin": "operator", "connect": "link", "tls": "link", "host": "link",
    "print": "printer",
}
"""error.stage to blame class; the stage says where the attempt failed."""

HOST_SIDE: Final[frozenset[str]] = frozenset({"host", "link"})
"""Blame classes that count toward host health (correlation, FAILURES.md §3)."""


@dataclass(frozen=True, slots=True)
class Attribution:
    """The verdict on one transaction."""

    blame: Blame
    config_cause: str | None = None
    read_failure: bool = False
    """The card could not be read (stage read or entry fallback): a reader sample."""


_NONE: Final = Attribution("none")


class Attributor:
    """The built-in table merged with the configured processor's overrides."""

    __slots__ = ("_cache", "_config_cause", "_rc")

    def __init__(self, cfg: DetectSettings) -> None:
        self._rc: dict[str, Blame] = dict(BUILTIN_RC)
        self._config_cause: dict[str, str] = dict(BUILTIN_CONFIG_CAUSE)
        overrides = cfg.processors.get(cfg.processor, {}) if cfg.processor else {}
        for rc, value in overrides.items():  # validated by DetectSettings: known blames and causes
            blame, _, cause = value.partition(":")
            self._rc[rc.upper()] = cast(Blame, blame)
            if blame == "config":
                self._config_cause[rc.upper()] = cause or self._config_cause.get(rc.upper(), "not_permitted")
        self._cache: dict[tuple[str | None, str | None, str | None, bool], Attribution] = {}

    def blame_of_rc(self, rc: str) -> Blame | None:
        """The table's blame for a response code, None when the code is unknown."""
        return self._rc.get(rc.upper())

    def attribute(self, txn: TxnResult) -> Attribution:
        """Blame class of one transaction result (memoised: the input space is tiny)."""
        stage = txn.error.stage if txn.error is not None else None
        fallback = txn.entry == "fallback"
        key = (txn.outcome, txn.rc, stage, fallback)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._decide(txn.outcome, txn.rc, stage, fallback)
            if len(self._cache) < 4096:
                self._cache[key] = hit
        return hit

    def _decide(self, outcome: str, rc: str | None, stage: str | None, fallback: bool) -> Attribution:
        """Operator aborts first, then where it failed, then what the host said."""
        read_failure = fallback or stage == "read"
        if outcome == "cancelled" or stage == "pin":
            return Attribution("operator", read_failure=read_failure)
        if stage is not None:
            return Attribution(STAGE_BLAME.get(stage, "none"), read_failure=read_failure)
        if rc is not None:
            blame = self._rc.get(rc.upper())
            if blame is not None:
                cause = self._config_cause.get(rc.upper()) if blame == "config" else None
                return Attribution(blame, config_cause=cause, read_failure=read_failure)
        if read_failure:
            return Attribution("reader", read_failure=True)
        return _NONE
