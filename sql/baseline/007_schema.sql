-- bgjobs's whole schema as of migration 007, for a database bgjobs has never migrated:
-- `bgjobs migrate` runs this file instead of replaying 001-007, then the migrations after 007
-- as usual. A database migrated before 007 replays them and ends with the same schema (a test
-- compares the two). Never edit this file: add a migration.
--
-- background_jobs.user_id references the host app's users(id) when the database has such a
-- table (the name comes from BGJOBS_USERS_TABLE, default `users`, passed as the setting
-- bgjobs.users_table), and bgjobs's own bgjobs_users(id) otherwise. The host's table is only
-- referenced, never changed.

CREATE TABLE bgjobs_users (
    id SERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9_.@-]{1,64}$'),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE bgjobs_api_tokens (
    id SERIAL PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES bgjobs_users(id) ON DELETE CASCADE,
    token_hash BYTEA NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at TIMESTAMPTZ
);

CREATE TABLE background_jobs (
    -- The seed's columns, unchanged but for defaults that let plain SQL enqueue.
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id INTEGER,
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

CREATE INDEX background_jobs_user_idx ON background_jobs(user_id);
CREATE INDEX background_jobs_status_idx ON background_jobs(status);
-- Claiming reads this index in order and stops after a few rows.
CREATE INDEX background_jobs_claim_idx ON background_jobs (priority, created_at)
    WHERE status = 'pending';
-- Listing a user's jobs newest first, with a (created_at, id) cursor.
CREATE INDEX background_jobs_user_created_idx
    ON background_jobs (user_id, created_at DESC, id DESC);
-- The reaper looks only at running jobs.
CREATE INDEX background_jobs_running_heartbeat_idx ON background_jobs (heartbeat_at)
    WHERE status = 'running';
CREATE UNIQUE INDEX background_jobs_idempotency_idx ON background_jobs (user_id, idempotency_key)
    NULLS NOT DISTINCT WHERE idempotency_key IS NOT NULL;
CREATE UNIQUE INDEX background_jobs_exclusive_idx ON background_jobs (user_id, exclusive_key)
    NULLS NOT DISTINCT WHERE exclusive_key IS NOT NULL AND status IN ('pending', 'running');

-- A queue table churns: analyze and vacuum it far more often than the defaults (005).
ALTER TABLE background_jobs SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.01,
    autovacuum_analyze_threshold = 500,
    fillfactor = 80
);

-- Who owns a job: the host app's users, or bgjobs's own.
DO $$
DECLARE
    host regclass := to_regclass(coalesce(nullif(current_setting('bgjobs.users_table', true), ''),
                                          'users'));
    id_type text;
BEGIN
    IF host IS NULL THEN
        ALTER TABLE background_jobs ADD CONSTRAINT background_jobs_user_id_fkey
            FOREIGN KEY (user_id) REFERENCES bgjobs_users(id);
        RETURN;
    END IF;
    SELECT format_type(a.atttypid, a.atttypmod) INTO id_type
    FROM pg_attribute a WHERE a.attrelid = host AND a.attname = 'id' AND NOT a.attisdropped;
    IF id_type IS NULL OR id_type NOT IN ('integer', 'smallint', 'bigint') THEN
        RAISE EXCEPTION 'the users table % has no integer id column (found %); bgjobs keeps a user id per job as an integer', host, coalesce(id_type, 'none')
            USING HINT = 'set BGJOBS_USERS_TABLE to the table of your users';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_index i WHERE i.indrelid = host AND i.indisunique
                   AND i.indnkeyatts = 1 AND i.indpred IS NULL
                   AND i.indkey[0] = (SELECT attnum FROM pg_attribute
                                      WHERE attrelid = host AND attname = 'id')) THEN
        RAISE EXCEPTION 'the users table %: its id column is not unique (no primary key or unique constraint on id)', host;
    END IF;
    EXECUTE format('ALTER TABLE background_jobs ADD CONSTRAINT background_jobs_user_id_fkey '
                   'FOREIGN KEY (user_id) REFERENCES %s(id)', host);
    EXECUTE format('ALTER TABLE bgjobs_users ADD CONSTRAINT bgjobs_users_id_fkey '
                   'FOREIGN KEY (id) REFERENCES %s(id) ON DELETE CASCADE', host);
END $$;

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

CREATE FUNCTION bgjobs_notify_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('background_jobs_new', n.job_type) FROM inserted n
    WHERE n.status = 'pending';
    PERFORM pg_notify('background_jobs_progress', bgjobs_progress_payload(n)) FROM inserted n;
    RETURN NULL;
END $$;

CREATE FUNCTION bgjobs_notify_updated() RETURNS trigger LANGUAGE plpgsql AS $$
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

CREATE TRIGGER background_jobs_notify_insert AFTER INSERT ON background_jobs
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION bgjobs_notify_inserted();

CREATE TRIGGER background_jobs_notify_update AFTER UPDATE ON background_jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION bgjobs_notify_updated();

COMMENT ON FUNCTION bgjobs_notify_inserted() IS 'NOTIFY background_jobs_new (pending rows) and background_jobs_progress for every inserted job, once per statement.';
COMMENT ON FUNCTION bgjobs_notify_inserted() IS 'NOTIFY background_jobs_new (pending rows) and background_jobs_progress for every inserted job, once per statement.';

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

COMMENT ON TABLE bgjobs_users IS 'bgjobs''s own users (the stand-alone API and dashboard), created with `bgjobs user create NAME`. In a host app''s database each one is a row of the app''s users, with the same id.';
COMMENT ON TABLE bgjobs_api_tokens IS 'Bearer tokens for the API. Only a SHA-256 of each token is kept; the token itself is shown once.';
COMMENT ON COLUMN bgjobs_api_tokens.revoked_at IS 'Set to revoke: `UPDATE bgjobs_api_tokens SET revoked_at = now() WHERE id = ...`.';
COMMENT ON COLUMN background_jobs.user_id IS 'Who owns the job: the host app''s users(id) when bgjobs was installed into its database, else bgjobs_users(id). NULL: nobody (jobs from the shell or SQL).';
