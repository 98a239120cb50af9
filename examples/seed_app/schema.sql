-- The app's own tables. bgjobs adds its own beside them (`bgjobs migrate`) and changes none of
-- these: background_jobs.user_id references users(id).
CREATE TABLE IF NOT EXISTS users (
    id SERIAL PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Who started or cancelled what: written in the same transaction as the job it names.
CREATE TABLE IF NOT EXISTS activity (
    id BIGSERIAL PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id),
    action TEXT NOT NULL,
    job_id UUID NOT NULL,
    at TIMESTAMPTZ NOT NULL DEFAULT now()
);
