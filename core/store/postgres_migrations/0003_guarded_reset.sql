-- A labelled reset closes only the periods of months before its label (core/resets.py says
-- why); a forced or unlabelled one passes a p_before that sorts after every label. The store
-- takes the resets' advisory lock and checks the reset rule in the same transaction before
-- calling this. ledger_reset stays for a worker of the previous release during a rolling deploy.
CREATE FUNCTION ledger_reset_before(
    p_label TEXT, p_apply_once BOOLEAN, p_before TEXT, p_now BIGINT
) RETURNS TABLE (users_reset BIGINT, already_done BOOLEAN) LANGUAGE plpgsql AS $$
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
      FROM users u JOIN products p ON p.id = u.product_id
     WHERE u.period_label < p_before COLLATE "C";
    UPDATE users u SET used = 0, credits = 0, period_label = p_label,
           period_start = GREATEST(p_now, u.period_start + 1), updated_at = p_now
     WHERE u.period_label < p_before COLLATE "C";
    GET DIAGNOSTICS v_users_reset = ROW_COUNT;
    -- A tenant's used is its users' open-period usage: what the periods left open hold.
    UPDATE tenants t SET used = COALESCE((SELECT SUM(u.used) FROM users u
                                          WHERE u.tenant_id = t.id), 0),
           updated_at = p_now;
    IF p_apply_once THEN
        INSERT INTO applied_resets (label, users_reset, applied_at)
        VALUES (p_label, v_users_reset, p_now);
    END IF;
    RETURN QUERY SELECT v_users_reset, FALSE;
END $$;

-- Notices for the admin written by the ledger in the transaction of what they report (a forced
-- reset), mailed to ADMIN_EMAIL by the deliver-alerts flow, whichever caller made it.
CREATE TABLE admin_notices (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subject      TEXT NOT NULL CHECK (length(subject) BETWEEN 1 AND 200),
    body         TEXT NOT NULL CHECK (length(body) <= 4000),
    created_at   BIGINT NOT NULL,
    delivered_at BIGINT
);

CREATE INDEX admin_notices_pending ON admin_notices (id) WHERE delivered_at IS NULL;
