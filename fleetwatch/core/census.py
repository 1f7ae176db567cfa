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

What the census is told for each terminal is its *counted state*: its liveness (online,
offline, shutdown, closed_hours), ``suspended`` while the acquirer has suspended it, or
None while it is closed (a closed terminal has left the fleet: it counts nowhere). Only
online terminals are in the group denominators; only online and offline ones (the
terminals a shop is trading with now) in the merchant's size.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Final

from fleetwatch.core.model import group_json

FLEET: Final = "fleet"
"""The label every terminal has."""
ONLINE: Final = "online"
PRESENT: Final = frozenset({"online", "offline"})
"""Counted states in which a terminal counts toward its merchant's size: not shut down, not
closed for the night, not suspended or closed by the acquirer."""

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
    - ``merchant_size(merchant)``: the merchant's terminals that are online or offline (a
      shop that switched one terminal off cleanly, or whose terminal the acquirer closed,
      has one terminal fewer to judge);
    - ``tally``: terminals per (state, model) for ``fleetwatch_terminals``.

    A state of None (a closed terminal) counts nowhere.
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
        """The merchant's terminals that are online or offline."""
        return self._merchants.get(merchant_id, 0)

    # ---- what the engine tells it ------------------------------------------------------

    def joined(self, state: str | None, model: str | None, labels: tuple[str, ...], merchant_id: str | None) -> None:
        """A terminal appeared (first message, or loaded at start) in ``state``."""
        self.joined_quietly(state, model, merchant_id)
        if state == ONLINE:
            self._active.update(labels)

    def joined_online_in_bulk(self, kits: Iterable[tuple[tuple[str, ...], int]]) -> None:
        """Online group counts for many terminals at once: ``(labels, how many)`` per kit.

        Restore of a million terminals adds the group counts once per kit rather than
        once per terminal; pair it with :meth:`joined_quietly` for each terminal.
        """
        for labels, n in kits:
            for label in labels:
                self._active[label] += n

    def joined_quietly(self, state: str | None, model: str | None, merchant_id: str | None) -> None:
        """:meth:`joined` without the group counts (given by :meth:`joined_online_in_bulk`)."""
        if state is None:
            return
        self.tally[(state, model)] += 1
        if state in PRESENT and merchant_id is not None:
            self._merchants[merchant_id] += 1

    def state_changed(
        self, old: str | None, new: str | None, model: str | None, labels: tuple[str, ...], merchant_id: str | None,
    ) -> None:
        """A terminal's counted state went from ``old`` to ``new``."""
        if old == new:
            return
        if old is not None:
            self.tally[(old, model)] -= 1
        if new is not None:
            self.tally[(new, model)] += 1
        if old == ONLINE:
            self._active.subtract(labels)
        elif new == ONLINE:
            self._active.update(labels)
        if merchant_id is not None:
            was, now = old in PRESENT, new in PRESENT
            if was and not now:
                self._merchants[merchant_id] -= 1
            elif now and not was:
                self._merchants[merchant_id] += 1

    def merchant_changed(self, state: str | None, old: str | None, new: str) -> None:
        """A terminal now reports another merchant: both merchants' sizes are recounted."""
        if state not in PRESENT:
            return
        if old is not None:
            self._merchants[old] -= 1
        self._merchants[new] += 1

    def regrouped(
        self, state: str | None, old_model: str | None, old_labels: tuple[str, ...],
        new_model: str | None, new_labels: tuple[str, ...],
    ) -> None:
        """A terminal's model, firmware or link type changed: it moves between groups."""
        if state is None:
            return
        if state == ONLINE:
            self._active.subtract(old_labels)
            self._active.update(new_labels)
        self.tally[(state, old_model)] -= 1
        self.tally[(state, new_model)] += 1


__all__ = ["FLEET", "FleetCensus", "group_labels", "label_of_group"]
