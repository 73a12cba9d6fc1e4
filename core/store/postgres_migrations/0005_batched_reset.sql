-- Resets run in bounded batches, as core/store/sqlite_migrations/0005_batched_reset.sql (and
-- core/resets.py, which says why and what holds). ledger_reset and ledger_reset_before stay for
-- workers of the previous release during a rolling deploy.
CREATE TABLE reset_runs (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    label        TEXT NOT NULL,
    apply_once   BOOLEAN NOT NULL,
    forced       BOOLEAN NOT NULL,
    close_before TEXT NOT NULL,
    users_after  TEXT NOT NULL,
    users_reset  BIGINT NOT NULL DEFAULT 0 CHECK (users_reset >= 0),
    started_at   BIGINT NOT NULL,
    finished_at  BIGINT
);

CREATE UNIQUE INDEX reset_runs_one_unfinished ON reset_runs ((finished_at IS NULL))
 WHERE finished_at IS NULL;

CREATE INDEX users_by_period_label ON users (period_label COLLATE "C");

-- One batch of run p_run: the next p_users_max users by id after users_after, each closed when
-- its open period is labelled before close_before, and users_after moved past them, in this
-- transaction. Users are locked in id order, then their tenants in id order (as every write
-- locks a user before its tenant); the sweep's lock keeps the sweep, which moves many tenants
-- too, from running beside a batch. A tenant's used is lowered by what its closed periods held
-- (never below 0: a drifted counter is reconciliation's to report, not a reason to stop the
-- reset). When no user is left: the run is finished and its label recorded as applied
-- (finished_now; the store writes a forced run's admin notice in the same transaction).
CREATE FUNCTION ledger_reset_batch(p_run BIGINT, p_users_max INTEGER, p_now BIGINT)
RETURNS TABLE (label TEXT, users_reset BIGINT, finished BOOLEAN, finished_now BOOLEAN,
               forced BOOLEAN)
LANGUAGE plpgsql AS $$
DECLARE
    r reset_runs%ROWTYPE;
    v_ids TEXT[];
    v_closed BIGINT;
BEGIN
    PERFORM pg_advisory_xact_lock(1651076204, 2);
    PERFORM pg_advisory_xact_lock(1651076204, 3);
    SELECT * INTO STRICT r FROM reset_runs x WHERE x.id = p_run FOR UPDATE;
    IF r.finished_at IS NOT NULL THEN
        RETURN QUERY SELECT r.label, r.users_reset, TRUE, FALSE, r.forced;
        RETURN;
    END IF;
    SELECT array_agg(b.id ORDER BY b.id) INTO v_ids FROM (
        SELECT u.id FROM users u WHERE u.id > r.users_after ORDER BY u.id LIMIT p_users_max
           FOR UPDATE) b;
    IF v_ids IS NULL THEN
        UPDATE reset_runs x SET finished_at = p_now WHERE x.id = p_run;
        IF r.apply_once THEN
            INSERT INTO applied_resets (label, users_reset, applied_at)
            VALUES (r.label, r.users_reset, p_now);
        END IF;
        RETURN QUERY SELECT r.label, r.users_reset, TRUE, TRUE, r.forced;
        RETURN;
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
    UPDATE reset_runs x SET users_after = v_ids[cardinality(v_ids)],
           users_reset = x.users_reset + v_closed
     WHERE x.id = p_run;
    RETURN QUERY SELECT r.label, r.users_reset + v_closed, FALSE, FALSE, r.forced;
END $$;
