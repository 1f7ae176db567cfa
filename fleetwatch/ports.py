"""The ports between the pipeline and the outside world.

Each is a small Protocol so that swapping an implementation (another MQTT library,
another database) means one adapter module that implements it, and nothing else: the
pipeline, the engine and the API only ever see these.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from fleetwatch.core.lease import LeaseView
from fleetwatch.core.model import (
    AcquirerStatus,
    BatchRecord,
    DeadLetter,
    DeliveryResult,
    Effect,
    Incident,
    IncidentEvent,
    MerchantHoursRecord,
    NotificationRecord,
    TerminalNoticeWrite,
    TerminalRecord,
)
from fleetwatch.storage.retention import PurgeKind

MQTT5_CONNACK_REASONS: Final[dict[int, str]] = {
    0x80: "unspecified_error", 0x81: "malformed_packet", 0x82: "protocol_error",
    0x83: "implementation_specific_error", 0x84: "unsupported_protocol_version",
    0x85: "client_identifier_not_valid", 0x86: "bad_user_name_or_password", 0x87: "not_authorized",
    0x88: "server_unavailable", 0x89: "server_busy", 0x8A: "banned", 0x8C: "bad_authentication_method",
    0x90: "topic_name_invalid", 0x95: "packet_too_large", 0x97: "quota_exceeded",
    0x99: "payload_format_invalid", 0x9A: "retain_not_supported", 0x9B: "qos_not_supported",
    0x9C: "use_another_server", 0x9D: "server_moved", 0x9F: "connection_rate_exceeded",
}
"""The MQTT 5 CONNACK refusal reason codes (MQTT 5.0 §3.2.2.2) by their spec names."""

CONNECT_FAILURE_REASONS: Final[tuple[str, ...]] = (
    "unreachable", "tls", "timeout", "subscribe_refused", "other",
    *MQTT5_CONNACK_REASONS.values(),
)
"""Every value of ``fleetwatch_mqtt_connect_failures_total{reason}`` (all present from the
start): the broker's own CONNACK reasons, and what can fail around them (no TCP
connection, a TLS handshake or certificate failure, no answer in time, a refused
subscription, anything else)."""


@dataclass(frozen=True, slots=True)
class ConnectFailure:
    """Why the last attempt to connect to the broker failed.

    ``reason`` is one of CONNECT_FAILURE_REASONS (a bounded metric label); ``detail`` is
    what the broker or the network said, for the log and ``/readyz``, never a secret.
    """

    reason: str
    detail: str


class MessageSink(Protocol):
    """Takes one delivered message, synchronously, in the event loop thread.

    Returns None when the message needs no acknowledgement wait (QoS 0, or already
    durable), or a future that completes once the message's effects are committed: the
    source acknowledges a QoS 1 delivery only then, so a crash never loses it.
    """

    def __call__(self, topic: str, payload: bytes, qos: int, retained: bool) -> asyncio.Future[None] | None:
        ...


class MessageSource(Protocol):
    """A subscription that delivers the contract's topics to a sink until stopped."""

    @property
    def connected(self) -> bool:
        """True while subscribed and receiving."""
        ...

    @property
    def failure(self) -> ConnectFailure | None:
        """Why the source is not connected (None while connected or before the first attempt ends)."""
        ...

    async def run(self, sink: MessageSink) -> None:
        """Connect, subscribe and deliver; reconnect forever until ``stop()``.

        A refused login is retried like any other failure (the broker's password file may
        be fixed at any time); it is reported through ``failure``, never raised.
        """
        ...

    async def stop(self) -> None:
        """Stop taking messages (disconnect cleanly); returns when intake has stopped."""
        ...


# ---- the store -------------------------------------------------------------------------
#
# Three interfaces, one per user, so each user depends on what it calls and nothing more:
# the pipeline's writer, the start-up restore, and the HTTP API's reads. A backend
# (adapters/sqlite.py, adapters/postgres.py, testing.MemoryStore) implements all three
# plus the lifecycle of :class:`Store`; the store contract tests (tests/store/) hold every
# backend to the same answers. Row shapes, cursors and migrations discovery are shared in
# fleetwatch/storage/.


