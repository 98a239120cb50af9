"""bgjobs.wait: the finished job, woken by the progress channel (one LISTEN), not by polling."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from uuid import UUID

import pytest

import bgjobs
from bgjobs.core.jobs import Attempt, Failure, Job
from bgjobs.core.store import Store
from tests.conftest import add_job, wait_for


class CountingStore(Store):
    """Counts row reads: a waiter reads the row once, then once per finishing notification."""

    reads = 0

    def get_job(self, job_id: UUID, user_id: int | None = None) -> Job:
        self.reads += 1
        return super().get_job(job_id, user_id)


@pytest.fixture
def counting(store: Store) -> CountingStore:
    return CountingStore(store.pool)


def wait_in_thread(store: Store, job_id: UUID, **kw) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def run() -> None:
        try:
            out["job"] = bgjobs.wait(job_id, store=store, **kw)
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            out["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def listening(db_url: str, conn) -> bool:
    rows = conn.execute("SELECT query FROM pg_stat_activity WHERE application_name = "
                        "'bgjobs-wait' AND state = 'idle'").fetchall()
    return any(q.startswith("LISTEN") for (q,) in rows)


def claim(store: Store, job_id: UUID) -> Attempt:
    [spec] = store.claim_specs("w", ["noop"])
    assert spec.id == job_id
    return Attempt(job_id, "w", spec.attempt)


@pytest.mark.parametrize(("ending", "status"), [
    (lambda s, a: s.complete([(a, {"ok": 1}, None)]), "complete"),
    (lambda s, a: s.fail([Failure(a, {"error": "X", "message": "no"}, False, 0.0)]), "error"),
    (lambda s, a: s.cancel(a.job_id), "cancelled"),
])
def test_wait_returns_the_finished_job(counting: CountingStore, db_url, conn,
                                       ending: Callable, status: str):
    job = add_job(counting, "noop")
    thread, out = wait_in_thread(counting, job.id, timeout=60)
    wait_for(lambda: listening(db_url, conn), message="the waiter listening")
    attempt = claim(counting, job.id)
    for n in range(5):  # progress is news, but not the news it waits for: no re-read
        counting.report_progress([(attempt, {"current": n, "total": 5})])
    time.sleep(0.2)  # let those notifications arrive before the ending
    reads_before_end = counting.reads
    ending(counting, attempt)
    thread.join(30)
    assert "error" not in out, out
    assert out["job"].status == status and out["job"].id == job.id
    assert reads_before_end == 1, "only the first read: no polling, no re-read on progress"
    assert counting.reads == 2


def test_a_finished_job_returns_at_once(counting: CountingStore):
    job = add_job(counting, "noop")
    counting.cancel(job.id)
    assert bgjobs.wait(job.id, timeout=0, store=counting).status == "cancelled"


def test_timeout_raises_with_the_job_as_it_is(counting: CountingStore):
    job = add_job(counting, "noop")
    started = time.monotonic()
    with pytest.raises(bgjobs.WaitTimeout, match="still pending after 0.3s") as raised:
        bgjobs.wait(job.id, timeout=0.3, store=counting)
    assert time.monotonic() - started >= 0.3
    assert raised.value.job.status == "pending"
    assert isinstance(raised.value, TimeoutError)
    assert counting.reads == 1


def test_missing_or_someone_elses_job_is_not_found(store: Store):
    user, _ = store.create_user("owner")
    job = add_job(store, "noop", user_id=user.id)
    with pytest.raises(bgjobs.NotFound):
        bgjobs.wait(job.id, timeout=1, user_id=user.id + 1, store=store)
    with pytest.raises(bgjobs.NotFound):
        bgjobs.wait("not-a-uuid", timeout=1, store=store)
    with pytest.raises(ValueError, match="timeout"):
        bgjobs.wait(job.id, timeout=-1, store=store)


def test_losing_the_database_while_waiting_is_database_unavailable(store: Store, db_url, conn):
    job = add_job(store, "noop")
    thread, out = wait_in_thread(store, job.id, timeout=60)
    wait_for(lambda: listening(db_url, conn), message="the waiter listening")
    conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                 "WHERE application_name = 'bgjobs-wait'")
    thread.join(30)
    assert isinstance(out.get("error"), bgjobs.DatabaseUnavailable), out


def test_a_job_finished_in_a_workers_batch_wakes_its_waiter(counting: CountingStore, db_url,
                                                            conn):
    jobs = [add_job(counting, "noop") for _ in range(3)]
    thread, out = wait_in_thread(counting, jobs[1].id, timeout=60)
    wait_for(lambda: listening(db_url, conn), message="the waiter listening")
    claimed = counting.claim_specs("w", ["noop"], limit=3)
    # One statement finishes all three: its notification names their ids (010).
    counting.complete([(Attempt(c.id, "w", c.attempt), {"n": 1}, None) for c in claimed])
    thread.join(30)
    assert "error" not in out, out
    assert out["job"].status == "complete" and out["job"].id == jobs[1].id
