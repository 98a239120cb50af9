"""An IO process's event loop in-process (no database, no supervisor): many jobs at once,
progress in batches, cancellation of one job among others, plain handlers in threads."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

from bgjobs.core.jobs import Completion, Failure
from bgjobs.tasks.registry import Task
from bgjobs.worker import protocol
from bgjobs.worker.io_child import IoChild


class FakeConn:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send(self, msg: Any) -> None:
        self.sent.append(msg)


async def wait_a_bit(ctx: Any) -> Any:
    ctx.progress(0, 1, stage="waiting")
    await asyncio.sleep(ctx.params.get("seconds", 0.02))
    return {"id": str(ctx.job_id)}


async def flaky(ctx: Any) -> Any:
    await asyncio.sleep(0)
    raise ConnectionError("down")


def in_a_thread(ctx: Any) -> Any:
    ctx.progress(1, 2)
    time.sleep(0.02)
    return {"thread": threading.current_thread().name}


TASKS = {
    "wait": Task("wait", wait_a_bit, open_params=True, concurrency=50),
    "flaky": Task("flaky", flaky, retry_delay=1.0),
    "threaded": Task("threaded", in_a_thread, concurrency=5),
}


def spec(job_type: str, **params: Any) -> protocol.JobSpec:
    return protocol.JobSpec(uuid.uuid4(), job_type, params, 1, None, "host:1")


def run(scenario: Any) -> list[Any]:
    loop = asyncio.new_event_loop()
    conn = FakeConn()
    child = IoChild(conn, TASKS, 0.1, loop)  # type: ignore[arg-type]
    try:
        loop.run_until_complete(scenario(child))
    finally:
        child.threads.shutdown()
        loop.close()
    return conn.sent


def outcomes(sent: list[Any]) -> dict[uuid.UUID, Any]:
    out: dict[uuid.UUID, Any] = {}
    for msg in sent:
        if isinstance(msg, protocol.Done):
            out.update({c.attempt.job_id: c for c in msg.finished})
        elif isinstance(msg, Failure | protocol.Cancelled):
            out[msg[0].job_id if isinstance(msg, Failure) else msg.job_id] = msg
    return out


def test_many_jobs_run_at_once_and_their_progress_goes_in_one_message():
    jobs = [spec("wait", seconds=0.05) for _ in range(50)]

    async def scenario(child: IoChild) -> None:
        child.handle(protocol.Jobs(jobs))
        start = time.monotonic()
        while len(outcomes(child.conn.sent)) < 50:  # type: ignore[attr-defined]
            await asyncio.sleep(0.01)
        assert time.monotonic() - start < 1.0  # 50 x 0.05 s one after another would be 2.5 s

    sent = run(scenario)
    reports = [m for m in sent if isinstance(m, protocol.ProgressMany)]
    assert len(reports) == 1 and len(reports[0].updates) == 50
    assert sent.index(reports[0]) < min(i for i, m in enumerate(sent)
                                        if isinstance(m, protocol.Done))
    done = outcomes(sent)
    assert all(isinstance(done[j.job_id], Completion) for j in jobs)
    assert len([m for m in sent if isinstance(m, protocol.Done)]) <= 3  # batched


def test_cancelling_one_job_cancels_its_coroutine_and_no_other():
    slow, other = spec("wait", seconds=10.0), spec("wait", seconds=0.05)

    async def scenario(child: IoChild) -> None:
        child.handle(protocol.Jobs([slow, other]))
        await asyncio.sleep(0.01)
        child.handle(protocol.Cancel(slow.job_id))
        child.handle(protocol.Cancel(uuid.uuid4()))  # not ours (any more): nothing to say
        while len(outcomes(child.conn.sent)) < 2:  # type: ignore[attr-defined]
            await asyncio.sleep(0.01)

    done = outcomes(run(scenario))
    assert isinstance(done[slow.job_id], protocol.Cancelled)
    assert done[slow.job_id].duration < 1.0
    assert isinstance(done[other.job_id], Completion)
    assert len(done) == 2


def test_an_error_fails_its_job_retryably_and_a_plain_handler_runs_in_a_thread():
    bad, plain = spec("flaky"), spec("threaded")

    async def scenario(child: IoChild) -> None:
        child.handle(protocol.Jobs([bad, plain]))
        while len(outcomes(child.conn.sent)) < 2:  # type: ignore[attr-defined]
            await asyncio.sleep(0.01)

    sent = run(scenario)
    done = outcomes(sent)
    failure = done[bad.job_id]
    assert isinstance(failure, Failure) and failure.retryable
    assert failure.error == {"error": "ConnectionError", "message": "down"}
    completion = done[plain.job_id]
    assert completion.result["thread"].startswith("job")
    # Its report came through the loop: sent before the result, or with it.
    reported = [u for m in sent if isinstance(m, protocol.ProgressMany) for u in m.updates]
    assert reported == [protocol.Progress(plain.job_id, {"current": 1, "total": 2})] or \
        completion.progress == {"current": 1, "total": 2}


def test_drop_gives_back_nothing_since_every_job_has_started():
    async def scenario(child: IoChild) -> None:
        child.handle(protocol.Jobs([spec("wait", seconds=0.0)]))
        child.handle(protocol.Drop())
        await asyncio.sleep(0.05)

    sent = run(scenario)
    assert protocol.Dropped([]) in sent


def test_jobs_handed_beyond_the_concurrency_wait_and_start_in_order_as_others_end():
    first = [spec("threaded") for _ in range(5)]
    waiting = [spec("threaded") for _ in range(3)]
    starts: list[uuid.UUID] = []

    async def scenario(child: IoChild) -> None:
        child.handle(protocol.Jobs(first + waiting))
        starts.extend(child.running)
        assert [s.job_id for s in child.queued["threaded"]] == [j.job_id for j in waiting]
        child.handle(protocol.Cancel(waiting[1].job_id))  # not started: answered at once
        while len(outcomes(child.conn.sent)) < 8:  # type: ignore[attr-defined]
            await asyncio.sleep(0.01)

    sent = run(scenario)
    assert starts == [j.job_id for j in first]  # 5 at once, the concurrency of "threaded"
    done = outcomes(sent)
    assert done[waiting[1].job_id] == protocol.Cancelled(waiting[1].job_id, None)
    assert all(isinstance(done[j.job_id], Completion) for j in first + waiting[::2])


def test_drop_gives_back_the_jobs_not_started():
    jobs = [spec("threaded", seconds=0.0) for _ in range(7)]

    async def scenario(child: IoChild) -> None:
        child.handle(protocol.Jobs(jobs))
        child.handle(protocol.Drop())
        await asyncio.sleep(0.1)

    sent = run(scenario)
    assert protocol.Dropped([j.job_id for j in jobs[5:]]) in sent
    assert set(outcomes(sent)) == {j.job_id for j in jobs[:5]}
