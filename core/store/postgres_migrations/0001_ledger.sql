-- The ledger on PostgreSQL: the same tables, counters, CHECKs and triggers as
-- core/store/sqlite_migrations/0001_ledger.sql, plus the hot writes as functions (one round trip
-- each). Money columns are BIGINT nano-dollars (core.money); times are BIGINT ms since the epoch.
-- Counters kept so that a check or a log never sums rows, maintained here by triggers, so no
-- code path can move a fact without its counter:
--   users.used   = SUM(usage.cost) of the user's open period
--   users.held   = SUM(reservations.amount) of the user's holds in state 'open'
--   tenants.used / tenants.held = the same sums over the tenant's users
--
-- Locks, always taken in this order so that writers never deadlock: the request_id's advisory
-- lock, then the user's row, then the user's reservations, then the tenant's row. Every write
-- that decides on a user's figures holds that user's row (SELECT ... FOR UPDATE) first.
-- Advisory lock keys: (1651076204 = 'bill', n): 1 migrations, 2 resets, 3 sweeps; a request_id's
-- key is hashtextextended(request_id, 0) (a one-key lock, a separate key space).

CREATE TABLE products (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    monthly_budget BIGINT NOT NULL CHECK (monthly_budget >= 0),
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);

CREATE TABLE tenants (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    monthly_budget BIGINT CHECK (monthly_budget IS NULL OR monthly_budget >= 0),
    used           BIGINT NOT NULL DEFAULT 0 CHECK (used >= 0),
    held           BIGINT NOT NULL DEFAULT 0 CHECK (held >= 0),
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    email         TEXT NOT NULL,
    email_key     TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    product_id    TEXT NOT NULL REFERENCES products (id),
    tenant_id     TEXT NOT NULL REFERENCES tenants (id),
    status        TEXT NOT NULL CHECK (status IN ('active', 'suspended')),
    period_label  TEXT NOT NULL,
    period_start  BIGINT NOT NULL,
    credits       BIGINT NOT NULL DEFAULT 0 CHECK (credits >= 0),
    used          BIGINT NOT NULL DEFAULT 0 CHECK (used >= 0),
    held          BIGINT NOT NULL DEFAULT 0 CHECK (held >= 0),
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

CREATE INDEX users_by_tenant ON users (tenant_id);

CREATE TABLE usage (
    request_id       TEXT PRIMARY KEY,
    user_id          TEXT NOT NULL REFERENCES users (id),
    tenant_id        TEXT NOT NULL,
    model            TEXT NOT NULL,
    tokens_input     BIGINT NOT NULL CHECK (tokens_input >= 0),
    tokens_output    BIGINT NOT NULL CHECK (tokens_output >= 0),
    cost             BIGINT NOT NULL CHECK (cost >= 0),
    response_time_ms BIGINT,
    period_start     BIGINT NOT NULL,
    created_at       BIGINT NOT NULL
);

CREATE INDEX usage_by_user_time ON usage (user_id, created_at);

CREATE TABLE reservations (
    request_id TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (id),
    tenant_id  TEXT NOT NULL,
    amount     BIGINT NOT NULL CHECK (amount >= 0),
    state      TEXT NOT NULL CHECK (state IN ('open', 'settled', 'released', 'expired')),
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    closed_at  BIGINT
);

CREATE INDEX reservations_open_by_expiry ON reservations (expires_at) WHERE state = 'open';
CREATE INDEX reservations_open_by_user ON reservations (user_id, expires_at) WHERE state = 'open';
CREATE INDEX reservations_open_by_tenant ON reservations (tenant_id, expires_at) WHERE state = 'open';

CREATE TABLE credit_grants (
    grant_id     TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users (id),
    amount       BIGINT NOT NULL CHECK (amount > 0),
    reason       TEXT NOT NULL,
    period_start BIGINT NOT NULL,
    created_at   BIGINT NOT NULL
);

CREATE INDEX credit_grants_by_user ON credit_grants (user_id, period_start);

CREATE TABLE period_history (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id        TEXT NOT NULL REFERENCES users (id),
    label          TEXT NOT NULL,
    period_start   BIGINT NOT NULL,
    period_end     BIGINT NOT NULL,
    tenant_id      TEXT NOT NULL,
    product_id     TEXT NOT NULL,
    plan_budget    BIGINT NOT NULL,
    credits        BIGINT NOT NULL,
    used           BIGINT NOT NULL
);

CREATE INDEX period_history_by_user ON period_history (user_id, period_start);

CREATE TABLE applied_resets (
    label       TEXT PRIMARY KEY,
    users_reset BIGINT NOT NULL,
    applied_at  BIGINT NOT NULL
);

-- Append-only: usage and period history refuse UPDATE, DELETE and TRUNCATE.
CREATE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_ARGV[0] USING ERRCODE = 'integrity_constraint_violation';
END $$;

CREATE TRIGGER usage_no_change BEFORE UPDATE OR DELETE ON usage
FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change('usage');
CREATE TRIGGER usage_no_truncate BEFORE TRUNCATE ON usage
FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change('usage');
CREATE TRIGGER period_history_no_change BEFORE UPDATE OR DELETE ON period_history
FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change('period history');
CREATE TRIGGER period_history_no_truncate BEFORE TRUNCATE ON period_history
FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change('period history');

-- Usage counts its cost and settles the hold placed under the same request_id (an open hold,
-- or one that expired before the usage arrived).
CREATE FUNCTION ledger_usage_counts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE users SET used = used + NEW.cost WHERE id = NEW.user_id;
    UPDATE tenants SET used = used + NEW.cost WHERE id = NEW.tenant_id;
    UPDATE reservations SET state = 'settled', closed_at = NEW.created_at
     WHERE request_id = NEW.request_id AND state IN ('open', 'expired');
    RETURN NULL;
END $$;

CREATE TRIGGER usage_counts AFTER INSERT ON usage
FOR EACH ROW EXECUTE FUNCTION ledger_usage_counts();

CREATE FUNCTION ledger_reservation_holds() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE users SET held = held + NEW.amount WHERE id = NEW.user_id;
    UPDATE tenants SET held = held + NEW.amount WHERE id = NEW.tenant_id;
    RETURN NULL;
END $$;

CREATE TRIGGER reservation_holds AFTER INSERT ON reservations
FOR EACH ROW WHEN (NEW.state = 'open') EXECUTE FUNCTION ledger_reservation_holds();

CREATE FUNCTION ledger_reservation_unholds() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE users SET held = held - OLD.amount WHERE id = OLD.user_id;
    UPDATE tenants SET held = held - OLD.amount WHERE id = OLD.tenant_id;
    RETURN NULL;
END $$;

CREATE TRIGGER reservation_unholds AFTER UPDATE OF state ON reservations
FOR EACH ROW WHEN (OLD.state = 'open' AND NEW.state <> 'open')
EXECUTE FUNCTION ledger_reservation_unholds();

-- The only moves of a hold: open → settled | released | expired, and expired → settled.
CREATE FUNCTION ledger_reservation_refuse_move() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'a reservation only moves from open, or from expired to settled'
        USING ERRCODE = 'integrity_constraint_violation';
END $$;

CREATE TRIGGER reservation_moves BEFORE UPDATE ON reservations
FOR EACH ROW WHEN (
    NOT (
        (OLD.state = 'open' AND NEW.state IN ('settled', 'released', 'expired'))
        OR (OLD.state = 'expired' AND NEW.state = 'settled')
    ) OR NEW.request_id IS DISTINCT FROM OLD.request_id
      OR NEW.user_id IS DISTINCT FROM OLD.user_id
      OR NEW.tenant_id IS DISTINCT FROM OLD.tenant_id
      OR NEW.amount IS DISTINCT FROM OLD.amount
) EXECUTE FUNCTION ledger_reservation_refuse_move();

CREATE TRIGGER reservation_no_delete BEFORE DELETE ON reservations
FOR EACH ROW EXECUTE FUNCTION ledger_reservation_refuse_move();

-- A user's figures at p_now, as core.budget.BudgetSnapshot reads them (holds past expiry left
-- out); one row, or none for an unknown user.
CREATE TYPE ledger_figures AS (
    id                  TEXT,
    email               TEXT,
    product_id          TEXT,
    tenant_id           TEXT,
    status              TEXT,
    period_label        TEXT,
    period_start        BIGINT,
    created_at          BIGINT,
    plan_budget         BIGINT,
    credits             BIGINT,
    used                BIGINT,
    held                BIGINT,
    held_expired        BIGINT,
    tenant_cap          BIGINT,
    tenant_used         BIGINT,
    tenant_held         BIGINT,
    tenant_held_expired BIGINT
);

