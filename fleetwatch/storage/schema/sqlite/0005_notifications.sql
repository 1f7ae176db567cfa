-- 0005_notifications: the merchant notifications' outbox (CONTRACT v1.1 §6).

-- One row per event and receiver. The rules write the first columns in the same transaction
-- as the incident change that causes the event, and may rewrite them while the row is pending
-- and not yet due; the delivery worker owns attempts, next_at, last_error and sent_at. seq is
-- the order events are delivered in, per receiver, merchant and notice.
CREATE TABLE notifications (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     TEXT NOT NULL UNIQUE,
    receiver     TEXT NOT NULL,
    merchant_id  TEXT NOT NULL,
    notice_id    TEXT NOT NULL,
    type         TEXT NOT NULL CHECK (type IN ('notice.opened', 'notice.updated', 'notice.resolved', 'notice.digest')),
    digest       TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('pending', 'sent', 'failed', 'collapsed')),
    due_at       DOUBLE PRECISION NOT NULL,
    created_at   DOUBLE PRECISION NOT NULL,
    items_json   TEXT NOT NULL,
    body         TEXT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_at      DOUBLE PRECISION NOT NULL DEFAULT 0,
    last_error   TEXT,
    sent_at      DOUBLE PRECISION
);
CREATE INDEX notifications_pending ON notifications (due_at) WHERE status = 'pending';
CREATE INDEX notifications_notice ON notifications (receiver, merchant_id, notice_id, seq);
CREATE INDEX notifications_status ON notifications (status, seq);
CREATE INDEX notifications_merchant ON notifications (merchant_id, seq);
