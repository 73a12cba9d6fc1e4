-- Resets run in bounded batches (core/resets.py says why and what holds): a run records what it
-- closes and the last user id it has visited, so a run cut short resumes where its last batch
-- committed.
CREATE TABLE reset_runs (
    id           INTEGER PRIMARY KEY,
    label        TEXT NOT NULL,
    apply_once   INTEGER NOT NULL CHECK (apply_once IN (0, 1)),
    forced       INTEGER NOT NULL CHECK (forced IN (0, 1)),
    close_before TEXT NOT NULL,
    users_after  TEXT NOT NULL,
    users_reset  INTEGER NOT NULL DEFAULT 0 CHECK (users_reset >= 0),
    started_at   INTEGER NOT NULL,
    finished_at  INTEGER
) STRICT;

-- At most one run unfinished at a time.
CREATE UNIQUE INDEX reset_runs_one_unfinished ON reset_runs ((finished_at IS NULL))
 WHERE finished_at IS NULL;

-- The reset rule reads the earliest and the latest open period: two index lookups, where a scan
-- of 1,000,000 users inside the starting transaction would keep other writes waiting.
CREATE INDEX users_by_period_label ON users (period_label);
