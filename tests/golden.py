"""Replay a golden scenario through the pure Engine and judge it with the shared score.py.

The scenarios (tests/data/NAME.jsonl, copies of ../shared/scenarios) are fed the way
tools/replay.py feeds a broker, without the broker: every ``ts`` / ``credited_at``
becomes start + ``at_ms``, the message is decoded by the daemon's own Decoder, and
``received_at`` is start + ``at_ms``. ``Engine.tick`` runs every sweep period in between.

One broker fact is reproduced on purpose: a message published with the retain flag is
delivered to a subscriber that is already connected *without* it (MQTT 3.1.1 §3.3.1.3,
MQTT 5 with Retain As Published off). Retained delivery only happens on (re)subscribe,
so a Last Will published during the run arrives as live news.

The incidents are rebuilt from the IncidentWrite effects into the API's shape (RFC 3339
times, start = ``START_MS``) and judged with the functions of shared/tools/score.py, found
at $FLEETWATCH_SHARED, else in ../shared beside the repository (where CI has it). Neither
is an error with the places tried, never a skip: a judge that is not there judges nothing.
This project's own scenarios add expectations score.py does not know (:func:`check_extra`).
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec

from fleetwatch.config import DetectSettings, SettlementSettings
from fleetwatch.core.decode import Decoder, Rejection
from fleetwatch.core.engine import Engine
from fleetwatch.core.messages import Envelope, Heartbeat, StateMsg, TxnResult
from fleetwatch.core.model import Effect, Incident, IncidentWrite

DATA = Path(__file__).resolve().parent / "data"
START_MS = 1_795_447_000_000
"""Replay start (epoch ms): a fixed, realistic wall-clock time."""
PREFIX = "fleet/v1"
SCENARIOS = ("decline-storm", "printer-lifecycle", "reader-wear", "offline-and-flap", "host-outage",
             "settlement-day")
"""The shared scenarios (../shared/scenarios), judged by score.py alone."""
OWN_SCENARIOS = ("outage-bystanders", "dark-shop-tls", "intermittent-link", "busy-burst", "tamper-later-batches")
"""This project's own scenarios (tests/scenario_streams.py), judged by score.py and check_extra."""


SHARED_ENV = "FLEETWATCH_SHARED"


def shared_dir() -> Path:
    """The shared design/tools directory: $FLEETWATCH_SHARED when set, else ../shared beside the repo.

    FileNotFoundError naming what was tried when it holds no tools/score.py and tools/replay.py.
    """
    configured = os.environ.get(SHARED_ENV)
    where = Path(configured) if configured else Path(__file__).resolve().parents[2] / "shared"
    missing = [name for name in ("score.py", "replay.py") if not (where / "tools" / name).is_file()]
    if missing:
        told = f"${SHARED_ENV}={configured}" if configured else f"{where} (beside the repository; ${SHARED_ENV} unset)"
        raise FileNotFoundError(
            f"the shared tools are not in {told}: missing tools/{', tools/'.join(missing)}. "
            f"Set ${SHARED_ENV} to the shared/ directory holding tools/score.py and tools/replay.py."
        )
    return where


