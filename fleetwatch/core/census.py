"""Who is there to fail: the fleet, group and merchant counts detection divides by.

A failing share needs a denominator. The correlator asks how many terminals of a group
are online ("20 of the 60 A920 2.4.1 fail TLS") and how many terminals a merchant has
("3 of the shop's 3 are offline"); the metrics snapshot asks how many terminals are in
each state per model. These counts change only when a terminal changes state, merchant,
model, firmware or link type, and the engine is the one that sees those changes. So
one object owns them: the engine tells the :class:`FleetCensus` what moved, and
everyone else only reads it. Nothing here walks the fleet: every update is a handful of
counter steps, and a read is a dictionary lookup.

The correlation groups of a terminal are its *labels* (:func:`group_labels`): the fleet,
its model, its model and firmware, its link type. A group incident names one of them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Final

from fleetwatch.core.model import group_json

FLEET: Final = "fleet"
"""The label every terminal has."""
ONLINE: Final = "online"
SHUTDOWN: Final = "shutdown"

_LABELS: dict[tuple[str | None, str | None, str | None], tuple[str, ...]] = {}


def group_labels(model: str | None, fw: str | None, net_type: str | None) -> tuple[str, ...]:
    """The correlation groups of a terminal: fleet, model, model+fw, net_type (memoised)."""
    k = (model, fw, net_type)
    labels = _LABELS.get(k)
    if labels is None:
        out = [FLEET]
        if model is not None:
            out.append(group_json({"model": model}) or "")
            if fw is not None:
                out.append(group_json({"model": model, "fw": fw}) or "")
        if net_type is not None:
            out.append(group_json({"net_type": net_type}) or "")
        labels = tuple(out)
        if len(_LABELS) < 100_000:
            _LABELS[k] = labels
    return labels


def label_of_group(group: Mapping[str, str] | None) -> str:
    """The label of a group incident's ``group`` object (None: the fleet)."""
    return FLEET if group is None else (group_json(dict(group)) or FLEET)


class FleetCensus:
    """Terminal counts by correlation label, by merchant and by (state, model).

    - ``active(label)``: online terminals with that label (the share's denominator for
      host errors and offline waves);
    - ``merchant_size(merchant)``: the merchant's terminals that are not shut down (a
      shop that switched one terminal off cleanly has one terminal fewer to judge);
    - ``tally``: terminals per (state, model) for ``fleetwatch_terminals``.
    """

    __slots__ = ("_active", "_merchants", "tally")

    def __init__(self) -> None:
        self._active: Counter[str] = Counter()
        self._merchants: Counter[str] = Counter()
        self.tally: Counter[tuple[str, str | None]] = Counter()

    # ---- reading -----------------------------------------------------------------------

    def active(self, label: str) -> int:
        """Online terminals with this correlation label."""
        return self._active.get(label, 0)

    def merchant_size(self, merchant_id: str) -> int:
        """The merchant's terminals that are not shut down."""
        return self._merchants.get(merchant_id, 0)

    # ---- what the engine tells it ------------------------------------------------------

    def joined(self, state: str, model: str | None, labels: tuple[str, ...], merchant_id: str | None) -> None:
        """A terminal appeared (first message, or loaded at start) in ``state``."""
        self.tally[(state, model)] += 1
        if state == ONLINE:
            self._active.update(labels)
        if state != SHUTDOWN and merchant_id is not None:
            self._merchants[merchant_id] += 1

    def joined_online_in_bulk(self, kits: Iterable[tuple[tuple[str, ...], int]]) -> None:
        """Online group counts for many terminals at once: ``(labels, how many)`` per kit.

        Restore of a million terminals adds the group counts once per kit rather than
        once per terminal; pair it with :meth:`joined_quietly` for each terminal.
        """
        for labels, n in kits:
            for label in labels:
                self._active[label] += n

    def joined_quietly(self, state: str, model: str | None, merchant_id: str | None) -> None:
        """:meth:`joined` without the group counts (given by :meth:`joined_online_in_bulk`)."""
        self.tally[(state, model)] += 1
        if state != SHUTDOWN and merchant_id is not None:
            self._merchants[merchant_id] += 1

    def state_changed(
        self, old: str, new: str, model: str | None, labels: tuple[str, ...], merchant_id: str | None,
    ) -> None:
        """A terminal went from ``old`` to ``new`` (online, offline, shutdown)."""
        if old == new:
            return
        self.tally[(old, model)] -= 1
        self.tally[(new, model)] += 1
        if old == ONLINE:
            self._active.subtract(labels)
        elif new == ONLINE:
            self._active.update(labels)
        if merchant_id is not None:
            if old == SHUTDOWN:
                self._merchants[merchant_id] += 1
            elif new == SHUTDOWN:
                self._merchants[merchant_id] -= 1

    def merchant_changed(self, state: str, old: str | None, new: str) -> None:
        """A terminal now reports another merchant."""
        if state == SHUTDOWN:
            return
        if old is not None:
            self._merchants[old] -= 1
        self._merchants[new] += 1

    def regrouped(
        self, state: str, old_model: str | None, old_labels: tuple[str, ...],
        new_model: str | None, new_labels: tuple[str, ...],
    ) -> None:
        """A terminal's model, firmware or link type changed: it moves between groups."""
        if state == ONLINE:
            self._active.subtract(old_labels)
            self._active.update(new_labels)
        self.tally[(state, old_model)] -= 1
        self.tally[(state, new_model)] += 1


__all__ = ["FLEET", "FleetCensus", "group_labels", "label_of_group"]
