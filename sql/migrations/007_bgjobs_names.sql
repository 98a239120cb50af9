-- bgjobs's own tables take names no host app uses, so `bgjobs migrate` can run in a database
-- an app already uses (its own `users` table included): users -> bgjobs_users, api_tokens ->
-- bgjobs_api_tokens, and the seed's idx_jobs_* indexes -> background_jobs_*_idx. Rows, ids and
-- references stay as they are. A fresh database gets all of 001-007 at once from
-- sql/baseline/007_schema.sql instead, which also links background_jobs.user_id to the host
-- app's users(id) when there is one.

ALTER TABLE users RENAME TO bgjobs_users;
ALTER SEQUENCE users_id_seq RENAME TO bgjobs_users_id_seq;
ALTER INDEX users_pkey RENAME TO bgjobs_users_pkey;
ALTER INDEX users_name_key RENAME TO bgjobs_users_name_key;
ALTER TABLE bgjobs_users RENAME CONSTRAINT users_name_check TO bgjobs_users_name_check;

ALTER TABLE api_tokens RENAME TO bgjobs_api_tokens;
ALTER SEQUENCE api_tokens_id_seq RENAME TO bgjobs_api_tokens_id_seq;
ALTER INDEX api_tokens_pkey RENAME TO bgjobs_api_tokens_pkey;
ALTER INDEX api_tokens_token_hash_key RENAME TO bgjobs_api_tokens_token_hash_key;
ALTER TABLE bgjobs_api_tokens
    RENAME CONSTRAINT api_tokens_user_id_fkey TO bgjobs_api_tokens_user_id_fkey;

ALTER INDEX idx_jobs_user RENAME TO background_jobs_user_idx;
ALTER INDEX idx_jobs_status RENAME TO background_jobs_status_idx;
ALTER INDEX idx_jobs_claim RENAME TO background_jobs_claim_idx;
ALTER INDEX idx_jobs_user_created RENAME TO background_jobs_user_created_idx;
ALTER INDEX idx_jobs_running_heartbeat RENAME TO background_jobs_running_heartbeat_idx;
ALTER INDEX idx_jobs_idempotency RENAME TO background_jobs_idempotency_idx;
ALTER INDEX idx_jobs_exclusive RENAME TO background_jobs_exclusive_idx;

-- The row-level notify trigger of 001 was replaced in 002; its function stayed behind.
DROP FUNCTION bgjobs_notify();

COMMENT ON TABLE bgjobs_users IS 'bgjobs''s own users (the stand-alone API and dashboard), created with `bgjobs user create NAME`. In a host app''s database each one is a row of the app''s users, with the same id.';
COMMENT ON TABLE bgjobs_api_tokens IS 'Bearer tokens for the API. Only a SHA-256 of each token is kept; the token itself is shown once.';
COMMENT ON COLUMN bgjobs_api_tokens.revoked_at IS 'Set to revoke: `UPDATE bgjobs_api_tokens SET revoked_at = now() WHERE id = ...`.';
COMMENT ON COLUMN background_jobs.user_id IS 'Who owns the job: the host app''s users(id) when bgjobs was installed into its database, else bgjobs_users(id). NULL: nobody (jobs from the shell or SQL).';
