"""End to end through a real Mosquitto: the daemon ingests, rejects, persists and recovers."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
import urllib.error
from pathlib import Path

import pytest

from tests.publish import Publisher, batch, heartbeat, publisher, settlement, state, txn
from tests.services import BOTH_BACKENDS, Broker, Daemon, wait_until

pytestmark = pytest.mark.broker

PAN = "4111111111111111"  # a Luhn-valid test card number


def terminal_or_none(daemon: Daemon, tid: str) -> dict[str, object] | None:
    try:
        found: dict[str, object] = daemon.get(f"/api/v1/terminals/{tid}")
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the response's socket
        if exc.code == 404:
            return None
        raise
    return found


@BOTH_BACKENDS
def test_every_payload_type_is_applied_and_counted(daemon: Daemon, broker: Broker) -> None:
    """Each of the five message types is accepted, counted by type and lands in state or store."""
    daemon.start()
    with publisher(broker.url, daemon.prefix) as pub:
        pub.send("term/T1/state", state("T1"), retain=False)
        pub.send("term/T1/heartbeat", heartbeat("T1", "M9", seq=5, model="P60", fw="3.0.2"))
        pub.send("term/T1/txn", txn("T1", "T1-0001", "M9"))
        pub.send("term/T1/batch", batch("T1", "M9"))
        pub.send("host/settlement", settlement("T1", "M9"))
    for kind in ("heartbeat", "txn", "batch", "state", "settlement"):
        wait_until(lambda k=kind: daemon.metric("fleetwatch_messages_received_total", type=k) >= 1, what=kind)
    term = wait_until(lambda: terminal_or_none(daemon, "T1"), what="terminal T1")
    assert (term["merchant_id"], term["model"], term["fw"], term["seq"]) == ("M9", "P60", "3.0.2", 5)
    assert daemon.stop() == 0
    assert daemon.rows("select terminal_id, txn_id, amount_minor from transactions") == [
        ("T1", "T1-0001", 12800)
    ]
    assert len(daemon.rows("select * from settlements")) == 1
    if daemon.store_url is not None:  # the PostgreSQL password is in the URL, never in the logs
        password = daemon.store_url.split(":")[2].split("@")[0]
        assert password not in daemon.logs()
        assert "**********" in daemon.logs()
    assert daemon.rows("select model, fw from terminals where terminal_id='T1'") == [("P60", "3.0.2")]


BAD_MESSAGES: list[tuple[str, str, str | bytes]] = [
    ("json", "term/R1/heartbeat", b"{not json"),
    ("schema", "term/R1/heartbeat", json.dumps({"v": 1, "terminal_id": "R1", "merchant_id": "M1", "ts": 1})),
    ("version", "term/R1/heartbeat", json.dumps({**heartbeat("R1"), "v": 2})),
    ("too_large", "term/R1/heartbeat", json.dumps({**heartbeat("R1"), "app": "x" * 9000})),
    ("topic", "term/" + "X" * 40 + "/heartbeat", json.dumps(heartbeat("X" * 40))),
    ("spoof", "term/R1/heartbeat", json.dumps(heartbeat("R2"))),
    ("pan", "term/R1/txn", json.dumps(txn("R1", "R1-1", outcome="error",
                                          error={"stage": "read", "code": "E1", "detail": f"card {PAN}"}))),
]


def test_each_rejection_reason_is_counted_kept_and_applies_nothing(daemon: Daemon, broker: Broker) -> None:
    """Every reason of the closed set is produced, counted, dead-lettered (PAN never kept), and changes nothing."""
    daemon.start()
    with publisher(broker.url, daemon.prefix) as pub:
        for _reason, suffix, payload in BAD_MESSAGES:
            pub.send(suffix, payload)
    for reason, _suffix, _payload in BAD_MESSAGES:
        wait_until(lambda r=reason: daemon.metric("fleetwatch_messages_rejected_total", reason=r) == 1, what=reason)
    assert daemon.metric("fleetwatch_messages_received_total") == 0
    # the spoof named R2 in a message on R1's topic: neither terminal exists
    assert terminal_or_none(daemon, "R1") is None
    assert terminal_or_none(daemon, "R2") is None
    assert daemon.stop() == 0
    letters = daemon.rows("select reason, payload_excerpt from dead_letters order by id")
    excerpts = {str(reason): excerpt for reason, excerpt in letters}
    assert sorted(excerpts) == sorted(r for r, _, _ in BAD_MESSAGES)
    assert excerpts["pan"] is None
    assert excerpts["json"] == "{not json"


def test_pan_appears_nowhere_and_long_ids_are_not_pans(daemon: Daemon, broker: Broker) -> None:
    """A PAN is in neither the store files nor the logs; IDs and ts with long digit runs are accepted."""
    daemon.start()
    with publisher(broker.url, daemon.prefix) as pub:
        pub.send("term/P1/txn", txn("P1", "P1-1", error={"stage": "print", "code": "x",
                                                         "detail": "4111-1111-1111-1111"}))
        # 15-digit Luhn-valid merchant-id-like and rrn digit runs, and a 13-digit ts: all legitimate
        pub.send("term/P2/txn", txn("P2", "P2-000000000000913", "490154203237518",
                                    rrn="411111111111", stan="411111"))
    wait_until(lambda: daemon.metric("fleetwatch_messages_rejected_total", reason="pan") == 1, what="pan reject")
    wait_until(lambda: daemon.metric("fleetwatch_messages_received_total", type="txn") == 1, what="valid txn")
    assert daemon.stop() == 0
    for file in daemon.workdir.iterdir():
        if file.is_file():
            content = file.read_bytes()
            assert PAN.encode() not in content, file.name
            assert b"4111-1111-1111-1111" not in content, file.name
    assert "P1" in daemon.logs()  # the rejection was logged, with its topic
    assert daemon.rows("select txn_id from transactions") == [("P2-000000000000913",)]


@BOTH_BACKENDS
def test_redelivered_txn_after_restart_is_stored_and_tallied_once(daemon: Daemon, broker: Broker) -> None:
    """A QoS 1 txn queued while the daemon was down arrives once; its repeat after restart is not re-applied."""
    daemon.start()
    daemon.stop()
    with publisher(broker.url, daemon.prefix) as pub:
        pub.send("term/D1/txn", txn("D1", "D1-7", amount_minor=500))  # queued by the broker for our session
        daemon.start()
        wait_until(lambda: daemon.metric("fleetwatch_messages_received_total", type="txn") == 1, what="queued txn")
        pub.send("term/D1/txn", txn("D1", "D1-7", amount_minor=500))  # the same txn_id again
        wait_until(lambda: daemon.metric("fleetwatch_messages_received_total", type="txn") == 2, what="repeat")
    assert daemon.stop() == 0
    assert daemon.rows("select count(*) from transactions") == [(1,)]
    assert daemon.rows("select tally_count, tally_amount_minor from batches") == [(1, 500)]


def test_broker_restart_is_survived_without_restarting_the_daemon(tmp_path: Path, prefix: str) -> None:
    """With its own broker stopped and started again, the daemon reconnects, counts it and ingests again."""
    own = Broker(tmp_path / "broker")
    (tmp_path / "broker").mkdir()
    own.start()
    daemon = Daemon(tmp_path, own.url, prefix=prefix, client_id="fw-reconnect")
    try:
        daemon.start()
        assert daemon.metric("fleetwatch_mqtt_connected") == 1
        own.stop()
        wait_until(lambda: daemon.metric("fleetwatch_mqtt_connected") == 0, what="disconnect seen")
        own.start()
        wait_until(lambda: daemon.metric("fleetwatch_mqtt_connected") == 1, timeout=20, what="reconnected")
        assert daemon.metric("fleetwatch_mqtt_reconnects_total") >= 1
        with publisher(own.url, prefix) as pub:
            pub.send("term/B1/heartbeat", heartbeat("B1"))
        wait_until(lambda: terminal_or_none(daemon, "B1"), what="heartbeat after reconnect")
        assert daemon.stop() == 0
    finally:
        if daemon.proc is not None:
            daemon.kill()
        own.stop()


def test_a_broker_outage_opens_no_offline_incident_for_terminals_that_come_back(tmp_path: Path, prefix: str) -> None:
    """The broker is away for many heartbeat intervals: a terminal that beats again once it is
    back opens nothing; one that stays silent goes offline only after the grace, so the
    silence check is paused and resumed, not switched off."""
    own = Broker(tmp_path / "broker")
    (tmp_path / "broker").mkdir()
    own.start()
    daemon = Daemon(tmp_path, own.url, prefix=prefix, client_id="fw-outage",
                    overrides={"detect": {"heartbeat_interval_s": 0.5, "offline_after_missed": 3}})
    try:
        daemon.start()
        with publisher(own.url, prefix) as pub:
            for tid in ("O1", "O2"):
                pub.send(f"term/{tid}/heartbeat", heartbeat(tid))
        wait_until(lambda: terminal_or_none(daemon, "O2"), what="both terminals seen")
        own.stop()
        wait_until(lambda: daemon.metric("fleetwatch_mqtt_connected") == 0, what="disconnect seen")
        time.sleep(3.0)  # six intervals of silence from everyone: twice offline_after_missed
        own.start()
        wait_until(lambda: daemon.metric("fleetwatch_mqtt_connected") == 1, timeout=20, what="reconnected")
        with publisher(own.url, prefix) as pub:
            for seq in range(2, 8):  # O1 beats on through and past the grace; O2 stays silent
                pub.send("term/O1/heartbeat", heartbeat("O1", seq=seq))
                time.sleep(0.5)
        incidents = wait_until(lambda: daemon.get("/api/v1/incidents?status=all&limit=100")["items"] or None,
                               what="the silent terminal's incident")
        assert [(i["terminal_id"], i["cause"]) for i in incidents] == [("O2", "offline")]
        assert daemon.stop() == 0
    finally:
        if daemon.proc is not None:
            daemon.kill()
        own.stop()


@BOTH_BACKENDS
def test_sigterm_in_flight_loses_nothing_acknowledged(daemon: Daemon, broker: Broker) -> None:
    """SIGTERM amid a QoS 1 burst exits 0 quickly; after a restart every txn is stored exactly once."""
    total = 3000
    daemon.start()
    pub = Publisher(broker.url, daemon.prefix)
    try:
        for i in range(total):
            pub.send(f"term/S{i % 50}/txn", txn(f"S{i % 50}", f"S-{i}"), wait=False)
        time.sleep(0.05)
        started = time.monotonic()
        assert daemon.stop(signal.SIGTERM) == 0
        assert time.monotonic() - started < 5
        pub.flush()  # the broker has every message (queued for our persistent session if unacknowledged)
        daemon.start()
        wait_until(lambda: daemon.rows("select count(*) from transactions") == [(total,)],
                   timeout=30, what="all txns stored")
    finally:
        pub.close()
    assert daemon.stop() == 0
    assert daemon.rows("select count(distinct txn_id), count(*) from transactions") == [(total, total)]


@BOTH_BACKENDS
def test_state_survives_a_kill(daemon: Daemon, broker: Broker) -> None:
    """After SIGKILL, the restarted daemon still knows the terminals it had seen (loaded from the store)."""
    daemon.start()
    with publisher(broker.url, daemon.prefix) as pub:
        for i in range(20):
            pub.send(f"term/K{i}/heartbeat", heartbeat(f"K{i}", "MK", seq=3))
    wait_until(lambda: terminal_or_none(daemon, "K19"), what="K19 seen")
    # Terminal state is written coalesced (store.terminal_flush_s), at the writer's next wake
    # after that: wait until the store has all 20 rows rather than guess how long that takes.
    wait_until(lambda: daemon.rows("SELECT count(*) FROM terminals WHERE terminal_id LIKE 'K%'") == [(20,)],
               timeout=30, what="the 20 terminal rows committed")
    daemon.kill()
    daemon.start()
    term = terminal_or_none(daemon, "K7")
    assert term is not None
    assert term["merchant_id"] == "MK"
    assert term["seq"] == 3


def test_store_that_cannot_be_written_stops_the_daemon_with_an_error(daemon: Daemon, broker: Broker) -> None:
    """Another process holding the database locked past the busy timeout is unrecoverable: the daemon
    exits 3, the store's documented code (so its supervisor restarts it), says so in one line, and
    never acknowledged the txn it could not store."""
    daemon.start()
    with sqlite3.connect(daemon.db_path, timeout=1, isolation_level=None) as blocker:
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            with publisher(broker.url, daemon.prefix) as pub:
                pub.send("term/L1/txn", txn("L1", "L1-1"))
            assert daemon.proc is not None
            code = daemon.proc.wait(timeout=30)
            daemon.proc = None
        finally:
            blocker.execute("ROLLBACK")
    assert code == 3
    fatal = [json.loads(line) for line in daemon.logs().splitlines() if '"exit_code"' in line]
    assert [(f["level"], f["exit_code"]) for f in fatal] == [("error", 3)], daemon.logs()[-2000:]
    assert "store write failed" in fatal[0]["event"]
    daemon.start()  # restarted: the unacknowledged txn is redelivered by the broker and stored
    wait_until(lambda: daemon.rows("select txn_id from transactions") == [("L1-1",)],
               what="redelivered txn stored")


def test_session_and_its_queue_survive_a_broker_restart_while_the_daemon_is_down(tmp_path: Path,
                                                                               prefix: str) -> None:
    """The daemon's session is persistent on the broker's disk too: txns published while the daemon
    was stopped, then the broker restarted, are all delivered once the daemon is back."""
    (tmp_path / "broker").mkdir()
    own = Broker(tmp_path / "broker")
    own.start()
    daemon = Daemon(tmp_path, own.url, prefix=prefix, client_id="fw-persist")
    try:
        daemon.start()
        assert daemon.stop() == 0  # the session (and its subscriptions) stays on the broker
        with publisher(own.url, prefix) as pub:
            for i in range(200):
                pub.send(f"term/Q{i % 10}/txn", txn(f"Q{i % 10}", f"Q-{i}"), wait=False)
        own.restart()  # Mosquitto writes the queued messages to its persistence file and reads them back
        daemon.start()
        wait_until(lambda: daemon.metric("fleetwatch_messages_received_total", type="txn") >= 200,
                   what="the queued txns after the broker restart")
        assert daemon.stop() == 0
        assert daemon.rows("select count(distinct txn_id), count(*) from transactions") == [(200, 200)]
    finally:
        if daemon.proc is not None:
            daemon.kill()
        own.stop()


def test_broker_restart_mid_burst_loses_nothing_acknowledged(tmp_path: Path, prefix: str) -> None:
    """A QoS 1 burst the broker has accepted, then a broker restart while the daemon is still taking
    it: deliveries not yet acknowledged (their commit not done, or their PUBACK bound to the dropped
    connection) are redelivered on the new connection, and every txn is stored exactly once."""
    total = 3000
    (tmp_path / "broker").mkdir()
    own = Broker(tmp_path / "broker")
    own.start()
    daemon = Daemon(tmp_path, own.url, prefix=prefix, client_id="fw-midburst")
    try:
        daemon.start()
        with publisher(own.url, prefix) as pub:
            for i in range(total):
                pub.send(f"term/M{i % 50}/txn", txn(f"M{i % 50}", f"M-{i}"), wait=False)
        own.restart()
        wait_until(lambda: daemon.metric("fleetwatch_mqtt_connected") == 1, timeout=20, what="reconnected")
        wait_until(lambda: daemon.rows("select count(*) from transactions") == [(total,)],
                   timeout=30, what="all txns stored")
        assert daemon.metric("fleetwatch_mqtt_reconnects_total") >= 1
        assert daemon.stop() == 0
        assert daemon.rows("select count(distinct txn_id), count(*) from transactions") == [(total, total)]
    finally:
        if daemon.proc is not None:
            daemon.kill()
        own.stop()
