-- A reset's run in lanes (core/resets.py says why and what holds): contiguous ranges of user
-- ids, each with its own cursor, whose batches run side by side. ledger_reset_batch is kept,
-- over the lanes, for workers of the previous release during a rolling deploy.
CREATE TABLE reset_lanes (
    run_id      BIGINT NOT NULL REFERENCES reset_runs (id),
    lane        INTEGER NOT NULL CHECK (lane >= 0),
    users_after TEXT NOT NULL,
    users_upto  TEXT,
    users_reset BIGINT NOT NULL DEFAULT 0 CHECK (users_reset >= 0),
    finished    BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (run_id, lane)
);

-- One batch of lane p_lane of run p_run: its next p_users_max users by id after users_after (up
-- to users_upto; NULL: no bound), each closed when its open period is labelled before
-- close_before, and the lane's cursor moved past them, in this transaction. TRUE when the lane
-- has no user left (it is then marked finished). Batches of different lanes run at once: the
-- resets' lock is shared among them (a reset's start takes it alone), the sweep's too (the
-- sweep takes it alone: it moves many tenants). Users are locked in id order, then their
-- tenants in id order, as every write locks a user before its tenant, so two lanes that share
-- a tenant wait for each other and never deadlock. A tenant's used is lowered by what its closed
-- periods held (never below 0: a drifted counter is reconciliation's to report, not a reason to
-- stop the reset).
CREATE FUNCTION ledger_reset_lane_batch(p_run BIGINT, p_lane INTEGER, p_users_max INTEGER,
                                        p_now BIGINT)
RETURNS BOOLEAN
LANGUAGE plpgsql AS $$
DECLARE
    r reset_runs%ROWTYPE;
    l reset_lanes%ROWTYPE;
    v_ids TEXT[];
    v_closed BIGINT;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(1651076204, 2);
    PERFORM pg_advisory_xact_lock_shared(1651076204, 3);
    SELECT * INTO STRICT r FROM reset_runs x WHERE x.id = p_run;
    SELECT * INTO STRICT l FROM reset_lanes x WHERE x.run_id = p_run AND x.lane = p_lane
       FOR UPDATE;
    IF r.finished_at IS NOT NULL OR l.finished THEN
        RETURN TRUE;
    END IF;
    IF l.users_upto IS NULL THEN
        SELECT array_agg(b.id ORDER BY b.id) INTO v_ids FROM (
            SELECT u.id FROM users u WHERE u.id > l.users_after
             ORDER BY u.id LIMIT p_users_max FOR UPDATE) b;
    ELSE
        SELECT array_agg(b.id ORDER BY b.id) INTO v_ids FROM (
            SELECT u.id FROM users u WHERE u.id > l.users_after AND u.id <= l.users_upto
             ORDER BY u.id LIMIT p_users_max FOR UPDATE) b;
    END IF;
    IF v_ids IS NULL THEN
        UPDATE reset_lanes x SET finished = TRUE WHERE x.run_id = p_run AND x.lane = p_lane;
        RETURN TRUE;
    END IF;
    -- A period is named by its start; GREATEST(...) keeps starts strictly increasing even when
    -- two resets fall in one millisecond, so usage rows never straddle two periods.
    INSERT INTO period_history (user_id, label, period_start, period_end, tenant_id, product_id,
                                plan_budget, credits, used, closed_by)
    SELECT u.id, u.period_label, u.period_start, GREATEST(p_now, u.period_start + 1),
           u.tenant_id, u.product_id, p.monthly_budget, u.credits, u.used, r.label
      FROM users u JOIN products p ON p.id = u.product_id
     WHERE u.id = ANY (v_ids) AND u.period_label < r.close_before COLLATE "C";
    PERFORM 1 FROM tenants t
     WHERE t.id IN (SELECT u.tenant_id FROM users u WHERE u.id = ANY (v_ids))
     ORDER BY t.id FOR UPDATE;
    UPDATE tenants t SET used = GREATEST(t.used - c.closed, 0), updated_at = p_now
      FROM (SELECT u.tenant_id, SUM(u.used) AS closed FROM users u
             WHERE u.id = ANY (v_ids) AND u.period_label < r.close_before COLLATE "C"
             GROUP BY u.tenant_id) c
     WHERE t.id = c.tenant_id;
    UPDATE users u SET used = 0, credits = 0, period_label = r.label,
           period_start = GREATEST(p_now, u.period_start + 1), updated_at = p_now
     WHERE u.id = ANY (v_ids) AND u.period_label < r.close_before COLLATE "C";
    GET DIAGNOSTICS v_closed = ROW_COUNT;
    UPDATE reset_lanes x SET users_after = v_ids[cardinality(v_ids)],
           users_reset = x.users_reset + v_closed
     WHERE x.run_id = p_run AND x.lane = p_lane;
    RETURN FALSE;