CREATE FUNCTION ledger_user_view(p_user_id TEXT, p_now BIGINT) RETURNS SETOF ledger_figures
LANGUAGE sql STABLE AS $$
SELECT u.id, u.email, u.product_id, u.tenant_id, u.status, u.period_label, u.period_start,
       u.created_at, p.monthly_budget, u.credits, u.used, u.held,
       (SELECT COALESCE(SUM(r.amount), 0)::BIGINT FROM reservations r
         WHERE r.user_id = u.id AND r.state = 'open' AND r.expires_at <= p_now),
       t.monthly_budget, t.used, t.held,
       CASE WHEN t.monthly_budget IS NULL THEN 0::BIGINT ELSE
         (SELECT COALESCE(SUM(r.amount), 0)::BIGINT FROM reservations r
           WHERE r.tenant_id = u.tenant_id AND r.state = 'open' AND r.expires_at <= p_now) END
  FROM users u
  JOIN products p ON p.id = u.product_id
  JOIN tenants t ON t.id = u.tenant_id
 WHERE u.id = p_user_id
$$;

-- Place a hold when the budget has room (core.budget.decide, mirrored below; the store asserts
-- that both agree on every call). Returns the figures before, the hold already under the
-- request_id (then nothing is written), whether usage was already logged under it (nothing
-- written), and whether a hold was placed. No row: unknown user.
CREATE FUNCTION ledger_reserve(
    p_user_id TEXT, p_request_id TEXT, p_amount BIGINT, p_expires_at BIGINT, p_now BIGINT
) RETURNS TABLE (
    figures ledger_figures, r_user_id TEXT, r_amount BIGINT, r_state TEXT, r_expires_at BIGINT,
    logged BOOLEAN, placed BOOLEAN
) LANGUAGE plpgsql AS $$
DECLARE
    v_tenant_id TEXT;
    v ledger_figures;
    r reservations%ROWTYPE;
    v_remaining BIGINT;
    v_placed BOOLEAN := FALSE;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(p_request_id, 0));
    SELECT u.tenant_id INTO v_tenant_id FROM users u WHERE u.id = p_user_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    -- A capped tenant's figures must not move between the decision and the hold.
    PERFORM 1 FROM tenants t WHERE t.id = v_tenant_id AND t.monthly_budget IS NOT NULL FOR UPDATE;
    SELECT * INTO STRICT v FROM ledger_user_view(p_user_id, p_now);
    SELECT * INTO r FROM reservations x WHERE x.request_id = p_request_id;
    IF FOUND THEN
        RETURN QUERY SELECT v, r.user_id, r.amount, r.state, r.expires_at, FALSE, FALSE;
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM usage g WHERE g.request_id = p_request_id) THEN
        RETURN QUERY SELECT v, NULL::TEXT, NULL::BIGINT, NULL::TEXT, NULL::BIGINT, TRUE, FALSE;
        RETURN;
    END IF;
    v_remaining := v.plan_budget + v.credits - v.used - (v.held - v.held_expired);
    v_placed := v.status = 'active' AND v_remaining > 0 AND p_amount <= v_remaining;
    IF v_placed AND v.tenant_cap IS NOT NULL THEN
        v_remaining := v.tenant_cap - v.tenant_used - (v.tenant_held - v.tenant_held_expired);
        v_placed := v_remaining > 0 AND p_amount <= v_remaining;
    END IF;
    IF v_placed THEN
        INSERT INTO reservations (request_id, user_id, tenant_id, amount, state, expires_at,
                                  created_at)
        VALUES (p_request_id, p_user_id, v.tenant_id, p_amount, 'open', p_expires_at, p_now);
    END IF;
    RETURN QUERY SELECT v, NULL::TEXT, NULL::BIGINT, NULL::TEXT, NULL::BIGINT, FALSE, v_placed;
