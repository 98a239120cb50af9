-- A queue table churns: every job is inserted, updated several times and deleted by purge.
-- Analyze and vacuum it far more often than the defaults (10-20% of the table changed), so
-- the planner keeps reading the partial claim index in order instead of sorting every
-- pending row, and dead index entries do not pile up in front of the queue.
ALTER TABLE background_jobs SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.01,
    autovacuum_analyze_threshold = 500,
    fillfactor = 80
);
