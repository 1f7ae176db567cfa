"""Operator actions answer only after what they changed is committed: a SIGKILL right after
the answer loses nothing (the real daemon, a real broker, the real store)."""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.publish import heartbeat, publisher
from tests.services import Broker, Daemon, wait_until

pytestmark = pytest.mark.broker


def killed_and_restarted(daemon: Daemon) -> None:
    """SIGKILL (no shutdown, no final flush) and start again on the same store."""
    assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL
    daemon.start()


def the_incident(daemon: Daemon, incident_id: str) -> dict[str, Any]:
    found: dict[str, Any] = daemon.get(f"/api/v1/incidents/{incident_id}")
    return found


def test_maintenance_ack_and_resolve_survive_a_kill_right_after_the_answer(daemon: Daemon, broker: Broker) -> None:
    """POST maintenance, ack, DELETE maintenance and resolve are each followed at once by SIGKILL
    and a restart; each change is still there afterwards. Coalesced terminal rows are held back
    for a minute (store.terminal_flush_s = 60), so only a commit made before the answer can keep a
    maintenance window across the kill."""
    daemon.overrides = {"store": {"terminal_flush_s": 60},
                        "detect": {"heartbeat_interval_s": 60, "sweep_intervals": 0.25 / 60}}
    daemon.start()
    tid = "OPS-1"
    with publisher(broker.url, daemon.prefix) as pub:
        pub.send(f"term/{tid}/heartbeat", heartbeat(tid, "OPS-M", seq=1, printer="jam"))
    incident = wait_until(lambda: daemon.incidents(terminal_id=tid), what="printer incident open")[0]
    until = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    until_text = until.isoformat().replace("+00:00", "Z")

    answer = daemon.post(f"/api/v1/terminals/{tid}/maintenance", {"until": until_text})
    assert answer["in_maintenance"] is True
    killed_and_restarted(daemon)
    after = daemon.get(f"/api/v1/terminals/{tid}")
    assert (after["in_maintenance"], after["maintenance_until"]) == (True, answer["maintenance_until"])

    assert daemon.post(f"/api/v1/incidents/{incident['id']}/ack")["status"] == "acknowledged"
    killed_and_restarted(daemon)
    assert the_incident(daemon, incident["id"])["status"] == "acknowledged"

    assert daemon.post(f"/api/v1/terminals/{tid}/maintenance", method="DELETE")["in_maintenance"] is False
    killed_and_restarted(daemon)
    after = daemon.get(f"/api/v1/terminals/{tid}")
    assert (after["in_maintenance"], after["maintenance_until"]) == (False, None)

    assert daemon.post(f"/api/v1/incidents/{incident['id']}/resolve")["status"] == "resolved"
    killed_and_restarted(daemon)
    assert the_incident(daemon, incident["id"])["status"] == "resolved"
