-- A reset's run in lanes, as PostgreSQL's (core/resets.py says why and what holds): contiguous
-- ranges of user ids, each with its own cursor. SQLite runs one lane per run (it has one
-- writer: lanes side by side would only queue for it), so users_upto stays NULL here.
CREATE TABLE reset_lanes (
    run_id      INTEGER NOT NULL REFERENCES reset_runs (id),
    lane        INTEGER NOT NULL CHECK (lane >= 0),
    users_after TEXT NOT NULL,
    users_upto  TEXT,
    users_reset INTEGER NOT NULL DEFAULT 0 CHECK (users_reset >= 0),
    finished    INTEGER NOT NULL DEFAULT 0 CHECK (finished IN (0, 1)),
    PRIMARY KEY (run_id, lane)
) STRICT;
