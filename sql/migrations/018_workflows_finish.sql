-- Workflows (015), the last step: the check on waiting_for validated (a scan that blocks no
-- writes), and the claim index of 017 in place of the one that also held waiting jobs (the
-- drop and the rename take their lock for an instant, no scan).
ALTER TABLE background_jobs VALIDATE CONSTRAINT background_jobs_waiting_for_check;
DROP INDEX background_jobs_claim_idx;
ALTER INDEX background_jobs_claim_ready_idx RENAME TO background_jobs_claim_idx;