class StoreWriter(Protocol):
    """What the pipeline's writer task needs: one transaction per batch of effects.

    ``write`` snapshots the rows **when it is called** (the engine goes on mutating its
    objects) and returns an awaitable that commits them all or none: a QoS 1 message is
    acknowledged only once it has completed. Any database failure is a StoreError.
    """

    def write(
        self,
        effects: Sequence[Effect],
        terminals: Sequence[TerminalRecord] = (),
        batches: Sequence[BatchRecord] = (),
    ) -> Awaitable[None]: ...


class StoreRestore(Protocol):
    """What the daemon reads once at start to rebuild the engine."""

    def terminal_chunks(self) -> AsyncIterator[Sequence[TerminalRecord]]:
        """Every terminal, a few thousand at a time, so a million never exist at once (each
        chunk builds its records as it is iterated: storage.rows.TerminalChunk)."""
        ...

    async def load_open_incidents(self) -> list[Incident]:
        """Incidents not resolved (open or acknowledged), oldest first by (opened_at, id)."""
        ...

    async def load_open_batches(self) -> list[BatchRecord]:
        """Batches not yet done, by (terminal_id, batch_no, currency)."""
        ...

    async def load_recent_txn_keys(self, limit: int) -> list[tuple[str, str]]:
        """(terminal_id, txn_id) of the ``limit`` most recently received txns, oldest first."""
        ...

    async def load_open_upstream_members(self) -> dict[str, list[tuple[str, str | None]]]:
        """Per open upstream incident, the (terminal_id, merchant_id) it is built on, by terminal_id."""
        ...

    async def load_terminal_notices(self, *, shown_only: bool = False) -> list[TerminalNoticeWrite]:
        """What the broker last acknowledged as each terminal's notice, by terminal_id; ``shown_only``:
        only those that show something (not cleared, not ``items: []``)."""
        ...

    async def load_acquirer_statuses(self) -> list[AcquirerStatus]:
        """Every acquirer status kept (applied, or waiting for its terminal to appear), by terminal_id."""
        ...

    async def load_merchant_hours(self) -> list[MerchantHoursRecord]:
        """Every merchant's learned and configured operating hours, by merchant_id."""
        ...


class StoreReads(Protocol):
    """The read side the HTTP API serves from committed data (never blocked by the writer)."""

    async def list_incidents(
        self, *, status: str = "open", kind: str | None = None, terminal_id: str | None = None,
        merchant_id: str | None = None, scope: str | None = None, limit: int = 100, cursor: str | None = None,
    ) -> tuple[list[Incident], str | None]:
        """A page newest first by (opened_at, id) and the next page's cursor (keyset paging);
        BadRequest for a bad status, limit or cursor (fleetwatch/storage/paging.py)."""
        ...

    async def get_incident(self, incident_id: str) -> Incident | None: ...
    async def incident_events(self, incident_id: str) -> list[IncidentEvent]: ...
    async def get_terminal(self, terminal_id: str) -> TerminalRecord | None: ...

    async def list_terminals(
        self, *, merchant_id: str | None = None, limit: int = 100, cursor: str | None = None,
    ) -> tuple[list[TerminalRecord], str | None]:
        """A page in terminal_id order and the next page's cursor."""
        ...

    async def count_terminals(self) -> int: ...

    async def recent_dead_letters(self, limit: int) -> list[DeadLetter]:
        """The newest ``limit`` dead letters, newest first."""
        ...

    async def batches_for(
        self, merchant_id: str, business_date: str | None = None, terminal_id: str | None = None,
    ) -> list[BatchRecord]:
        """A merchant's batches by (terminal_id, batch_no, currency), optionally of one business day."""
        ...

    async def merchant_notice_incidents(
        self, merchant_id: str, resolved_since: float,
    ) -> tuple[list[Incident], dict[str, set[str]]]:
        """What a merchant's notices are built from: its open incidents and those resolved since
        ``resolved_since``, the upstreams built on its terminals, every ancestor of those
        (parents, ``previous_id``); and per upstream the merchant's terminals it is built on."""
        ...


