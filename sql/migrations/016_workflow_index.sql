-- bgjobs:no-transaction
-- A workflow's jobs by its id (015; GET .../workflows/<id>, bgjobs_cancel_workflow).
CREATE INDEX CONCURRENTLY IF NOT EXISTS background_jobs_workflow_idx
    ON background_jobs (workflow_id) WHERE workflow_id IS NOT NULL;
