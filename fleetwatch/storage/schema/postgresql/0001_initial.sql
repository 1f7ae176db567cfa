-- 0001_initial: the first fleetwatch schema (PostgreSQL).
--
-- The same tables, columns (in the same order), keys and indexes as
-- schema/sqlite/0001_initial.sql, in PostgreSQL's spelling:
-- - generated ids are identity columns (SQLite: the rowid alias "INTEGER PRIMARY KEY");
-- - every text column is COLLATE "C": keys compare and sort by code point, as SQLite's
--   BINARY collation does, whatever locale the database was created with, so listings
--   and cursors are identical on both backends (and "T-1" sorts the same everywhere);
-- - the tables rewritten in place all day (terminals, batches, incidents) leave 30 % of
--   each page free, so an update that changes no indexed column stays on its page
--   (a HOT update: no index entry to add, less for autovacuum to clean up).
--
-- Column order follows the field order of TerminalRecord, TxnRecord, BatchRecord and
-- Incident in fleetwatch/core/model.py (the store contract tests check it).

CREATE TABLE terminals (
    terminal_id        TEXT COLLATE "C" PRIMARY KEY,
    merchant_id        TEXT COLLATE "C",
    model              TEXT COLLATE "C",
    fw                 TEXT COLLATE "C",
    app                TEXT COLLATE "C",
    serial             TEXT COLLATE "C",
    net_type           TEXT COLLATE "C",
    last_seen          DOUBLE PRECISION,
    last_heartbeat_at  DOUBLE PRECISION,
    last_ts_ms         BIGINT,
    seq                BIGINT,
    uptime_s           BIGINT,
    reboots            INTEGER NOT NULL DEFAULT 0,
    state              TEXT COLLATE "C" NOT NULL DEFAULT 'online',
    state_at           DOUBLE PRECISION,
    battery_pct        INTEGER,
    charging           BOOLEAN,
    rssi_dbm           INTEGER,
    printer            TEXT COLLATE "C",
    reader_fault       BOOLEAN NOT NULL DEFAULT FALSE,
    saf_pending        INTEGER,
    saf_oldest_ts_ms   BIGINT,
    tamper             BOOLEAN NOT NULL DEFAULT FALSE,
    maintenance_until  DOUBLE PRECISION
) WITH (fillfactor = 70);
-- The API lists a merchant's terminals in terminal_id order.
CREATE INDEX terminals_merchant ON terminals (merchant_id, terminal_id);

CREATE TABLE transactions (
    terminal_id          TEXT COLLATE "C" NOT NULL,
    txn_id               TEXT COLLATE "C" NOT NULL,
    merchant_id          TEXT COLLATE "C" NOT NULL,
    batch_no             BIGINT NOT NULL,
    currency             TEXT COLLATE "C" NOT NULL,
    type                 TEXT COLLATE "C" NOT NULL,
    outcome              TEXT COLLATE "C" NOT NULL,
    amount_minor         BIGINT NOT NULL,
    ts_ms                BIGINT NOT NULL,
    received_at          DOUBLE PRECISION NOT NULL,
    rc                   TEXT COLLATE "C",
    entry                TEXT COLLATE "C",
    error_stage          TEXT COLLATE "C",
    orig_txn_id          TEXT COLLATE "C",
    signed_amount_minor  BIGINT NOT NULL DEFAULT 0,
    -- txn_id is unique per terminal (CONTRACT.md §1): a QoS 1 redelivery is stored once.
    PRIMARY KEY (terminal_id, txn_id)
);
-- Restore seeds the engine's dedupe window with the most recently received txns.
CREATE INDEX transactions_received ON transactions (received_at);
-- Reconciliation: the transactions of one batch.
CREATE INDEX transactions_batch ON transactions (terminal_id, batch_no, currency);