class NotificationOutbox(Protocol):
    """The merchant notifications' outbox (CONTRACT §6) as the delivery worker, the restart and
    the ops API use it. Rows are written by the pipeline's transactions (``NotificationWrite``
    effects); see fleetwatch/storage/outbox.py for the statements every backend shares."""

    async def due_notifications(self, now: float, limit: int, *, margin_s: float = 0.0) -> list[NotificationRecord]:
        """Pending rows due by ``now - margin_s`` whose retry time (``next_at``) has come, in
        insertion order (``seq``), at most ``limit``; of each (receiver, notice) only the oldest
        pending row (a notice's events go out in order; an upstream notice is one per merchant)."""
        ...

    async def record_deliveries(self, results: Sequence[DeliveryResult]) -> None:
        """Attempts' outcomes, in one transaction (fenced like every write); a row no longer
        pending is left as it is."""
        ...

    async def load_notification_state(self) -> list[NotificationRecord]:
        """Every pending row and the last told row of each (receiver, notice), by ``seq``."""
        ...

    async def list_notifications(
        self, *, status: str = "all", merchant_id: str | None = None, limit: int = 100, cursor: str | None = None,
    ) -> tuple[list[NotificationRecord], str | None]:
        """A page newest first by ``seq`` and the next page's cursor; BadRequest for a bad status,
        limit or cursor."""
        ...

    async def count_pending_notifications(self) -> int: ...


class Store(StoreWriter, StoreRestore, StoreReads, NotificationOutbox, Protocol):
    """A whole backend: the three interfaces, retention, fencing and its lifecycle."""

    @property
    def location(self) -> str:
        """Where the store is, safe to log (passwords masked)."""
        ...

    async def delete_expired(self, kind: PurgeKind, before: float, limit: int) -> Mapping[str, int]:
        """Delete at most ``limit`` rows of ``kind`` that aged out before ``before`` (epoch s),
        in one short transaction; rows deleted per table (fleetwatch/storage/retention.py)."""
        ...

    async def size_bytes(self) -> int:
        """The store's size on disk, for ``fleetwatch_store_size_bytes``."""
        ...

    async def secret(self, name: str, candidate: str) -> str:
        """The generated secret ``name`` (``http.api_token``, ``notice.link_key``): ``candidate``
        is stored if there is none yet, and the stored one returned (every instance shares it)."""
        ...

    def fence(self, token: int | None) -> None:
        """From now on every write commits only while the lease row still holds ``token``
        (StoreError otherwise, nothing written); None turns the check off. The lease
        itself (who holds it, renewal) belongs to the high-availability role logic."""
        ...

    async def close(self) -> None:
        """Close every connection (waits for a write in progress); idempotent."""
        ...


class Leases(Protocol):
    """The lease row several instances on one store contend for (CONTRACT.md §9, core/lease.py).

    Times are the **database's**: a claim succeeds only when the row has expired by the
    store's clock, and a renewal sets its expiry to the store's now + ``lease_s``, so no two
    machines' clocks are ever compared. A claim that succeeds bumps the fencing token;
    :meth:`Store.fence` then makes every commit check it. Errors are StoreError.
    """

    async def claim(self, holder: str, lease_s: float) -> LeaseView:
        """Take the lease if there is none or it has expired (a new token), else say who holds it."""
        ...

    async def renew(self, holder: str, token: int, lease_s: float) -> LeaseView:
        """Extend the lease ``holder`` holds with ``token``; ``held`` False once another took it."""
        ...

    async def release(self, holder: str, token: int) -> None:
        """Let the lease expire now (a clean stop), if ``holder`` still holds it with ``token``."""
        ...

    async def disconnect_lease(self) -> None:
        """Close whatever connection the lease calls opened, from the event loop that made them."""
        ...


class MessagePublisher(Protocol):
    """Retained QoS 1 publishes through the daemon's own connection (terminal notices).

    ``publish`` never blocks: the message is queued (a newer payload for the same topic
    replaces one still waiting), sent while connected, sent again after a reconnect if
    it was in flight, and ``on_acked`` runs once the broker has acknowledged it. An
    empty payload clears the topic's retained message.
    """

    def publish(self, topic: str, payload: bytes, *, on_acked: Callable[[], None] | None = None) -> None:
        ...

    @property
    def publish_backlog(self) -> int:
        """Messages queued or waiting for their acknowledgement."""
        ...
