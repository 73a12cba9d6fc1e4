-- What the flows need, as core/store/sqlite_migrations/0002_flows.sql: the alert outbox, which
-- reset closed each history row, and the append-only audit of every repair reconciliation
-- makes. Here also: ledger_log_usage writes the alerts of its usage in its own transaction,
-- ledger_reset records closed_by, and a closed hold may be deleted (retention), an open one not.

-- Budget alerts, written in the transaction that records the usage (core/alerts.py decides which
-- thresholds a usage crosses; ledger_log_usage mirrors it). One per subject, period label and
-- threshold.
CREATE TABLE alerts (
    id                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subject           TEXT NOT NULL CHECK (subject IN ('user', 'tenant')),
    subject_id        TEXT NOT NULL,
    period_label      TEXT NOT NULL,
    threshold_percent INTEGER NOT NULL CHECK (threshold_percent BETWEEN 1 AND 100),
    used              BIGINT NOT NULL CHECK (used >= 0),
    limit_amount      BIGINT NOT NULL CHECK (limit_amount >= 0),
    created_at        BIGINT NOT NULL,
    state             TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered')),
    attempts          INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error        TEXT CHECK (last_error IS NULL OR length(last_error) <= 500),
    last_attempt_at   BIGINT,
    mailed_at         BIGINT,
    posted_at         BIGINT,
    delivered_at      BIGINT,
    UNIQUE (subject, subject_id, period_label, threshold_percent)
);

CREATE INDEX alerts_pending ON alerts (id) WHERE state = 'pending';

-- The label of the reset that closed the row, so a reset's summary reads exactly its rows.
ALTER TABLE period_history ADD COLUMN closed_by TEXT;
CREATE INDEX period_history_by_reset ON period_history (closed_by);

-- Every repair reconciliation makes (core/reconcile.py): what was recorded, what the facts say.
-- A correction of period history (which is append-only) lives here and is read through
-- period_history_effective.
CREATE TABLE ledger_repairs (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    check_name  TEXT NOT NULL,
    subject_id  TEXT NOT NULL,
    recorded    BIGINT NOT NULL,
    expected    BIGINT NOT NULL,
    note        TEXT NOT NULL,
    repaired_at BIGINT NOT NULL
);

CREATE INDEX ledger_repairs_by_subject ON ledger_repairs (check_name, subject_id);

CREATE TRIGGER ledger_repairs_no_change BEFORE UPDATE OR DELETE ON ledger_repairs
FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change('ledger repairs');
CREATE TRIGGER ledger_repairs_no_truncate BEFORE TRUNCATE ON ledger_repairs
FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change('ledger repairs');

-- Period history with the latest recorded correction of its used figure applied.
CREATE VIEW period_history_effective AS
SELECT h.id, h.user_id, h.label, h.period_start, h.period_end, h.tenant_id, h.product_id,
       h.plan_budget, h.credits, h.closed_by,
       COALESCE((SELECT r.expected FROM ledger_repairs r
                  WHERE r.check_name = 'history_used' AND r.subject_id = CAST(h.id AS TEXT)
                  ORDER BY r.id DESC LIMIT 1), h.used) AS used
  FROM period_history h;

-- Holds closed longer than the retention are deleted by reconciliation
-- (LedgerStore.delete_closed_reservations); an open hold still counts in held, so it never is,
-- and no TRUNCATE bypasses that.
DROP TRIGGER reservation_no_delete ON reservations;

CREATE FUNCTION ledger_reservation_refuse_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'an open reservation is never deleted'
        USING ERRCODE = 'integrity_constraint_violation';
END $$;

CREATE TRIGGER reservation_no_delete BEFORE DELETE ON reservations
FOR EACH ROW WHEN (OLD.state = 'open') EXECUTE FUNCTION ledger_reservation_refuse_delete();
CREATE TRIGGER reservation_no_truncate BEFORE TRUNCATE ON reservations
FOR EACH STATEMENT EXECUTE FUNCTION ledger_reservation_refuse_delete();

-- core.alerts.thresholds_crossed, mirrored (the store asserts that both agree on every log):
-- the thresholds t (percent, in the order given) with before < t % of limit <= after, exactly
-- (in NUMERIC, so that 100 × a large BIGINT cannot overflow). A zero limit is crossed at every
-- threshold by the first usage that costs anything.
CREATE FUNCTION ledger_thresholds_crossed(
    p_before BIGINT, p_after BIGINT, p_limit BIGINT, p_thresholds INTEGER[]
) RETURNS INTEGER[] LANGUAGE sql IMMUTABLE AS $$
SELECT CASE
    WHEN p_after <= p_before THEN '{}'::INTEGER[]
    WHEN p_limit = 0 THEN CASE WHEN p_before = 0 THEN p_thresholds ELSE '{}'::INTEGER[] END
    ELSE ARRAY(
        SELECT x.t FROM unnest(p_thresholds) WITH ORDINALITY AS x (t, n)
         WHERE p_before::NUMERIC * 100 < x.t::NUMERIC * p_limit
           AND x.t::NUMERIC * p_limit <= p_after::NUMERIC * 100
         ORDER BY x.n)
END
$$;

