"""FleetSnapshot: an immutable picture of the fleet for /metrics.

The pipeline swaps one in about once a second; the metrics collector only ever reads
a snapshot, never live engine state. Label sets are bounded: terminals are counted by
(state, model) with the model bounded to the most common ``MAX_MODELS`` and the rest as
``other``; no terminal, merchant or incident id appears anywhere in it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from fleetwatch.core.model import Incident

MAX_MODELS: Final = 20
OTHER: Final = "other"
UNKNOWN_MODEL: Final = "unknown"


@dataclass(frozen=True, slots=True)
class FleetSnapshot:
    """Counts at one instant; every mapping is read-only."""

    at: float
    terminals: Mapping[tuple[str, str], int] = field(default_factory=dict)
    """(state, model) -> terminals; state one of online offline shutdown maintenance."""
    incidents_open: Mapping[tuple[str, str, str], int] = field(default_factory=dict)
    """(kind, severity, scope) -> open incidents (acknowledged included)."""
    incidents_pageable: Mapping[tuple[str, str, str], int] = field(default_factory=dict)
    """(kind, severity, scope) -> open incidents that are not suppressed by a parent."""
    unsettled_minor: Mapping[tuple[str, str], int] = field(default_factory=dict)
    """(currency, cause) -> money in open settlement gaps, minor units."""
    oldest_unsettled_age_s: Mapping[str, float] = field(default_factory=dict)
    gaps_open: Mapping[str, int] = field(default_factory=dict)
    open_batches: int = 0


def bound_models(counts: Mapping[tuple[str, str | None], int], limit: int = MAX_MODELS) -> dict[tuple[str, str], int]:
    """Fold (state, model) counts so at most ``limit`` models appear, the rest as ``other``."""
    per_model: Counter[str] = Counter()
    for (_, model), n in counts.items():
        per_model[model or UNKNOWN_MODEL] += n
    keep = {m for m, _ in sorted(per_model.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]}
    out: Counter[tuple[str, str]] = Counter()
    for (state, model), n in counts.items():
        name = model or UNKNOWN_MODEL
        if n:
            out[(state, name if name in keep else OTHER)] += n
    return dict(out)


def incident_counts(
    incidents: Iterable[Incident],
) -> tuple[dict[tuple[str, str, str], int], dict[tuple[str, str, str], int]]:
    """(open, pageable) counts by (kind, severity, scope)."""
    open_: Counter[tuple[str, str, str]] = Counter()
    pageable: Counter[tuple[str, str, str]] = Counter()
    for inc in incidents:
        k = (inc.kind, inc.severity, inc.scope)
        open_[k] += 1
        if inc.is_pageable:
            pageable[k] += 1
    return dict(open_), dict(pageable)


def freeze(m: Mapping[object, object]) -> Mapping[object, object]:
    """A read-only view of a fresh copy."""
    return MappingProxyType(dict(m))
