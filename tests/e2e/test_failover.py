"""Failover: a primary and a streaming standby (Debian's Postgres 15: initdb, pg_basebackup -R,
pg_ctl promote), the API, the events service and workers on one multi-host URL with
``target_session_attrs=read-write``. The primary is killed (SIGKILL to every one of its
processes) under load: producers posting jobs, jobs running, streams open. The standby is then
promoted, as a DBA or a failover manager would.

- Synchronous replication: every job answered 202 is there afterwards and ends once (the fault
  suite's ``check``); each ran as many times as its row's attempts says; while there is no
  primary the API answers 503 JSON, and it answers again by itself after the promotion; the
  workers' and the events service's LISTEN connections come back by themselves.
- Asynchronous replication: whatever the standby had not received is lost (counted, see
  docs/operations.md "Failover"); what survived stays consistent: nothing stuck, nothing ended
  twice.

The measured times go to artifacts/failover-recovery.json.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest

from bgjobs.core import embedded, migrate
from bgjobs.core.db import make_pool
from bgjobs.core.store import Store
from tests.conftest import url_env
from tests.e2e.test_faults import AUDIT, FINISHED, LEASE_SECONDS, Client, Stack, check, rows
from tests.procs import BGJOBS, ROOT, Proc, free_port, wait_until

log = logging.getLogger(__name__)

PG_BIN = Path("/usr/lib/postgresql/15/bin")  # Debian's postgresql-15 (.ci/run installs it)
#: The workers' fallback poll: far longer than the wait for a job enqueued after the failover,
#: which therefore can only have been woken by a notification on the new primary.
POLL = 60
RECOVERY: dict[str, list[float]] = {}  # per figure, one entry per run
STANDBY = "standby1"  # its application_name, which synchronous_standby_names names


def pg15() -> None:
    if all((PG_BIN / tool).exists() for tool in ("initdb", "pg_basebackup", "pg_ctl")):
        return
    message = f"no Postgres 15 server binaries in {PG_BIN} (apt-get install postgresql-15; " \
              ".ci/run does it in CI)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


class Node(embedded.Cluster):
    """One Postgres of the pair, in a folder of its own, owned by the cluster's system user
    under root (as every embedded cluster)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, PG_BIN)

    def restore(self, pgdata: Path) -> None:
        """Make this node a copy of the stopped cluster ``pgdata``, on a port of its own."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "pg.port").write_text(str(free_port()))
        shutil.copytree(pgdata, self.pgdata)
        with open(self.pgdata / "postgresql.auto.conf", "a") as conf:
            conf.write(f"port = {self.port}\n")
        self._give_to_owner(self.pgdata)

    def clone(self, primary: Node, *, name: str) -> None:
        """Make this node a streaming standby of ``primary``: a base backup with -R (which
        writes primary_conninfo and standby.signal), on a port of its own."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "pg.port").write_text(str(free_port()))
        self.pgdata.mkdir(mode=0o700)
        self._give_to_owner(self.pgdata)
        self._run(["pg_basebackup", "-d", f"host=127.0.0.1 port={primary.port} user=postgres "
                   f"application_name={name}", "-D", str(self.pgdata), "-R", "-X", "stream",
                   "-c", "fast"])
        with open(self.pgdata / "postgresql.auto.conf", "a") as conf:
            # The primary's postgresql.conf came with the backup: its port is not ours; and a
            # promoted standby must not wait for a synchronous standby of its own (it has none).
            conf.write(f"port = {self.port}\nsynchronous_standby_names = ''\n")
        self._give_to_owner(self.pgdata)

    def cut_off(self) -> None:
        """Stop receiving WAL (an empty primary_conninfo stops the WAL receiver): a standby
        that lags behind its primary by everything committed from now on."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET primary_conninfo = ''")
            conn.execute("SELECT pg_reload_conf()")
            wait_until(lambda: conn.execute("SELECT count(*) FROM pg_stat_wal_receiver"
                                            ).fetchone() == (0,), 30, "the WAL receiver gone")

    def promote(self) -> None:
        self._run(["pg_ctl", "-D", str(self.pgdata), "-w", "-t", "60", "promote"])

    def kill(self) -> None:
        """SIGKILL to the postmaster and every process it started: the machine is gone, nothing
        is flushed or sent after this."""
        postmaster = int((self.pgdata / "postmaster.pid").read_text().split()[0])
        children = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
                    and _parent(p) == postmaster]
        for pid in (postmaster, *children):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _parent(proc: Path) -> int | None:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


@dataclass
class Pair:
    primary: Node
    standby: Node
    url: str  # both, libpq's multi-host form, read-write only


@dataclass(frozen=True)
class Template:
    pgdata: Path  # a stopped cluster, migrated, with the fault suite's audit and one user
    token: str  # that user's


@pytest.fixture(scope="module")
def template() -> Iterator[Template]:
    """One migrated cluster that each test's primary starts as a copy of (initdb and the
    migrations once, not once per test)."""
    pg15()
    root = Path(tempfile.mkdtemp(prefix="bgjobs-test-failover-"))
    node = Node(root)
    try:
        node.ensure_running()
        with psycopg.connect(node.url()) as conn:
            migrate.apply(conn)
        with psycopg.connect(node.url(), autocommit=True) as conn:
            conn.execute(AUDIT)
        pool = make_pool(node.url(), min_size=1, max_size=1, open_wait=True)
        try:
            _, token = Store(pool).create_user("failover")
        finally:
            pool.close()
        node.stop()
        yield Template(node.pgdata, token)
    finally:
        node.stop()
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def replicated_pair(template: Template, synchronous: bool) -> Iterator[Pair]:
    """A primary (a copy of the template) and its streaming standby; with ``synchronous``, a
    commit returns only once the standby has it (synchronous_standby_names,
    synchronous_commit=on)."""
    # Not under pytest's temp root, which a new pytest session closes to 0700 (see conftest).
    root = Path(tempfile.mkdtemp(prefix="bgjobs-test-failover-"))
    primary, standby = Node(root / "primary"), Node(root / "standby")
    try:
        primary.restore(template.pgdata)
        primary.ensure_running()
        standby.clone(primary, name=STANDBY)
        standby.ensure_running()
        with psycopg.connect(primary.url(), autocommit=True) as conn:
            def state() -> tuple | None:
                return conn.execute("SELECT state, sync_state FROM pg_stat_replication "
                                    "WHERE application_name = %s", (STANDBY,)).fetchone()

            wait_until(lambda: state() == ("streaming", "async"), 60, "the standby streaming")
            if synchronous:
                conn.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{STANDBY}'")
                conn.execute("ALTER SYSTEM SET synchronous_commit = 'on'")
                conn.execute("SELECT pg_reload_conf()")
                wait_until(lambda: state() == ("streaming", "sync"), 30, "the standby in sync")
        url = (f"host=127.0.0.1,127.0.0.1 port={primary.port},{standby.port} user=postgres "
               f"dbname={embedded.DATABASE} target_session_attrs=read-write")
        yield Pair(primary, standby, url)
    finally:
        for node in (standby, primary):
            node.stop(mode="immediate")
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class FailoverStack(Stack):
    """The fault suite's Stack whose own queries go to whichever node is the primary."""

    pair: Pair | None = None

    @property
    def url(self) -> str:
        assert self.pair is not None
        return self.pair.url


