-- The bounds of core.money, as core/store/sqlite_migrations/0004_money_bounds.sql: no write
-- grows a user's used or credits, or a tenant's used, past COUNTER_MAX (10^18 nano-dollars,
-- $1,000,000,000); a counter already past it may still shrink (a reset zeroes it). And the hot
-- writes mirror the rules of core.budget that keep them from trying: ledger_log_usage records
-- no usage that check_usage refuses (the store raises 422 amount_out_of_range), ledger_reserve
-- places no hold that decide denies for lack of room in the counters.

CREATE FUNCTION ledger_refuse_past_bound() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% must not grow past COUNTER_MAX', TG_ARGV[0]
        USING ERRCODE = 'check_violation';
END $$;

CREATE TRIGGER users_counters_bounded BEFORE UPDATE OF used, credits ON users
FOR EACH ROW WHEN (
    (NEW.used > 1000000000000000000 AND NEW.used > OLD.used)
    OR (NEW.credits > 1000000000000000000 AND NEW.credits > OLD.credits)
) EXECUTE FUNCTION ledger_refuse_past_bound('a user''s used and credits');

CREATE TRIGGER tenants_used_bounded BEFORE UPDATE OF used ON tenants
FOR EACH ROW WHEN (NEW.used > 1000000000000000000 AND NEW.used > OLD.used)
EXECUTE FUNCTION ledger_refuse_past_bound('a tenant''s used');

-- As in 0001, and (core.budget.decide) a hold leaves the user's and the tenant's used plus
-- active holds within COUNTER_MAX, capped tenant or not. An uncapped tenant's row is not
-- locked before the decision (a denied check takes no tenant lock): its figures may miss the
-- holds other connections are placing at that instant, each at most COST_PER_CALL_MAX, so its
-- held counter may pass the bound by that much; its arithmetic stays far inside BIGINT.
CREATE OR REPLACE FUNCTION ledger_reserve(
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
    IF v_placed THEN
        v_remaining := 1000000000000000000 - v.used - (v.held - v.held_expired);
        v_placed := v_remaining > 0 AND p_amount <= v_remaining;
    END IF;
    IF v_placed AND v.tenant_cap IS NOT NULL THEN
        v_remaining := v.tenant_cap - v.tenant_used - (v.tenant_held - v.tenant_held_expired);
        v_placed := v_remaining > 0 AND p_amount <= v_remaining;
    END IF;
    IF v_placed THEN
        v_remaining := 1000000000000000000 - v.tenant_used
            - (v.tenant_held - v.tenant_held_expired);
        v_placed := v_remaining > 0 AND p_amount <= v_remaining;
    END IF;
    IF v_placed THEN
        INSERT INTO reservations (request_id, user_id, tenant_id, amount, state, expires_at,
                                  created_at)
        VALUES (p_request_id, p_user_id, v.tenant_id, p_amount, 'open', p_expires_at, p_now);
    END IF;
    RETURN QUERY SELECT v, NULL::TEXT, NULL::BIGINT, NULL::TEXT, NULL::BIGINT, FALSE, v_placed;
END $$;

-- As in 0002, and (core.budget.check_usage) a usage past COST_PER_CALL_MAX (10^15), or one
-- that would take the user's or the tenant's used past COUNTER_MAX, is not inserted: nothing is
-- written and inserted is FALSE. Every tenant's row is locked before the figures are read (a
-- capped one's already was), so its used cannot pass the bound between the check and the
-- insert; the usage's own update of that row would wait for the same lock anyway.
CREATE OR REPLACE FUNCTION ledger_log_usage(
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
    PERFORM 1 FROM tenants t WHERE t.id = v_tenant_id FOR UPDATE;
    SELECT * INTO STRICT v FROM ledger_user_view(p_user_id, p_now);
    SELECT * INTO g FROM usage x WHERE x.request_id = p_request_id;
    IF FOUND THEN
        RETURN QUERY SELECT v, NULL::TEXT, NULL::BIGINT, NULL::TEXT, NULL::BIGINT,
            g.user_id, g.model, g.tokens_input, g.tokens_output, g.cost, FALSE,
            v_user_alerts, v_tenant_alerts;
        RETURN;
    END IF;
    SELECT * INTO r FROM reservations x WHERE x.request_id = p_request_id;
    IF (r.user_id IS NULL OR r.user_id = p_user_id)
       AND p_cost <= 1000000000000000
       AND v.used + p_cost <= 1000000000000000000
       AND v.tenant_used + p_cost <= 1000000000000000000 THEN
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
