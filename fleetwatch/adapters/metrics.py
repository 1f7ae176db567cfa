"""Prometheus metrics with bounded cardinality.

Counters and histograms are ordinary prometheus-client metrics on a private registry.
Gauges over the whole fleet (terminals by state, open incidents, money at stake) come
from a custom collector that reads an immutable snapshot the pipeline refreshes on its
sweep: a scrape never walks live state, and the exposition is the same size with a
thousand terminals or a million. No terminal, merchant or incident id is ever a label.
Every label combination the dashboards read is emitted from the start with value 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fleetwatch import __version__
from fleetwatch.core.lease import ROLES, Role
from fleetwatch.core.model import CAUSES, KINDS, MESSAGE_TYPES, REJECT_REASONS, SCOPES, SEVERITIES, TERMINAL_STATES
from fleetwatch.core.notify_events import EVENT_TYPES
from fleetwatch.core.settlement import minor_to_major
from fleetwatch.core.snapshot import FleetSnapshot
from fleetwatch.ports import CONNECT_FAILURE_REASONS
from fleetwatch.storage.retention import DELETED_TABLES

GAP_CAUSES = CAUSES["settlement_gap"]

class SnapshotCollector(Collector):
    """Reads the latest FleetSnapshot; never the live engine state."""

    def __init__(self, current: Callable[[], FleetSnapshot]) -> None:
        self._current = current

    def collect(self) -> Iterator[Metric]:
        snap = self._current()
        yield self._terminals(snap)
        yield from self._incidents(snap)
        yield from self._settlement(snap)

    @staticmethod
    def _terminals(snap: FleetSnapshot) -> Metric:
        family = GaugeMetricFamily(
            "fleetwatch_terminals", "Terminals known to the daemon by state and model.", labels=["state", "model"],
        )
        seen = dict(snap.terminals)
        for known in TERMINAL_STATES:
            if not any(key[0] == known for key in seen):
                seen[(known, "other")] = 0
        for (state, model), count in sorted(seen.items()):
            family.add_metric([state, model], count)
        return family

    @staticmethod
    def _incidents(snap: FleetSnapshot) -> Iterator[Metric]:
        for name, doc, values in (
            ("fleetwatch_incidents_open", "Open incidents (acknowledged included).", snap.incidents_open),
            ("fleetwatch_incidents_pageable", "Open incidents that are not suppressed by a parent.",
             snap.incidents_pageable),
        ):
            family = GaugeMetricFamily(name, doc, labels=["kind", "severity", "scope"])
            for kind in KINDS:
                for severity in SEVERITIES:
                    for scope in SCOPES:
                        family.add_metric([kind, severity, scope], values.get((kind, severity, scope), 0))
            yield family

    @staticmethod
    def _settlement(snap: FleetSnapshot) -> Iterator[Metric]:
        amount = GaugeMetricFamily(
            "fleetwatch_settlement_unsettled_amount",
            "Approved money not yet credited to merchants, in major currency units, by gap cause.",
            labels=["currency", "cause"],
        )
        currencies = sorted({c for c, _ in snap.unsettled_minor} | set(snap.oldest_unsettled_age_s) | {"CNY"})
        for currency in currencies:
            for cause in GAP_CAUSES:
                minor = snap.unsettled_minor.get((currency, cause), 0)
                amount.add_metric([currency, cause], minor_to_major(minor, currency))
        yield amount
        age = GaugeMetricFamily(
            "fleetwatch_settlement_oldest_unsettled_age_seconds",
            "Age of the oldest approved money still not credited, by currency.",
            labels=["currency"],
        )
        for currency in currencies:
            age.add_metric([currency], snap.oldest_unsettled_age_s.get(currency, 0.0))
        yield age
        gaps = GaugeMetricFamily(
            "fleetwatch_settlement_gaps_open", "Open settlement gap incidents by cause.", labels=["cause"],
        )
        for cause in GAP_CAUSES:
            gaps.add_metric([cause], snap.gaps_open.get(cause, 0))
        yield gaps


class Metrics:
    """Every metric the daemon exports, on its own registry."""

    def __init__(self) -> None:
        # `_created` samples double the series count and no dashboard or rule reads them.
        disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus-client
        self._scrape_hooks: list[Callable[[], None]] = []
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.snapshot = FleetSnapshot(at=0.0)
        self.received = Counter(
            "fleetwatch_messages_received", "Messages accepted, by type.", ["type"], registry=r,
        )
        self.rejected = Counter(
            "fleetwatch_messages_rejected", "Messages rejected, by reason.", ["reason"], registry=r,
        )
        self.processing_errors = Counter(
            "fleetwatch_processing_errors", "Messages whose processing raised (a bug; logged).", registry=r,
        )
        self.ingest_lag = Gauge(
            "fleetwatch_ingest_lag_seconds",
            "Age of the oldest received message whose effects are not committed yet.", registry=r,
        )
        self.opened = Counter(
            "fleetwatch_incidents_opened", "Incidents opened.", ["kind", "scope"], registry=r,
        )
        self.resolved = Counter(
            "fleetwatch_incidents_resolved", "Incidents resolved.", ["kind", "scope"], registry=r,
        )
        self.incident_duration = Histogram(
            "fleetwatch_incident_duration_seconds", "Time from open to resolve (MTTR).", ["kind"],
            buckets=(60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400, 259200, float("inf")), registry=r,
        )
        self.detection_latency = Histogram(
            "fleetwatch_detection_latency_seconds",
            "Time from receiving the deciding message to the incident being committed.", ["kind"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, float("inf")), registry=r,
        )
        self.mqtt_connected = Gauge(
            "fleetwatch_mqtt_connected", "1 while subscribed to the broker.", registry=r,
        )
        self.mqtt_reconnects = Counter(
            "fleetwatch_mqtt_reconnects", "Successful reconnections to the broker.", registry=r,
        )
        self.mqtt_connect_failures = Counter(
            "fleetwatch_mqtt_connect_failures",
            "Failed attempts to connect to the broker, by reason (a CONNACK reason code's name, unreachable, tls...).",
            ["reason"], registry=r,
        )
        self.store_write = Histogram(
            "fleetwatch_store_write_seconds", "Duration of one store write transaction.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, float("inf")), registry=r,
        )
        self.store_queue = Gauge(
            "fleetwatch_store_queue_depth", "Effects waiting for the next store write.", registry=r,
        )
        self.store_rows_deleted = Counter(
            "fleetwatch_store_rows_deleted", "Rows deleted by retention (store.retain_days), by table.", ["table"],
            registry=r,
        )
        self.store_size = Gauge(
            "fleetwatch_store_size_bytes", "Size of the store on disk (SQLite files, or the PostgreSQL database).",
            registry=r,
        )
        self.terminal_notices = Counter(
            "fleetwatch_terminal_notices_published",
            "Retained notices published to terminals' screens (one per change of what a screen shows).",
            registry=r,
        )
        self.terminal_notices_acked = Counter(
            "fleetwatch_terminal_notices_acked", "Terminal notices the broker acknowledged.", registry=r,
        )
        self.publish_backlog = Gauge(
            "fleetwatch_mqtt_publish_backlog", "Own publishes queued or waiting for their PUBACK.", registry=r,
        )
        self.notifications_sent = Counter(
            "fleetwatch_notifications_sent", "Merchant notification events a receiver accepted (2xx).",
            ["channel", "type"], registry=r,
        )
        self.notifications_failed = Counter(
            "fleetwatch_notifications_failed",
            "Merchant notification events given up: refused (4xx) or undelivered within notify.give_up_after_s.",
            ["channel"], registry=r,
        )
        self.notification_retries = Counter(
            "fleetwatch_notification_retries", "Delivery attempts that will be retried (5xx, 408, 429, network).",
            ["channel"], registry=r,
        )
        self.notification_queue = Gauge(
            "fleetwatch_notification_queue_depth", "Merchant notification events pending (waiting or retrying).",
            registry=r,
        )
        self.role = Gauge(
            "fleetwatch_role", "1 for this instance's role (active: holds the store's lease and the broker session).",
            ["role"], registry=r,
        )
        self.build_info = Gauge(
            "fleetwatch_build_info", "Always 1; the version label says which build runs.", ["version"], registry=r,
        )
        self.build_info.labels(version=__version__).set(1)
        self.set_role(Role.STANDBY)
        for table in DELETED_TABLES:
            self.store_rows_deleted.labels(table=table)
        for message_type in MESSAGE_TYPES:
            self.received.labels(type=message_type)
        for reason in REJECT_REASONS:
            self.rejected.labels(reason=reason)
        for failure in CONNECT_FAILURE_REASONS:
            self.mqtt_connect_failures.labels(reason=failure)
        for kind in KINDS:
            self.detection_latency.labels(kind=kind)
            self.incident_duration.labels(kind=kind)
            for scope in SCOPES:
                self.opened.labels(kind=kind, scope=scope)
                self.resolved.labels(kind=kind, scope=scope)
        r.register(SnapshotCollector(lambda: self.snapshot))

    def before_scrape(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` before every exposition: a hot path that counts in plain integers
        (cheaper than a Prometheus child's locked increment per message) hands its counts
        over there. Scrapes are served in the event loop thread, like the hot path."""
        self._scrape_hooks.append(hook)

    def notification_channels(self, channels: Iterable[str]) -> None:
        """Create every (channel, type) series of the configured receivers at 0."""
        for channel in channels:
            self.notifications_failed.labels(channel=channel)
            self.notification_retries.labels(channel=channel)
            for event_type in EVENT_TYPES:
                self.notifications_sent.labels(channel=channel, type=event_type)

    def notification_outcome(self, channel: str, event_type: str, outcome: str) -> None:
        """The delivery worker's ``on_outcome``."""
        if outcome == "sent":
            self.notifications_sent.labels(channel=channel, type=event_type).inc()
        elif outcome == "failed":
            self.notifications_failed.labels(channel=channel).inc()
        else:
            self.notification_retries.labels(channel=channel).inc()

    def set_role(self, role: Role) -> None:
        for each in ROLES:
            self.role.labels(role=each).set(1 if each is role else 0)

    def exposition(self) -> bytes:
        """The text format served at /metrics."""
        for hook in self._scrape_hooks:
            hook()
        return generate_latest(self.registry)
