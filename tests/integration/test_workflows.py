"""Workflows against a real Postgres: jobs that wait for other jobs (docs/workflows.md)."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from bgjobs.core.errors import InvalidInput
from bgjobs.core.jobs import Attempt, Completion
from bgjobs.tasks.enqueue import InvalidRequest, cancel, enqueue, enqueue_many
from tests.conftest import migrated_database


def run(store, job_id, result=None):
    """Claim ``job_id`` (it must be the only claimable noop) and complete it with ``result``."""
    [spec] = store.claim_specs("w", ["noop"], limit=10)
    assert spec.id == job_id
    assert store.complete([Completion(Attempt(job_id, "w", spec.attempt), result, None)])
    return spec


def row(conn, job_id):
    return conn.execute("SELECT status, waiting_for, result FROM background_jobs WHERE id = %s",
                        [job_id]).fetchone()


def test_a_chain_runs_in_order_and_hands_each_job_the_results_before_it(store, conn):
    a = enqueue("noop", store=store)
    b = enqueue("noop", after=[a], store=store)
    c = enqueue("noop", after=[b.id], store=store)
    assert (b.status, b.waiting_for, b.depends_on) == ("pending", 1, [a.id])
    assert row(conn, c.id)[:2] == ("pending", 1)
    spec_a = run(store, a.id, {"rows": 3})
    assert spec_a.dependencies is None
    assert row(conn, b.id)[:2] == ("pending", 0)
    spec_b = run(store, b.id, "b-done")
    assert spec_b.dependencies == {str(a.id): {"rows": 3}}
    spec_c = run(store, c.id)
    assert spec_c.dependencies == {str(b.id): "b-done"}
    assert store.claim_specs("w", ["noop"]) == []


def test_fan_out_and_fan_in_release_the_summary_with_the_last_completion(store, conn):
    root = enqueue("noop", store=store)
    group = enqueue_many("noop", [{"echo": n} for n in range(50)], after=[root], store=store)
    assert {j.waiting_for for j in group} == {1}
    summary = enqueue("noop", after=group, store=store)
    assert summary.waiting_for == 50
    run(store, root.id)
    specs = store.claim_specs("w", ["noop"], limit=100)
    assert {s.id for s in specs} == {j.id for j in group}  # the summary still waits
    store.complete([Completion(Attempt(s.id, "w", s.attempt), s.params["echo"], None)
                    for s in specs[:-1]])
    assert row(conn, summary.id)[:2] == ("pending", 1)
    assert store.claim_specs("w", ["noop"]) == []
    last = specs[-1]
    store.complete([Completion(Attempt(last.id, "w", last.attempt), last.params["echo"], None)])
    [spec] = store.claim_specs("w", ["noop"])
    assert spec.id == summary.id
    assert sorted(spec.dependencies.values()) == list(range(50))


def test_a_dbas_update_and_a_cancel_count_as_the_end_of_a_dependency(store, conn):
    a, b = enqueue("noop", store=store), enqueue("noop", store=store)
    child = enqueue("noop", after=[a, b], store=store)
    conn.execute("UPDATE background_jobs SET status = 'complete' WHERE id = %s", [a.id])
    assert row(conn, child.id)[:2] == ("pending", 1)
    cancel(b.id, store=store)
    status, waiting, result = row(conn, child.id)
    assert (status, waiting) == ("cancelled", 0)
    assert result["error"] == "DependencyFailed" and result["dependency"] == str(b.id)
    assert f"job {b.id} (noop) it depends on ended cancelled" in result["message"]


def test_a_failure_cancels_everything_after_it_unless_a_job_runs_anyway(store, conn):
    a = enqueue("noop", store=store)
    b = enqueue("noop", after=[a], store=store)
    c = enqueue("noop", after=[b], store=store)
    cleanup = enqueue("noop", after=[b], run_if_dependency_fails=True, store=store)
    with psycopg.connect(conn.info.dsn, autocommit=True) as listener:
        listener.execute("LISTEN background_jobs_new")
        conn.execute("UPDATE background_jobs SET status = 'error', "
                     "result = '{\"error\": \"Boom\"}' WHERE id = %s", [a.id])
        assert row(conn, b.id)[0] == "cancelled"
        assert row(conn, c.id)[0] == "cancelled"  # after b: the cascade goes on
        assert "ended in error" not in row(conn, c.id)[2]["message"]  # c's reason is b
        assert row(conn, cleanup.id)[:2] == ("pending", 0)
        woken = [n.payload for n in listener.notifies(timeout=2, stop_after=1)]
    assert woken == ["noop"]
    spec = run(store, cleanup.id)
    assert spec.dependencies == {str(b.id): row(conn, b.id)[2]}


def test_dependencies_already_finished_at_enqueue(store, conn):
    done = enqueue("noop", store=store)
    run(store, done.id, 7)
    failed = enqueue("noop", store=store)
    cancel(failed.id, store=store)
    ready = enqueue("noop", after=[done], store=store)
    assert (ready.status, ready.waiting_for) == ("pending", 0)
    doomed = enqueue("noop", after=[done, failed], store=store)
    assert doomed.status == "cancelled" and doomed.result["dependency"] == str(failed.id)
    assert row(conn, doomed.id)[0] == "cancelled"
    anyway = enqueue("noop", after=[failed], run_if_dependency_fails=True, store=store)
    assert (anyway.status, anyway.waiting_for) == ("pending", 0)
    assert {s.id for s in store.claim_specs("w", ["noop"], limit=10)} == {ready.id, anyway.id}


def test_a_dependency_completed_twice_releases_its_dependents_once(store, conn):
    a, other = enqueue("noop", store=store), enqueue("noop", store=store)
    child = enqueue("noop", after=[a, other], store=store)
    conn.execute("UPDATE background_jobs SET status = 'complete' WHERE id = %s", [a.id])
    conn.execute("SELECT bgjobs_requeue(%s)", [a.id])
    conn.execute("UPDATE background_jobs SET status = 'complete' WHERE id = %s", [a.id])
    assert row(conn, child.id)[:2] == ("pending", 1)  # still waits for `other`


def test_bad_dependencies_are_refused_and_store_nothing(store, conn):
    mine = enqueue("noop", user_id=None, store=store)
    conn.execute("INSERT INTO bgjobs_users (name) VALUES ('alice')")
    alices = enqueue("noop", user_id=1, store=store)
    with pytest.raises(InvalidInput, match="do not exist"):
        enqueue("noop", after=[mine, uuid.uuid4()], store=store)
    with pytest.raises(InvalidInput, match="another user"):
        enqueue("noop", after=[alices], store=store)
    with pytest.raises(InvalidInput, match="another user"):
        enqueue_many("noop", [{}, {}], after=[mine], user_id=1, store=store)
    with pytest.raises(InvalidRequest, match="not a job id"):
        enqueue("noop", after=["nope"], store=store)
    with pytest.raises(InvalidRequest, match="a list of jobs"):
        enqueue("noop", after=str(mine.id), store=store)
    with pytest.raises(InvalidRequest, match="workflow_id must be a UUID"):
        enqueue("noop", workflow_id="x", store=store)
    assert conn.execute("SELECT count(*) FROM background_jobs").fetchone()[0] == 2
    child = enqueue("noop", after=[mine], store=store)
    with pytest.raises(psycopg.errors.CheckViolation, match="depends_on cannot change"):
        conn.execute("UPDATE background_jobs SET depends_on = NULL WHERE id = %s", [child.id])


def test_a_rolled_back_workflow_leaves_nothing(store, db_url, conn):
    with psycopg.connect(db_url) as app:
        a = enqueue("noop", conn=app, store=store)
        enqueue_many("noop", [{}, {}], after=[a], conn=app, store=store)
        app.rollback()
    assert conn.execute("SELECT count(*) FROM background_jobs").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM bgjobs_dependencies").fetchone()[0] == 0


def test_workflow_id_is_inherited_listed_for_the_dba_and_cancelled_in_one_call(store, conn):
    wf = uuid.uuid4()
    a = enqueue("noop", workflow_id=wf, store=store)
    b = enqueue("noop", after=[a], store=store)
    c = enqueue_many("noop", [{}, {}], after=[b], store=store)
    assert b.workflow_id == wf and {j.workflow_id for j in c} == {wf}
    waiting = conn.execute("SELECT id, waiting_on FROM bgjobs_waiting ORDER BY created_at, id"
                           ).fetchall()
    assert {w[0] for w in waiting} == {b.id, *(j.id for j in c)}
    assert dict(waiting)[b.id] == [a.id]
    cancelled = conn.execute("SELECT id FROM bgjobs_cancel_workflow(%s)", [wf]).fetchall()
    assert {r[0] for r in cancelled} == {a.id, b.id, *(j.id for j in c)}
    assert conn.execute("SELECT count(*) FROM bgjobs_waiting").fetchone()[0] == 0


def test_plain_sql_builds_a_fan_in(conn, store):
    ids = [r[0] for r in conn.execute(
        "INSERT INTO background_jobs (job_type) SELECT 'noop' FROM generate_series(1, 3) "
        "RETURNING id").fetchall()]
    [(child, waiting)] = conn.execute(
        "INSERT INTO background_jobs (job_type, depends_on) VALUES ('noop', %s) "
        "RETURNING id, waiting_for", [ids]).fetchall()
    assert waiting == 3
    conn.execute("UPDATE background_jobs SET status = 'complete' WHERE id = ANY(%s)", [ids])
    assert row(conn, child)[:2] == ("pending", 0)


def test_the_claim_skips_waiting_jobs_through_the_partial_index(conn):
    [(root,)] = conn.execute("INSERT INTO background_jobs (job_type) VALUES ('noop') "
                             "RETURNING id").fetchall()
    conn.execute("INSERT INTO background_jobs (job_type, depends_on) "
                 "SELECT 'noop', ARRAY[%s::uuid] FROM generate_series(1, 2000)", [root])
    conn.execute("ANALYZE background_jobs")
    plan = "\n".join(r[0] for r in conn.execute(
        "EXPLAIN SELECT id FROM background_jobs WHERE status = 'pending' AND waiting_for = 0 "
        "ORDER BY priority, created_at LIMIT 1"))
    assert "background_jobs_claim_idx" in plan


def test_deleting_a_dependency_cancels_its_waiting_jobs_and_truncate_still_works(store, conn):
    a, done = enqueue("noop", store=store), enqueue("noop", store=store)
    conn.execute("UPDATE background_jobs SET status = 'complete' WHERE id = %s", [a.id])
    b = enqueue("noop", after=[done], store=store)
    keep = enqueue("noop", after=[a], store=store)
    conn.execute("DELETE FROM background_jobs WHERE id = ANY(%s)", [[done.id, a.id]])
    status, _, result = row(conn, b.id)
    assert status == "cancelled" and "was deleted" in result["message"]
    assert row(conn, keep.id)[:2] == ("pending", 0)  # its dependency had completed
    assert conn.execute("SELECT count(*) FROM bgjobs_dependencies").fetchone()[0] == 0
    conn.execute("TRUNCATE background_jobs")
    assert conn.execute("SELECT count(*) FROM bgjobs_dependencies").fetchone()[0] == 0


def test_the_builder_commits_a_workflow_at_once_and_wait_workflow_follows_it(store, conn):
    import threading

    from bgjobs.tasks.wait import WaitTimeout, wait_workflow
    from bgjobs.tasks.workflow import workflow

    with pytest.raises(RuntimeError), workflow(store=store) as broken:
        broken.enqueue("noop")
        raise RuntimeError("the block failed")
    assert conn.execute("SELECT count(*) FROM background_jobs").fetchone()[0] == 0

    with workflow(store=store) as wf:
        root = wf.enqueue("noop")
        group = wf.enqueue_many("noop", [{}, {}], after=[root])
        last = wf.enqueue("noop", after=group)
        # Nothing is visible before the block ends.
        assert conn.execute("SELECT count(*) FROM background_jobs").fetchone()[0] == 0
    assert {j.workflow_id for j in wf.jobs} == {wf.id} and len(wf.jobs) == 4
    with pytest.raises(WaitTimeout) as timed_out:
        wait_workflow(wf.id, timeout=0.2, store=store)
    assert timed_out.value.workflow.counts["waiting"] == 3

    def drain() -> None:
        for _ in range(3):  # root, the group, the last: one level at a time
            specs = store.claim_specs("w", ["noop"], limit=10)
            store.complete([Completion(Attempt(s.id, "w", s.attempt), None, None)
                            for s in specs])

    worker = threading.Thread(target=drain)
    worker.start()
    done = wait_workflow(str(wf.id), timeout=10, store=store)
    worker.join(10)
    assert done.finished and done.counts["complete"] == 4 and done.failed is None
    assert {j.id for j in done.jobs} == {j.id for j in wf.jobs} and last in wf.jobs


def test_the_docs_sql_builds_a_fan_in_as_written(conn):
    from tests.conftest import doc_code

    conn.execute(doc_code("workflows.md", "## For the DBA", "sql"))
    [(waiting, parts)] = conn.execute(
        "SELECT waiting_for, cardinality(depends_on) FROM background_jobs "
        "WHERE job_type = 'import_summary'").fetchall()
    assert waiting == parts == 3
    [(waiting_on,)] = conn.execute("SELECT cardinality(waiting_on) FROM bgjobs_waiting").fetchall()
    assert waiting_on == 3


def test_a_release_reads_the_dependents_by_key_on_a_queue_without_statistics(server_url):
    """022: completing a job with 3 dependents among 5,000 pending jobs reads its dependents by
    primary key, not every pending job, right after a bulk insert (no statistics yet)."""
    with migrated_database(server_url) as url, psycopg.connect(url) as c:
        c.execute("INSERT INTO background_jobs (job_type) SELECT 'noop' "
                  "FROM generate_series(1, 5000)")
        [(parent,)] = c.execute("INSERT INTO background_jobs (job_type) VALUES ('noop') "
                                "RETURNING id").fetchall()
        c.execute("INSERT INTO background_jobs (job_type, depends_on) "
                  "SELECT 'noop', ARRAY[%s::uuid] FROM generate_series(1, 3)", [parent])
        c.commit()
        c.execute("UPDATE background_jobs SET status = 'complete' WHERE id = %s", [parent])
        read = c.execute("SELECT seq_tup_read + idx_tup_fetch FROM pg_stat_xact_user_tables "
                         "WHERE relid = 'background_jobs'::regclass").fetchone()[0]
        released = c.execute("SELECT count(*) FROM background_jobs "
                             "WHERE depends_on = ARRAY[%s::uuid] AND waiting_for = 0",
                             [parent]).fetchone()[0]
        c.rollback()
    assert released == 3
    assert read < 100  # before 022: every pending job, 5,000 or more
