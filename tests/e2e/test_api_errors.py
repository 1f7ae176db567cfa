"""API errors come from one place: "not found" is a domain answer in valid JSON whatever the id
holds, and a bug is a 500 with a JSON body, logged once with its traceback (real daemon and store)."""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.parse
from typing import Any

import pytest

from tests.e2e.test_incident_api import authed, call
from tests.services import Daemon

pytestmark = pytest.mark.broker

AWKWARD_IDS = ['ab"c', "it's", 'back\\slash"}', "x%22y"]


@pytest.mark.parametrize("kind", ["incidents", "terminals"])
def test_not_found_is_valid_json_whatever_the_id_holds(daemon: Daemon, kind: str) -> None:
    """GET of an unknown incident or terminal whose id holds quotes, a backslash or a brace is a
    404 whose body parses as JSON and names the id exactly; so are ack and resolve."""
    daemon.start()
    for raw_id in AWKWARD_IDS:
        path = f"/api/v1/{kind}/{urllib.parse.quote(raw_id, safe='')}"
        requests = [("GET", path)]
        if kind == "incidents":
            requests += [("POST", f"{path}/ack"), ("POST", f"{path}/resolve")]
        for method, url in requests:
            status, body = call(daemon, method, url, headers=authed(daemon))
            assert status == 404, (method, url, body)
            assert json.loads(body) == {"detail": f"no such {kind[:-1]}: {raw_id}"}, (method, url)


def corrupt_incident_row(daemon: Daemon, incident_id: str) -> None:
    """A resolved incident whose evidence is not JSON: what a damaged store or a bug would leave."""
    now = time.time()
    with sqlite3.connect(daemon.db_path, timeout=10) as conn:
        conn.execute(
            "INSERT INTO incidents (id, key, kind, cause, scope, severity, status, opened_at, updated_at, summary,"
            " terminal_id, resolved_at, evidence_json)"
            " VALUES (?, 'terminal|BUG-T|printer', 'printer', 'jam', 'terminal', 'major', 'resolved', ?, ?,"
            " 'Printer jammed', 'BUG-T', ?, 'this is not JSON')",
            (incident_id, now, now, now),
        )


def log_lines(daemon: Daemon) -> list[dict[str, Any]]:
    return [json.loads(line) for line in daemon.logs().splitlines()]


def test_a_bug_is_a_500_with_json_logged_once_with_its_traceback(daemon: Daemon) -> None:
    """An unexpected exception while answering (here: a stored row that cannot be decoded) is not
    "not found" and not "bad request": it is a 500 with a JSON body, logged once as an error with
    the traceback, and the daemon keeps serving."""
    daemon.start()
    corrupt_incident_row(daemon, "BUG-1")
    status, body = call(daemon, "GET", "/api/v1/incidents/BUG-1", headers=authed(daemon))
    assert status == 500
    assert json.loads(body) == {"detail": "internal error (logged by the daemon)"}
    status, body = call(daemon, "GET", "/api/v1/incidents?status=resolved", headers=authed(daemon))
    assert status == 500, body
    assert "detail" in json.loads(body)

    lines = log_lines(daemon)  # every line is JSON: nothing printed around the structured log
    failures = [line for line in lines if line["event"].startswith("API request failed")]
    assert [(f["level"], f["path"]) for f in failures] == [
        ("error", "/api/v1/incidents/BUG-1"), ("error", "/api/v1/incidents")]
    assert all("JSONDecodeError" in f["exception"] and "Traceback" in f["exception"] for f in failures)
    assert sum("Traceback" in json.dumps(line) for line in lines) == 2  # once per failed request
    assert call(daemon, "GET", "/healthz")[0] == 200
