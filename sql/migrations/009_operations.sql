-- 009: what operators need: per-type settings (cluster-wide limits, retention), periodic jobs,
-- the workers' own heartbeats, and admin users. Written to apply on top of the baseline and of
-- the replayed migrations alike, whether or not 008 already made bgjobs_job_types.

-- Per job type settings ------------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS bgjobs_job_types (job_type VARCHAR(50) PRIMARY KEY);
ALTER TABLE bgjobs_job_types
    ADD COLUMN IF NOT EXISTS max_running INTEGER CHECK (max_running > 0),
    ADD COLUMN IF NOT EXISTS starts_per_second DOUBLE PRECISION CHECK (starts_per_second > 0),
    ADD COLUMN IF NOT EXISTS rate_tokens DOUBLE PRECISION,
    ADD COLUMN IF NOT EXISTS rate_at TIMESTAMPTZ,
    ADD COLUMN IF NOT EXISTS keep_complete INTERVAL CHECK (keep_complete >= interval '0'),
    ADD COLUMN IF NOT EXISTS keep_error INTERVAL CHECK (keep_error >= interval '0'),
    ADD COLUMN IF NOT EXISTS keep_cancelled INTERVAL CHECK (keep_cancelled >= interval '0');

COMMENT ON TABLE bgjobs_job_types IS 'Settings per job type. Workers write the limits a task declares (@task(max_running=..., starts_per_second=...)) when they start; a DBA may set any column by hand.';
COMMENT ON COLUMN bgjobs_job_types.max_running IS 'At most this many jobs of the type run at once across all workers (NULL: no limit). Enforced in the claim.';
COMMENT ON COLUMN bgjobs_job_types.starts_per_second IS 'At most this many jobs of the type start per second across all workers (NULL: no limit).';
COMMENT ON COLUMN bgjobs_job_types.rate_tokens IS 'Token bucket of starts_per_second, kept by the claim. Do not set by hand.';
COMMENT ON COLUMN bgjobs_job_types.keep_complete IS 'Delete complete jobs of this type this long after they finished (NULL: the workers'' default, 7 days).';
COMMENT ON COLUMN bgjobs_job_types.keep_error IS 'Delete failed jobs of this type this long after they finished (NULL: the default, 30 days).';
COMMENT ON COLUMN bgjobs_job_types.keep_cancelled IS 'Delete cancelled jobs of this type this long after they finished (NULL: the default, 7 days).';

-- The claim's view of the limits: for each limited type it is asked about, in name order, say
-- how many more of its jobs may start now. A type with no due pending job, or already at its
-- limit, is answered 0 at once, without a lock (both only make the claim more careful). Any
-- other is locked (so racing claimers take turns on it, each until its claim commits), then its
-- running jobs are counted and its rate bucket refilled with a fresh snapshot: a VOLATILE
-- function sees what committed while it waited for the lock. Rate tokens are taken here for
-- what the quota allows and the queue holds, so starts never exceed the rate (a token the
-- claim then does not use is lost, never doubled).
CREATE FUNCTION bgjobs_claim_quotas(p_types text[], p_now timestamptz, p_limit integer)
RETURNS TABLE (job_type text, quota integer) LANGUAGE plpgsql VOLATILE ROWS 4 AS $$
DECLARE
    ltype text;
    t record;
    room integer;
    tokens double precision;
    burst double precision;
