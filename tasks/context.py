"""What a handler receives: its params, a throttled progress reporter and a cancellation check."""

from __future__ import annotations

import time
from collections.abc import Callable, Container
from typing import Any

#: A progress write is due at least this long after the previous one...
MIN_INTERVAL = 1.0
#: ...or sooner when progress moved by this share of ``total``, but never more often than:
MIN_STEP_INTERVAL = 0.1
STEP = 0.01


class JobCancelled(Exception):  # noqa: N818 - reads better at the raise site
    """Raised inside a handler whose job was cancelled or taken back; the worker stops it."""


class ProgressThrottle:
    """Decides which progress states get written: about once a second, or on a >=1% step.

    The state of the last call is always kept so the final one can be written with the result.
    """

    def __init__(self, send: Callable[[dict[str, Any]], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._send = send
        self._clock = clock
        self._last_sent: dict[str, Any] | None = None
        self._last_time = float("-inf")
        self.latest: dict[str, Any] | None = None
        self.writes = 0

    def update(self, state: dict[str, Any]) -> None:
        self.latest = state
        now = self._clock()
        if self._due(state, now - self._last_time):
            self._send(state)
            self._last_sent, self._last_time = state, now
            self.writes += 1

    def unsent(self) -> dict[str, Any] | None:
        """The latest state if it was never written (to send with the result)."""
        return None if self.latest == self._last_sent else self.latest

    def _due(self, state: dict[str, Any], elapsed: float) -> bool:
        last = self._last_sent
        if last is None:
            return True
        if state == last:
            return False
        if elapsed >= MIN_INTERVAL or state.get("stage") != last.get("stage"):
            return True
        total, current, before = state.get("total"), state.get("current"), last.get("current")
        if not isinstance(total, int | float) or not total:
            return False
        if not isinstance(current, int | float) or not isinstance(before, int | float):
            return False
        return elapsed >= MIN_STEP_INTERVAL and abs(current - before) >= STEP * abs(total)


class JobContext:
    """The handler's view of its job (``ctx`` in ``def handler(ctx)``)."""

    def __init__(self, job_id: str, job_type: str, params: dict[str, Any], attempt: int,
                 throttle: ProgressThrottle, cancelled_ids: Container[str],
                 dependencies: dict[str, Any] | None = None) -> None:
        self.job_id = job_id
        self.job_type = job_type
        self.params = params
        self.attempt = attempt
        #: The results of the jobs this one waited for (``after=``), by job id; read with the
        #: claim, so no query per job. {} for a job that waited for none.
        self.dependencies: dict[str, Any] = dependencies or {}
        self._throttle = throttle
        self._cancelled_ids = cancelled_ids

    def progress(self, current: int | float, total: int | float | None = None,
                 stage: str | None = None, **extra: Any) -> None:
        """Report progress as often as you like; raises JobCancelled once the job is cancelled."""
        state: dict[str, Any] = {"current": current, "total": total}
        if stage is not None:
            state["stage"] = stage
        if extra:
            state.update(extra)
        self.check_cancelled()
        self._throttle.update(state)

    def cancelled(self) -> bool:
        """True once the job was cancelled (or taken back): stop as soon as convenient."""
        return self.job_id in self._cancelled_ids

    def check_cancelled(self) -> None:
        """Raise JobCancelled if the job was cancelled; call it in long loops."""
        if self.job_id in self._cancelled_ids:
            raise JobCancelled(self.job_id)