@contextmanager
def failover_stack(template: Template, synchronous: bool, tmp: Path,
                   workers: int = 2) -> Iterator[FailoverStack]:
    """The API, the events service and ``workers`` workers, all given the pair's multi-host
    URL."""
    with replicated_pair(template, synchronous) as pair:
        token = template.token
        api, events = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        env = {**url_env(pair.url), "BGJOBS_API_BIND": api, "BGJOBS_EVENTS_BIND": events,
               "BGJOBS_API_WORKERS": "2", "BGJOBS_API_THREADS": "4",
               "BGJOBS_SECRET_KEY": "failover", "BGJOBS_TASK_MODULES": "tests.task_fixtures"}
        stack = FailoverStack(pair.primary, f"http://{api}", f"http://{events}", token, env, tmp,
                              poll_interval=f"{POLL}s", pair=pair)
        try:
            health = {"api": f"{stack.api}/healthz", "events": f"{stack.events}/events/healthz"}
            for name in health:  # both start at once
                stack.procs[name] = Proc([BGJOBS, name], env, tmp / f"{name}.log")
            for name, url in health.items():
                wait_until(lambda u=url: httpx.get(u, timeout=5).status_code == 200, 60,
                           f"{name} up", stack.procs[name])
            for _ in range(workers):
                stack.start_worker()
            yield stack
        finally:
            for proc in (*stack.procs.values(), *stack.workers, *stack.retired):
                proc.stop()


