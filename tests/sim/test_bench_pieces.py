"""Benchmark harness pieces that need no daemon: report writing, stream encoding, metric parsing."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from pathlib import Path

from bench import report, stream
from bench.daemon import daemon_config, metric_sum
from fleetwatch.sim import wire


def test_report_sections_are_replaced_in_place() -> None:
    """Rerunning a figure rewrites its own section only, keeping the others and the order."""
    when = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    a = report.Figure("ingest", "Ingest", "python -m bench ingest", [("rate", "50,000 msg/s", ">= 40,000", True)])
    b = report.Figure("memory", "Memory", "python -m bench memory", [("rss", "900 B", "<= 1024 B", True)])
    text = report.update(report.update("", b, when), a, when)
    assert text.index("bench:ingest") < text.index("bench:memory")
    a.rows = [("rate", "60,000 msg/s", ">= 40,000", True)]
    again = report.update(text, a, when)
    assert "60,000" in again
    assert "50,000" not in again
    assert again.count("<!-- bench:ingest -->") == 1
    assert "900 B" in again
    assert "python -m bench ingest" in again
    assert "2026-01-02" in again


def test_missed_target_marks_the_figure_failed() -> None:
    """A row that misses its target makes the figure (and the bench exit code) fail."""
    fig = report.Figure("latency", "L", "cmd", [("p99", "1500 ms", "<= 1000 ms", False), ("p50", "1", "", None)])
    assert not fig.ok
    assert "**MISSED**" in fig.markdown()


def test_stream_mix_is_ninety_ten_and_parses() -> None:
    """The pre-encoded stream is 90% QoS 0 heartbeats / 10% QoS 1 txns, valid frames, unique packet ids
    per connection within any 65535 window."""
    terms = stream.make_terminals(50)
    st = stream.mix(terms, 1000, connections=3)
    assert (st.heartbeats, st.txns) == (900, 100)
    assert sum(lane.messages for lane in st.lanes) == 1000
    qos = {0: 0, 1: 0}
    for lane in st.lanes:
        ids = []
        for frames, q1, n in lane.chunks:
            pkts = wire.split_packets(bytearray(frames))
            assert len(pkts) == n
            msgs = [wire.parse_publish(p) for p in pkts]
            assert sum(m.qos for m in msgs) == q1
            for m in msgs:
                qos[m.qos] += 1
                if m.qos:
                    ids.append(m.packet_id)
        assert len(ids) == len(set(ids))
    assert qos == {0: 900, 1: 100}


def test_metric_sum_adds_all_label_sets() -> None:
    """The received counter is summed over its type labels, ignoring HELP/TYPE and similar names."""
    page = ("# HELP fleetwatch_messages_received_total x\n"
            'fleetwatch_messages_received_total{type="heartbeat"} 900.0\n'
            'fleetwatch_messages_received_total{type="txn"} 100.0\n'
            'fleetwatch_messages_received_total_created{type="txn"} 1.7e9\n')
    assert metric_sum(page, "fleetwatch_messages_received_total") == 1000.0


def test_daemon_config_is_the_prescribed_one() -> None:
    """The temp config carries the broker port, an absolute sqlite URL and the bench token."""
    conf = tomllib.loads(daemon_config(1884, 9999, Path("/tmp/x/fw.db")))
    assert conf["mqtt"] == {"url": "mqtt://127.0.0.1:1884", "topic_prefix": "fleet/v1", "client_id": "fleetwatch-bench"}
    assert conf["store"]["url"] == "sqlite:////tmp/x/fw.db"
    assert conf["http"] == {"listen": "127.0.0.1:9999", "api_token": "bench"}
