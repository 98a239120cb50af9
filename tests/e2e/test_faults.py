"""The fault suite: real API, events and worker processes on a durable Postgres of their own,
with workers killed, a supervisor frozen past its lease, Postgres stopped under load, every
bgjobs backend terminated, and Postgres crashed. After each fault:

- every job the API accepted (answered 202) is in the table: no committed job is lost;
- every one of them reached a terminal state exactly once (an audit trigger counts the
  transitions into complete/error/cancelled), and no worker logged finishing one twice;
- every SSE client watching one of them ended at the row's final state (status and version).

Submissions retry 5xx answers and lost connections with the same Idempotency-Key, as a client
should, so a retry never makes a second job. Recovery times are written to
artifacts/fault-recovery.json (see docs/operations.md).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from bgjobs.core import embedded
from bgjobs.core.db import make_pool
from bgjobs.core.store import Store
from tests.conftest import throwaway_cluster, url_env
from tests.e2e.test_events_service import Reader
from tests.procs import BGJOBS, ROOT, Proc, free_port, wait_until

FINISHED = ("complete", "error", "cancelled")
# Short enough for the tests; test_postgres_down_longer_than_the_lease stops Postgres for longer.
LEASE = "10s"
LEASE_SECONDS = 10
RECOVERY: dict[str, float] = {}  # what each fault cost, in seconds (written at the end)

AUDIT = """
CREATE TABLE fault_audit (job_id uuid, status text, attempts int,
                          at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION fault_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO fault_audit (job_id, status, attempts) VALUES (NEW.id, NEW.status, NEW.attempts);
    RETURN NULL;
END $$;
CREATE TRIGGER fault_audit AFTER UPDATE ON background_jobs FOR EACH ROW
    WHEN (NEW.status IN ('complete', 'error', 'cancelled')
          AND OLD.status NOT IN ('complete', 'error', 'cancelled'))
    EXECUTE FUNCTION fault_audit();
"""


@dataclass
class Stack:
    cluster: embedded.Cluster
    api: str
    events: str
    token: str
    env: dict[str, str]
    tmp: Path
    procs: dict[str, Proc] = field(default_factory=dict)
    workers: list[Proc] = field(default_factory=list)
    retired: list[Proc] = field(default_factory=list)  # killed workers, for their logs
    poll_interval: str = "1s"  # the workers' fallback poll

    @property
    def url(self) -> str:
        return self.cluster.url()

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def start_worker(self) -> Proc:
        n = len(self.workers) + len(self.retired)
        proc = Proc([BGJOBS, "worker", "--concurrency", "2", "--lease", LEASE,
                     "--poll-interval", self.poll_interval], self.env, self.tmp / f"worker{n}.log")
        self.workers.append(proc)
        wait_until(lambda: "worker processes ready" in proc.output(), 60, "workers ready", proc)
        return proc

    def retire(self, proc: Proc) -> None:
        self.workers.remove(proc)
        self.retired.append(proc)

    def worker_logs(self) -> str:
        return "".join(p.output() for p in (*self.workers, *self.retired))

    def sql(self, query: str, args: Any = None) -> list[tuple]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            cur = conn.execute(query, args)
            return cur.fetchall() if cur.description else []


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("faults")
    with throwaway_cluster() as cluster:
        with psycopg.connect(cluster.url(), autocommit=True) as conn:
            conn.execute(AUDIT)
        pool = make_pool(cluster.url(), min_size=1, max_size=1, open_wait=True)
        try:
            _, token = Store(pool).create_user("faulty")
        finally:
            pool.close()
        api, events = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        env = {**url_env(cluster.url()), "BGJOBS_API_BIND": api, "BGJOBS_EVENTS_BIND": events,
               "BGJOBS_API_WORKERS": "2", "BGJOBS_API_THREADS": "4",
               "BGJOBS_SECRET_KEY": "faults", "BGJOBS_TASK_MODULES": "tests.task_fixtures"}
        stack = Stack(cluster, f"http://{api}", f"http://{events}", token, env, tmp)
        try:
            for name, health in [("api", f"{stack.api}/healthz"),
                                 ("events", f"{stack.events}/events/healthz")]:
                proc = stack.procs[name] = Proc([BGJOBS, name], env, tmp / f"{name}.log")
                wait_until(lambda h=health: httpx.get(h, timeout=5).status_code == 200, 60,
                           f"{name} up", proc)
            for _ in range(2):
                stack.start_worker()
            yield stack
        finally:
            for proc in (*stack.procs.values(), *stack.workers, *stack.retired):
                proc.stop()
            artifacts = ROOT / "artifacts"
            artifacts.mkdir(exist_ok=True)
            (artifacts / "fault-recovery.json").write_text(json.dumps(RECOVERY, indent=2))


# Clients -----------------------------------------------------------------------------------


@dataclass
class Client:
    """Jobs submitted through the API and watched through the events service."""

    stack: Stack
    name: str
    accepted: list[str] = field(default_factory=list)
    readers: dict[str, Reader] = field(default_factory=dict)
    refusals: Counter = field(default_factory=Counter)  # 5xx and lost connections retried
    lock: threading.Lock = field(default_factory=threading.Lock)
    job_type: str = "slow"  # or another type taking slow's params (seconds, step)
    params: dict[str, Any] = field(default_factory=dict)  # more params for each job

    def submit(self, n: int, seconds: float = 1.0) -> str:
        """POST a slow job until the API accepts it (same Idempotency-Key each try)."""
        body = {"type": self.job_type,
                "params": {"seconds": seconds, "step": 0.05, **self.params}}
        headers = {**self.stack.auth, "Idempotency-Key": f"{self.name}-{n}"}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                r = httpx.post(f"{self.stack.api}/api/jobs", json=body, headers=headers,
                               timeout=30)
            except httpx.TransportError as exc:
                self._refused(type(exc).__name__)
            else:
                if r.status_code == 202:
                    job_id = r.json()["id"]
                    with self.lock:
                        self.accepted.append(job_id)
                    self.watch(job_id)
                    return job_id
                assert r.status_code in (502, 503), r.text  # an outage: retry, like a client
                self._refused(str(r.status_code))
            time.sleep(0.2)
        raise AssertionError(f"job {self.name}-{n} never accepted: {self.refusals}")

    def watch(self, job_id: str) -> None:
        """An SSE client on the job (opened again while the events service answers 503)."""
        deadline = time.monotonic() + 120
        while True:
            reader = Reader(f"{self.stack.events}/events/jobs/{job_id}", self.stack.auth)
            try:
                wait_until(lambda r=reader: r.status is not None or r.ended.is_set(), 30,
                           "the stream's status")
            finally:
                if reader.status != 200:
                    reader.close()
            if reader.status == 200:
                with self.lock:
                    self.readers[job_id] = reader
                return
            # Accepted, so committed: a 404 means the database lost it.
            assert reader.status != 404, f"job {job_id} was accepted (202), then lost (404)"
            assert time.monotonic() < deadline, f"no stream on {job_id}: {reader.status}"
            time.sleep(0.2)

    def submit_many(self, count: int, threads: int = 3, seconds: float = 1.0) -> None:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda n: self.submit(n, seconds), range(count)))

    def _refused(self, why: str) -> None:
        with self.lock:
            self.refusals[why] += 1


def rows(stack: Stack, ids: list[str]) -> dict[str, tuple[str, int, int, Any]]:
    return {str(r[0]): r[1:] for r in stack.sql(
        "SELECT id, status, version, attempts, result FROM background_jobs "
        "WHERE id = ANY(%s::uuid[])", [ids])}


def settle(stack: Stack, ids: list[str], timeout: float = 120) -> float:
    """Wait until every job is finished; the seconds it took."""
    start = time.monotonic()
    wait_until(lambda: all(r[0] in FINISHED for r in rows(stack, ids).values()), timeout,
               f"{len(ids)} jobs finished")
    return time.monotonic() - start


@pytest.fixture
def clients() -> Iterator[Callable[[Stack, str], Client]]:
    """Makes Clients; hangs up every stream they still hold at the end, passed or not."""
    made: list[Client] = []

    def make(stack: Stack, name: str) -> Client:
        made.append(Client(stack, name))
        return made[-1]

    yield make
    for client in made:
        for reader in client.readers.values():
            reader.close()


def check(stack: Stack, client: Client) -> None:
    """The three promises of the module's docstring, for every job the client submitted."""
    ids = client.accepted
    assert ids, "nothing was submitted"
    settle(stack, ids)
    final = rows(stack, ids)
    assert set(final) == set(ids), f"accepted jobs lost: {set(ids) - set(final)}"
    assert {r[0] for r in final.values()} == {"complete"}, final
    audit = Counter(str(r[0]) for r in stack.sql(
        "SELECT job_id FROM fault_audit WHERE job_id = ANY(%s::uuid[])", [ids]))
    assert all(audit[i] == 1 for i in ids), {i: audit[i] for i in ids if audit[i] != 1}
    logs = stack.worker_logs()
    twice = [i for i in ids if logs.count(f"finished job {i} (") > 1]
    assert not twice, f"finished twice (a committed completion lost?): {twice}"
    for job_id, reader in client.readers.items():
        events = reader.join(60)
        last = events[-1]["data"]
        status, version = final[job_id][:2]
        assert (last["status"], last["version"]) == (status, version), (job_id, events[-3:])


def running_on(stack: Stack, ids: list[str]) -> list[tuple[str, int, int]]:
    """(job id, supervisor pid, handler pid) of the jobs running with a handler now."""
    found = []
    for job_id, worker_id, progress in stack.sql(
            "SELECT id, worker_id, progress FROM background_jobs WHERE id = ANY(%s::uuid[]) "
            "AND status = 'running' AND progress ? 'pid'", [ids]):
        found.append((str(job_id), int(worker_id.rsplit(":", 1)[1]), progress["pid"]))
    return found


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    return wait_until(predicate, timeout, what)


# Faults ------------------------------------------------------------------------------------


def test_kill_9_of_worker_processes_and_of_a_supervisor(stack: Stack, clients) -> None:
    client = clients(stack, "kill9")
    client.submit_many(12, seconds=3.0)

    # A handler's process dies (the OOM killer, a segfault): its job is retried.
    job_id, _, child = wait_for(lambda: running_on(stack, client.accepted), "a running job")[0]
    os.kill(child, signal.SIGKILL)
    wait_for(lambda: "exited unexpectedly" in stack.worker_logs(), "the crash noticed")
    # A whole supervisor dies: its children die with it, and its jobs are reaped after the
    # lease and run by the others.
    busy = wait_for(lambda: [r for r in running_on(stack, client.accepted)
                             if any(w.pid == r[1] for w in stack.workers)], "a busy supervisor")
    victim = next(w for w in stack.workers if w.pid == busy[0][1])
    killed_at = time.monotonic()
    os.kill(victim.pid, signal.SIGKILL)
    stack.retire(victim)
    settle(stack, [r[0] for r in busy])
    RECOVERY["kill -9 supervisor: its running jobs done elsewhere"] = (
        time.monotonic() - killed_at)
    stack.start_worker()
    check(stack, client)
    assert any(f"reaped job {r[0]}" in stack.worker_logs() for r in busy)


def test_a_supervisor_frozen_past_its_lease_is_fenced_out(stack: Stack, clients) -> None:
    client = clients(stack, "frozen")
    job_id = client.submit(0, seconds=6.0)
    _, pid, _ = wait_for(lambda: running_on(stack, [job_id]), "the job running")[0]
    frozen = next(w for w in stack.workers if w.pid == pid)
    frozen.signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        # Its heartbeats stop: the job is reaped after the lease and runs elsewhere, to the end.
        done = wait_for(lambda: (r := rows(stack, [job_id])[job_id])[0] == "complete" and r,
                        "the job completed by another worker", 90)
        RECOVERY["SIGSTOP supervisor: its job completed elsewhere"] = (
            time.monotonic() - stopped_at)
        assert done[2] == 2 and done[3]["attempt"] == 2, done
    finally:
        frozen.signal(signal.SIGCONT)
    # Woken, it still holds attempt 1: whatever it writes about the job is refused.
    wait_for(lambda: f"job {job_id} (slow, attempt 1/3)" in frozen.output()
             and ("no longer ours" in frozen.output() or "taken back" in frozen.output()),
             "the frozen worker's late write refused")
    check(stack, client)
    assert rows(stack, [job_id])[job_id][3]["attempt"] == 2


def test_postgres_stopped_under_api_load(stack: Stack, clients) -> None:
    client = clients(stack, "pgstop")
    submitting = threading.Thread(target=client.submit_many, args=(24,),
                                  kwargs={"threads": 4, "seconds": 0.5})
    submitting.start()
    wait_for(lambda: len(client.accepted) >= 6, "some jobs accepted")
    stack.cluster.stop()
    wait_for(lambda: client.refusals, "the clients to see the outage")
    time.sleep(2)  # the outage lasts a little while under load
    stack.cluster.ensure_running()
    back = time.monotonic()
    wait_for(lambda: httpx.get(f"{stack.api}/healthz", timeout=30).status_code == 200,
             "the API back")
    RECOVERY["Postgres stopped: API answers again after its restart"] = time.monotonic() - back
    submitting.join(180)
    assert not submitting.is_alive()
    settle(stack, client.accepted)
    RECOVERY["Postgres stopped: all jobs done after its restart"] = time.monotonic() - back
    assert client.refusals["503"] > 0, client.refusals  # answered 503, not hung
    check(stack, client)


def test_postgres_down_longer_than_the_lease_reaps_no_live_job(stack: Stack, clients) -> None:
    """Nobody can heartbeat while Postgres is down: after it is back, every live worker keeps
    its jobs (011_reaper_outages.sql) instead of the first one back reaping them all."""
    client = clients(stack, "long-outage")
    client.submit_many(4, seconds=LEASE_SECONDS + 8.0)  # still running when Postgres is back
    wait_for(lambda: len(running_on(stack, client.accepted)) >= 2, "jobs running")
    stack.cluster.stop()
    time.sleep(LEASE_SECONDS + 3)  # every heartbeat is now older than the lease
    stack.cluster.ensure_running()
    back = time.monotonic()
    # The first reaper back, before the workers have reconnected and heartbeaten.
    assert stack.sql("SELECT id FROM bgjobs_reap(now(), 'another-machine:1')") == []
    settle(stack, client.accepted)
    RECOVERY["Postgres down longer than the lease: all jobs done after its restart"] = (
        time.monotonic() - back)
    check(stack, client)
    logs = stack.worker_logs()
    assert not [i for i in client.accepted if f"reaped job {i}" in logs], logs[-3000:]
    assert {r[2] for r in rows(stack, client.accepted).values()} == {1}  # one attempt each


def test_every_bgjobs_backend_terminated(stack: Stack, clients) -> None:
    client = clients(stack, "terminate")
    client.submit_many(16, seconds=1.0)
    wait_for(lambda: running_on(stack, client.accepted), "jobs running")
    for _ in range(3):
        killed = stack.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE application_name LIKE 'bgjobs%%' AND pid <> pg_backend_pid()")
        assert killed, "no bgjobs connection to terminate"
        time.sleep(0.5)
    start = time.monotonic()
    settle(stack, client.accepted)
    RECOVERY["pg_terminate_backend of every bgjobs connection: jobs done after"] = (
        time.monotonic() - start)
    check(stack, client)


def test_postgres_crash_loses_no_committed_work(stack: Stack, clients) -> None:
    client = clients(stack, "crash")
    submitting = threading.Thread(target=client.submit_many, args=(20,),
                                  kwargs={"threads": 4, "seconds": 0.5})
    submitting.start()
    wait_for(lambda: len(client.accepted) >= 8 and any(
        r[0] == "complete" for r in rows(stack, client.accepted).values()),
        "jobs accepted and some finished")
    stack.cluster.stop(mode="immediate")  # no checkpoint, no goodbye: recovery replays the WAL
    stack.cluster.ensure_running()
    back = time.monotonic()
    wait_for(lambda: httpx.get(f"{stack.api}/healthz", timeout=30).status_code == 200,
             "the API back")
    RECOVERY["Postgres crash (-m immediate): API answers again after its restart"] = (
        time.monotonic() - back)
    submitting.join(180)
    assert not submitting.is_alive()
    check(stack, client)
    # A job a worker logged as finished before the crash was not run again.
    logs = stack.worker_logs()
    for job_id, (_, _, attempts, _) in rows(stack, client.accepted).items():
        if f"finished job {job_id} (" in logs:
            assert f"finished job {job_id} (slow, attempt {attempts}/" in logs