END $$;

-- Append usage unless its request_id is logged already (then that row is returned and nothing
-- is written) or holds another user's reservation (core.reservations.check_settle: nothing
-- written). The usage_counts trigger counts the cost and settles the hold. Returns the figures
-- before, the hold found, the usage found, and whether the usage was inserted. No row: unknown
-- user.
CREATE FUNCTION ledger_log_usage(
    p_request_id TEXT, p_user_id TEXT, p_model TEXT, p_tokens_input BIGINT,
    p_tokens_output BIGINT, p_cost BIGINT, p_response_time_ms BIGINT, p_now BIGINT
) RETURNS TABLE (
    figures ledger_figures, r_user_id TEXT, r_amount BIGINT, r_state TEXT, r_expires_at BIGINT,
    u_user_id TEXT, u_model TEXT, u_tokens_input BIGINT, u_tokens_output BIGINT, u_cost BIGINT,
    inserted BOOLEAN
) LANGUAGE plpgsql AS $$
DECLARE
    v_period_start BIGINT;
    v ledger_figures;
    r reservations%ROWTYPE;
    g usage%ROWTYPE;
    v_inserted BOOLEAN := FALSE;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(p_request_id, 0));
    SELECT u.period_start INTO v_period_start FROM users u WHERE u.id = p_user_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT * INTO STRICT v FROM ledger_user_view(p_user_id, p_now);
    SELECT * INTO g FROM usage x WHERE x.request_id = p_request_id;
    IF FOUND THEN
        RETURN QUERY SELECT v, NULL::TEXT, NULL::BIGINT, NULL::TEXT, NULL::BIGINT,
            g.user_id, g.model, g.tokens_input, g.tokens_output, g.cost, FALSE;
        RETURN;
    END IF;
    SELECT * INTO r FROM reservations x WHERE x.request_id = p_request_id;
    IF r.user_id IS NULL OR r.user_id = p_user_id THEN
        INSERT INTO usage (request_id, user_id, tenant_id, model, tokens_input, tokens_output,
                           cost, response_time_ms, period_start, created_at)
        VALUES (p_request_id, p_user_id, v.tenant_id, p_model, p_tokens_input, p_tokens_output,
                p_cost, p_response_time_ms, v_period_start, p_now);
        v_inserted := TRUE;
    END IF;
    RETURN QUERY SELECT v, r.user_id, r.amount, r.state, r.expires_at,
        NULL::TEXT, NULL::TEXT, NULL::BIGINT, NULL::BIGINT, NULL::BIGINT, v_inserted;
