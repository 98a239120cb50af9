-- bgjobs schema: users, API tokens, the background_jobs table, its triggers, DBA views and
-- functions. Forward-only: never edit this file once applied; add 002_... instead.

CREATE TABLE users (
    id SERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9_.@-]{1,64}$'),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
COMMENT ON TABLE users IS 'People and services that own jobs. Created with `bgjobs user create NAME`.';

CREATE TABLE api_tokens (
    id SERIAL PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    token_hash BYTEA NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at TIMESTAMPTZ
);
COMMENT ON TABLE api_tokens IS 'Bearer tokens for the API. Only a SHA-256 of each token is kept; the token itself is shown once.';
COMMENT ON COLUMN api_tokens.revoked_at IS 'Set to revoke: `UPDATE api_tokens SET revoked_at = now() WHERE id = ...`.';

CREATE TABLE background_jobs (
    -- The seed's columns, unchanged but for defaults that let plain SQL enqueue.
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id INTEGER REFERENCES users(id),
    job_type VARCHAR(50) NOT NULL,
    status VARCHAR(20) NOT NULL DEFAULT 'pending'
        CONSTRAINT background_jobs_status_check
        CHECK (status IN ('pending', 'running', 'complete', 'error', 'cancelled')),
    progress JSONB DEFAULT '{}',
    result JSONB,
    created_at TIMESTAMPTZ DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMPTZ DEFAULT CURRENT_TIMESTAMP,
    -- Additions.
    params JSONB NOT NULL DEFAULT '{}',
    priority INTEGER NOT NULL DEFAULT 0,
    run_after TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempts INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts INTEGER NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
    lease_seconds INTEGER NOT NULL DEFAULT 30 CHECK (lease_seconds > 0),
    worker_id TEXT,
    heartbeat_at TIMESTAMPTZ,
    started_at TIMESTAMPTZ,
    finished_at TIMESTAMPTZ,
    version BIGINT NOT NULL DEFAULT 1,
    idempotency_key TEXT,
    exclusive_key TEXT
);

COMMENT ON TABLE background_jobs IS 'Every background job and all of its state. Enqueue with INSERT (job_type, params[, user_id]); workers wake on NOTIFY background_jobs_new.';
COMMENT ON COLUMN background_jobs.job_type IS 'Which registered task runs the job, e.g. validation, optimization, rescoring, noop.';
COMMENT ON COLUMN background_jobs.status IS 'pending -> running -> complete | error | cancelled; running -> pending again on retry, reap or requeue.';
COMMENT ON COLUMN background_jobs.progress IS 'Latest progress reported by the handler: {current, total, stage, ...}.';
COMMENT ON COLUMN background_jobs.result IS 'Final output (complete) or {error, message} (error).';
COMMENT ON COLUMN background_jobs.params IS 'The job''s input, validated by its task before it is accepted.';
COMMENT ON COLUMN background_jobs.priority IS 'Lower runs first; ties go to the oldest job.';
COMMENT ON COLUMN background_jobs.run_after IS 'Not claimed before this time (retry backoff, scheduled jobs).';
COMMENT ON COLUMN background_jobs.attempts IS 'How many times a worker has claimed the job. Never decreases: it fences late writes of an earlier attempt.';
COMMENT ON COLUMN background_jobs.max_attempts IS 'Attempts allowed before a failure or a lost worker ends the job in error.';
COMMENT ON COLUMN background_jobs.lease_seconds IS 'A running job whose heartbeat is older than this is taken back by the reaper.';
COMMENT ON COLUMN background_jobs.worker_id IS 'The worker that owns the current attempt (host:pid/slot).';
COMMENT ON COLUMN background_jobs.heartbeat_at IS 'Refreshed by the owning worker while the job runs.';
COMMENT ON COLUMN background_jobs.version IS 'Bumped by a trigger on every update; the SSE event id.';
COMMENT ON COLUMN background_jobs.idempotency_key IS 'Client-chosen key: a retried enqueue with the same user and key returns the same job.';
COMMENT ON COLUMN background_jobs.exclusive_key IS 'Set for exclusive job types: at most one pending or running job per user and key.';

CREATE INDEX idx_jobs_user ON background_jobs(user_id);
CREATE INDEX idx_jobs_status ON background_jobs(status);
-- Claiming reads this index in order and stops after a few rows.
CREATE INDEX idx_jobs_claim ON background_jobs (priority, created_at) WHERE status = 'pending';
-- Listing a user's jobs newest first, with a (created_at, id) cursor.
CREATE INDEX idx_jobs_user_created ON background_jobs (user_id, created_at DESC, id DESC);
-- The reaper looks only at running jobs.
CREATE INDEX idx_jobs_running_heartbeat ON background_jobs (heartbeat_at) WHERE status = 'running';
CREATE UNIQUE INDEX idx_jobs_idempotency ON background_jobs (user_id, idempotency_key)
    NULLS NOT DISTINCT WHERE idempotency_key IS NOT NULL;
CREATE UNIQUE INDEX idx_jobs_exclusive ON background_jobs (user_id, exclusive_key)
    NULLS NOT DISTINCT WHERE exclusive_key IS NOT NULL AND status IN ('pending', 'running');

