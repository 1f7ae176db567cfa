-- 0002_notices: merchant notices (CONTRACT §5) and generated secrets (§9) (PostgreSQL:
-- the same tables as schema/sqlite/0002_notices.sql, text columns COLLATE "C").

-- The terminals each upstream (group or fleet) incident is built on, with their merchant,
-- so the merchant page finds every shop an upstream affects, also shops whose terminals
-- only got host response codes and have no incident of their own. Written as the engine
-- counts them; read back at start for the open upstreams.
CREATE TABLE upstream_terminals (
    incident_id  TEXT COLLATE "C" NOT NULL,
    terminal_id  TEXT COLLATE "C" NOT NULL,
    merchant_id  TEXT COLLATE "C",
    added_at     DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (incident_id, terminal_id)
);
-- The merchant page: which upstreams touched this merchant.
CREATE INDEX upstream_terminals_merchant ON upstream_terminals (merchant_id, incident_id);

-- What the broker last acknowledged as each terminal's retained notice; NULL payload: cleared.
-- After a restart the daemon republishes only what differs from this.
CREATE TABLE terminal_notices (
    terminal_id   TEXT COLLATE "C" PRIMARY KEY,
    merchant_id   TEXT COLLATE "C",
    payload       TEXT COLLATE "C",
    published_at  DOUBLE PRECISION NOT NULL
);

-- Secrets the daemon generated because the operator left them empty (http.api_token,
-- notice.link_key): kept here so every instance on this store uses the same ones.
-- Deleting a row and restarting generates a new one (a new link key ends every link).
CREATE TABLE secrets (
    name        TEXT COLLATE "C" PRIMARY KEY,
    value       TEXT COLLATE "C" NOT NULL,
    created_at  DOUBLE PRECISION NOT NULL
);
