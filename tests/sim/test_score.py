"""``fleetwatch score`` logic against fake incident lists (no daemon)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from fleetwatch.sim import score
from fleetwatch.sim.truth import Truth

T0 = 1_800_000_000.0


def at(s: float) -> str:
    return datetime.fromtimestamp(T0 + s, UTC).isoformat().replace("+00:00", "Z")


def inc(i: str, kind: str, opened: float, *, terminal: str | None = None, scope: str = "terminal",
        parent: str | None = None, merchant: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"id": i, "kind": kind, "scope": scope, "terminal_id": terminal, "merchant_id": merchant,
            "opened_at": at(opened), "parent_id": parent, **extra}


def fault(what: str, t: str | None, start: float, *, expect: bool = True, **kw: Any) -> Truth:
    return Truth(what=what, cause=None, at=T0 + start, until=kw.pop("until", None), expect_incident=expect,
                 terminal_id=t, **kw)


def test_precision_recall_and_latency() -> None:
    """Two printer faults, one found 2 s late, one missed; one stray printer incident:
    recall 0.5, precision 0.5, p50 latency 2 s, and the run fails on the miss."""
    truth = [fault("printer", "T1", 10), fault("printer", "T2", 10)]
    incidents = [inc("a", "printer", 12, terminal="T1"), inc("b", "printer", 30, terminal="T9")]
    rep = score.score(truth, incidents)
    row = rep.kinds["printer"]
    assert (row.expected, row.detected, row.incidents, row.correct) == (2, 1, 2, 1)
    assert row.recall == 0.5
    assert row.precision == 0.5
    assert row.p50 == pytest.approx(2.0)
    assert [f.terminal_id for f in rep.missed] == ["T2"]
    assert not rep.passed


def test_incident_before_the_fault_or_of_another_kind_does_not_count() -> None:
    """Only an incident of the same kind opened after the fault began detects it."""
    truth = [fault("reader", "T1", 10)]
    rep = score.score(truth, [inc("a", "reader", 5, terminal="T1", status="resolved"),
                              inc("b", "printer", 11, terminal="T1")])
    assert rep.kinds["reader"].detected == 0
    assert rep.missed


def test_children_of_a_detected_parent_are_correct() -> None:
    """A fleet host outage with terminal children: children inherit correctness (precision 1)."""
    truth = [Truth("host_outage", "host_errors", T0, T0 + 10, True, scope="fleet")]
    incidents = [inc("p", "host_outage", 3, scope="fleet"),
                 inc("c1", "network", 4, terminal="T1", parent="p"),
                 inc("c2", "host_outage", 4, terminal="T2", parent="p")]
    rep = score.score(truth, incidents)
    assert rep.passed
    assert rep.kinds["network"].precision == 1.0
    assert rep.kinds["host_outage"].precision == 1.0


def test_group_fault_needs_the_same_group() -> None:
    """A cert-expiry truth for A920 2.4.1 is not detected by a group incident on another firmware."""
    truth = [Truth("host_outage", "host_errors", T0, None, True, scope="group",
                   group={"model": "A920", "fw": "2.4.1"})]
    wrong = inc("g", "host_outage", 5, scope="group", group={"model": "A920", "fw": "2.5.0"})
    right = inc("h", "host_outage", 5, scope="group", group={"model": "A920", "fw": "2.4.1"})
    assert not score.score(truth, [wrong]).passed
    assert score.score(truth, [right]).passed


def test_settlement_gap_matches_batch_and_currency_when_evidence_says() -> None:
    """A settlement gap on another batch of the same terminal is not this fault's detection."""
    truth = [fault("settlement_gap", "T1", 0, batch_no=17, currency="CNY")]
    other = inc("x", "settlement_gap", 5, terminal="T1", evidence={"batch_no": 16, "currency": "CNY"})
    same = inc("y", "settlement_gap", 5, terminal="T1", evidence={"batch_no": 17, "currency": "CNY"})
    assert not score.score(truth, [other]).passed
    assert score.score(truth, [same]).passed


def test_incident_on_noise_is_a_false_alarm() -> None:
    """Any incident on a decline-storm terminal or spoof victim during the window fails the run;
    one long after the window (beyond grace) does not."""
    truth = [Truth("decline_storm", "cardholder_declines", T0, T0 + 10, False, scope="merchant",
                   merchant_id="M1", terminals=["T1", "T2"]),
             Truth("garbage", "spoofed_topic", T0, T0 + 10, False, terminal_id="T5", terminals=["T5", "T6"])]
    rep = score.score(truth, [inc("a", "reader", 5, terminal="T2"), inc("b", "printer", 6, terminal="T6"),
                              inc("c", "network", 100, terminal="T1")], grace=30)
    assert not rep.passed
    assert sorted(i["id"] for i, _ in rep.violations) == ["a", "b"]
    assert rep.kinds["decline_storm"].false_alarms == 1
    assert rep.kinds["garbage"].false_alarms == 1
    assert "FALSE ALARM" in score.render(rep)
    assert score.render(rep).endswith("FAIL")


def test_fetch_follows_next_cursor() -> None:
    """Incidents are read page by page with the Bearer token until next_cursor is null."""
    pages = {None: {"items": [{"id": "1"}], "next_cursor": "c2"}, "c2": {"items": [{"id": "2"}], "next_cursor": None}}

    def handler(req: httpx.Request) -> httpx.Response:
        assert req.headers["Authorization"] == "Bearer tok"
        assert req.url.params["status"] == "all"
        return httpx.Response(200, json=pages[req.url.params.get("cursor")])

    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        got = score.fetch_incidents("http://fw", "tok", client)
    assert [i["id"] for i in got] == ["1", "2"]
