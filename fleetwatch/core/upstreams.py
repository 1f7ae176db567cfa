"""The open upstream incidents and what each one is built on.

An upstream incident (a fleet- or group-scope ``host_outage``) stands for many terminals
failing together. Everything the daemon keeps about one of them lives in one
:class:`Upstream` record here: its correlation label and incident, the cause it opened
with, its peak and quiet period (for resolving it), and **the terminals whose failures
it is built on** — every terminal in its scope whose failures of its cause were counted
while it was open, including terminals that only got host response codes (rc 91/96)
and have no incident of their own. Their shops are affected too: merchant notices read
that set through :meth:`Upstreams.terminals_of`, and the store keeps it: each terminal
newly counted is handed out once by :meth:`Upstreams.take_fresh`.

The correlator opens, feeds and drops records; readers use the small query API.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final

HOST_ERRORS: Final = "host_errors"
OFFLINE_WAVE: Final = "offline_wave"


@dataclass(slots=True)
class Upstream:
    """One open upstream incident."""

    label: str
    """Its correlation label: ``fleet`` or a group's canonical JSON."""
    key: str
    incident_id: str
    cause: str
    """``host_errors`` or ``offline_wave``: the signal it opened on (it keeps it)."""
    opened_at: float
    peak: int = 0
    quiet_since: float | None = None
    members: set[str] = field(default_factory=set)
    """Every terminal whose failures it is built on (grows while it is open)."""
    still_offline: set[str] = field(default_factory=set)
    """``offline_wave``: the members that have not come back yet (they hold it open)."""


class Upstreams:
    """The open upstream records, by correlation label and by incident id."""

    __slots__ = ("_by_id", "_by_label", "_fresh")

    def __init__(self) -> None:
        self._by_label: dict[str, Upstream] = {}
        self._by_id: dict[str, Upstream] = {}
        self._fresh: list[tuple[str, str]] = []
        """(incident id, terminal id) counted since the last take_fresh()."""

    # ---- reading -----------------------------------------------------------------------

    def at(self, label: str) -> Upstream | None:
        """The open upstream of a correlation label."""
        return self._by_label.get(label)

    def of_incident(self, incident_id: str) -> Upstream | None:
        """The record of an open upstream incident."""
        return self._by_id.get(incident_id)

    def terminals_of(self, incident_id: str) -> frozenset[str]:
        """The terminals an open upstream incident is built on (empty when unknown)."""
        up = self._by_id.get(incident_id)
        return frozenset(up.members) if up is not None else frozenset()

    def any_open(self, cause: str) -> bool:
        """True while some upstream of this cause is open."""
        return any(u.cause == cause for u in self._by_label.values())

    def __iter__(self) -> Iterator[Upstream]:
        return iter(list(self._by_label.values()))

    def __len__(self) -> int:
        return len(self._by_label)

    # ---- the correlator's bookkeeping --------------------------------------------------

    def add(self, up: Upstream) -> Upstream:
        """Track a newly opened (or restored) upstream."""
        old = self._by_label.pop(up.label, None)
        if old is not None:
            self._by_id.pop(old.incident_id, None)
        self._by_label[up.label] = up
        self._by_id[up.incident_id] = up
        self._fresh.extend((up.incident_id, tid) for tid in up.members)
        return up

    def drop(self, up: Upstream) -> None:
        """Forget an upstream that resolved."""
        if self._by_label.get(up.label) is up:
            del self._by_label[up.label]
        if self._by_id.get(up.incident_id) is up:
            del self._by_id[up.incident_id]

    def drop_incident(self, incident_id: str) -> None:
        """Forget the upstream of an incident (resolved by an operator)."""
        up = self._by_id.get(incident_id)
        if up is not None:
            self.drop(up)

    def saw_failure(self, terminal_id: str, labels: Iterable[str], cause: str) -> None:
        """A terminal failed with ``cause``: the open upstreams of that cause in its scope count it."""
        if not self._by_label:
            return
        for label in labels:
            up = self._by_label.get(label)
            if up is not None and up.cause == cause:
                if terminal_id not in up.members:
                    up.members.add(terminal_id)
                    self._fresh.append((up.incident_id, terminal_id))
                if cause == OFFLINE_WAVE:
                    up.still_offline.add(terminal_id)

    def restore_members(self, incident_id: str, terminal_ids: Iterable[str]) -> None:
        """The stored members of a restored upstream (they are not fresh)."""
        up = self._by_id.get(incident_id)
        if up is not None:
            up.members.update(terminal_ids)

    def take_fresh(self) -> list[tuple[str, str]]:
        """The (incident id, terminal id) pairs counted since the last call."""
        fresh, self._fresh = self._fresh, []
        return fresh

    def saw_back(self, terminal_id: str) -> None:
        """A terminal spoke again: it no longer holds an offline wave open."""
        for up in self._by_label.values():
            up.still_offline.discard(terminal_id)


__all__ = ["HOST_ERRORS", "OFFLINE_WAVE", "Upstream", "Upstreams"]
