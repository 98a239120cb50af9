-- Every query bgjobs runs, as named blocks loaded by core/queries.py (bgjobs.core.queries).
-- Each block starts with `-- name: NAME` and a one-line purpose. Values are bound parameters.

-- name: insert_job
-- Enqueue one job (one round trip); returns its id and created_at, and what waiting for
-- depends_on made of it (status, waiting_for, workflow_id, result); the rest is what was sent
-- and the columns' defaults (Store.insert_job). No row: it clashed with an idempotency key or
-- an exclusive type's active job, and nothing was inserted (see find_clashing_job).
INSERT INTO background_jobs
    (job_type, user_id, params, priority, run_after, max_attempts, idempotency_key,
     exclusive_key, depends_on, run_if_dependency_fails, workflow_id)
VALUES (%(job_type)s, %(user_id)s, %(params)s, %(priority)s,
        coalesce(%(run_after)s::timestamptz, now()), %(max_attempts)s,
        %(idempotency_key)s, %(exclusive_key)s, %(depends_on)s::uuid[],
        %(run_if_dependency_fails)s, %(workflow_id)s::uuid)
ON CONFLICT DO NOTHING
RETURNING id, created_at, status, waiting_for, workflow_id, result

-- name: find_clashing_job
-- The row an insert clashed with: the earlier job of the same user and idempotency key
-- ('replayed'), else the user's pending or running job of the exclusive type ('exclusive').
SELECT * FROM (
    SELECT j.*, 'replayed' AS outcome, 1 AS rank FROM background_jobs j
    WHERE %(idempotency_key)s::text IS NOT NULL
      AND j.user_id IS NOT DISTINCT FROM %(user_id)s::int
      AND j.idempotency_key = %(idempotency_key)s::text
    UNION ALL
    SELECT j.*, 'exclusive', 2 FROM background_jobs j
    WHERE %(exclusive_key)s::text IS NOT NULL
      AND j.user_id IS NOT DISTINCT FROM %(user_id)s::int
      AND j.exclusive_key = %(exclusive_key)s::text AND j.status IN ('pending', 'running')
) AS clash
ORDER BY rank LIMIT 1

-- name: insert_jobs
-- Enqueue many jobs of one type in one statement, one per element of the JSON array `params`,
-- in that order. Returns one row: the new ids in the order given, and created_at (the same for
-- all); the rest is what was sent and the columns' defaults (Store.insert_jobs). With
-- depends_on all the jobs wait for the same ones: so their status, waiting_for, workflow_id and
-- result are the same for all, read from one of them.
WITH new AS MATERIALIZED (
    SELECT gen_random_uuid() AS id, p.params, p.n
    FROM jsonb_array_elements(%(params)s::jsonb) WITH ORDINALITY AS p(params, n)
), inserted AS (
    INSERT INTO background_jobs (id, job_type, user_id, params, max_attempts, exclusive_key,
                                 depends_on, run_if_dependency_fails, workflow_id)
    SELECT id, %(job_type)s, %(user_id)s, params, %(max_attempts)s, NULL,
           %(depends_on)s::uuid[], %(run_if_dependency_fails)s, %(workflow_id)s::uuid
    FROM new ORDER BY n
    RETURNING id, status, waiting_for, workflow_id, result
)
SELECT (SELECT array_agg(id ORDER BY n) FROM new) AS ids, now() AS created_at,
       i.status, i.waiting_for, i.workflow_id, i.result
FROM (SELECT * FROM inserted LIMIT 1) AS i

-- name: get_job
-- One job, optionally only if it belongs to the given user.
SELECT * FROM background_jobs
WHERE id = %(id)s AND (%(user_id)s::int IS NULL OR user_id = %(user_id)s)

-- name: get_jobs
-- Several jobs by id (listeners re-reading rows after a reconnect).
SELECT * FROM background_jobs WHERE id = ANY(%(ids)s::uuid[])

-- name: list_jobs
-- Jobs newest first, filtered, after a (created_at, id) cursor.
SELECT * FROM background_jobs
WHERE (%(user_id)s::int IS NULL OR user_id = %(user_id)s)
  AND (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(job_type)s::text IS NULL OR job_type = %(job_type)s)
  AND (%(before_created)s::timestamptz IS NULL
       OR (created_at, id) < (%(before_created)s::timestamptz, %(before_id)s::uuid))
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s