BEGIN
    FOR ltype IN
        SELECT jt.job_type FROM bgjobs_job_types jt
        WHERE jt.job_type = ANY(p_types)
          AND (jt.max_running IS NOT NULL OR jt.starts_per_second IS NOT NULL)
        ORDER BY jt.job_type
    LOOP
        job_type := ltype;
        quota := 0;
        IF NOT EXISTS (SELECT FROM background_jobs b WHERE b.status = 'pending'
                       AND b.job_type = ltype AND b.run_after <= p_now)
           OR (SELECT jt.max_running <= (SELECT count(*) FROM background_jobs b
                                         WHERE b.status = 'running' AND b.job_type = ltype)
               FROM bgjobs_job_types jt WHERE jt.job_type = ltype) THEN
            RETURN NEXT;
            CONTINUE;
        END IF;
        SELECT jt.max_running, jt.starts_per_second, jt.rate_tokens, jt.rate_at INTO t
        FROM bgjobs_job_types jt WHERE jt.job_type = ltype FOR NO KEY UPDATE;
        room := p_limit;
        IF t.max_running IS NOT NULL THEN
            SELECT least(p_limit, greatest(0, t.max_running - count(*)))::integer INTO room
            FROM background_jobs b WHERE b.status = 'running' AND b.job_type = ltype;
        END IF;
        IF room > 0 THEN
            -- Only what the queue can use now: a bucket is not drained by empty claims.
            SELECT count(*)::integer INTO room FROM (
                SELECT 1 FROM background_jobs b
                WHERE b.status = 'pending' AND b.job_type = ltype AND b.run_after <= p_now
                LIMIT room) AS due;
        END IF;
        IF t.starts_per_second IS NOT NULL THEN
            burst := greatest(1.0, t.starts_per_second);
            tokens := least(burst, coalesce(t.rate_tokens, burst)
                + greatest(0.0, extract(epoch FROM p_now - coalesce(t.rate_at, p_now)))
                  * t.starts_per_second);
            room := least(room, floor(tokens)::integer);
            UPDATE bgjobs_job_types SET rate_tokens = tokens - room, rate_at = p_now
            WHERE bgjobs_job_types.job_type = ltype;
        END IF;
        quota := room;
        RETURN NEXT;
    END LOOP;
END $$;
COMMENT ON FUNCTION bgjobs_claim_quotas(text[], timestamptz, integer) IS 'For the claim: how many jobs of each limited type among p_types may start now (max_running, starts_per_second); locks a type only when some of its jobs could start.';

-- Limited types are claimed per type, in order, from this index (a blocked type is skipped
-- without reading its queue).
CREATE INDEX IF NOT EXISTS background_jobs_pending_type_idx
    ON background_jobs (job_type, priority, created_at) WHERE status = 'pending';

-- Retention ---------------------------------------------------------------------------------

-- Finished jobs by age: the purger reads it oldest first; the throughput chart reads the last hour.
CREATE INDEX IF NOT EXISTS background_jobs_finished_idx ON background_jobs (finished_at)
    WHERE finished_at IS NOT NULL;
-- Every user's jobs, newest first (the operator view pages through it with a cursor). Every
-- claim and finish writes a new entry into each full index of the table, so this one replaces
-- the seed's (user_id) index, whose lookups background_jobs_user_created_idx (user_id,
-- created_at, id) already serves: the queue pays for as many indexes as before.
CREATE INDEX IF NOT EXISTS background_jobs_created_idx
    ON background_jobs (created_at DESC, id DESC);
DROP INDEX IF EXISTS background_jobs_user_idx;

CREATE FUNCTION bgjobs_purge_batch(p_now timestamptz, p_limit integer,
                                   p_keep_complete interval DEFAULT interval '7 days',
                                   p_keep_error interval DEFAULT interval '30 days',
                                   p_keep_cancelled interval DEFAULT interval '7 days')
RETURNS bigint LANGUAGE sql AS $$
    WITH doomed AS (
        SELECT j.id FROM background_jobs j
        LEFT JOIN bgjobs_job_types t ON t.job_type = j.job_type
        WHERE j.finished_at IS NOT NULL
          AND j.finished_at < p_now - least(
                  p_keep_complete, p_keep_error, p_keep_cancelled,
                  (SELECT min(least(k.keep_complete, k.keep_error, k.keep_cancelled))
                   FROM bgjobs_job_types k))
          AND j.status IN ('complete', 'error', 'cancelled')
          AND j.finished_at < p_now - CASE j.status
                  WHEN 'complete' THEN coalesce(t.keep_complete, p_keep_complete)
                  WHEN 'error' THEN coalesce(t.keep_error, p_keep_error)
                  ELSE coalesce(t.keep_cancelled, p_keep_cancelled) END
        ORDER BY j.finished_at
        LIMIT p_limit
        FOR UPDATE OF j SKIP LOCKED
    ), gone AS (
        DELETE FROM background_jobs j USING doomed WHERE j.id = doomed.id RETURNING 1
    )
    SELECT count(*) FROM gone
