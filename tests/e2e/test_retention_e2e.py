"""Retention in the running daemon, on a compressed clock (detect.day_s), on both store backends."""

from __future__ import annotations

import pytest

from tests.publish import batch, heartbeat, publisher, settlement, txn
from tests.services import BOTH_BACKENDS, Broker, Daemon, wait_until

pytestmark = pytest.mark.broker


@BOTH_BACKENDS
def test_old_rows_are_deleted_and_unsettled_batches_kept(daemon: Daemon, broker: Broker) -> None:
    """With days of 2 s and retain_days = 1, the background job deletes a settled batch with its
    transaction and settlement, a manually resolved incident with its events, and a dead letter,
    counting each in fleetwatch_store_rows_deleted_total{table}; the batch still open (no
    BatchClose) keeps its row and its transaction however old they get, and so does the open
    incident; the store's size is exported."""
    daemon.overrides = {"detect": {"day_s": 2}, "store": {"retain_days": 1, "retention_every_s": 0.5}}
    daemon.start()
    with publisher(broker.url, daemon.prefix) as pub:
        pub.send("term/R1/txn", txn("R1", "R1-1"))
        pub.send("term/R1/batch", batch("R1"))
        pub.send("host/settlement", settlement("R1"))
        pub.send("term/R2/txn", txn("R2", "R2-1"))  # its batch never closes
        pub.send("term/R3/heartbeat", heartbeat("R3", printer="no_paper"))
        pub.send("term/R4/heartbeat", heartbeat("R4", printer="jam"))
        pub.send("term/R1/heartbeat", b"{not json")
        printer = wait_until(lambda: [i for i in daemon.incidents(terminal_id="R3") if i["kind"] == "printer"],
                             what="R3's printer incident")[0]
        pub.send("term/R3/heartbeat", heartbeat("R3", seq=2))
        daemon.post(f"/api/v1/incidents/{printer['id']}/resolve")

        expected = {"transactions": 1, "settlements": 1, "batches": 1, "incidents": 1, "dead_letters": 1}
        for table, n in expected.items():
            wait_until(lambda t=table, n=n: daemon.metric("fleetwatch_store_rows_deleted_total", table=t) >= n,
                       timeout=30, what=f"{table} deleted")
        assert daemon.metric("fleetwatch_store_rows_deleted_total", table="incident_events") >= 2
        assert daemon.metric("fleetwatch_store_size_bytes") > 0

        assert daemon.rows("select terminal_id, txn_id from transactions") == [("R2", "R2-1")]
        assert daemon.rows("select terminal_id, done from batches") == [("R2", False)]
        assert daemon.rows("select count(*) from settlements") == [(0,)]
        assert daemon.rows("select count(*) from dead_letters") == [(0,)]
        assert daemon.rows(f"select count(*) from incident_events where incident_id = '{printer['id']}'") == [(0,)]
        assert [i["id"] for i in daemon.incidents()] == [i["id"] for i in daemon.incidents(terminal_id="R4")]
        assert [i["cause"] for i in daemon.incidents(terminal_id="R4")] == ["jam"]
        # still ingesting as before
        pub.send("term/R5/txn", txn("R5", "R5-1"))
        wait_until(lambda: ("R5", "R5-1") in daemon.rows("select terminal_id, txn_id from transactions"),
                   what="a new txn stored")
    assert daemon.stop() == 0
