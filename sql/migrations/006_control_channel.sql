-- Workers learn that a job they run was cancelled, requeued or reaped from a small channel of
-- its own, background_jobs_control, instead of reading every background_jobs_progress payload
-- (one per progress write, of every job on every machine). Its payload is
-- {"id": <job id>, "attempt": <the attempt taken away>}: a supervisor that claimed the same job
-- again since then can tell the news is about an older attempt.
--
-- A worker's own writes (progress, complete, fail, release) stay silent here: its connections
-- set bgjobs.worker_id, and a change made by the job's owner is not news to it.

CREATE OR REPLACE FUNCTION bgjobs_notify_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('background_jobs_new', n.job_type)
    FROM new_rows n JOIN old_rows o ON o.id = n.id
    WHERE n.status = 'pending' AND (o.status <> 'pending' OR n.run_after < o.run_after);
    -- Heartbeats change none of these and stay silent.
    PERFORM pg_notify('background_jobs_progress', bgjobs_progress_payload(n))
    FROM new_rows n JOIN old_rows o ON o.id = n.id
    WHERE n.status IS DISTINCT FROM o.status
       OR n.progress IS DISTINCT FROM o.progress
       OR n.result IS DISTINCT FROM o.result
    ORDER BY n.version;
    PERFORM pg_notify('background_jobs_control',
                      json_build_object('id', o.id, 'attempt', o.attempts)::text)
    FROM old_rows o JOIN new_rows n ON n.id = o.id
    WHERE o.status = 'running'
      AND (n.status <> 'running' OR n.attempts <> o.attempts
           OR n.worker_id IS DISTINCT FROM o.worker_id)
      AND o.worker_id IS DISTINCT FROM nullif(current_setting('bgjobs.worker_id', true), '');
    RETURN NULL;
END $$;

COMMENT ON FUNCTION bgjobs_notify_updated() IS 'NOTIFY background_jobs_new when a job becomes claimable again, background_jobs_progress when status, progress or result changed, and background_jobs_control when a running job was taken from its worker by anyone else (cancel, requeue, reap); once per statement.';