$$;
COMMENT ON FUNCTION bgjobs_purge_batch(timestamptz, integer, interval, interval, interval) IS 'Delete up to p_limit finished jobs older than their retention (per type in bgjobs_job_types, else the given defaults), oldest first; returns how many.';

-- Periodic jobs -----------------------------------------------------------------------------

CREATE TABLE bgjobs_schedules (
    name TEXT PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_.:-]{1,100}$'),
    job_type VARCHAR(50) NOT NULL,
    cron TEXT NOT NULL CHECK (cron ~ '^\s*\S+(\s+\S+){4}\s*$'),
    timezone TEXT NOT NULL DEFAULT 'UTC',
    params JSONB NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(params) = 'object'),
    priority INTEGER NOT NULL DEFAULT 0,
    enabled BOOLEAN NOT NULL DEFAULT true,
    catch_up BOOLEAN NOT NULL DEFAULT false,
    source TEXT NOT NULL DEFAULT 'sql' CHECK (source IN ('code', 'sql')),
    last_tick TIMESTAMPTZ,
    last_job_id UUID,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
COMMENT ON TABLE bgjobs_schedules IS 'Periodic jobs: each tick of cron (5 fields, in timezone) enqueues one job of job_type with params, however many workers run. Insert a row to add one in SQL; tasks declared with @task(cron=...) are written here by the workers (source = code).';
COMMENT ON COLUMN bgjobs_schedules.cron IS 'Standard 5-field cron: minute hour day-of-month month day-of-week, e.g. ''0 2 * * *''.';
COMMENT ON COLUMN bgjobs_schedules.timezone IS 'IANA time zone the cron fields are read in, e.g. UTC, Europe/Paris.';
COMMENT ON COLUMN bgjobs_schedules.catch_up IS 'After an outage with no worker running: false (default) skips the missed ticks; true enqueues one job for them.';
COMMENT ON COLUMN bgjobs_schedules.last_tick IS 'The latest tick handled (enqueued, or skipped as missed). Advanced with a compare-and-set: one worker wins each tick.';

-- A name of an unknown time zone is refused when written, not when the tick comes.
CREATE FUNCTION bgjobs_schedules_check() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM now() AT TIME ZONE NEW.timezone;
    NEW.updated_at := now();
    RETURN NEW;
END $$;
CREATE TRIGGER bgjobs_schedules_check BEFORE INSERT OR UPDATE ON bgjobs_schedules
    FOR EACH ROW EXECUTE FUNCTION bgjobs_schedules_check();

-- Workers -----------------------------------------------------------------------------------

CREATE TABLE bgjobs_workers (
    worker_id TEXT PRIMARY KEY,
    machine TEXT NOT NULL,
    pid INTEGER NOT NULL,
    processes INTEGER NOT NULL,
    running INTEGER NOT NULL DEFAULT 0,
    types TEXT[],
    lease_seconds INTEGER NOT NULL,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
COMMENT ON TABLE bgjobs_workers IS 'One row per worker supervisor (machine), refreshed with its heartbeats; alive while heartbeat_at is younger than lease_seconds. Removed on a clean stop, and by the purger a day after the last heartbeat.';

-- Admins --------------------------------------------------------------------------------------

ALTER TABLE bgjobs_users ADD COLUMN IF NOT EXISTS is_admin BOOLEAN NOT NULL DEFAULT false;
COMMENT ON COLUMN bgjobs_users.is_admin IS 'Sees and steers every user''s jobs in the operator view (`bgjobs user create NAME --admin`, or set it here).';
