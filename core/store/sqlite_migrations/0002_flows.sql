-- What the flows need: the alert outbox, which reset closed each history row, and the
-- append-only audit of every repair reconciliation makes.

-- Budget alerts, written by the store in the transaction that records the usage (core/alerts.py
-- decides which thresholds a usage crosses). One per subject, period label and threshold.
CREATE TABLE alerts (
    id                INTEGER PRIMARY KEY,
    subject           TEXT NOT NULL CHECK (subject IN ('user', 'tenant')),
    subject_id        TEXT NOT NULL,
    period_label      TEXT NOT NULL,
    threshold_percent INTEGER NOT NULL CHECK (threshold_percent BETWEEN 1 AND 100),
    used              INTEGER NOT NULL CHECK (used >= 0),
    limit_amount      INTEGER NOT NULL CHECK (limit_amount >= 0),
    created_at        INTEGER NOT NULL,
    state             TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered')),
    attempts          INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error        TEXT CHECK (last_error IS NULL OR length(last_error) <= 500),
    last_attempt_at   INTEGER,
    mailed_at         INTEGER,
    posted_at         INTEGER,
    delivered_at      INTEGER,
    UNIQUE (subject, subject_id, period_label, threshold_percent)
) STRICT;

CREATE INDEX alerts_pending ON alerts (id) WHERE state = 'pending';

-- The label of the reset that closed the row, so a reset's summary reads exactly its rows.
ALTER TABLE period_history ADD COLUMN closed_by TEXT;
CREATE INDEX period_history_by_reset ON period_history (closed_by);

-- Every repair reconciliation makes (core/reconcile.py): what was recorded, what the facts say.
-- A correction of period history (which is append-only) lives here and is read through
-- period_history_effective.
CREATE TABLE ledger_repairs (
    id          INTEGER PRIMARY KEY,
    check_name  TEXT NOT NULL,
    subject_id  TEXT NOT NULL,
    recorded    INTEGER NOT NULL,
    expected    INTEGER NOT NULL,
    note        TEXT NOT NULL,
    repaired_at INTEGER NOT NULL
) STRICT;

CREATE INDEX ledger_repairs_by_subject ON ledger_repairs (check_name, subject_id);

CREATE TRIGGER ledger_repairs_no_update BEFORE UPDATE ON ledger_repairs
BEGIN SELECT RAISE(ABORT, 'ledger repairs are append-only'); END;
CREATE TRIGGER ledger_repairs_no_delete BEFORE DELETE ON ledger_repairs
BEGIN SELECT RAISE(ABORT, 'ledger repairs are append-only'); END;

-- Period history with the latest recorded correction of its used figure applied.
CREATE VIEW period_history_effective AS
SELECT h.id, h.user_id, h.label, h.period_start, h.period_end, h.tenant_id, h.product_id,
       h.plan_budget, h.credits, h.closed_by,
       COALESCE((SELECT r.expected FROM ledger_repairs r
                  WHERE r.check_name = 'history_used' AND r.subject_id = CAST(h.id AS TEXT)
                  ORDER BY r.id DESC LIMIT 1), h.used) AS used
  FROM period_history h;