-- As in 0001, and: the alerts its usage raises (core.alerts.crossings, over p_thresholds from
-- core) are written in the same transaction, ON CONFLICT DO NOTHING, so a usage never fails for
-- its alert and a threshold is announced once per period. A capped tenant's row is locked
-- before the figures are read, so two users' usage cannot both miss a tenant threshold they
-- cross together. Returns also the thresholds crossed, user's and tenant's (empty unless
-- inserted).
DROP FUNCTION ledger_log_usage(TEXT, TEXT, TEXT, BIGINT, BIGINT, BIGINT, BIGINT, BIGINT);

CREATE FUNCTION ledger_log_usage(
    p_request_id TEXT, p_user_id TEXT, p_model TEXT, p_tokens_input BIGINT,
    p_tokens_output BIGINT, p_cost BIGINT, p_response_time_ms BIGINT, p_now BIGINT,
    p_thresholds INTEGER[]
) RETURNS TABLE (
    figures ledger_figures, r_user_id TEXT, r_amount BIGINT, r_state TEXT, r_expires_at BIGINT,
    u_user_id TEXT, u_model TEXT, u_tokens_input BIGINT, u_tokens_output BIGINT, u_cost BIGINT,
    inserted BOOLEAN, user_alerts INTEGER[], tenant_alerts INTEGER[]
) LANGUAGE plpgsql AS $$
DECLARE
    v_tenant_id TEXT;
    v_period_start BIGINT;
    v ledger_figures;
    r reservations%ROWTYPE;
    g usage%ROWTYPE;
    v_inserted BOOLEAN := FALSE;
    v_user_alerts INTEGER[] := '{}';
    v_tenant_alerts INTEGER[] := '{}';
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(p_request_id, 0));
    SELECT u.tenant_id, u.period_start INTO v_tenant_id, v_period_start
      FROM users u WHERE u.id = p_user_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    PERFORM 1 FROM tenants t WHERE t.id = v_tenant_id AND t.monthly_budget IS NOT NULL FOR UPDATE;
    SELECT * INTO STRICT v FROM ledger_user_view(p_user_id, p_now);
    SELECT * INTO g FROM usage x WHERE x.request_id = p_request_id;
    IF FOUND THEN
        RETURN QUERY SELECT v, NULL::TEXT, NULL::BIGINT, NULL::TEXT, NULL::BIGINT,
            g.user_id, g.model, g.tokens_input, g.tokens_output, g.cost, FALSE,
            v_user_alerts, v_tenant_alerts;
        RETURN;
    END IF;
    SELECT * INTO r FROM reservations x WHERE x.request_id = p_request_id;
    IF r.user_id IS NULL OR r.user_id = p_user_id THEN
        INSERT INTO usage (request_id, user_id, tenant_id, model, tokens_input, tokens_output,
                           cost, response_time_ms, period_start, created_at)
        VALUES (p_request_id, p_user_id, v.tenant_id, p_model, p_tokens_input, p_tokens_output,
                p_cost, p_response_time_ms, v_period_start, p_now);
        v_inserted := TRUE;
        v_user_alerts := ledger_thresholds_crossed(
            v.used, v.used + p_cost, v.plan_budget + v.credits, p_thresholds);
        IF v.tenant_cap IS NOT NULL THEN
            v_tenant_alerts := ledger_thresholds_crossed(
                v.tenant_used, v.tenant_used + p_cost, v.tenant_cap, p_thresholds);
        END IF;
        IF cardinality(v_user_alerts) > 0 THEN
            INSERT INTO alerts (subject, subject_id, period_label, threshold_percent, used,
                                limit_amount, created_at)
            SELECT 'user', p_user_id, v.period_label, x.t, v.used + p_cost,
                   v.plan_budget + v.credits, p_now
              FROM unnest(v_user_alerts) WITH ORDINALITY AS x (t, n) ORDER BY x.n
            ON CONFLICT DO NOTHING;
        END IF;
        IF cardinality(v_tenant_alerts) > 0 THEN
            INSERT INTO alerts (subject, subject_id, period_label, threshold_percent, used,
                                limit_amount, created_at)
            SELECT 'tenant', v.tenant_id, v.period_label, x.t, v.tenant_used + p_cost,
                   v.tenant_cap, p_now
              FROM unnest(v_tenant_alerts) WITH ORDINALITY AS x (t, n) ORDER BY x.n
            ON CONFLICT DO NOTHING;
        END IF;
    END IF;
    RETURN QUERY SELECT v, r.user_id, r.amount, r.state, r.expires_at,
        NULL::TEXT, NULL::TEXT, NULL::BIGINT, NULL::BIGINT, NULL::BIGINT, v_inserted,
        v_user_alerts, v_tenant_alerts;
END $$;

-- As in 0001, and each history row records the reset that closed it (closed_by = p_label).
CREATE OR REPLACE FUNCTION ledger_reset(p_label TEXT, p_apply_once BOOLEAN, p_now BIGINT)
RETURNS TABLE (
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
                                plan_budget, credits, used, closed_by)
    SELECT u.id, u.period_label, u.period_start, GREATEST(p_now, u.period_start + 1),
           u.tenant_id, u.product_id, p.monthly_budget, u.credits, u.used, p_label
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
