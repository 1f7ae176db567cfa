-- 0001_initial: the first fleetwatch schema (SQLite).
--
-- schema/postgresql/0001_initial.sql is the same schema in PostgreSQL's spelling; the two
-- differ only where the dialects must: "id INTEGER PRIMARY KEY" (SQLite's rowid alias)
-- is an identity column there, and its text columns are COLLATE "C" (SQLite compares
-- text byte by byte already). DOUBLE PRECISION for epoch-second floats, BIGINT for epoch
-- milliseconds and money in minor units, BOOLEAN for flags (SQLite stores 0/1), partial
-- indexes, ON CONFLICT upserts in the code.
--
-- Column order of terminals, transactions, batches and incidents follows the field order
-- of TerminalRecord, TxnRecord, BatchRecord and Incident in fleetwatch/core/model.py:
-- the store builds rows and records positionally (tests check the two stay in step).

CREATE TABLE terminals (
    terminal_id        TEXT PRIMARY KEY,
    merchant_id        TEXT,
    model              TEXT,
    fw                 TEXT,
    app                TEXT,
    serial             TEXT,
    net_type           TEXT,
    last_seen          DOUBLE PRECISION,
    last_heartbeat_at  DOUBLE PRECISION,
    last_ts_ms         BIGINT,
    seq                BIGINT,
    uptime_s           BIGINT,
    reboots            INTEGER NOT NULL DEFAULT 0,
    state              TEXT NOT NULL DEFAULT 'online',
    state_at           DOUBLE PRECISION,
    battery_pct        INTEGER,
    charging           BOOLEAN,
    rssi_dbm           INTEGER,
    printer            TEXT,
    reader_fault       BOOLEAN NOT NULL DEFAULT FALSE,
    saf_pending        INTEGER,
    saf_oldest_ts_ms   BIGINT,
    tamper             BOOLEAN NOT NULL DEFAULT FALSE,
    maintenance_until  DOUBLE PRECISION
);
-- The API lists a merchant's terminals in terminal_id order.
CREATE INDEX terminals_merchant ON terminals (merchant_id, terminal_id);

CREATE TABLE transactions (
    terminal_id          TEXT NOT NULL,
    txn_id               TEXT NOT NULL,
    merchant_id          TEXT NOT NULL,
    batch_no             BIGINT NOT NULL,
    currency             TEXT NOT NULL,
    type                 TEXT NOT NULL,
    outcome              TEXT NOT NULL,
    amount_minor         BIGINT NOT NULL,
    ts_ms                BIGINT NOT NULL,
    received_at          DOUBLE PRECISION NOT NULL,
    rc                   TEXT,
    entry                TEXT,
    error_stage          TEXT,
    orig_txn_id          TEXT,
    signed_amount_minor  BIGINT NOT NULL DEFAULT 0,
    -- txn_id is unique per terminal (CONTRACT.md §1): a QoS 1 redelivery is stored once.
    PRIMARY KEY (terminal_id, txn_id)
);
-- Restore seeds the engine's dedupe window with the most recently received txns.
CREATE INDEX transactions_received ON transactions (received_at);
-- Reconciliation: the transactions of one batch.
CREATE INDEX transactions_batch ON transactions (terminal_id, batch_no, currency);

CREATE TABLE batches (
    terminal_id           TEXT NOT NULL,
    batch_no              BIGINT NOT NULL,
    currency              TEXT NOT NULL,
    merchant_id           TEXT NOT NULL,
    tally_count           BIGINT NOT NULL DEFAULT 0,
    tally_amount_minor    BIGINT NOT NULL DEFAULT 0,
    first_approved_at     DOUBLE PRECISION,
    first_approved_ts_ms  BIGINT,
    last_txn_at           DOUBLE PRECISION,
    closed_at             DOUBLE PRECISION,
    close_count           BIGINT,
    close_amount_minor    BIGINT,
    close_result          TEXT,
    close_ts_ms           BIGINT,
    settled_at            DOUBLE PRECISION,
    settled_count         BIGINT,
    settled_amount_minor  BIGINT,
    business_date         TEXT,
    credited_at_ms        BIGINT,
    watch                 BOOLEAN NOT NULL DEFAULT FALSE,
    done                  BOOLEAN NOT NULL DEFAULT FALSE,
    -- Derived by the store on every write, so the reconciliation view can filter by day
    -- with an index: the settlement's business_date when settled, else the UTC date of
    -- the first approved txn (terminal clock), else the UTC date of the BatchClose.
    business_day          TEXT,
    PRIMARY KEY (terminal_id, batch_no, currency)
);
-- Restore loads only the batches still under watch.
CREATE INDEX batches_open ON batches (terminal_id, batch_no, currency) WHERE done = FALSE;
-- The reconciliation view: one merchant's batches of one business day, in key order.
CREATE INDEX batches_merchant_day ON batches (merchant_id, business_day, terminal_id, batch_no, currency);

CREATE TABLE settlements (
    id                    INTEGER PRIMARY KEY,
    terminal_id           TEXT NOT NULL,
    merchant_id           TEXT NOT NULL,
    batch_no              BIGINT NOT NULL,
    currency              TEXT NOT NULL,
    business_date         TEXT NOT NULL,
    settled_count         BIGINT NOT NULL,
    settled_amount_minor  BIGINT NOT NULL,
    credited_at_ms        BIGINT NOT NULL,
    received_at           DOUBLE PRECISION NOT NULL
);
CREATE INDEX settlements_batch ON settlements (terminal_id, batch_no, currency);

CREATE TABLE incidents (
    id              TEXT PRIMARY KEY,
    key             TEXT NOT NULL,
    kind            TEXT NOT NULL,
    cause           TEXT NOT NULL,
    scope           TEXT NOT NULL CHECK (scope IN ('terminal', 'merchant', 'group', 'fleet')),
    severity        TEXT NOT NULL CHECK (severity IN ('info', 'minor', 'major', 'critical')),
    status          TEXT NOT NULL CHECK (status IN ('open', 'acknowledged', 'resolved')),
    opened_at       DOUBLE PRECISION NOT NULL,
    updated_at      DOUBLE PRECISION NOT NULL,
    summary         TEXT NOT NULL,
    terminal_id     TEXT,
    merchant_id     TEXT,
    group_json      TEXT,
    resolved_at     DOUBLE PRECISION,
    acknowledged_at DOUBLE PRECISION,
    parent_id       TEXT,
    suppressed      BOOLEAN NOT NULL DEFAULT FALSE,
    previous_id     TEXT,
    evidence_json   TEXT NOT NULL DEFAULT '{}',
    clearing_since  DOUBLE PRECISION
);
-- The contract's rule "one open incident per key", enforced by the store as well as by
-- the engine: a write that would open a second one fails as a whole.
CREATE UNIQUE INDEX incidents_open_key ON incidents (key) WHERE status <> 'resolved';
-- Listing newest first (scanned backwards), all statuses and open ones only; restore
-- reads the open ones.
CREATE INDEX incidents_newest ON incidents (opened_at, id);
CREATE INDEX incidents_open_newest ON incidents (opened_at, id) WHERE status <> 'resolved';
-- Listing filtered by one of the API's filters, still newest first.
CREATE INDEX incidents_terminal ON incidents (terminal_id, opened_at, id);
CREATE INDEX incidents_merchant ON incidents (merchant_id, opened_at, id);
CREATE INDEX incidents_kind ON incidents (kind, opened_at, id);
CREATE INDEX incidents_status ON incidents (status, opened_at, id);

CREATE TABLE incident_events (
    id           INTEGER PRIMARY KEY,
    incident_id  TEXT NOT NULL REFERENCES incidents (id),
    at           DOUBLE PRECISION NOT NULL,
    type         TEXT NOT NULL,
    detail_json  TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX incident_events_incident ON incident_events (incident_id, id);

CREATE TABLE dead_letters (
    id               INTEGER PRIMARY KEY,
    received_at      DOUBLE PRECISION NOT NULL,
    topic            TEXT NOT NULL,
    reason           TEXT NOT NULL,
    detail           TEXT NOT NULL,
    payload_excerpt  TEXT
);
