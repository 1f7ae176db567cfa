"""Fault injection from a scenario file (TOML), with the ground truth each fault implies.

A scenario is a list of ``[[fault]]`` tables. Times are in **heartbeat intervals**
from the start of the run, the unit the daemon judges in (CONTRACT.md §2), so one
scenario file works for a fleet beating every second and one beating every minute::

    [[fault]]
    kind = "paper_out"   # see HANDLERS for every kind
    at = 10              # intervals after start
    for = 20             # intervals; absent: until the run ends
    terminals = 2        # how many (picked by --seed), or a list of terminal ids

A fault only changes the model's state (``Terminal`` fields); the symptoms then come
out of the ordinary message generators. Each target is used by at most one fault, so
the answer key stays unambiguous when ``fleetwatch score`` matches incidents to it.
"""

from __future__ import annotations

import random
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from fleetwatch.sim import garbage
from fleetwatch.sim.fleet import Outgoing, Terminal
from fleetwatch.sim.truth import Truth


class ScenarioError(ValueError):
    """The scenario file cannot be used (bad TOML, unknown kind, impossible selection)."""


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """One ``[[fault]]`` table, validated."""

    kind: str
    at: float
    duration: float | None = None
    count: int = 1
    terminal_ids: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)


class SimContext(Protocol):
    """What a fault may do to a running simulation (the runner implements it)."""

    rng: random.Random
    terminals: list[Terminal]
    interval: float
    start: float

    def now(self) -> float: ...
    def emit(self, out: Outgoing) -> None: ...
    def schedule(self, at: float, action: Callable[[], None]) -> None: ...
    def link_down(self, t: Terminal) -> None: ...
    def link_up(self, t: Terminal) -> None: ...
    def stop_pinging(self, t: Terminal) -> None: ...
    def reboot(self, t: Terminal) -> None: ...
    def truth(self, record: Truth) -> None: ...
    def garbage(self, t: Terminal, other: Terminal, kind: str) -> None: ...


def load_scenario(path: str | Path) -> list[FaultSpec]:
    """Parse and validate a scenario file."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError(f"cannot read scenario {path}: {exc}") from exc
    return parse_scenario(data)


def parse_scenario(data: dict[str, Any]) -> list[FaultSpec]:
    """Validate the ``[[fault]]`` tables of an already parsed scenario."""
    specs = []
    for i, raw in enumerate(data.get("fault", [])):
        where = f"fault #{i + 1}"
        table = dict(raw)
        kind = table.pop("kind", None)
        if kind not in HANDLERS:
            raise ScenarioError(f"{where}: unknown kind {kind!r}; known: {', '.join(sorted(HANDLERS))}")
        at = table.pop("at", None)
        if not isinstance(at, int | float) or at < 0:
            raise ScenarioError(f"{where}: 'at' (intervals after start) must be a number >= 0")
        duration = table.pop("for", None)
        if duration is not None and (not isinstance(duration, int | float) or duration <= 0):
            raise ScenarioError(f"{where}: 'for' must be a positive number of intervals")
        terms = table.pop("terminals", 1)
        if isinstance(terms, int) and terms >= 1:
            count, ids = terms, ()
        elif isinstance(terms, list) and terms and all(isinstance(x, str) for x in terms):
            count, ids = len(terms), tuple(terms)
        else:
            raise ScenarioError(f"{where}: 'terminals' must be a count >= 1 or a list of terminal ids")
        length = None if duration is None else float(duration)
        specs.append(FaultSpec(kind, float(at), length, count, ids, table))
    return specs


class Injector:
    """Resolves each fault's targets and schedules its start (and end) in a running simulation."""

    def __init__(self, specs: list[FaultSpec], ctx: SimContext) -> None:
        self.specs = specs
        self.ctx = ctx
        self.used: set[int] = set()

    def install(self) -> None:
        """Schedule every fault; targets are picked now, so a seed fixes them."""
        for spec in self.specs:
            at = self.ctx.start + spec.at * self.ctx.interval
            until = None if spec.duration is None else at + spec.duration * self.ctx.interval
            HANDLERS[spec.kind](self, spec, at, until)

    def pick(
        self, spec: FaultSpec, pool: list[Terminal] | None = None, count: int | None = None
    ) -> list[Terminal]:
        """Terminals for a fault: the named ones, or ``count`` unused ones from ``pool``."""
        by_id = {t.terminal_id: t for t in self.ctx.terminals}
        if spec.terminal_ids:
            missing = [x for x in spec.terminal_ids if x not in by_id]
            if missing:
                raise ScenarioError(f"{spec.kind}: no such terminals {missing}")
            chosen = [by_id[x] for x in spec.terminal_ids]
        else:
            free = [t for t in (pool if pool is not None else self.ctx.terminals) if t.index not in self.used]
            want = spec.count if count is None else count
            if len(free) < want:
                raise ScenarioError(f"{spec.kind}: wants {want} terminals, only {len(free)} unused")
            chosen = self.ctx.rng.sample(free, want)
        self.used.update(t.index for t in chosen)
        return chosen

    def window(
        self, at: float, until: float | None, start: Callable[[], None], stop: Callable[[], None]
    ) -> None:
        """Run ``start`` at ``at`` and ``stop`` at ``until`` (never, if open-ended)."""
        self.ctx.schedule(at, start)
        if until is not None:
            self.ctx.schedule(until, stop)

    def attempts(self, spec: FaultSpec) -> float:
        """Payment attempts per second while a fault makes cashiers retry (``rate`` per interval)."""
        return float(spec.params.get("rate", 2)) / self.ctx.interval


