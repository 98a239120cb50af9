-- A reaper left alone every row naming it as the worker (011): it is alive and heartbeats
-- every job it runs. But a row can name a live worker that does not run that job: after a
-- failover to an asynchronous standby, or a crash that lost commits, the completion it wrote
-- is gone, and the row says 'running' for a job it finished long ago. With no other worker to
-- reap it (one machine), it stayed 'running' for ever. The reaper now says which jobs it runs
-- (p_running) and leaves only those alone; NULL (a supervisor older than this): all its own.

DROP FUNCTION bgjobs_reap(timestamptz, text);

CREATE FUNCTION bgjobs_reap(p_now timestamptz DEFAULT now(), p_reaper text DEFAULT NULL,
                            p_running uuid[] DEFAULT NULL)
RETURNS TABLE (id uuid, job_type varchar, status varchar, attempts integer) LANGUAGE sql AS $$
    WITH stale AS (
        SELECT j.id FROM background_jobs j
        WHERE j.status = 'running'
          AND greatest(coalesce(j.heartbeat_at, j.started_at), pg_postmaster_start_time())
              < p_now - make_interval(secs => j.lease_seconds)
          AND (j.worker_id IS DISTINCT FROM p_reaper
               OR (p_running IS NOT NULL AND j.id <> ALL (p_running)))
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
COMMENT ON FUNCTION bgjobs_reap(timestamptz, text, uuid[]) IS 'Take back running jobs whose heartbeat is older than their lease (counted from this Postgres''s start at the earliest): pending while attempts remain, else error. p_reaper: the calling worker''s id; p_running: the jobs it runs, left alone (NULL: all of its own).';
