-- bgjobs:no-transaction
-- Claiming reads only jobs that wait for nothing (015): the claim index without them. 018
-- drops the old one and gives this one its name.
CREATE INDEX CONCURRENTLY IF NOT EXISTS background_jobs_claim_ready_idx
    ON background_jobs (priority, created_at) WHERE status = 'pending' AND waiting_for = 0;
