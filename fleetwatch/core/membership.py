"""Which terminals each open upstream incident is built on (CONTRACT §5 "What a merchant sees").

A host outage is opened from the terminals whose transactions failed host-side, but
only some of them ever get an incident of their own: a terminal that got rc 91 twice
opens nothing, yet its shop cannot take cards and must be told that it is the bank.
So for every open upstream (group or fleet ``host_outage``) this book keeps the set of
terminals it is built on: those in its correlation window when it opened, and every
terminal of its scope that fails the same way while it is open. Additions are handed
out as :class:`~fleetwatch.core.model.UpstreamMembersWrite` effects, so the store keeps
them (the merchant page reads them) and a restart resumes them.

It only *reads* the correlator (its open upstreams and windows); deciding upstreams
stays there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from fleetwatch.core.model import Incident, UpstreamMembersWrite


class _Window(Protocol):
    def members(self, label: str) -> list[str]: ...


class _Upstream(Protocol):
    @property
    def label(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def cause(self) -> str: ...


class _Correlation(Protocol):
    """What the book reads of the correlator."""

    @property
    def upstreams(self) -> Mapping[str, _Upstream]: ...
    @property
    def host(self) -> _Window: ...
    @property
    def offline(self) -> _Window: ...


class _Incidents(Protocol):
    def open_at(self, key: str) -> Incident | None: ...


class UpstreamMembers:
    """Open upstream incident id -> its terminals (with their merchants), and what is new."""

    def __init__(self) -> None:
        self._members: dict[str, set[str]] = {}
        self._by_label: dict[tuple[str, str], str] = {}
        """(label, cause) of an open upstream -> its incident id."""
        self._new: dict[str, list[tuple[str, str | None]]] = {}

    def restore(self, members: Mapping[str, Iterable[str]]) -> None:
        """The stored members of the open upstreams (from ``load_open_upstream_members``)."""
        for incident_id, tids in members.items():
            self._members.setdefault(incident_id, set()).update(tids)

    def members(self, incident_id: str) -> set[str]:
        return self._members.get(incident_id, set())

    def sync(self, corr: _Correlation, book: _Incidents, merchant_of: Callable[[str], str | None]) -> None:
        """Follow the correlator's open upstreams: seed new ones from their window, drop gone ones."""
        live: dict[tuple[str, str], str] = {}
        for label, up in corr.upstreams.items():
            inc = book.open_at(up.key)
            if inc is None:
                continue
            live[(label, up.cause)] = inc.id
            if (label, up.cause) in self._by_label and self._by_label[(label, up.cause)] == inc.id:
                continue
            window = corr.host if up.cause == "host_errors" else corr.offline
            for tid in window.members(label):
                self._add(inc.id, tid, merchant_of(tid))
        for gone in set(self._by_label.values()) - set(live.values()):
            self._members.pop(gone, None)
        self._by_label = live

    def failed(self, cause: str, tid: str, merchant_id: str | None, labels: Iterable[str]) -> None:
        """A terminal failed host-side (``host_errors``) or went offline (``offline_wave``)."""
        if not self._by_label:
            return
        for label in labels:
            incident_id = self._by_label.get((label, cause))
            if incident_id is not None:
                self._add(incident_id, tid, merchant_id)

    def take(self, at: float) -> list[UpstreamMembersWrite]:
        """The additions since the last call, one write per upstream."""
        if not self._new:
            return []
        new, self._new = self._new, {}
        return [UpstreamMembersWrite(iid, tuple(rows), at) for iid, rows in new.items()]

    def _add(self, incident_id: str, tid: str, merchant_id: str | None) -> None:
        members = self._members.setdefault(incident_id, set())
        if tid not in members:
            members.add(tid)
            self._new.setdefault(incident_id, []).append((tid, merchant_id))