END $$;

-- The end of run p_run once every lane is finished: its users_reset the sum of its lanes', the
-- run finished and its label recorded as applied (finished_now; the store writes a forced
-- run's admin notice in the same transaction). finished is FALSE while a lane is not.
CREATE FUNCTION ledger_reset_finish(p_run BIGINT, p_now BIGINT)
RETURNS TABLE (label TEXT, users_reset BIGINT, finished BOOLEAN, finished_now BOOLEAN,
               forced BOOLEAN)
LANGUAGE plpgsql AS $$
DECLARE
    r reset_runs%ROWTYPE;
    v_users_reset BIGINT;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(1651076204, 2);
    SELECT * INTO STRICT r FROM reset_runs x WHERE x.id = p_run FOR UPDATE;
    IF r.finished_at IS NOT NULL THEN
        RETURN QUERY SELECT r.label, r.users_reset, TRUE, FALSE, r.forced;
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM reset_lanes x WHERE x.run_id = p_run AND NOT x.finished)
       OR NOT EXISTS (SELECT 1 FROM reset_lanes x WHERE x.run_id = p_run) THEN
        RETURN QUERY SELECT r.label, r.users_reset, FALSE, FALSE, r.forced;
        RETURN;
    END IF;
    SELECT r.users_reset + SUM(x.users_reset) INTO v_users_reset
      FROM reset_lanes x WHERE x.run_id = p_run;
    UPDATE reset_runs x SET finished_at = p_now, users_reset = v_users_reset WHERE x.id = p_run;
    IF r.apply_once THEN
        INSERT INTO applied_resets (label, users_reset, applied_at)
        VALUES (r.label, v_users_reset, p_now);
    END IF;
    RETURN QUERY SELECT r.label, v_users_reset, TRUE, TRUE, r.forced;
END $$;

-- The previous release's batch, over the lanes: a run it started has none, and gets lane 0
-- from its cursor on; each call is a batch of the first unfinished lane, or the finish.
CREATE OR REPLACE FUNCTION ledger_reset_batch(p_run BIGINT, p_users_max INTEGER, p_now BIGINT)
RETURNS TABLE (label TEXT, users_reset BIGINT, finished BOOLEAN, finished_now BOOLEAN,
               forced BOOLEAN)
LANGUAGE plpgsql AS $$
DECLARE
    v_lane INTEGER;
BEGIN
    INSERT INTO reset_lanes (run_id, lane, users_after)
    SELECT x.id, 0, x.users_after FROM reset_runs x
     WHERE x.id = p_run AND NOT EXISTS (SELECT 1 FROM reset_lanes y WHERE y.run_id = p_run)
    ON CONFLICT DO NOTHING;
    SELECT x.lane INTO v_lane FROM reset_lanes x
     WHERE x.run_id = p_run AND NOT x.finished ORDER BY x.lane LIMIT 1;
    IF v_lane IS NOT NULL AND NOT ledger_reset_lane_batch(p_run, v_lane, p_users_max, p_now) THEN
        RETURN QUERY SELECT x.label, x.users_reset, FALSE, FALSE, x.forced
                       FROM reset_runs x WHERE x.id = p_run;
        RETURN;
    END IF;
    RETURN QUERY SELECT * FROM ledger_reset_finish(p_run, p_now);
END $$;
