"""Job processes run nicer than their supervisor (BGJOBS_WORKER_NICE, default 10)."""

from __future__ import annotations

import pytest

from tests.e2e.test_workers import enqueue, start_worker, status_is, wait_job  # noqa: F401


@pytest.mark.parametrize(("setting", "expected"), [(None, 10), ("3", 3), ("0", 0)])
def test_job_processes_run_nicer_than_their_supervisor(db_url, store, start_worker,  # noqa: F811
                                                       monkeypatch, setting, expected):
    if setting is not None:
        monkeypatch.setenv("BGJOBS_WORKER_NICE", setting)
    else:
        monkeypatch.delenv("BGJOBS_WORKER_NICE", raising=False)
    worker = start_worker(db_url, "--concurrency", "1")
    job = wait_job(store, enqueue(store, "niceness"), status_is("complete"), "done",
                   proc=worker)
    assert job.result["nice"] == min(19, job.result["parent_nice"] + expected)
