"""Concurrent IO jobs under database faults: a real `bgjobs worker` with an IO process, on a
durable Postgres of the test's own that is stopped and started again (or a standby promoted)
while the IO process runs jobs and holds others handed ahead (io_noted: 10 at once, 2 ahead).

Each job notes every run of its handler in a file (tests/io_task_fixtures.py's io_noted), so a
test counts runs apart from what the table says; an audit trigger (the fault suite's) counts
each job's transitions into a final state.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bgjobs.core import embedded
from tests.e2e.test_failover import Template, replicated_pair, template  # noqa: F401
from tests.e2e.test_faults import AUDIT
from tests.e2e.test_io_jobs import StartWorker, start_worker  # noqa: F401
from tests.procs import Proc, children_of, wait_until

#: io_noted's concurrency, and the jobs handed ahead beyond it (worker/fleet.py's ahead())
RUNS_AT_ONCE, AHEAD = 10, 2
#: The most one claim of io_noted can take: all a claim lost to an outage can leave unrun.
ONE_CLAIM = RUNS_AT_ONCE + AHEAD
#: The supervisor's three connections, as its log names them (worker/backoff.py)
CONNECTIONS = ("LISTEN connection", "database connection", "database connection for results")

Row = tuple[str, int, int, Any]  # status, attempts, max_attempts, result


def audited(url: str) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(AUDIT)
    return url


def insert_noted(url: str, runs: Path, n: int, gate: Path | None = None,
                 seconds: list[float] | None = None) -> list[str]:
    """``n`` io_noted jobs in one statement (one wake-up for every idle worker)."""
    params = [json.dumps({"runs": str(runs), "gate": str(gate or ""),
                          "seconds": seconds[i] if seconds else 0.0}) for i in range(n)]
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("INSERT INTO background_jobs (job_type, params) "
                            "SELECT 'io_noted', p FROM unnest(%s::jsonb[]) AS p RETURNING id",
                            [params]).fetchall()
    return [str(r[0]) for r in rows]


def rows(url: str, ids: list[str]) -> dict[str, Row]:
    with psycopg.connect(url, autocommit=True) as conn:
        return {str(r[0]): r[1:] for r in conn.execute(
            "SELECT id, status, attempts, max_attempts, result FROM background_jobs "
            "WHERE id = ANY(%s::uuid[])", [ids])}


def audit_counts(url: str, ids: list[str]) -> Counter[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        return Counter(str(r[0]) for r in conn.execute(
            "SELECT job_id FROM fault_audit WHERE job_id = ANY(%s::uuid[])", [ids]))


def notes(runs: Path) -> Counter[tuple[str, int, str]]:
    """(job id, attempt, "start" or "end") -> how many times the handler noted it."""
    if not runs.exists():
        return Counter()
    return Counter((i, int(a), what) for i, a, what in
                   (line.split() for line in runs.read_text().splitlines()))


def count(runs: Path, what: str) -> int:
    return sum(n for (_, _, w), n in notes(runs).items() if w == what)


def started_ids(runs: Path) -> set[str]:
    return {i for (i, _, w) in notes(runs) if w == "start"}


def io_process(worker: Proc) -> int:
    (pid,) = [p for p in children_of(worker.pid)
              if b"io_child" in Path(f"/proc/{p}/cmdline").read_bytes()]
    return pid


def cpu_seconds(pid: int) -> float:
    """The CPU time a live process has used (user and system)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_held(url: str, runs: Path, ids: list[str], worker: Proc) -> None:
    """Until the IO process runs 10 of ``ids`` and holds 2 handed ahead; the rest pending."""
    def held() -> bool:
        statuses = Counter(r[0] for r in rows(url, ids).values())
        return count(runs, "start") == RUNS_AT_ONCE and statuses == Counter(
            {"running": ONE_CLAIM, "pending": len(ids) - ONE_CLAIM})

    wait_until(held, 30, f"{RUNS_AT_ONCE} running, {AHEAD} held ahead", worker)


def wait_outage_seen(worker: Proc) -> None:
    """Until the worker has logged each of its connections lost (its results among them: it
    holds outcomes it cannot write)."""
    wait_until(lambda: all(f"{conn} lost:" in worker.output() for conn in CONNECTIONS), 30,
               "the worker to see the outage on each connection", worker)


def wait_complete(url: str, ids: list[str], worker: Proc, timeout: float = 90
                  ) -> dict[str, Row]:
    def done() -> dict[str, Row] | None:
        found = rows(url, ids)
        return found if all(r[0] == "complete" for r in found.values()) else None

    try:
        return wait_until(done, timeout, f"{len(ids)} jobs complete", worker)  # type: ignore
    except AssertionError:
        left = Counter(r[0] for r in rows(url, ids).values())
        raise AssertionError(f"not all complete: {left}\n{worker.output()[-4000:]}") from None