def _truth(t: Terminal, what: str, cause: str, at: float, until: float | None, **extra: Any) -> Truth:
    return Truth(what=what, cause=cause, at=at, until=until, expect_incident=True, scope="terminal",
                 terminal_id=t.terminal_id, merchant_id=t.merchant_id, **extra)


def _printer_state(inj: Injector, spec: FaultSpec, at: float, until: float | None, state: str) -> None:
    for t in inj.pick(spec, [t for t in inj.ctx.terminals if t.kit.printer]):
        inj.ctx.truth(_truth(t, "printer", state, at, until))

        def start(t: Terminal = t) -> None:
            t.printer = state

        def stop(t: Terminal = t) -> None:
            t.printer = "ok"

        inj.window(at, until, start, stop)


def paper_out(inj: Injector, spec: FaultSpec, at: float, until: float | None) -> None:
    """Paper runs low (``low_for`` intervals, default 3), then out; refilled at the end."""
    low_for = float(spec.params.get("low_for", 3)) * inj.ctx.interval
    for t in inj.pick(spec, [t for t in inj.ctx.terminals if t.kit.printer]):
        inj.ctx.truth(_truth(t, "printer", "no_paper", at, until, detail={"paper_low_until": at + low_for}))

        def low(t: Terminal = t) -> None:
            t.printer = "paper_low"

        def out(t: Terminal = t) -> None:
            if t.printer == "paper_low":
                t.printer = "no_paper"

        def refill(t: Terminal = t) -> None:
            t.printer = "ok"

        inj.window(at, until, low, refill)
        inj.ctx.schedule(at + low_for, out)


def jam(inj: Injector, spec: FaultSpec, at: float, until: float | None) -> None:
    """A paper jam, cleared at the end."""
    _printer_state(inj, spec, at, until, "jam")


def printer(inj: Injector, spec: FaultSpec, at: float, until: float | None) -> None:
    """Any printer state (``state`` = cover_open, overheat, fault, ...)."""
    state = str(spec.params.get("state", "fault"))
    if state not in ("no_paper", "jam", "cover_open", "overheat", "fault"):
        raise ScenarioError(f"printer: state {state!r} is not an incident-worthy printer state")
    _printer_state(inj, spec, at, until, state)


def reader_wear(inj: Injector, spec: FaultSpec, at: float, until: float | None) -> None:
    """The chip reader wears: read failures over distinct cards climb to ``max`` (default 0.6)."""
    top = float(spec.params.get("max", 0.6))
    ramp = float(spec.params.get("ramp", 10)) * inj.ctx.interval
    for t in inj.pick(spec):
        inj.ctx.truth(_truth(t, "reader", "read_failures", at, until))
        steps = 10
        for k in range(1, steps + 1):
            def wear(t: Terminal = t, level: float = top * k / steps) -> None:
                t.reader_wear = level
                t.min_attempt_rate = inj.attempts(spec)
            inj.ctx.schedule(at + ramp * (k - 1) / steps, wear)
        if until is not None:
            def fixed(t: Terminal = t) -> None:
                t.reader_wear, t.min_attempt_rate = 0.0, 0.0
            inj.ctx.schedule(until, fixed)


def reader_fault(inj: Injector, spec: FaultSpec, at: float, until: float | None) -> None:
    """The reader's self-test fails (``reader.chip = fault`` in heartbeats)."""
    for t in inj.pick(spec):
        inj.ctx.truth(_truth(t, "reader", "self_test", at, until))

        def start(t: Terminal = t) -> None:
            t.reader_chip = "fault"

        def stop(t: Terminal = t) -> None:
            t.reader_chip = "ok"

        inj.window(at, until, start, stop)


