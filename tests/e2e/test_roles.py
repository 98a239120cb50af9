"""The documented least-privilege set-up, end to end with the real commands: `bgjobs migrate`
and `bgjobs grant` as the owner of schema bgjobs (no superuser), then the API (gunicorn), the
events service and a worker as the runtime role: a job enqueued through the API is run by the
worker and its final state reaches an SSE client. docs/operations.md, "Roles and privileges"."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.conftest import url_env
from tests.e2e.test_events_service import Reader
from tests.procs import BGJOBS, Proc, free_port, wait_until
from tests.roles import RolesDatabase, roles_database


def bgjobs(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BGJOBS, *args], env=url_env(url), capture_output=True, text=True,
                          timeout=120)


@pytest.fixture
def db(server_url: str) -> Iterator[RolesDatabase]:
    with roles_database(server_url) as made:
        yield made


def test_the_services_run_as_the_runtime_role_in_a_schema_of_their_own(db, tmp_path: Path):
    early = bgjobs(db.owner_url, "grant", db.runtime)
    assert early.returncode == 1 and early.stderr == (
        "bgjobs: this database has no bgjobs_grant_runtime(): run `bgjobs migrate` first\n")
    migrated = bgjobs(db.owner_url, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert "jobs belong to users(id)" in migrated.stdout
    printed = bgjobs(db.owner_url, "grant", db.runtime, "--print")
    assert printed.returncode == 0 and printed.stdout.startswith(
        f"GRANT USAGE ON SCHEMA bgjobs TO {db.runtime};"), printed
    granted = bgjobs(db.owner_url, "grant", db.runtime)
    assert granted.returncode == 0, granted.stderr
    assert granted.stdout == printed.stdout
    assert f"granted {db.runtime} what the services need" in granted.stderr

    unknown = bgjobs(db.owner_url, "grant", "nobody_at_all")
    assert unknown.returncode == 1 and unknown.stderr == (
        "bgjobs: cannot grant nobody_at_all: no such role: nobody_at_all\n")
    itself = bgjobs(db.runtime_url, "grant", db.runtime)  # the runtime role cannot grant
    assert itself.returncode == 1 and itself.stderr.startswith(
        f"bgjobs: cannot grant {db.runtime}: permission denied for function "
        "bgjobs_grant_runtime"), itself.stderr

    created = bgjobs(db.runtime_url, "user", "create", "ada", "--id", "1")
    assert created.returncode == 0, created.stderr
    token = created.stdout.split()[-1]
    api, events = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    env = {**url_env(db.runtime_url), "BGJOBS_API_BIND": api, "BGJOBS_EVENTS_BIND": events,
           "BGJOBS_API_WORKERS": "1", "BGJOBS_API_THREADS": "2", "BGJOBS_SECRET_KEY": "roles",
           "BGJOBS_TASK_MODULES": "tests.task_fixtures"}
    procs = [Proc([BGJOBS, "api"], env, tmp_path / "api.log"),
             Proc([BGJOBS, "events"], env, tmp_path / "events.log"),
             Proc([BGJOBS, "worker", "--concurrency", "1"], env, tmp_path / "worker.log")]
    try:
        wait_until(lambda: httpx.get(f"http://{api}/healthz", timeout=5).status_code == 200,
                   60, "the API", procs[0])
        wait_until(lambda: httpx.get(f"http://{events}/events/healthz", timeout=5).status_code
                   == 200, 60, "the events service", procs[1])
        wait_until(lambda: "worker processes ready" in procs[2].output(), 60, "the worker",
                   procs[2])
        auth = {"Authorization": f"Bearer {token}"}
        answer = httpx.post(f"http://{api}/api/jobs", headers=auth, timeout=30,
                            json={"type": "slow", "params": {"seconds": 0.5, "step": 0.1}})
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["id"]
        reader = Reader(f"http://{events}/events/jobs/{job_id}", auth)
        try:
            final = reader.wait_for(lambda job: job.get("status") == "complete",
                                    "the job's final state on the stream", timeout=60)
        finally:
            reader.close()
        assert final["data"]["id"] == job_id
        assert httpx.get(f"http://{api}/api/jobs/{job_id}", headers=auth, timeout=30
                         ).json()["status"] == "complete"
    finally:
        for proc in procs:
            proc.stop()
    logs = "".join(p.log_path.read_text() for p in procs)
    assert "permission denied" not in logs, logs[-3000:]
    with psycopg.connect(db.admin_url) as conn:
        # Every bgjobs backend of the test was the runtime role, none a superuser.
        assert conn.execute("SELECT count(*) FROM bgjobs.background_jobs WHERE status = "
                            "'complete'").fetchone() == (1,)
    # Up to date, migrate changes nothing and the runtime role may run it (test_roles.py in
    # tests/integration: a pending migration it cannot apply is refused in one line).
    again = bgjobs(db.runtime_url, "migrate")
    assert again.returncode == 0 and "database is up to date" in again.stdout, again.stderr
