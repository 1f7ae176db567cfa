-- 0003_retention_and_lease: what retention and a future active/standby pair need (PostgreSQL).
--
-- Retention (fleetwatch/storage/retention.py) deletes the oldest rows in small chunks;
-- each chunk finds them through one of these indexes instead of scanning a table.
CREATE INDEX settlements_received ON settlements (received_at);
CREATE INDEX incidents_resolved ON incidents (resolved_at) WHERE status = 'resolved';
CREATE INDEX dead_letters_received ON dead_letters (received_at);
-- A done batch ages from its last news: settlement, else close, else last transaction.
CREATE INDEX batches_done_at ON batches ((COALESCE(settled_at, closed_at, last_txn_at, first_approved_at, 0)))
    WHERE done = TRUE;

-- The lease an active instance holds (CONTRACT.md §9). "token" is the fencing token: it
-- grows by one at every takeover, and a store told to fence on a token refuses every
-- write once the row holds another one. SQLite itself is one process's file; the table
-- exists on both backends so that a version number means the same schema everywhere.
CREATE TABLE leases (
    name        TEXT COLLATE "C" PRIMARY KEY,
    holder      TEXT COLLATE "C" NOT NULL,
    token       BIGINT NOT NULL,
    expires_at  DOUBLE PRECISION NOT NULL
);
