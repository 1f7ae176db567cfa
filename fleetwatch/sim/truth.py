"""Ground truth: one JSON line per injected fault, the answer key ``fleetwatch score`` uses.

A record says what the simulator broke, where, from when, and whether a correct daemon
must open an incident for it (``expect_incident``) or must open nothing (decline
storms and garbage are outcomes and noise, not faults: FAILURES.md, first rule).
Times are epoch seconds of the wall clock, the same clock the daemon stamps
``opened_at`` with, so detection latency is simply ``opened_at - at``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import msgspec


@dataclass(frozen=True, slots=True)
class Truth:
    """One injected fault.

    ``what`` is the incident kind a daemon should open (``reader``, ``printer``, ...)
    or, for must-not faults, the name of the noise (``decline_storm``, ``garbage``).
    ``scope`` is ``terminal``, ``merchant``, ``group`` or ``fleet``; ``group`` holds the
    group object for group scope (``{"model": "A920", "fw": "2.4.1"}``).
    """

    what: str
    cause: str | None
    at: float
    until: float | None
    expect_incident: bool
    scope: str = "terminal"
    terminal_id: str | None = None
    merchant_id: str | None = None
    group: dict[str, str] | None = None
    terminals: list[str] | None = None
    """For merchant/group/fleet faults: the terminals it touched (for must-not matching)."""
    batch_no: int | None = None
    currency: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The JSONL shape: empty optional keys are left out, ``until`` is always present."""
        out = {k: v for k, v in asdict(self).items() if v not in (None, {}, [])}
        out["until"] = self.until
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Truth:
        """Read one record back (unknown keys are ignored, for forward compatibility)."""
        known = {k: obj[k] for k in cls.__dataclass_fields__ if k in obj}
        known.setdefault("cause", None)
        known.setdefault("until", None)
        return cls(**known)


class TruthWriter:
    """Appends records to a JSONL file, flushed at once so a killed run keeps its key."""

    def __init__(self, path: str | Path | None) -> None:
        self.records: list[Truth] = []
        self._fh: IO[bytes] | None = open(path, "wb") if path else None  # noqa: SIM115 - closed in close()

    def write(self, record: Truth) -> None:
        self.records.append(record)
        if self._fh is not None:
            self._fh.write(msgspec.json.encode(record.to_json()) + b"\n")
            self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def read_truth(path: str | Path) -> list[Truth]:
    """Load a ground-truth JSONL file (blank lines are skipped)."""
    out = []
    for line in Path(path).read_bytes().splitlines():
        if line.strip():
            out.append(Truth.from_json(msgspec.json.decode(line)))
    return out
