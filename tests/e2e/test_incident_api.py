"""The incident API (CONTRACT.md §3, docs/contract.md) through the real daemon and a real broker.

Incidents are made the way terminals make them (heartbeats and transactions over MQTT),
never written into the store. The heartbeat interval stays at 60 s, so nothing goes
silent or clears by hysteresis while a test runs: every change the tests see comes from
the messages they send or the API calls they make.
"""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.publish import Publisher, heartbeat, publisher, txn
from tests.services import BOTH_BACKENDS, Broker, Daemon, wait_until

pytestmark = pytest.mark.broker

DETECT = {"heartbeat_interval_s": 60, "sweep_intervals": 0.25 / 60}
"""Nothing goes offline (3 min) or clears by hysteresis (3 min) while a test runs; the sweeper
(which also refreshes the metrics snapshot) still runs every 0.25 s."""

DOCUMENTED_ROUTES = {
    ("GET", "/api/v1/incidents"), ("GET", "/api/v1/incidents/{}"), ("GET", "/api/v1/incidents/{}/events"),
    ("POST", "/api/v1/incidents/{}/ack"), ("POST", "/api/v1/incidents/{}/resolve"),
    ("GET", "/api/v1/terminals"), ("GET", "/api/v1/terminals/{}"),
    ("POST", "/api/v1/terminals/{}/maintenance"), ("DELETE", "/api/v1/terminals/{}/maintenance"),
    ("GET", "/api/v1/settlement/gaps"), ("GET", "/api/v1/settlement/reconciliation"),
}
"""docs/contract.md's HTTP table, path parameters written ``{}``."""

PARAM = re.compile(r"\{[^}]+\}")


@pytest.fixture
def api(daemon: Daemon, broker: Broker) -> Iterator[tuple[Daemon, Publisher]]:
    """A started daemon (60 s heartbeat interval) and a publisher on its prefix."""
    daemon.overrides = {"detect": dict(DETECT)}
    daemon.start()
    with publisher(broker.url, daemon.prefix) as pub:
        yield daemon, pub


