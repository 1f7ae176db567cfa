"""docs/PERFORMANCE.md: one section per figure, rewritten in place by each run.

Each section sits between ``<!-- bench:KEY -->`` markers, so running one figure
updates its section and leaves the others (measured on another day, perhaps) alone.
Every section records the command that produced it and the date, so a reader can
rerun it rather than trust it.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

HEADER = """# Performance

Measured by `python -m bench ...` (bench/): a private Mosquitto on loopback, the daemon
as a subprocess, the publisher writing pre-encoded frames. Each section is rewritten by
the command shown in it; targets come from the project brief.
"""

ORDER = ("publisher", "ingest", "ratio", "hotpath", "stores", "memory", "latency", "restart", "restart_postgresql",
         "metrics", "memory_postgresql", "metrics_postgresql", "failover", "notice-page", "notice-ingest",
         "notice-outage")


@dataclass
class Figure:
    """One measured figure: rows of (what, value, target, ok)."""

    key: str
    title: str
    command: str
    rows: list[tuple[str, str, str, bool | None]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r[3] is not False for r in self.rows)

    def markdown(self, when: datetime | None = None) -> str:
        when = when or datetime.now(UTC)
        out = [f"## {self.title}", "",
               f"Command: `{self.command}` — {when:%Y-%m-%d %H:%M} UTC on {machine()}", "",
               "| measure | value | target | |", "|---|---|---|---|"]
        for what, value, target, ok in self.rows:
            mark = "" if ok is None else ("ok" if ok else "**MISSED**")
            out.append(f"| {what} | {value} | {target} | {mark} |")
        out += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(out).rstrip() + "\n"

    def table(self) -> str:
        """Plain text for the terminal."""
        lines = [self.title]
        for what, value, target, ok in self.rows:
            mark = "" if ok is None else ("ok" if ok else "MISSED")
            lines.append(f"  {what:<44} {value:>18}  {target:<14} {mark}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def machine() -> str:
    return f"{os.cpu_count()} CPUs, Python {platform.python_version()}"


def update(text: str, fig: Figure, when: datetime | None = None) -> str:
    """``text`` with ``fig``'s section replaced (or inserted in ``ORDER``)."""
    if not text.strip():
        text = HEADER
    begin, end = f"<!-- bench:{fig.key} -->", f"<!-- /bench:{fig.key} -->"
    block = f"{begin}\n{fig.markdown(when)}{end}\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.S)
    if pattern.search(text):
        return pattern.sub(lambda _m: block, text, count=1)
    rank = ORDER.index(fig.key) if fig.key in ORDER else len(ORDER)
    for later in ORDER[rank + 1 :]:
        pos = text.find(f"<!-- bench:{later} -->")
        if pos >= 0:
            return text[:pos] + block + "\n" + text[pos:]
    return text.rstrip("\n") + "\n\n" + block


def write(path: Path, fig: Figure) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    path.write_text(update(old, fig), encoding="utf-8")
