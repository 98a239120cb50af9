-- What a timestamp column takes, every reader must read (issue 17). Python's datetime holds
-- years 1 to 9999, and bgjobs's readers (the API, the CLI, workers, the events service) get
-- each time in their session's time zone: `infinity`, or a time whose year leaves that range
-- in UTC or in some time zone, made every job list of its owner fail. Every timestamp column
-- of bgjobs's tables now refuses, when written, a time outside
--     0001-01-02 00:00:00+00 <= t < 9999-12-31 00:00:00+00
-- (a day inside Python's range at each end, so it converts in any time zone); NULL stays
-- allowed where it was. Park a job with run_after = '9999-12-30 00:00:00+00' (docs/dba.md).
--
-- Rows written before hold such times only by a DBA's hand (`run_after = 'infinity'` to park a
-- job, say). They are moved to the nearest time that can be read first, which keeps their
-- order (an `infinity` run_after stays after every other, a `-infinity` created_at before),
-- with a WARNING per column saying how many rows; then each check is added, validated. Why
-- not leave the old rows and the checks NOT VALID: Postgres checks every row an UPDATE writes,
-- so each such row would make bgjobs's own batch writes fail (a claim, the reaper, a worker's
-- heartbeats for all its jobs) until someone fixed it.

DO $$
DECLARE
    c record;
    n bigint;
    low CONSTANT timestamptz := '0001-01-02 00:00:00+00';
    high CONSTANT timestamptz := '9999-12-31 00:00:00+00';
BEGIN
    FOR c IN SELECT * FROM (VALUES
        ('background_jobs', 'created_at'), ('background_jobs', 'updated_at'),
        ('background_jobs', 'run_after'), ('background_jobs', 'heartbeat_at'),
        ('background_jobs', 'started_at'), ('background_jobs', 'finished_at'),
        ('bgjobs_users', 'created_at'),
        ('bgjobs_api_tokens', 'created_at'), ('bgjobs_api_tokens', 'revoked_at'),
        ('bgjobs_sessions', 'created_at'), ('bgjobs_sessions', 'expires_at'),
        ('bgjobs_sessions', 'ended_at'),
        ('bgjobs_job_types', 'rate_at'),
        ('bgjobs_schedules', 'last_tick'), ('bgjobs_schedules', 'created_at'),
        ('bgjobs_schedules', 'updated_at'),
        ('bgjobs_workers', 'started_at'), ('bgjobs_workers', 'heartbeat_at')
    ) AS t(tbl, col)
    LOOP
        EXECUTE format('UPDATE %I SET %I = CASE WHEN %I < %L THEN %L::timestamptz '
                       'ELSE %L::timestamptz - interval ''1 microsecond'' END '
                       'WHERE NOT (%I >= %L AND %I < %L)',
                       c.tbl, c.col, c.col, low, low, high, c.col, low, c.col, high);
        GET DIAGNOSTICS n = ROW_COUNT;
        IF n > 0 THEN
            RAISE WARNING '%.%: % row(s) held a time no reader can represent (infinity, or a year outside 1-9999 in some time zone); moved to the nearest one that can be read', c.tbl, c.col, n
                USING HINT = 'see docs/dba.md, "What the columns take"';
        END IF;
        EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK (%I >= %L AND %I < %L)',
                       c.tbl, c.tbl || '_' || c.col || '_between_0001_01_02_and_9999_12_30',
                       c.col, low, c.col, high);
    END LOOP;
END $$;

-- Views a DBA (and the operator view) reads: a row restored without the checks above, with an
-- infinite time, must not fail them either (now() - 'infinity' is an error on Postgres 15).
CREATE OR REPLACE VIEW bgjobs_summary AS
SELECT job_type,
       status,
       count(*) AS jobs,
       max(now() - created_at) FILTER (WHERE status = 'pending' AND isfinite(created_at))
           AS oldest_pending_age,
       max(updated_at) AS last_change
FROM background_jobs
GROUP BY job_type, status;

CREATE OR REPLACE VIEW bgjobs_stuck AS
SELECT id, job_type, user_id, worker_id, attempts, max_attempts, started_at, heartbeat_at,
       CASE WHEN isfinite(heartbeat_at) THEN now() - heartbeat_at END AS silent_for,
       lease_seconds
FROM background_jobs
WHERE status = 'running'
  AND greatest(coalesce(heartbeat_at, started_at), pg_postmaster_start_time())
      < now() - make_interval(secs => lease_seconds);

-- Nor a DBA's attempts = 2147483647 (no attempt number left: the claim passes such a job by)
-- make a requeue fail on integer overflow.
CREATE OR REPLACE FUNCTION bgjobs_requeue(p_id uuid) RETURNS SETOF background_jobs
LANGUAGE sql AS $$
    UPDATE background_jobs
    SET status = 'pending', run_after = now(), worker_id = NULL, heartbeat_at = NULL,
        started_at = NULL, result = NULL, progress = '{}',
        max_attempts = greatest(max_attempts, least(attempts, 2147483646) + 1)
    WHERE id = p_id AND status <> 'pending'
    RETURNING *
$$;