def assert_each_ended_once(url: str, ids: list[str], final: dict[str, Row],
                           runs: Path, *logs: Proc) -> None:
    """Every job complete exactly once (the audit), its last attempt ran to the end once, no
    attempt ran twice, and no job ran more times than its attempts say."""
    assert set(final) == set(ids)
    assert {r[0] for r in final.values()} == {"complete"}
    audit = audit_counts(url, ids)
    assert all(audit[i] == 1 for i in ids), {i: audit[i] for i in ids if audit[i] != 1}
    ran = notes(runs)
    assert all(n == 1 for n in ran.values()), {k: n for k, n in ran.items() if n != 1}
    for i, (_, attempts, _, result) in final.items():
        assert result["attempt"] == attempts and ran[(i, attempts, "end")] == 1, (i, final[i])
        assert sum(1 for (j, _, w) in ran if j == i and w == "start") <= attempts, i
    out = "".join(p.output() for p in logs)
    twice = [i for i in ids if out.count(f"finished job {i} (") > 1]
    assert not twice, f"logged finished twice: {twice}"


def assert_claims_new_jobs(url: str, runs: Path, worker: Proc) -> None:
    """The worker is alive and runs jobs enqueued now."""
    assert worker.alive()
    more = insert_noted(url, runs, 3)
    final = wait_complete(url, more, worker, timeout=30)
    assert {r[1] for r in final.values()} == {1}


# Tests ---------------------------------------------------------------------------------------


def test_postgres_restarted_while_io_jobs_run_and_wait_handed_ahead(
        private_cluster: embedded.Cluster, tmp_path: Path,
        start_worker: StartWorker) -> None:  # noqa: F811 - the fixture
    """Postgres stops while the IO process runs 10 jobs and holds 2 ahead (8 more pending):
    they all finish during the outage, their outcomes are written once it is back, each job
    completes once in one attempt, and the worker goes on claiming."""
    url = audited(private_cluster.url())
    worker = start_worker(url)
    runs, gate = tmp_path / "runs", tmp_path / "gate"
    ids = insert_noted(url, runs, 20, gate)
    wait_held(url, runs, ids, worker)

    private_cluster.stop()
    gate.touch()
    # The IO process needs no database: the 10 end, and the 2 held ahead start and end.
    wait_until(lambda: count(runs, "end") == ONE_CLAIM, 30, "12 ended during the outage", worker)
    wait_outage_seen(worker)
    assert count(runs, "start") == ONE_CLAIM  # nothing more was claimed meanwhile
    private_cluster.ensure_running()

    final = wait_complete(url, ids, worker)
    assert_each_ended_once(url, ids, final, runs, worker)
    # Nothing was interrupted: no attempt was lost, none retried.
    assert {r[1] for r in final.values()} == {1}, final
    assert "database connection for results restored after" in worker.output()
    assert not re.search("reaped job|WorkerCrashed|back to pending", worker.output())
    assert_claims_new_jobs(url, runs, worker)


def test_an_outage_is_logged_lost_once_and_restored_once_it_is_back(
        private_cluster: embedded.Cluster, tmp_path: Path,
        start_worker: StartWorker) -> None:  # noqa: F811 - the fixture
    """Postgres down for a few seconds under IO jobs: the worker logs each of its connections
    lost once, and restored only once Postgres is back (docs/workers.md, Database outages).
    The default poll (5 s): between the duties' failed tries the loop wakes with none due."""
    url = audited(private_cluster.url())
    worker = start_worker(url)
    runs, gate = tmp_path / "runs", tmp_path / "gate"
    ids = insert_noted(url, runs, ONE_CLAIM, gate)
    wait_held(url, runs, ids, worker)
    mark = len(worker.output())

    private_cluster.stop()
    gate.touch()
    wait_until(lambda: count(runs, "end") == ONE_CLAIM, 30, "12 ended during the outage", worker)
    time.sleep(4)  # the outage lasts a while: the worker retries meanwhile
    during = worker.output()[mark:]
    private_cluster.ensure_running()

    final = wait_complete(url, ids, worker)
    assert_each_ended_once(url, ids, final, runs, worker)
    assert "restored after" not in during, during
    for conn in CONNECTIONS:
        assert during.count(f"{conn} lost:") == 1, during
    wait_until(lambda: all(f"{conn} restored after" in worker.output()[mark:]
                           for conn in CONNECTIONS), 30, "each connection restored", worker)


