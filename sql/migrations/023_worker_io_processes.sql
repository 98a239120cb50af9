-- A worker's IO processes (issue 18: the concurrent types run many jobs at once in one process)
-- were not in its row: an operator could not tell how many a worker runs or what each holds.
-- The worker now writes, with every beat (lease/3):
--   io_processes    how many IO processes it runs (0: none, the types are not concurrent);
--   io_concurrency  {"type": N}: jobs of each concurrent type one IO process runs at once;
--   io_jobs         one object per live IO process, [{"pid", "running", "waiting"}]: the jobs it
--                   runs, and those handed ahead that it starts as others end (`running` in
--                   background_jobs already, and in this row's `running`).
-- Added with defaults that describe a worker without IO processes, so rows written by workers
-- of an older version read the same as before; idempotent.
ALTER TABLE bgjobs_workers
    ADD COLUMN IF NOT EXISTS io_processes INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS io_concurrency JSONB NOT NULL DEFAULT '{}',
    ADD COLUMN IF NOT EXISTS io_jobs JSONB NOT NULL DEFAULT '[]';
COMMENT ON COLUMN bgjobs_workers.processes IS 'Processes that run one job at a time (bgjobs worker --concurrency).';
COMMENT ON COLUMN bgjobs_workers.running IS 'Jobs the worker holds: running, and those handed ahead to its IO processes that have not started yet.';
COMMENT ON COLUMN bgjobs_workers.io_processes IS 'IO processes the worker runs (bgjobs worker --io-processes): each runs many jobs of the concurrent types at once.';
COMMENT ON COLUMN bgjobs_workers.io_concurrency IS 'Jobs of each concurrent type one IO process runs at once, {"type": N}.';
COMMENT ON COLUMN bgjobs_workers.io_jobs IS 'One object per live IO process, [{"pid", "running", "waiting"}]: jobs it runs, and jobs handed ahead it starts as others end. Refreshed with heartbeat_at.';
