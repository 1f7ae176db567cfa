-- 0004_lifecycle: the terminal lifecycle (CONTRACT v1.1 §7 and §8) (PostgreSQL: the same tables
-- as schema/sqlite/0004_lifecycle.sql, text columns COLLATE "C").

-- The acquirer's status of each terminal it spoke of, also of terminals not seen yet (applied
-- when they appear). ts_ms orders statuses: an older one is ignored.
CREATE TABLE terminal_statuses (
    terminal_id      TEXT COLLATE "C" PRIMARY KEY,
    acquirer_status  TEXT COLLATE "C" NOT NULL CHECK (acquirer_status IN ('active', 'suspended', 'closed')),
    reason           TEXT COLLATE "C",
    note             TEXT COLLATE "C",
    since            DOUBLE PRECISION,
    ts_ms            BIGINT,
    merchant_id      TEXT COLLATE "C",
    received_at      DOUBLE PRECISION
);

-- Each merchant's operating hours: what was learned (the packed history of whole days as hex,
-- written with learn_days; the day in progress) and the operator's configured weekly hours (JSON).
CREATE TABLE merchant_hours (
    merchant_id  TEXT COLLATE "C" PRIMARY KEY,
    learned      TEXT COLLATE "C",
    learn_days   INTEGER NOT NULL,
    day          BIGINT NOT NULL,
    today        BIGINT NOT NULL,
    configured   TEXT COLLATE "C"
);
