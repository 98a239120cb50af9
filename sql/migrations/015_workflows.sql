-- Workflows: a job may wait for other jobs (docs/workflows.md).
--
-- A job enqueued with depends_on (ids of jobs that already exist and belong to the same user)
-- is pending with waiting_for > 0 (the number of those jobs not yet complete) and no worker
-- claims it. The statement that completes the last of them, however it happens (a worker, a
-- DBA's UPDATE, bgjobs_cancel), brings waiting_for to 0 and wakes a worker, in the same
-- transaction. When one of them ends in error or is cancelled, the waiting job is cancelled
-- with the reason, and so is everything after it, unless it was enqueued with
-- run_if_dependency_fails (then that job counts as settled, as if it had completed).
--
-- depends_on is fixed at insert (a trigger refuses a change): a job can only wait for jobs
-- older than itself, so no cycle can be made. bgjobs_dependencies is the reverse index (from a
-- job to the jobs still waiting for it) that makes the release cost O(dependents), never a
-- scan; the triggers keep it (a row lives from the insert of the waiting job until its
-- dependency finishes), nobody writes it by hand.

-- Columns with constant defaults: no rewrite, no scan. The check is validated in 018 and the
-- indexes built concurrently in 016 and 017 (docs/operations.md, migrations on a busy database).
ALTER TABLE background_jobs
    ADD COLUMN depends_on UUID[],
    ADD COLUMN waiting_for INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN run_if_dependency_fails BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN workflow_id UUID;
ALTER TABLE background_jobs ADD CONSTRAINT background_jobs_waiting_for_check
    CHECK (waiting_for >= 0) NOT VALID;

COMMENT ON COLUMN background_jobs.depends_on IS 'Jobs this one runs after (all must complete first); set at insert, never changed.';
COMMENT ON COLUMN background_jobs.waiting_for IS 'How many of depends_on have not completed yet; a pending job is claimed only at 0.';
COMMENT ON COLUMN background_jobs.run_if_dependency_fails IS 'Run even if a job in depends_on ends in error or is cancelled (default: be cancelled too).';
COMMENT ON COLUMN background_jobs.workflow_id IS 'The workflow this job belongs to (inherited from depends_on when not given).';

-- No foreign keys: they would make a plain `TRUNCATE background_jobs` fail. Triggers below
-- forget the rows of deleted and truncated jobs instead.
CREATE TABLE bgjobs_dependencies (
    job_id UUID NOT NULL,
    depends_on UUID NOT NULL,
    -- Deleted once the dependency has counted (completed, or failed and dealt with): a job
    -- that completes again after a requeue finds nothing to release twice.
    PRIMARY KEY (job_id, depends_on)
);
CREATE INDEX bgjobs_dependencies_depends_on_idx ON bgjobs_dependencies (depends_on);
COMMENT ON TABLE bgjobs_dependencies IS 'Kept by triggers from background_jobs.depends_on: which jobs still wait for which. Read it; do not write it.';

-- On insert: check the dependencies and count the unfinished ones (one lock per dependency,
-- FOR SHARE, so that a dependency completing at this moment either sees this job's edge or is
-- seen complete by it).
CREATE FUNCTION bgjobs_check_dependencies() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    n_found int;
    n_others int;
    n_open int;
    n_failed int;
    workflow uuid;
    failed background_jobs;
BEGIN
    IF cardinality(NEW.depends_on) IS DISTINCT FROM 1 THEN
        IF coalesce(cardinality(NEW.depends_on), 0) = 0 THEN
            NEW.depends_on := NULL;
            RETURN NEW;
        END IF;
        -- Each once, in the order given.
        NEW.depends_on := ARRAY(SELECT d FROM unnest(NEW.depends_on) WITH ORDINALITY AS u(d, n)
                                GROUP BY d ORDER BY min(n));
    END IF;
    -- No ordered aggregates here (a sort each, per inserted row): the failure's details are
    -- read only when there is one.
    SELECT count(*),
           count(*) FILTER (WHERE p.user_id IS DISTINCT FROM NEW.user_id),
           count(*) FILTER (WHERE p.status <> 'complete'
                              AND NOT (p.status IN ('error', 'cancelled')
                                       AND NEW.run_if_dependency_fails)),
           count(*) FILTER (WHERE p.status IN ('error', 'cancelled')),
           max(p.workflow_id::text)::uuid
      INTO n_found, n_others, n_open, n_failed, workflow
    FROM (SELECT * FROM background_jobs WHERE id = ANY(NEW.depends_on) FOR SHARE) AS p;
    IF n_found < cardinality(NEW.depends_on) THEN
        RAISE EXCEPTION 'depends_on names % job(s) that do not exist',
            cardinality(NEW.depends_on) - n_found
            USING ERRCODE = 'foreign_key_violation',
                  CONSTRAINT = 'background_jobs_depends_on_exist';
    END IF;
    IF n_others > 0 THEN
        RAISE EXCEPTION 'depends_on names % job(s) of another user', n_others
            USING ERRCODE = 'foreign_key_violation',
                  CONSTRAINT = 'background_jobs_depends_on_same_user';
    END IF;
    NEW.waiting_for := n_open;
    NEW.workflow_id := coalesce(NEW.workflow_id, workflow);
    IF n_failed > 0 AND NOT NEW.run_if_dependency_fails AND NEW.status = 'pending' THEN
        SELECT * INTO failed FROM background_jobs
        WHERE id = ANY(NEW.depends_on) AND status IN ('error', 'cancelled')
        ORDER BY finished_at LIMIT 1;
        NEW.status := 'cancelled';
        NEW.waiting_for := 0;
        NEW.result := bgjobs_dependency_failed(failed.id, failed.job_type, failed.status);
    END IF;
    RETURN NEW;
END $$;

CREATE FUNCTION bgjobs_dependency_failed(p_id uuid, p_type text, p_status text)
RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object(
        'error', 'DependencyFailed',
        'message', format('cancelled: job %s (%s) it depends on ended %s', p_id, p_type,
                          CASE p_status WHEN 'error' THEN 'in error' ELSE 'cancelled' END),
        'dependency', p_id)
$$;

CREATE TRIGGER background_jobs_dependencies BEFORE INSERT ON background_jobs
    FOR EACH ROW WHEN (NEW.depends_on IS NOT NULL)
    EXECUTE FUNCTION bgjobs_check_dependencies();

CREATE FUNCTION bgjobs_keep_dependencies() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'depends_on cannot change after a job is enqueued (job %)', OLD.id
        USING ERRCODE = 'check_violation', CONSTRAINT = 'background_jobs_depends_on_fixed';
END $$;

CREATE TRIGGER background_jobs_depends_on_fixed BEFORE UPDATE OF depends_on ON background_jobs
    FOR EACH ROW WHEN (NEW.depends_on IS DISTINCT FROM OLD.depends_on)
    EXECUTE FUNCTION bgjobs_keep_dependencies();

-- After inserting a waiting job: the reverse index. Per row, with a WHEN clause, so that an
-- insert of jobs that wait for nothing (every enqueue) never calls it: per statement, it cost
-- every single enqueue 5%.
CREATE FUNCTION bgjobs_index_dependencies() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- A scalar subquery per dependency, by primary key: with no statistics yet the planner
    -- once chose to read every pending job per dependency instead.
    INSERT INTO bgjobs_dependencies (job_id, depends_on)
    SELECT NEW.id, d.id FROM unnest(NEW.depends_on) AS d(id)
    WHERE (SELECT p.status FROM background_jobs p WHERE p.id = d.id) IN ('pending', 'running');
    RETURN NULL;
END $$;

CREATE TRIGGER background_jobs_index_dependencies AFTER INSERT ON background_jobs
    FOR EACH ROW WHEN (NEW.depends_on IS NOT NULL AND NEW.status = 'pending'
                       AND NEW.waiting_for > 0)
    EXECUTE FUNCTION bgjobs_index_dependencies();

-- After a statement that finished jobs, however (a worker's batch, a DBA's UPDATE, a cancel):
-- settle their dependents, in the same transaction, one update per dependent. Completed (or
-- failed, for a dependent that runs anyway): that many fewer to wait for; failed or cancelled:
-- the dependent is cancelled, which runs this again for its own dependents. A dependent whose
-- wait ends wakes a worker ('*<type>' when one statement released many, as in 010).
-- The transition tables carry no statistics: joined in a nested loop, N rows cost N^2, so the
-- finished rows are found with nestloop off, and everything after by key.
CREATE FUNCTION bgjobs_release_dependents() RETURNS trigger LANGUAGE plpgsql
SET enable_nestloop = off SET enable_seqscan = off AS $$
DECLARE
    woken int;
    ids uuid[];
    types text[];
    statuses text[];
BEGIN
    -- Most statements finish nothing (progress, heartbeats, claims, this function's own).
    IF NOT EXISTS (SELECT FROM new_rows WHERE status IN ('complete', 'error', 'cancelled')) THEN
        RETURN NULL;
    END IF;
    SELECT array_agg(n.id), array_agg(n.job_type), array_agg(n.status)
      INTO ids, types, statuses
    FROM new_rows n JOIN old_rows o ON o.id = n.id
    WHERE n.status IN ('complete', 'error', 'cancelled') AND o.status IN ('pending', 'running');
    IF ids IS NULL THEN
        RETURN NULL;
    END IF;
    PERFORM set_config('enable_nestloop', 'on', true);  -- undone when this function returns
    WITH finished AS (
        SELECT * FROM unnest(ids, types, statuses) AS f(id, job_type, status)
    ), settled AS (
        DELETE FROM bgjobs_dependencies e
        USING finished f
        WHERE e.depends_on = f.id
        RETURNING e.job_id, f.id AS parent, f.job_type, f.status
    ), outcome AS (
        SELECT job_id, count(*) AS settled,
               (array_agg(bgjobs_dependency_failed(parent, job_type, status))
                    FILTER (WHERE status <> 'complete'))[1] AS failure
        FROM settled GROUP BY job_id
    ), moved AS (
        UPDATE background_jobs c
        SET status = CASE WHEN o.failure IS NULL OR c.run_if_dependency_fails THEN c.status
                          ELSE 'cancelled' END,
            result = CASE WHEN o.failure IS NULL OR c.run_if_dependency_fails THEN c.result
                          ELSE o.failure END,
            waiting_for = CASE WHEN o.failure IS NULL OR c.run_if_dependency_fails
                               THEN greatest(c.waiting_for - o.settled, 0) ELSE 0 END
        FROM outcome o
        WHERE c.id = o.job_id AND c.status = 'pending'
        RETURNING c.job_type, c.status, c.waiting_for
    )
    SELECT count(pg_notify('background_jobs_new',
                           CASE WHEN r.n > 1 THEN '*' ELSE '' END || r.job_type))
      INTO woken
    FROM (SELECT job_type, count(*) AS n FROM moved
          WHERE status = 'pending' AND waiting_for = 0 GROUP BY job_type) AS r;
    RETURN NULL;
END $$;

CREATE TRIGGER background_jobs_release_dependents AFTER UPDATE ON background_jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION bgjobs_release_dependents();

-- A job inserted waiting does not wake workers (010's function, but for waiting_for).
CREATE OR REPLACE FUNCTION bgjobs_notify_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    many boolean;
BEGIN
    SELECT count(*) > 1 INTO many FROM (SELECT 1 FROM inserted LIMIT 2) AS two;
    IF NOT many THEN
        PERFORM CASE WHEN n.status = 'pending' AND n.waiting_for = 0
                     THEN pg_notify('background_jobs_new', n.job_type) END,
                pg_notify('background_jobs_progress',
                          CASE WHEN octet_length(p.payload) < 7900 THEN p.payload
                               ELSE json_build_object('id', n.id)::text END)
        FROM inserted n,
             LATERAL (SELECT json_build_object('id', n.id, 'user_id', n.user_id,
                                               'job_type', n.job_type, 'status', n.status,
                                               'version', n.version,
                                               'progress', n.progress)::text) AS p(payload);
        RETURN NULL;
    END IF;
    PERFORM pg_notify('background_jobs_new', '*' || t.job_type)
    FROM (SELECT DISTINCT job_type FROM inserted
          WHERE status = 'pending' AND waiting_for = 0) AS t;
    PERFORM pg_notify('background_jobs_progress',
                      json_build_object('ids', json_agg(c.id ORDER BY c.n), 'user_id', c.user_id)::text)
    FROM (SELECT id, user_id, row_number() OVER (PARTITION BY user_id) - 1 AS n FROM inserted) AS c
    GROUP BY c.user_id, c.n / 100;
    RETURN NULL;
END $$;


-- Deleted jobs (retention, a DBA): forget their rows; a job still waiting for a deleted one
-- would wait for ever, so it is cancelled with the reason.
CREATE FUNCTION bgjobs_forget_dependencies() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM bgjobs_dependencies e USING deleted d WHERE e.job_id = d.id;
    WITH gone AS (
        DELETE FROM bgjobs_dependencies e USING deleted d WHERE e.depends_on = d.id
        RETURNING e.job_id, e.depends_on, d.job_type
    )
    UPDATE background_jobs c
    SET status = 'cancelled', waiting_for = 0,
        result = jsonb_build_object(
            'error', 'DependencyFailed',
            'message', format('cancelled: job %s (%s) it depends on was deleted',
                              g.depends_on, g.job_type),
            'dependency', g.depends_on)
    FROM gone g
    WHERE c.id = g.job_id AND c.status = 'pending';
    RETURN NULL;
END $$;

CREATE TRIGGER background_jobs_forget_dependencies AFTER DELETE ON background_jobs
    REFERENCING OLD TABLE AS deleted
    FOR EACH STATEMENT EXECUTE FUNCTION bgjobs_forget_dependencies();

CREATE FUNCTION bgjobs_truncate_dependencies() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE bgjobs_dependencies;
    RETURN NULL;
END $$;

CREATE TRIGGER background_jobs_truncate_dependencies AFTER TRUNCATE ON background_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION bgjobs_truncate_dependencies();

-- The notify trigger joins its transition tables, which carry no statistics: the planner took
-- them for one row each and joined them in a nested loop, so a statement changing N rows cost
-- N^2 comparisons (2,000 rows: 1.3 s; a worker's batch of 200: about 10 ms). Hash joins.
ALTER FUNCTION bgjobs_notify_updated() SET enable_nestloop = off;

-- The workflow triggers look rows up by key only. Right after a bulk insert into a table the
-- planner has no statistics for (a fresh database, a TRUNCATE), it took background_jobs for a
-- few rows and scanned it whole once per row: 10,000 dependents of one job took 20 s to insert.
ALTER FUNCTION bgjobs_check_dependencies() SET enable_seqscan = off;
ALTER FUNCTION bgjobs_index_dependencies() SET enable_seqscan = off;
ALTER FUNCTION bgjobs_forget_dependencies() SET enable_seqscan = off;

-- For the DBA: what waits, and on what.
CREATE VIEW bgjobs_waiting AS
SELECT c.id, c.user_id, c.job_type, c.workflow_id, c.waiting_for, c.created_at,
       array_agg(p.id ORDER BY p.created_at) AS waiting_on,
       array_agg(p.job_type || ':' || p.status ORDER BY p.created_at) AS waiting_on_states
FROM background_jobs c
JOIN bgjobs_dependencies e ON e.job_id = c.id
JOIN background_jobs p ON p.id = e.depends_on
WHERE c.status = 'pending' AND c.waiting_for > 0
GROUP BY c.id;
COMMENT ON VIEW bgjobs_waiting IS 'Pending jobs that wait for other jobs, with the ones they still wait on.';

-- Cancel every unfinished job of a workflow in one call (their dependents cascade).
CREATE FUNCTION bgjobs_cancel_workflow(p_workflow_id uuid, p_user_id integer DEFAULT NULL)
RETURNS SETOF background_jobs LANGUAGE sql AS $$
    UPDATE background_jobs
    SET status = 'cancelled', heartbeat_at = NULL
    WHERE workflow_id = p_workflow_id AND status IN ('pending', 'running')
      AND (p_user_id IS NULL OR user_id = p_user_id)
    RETURNING *
$$;
COMMENT ON FUNCTION bgjobs_cancel_workflow(uuid, integer) IS 'Cancel every pending or running job of a workflow; running ones are stopped by their workers.';
