-- Cheaper notifications (issue 12; measured with `make bench`, see docs/benchmarks.md).
--
-- 1. The notify triggers built each progress payload by calling bgjobs_progress_payload(), a
--    SQL function that PL/pgSQL cannot inline: about a third of the cost of a one-row insert.
--    The same payload is now built inline. bgjobs_progress_payload() stays for DBAs.
-- 2. A one-row insert (every enqueue) sends both notifications from one query instead of two.
-- 3. A statement inserting many rows (enqueue_many, INSERT ... SELECT) no longer sends one
--    progress notification per row: it sends one per user per 100 jobs,
--    {"ids": [...], "user_id": N}, and listeners read those rows (they read a new job's row
--    anyway). So does a statement that changes the status of many rows (a worker's batch of
--    claims or results: listeners read the row of every status change anyway); a progress
--    write still sends each job's state, which listeners apply without reading. Every
--    LISTEN backend of the database reads every notification, so at 8 supervisors a drain's
--    per-row notifications were read 8 times over. Its background_jobs_new payload is the job type with a leading '*': "many jobs,
--    every idle worker of this type may claim" (a one-row insert wakes one worker, see
--    docs/workers.md and worker/wakeups.py); so does an update that makes many jobs claimable
--    again at once (a reap). 10,000 jobs in one statement: 20,001 notifications became 101.
--
-- Written against the table and function names that every earlier migration (and the
-- baseline schema) keeps: background_jobs, bgjobs_notify_inserted, bgjobs_notify_updated.

CREATE OR REPLACE FUNCTION bgjobs_notify_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    many boolean;
BEGIN
    SELECT count(*) > 1 INTO many FROM (SELECT 1 FROM inserted LIMIT 2) AS two;
    IF NOT many THEN
        PERFORM CASE WHEN n.status = 'pending' THEN pg_notify('background_jobs_new', n.job_type) END,
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
    FROM (SELECT DISTINCT job_type FROM inserted WHERE status = 'pending') AS t;
    PERFORM pg_notify('background_jobs_progress',
                      json_build_object('ids', json_agg(c.id ORDER BY c.n), 'user_id', c.user_id)::text)
    FROM (SELECT id, user_id, row_number() OVER (PARTITION BY user_id) - 1 AS n FROM inserted) AS c
    GROUP BY c.user_id, c.n / 100;
    RETURN NULL;
END $$;

COMMENT ON FUNCTION bgjobs_notify_inserted() IS 'NOTIFY background_jobs_new and background_jobs_progress for inserted jobs, once per statement: per job for a one-row insert; for many rows ''*<type>'' once per type and {"ids": [...], "user_id": N} per user per 100 jobs.';

CREATE OR REPLACE FUNCTION bgjobs_notify_updated() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    moved boolean;  -- more than one row changed status: notify their ids, not their states
BEGIN
    -- Jobs claimable again (retry, requeue, reap): '*<type>' when one statement made many.
    PERFORM pg_notify('background_jobs_new',
                      CASE WHEN count(*) > 1 THEN '*' ELSE '' END || n.job_type)
    FROM new_rows n JOIN old_rows o ON o.id = n.id
    WHERE n.status = 'pending' AND (o.status <> 'pending' OR n.run_after < o.run_after)
    GROUP BY n.job_type;
    SELECT count(*) > 1 INTO moved
    FROM (SELECT 1 FROM new_rows n JOIN old_rows o ON o.id = n.id
          WHERE n.status <> o.status LIMIT 2) AS two;
    -- One job's state per notification: progress writes (listeners apply them without a
    -- read), and a status change made alone. Heartbeats change none of these and stay silent.
    PERFORM pg_notify('background_jobs_progress',
                      CASE WHEN octet_length(p.payload) < 7900 THEN p.payload
                           ELSE json_build_object('id', n.id)::text END)
    FROM new_rows n JOIN old_rows o ON o.id = n.id,
         LATERAL (SELECT json_build_object('id', n.id, 'user_id', n.user_id,
                                           'job_type', n.job_type, 'status', n.status,
                                           'version', n.version,
                                           'progress', n.progress)::text) AS p(payload)
    WHERE CASE WHEN n.status <> o.status THEN NOT moved
               ELSE n.progress IS DISTINCT FROM o.progress
                    OR n.result IS DISTINCT FROM o.result END
    ORDER BY n.version;
    -- Many status changes at once (a worker's batch of claims or results): their ids, per
    -- user per 100 jobs; listeners read those rows (they read the row of every status change).
    IF moved THEN
        PERFORM pg_notify('background_jobs_progress',
                          json_build_object('ids', json_agg(c.id ORDER BY c.n),
                                            'user_id', c.user_id)::text)
        FROM (SELECT n.id, n.user_id, row_number() OVER (PARTITION BY n.user_id) - 1 AS n
              FROM new_rows n JOIN old_rows o ON o.id = n.id
              WHERE n.status <> o.status) AS c
        GROUP BY c.user_id, c.n / 100;
    END IF;
    PERFORM pg_notify('background_jobs_control',
                      json_build_object('id', o.id, 'attempt', o.attempts)::text)
    FROM old_rows o JOIN new_rows n ON n.id = o.id
    WHERE o.status = 'running'
      AND (n.status <> 'running' OR n.attempts <> o.attempts
           OR n.worker_id IS DISTINCT FROM o.worker_id)
      AND o.worker_id IS DISTINCT FROM nullif(current_setting('bgjobs.worker_id', true), '');
    RETURN NULL;
END $$;