def load_score() -> ModuleType:
    """Import shared/tools/score.py as a module (it is a script, not a package)."""
    path = shared_dir() / "tools" / "score.py"
    spec = importlib.util.spec_from_file_location("fleetwatch_shared_score", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Scenario:
    name: str
    head: dict[str, Any]
    events: list[dict[str, Any]]
    expect: dict[str, Any]

    @property
    def duration_ms(self) -> int:
        return int(self.head["duration_ms"])


def load(name: str) -> Scenario:
    """Read tests/data/NAME.jsonl and NAME.expect.json."""
    with (DATA / f"{name}.jsonl").open(encoding="utf-8") as f:
        head = json.loads(f.readline())
        events = [json.loads(line) for line in f if line.strip()]
    expect = json.loads((DATA / f"{name}.expect.json").read_text(encoding="utf-8"))
    return Scenario(name, head, events, expect)


def settings_for(sc: Scenario) -> tuple[DetectSettings, SettlementSettings]:
    """The scenario's ``config`` over the defaults (every other constant scales with the interval)."""
    cfg = sc.head.get("config", {})
    return DetectSettings(**cfg.get("detect", {})), SettlementSettings(**cfg.get("settlement", {}))


@dataclass
class Run:
    scenario: Scenario
    incidents: dict[str, Incident] = field(default_factory=dict)
    writes: list[IncidentWrite] = field(default_factory=list)
    effects: int = 0

    def take(self, effects: list[Effect]) -> None:
        self.effects += len(effects)
        for e in effects:
            if isinstance(e, IncidentWrite):
                self.writes.append(e)
                self.incidents[e.incident.id] = e.incident

    def api_items(self) -> list[dict[str, Any]]:
        """Incidents as GET /api/v1/incidents would serve them."""
        return [api_shape(i) for i in self.incidents.values()]


def rfc3339(t: float | None) -> str | None:
    """Epoch seconds -> RFC 3339 UTC with milliseconds."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def api_shape(i: Incident) -> dict[str, Any]:
    return {
        "id": i.id, "kind": i.kind, "cause": i.cause, "scope": i.scope, "terminal_id": i.terminal_id,
        "merchant_id": i.merchant_id, "group": i.group, "severity": i.severity, "status": i.status,
        "opened_at": rfc3339(i.opened_at), "updated_at": rfc3339(i.updated_at),
        "resolved_at": rfc3339(i.resolved_at), "summary": i.summary, "parent_id": i.parent_id,
        "suppressed": i.suppressed, "previous_id": i.previous_id, "evidence": i.evidence,
    }


def replay(sc: Scenario, *, start_ms: int = START_MS) -> Run:
    """Feed the scenario through a fresh Engine with ticks every sweep period."""
    detect, settle = settings_for(sc)
    engine = Engine(detect, settle)
    run = Run(sc)
    start = start_ms / 1000
    engine.restore([], [], [], [], start)
    decoder = Decoder(PREFIX)
    sweep = detect.intervals(detect.sweep_intervals)
    next_tick = start + sweep
    for ev in sc.events:
        at = start + ev["at_ms"] / 1000
        while next_tick <= at:
            run.take(engine.tick(next_tick))
            next_tick += sweep
        payload = dict(ev["payload"])
        for key in ("ts", "credited_at"):
            if key in payload:
                payload[key] = start_ms + ev["at_ms"]
        raw = json.dumps(payload, separators=(",", ":")).encode()
        env = decoder.decode(ev["topic"], raw, at, False)  # live delivery: retain flag cleared
        assert not isinstance(env, Rejection), (ev, env)
        run.take(engine.apply(env))
    end = start + sc.duration_ms / 1000
    while next_tick <= end:
        run.take(engine.tick(next_tick))
        next_tick += sweep
    return run


def judge(run: Run, *, start_ms: int = START_MS) -> list[str]:
    """score.py's verdicts for the run; an empty list means every expectation passed."""
    score = load_score()
    end = start_ms + run.scenario.duration_ms
    items = [i for i in run.api_items() if (score.ms(i.get("opened_at")) or 0) <= end]
    failures = []
    for e in run.scenario.expect["incidents"]:
        why = score.check_expected(items, e, start_ms)
        if why is not None:
            failures.append(f"{json.dumps(e)}: {why}")
    for f in run.scenario.expect["forbidden"]:
        why = score.check_forbidden(items, f, start_ms)
        if why is not None:
            failures.append(f"forbidden {json.dumps(f)}: {why}")
    return failures + check_extra(items, run.scenario.expect, start_ms)


# ---- expectations score.py does not know --------------------------------------------------

_EXTRA_MATCH = ("terminal_id", "merchant_id", "kind", "cause", "scope", "group")


def _ms(stamp: str | None) -> float | None:
    if not stamp:
        return None
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000


def _brief(item: dict[str, Any] | None) -> str | None:
    if item is None:
        return None
    who = item.get("terminal_id") or item.get("merchant_id") or item.get("group") or ""
    return f"{item['scope']} {who} {item['kind']}/{item['cause']} opened {item['opened_at']}"


def _matches(item: dict[str, Any], want: dict[str, Any]) -> bool:
    return all(item.get(k) == want[k] for k in _EXTRA_MATCH if k in want and want[k] != "*")


def check_extra(items: list[dict[str, Any]], expect: dict[str, Any], start_ms: float) -> list[str]:
    """The expectations of this project's scenarios that score.py ignores (it reads only its own keys).

    In ``incidents`` entries: ``merchant_id`` and ``group`` narrow the match (and some incident
    must match); ``parent: null`` means every match has no parent and is not suppressed (it is
    paged); ``parent: {...}`` means every match is suppressed under an incident with those
    fields; ``open_at_ms`` means some match is open at start + that. ``forbidden_extra``
    entries forbid any incident matching all their keys.

    ``items`` are the incidents opened before the stream ended (score.py's rule). A parent that
    is not among them opened after the end, when every terminal falls silent (a shop whose
    last terminal goes quiet then becomes a merchant incident over one that went quiet long
    before): it says nothing about the scenario, and ``parent: null`` does not count it.
    """
    failures: list[str] = []
    by_id = {i["id"]: i for i in items}
    for e in expect.get("incidents", []):
        found = [i for i in items if _matches(i, e)]
        label = json.dumps(e)
        if not found:
            if any(k in e for k in ("merchant_id", "group", "parent", "open_at_ms")):
                failures.append(f"{label}: no such incident")
            continue
        if "parent" in e:
            want = e["parent"]
            for i in found:
                parent = by_id.get(i.get("parent_id") or "")
                if want is None:
                    if parent is not None:
                        failures.append(f"{label}: {i['id']} has parent {_brief(parent) or i.get('parent_id')} "
                                        f"(suppressed={i.get('suppressed')}), must stand alone")
                    continue
                if parent is None or not i.get("suppressed") or not _matches(parent, want):
                    failures.append(f"{label}: {i['id']} parent {_brief(parent) or i.get('parent_id')} "
                                    f"suppressed={i.get('suppressed')}")
        if "open_at_ms" in e:
            at = start_ms + e["open_at_ms"]
            if not any((_ms(i["opened_at"]) or 1e18) <= at and ((_ms(i.get("resolved_at")) or 1e18) > at)
                       for i in found):
                failures.append(f"{label}: not open at {e['open_at_ms']} ms")
    for f in expect.get("forbidden_extra", []):
        bad = [i for i in items if _matches(i, f)]
        if bad:
            failures.append(f"forbidden_extra {json.dumps(f)}: {[(i['scope'], i['kind'], i['cause']) for i in bad]}")
    return failures


if __name__ == "__main__":  # pragma: no cover - a developer's quick look
    import sys

    for name in sys.argv[1:] or SCENARIOS + OWN_SCENARIOS:
        r = replay(load(name))
        fails = judge(r)
        print(f"{name}: {len(r.incidents)} incidents, {fails if fails else 'ok'}")
        for i in sorted(r.incidents.values(), key=lambda x: x.opened_at):
            o = i.opened_at - START_MS / 1000
            res = None if i.resolved_at is None else round(i.resolved_at - START_MS / 1000, 2)
            print(f"   {o:7.2f} {res} {i.scope:8} {i.terminal_id or i.merchant_id or i.group} "
                  f"{i.kind}/{i.cause} {i.severity} parent={bool(i.parent_id)} supp={i.suppressed}")


# ---- message builders for the pure tests ------------------------------------------------

def heartbeat_env(terminal_id: str, at: float, seq: int, *, merchant_id: str = "M1", **fields: Any) -> Envelope:
    """A healthy heartbeat Envelope received at ``at``; keyword fields override the payload."""

    payload: dict[str, Any] = {
        "v": 1, "terminal_id": terminal_id, "merchant_id": merchant_id, "ts": int(at * 1000), "seq": seq,
        "model": "A920", "serial": "S-" + terminal_id, "fw": "2.4.1", "app": "pay-3.1.0",
        "uptime_s": 3600 + seq, "power": {"battery_pct": 80, "charging": False},
        "net": {"type": "4g", "rssi_dbm": -70, "host_rtt_ms": 110, "host_reachable": True},
        "printer": "ok", "reader": {"chip": "ok", "msr": "ok", "ctls": "ok"},
        "saf": {"pending": 0, "oldest_ts": None}, "tamper": False,
    }
    payload.update(fields)
    return Envelope("heartbeat", msgspec.convert(payload, Heartbeat), at)


def txn_env(terminal_id: str, at: float, txn_id: str, *, merchant_id: str = "M1", **fields: Any) -> Envelope:
    """An approved chip sale Envelope; keyword fields override the payload."""

    payload: dict[str, Any] = {
        "v": 1, "terminal_id": terminal_id, "merchant_id": merchant_id, "ts": int(at * 1000),
        "txn_id": txn_id, "batch_no": 1, "type": "sale", "amount_minor": 1000, "currency": "CNY",
        "entry": "chip", "card_ref": "c-" + txn_id, "outcome": "approved", "rc": "00",
    }
    payload.update(fields)
    return Envelope("txn", msgspec.convert(payload, TxnResult), at)


def state_env(terminal_id: str, at: float, state: str, *, retained: bool = False) -> Envelope:
    """A State Envelope (birth, clean shutdown or Last Will)."""
    msg = StateMsg(v=1, terminal_id=terminal_id, state=state, ts=int(at * 1000))  # type: ignore[arg-type]
    return Envelope("state", msg, at, retained=retained)