@pytest.fixture
def clients() -> Iterator[Callable[..., Client]]:
    """Clients submitting ``slow_logged`` jobs that note each run in ``runs``; every stream
    they still hold is hung up at the end."""
    made: list[Client] = []

    def make(stack: Stack, name: str, runs: Path, cls: type[Client] = Client) -> Client:
        made.append(cls(stack, name, job_type="slow_logged", params={"runs": str(runs)}))
        return made[-1]

    yield make
    for client in made:
        for reader in client.readers.values():
            reader.close()


@pytest.fixture(scope="module", autouse=True)
def _write_recovery_times() -> Iterator[None]:
    yield
    artifacts = ROOT / "artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "failover-recovery.json").write_text(json.dumps(RECOVERY, indent=2))


def measured(what: str, value: float) -> None:
    """A figure for docs/operations.md (seconds unless ``what`` says otherwise)."""
    RECOVERY.setdefault(what, []).append(round(value, 3))
    log.warning("failover: %s: %s", what, round(value, 3))


class Producers:
    """Threads posting ``seconds``-long jobs, each about one a ``pace`` seconds (a 503 or a
    lost connection is retried, see Client.submit), until ``stop``."""

    def __init__(self, client: Client, threads: int, seconds: float, pace: float) -> None:
        self.client, self.seconds, self.pace = client, seconds, pace
        self.stopping = threading.Event()
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._run, args=(n, threads), daemon=True)
                        for n in range(threads)]
        for thread in self.threads:
            thread.start()

    def _run(self, n: int, step: int) -> None:
        try:
            while not self.stopping.is_set():
                self.client.submit(n, self.seconds)
                n += step
                self.stopping.wait(self.pace)
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.errors.append(exc)

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(180)
            assert not thread.is_alive(), "a producer never got its job accepted"
        assert not self.errors, self.errors


def under_load(stack: Stack, client: Client, threads: int = 4, seconds: float = 2.0,
               pace: float = 1.0) -> Producers:
    """Producers started; returns once some jobs run and some are done."""
    producers = Producers(client, threads, seconds, pace)
    wait_until(lambda: Counter(r[0] for r in rows(stack, client.accepted).values()).keys()
               >= {"running", "complete"} or producers.errors, 90,
               "jobs accepted, running and finished")
    return producers


def answers(stack: Stack, job_id: str) -> httpx.Response:
    return httpx.get(f"{stack.api}/api/jobs/{job_id}", headers=stack.auth, timeout=30)


def events_health(stack: Stack) -> int:
    return httpx.get(f"{stack.events}/events/healthz", timeout=30).status_code


def fail_over(stack: FailoverStack, client: Client, mode: str) -> set[str]:
    """Kill the primary; check the API's 503 while there is none; promote the standby; time
    how long the API and the events service take to answer again. Returns the jobs whose
    streams were open through the outage."""
    probe_job = client.accepted[0]
    assert stack.pair is not None
    stack.pair.primary.kill()
    killed = time.monotonic()
    refused = wait_until(lambda: (r := answers(stack, probe_job)).status_code == 503 and r, 60,
                         "the API's 503 with no primary")
    assert refused.json()["error"]["code"] == "database_unavailable", refused.text
    assert refused.headers["content-type"].startswith("application/json")
    assert refused.headers["Retry-After"]
    wait_until(lambda: events_health(stack) == 503, 60, "the events service to notice")
    with client.lock:  # nothing reaches a stream from the old primary any more
        through = {i for i, reader in client.readers.items() if not reader.ended.is_set()}
    measured(f"{mode}: kill -9 to both services answering 503", time.monotonic() - killed)
    stack.pair.standby.promote()
    promoted = time.monotonic()
    wait_until(lambda: answers(stack, probe_job).status_code in (200, 404), 60,
               "the API answering after the promotion", stack.procs["api"])
    measured(f"{mode}: promotion to the API answering", time.monotonic() - promoted)
    wait_until(lambda: events_health(stack) == 200, 60, "the events service listening again",
               stack.procs["events"])
    measured(f"{mode}: promotion to the events service listening", time.monotonic() - promoted)
    for worker in stack.workers:
        wait_until(lambda w=worker: "LISTEN connection restored" in w.output(), 60,
                   "each worker listening again", worker)
    measured(f"{mode}: promotion to every worker listening", time.monotonic() - promoted)
    measured(f"{mode}: streams open through the outage", len(through))
    return through