def tamper(inj: Injector, spec: FaultSpec, at: float, until: float | None) -> None:
    """The tamper switch trips (the case was opened)."""
    for t in inj.pick(spec):
        inj.ctx.truth(_truth(t, "tamper", "tamper", at, until))

        def start(t: Terminal = t) -> None:
            t.tamper = True

        def stop(t: Terminal = t) -> None:
            t.tamper = False

        inj.window(at, until, start, stop)


def silence(inj: Injector, spec: FaultSpec, at: float, until: float | None) -> None:
    """The terminal goes quiet (power loss, frozen app): nothing sent, keepalive pings stop.

    With its own connection, the broker fires the Last Will once the keepalive lapses,
    as it would for a dead device.
    """
    for t in inj.pick(spec):
        inj.ctx.truth(_truth(t, "network", "offline", at, until))

        def start(t: Terminal = t) -> None:
            t.silent = True
            inj.ctx.stop_pinging(t)

        def stop(t: Terminal = t) -> None:
            t.silent = False
            inj.ctx.link_up(t)

        inj.window(at, until, start, stop)


def link_flap(inj: Injector, spec: FaultSpec, at: float, until: float | None) -> None:
    """The link drops (the broker publishes the Will) and comes back, ``flaps`` times."""
    down = float(spec.params.get("down", 4)) * inj.ctx.interval
    up = float(spec.params.get("up", 2)) * inj.ctx.interval
    flaps = int(spec.params.get("flaps", 3))
    end = at + flaps * (down + up) - up
    for t in inj.pick(spec):
        inj.ctx.truth(_truth(t, "network", "offline", at, end, detail={"flaps": flaps}))
        for k in range(flaps):
            t0 = at + k * (down + up)
            inj.ctx.schedule(t0, partial(inj.ctx.link_down, t))
            inj.ctx.schedule(t0 + down, partial(inj.ctx.link_up, t))


def host_outage(inj: Injector, spec: FaultSpec, at: float, until: float | None) -> None:
    """The acquirer host fails for a ``share`` of the fleet (default 0.35): rc 91/96, timeouts."""
    share = float(spec.params.get("share", 0.35))
    if not 0 < share <= 1:
        raise ScenarioError("host_outage: share must be in (0, 1]")
    hit = inj.pick(spec, count=max(1, round(share * len(inj.ctx.terminals))))
    inj.ctx.truth(Truth(what="host_outage", cause="host_errors", at=at, until=until, expect_incident=True,
                        scope="fleet", detail={"share": share, "terminals": len(hit)}))
    rate = inj.attempts(spec)

    def start() -> None:
        for t in hit:
            t.host_fail, t.min_attempt_rate = 1.0, rate

    def stop() -> None:
        for t in hit:
            t.host_fail, t.min_attempt_rate = 0.0, 0.0

    inj.window(at, until, start, stop)


def cert_expiry(inj: Injector, spec: FaultSpec, at: float, until: float | None) -> None:
    """The host certificate pinned by one model+firmware expires: TLS errors after each reboot.

    Terminals of that kit reboot one by one over ``spread`` intervals (default 3) and
    every attempt after the reboot fails at stage ``tls``.
    """
    model = str(spec.params.get("model", "A920"))
    fw = str(spec.params.get("fw", "2.4.1"))
    hit = [t for t in inj.ctx.terminals
           if t.kit.model == model and t.kit.fw == fw and t.index not in inj.used]
    if not hit:
        raise ScenarioError(f"cert_expiry: no unused terminal runs {model} {fw}")
    inj.used.update(t.index for t in hit)
    inj.ctx.truth(Truth(what="host_outage", cause="host_errors", at=at, until=until, expect_incident=True,
                        scope="group", group={"model": model, "fw": fw}, detail={"terminals": len(hit)}))
    spread = float(spec.params.get("spread", 3)) * inj.ctx.interval
    rate = inj.attempts(spec)
    for t in hit:
        def broken(t: Terminal = t) -> None:
            inj.ctx.reboot(t)
            t.tls_fail, t.min_attempt_rate = True, rate

        inj.ctx.schedule(at + inj.ctx.rng.uniform(0, spread), broken)
        if until is not None:
            def renewed(t: Terminal = t) -> None:
                t.tls_fail, t.min_attempt_rate = False, 0.0
            inj.ctx.schedule(until, renewed)


