"""The terminals' screens: what each shows, published once per change, after the window (CONTRACT §5)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from typing import Any

from fleetwatch.adapters.catalogues import load_catalogues
from fleetwatch.core.catalogue import Context
from fleetwatch.core.engine import Engine
from fleetwatch.core.model import Incident, IncidentEvent, IncidentWrite, TerminalNoticeWrite
from fleetwatch.core.screens import ScreenUpdate, TerminalScreens
from tests.golden import load, replay

CATALOGUES = load_catalogues()
WINDOW = 5.0


def screens(lang: str = "zh-CN") -> TerminalScreens:
    return TerminalScreens(CATALOGUES[lang], Context(support_phone="95588"), WINDOW)


def write(i: Incident, at: float) -> IncidentWrite:
    return IncidentWrite(i, IncidentEvent(i.id, at, "updated"))


def incident(iid: str, kind: str, cause: str, *, scope: str = "terminal", tid: str = "T1", at: float = 0.0,
             **kw: Any) -> Incident:
    return Incident(id=iid, key=iid, kind=kind, cause=cause, scope=scope,  # type: ignore[arg-type]
                    severity=kw.pop("severity", "major"), status=kw.pop("status", "open"), opened_at=at,
                    updated_at=at, summary="", terminal_id=tid if scope == "terminal" else None,
                    merchant_id="M1" if scope in ("terminal", "merchant") else None, **kw)


def titles(updates: list[ScreenUpdate]) -> dict[str, list[str]]:
    return {u.terminal_id: [i["title"] for i in u.items] for u in updates}


def test_a_terminal_change_waits_one_correlation_window() -> None:
    """Paper out at t=0 reaches the screen at t=5, in one line with whose and the action."""
    s = screens()
    s.observe([write(incident("P", "printer", "no_paper"), 0.0)], 0.0)
    assert s.tick(4.9) == []
    [update] = s.tick(5.0)
    assert update.payload(5000) == {
        "v": 1, "terminal_id": "T1", "ts": 5000, "lang": "zh-CN",
        "items": [{"incident_id": "P", "severity": "major", "whose": "merchant", "title": "打印机缺纸",
                   "action": "打印纸用完，请换一卷57毫米热敏纸"}],
    }
    assert s.tick(6.0) == []


def test_a_child_adopted_within_the_window_shows_only_the_parent() -> None:
    """T1 goes offline, and 2 s later its shop's merchant incident adopts it: one publish, the shop's."""
    s = screens("en")
    child = incident("C", "network", "offline", at=0.0)
    s.observe([write(child, 0.0)], 0.0)
    assert s.tick(1.0) == []
    parent = incident("S", "network", "offline", scope="merchant", at=2.0)
    other = incident("C2", "network", "offline", tid="T2", at=2.0, parent_id="S", suppressed=True)
    s.observe([write(parent, 2.0), write(replace(child, parent_id="S", suppressed=True), 2.0),
               write(other, 2.0)], 2.0)
    assert titles(s.tick(2.25)) == {"T1": ["All terminals offline"], "T2": ["All terminals offline"]}
    assert s.tick(10.0) == []


def test_resolving_clears_the_screen_at_once_and_evidence_changes_nothing() -> None:
    s = screens()
    p = incident("P", "printer", "jam")
    s.observe([write(p, 0.0)], 0.0)
    assert len(s.tick(5.0)) == 1
    s.observe([write(replace(p, evidence={"seen": 3}), 6.0)], 6.0)
    assert s.tick(11.0) == []
    s.observe([write(replace(p, status="resolved", resolved_at=12.0), 12.0)], 12.0)
    [cleared] = s.tick(12.25)
    assert (cleared.terminal_id, cleared.items) == ("T1", ())
    assert s.tick(20.0) == []


def test_texts_are_cut_for_the_screen() -> None:
    """Title at most 24 and action at most 60 code points, cut with an ellipsis."""
    cat = load_catalogues()["en"]
    long = {"title": "Printer out of paper, again and again and again", "action": "x" * 80}
    notice = dict(cat.notice)
    notice["printer.no_paper"] = {**notice["printer.no_paper"], **long}
    s = TerminalScreens(replace(cat, notice=notice), Context(), WINDOW)
    s.observe([write(incident("P", "printer", "no_paper"), 0.0)], 0.0)
    [u] = s.tick(5.0)
    assert u.items[0]["title"] == "Printer out of paper, a…"
    assert len(u.items[0]["title"]) == 24
    assert len(u.items[0]["action"]) == 60
    assert u.items[0]["action"].endswith("…")


def test_host_outage_publishes_each_terminal_once_per_change() -> None:
    """The golden outage (140 failing terminals, hundreds of child and evidence writes): each
    affected terminal gets exactly two messages, the upstream notice and then an empty screen;
    no other terminal gets any."""
    sc = load("host-outage")
    s = screens()
    seen: list[ScreenUpdate] = []
    tick, apply = Engine.tick, Engine.apply

    def ticked(self: Engine, now: float) -> list[Any]:
        out = tick(self, now)
        s.observe(out, now)
        seen.extend(s.tick(now))
        return out

    def applied(self: Engine, env: Any) -> list[Any]:
        out = apply(self, env)
        s.observe(out, env.received_at)
        return out

    Engine.tick, Engine.apply = ticked, applied  # type: ignore[method-assign]
    try:
        run = replay(sc)
    finally:
        Engine.tick, Engine.apply = tick, apply  # type: ignore[method-assign]
    affected = {i.terminal_id for i in run.incidents.values() if i.terminal_id is not None}
    per_terminal = Counter(u.terminal_id for u in seen)
    assert set(per_terminal) == affected
    assert set(per_terminal.values()) == {2}
    for tid in affected:
        first, last = [u for u in seen if u.terminal_id == tid]
        assert [(i["whose"], i["title"]) for i in first.items] == [("upstream", "银行系统故障")]
        assert last.items == ()


def test_after_a_restart_only_what_differs_is_published() -> None:
    """Restored with what the broker last acknowledged: same items -> nothing; another language
    -> republished; a terminal whose problem went away meanwhile -> cleared."""
    p = incident("P", "printer", "no_paper")
    first = screens()
    first.observe([write(p, 0.0)], 0.0)
    [u] = first.tick(5.0)
    text = json.dumps(u.payload(5000), ensure_ascii=False)
    stored = [TerminalNoticeWrite("T1", "M1", text, 5.0),
              TerminalNoticeWrite("T9", "M1", text.replace("T1", "T9"), 5.0)]

    same = screens()
    same.restore([p], {}, stored)
    assert titles(same.tick(100.0)) == {"T9": []}

    english = screens("en")
    english.restore([p], {}, stored)
    assert titles(english.tick(100.0)) == {"T1": ["Printer out of paper"], "T9": []}
