"""The operator view's API: admins see and steer everything; everyone else gets 403."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from bgjobs.core.queries import q
from bgjobs.core.store_ops import IoProcesses
from tests.api_task_fixtures import Api, ApiUser, api_fixture, snapshot  # noqa: F401
from tests.conftest import add_job

ROUTES = [("get", "/api/admin/overview"), ("get", "/api/admin/jobs"),
          ("post", "/api/admin/jobs/00000000-0000-0000-0000-000000000000/cancel"),
          ("post", "/api/admin/jobs/00000000-0000-0000-0000-000000000000/requeue"),
          ("post", "/api/admin/schedules/nightly/run")]


@pytest.fixture
def root(api: Api, store) -> ApiUser:
    user, token = store.create_user("root", is_admin=True)
    return ApiUser(user.id, user.name, token)


def get(api: Api, who: ApiUser, path: str, **query):
    return api.client.get(path, query_string=query, headers=who.headers)


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_non_admins_get_403_and_change_nothing(api: Api, store, method, path):
    add_job(store, "noop", user_id=api.alice.id)
    store.create_user("someone_else")
    before = snapshot(api.url)
    r = getattr(api.client, method)(path, headers=api.alice.headers)
    assert r.status_code == 403 and r.json["error"]["code"] == "forbidden", r.json
    assert getattr(api.client, method)(path).status_code == 401
    assert snapshot(api.url) == before


def test_me_says_who_is_an_admin(api: Api, root: ApiUser):
    assert get(api, root, "/api/me").json["user"]["is_admin"] is True
    assert get(api, api.alice, "/api/me").json["user"]["is_admin"] is False


def test_every_users_jobs_with_filters_and_pages(api: Api, store, root: ApiUser, conn):
    mine = [add_job(store, "noop", {"echo": n}, user_id=api.alice.id) for n in range(5)]
    theirs = add_job(store, "demo", user_id=api.bob.id)
    nobody = add_job(store, "noop")
    store.cancel(mine[0].id)
    seen, cursor = [], None
    while True:
        page = get(api, root, "/api/admin/jobs", limit=3, **({"cursor": cursor} if cursor else {}))
        assert page.status_code == 200, page.json
        seen += page.json["jobs"]
        cursor = page.json["next_cursor"]
        if not cursor:
            break
    assert [j["id"] for j in seen] == [str(j.id) for j in [nobody, theirs, *mine[::-1]]]
    assert {j["user"] for j in seen} == {"alice", "bob", None}

    def ids(**query) -> list[str]:
        r = get(api, root, "/api/admin/jobs", **query)
        assert r.status_code == 200, r.json
        return [j["id"] for j in r.json["jobs"]]

    assert ids(user="bob") == [str(theirs.id)] == ids(user=str(api.bob.id))
    assert ids(type="demo") == [str(theirs.id)]
    assert ids(status="cancelled") == [str(mine[0].id)]
    assert ids(user="nobody-by-that-name") == []
    conn.execute("UPDATE background_jobs SET created_at = now() - interval '2 days' "
                 "WHERE id = %s", (mine[1].id,))
    yesterday = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    assert ids(until=yesterday) == [str(mine[1].id)]
    assert str(mine[1].id) not in ids(since=yesterday.replace("+00:00", "Z"))


@pytest.mark.parametrize(("query", "message"), [
    ({"since": "yesterday"}, "since must be an ISO 8601 time"),
    ({"until": "2026-01-01T00:00:00"}, "needs a timezone"),
    ({"status": "done"}, "status must be one of"),
    ({"limit": "0"}, "limit must be between"),
    ({"cursor": "garbage"}, "cursor"),
    ({"user": "x" * 65}, "user"),
    ({"owner": "alice"}, "unknown query parameter"),
])
def test_bad_filters_are_400(api: Api, root: ApiUser, query, message):
    r = get(api, root, "/api/admin/jobs", **query)
    assert r.status_code == 400 and r.json["error"]["code"] == "bad_query", r.json
    assert message in r.json["error"]["message"]


def test_overview_counts_queue_chart_workers_stuck_schedules(api: Api, store, root: ApiUser,
                                                             conn):
    for _ in range(3):
        add_job(store, "noop", user_id=api.alice.id)
    conn.execute("UPDATE background_jobs SET created_at = now() - interval '90 seconds' "
                 "WHERE id = (SELECT id FROM background_jobs LIMIT 1)")
    conn.execute("INSERT INTO background_jobs (job_type, status, started_at, finished_at) "
                 "VALUES ('noop', 'complete', now() - interval '3 minutes', "
                 "now() - interval '3 minutes'), ('noop', 'error', now() - interval '3 minutes',"
                 " now() - interval '3 minutes'), ('noop', 'complete', now() - interval '2 hours',"
                 " now() - interval '2 hours')")
    # A 1 s lease: silence counts from the Postgres start at the earliest (011), and the test
    # cluster may have started less than a default lease ago, or (a first test) than 1 s.
    while conn.execute("SELECT now() - pg_postmaster_start_time() < interval '2 s'").fetchone()[0]:
        time.sleep(0.2)
    conn.execute("INSERT INTO background_jobs (job_type, status, worker_id, started_at, "
                 "heartbeat_at, lease_seconds) VALUES ('demo', 'running', 'gone:1', "
                 "now() - interval '5 minutes', now() - interval '5 minutes', 1)")
    store.worker_heartbeat("host-a:42", "host-a", 42, 4, 1, ["noop"], 30,
                           IoProcesses(1, {"webhook": 50}, [{"pid": 43, "running": 1,
                                                             "waiting": 0}]))
    conn.execute("INSERT INTO bgjobs_schedules (name, job_type, cron) "
                 "VALUES ('nightly', 'noop', '0 2 * * *')")
    # The API recorded the registered types when it started (exclusivity, max_attempts).
    conn.execute("INSERT INTO bgjobs_job_types (job_type, max_running) VALUES ('demo', 2) "
                 "ON CONFLICT (job_type) DO UPDATE SET max_running = 2")
    r = get(api, root, "/api/admin/overview")
    assert r.status_code == 200, r.json
    body = r.json
    counts = {(c["type"], c["status"]): c["jobs"] for c in body["counts"]}
    assert counts == {("noop", "pending"): 3, ("noop", "complete"): 2, ("noop", "error"): 1,
                      ("demo", "running"): 1}
    assert body["queue"]["pending"] == 3 and body["queue"]["oldest_pending_seconds"] >= 89
    minutes = body["throughput"]["minutes"]
    assert len(minutes) == 60
    assert sum(m["completed"] for m in minutes) == 1 and sum(m["failed"] for m in minutes) == 1
    assert sum(m["started"] for m in minutes) == 3  # two finished, one still running
    [worker] = body["workers"]
    assert worker["machine"] == "host-a" and worker["alive"] and worker["processes"] == 4
    assert worker["io_processes"] == 1 and worker["io_concurrency"] == {"webhook": 50}
    assert worker["io_jobs"] == [{"pid": 43, "running": 1, "waiting": 0}]
    [stuck] = body["stuck"]
    assert stuck["worker_id"] == "gone:1" and stuck["silent_seconds"] >= 299
    [nightly] = body["schedules"]
    assert nightly["next_run"].endswith("T02:00:00+00:00")
    # Other test modules' registered types (tests.task_fixtures' "limited") may be recorded too.
    assert [lim for lim in body["limits"] if lim["job_type"] == "demo"] == [
        {"job_type": "demo", "max_running": 2, "starts_per_second": None, "running": 1}]
    assert "noop" in body["types"]


def test_actions_cancel_requeue_and_run_a_schedule(api: Api, store, root: ApiUser, conn):
    job = add_job(store, "noop", user_id=api.alice.id)
    cancel = api.client.post(f"/api/admin/jobs/{job.id}/cancel", headers=root.headers)
    assert cancel.status_code == 200 and cancel.json["status"] == "cancelled"
    again = api.client.post(f"/api/admin/jobs/{job.id}/cancel", headers=root.headers)
    assert again.status_code == 409
    requeue = api.client.post(f"/api/admin/jobs/{job.id}/requeue", headers=root.headers)
    assert requeue.status_code == 200 and requeue.json["status"] == "pending"
    assert api.client.post(f"/api/admin/jobs/{job.id}/requeue",
                           headers=root.headers).status_code == 409
    assert api.client.post("/api/admin/jobs/nope/requeue",
                           headers=root.headers).status_code == 404

    conn.execute("INSERT INTO bgjobs_schedules (name, job_type, cron, params) VALUES "
                 "('nightly', 'noop', '0 2 * * *', '{\"echo\": 5}'), "
                 "('broken', 'noop', '0 2 * * *', '{\"nope\": 1}')")
    run = api.client.post("/api/admin/schedules/nightly/run", headers=root.headers)
    assert run.status_code == 202 and run.json["params"] == {"echo": 5}
    before = snapshot(api.url)
    bad = api.client.post("/api/admin/schedules/broken/run", headers=root.headers)
    assert bad.status_code == 422 and bad.json["error"]["code"] == "invalid_params"
    missing = api.client.post("/api/admin/schedules/none/run", headers=root.headers)
    assert missing.status_code == 404
    assert snapshot(api.url) == before


def test_the_operator_reads_use_indexes_on_100000_jobs(conn):
    conn.execute("INSERT INTO bgjobs_users (name) SELECT 'u' || n FROM generate_series(1, 50) n")
    conn.execute(
        "INSERT INTO background_jobs (job_type, user_id, status, created_at, started_at, "
        "finished_at) SELECT (ARRAY['noop', 'demo', 'api_exclusive'])[1 + n % 3], 1 + n % 50, "
        "CASE WHEN n % 100 = 0 THEN 'pending' WHEN n % 97 = 0 THEN 'error' ELSE 'complete' END,"
        " now() - n * interval '1 second', now() - n * interval '1 second', "
        "CASE WHEN n % 100 = 0 THEN NULL ELSE now() - n * interval '1 second' END "
        "FROM generate_series(1, 100000) AS n")
    conn.execute("ANALYZE background_jobs")

    def plan(query: str, **args) -> str:
        return "\n".join(r[0] for r in conn.execute(b"EXPLAIN " + q(query), args).fetchall())

    page = {"user_id": None, "status": None, "job_type": None, "since": None, "until": None,
            "before_created": None, "before_id": None, "limit": 51}
    assert "background_jobs_created_idx" in plan("admin_list_jobs", **page)
    assert "background_jobs_created_idx" in plan("admin_list_jobs", **{**page, "job_type": "noop"})
    assert "background_jobs_user_created_idx" in plan("admin_list_jobs", **{**page, "user_id": 7})
    chart = plan("throughput", since=datetime.now(UTC) - timedelta(hours=1))
    assert "background_jobs_finished_idx" in chart and "Seq Scan" not in chart, chart