def woken_by_notify(stack: FailoverStack, client: Client) -> None:
    """A job enqueued now, with every worker idle, runs well before any fallback poll: the
    workers LISTEN on the new primary."""
    assert stack.pair is not None
    enqueued = time.monotonic()
    job_id = client.submit(10_000, seconds=0.1)
    wait_until(lambda: rows(stack, [job_id])[job_id][0] == "complete", POLL / 3,
               "the job enqueued after the failover done (woken by NOTIFY)")
    measured("after the failover: enqueue to done, idle workers", time.monotonic() - enqueued)


def replication_lag(stack: FailoverStack, mode: str) -> None:
    """The standby's lag as the primary sees it now (NULL, not measured, when idle)."""
    assert stack.pair is not None
    with psycopg.connect(stack.pair.primary.url(), autocommit=True) as conn:
        lag = conn.execute("SELECT extract(epoch FROM replay_lag)::float8 * 1000 FROM "
                           "pg_stat_replication WHERE application_name = %s",
                           (STANDBY,)).fetchone()
    if lag and lag[0] is not None:
        measured(f"{mode}: replay lag just before the kill, in ms", lag[0])


def hang_up(client: Client) -> None:
    """Close the client's sockets (ended streams stay open for keep-alive), so the events
    service stops at once instead of waiting out its graceful timeout."""
    for reader in client.readers.values():
        reader.close()


def handler_runs(runs: Path) -> Counter:
    return Counter(line.split()[0] for line in runs.read_text().splitlines())


# Tests -------------------------------------------------------------------------------------


def test_synchronous_standby_promoted_under_load_loses_nothing(template: Template,
                                                               tmp_path: Path, clients) -> None:
    runs = tmp_path / "runs"
    with failover_stack(template, True, tmp_path) as stack:
        client = clients(stack, "sync", runs)
        producers = under_load(stack, client, threads=3, seconds=1.5)
        before_kill = list(client.accepted)
        replication_lag(stack, "synchronous")
        assert fail_over(stack, client, "synchronous"), "no stream was open at the kill"
        after = len(client.accepted)
        wait_until(lambda: len(client.accepted) >= after + 3, 60, "jobs accepted after")
        producers.stop()
        assert set(before_kill) <= set(client.accepted)
        check(stack, client)  # none lost, each ended once, streams at the final state
        final = rows(stack, client.accepted)
        ran = handler_runs(runs)
        # No run the table does not count, and no attempt ran twice. An attempt may not have
        # run at all: a claim committed (and replicated) as the primary died, whose answer
        # never reached the worker; the job is taken back after its lease.
        assert all(1 <= ran[i] <= r[2] for i, r in final.items()), (ran, final)
        lines = runs.read_text().splitlines()
        assert len(lines) == len(set(lines)), "an attempt ran twice"
        measured("synchronous: attempts claimed as the primary died, never run",
                 sum(r[2] - ran[i] for i, r in final.items()))
        measured("synchronous: jobs retried (attempts > 1)",
                 sum(r[2] > 1 for r in final.values()))
        woken_by_notify(stack, client)
        hang_up(client)


class LossyClient(Client):
    """A client that accepts that a job answered 202 may be gone after an asynchronous
    failover (its stream's 404)."""

    def watch(self, job_id: str) -> None:
        try:
            super().watch(job_id)
        except AssertionError as exc:
            if "then lost (404)" not in str(exc):
                raise


def completed(stack: Stack, ids: list[str]) -> set[str]:
    return {i for i, r in rows(stack, ids).items() if r[0] == "complete"}