def _flag(inj: Injector, spec: FaultSpec, window: tuple[float, float | None], name: str, *,
          on: Any, off: Any) -> None:
    """Set a settlement-fault flag on the targets for the window; the runner writes the truth."""
    for t in inj.pick(spec):
        inj.window(*window, partial(setattr, t, name, on), partial(setattr, t, name, off))


def batch_not_closed(inj: Injector, spec: FaultSpec, at: float, until: float | None) -> None:
    """The terminal misses its batch close(s) (off at auto-close); truth written at the skipped close."""
    _flag(inj, spec, (at, until), "skip_close", on=True, off=False)


def settled_short(inj: Injector, spec: FaultSpec, at: float, until: float | None) -> None:
    """The host settles the terminal's batches ``short_by`` minor units short (default 2350)."""
    _flag(inj, spec, (at, until), "settle_short", on=int(spec.params.get("short_by", 2350)), off=0)


def not_settled(inj: Injector, spec: FaultSpec, at: float, until: float | None) -> None:
    """The host never settles the terminal's batches closed in the window."""
    _flag(inj, spec, (at, until), "never_settle", on=True, off=False)


def decline_storm(inj: Injector, spec: FaultSpec, at: float, until: float | None) -> None:
    """A burst of cardholder declines at one merchant (``share`` of attempts, default 0.6).

    Not a fault: declines are the cardholder's or issuer's business. Must open nothing.
    """
    share = float(spec.params.get("share", 0.6))
    merchant = spec.params.get("merchant")
    if merchant is None:
        counts: dict[str, int] = {}
        for t in inj.ctx.terminals:
            counts[t.merchant_id] = counts.get(t.merchant_id, 0) + (t.index not in inj.used)
        merchant = max(sorted(counts), key=lambda m: counts[m])
    hit = [t for t in inj.ctx.terminals if t.merchant_id == merchant and t.index not in inj.used]
    if not hit:
        raise ScenarioError(f"decline_storm: merchant {merchant} has no unused terminal")
    inj.used.update(t.index for t in hit)
    inj.ctx.truth(Truth(what="decline_storm", cause="cardholder_declines", at=at, until=until,
                        expect_incident=False, scope="merchant", merchant_id=str(merchant),
                        terminals=[t.terminal_id for t in hit], detail={"share": share}))
    rate = inj.attempts(spec)

    def start() -> None:
        for t in hit:
            t.decline_share, t.min_attempt_rate = share, rate

    def stop() -> None:
        for t in hit:
            t.decline_share, t.min_attempt_rate = 0.0, 0.0

    inj.window(at, until, start, stop)


def garbage_fault(inj: Injector, spec: FaultSpec, at: float, until: float | None) -> None:
    """Invalid payloads (``kinds``, default all) on the targets' topics, one per ``every`` intervals.

    Must open nothing: not on the sending terminal, not on the one a spoof claims to be.
    """
    kinds = list(spec.params.get("kinds", sorted(garbage.GENERATORS)))
    unknown = [k for k in kinds if k not in garbage.GENERATORS]
    if unknown:
        raise ScenarioError(f"garbage: unknown kinds {unknown}; known: {sorted(garbage.GENERATORS)}")
    every = float(spec.params.get("every", 1)) * inj.ctx.interval
    stop_at = until if until is not None else at + 10 * inj.ctx.interval
    for t in inj.pick(spec):
        other = inj.pick(FaultSpec("garbage", at))[0]
        for kind in kinds:
            inj.ctx.truth(Truth(what="garbage", cause=kind, at=at, until=stop_at, expect_incident=False,
                                terminal_id=t.terminal_id, merchant_id=t.merchant_id,
                                terminals=[t.terminal_id, other.terminal_id]))
        n = max(1, int((stop_at - at) / every))
        for k in range(n):
            inj.ctx.schedule(at + k * every, partial(inj.ctx.garbage, t, other, kinds[k % len(kinds)]))


Handler = Callable[[Injector, FaultSpec, float, float | None], None]

HANDLERS: dict[str, Handler] = {
    "paper_out": paper_out,
    "jam": jam,
    "printer": printer,
    "reader_wear": reader_wear,
    "reader_fault": reader_fault,
    "tamper": tamper,
    "silence": silence,
    "link_flap": link_flap,
    "host_outage": host_outage,
    "cert_expiry": cert_expiry,
    "batch_not_closed": batch_not_closed,
    "settled_short": settled_short,
    "not_settled": not_settled,
    "decline_storm": decline_storm,
    "garbage": garbage_fault,
}
"""Every fault kind a scenario may name."""
