"""Which parent explains which child: adoption by evidence, as a data table.

A suppressed incident is one nobody is paged for, so a parent may carry only what it
really causes. Being open at the same time, or in the same place, is not enough: a
host answering rc 91 does not make terminals go silent, and a shop that went dark an
hour before a firmware's certificate expired did not go dark because of it. The rule
has four parts, and this module holds the first one, the table; the correlator checks
the other three where it knows the facts:

1. **The table** (:data:`UPSTREAM_EXPLAINS`, :func:`cause_family`): which (kind, cause)
   of a parent explains which (kind, cause) of a child, in the contract's vocabulary.
   ``host_outage``/``host_errors`` explains ``network``/``comm_errors``;
   ``host_outage``/``offline_wave`` explains ``network``/``offline``; a merchant parent of
   kind K explains its terminals' K incidents of the same cause family. ``config``
   causes (rc 03 58 97 A0 77) are answers of a working host about the terminal's setup:
   no host outage explains them.
2. **Scope**: a fleet parent covers every terminal, a group parent only terminals that
   have every attribute of its group, a merchant parent only the merchant's terminals.
3. **Time**: an upstream adopts an incident that opened at most one correlation window
   before it, or while it is open.
4. **Coverage**: an upstream adopts a merchant-scope incident only when it covers (2 and
   1) strictly more than half of the merchant's affected terminals.

The table is checked again whenever a child's cause changes (the incident book does
it): a child whose new cause its parent does not explain loses ``suppressed`` and is
paged on its own (its ``parent_id`` stays, for history); one whose cause is explained
again is suppressed again.
"""

from __future__ import annotations

from typing import Final

from fleetwatch.core.model import CAUSES, Incident

Pair = tuple[str, str]
"""(kind, cause)."""

UPSTREAM_EXPLAINS: Final[dict[Pair, frozenset[Pair]]] = {
    ("host_outage", "host_errors"): frozenset({
        ("network", "comm_errors"),      # a terminal's failed attempts to reach the failing host
        ("host_outage", "host_errors"),  # a group outage inside a fleet-wide one
    }),
    ("host_outage", "offline_wave"): frozenset({
        ("network", "offline"),           # a terminal that went silent with the wave
        ("host_outage", "offline_wave"),  # a group wave inside a fleet-wide one
    }),
}
"""Upstream (fleet or group) parent -> the (kind, cause) of the incidents it explains.

Anything not listed is never explained by an upstream: silence is not a host error, a
host error is not silence, and hardware, power, tamper, configuration and settlement
gaps are the terminal's or the merchant's own story whatever the host does."""

FAMILIES: Final[dict[str, dict[str, tuple[str, ...]]]] = {
    "network": {
        "link": ("offline", "comm_errors"),  # the shop's connection is down or failing
        "signal": ("weak_signal",),
    },
    "config": {
        "acquirer_setup": ("invalid_merchant", "not_permitted", "not_registered"),
        "keys": ("keys",),
        "batch_sync": ("batch_sync",),
        "acquirer_decision": ("suspended", "closed"),
    },
    "settlement_gap": {
        "money": CAUSES["settlement_gap"],  # every gap is money the merchant was not credited
    },
}
"""Cause families per kind: a merchant parent explains its terminals' incidents of the
same family as its own cause. A kind not listed is one family."""

_FAMILY_OF: Final[dict[Pair, str]] = {
    (kind, cause): family
    for kind, families in FAMILIES.items()
    for family, causes in families.items()
    for cause in causes
}


def cause_family(kind: str, cause: str) -> str:
    """The family of a (kind, cause): what a merchant parent of that cause explains."""
    return _FAMILY_OF.get((kind, cause), kind)


def explains(parent: Incident, child: Incident) -> bool:
    """True when the table says ``parent``'s (kind, cause) explains ``child``'s.

    Scope, time and coverage are the correlator's part (module docstring).
    """
    return explains_cause(parent, child.kind, child.cause, child.scope)


def explains_cause(parent: Incident, kind: str, cause: str, scope: str) -> bool:
    """:func:`explains` for a child not opened yet: its (kind, cause) and scope."""
    if parent.scope == "merchant":
        return (scope == "terminal" and kind == parent.kind
                and cause_family(kind, cause) == cause_family(parent.kind, parent.cause))
    if parent.scope in ("group", "fleet"):
        return (kind, cause) in UPSTREAM_EXPLAINS.get((parent.kind, parent.cause), frozenset())
    return False


__all__ = ["FAMILIES", "UPSTREAM_EXPLAINS", "cause_family", "explains", "explains_cause"]