-- name: claim_jobs
-- Claim up to `limit` due pending jobs of the given types in one statement, by priority then
-- age, returning only what a worker needs to run each: (id, job_type, params, attempts,
-- max_attempts, version, the results of the jobs it depended on), best first. Jobs still
-- waiting for others (waiting_for > 0) are not claimed. Types with a cluster-wide limit (bgjobs_job_types:
-- max_running, starts_per_second) are locked one by one in bgjobs_claim_quotas, so racing
-- claimers take turns on them, and only their quota is taken, oldest first; the rest wait as
-- pending. Unlimited types are claimed exactly as before, and lock nothing but their rows.
WITH quota AS MATERIALIZED (
    SELECT q.job_type, q.quota
    FROM bgjobs_claim_quotas(%(types)s::text[], coalesce(%(now)s::timestamptz, now()),
                             %(limit)s) AS q
    -- A one-time check: with no limited type among these, the function is never called.
    WHERE EXISTS (SELECT FROM bgjobs_job_types t
                  WHERE t.job_type = ANY(%(types)s::text[])
                    AND (t.max_running IS NOT NULL OR t.starts_per_second IS NOT NULL))
), free AS (
    SELECT id, priority, created_at FROM background_jobs
    WHERE status = 'pending' AND waiting_for = 0
      AND run_after <= coalesce(%(now)s::timestamptz, now())
      AND attempts < 2147483647  -- no attempt number left (a DBA's value): never claimable
      AND job_type = ANY(ARRAY(SELECT unnest(%(types)s::text[])
                               EXCEPT SELECT job_type FROM quota))
    ORDER BY priority, created_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), limited AS (
    SELECT c.id, c.priority, c.created_at FROM quota
    CROSS JOIN LATERAL (
        SELECT b.id, b.priority, b.created_at FROM background_jobs b
        WHERE b.status = 'pending' AND b.waiting_for = 0 AND b.job_type = quota.job_type
          AND b.run_after <= coalesce(%(now)s::timestamptz, now())
          AND b.attempts < 2147483647
        ORDER BY b.priority, b.created_at
        LIMIT quota.quota
        FOR UPDATE SKIP LOCKED
    ) AS c
    WHERE quota.quota > 0
), next AS (
    SELECT id FROM (SELECT * FROM free UNION ALL SELECT * FROM limited) AS candidates
    ORDER BY priority, created_at
    LIMIT %(limit)s
), claimed AS (
    UPDATE background_jobs j
    SET status = 'running',
        worker_id = %(worker_id)s,
        attempts = j.attempts + 1,
        lease_seconds = %(lease_seconds)s,
        started_at = coalesce(%(now)s::timestamptz, now()),
        heartbeat_at = coalesce(%(now)s::timestamptz, now())
    FROM next
    WHERE j.id = next.id
    RETURNING j.id, j.job_type, j.params, j.attempts, j.max_attempts, j.version, j.priority,
              j.created_at, j.depends_on
)
-- The results of the jobs a job waited for, in the same round trip (ctx.dependencies).
SELECT id, job_type, params, attempts, max_attempts, version,
       CASE WHEN depends_on IS NOT NULL THEN
           (SELECT jsonb_object_agg(p.id, p.result) FROM background_jobs p
            WHERE p.id = ANY(claimed.depends_on)) END
FROM claimed
ORDER BY priority, created_at

-- name: next_due_in
-- Seconds until the soonest pending job the last claim could not take yet becomes due: workers
-- sleep until then (on the database's clock: a worker's own may be off). Jobs already due when
-- that claim ran, %(claim_age)s seconds ago, are left out: not taking them was its answer (a
-- limit, a peer's lock). One that came due since (a retry's backoff ending mid-claim) gives 0
-- or less: claim again at once rather than at the fallback poll.
SELECT extract(epoch FROM soonest - clock_timestamp())::float8
FROM (SELECT min(run_after) AS soonest FROM background_jobs
      WHERE status = 'pending' AND waiting_for = 0 AND job_type = ANY(%(types)s::text[])
        AND run_after > now() - make_interval(secs => %(claim_age)s)) AS s
WHERE isfinite(soonest)  -- 'infinity' (a DBA's "never"): nothing to wake for

-- name: heartbeat_jobs
-- Refresh the heartbeat of running attempts this worker still owns; returns those it owns.
UPDATE background_jobs j SET heartbeat_at = now()
FROM unnest(%(ids)s::uuid[], %(worker_ids)s::text[], %(attempts)s::int[]) AS d(id, worker_id, attempt)
WHERE j.id = d.id AND j.status = 'running' AND j.worker_id = d.worker_id AND j.attempts = d.attempt
RETURNING j.id

-- name: progress_jobs
-- Record progress of owned running attempts (fenced); returns the ids still owned.
UPDATE background_jobs j SET progress = d.progress, heartbeat_at = now()
FROM unnest(%(ids)s::uuid[], %(worker_ids)s::text[], %(attempts)s::int[], %(progress)s::jsonb[])
    AS d(id, worker_id, attempt, progress)
WHERE j.id = d.id AND j.status = 'running' AND j.worker_id = d.worker_id AND j.attempts = d.attempt
RETURNING j.id

-- name: complete_jobs
-- Finish owned running attempts as complete (fenced); returns the ids still owned.
WITH owner AS MATERIALIZED (
    -- The owner's own write is no news on background_jobs_control (the trigger reads this).
    -- Per statement, not per connection: the connection may be a pooler's (transaction mode).
    SELECT set_config('bgjobs.worker_id', (%(worker_ids)s::text[])[1], true)
)
UPDATE background_jobs j
SET status = 'complete', result = d.result, heartbeat_at = NULL,
    progress = coalesce(d.progress, j.progress)
FROM unnest(%(ids)s::uuid[], %(worker_ids)s::text[], %(attempts)s::int[], %(results)s::jsonb[],
            %(progress)s::jsonb[])
    AS d(id, worker_id, attempt, result, progress), owner
WHERE j.id = d.id AND j.status = 'running' AND j.worker_id = d.worker_id AND j.attempts = d.attempt
RETURNING j.id

-- name: fail_jobs
-- End failed attempts (fenced): back to pending after `delay` while retryable and attempts
-- remain, else error with the given result. Returns the ids still owned and their new status.
WITH owner AS MATERIALIZED (
    -- The owner's own write is no news on background_jobs_control (the trigger reads this).
    -- Per statement, not per connection: the connection may be a pooler's (transaction mode).
    SELECT set_config('bgjobs.worker_id', (%(worker_ids)s::text[])[1], true)
)
UPDATE background_jobs j
SET status = CASE WHEN d.retryable AND j.attempts < j.max_attempts THEN 'pending' ELSE 'error' END,
    run_after = CASE WHEN d.retryable AND j.attempts < j.max_attempts
                     THEN now() + make_interval(secs => d.delay) ELSE j.run_after END,
    result = d.error, worker_id = NULL, heartbeat_at = NULL
FROM unnest(%(ids)s::uuid[], %(worker_ids)s::text[], %(attempts)s::int[], %(errors)s::jsonb[],
            %(retryable)s::bool[], %(delays)s::float8[])
    AS d(id, worker_id, attempt, error, retryable, delay), owner
WHERE j.id = d.id AND j.status = 'running' AND j.worker_id = d.worker_id AND j.attempts = d.attempt
RETURNING j.id, j.status

-- name: release_jobs
-- Hand owned running attempts back to pending without spending an attempt (shutdown).
WITH owner AS MATERIALIZED (
    -- The owner's own write is no news on background_jobs_control (the trigger reads this).
    -- Per statement, not per connection: the connection may be a pooler's (transaction mode).
    SELECT set_config('bgjobs.worker_id', (%(worker_ids)s::text[])[1], true)
)
UPDATE background_jobs j
SET status = 'pending', run_after = now(), worker_id = NULL, heartbeat_at = NULL,
    max_attempts = least(j.max_attempts, 2147483646) + 1
FROM unnest(%(ids)s::uuid[], %(worker_ids)s::text[], %(attempts)s::int[]) AS d(id, worker_id, attempt),
     owner
WHERE j.id = d.id AND j.status = 'running' AND j.worker_id = d.worker_id AND j.attempts = d.attempt
RETURNING j.id

-- name: cancel_job
-- Cancel a pending or running job, optionally only the given user's.
SELECT * FROM bgjobs_cancel(%(id)s, %(user_id)s::int)

-- name: job_owner
-- Whose job this is (to tell a missing job from another user's before cancelling).
SELECT user_id FROM background_jobs WHERE id = %(id)s

-- name: requeue_job
-- Run a job again from the start.
SELECT * FROM bgjobs_requeue(%(id)s)

-- name: reap_stale
-- Take back jobs of dead workers (never those the reaper runs), if no other reaper is at it now.
SELECT r.* FROM (SELECT pg_try_advisory_xact_lock(hashtext('bgjobs.reaper'))) AS l(got),
     LATERAL (SELECT * FROM bgjobs_reap(coalesce(%(now)s::timestamptz, now()),
                                        %(reaper)s::text, %(running)s::uuid[])) AS r
WHERE l.got

-- name: worker_listeners
-- Backend pids of the supervisors' LISTEN connections on this database (by application_name),
-- in order: each supervisor claims for the new jobs that fall to it (see docs/workers.md).
SELECT pid FROM pg_stat_activity
WHERE datname = current_database() AND application_name = %(application_name)s
ORDER BY pid

-- name: wake_workers
-- Ask every idle worker of these types to claim (a supervisor that cannot take them all).
SELECT pg_notify('background_jobs_new', '*' || t) FROM unnest(%(types)s::text[]) AS t

-- name: summary
-- Jobs by type and status (metrics, CLI).
SELECT job_type, status, jobs, extract(epoch FROM oldest_pending_age)::float8 AS oldest_pending_seconds
FROM bgjobs_summary ORDER BY job_type, status

-- name: insert_user
-- A new user.
INSERT INTO bgjobs_users (name, is_admin) VALUES (%(name)s, %(is_admin)s)
RETURNING id, name, created_at, NULL::int AS token_id, is_admin

-- name: insert_user_with_id
-- A new user with a given id: in an app's database, the id of the app's user it is.
INSERT INTO bgjobs_users (id, name, is_admin) VALUES (%(id)s, %(name)s, %(is_admin)s)
RETURNING id, name, created_at, NULL::int AS token_id, is_admin

-- name: host_users_table
-- The app's users table that bgjobs_users.id references (no row: bgjobs numbers its own users).
SELECT confrelid::regclass::text FROM pg_constraint
WHERE conrelid = 'bgjobs_users'::regclass AND conname = 'bgjobs_users_id_fkey'

-- name: get_user_by_name
-- A user by name.
SELECT id, name, created_at, NULL::int AS token_id, is_admin FROM bgjobs_users
WHERE name = %(name)s

-- name: set_admin
-- Make a user an admin (operator view), or not.
UPDATE bgjobs_users SET is_admin = %(is_admin)s WHERE name = %(name)s
RETURNING id, name, created_at, NULL::int AS token_id, is_admin

-- name: insert_token
-- Store the hash of a new API token.
INSERT INTO bgjobs_api_tokens (user_id, token_hash) VALUES (%(user_id)s, %(token_hash)s) RETURNING id

-- name: user_for_token
-- The user a live (unrevoked) token belongs to.
SELECT u.id, u.name, u.created_at, t.id AS token_id, u.is_admin
FROM bgjobs_api_tokens t JOIN bgjobs_users u ON u.id = t.user_id
WHERE t.token_hash = %(token_hash)s AND t.revoked_at IS NULL

-- name: session_user
-- The user of a live session: not ended, not expired, made from a token not revoked.
SELECT u.id, u.name, u.created_at, t.id AS token_id, u.is_admin, s.id AS session_id
FROM bgjobs_sessions s
JOIN bgjobs_api_tokens t ON t.id = s.token_id AND t.user_id = s.user_id
JOIN bgjobs_users u ON u.id = s.user_id
WHERE s.id = %(session_id)s AND s.ended_at IS NULL AND s.expires_at > now()
  AND t.revoked_at IS NULL

-- name: start_session
-- A new session for a user signed in with one of their tokens; their finished ones go.
WITH gone AS (
    DELETE FROM bgjobs_sessions
    WHERE user_id = %(user_id)s AND (ended_at IS NOT NULL OR expires_at <= now())
)
INSERT INTO bgjobs_sessions (user_id, token_id, expires_at)
VALUES (%(user_id)s, %(token_id)s, now() + make_interval(secs => %(seconds)s))
RETURNING id

-- name: end_session
-- Sign-out: the session's cookie is refused from now on (and its event streams end).
UPDATE bgjobs_sessions SET ended_at = now() WHERE id = %(session_id)s AND ended_at IS NULL

-- name: live_credentials
-- Which of these tokens and sessions still let their user in (the events service ends the
-- streams of the others).
SELECT 'token' AS kind, t.id::text AS id FROM bgjobs_api_tokens t
WHERE t.id = ANY(%(token_ids)s::int[]) AND t.revoked_at IS NULL
UNION ALL
SELECT 'session', s.id::text FROM bgjobs_sessions s
JOIN bgjobs_api_tokens t ON t.id = s.token_id
WHERE s.id = ANY(%(session_ids)s::uuid[]) AND s.ended_at IS NULL AND s.expires_at > now()
  AND t.revoked_at IS NULL

-- name: revoke_tokens
-- Revoke every live token of a user.
UPDATE bgjobs_api_tokens SET revoked_at = now()
WHERE user_id = %(user_id)s AND revoked_at IS NULL
RETURNING id

-- API ------------------------------------------------------------------------------------------

-- name: ping
-- Is the database answering (health checks).
SELECT 1

-- name: finished_recently
-- Jobs finished in the last `seconds`, by type and status, with their summed run time (metrics).
SELECT job_type, status, count(*) AS jobs,
       coalesce(sum(extract(epoch FROM finished_at - coalesce(started_at, created_at)))
                FILTER (WHERE isfinite(finished_at)
                        AND isfinite(coalesce(started_at, created_at))), 0)::float8
           AS run_seconds
FROM background_jobs
WHERE status IN ('complete', 'error', 'cancelled')
  AND finished_at >= now() - make_interval(secs => %(seconds)s)
GROUP BY job_type, status ORDER BY job_type, status

-- Events ------------------------------------------------------------------------------------

-- name: events_user_jobs_since
-- After a LISTEN reconnect: the watched users' jobs that are active or changed since `since`.
SELECT * FROM background_jobs
WHERE user_id = ANY(%(user_ids)s::int[])
  AND (status IN ('pending', 'running') OR updated_at >= %(since)s::timestamptz)
ORDER BY updated_at DESC
LIMIT %(limit)s

-- name: events_db_now
-- The database's clock (what `since` above is measured against).
SELECT clock_timestamp()

-- Operations: job type settings, schedules, retention, workers (009_operations.sql) ----------

-- name: sync_job_types
-- Record the registered types: exclusivity and max_attempts as their tasks say (plain-SQL
-- inserts get them by trigger), and the limits they declare; a limit a task does not declare is
-- left as a DBA set it.
INSERT INTO bgjobs_job_types (job_type, exclusive, max_attempts, max_running, starts_per_second)
SELECT t.job_type, t.exclusive, t.max_attempts, t.max_running, t.rate
FROM unnest(%(types)s::text[], %(exclusive)s::bool[], %(max_attempts)s::int[],
            %(max_running)s::int[], %(rates)s::float8[])
    AS t(job_type, exclusive, max_attempts, max_running, rate)
ORDER BY t.job_type
ON CONFLICT (job_type) DO UPDATE
SET exclusive = EXCLUDED.exclusive,
    max_attempts = EXCLUDED.max_attempts,
    max_running = coalesce(EXCLUDED.max_running, bgjobs_job_types.max_running),
    starts_per_second = coalesce(EXCLUDED.starts_per_second, bgjobs_job_types.starts_per_second)
WHERE (bgjobs_job_types.exclusive, bgjobs_job_types.max_attempts,
       bgjobs_job_types.max_running, bgjobs_job_types.starts_per_second)
      IS DISTINCT FROM (EXCLUDED.exclusive, EXCLUDED.max_attempts,
                        coalesce(EXCLUDED.max_running, bgjobs_job_types.max_running),
                        coalesce(EXCLUDED.starts_per_second, bgjobs_job_types.starts_per_second))

-- name: limited_types
-- Job types with a cluster-wide limit, and their rate (workers wake for them).
SELECT job_type, max_running, starts_per_second FROM bgjobs_job_types
WHERE max_running IS NOT NULL OR starts_per_second IS NOT NULL
ORDER BY job_type

-- name: job_type_limits
-- Every limited type with its running jobs now (operator view).
SELECT t.job_type, t.max_running, t.starts_per_second,
       (SELECT count(*) FROM background_jobs b
        WHERE b.status = 'running' AND b.job_type = t.job_type) AS running
FROM bgjobs_job_types t
WHERE t.max_running IS NOT NULL OR t.starts_per_second IS NOT NULL
ORDER BY t.job_type

-- name: sync_schedules
-- Write the schedules tasks declare in code (one per task, named after it); a schedule of the
-- same name made in SQL wins.
INSERT INTO bgjobs_schedules (name, job_type, cron, timezone, source)
SELECT s.name, s.name, s.cron, s.timezone, 'code'
FROM unnest(%(names)s::text[], %(crons)s::text[], %(timezones)s::text[]) AS s(name, cron, timezone)
ORDER BY s.name
ON CONFLICT (name) DO UPDATE
SET cron = EXCLUDED.cron, timezone = EXCLUDED.timezone, job_type = EXCLUDED.job_type
WHERE bgjobs_schedules.source = 'code'
  AND (bgjobs_schedules.cron, bgjobs_schedules.timezone, bgjobs_schedules.job_type)
      IS DISTINCT FROM (EXCLUDED.cron, EXCLUDED.timezone, EXCLUDED.job_type)

-- name: drop_code_schedules
-- Remove code schedules of registered tasks that no longer declare one.
DELETE FROM bgjobs_schedules WHERE source = 'code' AND name = ANY(%(names)s::text[])
RETURNING name

-- name: list_schedules
-- Every schedule, by name.
SELECT name, job_type, cron, timezone, params, priority, enabled, catch_up, source, last_tick,
       last_job_id, created_at
FROM bgjobs_schedules ORDER BY name

-- name: get_schedule
-- One schedule by name.
SELECT name, job_type, cron, timezone, params, priority, enabled, catch_up, source, last_tick,
       last_job_id, created_at
FROM bgjobs_schedules WHERE name = %(name)s

-- name: advance_schedule
-- Compare-and-set a schedule's last tick: only the first worker to handle this tick gets a row
-- (and then enqueues its job in the same transaction); the others get none.
UPDATE bgjobs_schedules SET last_tick = %(tick)s
WHERE name = %(name)s AND enabled AND (last_tick IS NULL OR last_tick < %(tick)s)
RETURNING name

-- name: schedule_enqueued
-- Remember the job a schedule last enqueued.
UPDATE bgjobs_schedules SET last_job_id = %(job_id)s WHERE name = %(name)s

-- name: purge_batch
-- Delete one batch of finished jobs past their retention, unless another worker is purging
-- right now (NULL then); also forget workers silent for a day.
WITH turn AS (SELECT pg_try_advisory_xact_lock(hashtext('bgjobs.purger')) AS got),
workers AS (
    DELETE FROM bgjobs_workers
    WHERE (SELECT got FROM turn)
      AND heartbeat_at < coalesce(%(now)s::timestamptz, now()) - interval '1 day'
)
SELECT CASE WHEN (SELECT got FROM turn)
            THEN bgjobs_purge_batch(coalesce(%(now)s::timestamptz, now()), %(limit)s,
                                    %(keep_complete)s, %(keep_error)s, %(keep_cancelled)s)
       END

-- name: worker_heartbeat
-- A worker supervisor says it is alive, with how many jobs it runs, and its IO processes.
INSERT INTO bgjobs_workers (worker_id, machine, pid, processes, running, types, lease_seconds,
                            io_processes, io_concurrency, io_jobs)
VALUES (%(worker_id)s, %(machine)s, %(pid)s, %(processes)s, %(running)s, %(types)s,
        %(lease_seconds)s, %(io_processes)s, %(io_concurrency)s, %(io_jobs)s)
ON CONFLICT (worker_id) DO UPDATE
SET processes = EXCLUDED.processes, running = EXCLUDED.running, types = EXCLUDED.types,
    lease_seconds = EXCLUDED.lease_seconds, io_processes = EXCLUDED.io_processes,
    io_concurrency = EXCLUDED.io_concurrency, io_jobs = EXCLUDED.io_jobs, heartbeat_at = now()

-- name: worker_stopped
-- A worker supervisor stopped cleanly.
DELETE FROM bgjobs_workers WHERE worker_id = %(worker_id)s

-- Operator view ------------------------------------------------------------------------------

-- name: admin_list_jobs
-- Every user's jobs newest first, filtered, after a (created_at, id) cursor.
SELECT * FROM background_jobs
WHERE (%(user_id)s::int IS NULL OR user_id = %(user_id)s)
  AND (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(job_type)s::text IS NULL OR job_type = %(job_type)s)
  AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s)
  AND (%(until)s::timestamptz IS NULL OR created_at < %(until)s)
  AND (%(before_created)s::timestamptz IS NULL
       OR (created_at, id) < (%(before_created)s::timestamptz, %(before_id)s::uuid))
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s

-- name: user_names
-- Names of the given users.
SELECT id, name FROM bgjobs_users WHERE id = ANY(%(ids)s::int[])

-- name: throughput
-- Jobs started, completed and failed per minute since `since` (the operator's chart): reads
-- only running jobs and those finished since then, through their partial indexes.
WITH recent AS (
    SELECT status, started_at, finished_at FROM background_jobs
    WHERE status = 'running' OR finished_at >= %(since)s::timestamptz
)
SELECT minute, kind, count(*) AS jobs FROM (
    SELECT date_trunc('minute', started_at) AS minute, 'started' AS kind FROM recent
    WHERE started_at >= %(since)s::timestamptz
    UNION ALL
    SELECT date_trunc('minute', finished_at), CASE status WHEN 'complete' THEN 'completed'
                                                          ELSE 'failed' END
    FROM recent
    WHERE finished_at >= %(since)s::timestamptz AND status IN ('complete', 'error')
) AS events
GROUP BY minute, kind ORDER BY minute, kind

-- name: workers
-- Worker supervisors that heartbeat, and whether they are alive.
SELECT worker_id, machine, pid, processes, running, types, started_at, heartbeat_at,
       heartbeat_at >= now() - make_interval(secs => lease_seconds) AS alive,
       io_processes, io_concurrency, io_jobs
FROM bgjobs_workers ORDER BY machine, pid

-- name: stuck_jobs
-- Running jobs whose heartbeat is older than their lease (the bgjobs_stuck view).
SELECT id, job_type, user_id, worker_id, attempts, max_attempts, started_at, heartbeat_at,
       extract(epoch FROM silent_for)::float8 AS silent_seconds
FROM bgjobs_stuck ORDER BY heartbeat_at NULLS FIRST LIMIT %(limit)s

-- name: workflow_summary
-- A workflow's jobs counted by state (pending split into waiting and ready), the first to fail
-- for good or be cancelled (whatever was cancelled after it followed from it), and the sum of
-- its jobs' versions: it grows with every change of any of them (versions only grow), so the
-- workflow stream names the state a summary counts by it.
SELECT count(*) AS total,
       count(*) FILTER (WHERE status = 'pending' AND waiting_for > 0) AS waiting,
       count(*) FILTER (WHERE status = 'pending' AND waiting_for = 0) AS pending,
       count(*) FILTER (WHERE status = 'running') AS running,
       count(*) FILTER (WHERE status = 'complete') AS complete,
       count(*) FILTER (WHERE status = 'error') AS error,
       count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
       (array_agg(id ORDER BY finished_at, id)
            FILTER (WHERE status = 'error' OR (status = 'cancelled'
                    AND coalesce(result->>'error', '') <> 'DependencyFailed')))[1] AS failed,
       coalesce(sum(version), 0)::bigint AS versions
FROM background_jobs
WHERE workflow_id = %(id)s AND (%(user_id)s::int IS NULL OR user_id = %(user_id)s)

-- name: workflow_jobs
-- A workflow's jobs, oldest first (jobs enqueued in one transaction share created_at: by id).
SELECT * FROM background_jobs
WHERE workflow_id = %(id)s AND (%(user_id)s::int IS NULL OR user_id = %(user_id)s)
ORDER BY created_at, id
LIMIT %(limit)s

-- name: events_workflow_unsent
-- A workflow's jobs newer than the versions a stream has sent (ids, versions): what it must
-- still send before it ends, oldest change first.
SELECT j.* FROM background_jobs j
LEFT JOIN unnest(%(ids)s::uuid[], %(versions)s::bigint[]) AS s(id, version) ON s.id = j.id
WHERE j.workflow_id = %(id)s AND j.user_id = %(user_id)s
  AND (s.version IS NULL OR j.version > s.version)
ORDER BY j.updated_at, j.id
LIMIT %(limit)s
