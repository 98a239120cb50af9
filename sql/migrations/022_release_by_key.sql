-- The release of waiting jobs (015, 020) read every pending job once per statement that
-- completed a dependency, instead of looking its dependents up by key: with no statistics on a
-- queue just filled (a bulk insert into a fresh or truncated table, as `make bench` does), the
-- planner took `c.status = 'pending'` for a few dozen rows (it matches the partial indexes on
-- pending jobs) and hashed all of them. A worker's batch of 100 completions releasing 100 jobs
-- of 20,000 pending spent 9.4 ms in that scan, of the trigger's 11 ms; by key the update takes
-- about 2 ms. Turning hash joins off made it worse (a nested loop over the same scan, once per
-- dependent), so the condition itself changes:
-- written as a CASE, it matches no index and no partial index's predicate, so the only
-- narrow way to the dependents is their primary key, and a scan is costed as the whole
-- table it is. It is still checked on the row being updated (and rechecked on a concurrent
-- update's newer version), as before. 020's function otherwise, unchanged.
CREATE OR REPLACE FUNCTION bgjobs_release_dependents() RETURNS trigger LANGUAGE plpgsql
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
        -- Not `c.status = 'pending'`: see above.
        WHERE c.id = o.job_id AND CASE WHEN c.status = 'pending' THEN true END
        RETURNING c.id, c.user_id, c.job_type, c.status, c.waiting_for
    ), released AS (
        SELECT id, user_id, job_type FROM moved WHERE status = 'pending' AND waiting_for = 0
    ), wake AS (
        SELECT pg_notify('background_jobs_new',
                         CASE WHEN count(*) > 1 THEN '*' ELSE '' END || job_type)
        FROM released GROUP BY job_type
    ), told AS (
        -- Cancelled dependents changed status: bgjobs_notify_updated tells of them already.
        SELECT pg_notify('background_jobs_progress',
                         json_build_object('ids', json_agg(c.id ORDER BY c.n),
                                           'user_id', c.user_id)::text)
        FROM (SELECT id, user_id, row_number() OVER (PARTITION BY user_id) - 1 AS n
              FROM released) AS c
        GROUP BY c.user_id, c.n / 100
    )
    SELECT (SELECT count(*) FROM wake) + (SELECT count(*) FROM told) INTO woken;
    RETURN NULL;
END $$;
