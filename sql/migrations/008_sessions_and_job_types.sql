-- Hardening (issue 10): sessions the server can end, a channel that tells the events service
-- when credentials end, and job types the database knows, so a plain-SQL insert of an
-- exclusive type is exclusive too.

-- Sessions --------------------------------------------------------------------------------------
-- A browser's session cookie names one of these rows (signed with BGJOBS_SECRET_KEY). Sign-out
-- ends the row, so a copied cookie stops working at once, not when it expires; revoking the
-- token a session was made from ends it too.
CREATE TABLE bgjobs_sessions (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id INTEGER NOT NULL REFERENCES bgjobs_users(id) ON DELETE CASCADE,
    token_id INTEGER NOT NULL REFERENCES bgjobs_api_tokens(id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL,
    ended_at TIMESTAMPTZ
);
CREATE INDEX bgjobs_sessions_user_idx ON bgjobs_sessions (user_id);
CREATE INDEX bgjobs_sessions_token_idx ON bgjobs_sessions (token_id);
COMMENT ON TABLE bgjobs_sessions IS 'Browser sessions (the bgjobs_session cookie names one). End one with `UPDATE bgjobs_sessions SET ended_at = now() WHERE id = ...`; revoking its token ends it too.';
COMMENT ON COLUMN bgjobs_sessions.ended_at IS 'Set at sign-out: the cookie is refused from then on, and its event streams end.';

-- Credentials that end ----------------------------------------------------------------------
-- The events service LISTENs on bgjobs_auth (on its one LISTEN connection) and re-checks the
-- open streams of the user named in the payload, {"user_id": N}: a revoked token or an ended
-- session ends its streams at once. The payload only says whom to look at; the tables decide.
CREATE FUNCTION bgjobs_notify_auth() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('bgjobs_auth', json_build_object('user_id', OLD.user_id)::text);
    RETURN NULL;
END $$;
COMMENT ON FUNCTION bgjobs_notify_auth() IS 'NOTIFY bgjobs_auth {"user_id"} when a token is revoked or deleted, or a session ended or deleted: the events service ends the streams they opened.';

CREATE TRIGGER bgjobs_api_tokens_revoked AFTER UPDATE OF revoked_at ON bgjobs_api_tokens
    FOR EACH ROW WHEN (OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL)
    EXECUTE FUNCTION bgjobs_notify_auth();
CREATE TRIGGER bgjobs_api_tokens_deleted AFTER DELETE ON bgjobs_api_tokens
    FOR EACH ROW EXECUTE FUNCTION bgjobs_notify_auth();
CREATE TRIGGER bgjobs_sessions_ended AFTER UPDATE OF ended_at ON bgjobs_sessions
    FOR EACH ROW WHEN (OLD.ended_at IS NULL AND NEW.ended_at IS NOT NULL)
    EXECUTE FUNCTION bgjobs_notify_auth();
CREATE TRIGGER bgjobs_sessions_deleted AFTER DELETE ON bgjobs_sessions
    FOR EACH ROW WHEN (OLD.ended_at IS NULL) EXECUTE FUNCTION bgjobs_notify_auth();

-- Job types -------------------------------------------------------------------------------------
-- What the task registry says of each type, written by `bgjobs migrate`, the API and the
-- workers when they start. An INSERT that leaves max_attempts out (plain SQL, another service)
-- gets the type's; one that leaves exclusive_key out gets the type as its key when the type is
-- exclusive, so the unique index refuses a second active job of it for the same user.
-- bgjobs's own enqueue path writes both columns itself, so the trigger below does not even run
-- for it: "left out" is told apart by the defaults (max_attempts has none, exclusive_key's is a
-- marker longer than any job type name, which the trigger always replaces).
-- 009_operations.sql (limits, retention) adds its own columns to the same table, and may have
-- made it first on a database that had 009 before this file existed: hence IF NOT EXISTS.
CREATE TABLE IF NOT EXISTS bgjobs_job_types (job_type VARCHAR(50) PRIMARY KEY);
ALTER TABLE bgjobs_job_types
    ADD COLUMN IF NOT EXISTS exclusive BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS max_attempts INTEGER NOT NULL DEFAULT 3 CHECK (max_attempts >= 1);
COMMENT ON COLUMN bgjobs_job_types.exclusive IS 'At most one pending or running job of the type per user: an INSERT into background_jobs that leaves exclusive_key out gets the type as its key. Written from the task registry by bgjobs migrate, the API and the workers at start.';
COMMENT ON COLUMN bgjobs_job_types.max_attempts IS 'What an INSERT into background_jobs that leaves max_attempts out gets. Written from the task registry, as exclusive is.';

ALTER TABLE background_jobs
    ALTER COLUMN max_attempts DROP DEFAULT,
    ALTER COLUMN exclusive_key
        SET DEFAULT '(left out: set from bgjobs_job_types by the background_jobs_defaults trigger)';
COMMENT ON COLUMN background_jobs.max_attempts IS 'Attempts allowed before a failure or a lost worker ends the job in error. Left out of an INSERT: the job type''s (bgjobs_job_types), else 3.';
COMMENT ON COLUMN background_jobs.exclusive_key IS 'Set for exclusive job types: at most one pending or running job per user and key. Left out of an INSERT: the job type when bgjobs_job_types says it is exclusive, else NULL.';

CREATE FUNCTION bgjobs_job_defaults() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    t bgjobs_job_types;
BEGIN
    SELECT * INTO t FROM bgjobs_job_types WHERE job_type = NEW.job_type;
    NEW.max_attempts := coalesce(NEW.max_attempts, t.max_attempts, 3);
    IF octet_length(NEW.exclusive_key) > 50 AND NEW.exclusive_key LIKE '(left out:%' THEN
        NEW.exclusive_key := CASE WHEN t.exclusive THEN NEW.job_type END;
    END IF;
    RETURN NEW;
END $$;
COMMENT ON FUNCTION bgjobs_job_defaults() IS 'Fills max_attempts and exclusive_key of an inserted job that left them out, from bgjobs_job_types.';

CREATE TRIGGER background_jobs_defaults BEFORE INSERT ON background_jobs
    FOR EACH ROW WHEN (NEW.max_attempts IS NULL OR NEW.exclusive_key LIKE '(left out:%')
    EXECUTE FUNCTION bgjobs_job_defaults();