END $$;

-- Release an open hold (core.reservations.check_release: only an open hold moves). Returns the
-- hold as it was found and whether it was released. No row: unknown request_id.
CREATE FUNCTION ledger_release(p_request_id TEXT, p_now BIGINT) RETURNS TABLE (
    user_id TEXT, amount BIGINT, state TEXT, expires_at BIGINT, released BOOLEAN
) LANGUAGE plpgsql AS $$
DECLARE
    v_user_id TEXT;
    r reservations%ROWTYPE;
BEGIN
    SELECT x.user_id INTO v_user_id FROM reservations x WHERE x.request_id = p_request_id;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    -- The user's row first (lock order); a hold's user never changes.
    PERFORM 1 FROM users u WHERE u.id = v_user_id FOR UPDATE;
    SELECT * INTO STRICT r FROM reservations x WHERE x.request_id = p_request_id;
    IF r.state = 'open' THEN
        UPDATE reservations x SET state = 'released', closed_at = p_now
         WHERE x.request_id = p_request_id;
    END IF;
    RETURN QUERY SELECT r.user_id, r.amount, r.state, r.expires_at, r.state = 'open';
END $$;

-- Mark at most p_limit holds past their expiry 'expired' (the triggers move the counters).
-- One sweeper at a time across processes; users are locked in id order, as resets lock them.
CREATE FUNCTION ledger_sweep_expired(p_now BIGINT, p_limit INTEGER) RETURNS INTEGER
LANGUAGE plpgsql AS $$
DECLARE
    v_users TEXT[];
    v_swept INTEGER;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM reservations x WHERE x.state = 'open' AND x.expires_at <= p_now)
       OR NOT pg_try_advisory_xact_lock(1651076204, 3) THEN
        RETURN 0;
    END IF;
    SELECT array_agg(l.id) INTO v_users FROM (
        SELECT u.id FROM users u WHERE u.id IN (
            SELECT x.user_id FROM reservations x WHERE x.state = 'open' AND x.expires_at <= p_now
             ORDER BY x.expires_at LIMIT p_limit)
         ORDER BY u.id FOR UPDATE) l;
    UPDATE reservations x SET state = 'expired', closed_at = p_now WHERE x.request_id IN (
        SELECT d.request_id FROM reservations d
         WHERE d.state = 'open' AND d.expires_at <= p_now AND d.user_id = ANY (v_users)
         ORDER BY d.expires_at LIMIT p_limit);
    GET DIAGNOSTICS v_swept = ROW_COUNT;
    RETURN v_swept;