-- updated_at, version and finished_at are the database's to keep, whoever writes the row.
CREATE FUNCTION bgjobs_touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := clock_timestamp();
    NEW.version := OLD.version + 1;
    IF NEW.status IN ('complete', 'error', 'cancelled') AND OLD.status IS DISTINCT FROM NEW.status THEN
        NEW.finished_at := coalesce(NEW.finished_at, clock_timestamp());
    ELSIF NEW.status IN ('pending', 'running') THEN
        NEW.finished_at := NULL;
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER background_jobs_touch BEFORE UPDATE ON background_jobs
    FOR EACH ROW EXECUTE FUNCTION bgjobs_touch();

-- The payload of background_jobs_progress: small JSON, or the id alone when it would not fit.
CREATE FUNCTION bgjobs_progress_payload(j background_jobs) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN octet_length(p) < 7900 THEN p
                ELSE json_build_object('id', j.id)::text END
    FROM (SELECT json_build_object('id', j.id, 'user_id', j.user_id, 'job_type', j.job_type,
                                   'status', j.status, 'version', j.version,
                                   'progress', j.progress)::text AS p) AS payload
$$;

CREATE FUNCTION bgjobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.status = 'pending' THEN
            PERFORM pg_notify('background_jobs_new', NEW.job_type);
        END IF;
        PERFORM pg_notify('background_jobs_progress', bgjobs_progress_payload(NEW));
        RETURN NULL;
    END IF;
    IF NEW.status = 'pending' AND (OLD.status <> 'pending' OR NEW.run_after < OLD.run_after) THEN
        PERFORM pg_notify('background_jobs_new', NEW.job_type);
    END IF;
    -- Heartbeats change none of these and stay silent.
    IF NEW.status IS DISTINCT FROM OLD.status
       OR NEW.progress IS DISTINCT FROM OLD.progress
       OR NEW.result IS DISTINCT FROM OLD.result THEN
        PERFORM pg_notify('background_jobs_progress', bgjobs_progress_payload(NEW));
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER background_jobs_notify AFTER INSERT OR UPDATE ON background_jobs
    FOR EACH ROW EXECUTE FUNCTION bgjobs_notify();

-- For DBAs ----------------------------------------------------------------------------------

CREATE VIEW bgjobs_summary AS
SELECT job_type,
       status,
       count(*) AS jobs,
       max(now() - created_at) FILTER (WHERE status = 'pending') AS oldest_pending_age,
       max(updated_at) AS last_change
FROM background_jobs
GROUP BY job_type, status;
COMMENT ON VIEW bgjobs_summary IS 'Jobs by type and status, with the age of the oldest pending job.';

CREATE VIEW bgjobs_stuck AS
SELECT id, job_type, user_id, worker_id, attempts, max_attempts, started_at, heartbeat_at,
       now() - heartbeat_at AS silent_for, lease_seconds
FROM background_jobs
WHERE status = 'running'
  AND coalesce(heartbeat_at, started_at) < now() - make_interval(secs => lease_seconds);
COMMENT ON VIEW bgjobs_stuck IS 'Running jobs whose heartbeat is older than their lease: the reaper will take them back.';

CREATE FUNCTION bgjobs_cancel(p_id uuid, p_user_id integer DEFAULT NULL)
RETURNS SETOF background_jobs LANGUAGE sql AS $$
    UPDATE background_jobs
    SET status = 'cancelled', heartbeat_at = NULL
    WHERE id = p_id AND status IN ('pending', 'running')
      AND (p_user_id IS NULL OR user_id = p_user_id)
    RETURNING *
$$;
COMMENT ON FUNCTION bgjobs_cancel(uuid, integer) IS 'Cancel a pending or running job; its worker stops the handler. Returns the row, or nothing if the job was already finished, does not exist or (with p_user_id) is not that user''s.';

CREATE FUNCTION bgjobs_requeue(p_id uuid) RETURNS SETOF background_jobs LANGUAGE sql AS $$
    UPDATE background_jobs
    SET status = 'pending', run_after = now(), worker_id = NULL, heartbeat_at = NULL,
        started_at = NULL, result = NULL, progress = '{}',
        max_attempts = greatest(max_attempts, attempts + 1)
    WHERE id = p_id AND status <> 'pending'
    RETURNING *
$$;
COMMENT ON FUNCTION bgjobs_requeue(uuid) IS 'Run a job again from the start (any status but pending), with at least one more attempt. A worker still running it is fenced out.';

CREATE FUNCTION bgjobs_reap(p_now timestamptz DEFAULT now())
RETURNS TABLE (id uuid, job_type varchar, status varchar, attempts integer) LANGUAGE sql AS $$
    WITH stale AS (
        SELECT j.id FROM background_jobs j
        WHERE j.status = 'running'
          AND coalesce(j.heartbeat_at, j.started_at) < p_now - make_interval(secs => j.lease_seconds)
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
COMMENT ON FUNCTION bgjobs_reap(timestamptz) IS 'Take back running jobs whose heartbeat is older than their lease: pending while attempts remain, else error.';

CREATE FUNCTION bgjobs_purge(p_older_than interval, p_now timestamptz DEFAULT now())
RETURNS bigint LANGUAGE sql AS $$
    WITH gone AS (
        DELETE FROM background_jobs
        WHERE status IN ('complete', 'error', 'cancelled') AND finished_at < p_now - p_older_than
        RETURNING 1
    )
    SELECT count(*) FROM gone
$$;
COMMENT ON FUNCTION bgjobs_purge(interval, timestamptz) IS 'Delete finished jobs that finished more than the interval ago; returns how many.';