CREATE TABLE batches (
    terminal_id           TEXT COLLATE "C" NOT NULL,
    batch_no              BIGINT NOT NULL,
    currency              TEXT COLLATE "C" NOT NULL,
    merchant_id           TEXT COLLATE "C" NOT NULL,
    tally_count           BIGINT NOT NULL DEFAULT 0,
    tally_amount_minor    BIGINT NOT NULL DEFAULT 0,
    first_approved_at     DOUBLE PRECISION,
    first_approved_ts_ms  BIGINT,
    last_txn_at           DOUBLE PRECISION,
    closed_at             DOUBLE PRECISION,
    close_count           BIGINT,
    close_amount_minor    BIGINT,
    close_result          TEXT COLLATE "C",
    close_ts_ms           BIGINT,
    settled_at            DOUBLE PRECISION,
    settled_count         BIGINT,
    settled_amount_minor  BIGINT,
    business_date         TEXT COLLATE "C",
    credited_at_ms        BIGINT,
    watch                 BOOLEAN NOT NULL DEFAULT FALSE,
    done                  BOOLEAN NOT NULL DEFAULT FALSE,
    -- Derived by the store on every write, so the reconciliation view can filter by day
    -- with an index: the settlement's business_date when settled, else the UTC date of
    -- the first approved txn (terminal clock), else the UTC date of the BatchClose.
    business_day          TEXT COLLATE "C",
    PRIMARY KEY (terminal_id, batch_no, currency)
) WITH (fillfactor = 70);
-- Restore loads only the batches still under watch.
CREATE INDEX batches_open ON batches (terminal_id, batch_no, currency) WHERE done = FALSE;
-- The reconciliation view: one merchant's batches of one business day, in key order.
CREATE INDEX batches_merchant_day ON batches (merchant_id, business_day, terminal_id, batch_no, currency);

CREATE TABLE settlements (
    id                    BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    terminal_id           TEXT COLLATE "C" NOT NULL,
    merchant_id           TEXT COLLATE "C" NOT NULL,
    batch_no              BIGINT NOT NULL,
    currency              TEXT COLLATE "C" NOT NULL,
    business_date         TEXT COLLATE "C" NOT NULL,
    settled_count         BIGINT NOT NULL,
    settled_amount_minor  BIGINT NOT NULL,
    credited_at_ms        BIGINT NOT NULL,
    received_at           DOUBLE PRECISION NOT NULL
);
CREATE INDEX settlements_batch ON settlements (terminal_id, batch_no, currency);

CREATE TABLE incidents (
    id              TEXT COLLATE "C" PRIMARY KEY,
    key             TEXT COLLATE "C" NOT NULL,
    kind            TEXT COLLATE "C" NOT NULL,
    cause           TEXT COLLATE "C" NOT NULL,
    scope           TEXT COLLATE "C" NOT NULL CHECK (scope IN ('terminal', 'merchant', 'group', 'fleet')),
    severity        TEXT COLLATE "C" NOT NULL CHECK (severity IN ('info', 'minor', 'major', 'critical')),
    status          TEXT COLLATE "C" NOT NULL CHECK (status IN ('open', 'acknowledged', 'resolved')),
    opened_at       DOUBLE PRECISION NOT NULL,
    updated_at      DOUBLE PRECISION NOT NULL,
    summary         TEXT COLLATE "C" NOT NULL,
    terminal_id     TEXT COLLATE "C",
    merchant_id     TEXT COLLATE "C",
    group_json      TEXT COLLATE "C",
    resolved_at     DOUBLE PRECISION,
    acknowledged_at DOUBLE PRECISION,
    parent_id       TEXT COLLATE "C",
    suppressed      BOOLEAN NOT NULL DEFAULT FALSE,
    previous_id     TEXT COLLATE "C",
    evidence_json   TEXT COLLATE "C" NOT NULL DEFAULT '{}',
    clearing_since  DOUBLE PRECISION
) WITH (fillfactor = 70);
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
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    incident_id  TEXT COLLATE "C" NOT NULL REFERENCES incidents (id),
    at           DOUBLE PRECISION NOT NULL,
    type         TEXT COLLATE "C" NOT NULL,
    detail_json  TEXT COLLATE "C" NOT NULL DEFAULT '{}'
);
CREATE INDEX incident_events_incident ON incident_events (incident_id, id);

CREATE TABLE dead_letters (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at      DOUBLE PRECISION NOT NULL,
    topic            TEXT COLLATE "C" NOT NULL,
    reason           TEXT COLLATE "C" NOT NULL,
    detail           TEXT COLLATE "C" NOT NULL,
    payload_excerpt  TEXT COLLATE "C"
);
