-- The ledger: plans, tenants, users with their open period's counters, and the facts behind them.
-- Money columns are INTEGER nano-dollars (core.money); times are INTEGER ms since the epoch (UTC).
-- Counters kept so that a check or a log never sums rows, maintained here by triggers, so no
-- code path can move a fact without its counter:
--   users.used   = SUM(usage.cost) of the user's open period
--   users.held   = SUM(reservations.amount) of the user's holds in state 'open'
--   tenants.used / tenants.held = the same sums over the tenant's users
-- A reset (core/store/sqlite.py reset_periods) sets used to 0 when it opens a new period.

CREATE TABLE products (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    monthly_budget INTEGER NOT NULL CHECK (monthly_budget >= 0),
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
) STRICT;

CREATE TABLE tenants (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    monthly_budget INTEGER CHECK (monthly_budget IS NULL OR monthly_budget >= 0),
    used           INTEGER NOT NULL DEFAULT 0 CHECK (used >= 0),
    held           INTEGER NOT NULL DEFAULT 0 CHECK (held >= 0),
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
) STRICT;

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    email         TEXT NOT NULL,
    email_key     TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    product_id    TEXT NOT NULL REFERENCES products (id),
    tenant_id     TEXT NOT NULL REFERENCES tenants (id),
    status        TEXT NOT NULL CHECK (status IN ('active', 'suspended')),
    period_label  TEXT NOT NULL,
    period_start  INTEGER NOT NULL,
    credits       INTEGER NOT NULL DEFAULT 0 CHECK (credits >= 0),
    used          INTEGER NOT NULL DEFAULT 0 CHECK (used >= 0),
    held          INTEGER NOT NULL DEFAULT 0 CHECK (held >= 0),
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
) STRICT;

CREATE INDEX users_by_tenant ON users (tenant_id);

CREATE TABLE usage (
    request_id       TEXT PRIMARY KEY,
    user_id          TEXT NOT NULL REFERENCES users (id),
    tenant_id        TEXT NOT NULL,
    model            TEXT NOT NULL,
    tokens_input     INTEGER NOT NULL CHECK (tokens_input >= 0),
    tokens_output    INTEGER NOT NULL CHECK (tokens_output >= 0),
    cost             INTEGER NOT NULL CHECK (cost >= 0),
    response_time_ms INTEGER,
    period_start     INTEGER NOT NULL,
    created_at       INTEGER NOT NULL
) STRICT;

CREATE INDEX usage_by_user_time ON usage (user_id, created_at);

CREATE TRIGGER usage_no_update BEFORE UPDATE ON usage
BEGIN SELECT RAISE(ABORT, 'usage is append-only'); END;
CREATE TRIGGER usage_no_delete BEFORE DELETE ON usage
BEGIN SELECT RAISE(ABORT, 'usage is append-only'); END;

CREATE TABLE reservations (
    request_id TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (id),
    tenant_id  TEXT NOT NULL,
    amount     INTEGER NOT NULL CHECK (amount >= 0),
    state      TEXT NOT NULL CHECK (state IN ('open', 'settled', 'released', 'expired')),
    expires_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    closed_at  INTEGER
) STRICT;

CREATE INDEX reservations_open_by_expiry ON reservations (expires_at) WHERE state = 'open';
CREATE INDEX reservations_open_by_user ON reservations (user_id, expires_at) WHERE state = 'open';
CREATE INDEX reservations_open_by_tenant ON reservations (tenant_id, expires_at) WHERE state = 'open';

CREATE TABLE credit_grants (
    grant_id     TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users (id),
    amount       INTEGER NOT NULL CHECK (amount > 0),
    reason       TEXT NOT NULL,
    period_start INTEGER NOT NULL,
    created_at   INTEGER NOT NULL
) STRICT;

CREATE INDEX credit_grants_by_user ON credit_grants (user_id, period_start);

CREATE TABLE period_history (
    id             INTEGER PRIMARY KEY,
    user_id        TEXT NOT NULL REFERENCES users (id),
    label          TEXT NOT NULL,
    period_start   INTEGER NOT NULL,
    period_end     INTEGER NOT NULL,
    tenant_id      TEXT NOT NULL,
    product_id     TEXT NOT NULL,
    plan_budget    INTEGER NOT NULL,
    credits        INTEGER NOT NULL,
    used           INTEGER NOT NULL
) STRICT;

CREATE INDEX period_history_by_user ON period_history (user_id, period_start);

CREATE TRIGGER period_history_no_update BEFORE UPDATE ON period_history
BEGIN SELECT RAISE(ABORT, 'period history is append-only'); END;
CREATE TRIGGER period_history_no_delete BEFORE DELETE ON period_history
BEGIN SELECT RAISE(ABORT, 'period history is append-only'); END;

CREATE TABLE applied_resets (
    label       TEXT PRIMARY KEY,
    users_reset INTEGER NOT NULL,
    applied_at  INTEGER NOT NULL
) STRICT;

-- Usage counts its cost and settles the hold placed under the same request_id (an open hold,
-- or one that expired before the usage arrived).
CREATE TRIGGER usage_counts AFTER INSERT ON usage
BEGIN
    UPDATE users SET used = used + NEW.cost WHERE id = NEW.user_id;
    UPDATE tenants SET used = used + NEW.cost WHERE id = NEW.tenant_id;
    UPDATE reservations SET state = 'settled', closed_at = NEW.created_at
     WHERE request_id = NEW.request_id AND state IN ('open', 'expired');
END;

CREATE TRIGGER reservation_holds AFTER INSERT ON reservations WHEN NEW.state = 'open'
BEGIN
    UPDATE users SET held = held + NEW.amount WHERE id = NEW.user_id;
    UPDATE tenants SET held = held + NEW.amount WHERE id = NEW.tenant_id;
END;

CREATE TRIGGER reservation_unholds AFTER UPDATE OF state ON reservations
WHEN OLD.state = 'open' AND NEW.state <> 'open'
BEGIN
    UPDATE users SET held = held - OLD.amount WHERE id = OLD.user_id;
    UPDATE tenants SET held = held - OLD.amount WHERE id = OLD.tenant_id;
END;

-- The only moves of a hold: open → settled | released | expired, and expired → settled.
CREATE TRIGGER reservation_moves BEFORE UPDATE ON reservations
WHEN NOT (
    (OLD.state = 'open' AND NEW.state IN ('settled', 'released', 'expired'))
    OR (OLD.state = 'expired' AND NEW.state = 'settled')
) OR NEW.request_id IS NOT OLD.request_id OR NEW.user_id IS NOT OLD.user_id
  OR NEW.tenant_id IS NOT OLD.tenant_id OR NEW.amount IS NOT OLD.amount
BEGIN SELECT RAISE(ABORT, 'a reservation only moves from open, or from expired to settled'); END;