@pytest.mark.parametrize("mode", ["fast", "immediate"], ids=["stopped", "crashed"])
def test_postgres_restarted_mid_flow_of_600_short_io_jobs(
        private_cluster: embedded.Cluster, tmp_path: Path,
        start_worker: StartWorker, mode: str) -> None:  # noqa: F811 - the fixture
    """600 jobs of 10-50 ms, Postgres stopped (or crashed) once 150 have run and started
    again: all 600 complete once; an attempt can be lost only with a claim the outage cut off
    (one claim's worth at most; reaped after its lease), and no attempt runs twice."""
    url = audited(private_cluster.url())
    worker = start_worker(url)
    runs = tmp_path / "runs"
    ids = insert_noted(url, runs, 600, seconds=[random.uniform(0.01, 0.05) for _ in range(600)])
    wait_until(lambda: count(runs, "end") >= 150, 60, "150 jobs run", worker)

    private_cluster.stop(mode=mode)
    wait_outage_seen(worker)
    assert count(runs, "end") < 600, "the flow ended before the outage"
    private_cluster.ensure_running()

    final = wait_complete(url, ids, worker, timeout=120)
    assert_each_ended_once(url, ids, final, runs, worker)
    retried = [i for i, r in final.items() if r[1] > 1]
    assert len(retried) <= ONE_CLAIM, retried
    ran = notes(runs)
    unrun = sum(r[1] for r in final.values()) - sum(1 for (_, _, w) in ran if w == "start")
    assert unrun <= ONE_CLAIM, unrun
    assert_claims_new_jobs(url, runs, worker)


def test_io_process_killed_during_an_outage(
        private_cluster: embedded.Cluster, tmp_path: Path,
        start_worker: StartWorker) -> None:  # noqa: F811 - the fixture
    """SIGKILL of the IO process while Postgres is down: once it is back, the 10 jobs it ran
    fail as a crash and are retried (an attempt spent), the 2 it held go back to pending with
    their attempt, and all complete."""
    url = audited(private_cluster.url())
    worker = start_worker(url)
    runs, gate = tmp_path / "runs", tmp_path / "gate"
    ids = insert_noted(url, runs, 14, gate)
    wait_held(url, runs, ids, worker)
    started = started_ids(runs)
    held = {i for i, r in rows(url, ids).items() if r[0] == "running"} - started
    assert len(held) == AHEAD
    pid = io_process(worker)

    private_cluster.stop()
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: f"running {RUNS_AT_ONCE} jobs: each fails (retryable); {AHEAD} not "
               "started go back to pending" in worker.output(), 15, "the crash noticed", worker)
    wait_outage_seen(worker)
    private_cluster.ensure_running()

    def written() -> bool:
        out = worker.output()
        return all(re.search(f"job {i} \\(io_noted, attempt 1/3\\) failed after .*"
                             "WorkerCrashed.*; retrying", out) for i in started) and \
            all(f"handed job {i} (io_noted, attempt 1/3) back to pending (its worker process "
                "crashed before it started)" in out for i in held)

    wait_until(written, 60, "the crash's outcomes written once Postgres is back", worker)
    gate.touch()
    final = wait_complete(url, ids, worker)
    assert_each_ended_once(url, ids, final, runs, worker)
    ran = notes(runs)
    for i in started:  # ran twice: the crashed attempt (never ended), then the retry
        assert final[i][1:3] == (2, 3) and (i, 1, "start") in ran and (i, 1, "end") not in ran
    for i in held:  # never started before the crash: its attempt given back
        assert final[i][1:3] == (2, 4) and (i, 1, "start") not in ran
    for i in set(ids) - started - held:
        assert final[i][1:3] == (1, 3)
    assert_claims_new_jobs(url, runs, worker)