def call(daemon: Daemon, method: str, path: str, *, headers: dict[str, str] | None = None,
         body: Any = None) -> tuple[int, bytes]:
    """Any request, any headers: (status, body) whatever the status."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{daemon.api}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, exc.read()
        finally:
            exc.close()


def authed(daemon: Daemon) -> dict[str, str]:
    return {"Authorization": f"Bearer {daemon.token}"}


def status_of(daemon: Daemon, method: str, path: str) -> int:
    return call(daemon, method, path, headers=authed(daemon))[0]


def send_hb(pub: Publisher, tid: str, mid: str, seq: int, **fields: Any) -> None:
    pub.send(f"term/{tid}/heartbeat", heartbeat(tid, mid, seq=seq, **fields))


def send_txn(pub: Publisher, tid: str, mid: str, txn_id: str, **fields: Any) -> None:
    pub.send(f"term/{tid}/txn", txn(tid, txn_id, mid, **fields))


def open_of(daemon: Daemon, tid: str) -> list[dict[str, Any]]:
    return daemon.incidents(status="open", terminal_id=tid)


def one_open(daemon: Daemon, tid: str, kind: str) -> dict[str, Any]:
    """Wait for the open incident of (tid, kind) and return it."""
    def found() -> dict[str, Any] | None:
        hits = [i for i in open_of(daemon, tid) if i["kind"] == kind]
        return hits[0] if hits else None

    incident: dict[str, Any] = wait_until(found, timeout=20, what=f"{kind} incident open on {tid}")
    return incident


def committed(daemon: Daemon, sentinel: str) -> None:
    """A write barrier: an API action goes through the daemon's single writer after everything
    decided before it, so when it returns all of that is in the store (http.py, pipeline.py).
    Ending a maintenance window that ``sentinel`` (a healthy terminal) does not have changes nothing.
    """
    daemon.post(f"/api/v1/terminals/{sentinel}/maintenance", method="DELETE")


def event_types(daemon: Daemon, incident_id: str) -> list[str]:
    return [e["type"] for e in daemon.get(f"/api/v1/incidents/{incident_id}/events")]


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def normalised(path: str) -> str:
    return PARAM.sub("{}", path)


# ---- authentication ---------------------------------------------------------------------------


def test_every_api_route_refuses_a_missing_or_wrong_token_and_health_is_open(
    api: tuple[Daemon, Publisher],
) -> None:
    """Every /api route the daemon serves (read from its OpenAPI, which must cover the documented
    table) answers 401 without a token, with a wrong token, and with the token in the wrong
    scheme, and anything but 401 with the right one; /metrics, /healthz and /readyz need none."""
    daemon, _pub = api
    status, raw = call(daemon, "GET", "/openapi.json")
    assert status == 200
    spec = json.loads(raw)
    routes = sorted((method.upper(), path) for path, ops in spec["paths"].items() if path.startswith("/api/")
                    for method in ops)
    assert {(m, normalised(p)) for m, p in routes} >= DOCUMENTED_ROUTES
    refused = [
        {},
        {"Authorization": "Bearer not-the-token"},
        {"Authorization": "Bearer "},
        {"Authorization": f"Basic {base64.b64encode(f'x:{daemon.token}'.encode()).decode()}"},
        {"Authorization": daemon.token},
    ]
    for method, path in routes:
        concrete = PARAM.sub("X-1", path)
        body = {"until": "2099-01-01T00:00:00Z"} if method == "POST" else None
        for headers in refused:
            got, answer = call(daemon, method, concrete, headers=headers, body=body)
            assert got == 401, (method, concrete, headers, answer)
        got, answer = call(daemon, method, concrete, headers=authed(daemon), body=body)
        assert got != 401, (method, concrete, answer)
    for path in ("/metrics", "/healthz", "/readyz"):
        assert call(daemon, "GET", path)[0] == 200, path
        assert call(daemon, "GET", path, headers={"Authorization": "Bearer not-the-token"})[0] == 200, path
    assert b"fleetwatch_messages_received_total" in call(daemon, "GET", "/metrics")[1]


# ---- listing ------------------------------------------------------------------------------------

TAMPERED = [f"TP-{i:02d}" for i in range(30)]


def tamper_merchant(tid: str) -> str:
    return f"MA-{int(tid[-2:]) % 3}"


def open_a_mixed_set(daemon: Daemon, pub: Publisher) -> dict[str, dict[str, Any]]:
    """30 tampered terminals (opened one after another, over 3 merchants), two printers out of
    paper and one terminal not registered at the host: 33 open incidents, by terminal."""
    for tid in TAMPERED:
        send_hb(pub, tid, tamper_merchant(tid), 1, tamper=True)
    send_hb(pub, "PR-0", "MA-0", 1, printer="no_paper")
    send_hb(pub, "PR-1", "MB-9", 1, printer="no_paper")
    send_txn(pub, "CF-0", "MC-9", "CF-0-1", outcome="declined", rc="97")

    def all_there() -> list[dict[str, Any]] | None:
        items = daemon.incidents(status="all")
        return items if len(items) >= 33 else None

    items = wait_until(all_there, timeout=30, what="33 incidents")
    assert len(items) == 33, items
    return {i["terminal_id"]: i for i in items}


def ids(items: list[dict[str, Any]]) -> set[str]:
    return {i["id"] for i in items}


def test_list_filters_by_status_kind_terminal_and_merchant(api: tuple[Daemon, Publisher]) -> None:
    """status open (the default, acknowledged included), acknowledged, resolved and all; kind;
    terminal_id; merchant_id; and filters combined: each list holds exactly the incidents that match."""
    daemon, pub = api
    by_tid = open_a_mixed_set(daemon, pub)
    resolved = daemon.post(f"/api/v1/incidents/{by_tid['TP-00']['id']}/resolve")
    acked = daemon.post(f"/api/v1/incidents/{by_tid['TP-01']['id']}/ack")
    assert (resolved["status"], acked["status"]) == ("resolved", "acknowledged")
    everything = ids(list(by_tid.values()))

    assert ids(daemon.incidents(status="all")) == everything
    assert ids(daemon.incidents(status="open")) == everything - {resolved["id"]}
    default = daemon.get("/api/v1/incidents?limit=1000")
    assert ids(default["items"]) == everything - {resolved["id"]}
    assert default["next_cursor"] is None
    assert ids(daemon.incidents(status="acknowledged")) == {acked["id"]}
    assert ids(daemon.incidents(status="resolved")) == {resolved["id"]}

    tamper = daemon.incidents(kind="tamper")
    assert ids(tamper) == {by_tid[t]["id"] for t in TAMPERED}
    assert {i["kind"] for i in tamper} == {"tamper"}
    assert ids(daemon.incidents(kind="printer")) == {by_tid["PR-0"]["id"], by_tid["PR-1"]["id"]}
    assert ids(daemon.incidents(kind="config")) == {by_tid["CF-0"]["id"]}
    assert daemon.incidents(kind="power") == []
    assert ids(daemon.incidents(kind="tamper", status="open")) == {by_tid[t]["id"] for t in TAMPERED[1:]}

    assert ids(daemon.incidents(terminal_id="TP-07")) == {by_tid["TP-07"]["id"]}
    assert daemon.incidents(terminal_id="NOBODY") == []

    in_ma0 = {by_tid[t]["id"] for t in TAMPERED if tamper_merchant(t) == "MA-0"} | {by_tid["PR-0"]["id"]}
    assert ids(daemon.incidents(merchant_id="MA-0")) == in_ma0
    assert {i["merchant_id"] for i in daemon.incidents(merchant_id="MA-1")} == {"MA-1"}
    assert ids(daemon.incidents(merchant_id="MA-0", kind="printer")) == {by_tid["PR-0"]["id"]}
    assert ids(daemon.incidents(merchant_id="MA-0", status="resolved")) == {resolved["id"]}
    assert daemon.incidents(merchant_id="MA-1", status="resolved") == []


@BOTH_BACKENDS
def test_cursor_paging_is_disjoint_newest_first_complete_and_stable(api: tuple[Daemon, Publisher]) -> None:
    """30 tamper incidents at limit=7: five pages of 7, 7, 7, 7 and 2, disjoint, newest first
    (the reverse of the order the terminals reported), covering all 30; an incident opened while
    paging does not shift the later pages; the last page has no next cursor."""
    daemon, pub = api
    by_tid = open_a_mixed_set(daemon, pub)
    pages: list[list[dict[str, Any]]] = []
    cursor: str | None = None
    while True:
        query = "status=all&kind=tamper&limit=7" + (f"&cursor={urllib.parse.quote(cursor)}" if cursor else "")
        page = daemon.get(f"/api/v1/incidents?{query}")
        pages.append(page["items"])
        cursor = page["next_cursor"]
        if len(pages) == 1:  # a newer incident appears between page 1 and page 2
            send_hb(pub, "TP-LATE", "MA-0", 1, tamper=True)
            one_open(daemon, "TP-LATE", "tamper")
        if cursor is None:
            break
        assert len(pages) < 10, "paging does not end"
    assert [len(p) for p in pages] == [7, 7, 7, 7, 2]
    flat = [i for p in pages for i in p]
    assert len(ids(flat)) == 30
    assert ids(flat) == {by_tid[t]["id"] for t in TAMPERED}
    assert [i["terminal_id"] for i in flat] == list(reversed(TAMPERED))
    opened = [parse_time(i["opened_at"]) for i in flat]
    assert opened == sorted(opened, reverse=True)
    # and from the top again, the new one comes first
    first = daemon.get("/api/v1/incidents?status=all&kind=tamper&limit=7")["items"]
    assert first[0]["terminal_id"] == "TP-LATE"


# ---- one incident: get, ack, resolve, reopen, audit trail -----------------------------------------


@BOTH_BACKENDS
def test_ack_then_manual_resolve_while_failing_reopens_with_previous_id(api: tuple[Daemon, Publisher]) -> None:
    """GET one incident; ack -> acknowledged, still listed as open; resolve while the tamper persists
    -> resolved (acking or resolving it again returns it unchanged); the terminal's next tamper
    heartbeat opens a NEW incident whose previous_id is the old one; the events endpoint shows
    opened, acknowledged, resolved for the old one and reopened for the new one."""
    daemon, pub = api
    send_hb(pub, "AK-1", "MK-1", 1, tamper=True)
    listed = one_open(daemon, "AK-1", "tamper")
    got = daemon.get(f"/api/v1/incidents/{listed['id']}")
    assert got == listed
    assert (got["scope"], got["cause"], got["severity"], got["status"]) == ("terminal", "tamper", "critical", "open")
    assert (got["merchant_id"], got["previous_id"], got["resolved_at"]) == ("MK-1", None, None)

    acked = daemon.post(f"/api/v1/incidents/{got['id']}/ack")
    assert (acked["id"], acked["status"]) == (got["id"], "acknowledged")
    assert daemon.get(f"/api/v1/incidents/{got['id']}")["status"] == "acknowledged"
    assert got["id"] in ids(daemon.incidents(status="open"))
    assert got["id"] in ids(daemon.get("/api/v1/incidents")["items"])
    assert ids(daemon.incidents(status="acknowledged")) == {got["id"]}

    resolved = daemon.post(f"/api/v1/incidents/{got['id']}/resolve")
    assert (resolved["id"], resolved["status"]) == (got["id"], "resolved")
    assert resolved["resolved_at"] is not None
    assert daemon.get(f"/api/v1/incidents/{got['id']}") == resolved
    assert open_of(daemon, "AK-1") == []
    assert daemon.post(f"/api/v1/incidents/{got['id']}/resolve") == resolved
    assert daemon.post(f"/api/v1/incidents/{got['id']}/ack") == resolved

    send_hb(pub, "AK-1", "MK-1", 2, tamper=True)  # the condition never went away
    again = one_open(daemon, "AK-1", "tamper")
    assert again["id"] != got["id"]
    assert (again["previous_id"], again["status"], again["cause"]) == (got["id"], "open", "tamper")
    assert daemon.get(f"/api/v1/incidents/{got['id']}")["status"] == "resolved"

    assert event_types(daemon, got["id"]) == ["opened", "acknowledged", "resolved"]
    trail = daemon.get(f"/api/v1/incidents/{again['id']}/events")
    assert [e["type"] for e in trail] == ["reopened"]
    assert trail[0]["detail"].get("previous_id") == got["id"]
    old_trail = daemon.get(f"/api/v1/incidents/{got['id']}/events")
    times = [parse_time(e["at"]) for e in old_trail + trail]
    assert times == sorted(times)


def test_after_a_manual_resolve_a_fault_that_went_away_and_came_back_is_a_fresh_incident(
    api: tuple[Daemon, Publisher],
) -> None:
    """docs/detection.md: after a manual resolve, "if the condition went away in between, the next
    one is simply new": no paper -> resolved by hand -> printer ok -> no paper again opens an
    incident with previous_id null (and event opened, not reopened)."""
    daemon, pub = api
    send_hb(pub, "RS-1", "MR-1", 1, printer="no_paper")
    first = one_open(daemon, "RS-1", "printer")
    assert daemon.post(f"/api/v1/incidents/{first['id']}/resolve")["status"] == "resolved"
    send_hb(pub, "RS-1", "MR-1", 2, printer="ok")  # paper loaded: the condition went away
    wait_until(lambda: daemon.get("/api/v1/terminals/RS-1")["printer"] == "ok", what="printer ok applied")
    send_hb(pub, "RS-1", "MR-1", 3, printer="no_paper")  # a new roll ran out
    second = one_open(daemon, "RS-1", "printer")
    assert second["id"] != first["id"]
    assert second["previous_id"] is None, f"reopened as a continuation of {first['id']}: {second}"
    assert event_types(daemon, second["id"]) == ["opened"]


def test_unknown_incident_is_404(api: tuple[Daemon, Publisher]) -> None:
    """GET, ack, resolve and events of an incident id the daemon never issued: 404."""
    daemon, _pub = api
    for method, path in (("GET", "/api/v1/incidents/nope"), ("GET", "/api/v1/incidents/nope/events"),
                         ("POST", "/api/v1/incidents/nope/ack"), ("POST", "/api/v1/incidents/nope/resolve")):
        assert status_of(daemon, method, path) == 404, (method, path)


# ---- maintenance --------------------------------------------------------------------------------


def test_maintenance_holds_back_incidents_until_it_is_ended(api: tuple[Daemon, Publisher]) -> None:
    """POST maintenance {"until": RFC 3339 in an hour}: the terminal shows in_maintenance and counts
    as maintenance in fleetwatch_terminals; tamper, no paper and a not-registered decline then open
    nothing. DELETE ends it (in_maintenance false) and the faults, still present, open."""
    daemon, pub = api
    tid, mid = "MT-1", "MM-1"
    send_hb(pub, "MT-S", "MM-2", 1)  # a healthy sentinel for the write barrier
    send_hb(pub, tid, mid, 1)
    wait_until(lambda: status_of(daemon, "GET", f"/api/v1/terminals/{tid}") == 200, what="terminal known")
    assert daemon.get(f"/api/v1/terminals/{tid}")["in_maintenance"] is False

    until = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    term = daemon.post(f"/api/v1/terminals/{tid}/maintenance",
                       {"until": until.isoformat().replace("+00:00", "Z")})
    assert term["in_maintenance"] is True
    assert parse_time(term["maintenance_until"]) == until
    assert daemon.get(f"/api/v1/terminals/{tid}")["in_maintenance"] is True
    wait_until(lambda: daemon.metric("fleetwatch_terminals", state="maintenance") == 1,
               what="counted as in maintenance")

    send_txn(pub, tid, mid, "MT-1-1", outcome="declined", rc="97")
    send_hb(pub, tid, mid, 2, tamper=True, printer="no_paper")
    wait_until(lambda: daemon.get(f"/api/v1/terminals/{tid}")["seq"] == 2, what="faulty heartbeat applied")
    committed(daemon, "MT-S")
    assert daemon.incidents(terminal_id=tid) == []

    term = daemon.post(f"/api/v1/terminals/{tid}/maintenance", method="DELETE")
    assert term["in_maintenance"] is False
    assert term["maintenance_until"] is None
    send_hb(pub, tid, mid, 3, tamper=True, printer="no_paper")  # the faults are still there
    send_txn(pub, tid, mid, "MT-1-2", outcome="declined", rc="97")
    for kind in ("tamper", "printer", "config"):
        one_open(daemon, tid, kind)
    assert sorted((i["kind"], i["cause"]) for i in daemon.incidents(terminal_id=tid)) == [
        ("config", "not_registered"), ("printer", "no_paper"), ("tamper", "tamper")]
    wait_until(lambda: daemon.metric("fleetwatch_terminals", state="maintenance") == 0,
               what="no longer counted as in maintenance")


# ---- the rest of the surface -----------------------------------------------------------------------


def test_openapi_lists_incident_paths_unknown_terminal_is_404_bad_cursor_is_400(
    api: tuple[Daemon, Publisher],
) -> None:
    """/openapi.json lists the incident paths; GET of a terminal never seen is 404; a cursor the
    daemon did not issue is 400 on both paged lists."""
    daemon, pub = api
    status, raw = call(daemon, "GET", "/openapi.json")
    assert status == 200
    paths = {normalised(p): {m.upper() for m in ops} for p, ops in json.loads(raw)["paths"].items()}
    assert "GET" in paths["/api/v1/incidents"]
    assert "GET" in paths["/api/v1/incidents/{}"]
    assert "GET" in paths["/api/v1/incidents/{}/events"]
    assert "POST" in paths["/api/v1/incidents/{}/ack"]
    assert "POST" in paths["/api/v1/incidents/{}/resolve"]

    send_hb(pub, "KN-1", "MN-1", 1)
    wait_until(lambda: status_of(daemon, "GET", "/api/v1/terminals/KN-1") == 200, what="KN-1 known")
    assert status_of(daemon, "GET", "/api/v1/terminals/NEVER-SEEN") == 404

    forged = base64.urlsafe_b64encode(json.dumps({"x": 1}).encode()).decode().rstrip("=")
    for cursor in ("garbage", "!!!", forged, "e30"):
        quoted = urllib.parse.quote(cursor)
        assert status_of(daemon, "GET", f"/api/v1/incidents?cursor={quoted}") == 400, cursor
        assert status_of(daemon, "GET", f"/api/v1/incidents?status=all&cursor={quoted}") == 400, cursor
        assert status_of(daemon, "GET", f"/api/v1/terminals?cursor={quoted}") == 400, cursor