END $$;

-- Close every user's open period into period_history (append-only), zero used and credits,
-- open p_label, and zero tenant totals; holds in flight survive. With p_apply_once a label is
-- applied at most once. Resets run one at a time and lock every user (in id order) first.
CREATE FUNCTION ledger_reset(p_label TEXT, p_apply_once BOOLEAN, p_now BIGINT) RETURNS TABLE (
    users_reset BIGINT, already_done BOOLEAN
) LANGUAGE plpgsql AS $$
DECLARE
    v_users_reset BIGINT;
BEGIN
    PERFORM pg_advisory_xact_lock(1651076204, 2);
    IF p_apply_once AND EXISTS (SELECT 1 FROM applied_resets a WHERE a.label = p_label) THEN
        RETURN QUERY SELECT 0::BIGINT, TRUE;
        RETURN;
    END IF;
    PERFORM 1 FROM users u ORDER BY u.id FOR UPDATE;
    -- A period is named by its start; GREATEST(...) keeps starts strictly increasing even when
    -- two resets fall in one millisecond, so usage rows never straddle two periods.
    INSERT INTO period_history (user_id, label, period_start, period_end, tenant_id, product_id,
                                plan_budget, credits, used)
    SELECT u.id, u.period_label, u.period_start, GREATEST(p_now, u.period_start + 1),
           u.tenant_id, u.product_id, p.monthly_budget, u.credits, u.used
      FROM users u JOIN products p ON p.id = u.product_id;
    UPDATE users u SET used = 0, credits = 0, period_label = p_label,
           period_start = GREATEST(p_now, u.period_start + 1), updated_at = p_now;
    GET DIAGNOSTICS v_users_reset = ROW_COUNT;
    UPDATE tenants t SET used = 0, updated_at = p_now;
    IF p_apply_once THEN
        INSERT INTO applied_resets (label, users_reset, applied_at)
        VALUES (p_label, v_users_reset, p_now);
    END IF;
    RETURN QUERY SELECT v_users_reset, FALSE;
END $$;