def test_sigterm_during_an_outage_exits_and_its_jobs_are_taken_back(
        private_cluster: embedded.Cluster, tmp_path: Path,
        start_worker: StartWorker) -> None:  # noqa: F811 - the fixture
    """SIGTERM while Postgres is down: the worker exits 0 within its shutdown grace plus the
    5 s it gives failing writes, without a busy loop or a false "restored" meanwhile; once
    Postgres is back, none of its jobs stays with it (another worker's reaper takes them back
    after their 5 s lease, an attempt spent) and all complete."""
    url = audited(private_cluster.url())
    grace, lease = 2, 5
    worker = start_worker(url, "--shutdown-grace", f"{grace}s", "--lease", f"{lease}s")
    runs, gate = tmp_path / "runs", tmp_path / "gate"
    ids = insert_noted(url, runs, 14, gate)
    wait_held(url, runs, ids, worker)
    started = started_ids(runs)

    private_cluster.stop()
    worker.signal(signal.SIGTERM)
    # Past the grace its jobs are given up, and it waits up to 5 s for writes that fail.
    time.sleep(grace + 1)
    before = cpu_seconds(worker.pid)
    time.sleep(3)
    waiting = cpu_seconds(worker.pid) - before
    wait_until(lambda: not worker.alive(), 5 + 10, "the worker to exit")
    assert worker.popen.returncode == 0, worker.output()[-3000:]
    assert not children_of(worker.pid)
    assert waiting < 1.0, f"{waiting:.2f} s of CPU in 3 s waiting for the database: a busy loop"
    assert "restored after" not in worker.output(), "restored while Postgres was down"

    private_cluster.ensure_running()
    other = start_worker(url)
    gate.touch()
    final = wait_complete(url, ids, other, timeout=60)
    assert_each_ended_once(url, ids, final, runs, worker, other)
    worker_id = f"{os.uname().nodename}:{worker.pid}"
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM background_jobs WHERE worker_id = %s "
                            "AND status = 'running'", [worker_id]).fetchone() == (0,)
    ran = notes(runs)
    held = {i for i in ids if (i, 1, "start") not in ran and final[i][1] == 2}
    assert len(held) == AHEAD, held
    for i in started | held:  # its hand-back never written: reaped, an attempt spent
        assert final[i][1:3] == (2, 3) and (i, 1, "end") not in ran, (i, final[i])
        assert f"reaped job {i} (io_noted) of a lost worker" in other.output()
    for i in set(ids) - started - held:
        assert final[i][1:3] == (1, 3)


def test_postgres_back_before_a_stopping_worker_gives_up_gets_its_results(
        private_cluster: embedded.Cluster, tmp_path: Path,
        start_worker: StartWorker) -> None:  # noqa: F811 - the fixture
    """SIGTERM while Postgres is down and the IO process's 12 results wait to be written;
    Postgres back 9 s later, within the 8 s grace plus the 5 s for failing writes: the worker
    writes them before it exits, so every job completes once, in one attempt. (Its write
    backoff, 7.75 s then 15.75 s after the first failure, must not skip the window.)"""
    url = audited(private_cluster.url())
    worker = start_worker(url, "--shutdown-grace", "8s")
    runs, gate = tmp_path / "runs", tmp_path / "gate"
    ids = insert_noted(url, runs, ONE_CLAIM, gate)
    wait_held(url, runs, ids, worker)

    private_cluster.stop()
    gate.touch()
    wait_until(lambda: count(runs, "end") == ONE_CLAIM, 30, "12 ended during the outage", worker)
    wait_until(lambda: "database connection for results lost" in worker.output(), 30,
               "the results' first write refused", worker)
    worker.signal(signal.SIGTERM)
    time.sleep(9)  # past the grace, not past the 5 s after it
    assert worker.alive(), "gave up before its grace and the 5 s"
    private_cluster.ensure_running()
    wait_until(lambda: not worker.alive(), 5 + 10, "the worker to exit")
    assert worker.popen.returncode == 0

    final = rows(url, ids)  # as the worker left them: no other worker, no reaper
    assert {r[0] for r in final.values()} == {"complete"}, Counter(r[0] for r in final.values())
    assert_each_ended_once(url, ids, final, runs, worker)
    assert {r[1] for r in final.values()} == {1}


def test_failover_to_a_promoted_standby_with_io_jobs_running(
        template: Template, tmp_path: Path,  # noqa: F811 - the fixture
        start_worker: StartWorker) -> None:  # noqa: F811 - the fixture
    """The primary is killed (synchronous standby) while the IO process runs 10 jobs and holds
    2 ahead; the standby is promoted: the worker reconnects through the multi-host URL, the
    outcomes reach the new primary, and every job completes once in one attempt."""
    with replicated_pair(template, True) as pair:
        audit_on = pair.url  # the template carries the audit trigger already
        worker = start_worker(audit_on)
        runs, gate = tmp_path / "runs", tmp_path / "gate"
        ids = insert_noted(audit_on, runs, 20, gate)
        wait_held(audit_on, runs, ids, worker)

        pair.primary.kill()
        gate.touch()
        wait_until(lambda: count(runs, "end") == ONE_CLAIM, 30, "12 ended with no primary",
                   worker)
        wait_outage_seen(worker)
        pair.standby.promote()
        final = wait_complete(audit_on, ids, worker)
        assert_each_ended_once(audit_on, ids, final, runs, worker)
        assert {r[1] for r in final.values()} == {1}, final
        wait_until(lambda: "LISTEN connection restored" in worker.output(), 30,
                   "listening on the new primary", worker)
        assert_claims_new_jobs(audit_on, runs, worker)
        worker.stop()  # before the pair goes away under it
