"""Messages between a supervisor and its children: small pickled tuples, tagged by kind.

Supervisor -> child: (JOBS, [JobSpec]), (CANCEL, job_id), (DROP,).
Child -> supervisor: (HELLO, pid, task names), (PROGRESS, job_id, state),
(DONE, [Done]), (FAILED, job_id, error, retryable, delay_s, traceback, duration_s, progress),
(CANCELLED, job_id, duration_s or None if it never started), (DROPPED, [job_id]).
"""

from __future__ import annotations

from typing import Any

JOBS = "jobs"
CANCEL = "cancel"
DROP = "drop"

HELLO = "hello"
PROGRESS = "progress"
DONE = "done"
FAILED = "failed"
CANCELLED = "cancelled"
DROPPED = "dropped"

#: (job id, job type, params, attempt number)
JobSpec = tuple[str, str, dict[str, Any], int]
#: (job id, result, final progress not yet written or None, duration in seconds)
Done = tuple[str, Any, "dict[str, Any] | None", float]
