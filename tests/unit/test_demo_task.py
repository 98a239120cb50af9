"""The built-in ``demo`` type in-process: progress step by step, and a failure on request."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import pytest

from bgjobs.tasks import registry
from bgjobs.tasks.context import JobContext, ProgressThrottle


def run(params: dict[str, Any]) -> tuple[Any, list[dict]]:
    task = registry.get("demo")
    sent: list[dict] = []
    throttle = ProgressThrottle(sent.append)
    result = task.handler(JobContext(uuid4(), "demo", task.validate(params), 1, throttle, set()))
    if throttle.unsent():
        sent.append(throttle.unsent())
    return result, sent


def test_demo_counts_to_its_steps():
    result, progress = run({"seconds": 0, "steps": 4})
    assert result == {"steps": 4, "seconds": 0.0}
    assert progress[-1] == {"current": 4, "total": 4, "stage": "counting"}
    assert registry.get("demo").validate({}) == {"seconds": 5.0, "steps": 20, "fail": False}


def test_demo_fails_halfway_when_asked_and_is_not_retried():
    task = registry.get("demo")
    with pytest.raises(registry.NonRetryable, match="step 3 of 4") as failed:
        run({"seconds": 0, "steps": 4, "fail": True})
    assert not task.retryable(failed.value)