@pytest.mark.parametrize("cut", [True, False], ids=["standby-cut-off", "standby-streaming"])
def test_asynchronous_standby_loses_its_lag_and_stays_consistent(
        template: Template, tmp_path: Path, clients, cut: bool) -> None:
    """The primary dies under load and the asynchronous standby is promoted: what it had not
    received is lost. Streaming on this machine, that is next to nothing (measured); cut off
    from its primary first (as a lagging one would be), it is everything committed since: jobs
    answered 202, claims and completions. One worker, so that nothing is left to another
    worker to clean up: whatever survived must still end, once."""
    runs = tmp_path / "runs"
    mode = "asynchronous, " + ("standby cut off" if cut else "standby streaming")
    with failover_stack(template, False, tmp_path, workers=1) as stack:
        assert stack.pair is not None
        client = clients(stack, "async", runs, LossyClient)
        producers = under_load(stack, client, threads=2, seconds=1.0)
        before_cut = len(client.accepted)
        if cut:
            stack.pair.standby.cut_off()
        after_cut = len(client.accepted)
        done_at_cut = completed(stack, client.accepted)
        wait_until(lambda: len(client.accepted) >= after_cut + 3
                   and completed(stack, client.accepted) - done_at_cut, 60,
                   "jobs accepted and finished after the cut")
        at_kill = len(client.accepted)
        done_after_cut = completed(stack, client.accepted) - done_at_cut
        if not cut:
            replication_lag(stack, mode)
        through = fail_over(stack, client, "asynchronous")
        producers.stop()
        present = rows(stack, client.accepted)
        lost = [i for i in client.accepted if i not in present]
        measured(f"{mode}: jobs answered 202 and lost", len(lost))
        measured(f"{mode}: jobs answered 202 in all", len(client.accepted))
        # Lost: what was committed after the cut and before the kill; nothing else.
        assert set(lost) <= set(client.accepted[before_cut:])
        if cut:
            assert set(client.accepted[after_cut:at_kill]) <= set(lost)
        survived = list(present)
        # Nothing stuck: the completions lost with the primary left rows 'running' for a
        # worker that has long finished them; they are taken back after the lease and run
        # again (at least once: a lost completion means a second run, never a lost job).
        try:
            wait_until(lambda: all(r[0] in FINISHED for r in rows(stack, survived).values()),
                       60 + 3 * LEASE_SECONDS, f"{len(survived)} jobs finished")
        except AssertionError:
            stuck = stack.sql("SELECT id, status, worker_id, attempts, heartbeat_at FROM "
                              "background_jobs WHERE status NOT IN ('complete', 'error', "
                              "'cancelled')")
            raise AssertionError(f"stuck: {stuck}\n{stack.worker_logs()[-3000:]}") from None
        final = rows(stack, survived)
        assert {r[0] for r in final.values()} == {"complete"}, final
        audit = Counter(str(r[0]) for r in stack.sql(
            "SELECT job_id FROM fault_audit WHERE job_id = ANY(%s::uuid[])", [survived]))
        assert all(audit[i] == 1 for i in survived), {i: audit[i] for i in survived}
        # A stream open through the outage ends at the row's final state (the events service
        # sends a row that went back, see server/broadcast.py); one that had ended before may
        # have shown a completion the failover undid.
        ended_undone = 0
        for job_id, reader in client.readers.items():
            last = reader.join(60)[-1]["data"]
            if job_id in final and (last["status"], last["version"]) != final[job_id][:2]:
                assert job_id not in through, (job_id, last, final[job_id])
                ended_undone += 1
        measured(f"{mode}: streams that had ended on an undone state", ended_undone)
        # A completion lost with the primary: the job ran again (at least once, never lost).
        ran = handler_runs(runs)
        assert all(ran[i] >= final[i][2] for i in survived)  # every attempt counted ran
        if cut:  # every completion made after the cut was lost: those jobs ran again
            undone = done_after_cut & set(survived)
            assert all(ran[i] >= 2 for i in undone), {i: ran[i] for i in undone}
        measured(f"{mode}: jobs that ran twice", sum(ran[i] > 1 for i in survived))
        woken_by_notify(stack, client)
        hang_up(client)
