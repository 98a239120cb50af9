-- The reaper must never take back a job whose worker is alive. Two cases broke that:
-- - after a Postgres outage longer than the lease, every heartbeat is stale: the first
--   supervisor back reaped the others' live jobs (and its own), and they ran twice. A job's
--   silence now counts from when this Postgres started at the earliest: nobody could heartbeat
--   while it was down, so every worker gets a whole lease after a restart;
-- - a supervisor reaping its own jobs: it is alive (it is reaping), and it heartbeats every job
--   it runs. The reaper now names itself (p_reaper) and leaves its own jobs alone.
-- A worker cut off from a Postgres that stayed up cannot be told from a dead one: choose the
-- lease longer than such a cut (docs/operations.md).

DROP FUNCTION bgjobs_reap(timestamptz);

CREATE FUNCTION bgjobs_reap(p_now timestamptz DEFAULT now(), p_reaper text DEFAULT NULL)
RETURNS TABLE (id uuid, job_type varchar, status varchar, attempts integer) LANGUAGE sql AS $$
    WITH stale AS (
        SELECT j.id FROM background_jobs j
        WHERE j.status = 'running'
          AND greatest(coalesce(j.heartbeat_at, j.started_at), pg_postmaster_start_time())
              < p_now - make_interval(secs => j.lease_seconds)
          AND j.worker_id IS DISTINCT FROM p_reaper
        FOR UPDATE SKIP LOCKED
    )
    UPDATE background_jobs j
    SET status = CASE WHEN j.attempts < j.max_attempts THEN 'pending' ELSE 'error' END,
        result = CASE WHEN j.attempts < j.max_attempts THEN j.result
                      ELSE jsonb_build_object('error', 'WorkerLost',
                               'message', 'the worker running this job stopped heartbeating ('
                               || coalesce(j.worker_id, '?') || ')') END,
        run_after = p_now, worker_id = NULL, heartbeat_at = NULL
    FROM stale WHERE j.id = stale.id
    RETURNING j.id, j.job_type, j.status, j.attempts
$$;
COMMENT ON FUNCTION bgjobs_reap(timestamptz, text) IS 'Take back running jobs whose heartbeat is older than their lease (counted from this Postgres''s start at the earliest): pending while attempts remain, else error. p_reaper: the calling worker''s id, whose own jobs are left alone.';

CREATE OR REPLACE VIEW bgjobs_stuck AS
SELECT id, job_type, user_id, worker_id, attempts, max_attempts, started_at, heartbeat_at,
       now() - heartbeat_at AS silent_for, lease_seconds
FROM background_jobs
WHERE status = 'running'
  AND greatest(coalesce(heartbeat_at, started_at), pg_postmaster_start_time())
      < now() - make_interval(secs => lease_seconds);
