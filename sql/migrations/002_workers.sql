-- Workers write jobs in batches (one claim, one complete per tick for hundreds of jobs). The
-- row-level notify trigger of 001 ran a PL/pgSQL call per row, which cost about as much as the
-- update itself. The same notifications, with the same payloads and conditions, now come from
-- statement-level triggers that read the transition tables: one call per statement, whatever
-- the number of rows. A single-row update (the API, psql) notifies exactly as before.

DROP TRIGGER background_jobs_notify ON background_jobs;

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
    RETURN NULL;
END $$;

CREATE TRIGGER background_jobs_notify_insert AFTER INSERT ON background_jobs
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION bgjobs_notify_inserted();

CREATE TRIGGER background_jobs_notify_update AFTER UPDATE ON background_jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION bgjobs_notify_updated();

COMMENT ON FUNCTION bgjobs_notify_inserted() IS 'NOTIFY background_jobs_new (pending rows) and background_jobs_progress for every inserted job, once per statement.';
COMMENT ON FUNCTION bgjobs_notify_updated() IS 'NOTIFY background_jobs_new when a job becomes claimable again and background_jobs_progress when status, progress or result changed, once per statement.';
