-- Notices for the admin written by the ledger in the transaction of what they report (a forced
-- reset, core/resets.py), mailed to ADMIN_EMAIL by the deliver-alerts flow, whichever caller
-- (API, CLI, flow) made it.
CREATE TABLE admin_notices (
    id           INTEGER PRIMARY KEY,
    subject      TEXT NOT NULL CHECK (length(subject) BETWEEN 1 AND 200),
    body         TEXT NOT NULL CHECK (length(body) <= 4000),
    created_at   INTEGER NOT NULL,
    delivered_at INTEGER
) STRICT;

CREATE INDEX admin_notices_pending ON admin_notices (id) WHERE delivered_at IS NULL;
