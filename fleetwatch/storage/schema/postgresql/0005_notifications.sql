-- 0005_notifications: the merchant notifications' outbox (CONTRACT v1.1 §6) (PostgreSQL: the same table
-- as schema/sqlite/0005_notifications.sql, text columns COLLATE "C").

-- One row per event and receiver. The rules write the first columns in the same transaction
-- as the incident change that causes the event, and may rewrite them while the row is pending
-- and not yet due; the delivery worker owns attempts, next_at, last_error and sent_at. seq is
-- the order events are delivered in, per receiver, merchant and notice.
CREATE TABLE notifications (
    seq          BIGSERIAL PRIMARY KEY,
    event_id     TEXT COLLATE "C" NOT NULL UNIQUE,
    receiver     TEXT COLLATE "C" NOT NULL,
    merchant_id  TEXT COLLATE "C" NOT NULL,
    notice_id    TEXT COLLATE "C" NOT NULL,
    type         TEXT COLLATE "C" NOT NULL CHECK (type IN ('notice.opened', 'notice.updated', 'notice.resolved', 'notice.digest')),
    digest       TEXT COLLATE "C" NOT NULL,
    status       TEXT COLLATE "C" NOT NULL CHECK (status IN ('pending', 'sent', 'failed', 'collapsed')),
    due_at       DOUBLE PRECISION NOT NULL,
    created_at   DOUBLE PRECISION NOT NULL,
    items_json   TEXT COLLATE "C" NOT NULL,
    body         TEXT COLLATE "C" NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_at      DOUBLE PRECISION NOT NULL DEFAULT 0,
    last_error   TEXT COLLATE "C",
    sent_at      DOUBLE PRECISION
);
CREATE INDEX notifications_pending ON notifications (due_at) WHERE status = 'pending';
CREATE INDEX notifications_notice ON notifications (receiver, merchant_id, notice_id, seq);
CREATE INDEX notifications_status ON notifications (status, seq);
CREATE INDEX notifications_merchant ON notifications (merchant_id, seq);
