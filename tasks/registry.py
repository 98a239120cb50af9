"""Job types: register a handler with ``@task(...)``; enqueueing validates params with it.

A host app registers its own types the same way, in a module named by BGJOBS_TASK_MODULES
(comma-separated) so that the API and the workers both import it.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import random
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg

from bgjobs.core.errors import BadDeclaration as BadDeclaration
from bgjobs.core.errors import ConfigError, DatabaseUnavailable, InvalidSchedule, first_line
from bgjobs.core.errors import InvalidParams as InvalidParams
from bgjobs.core.errors import NonRetryable as NonRetryable
from bgjobs.core.errors import UnknownTask as UnknownTask
from bgjobs.core.store_ops import JobTypeRow

if TYPE_CHECKING:
    from bgjobs.core.store import Store

log = logging.getLogger(__name__)

#: Seconds before a job's first retry, unless its task says otherwise.
DEFAULT_RETRY_DELAY = 2.0
#: Jobs of an ``async def`` task one IO process runs at once, unless it says otherwise.
DEFAULT_CONCURRENCY = 100
MAX_CONCURRENCY = 10_000


@dataclass(frozen=True)
class Param:
    """One parameter a task takes: its type, default and bounds."""

    type: type
    default: Any = None
    required: bool = False
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] | None = None

    def check(self, name: str, value: Any) -> Any:
        if self.type is object:
            return value
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, self.type) or (self.type is not bool and isinstance(value, bool)):
            raise InvalidParams(f"{name} must be {_type_name(self.type)}, got {value!r}")
        # A name of its own: isinstance above narrowed ``value`` to object, which has no <.
        checked: Any = value
        if self.min is not None and checked < self.min:
            raise InvalidParams(f"{name} must be at least {self.min}, got {checked!r}")
        if self.max is not None and checked > self.max:
            raise InvalidParams(f"{name} must be at most {self.max}, got {checked!r}")
        if self.choices is not None and checked not in self.choices:
            raise InvalidParams(f"{name} must be one of {list(self.choices)}, got {checked!r}")
        return checked


@dataclass(frozen=True)
class Task:
    name: str
    handler: Callable[..., Any]
    params: dict[str, Param] = field(default_factory=dict)
    exclusive: bool = False
    max_attempts: int = 3
    description: str = ""
    #: Accept params not declared in ``params`` (as they are), instead of rejecting them.
    open_params: bool = False
    #: Seconds before the first retry; each later retry waits twice as long (plus jitter).
    retry_delay: float = DEFAULT_RETRY_DELAY
    #: Exception classes that end the job at once instead of being retried.
    non_retryable: tuple[type[BaseException], ...] = ()
    #: At most this many jobs of the type run at once, across all workers (None: no limit).
    max_running: int | None = None
    #: At most this many jobs of the type start per second, across all workers.
    starts_per_second: float | None = None
    #: A 5-field cron expression: one job of the type (default params) at each tick.
    cron: str | None = None
    #: The time zone ``cron`` is read in (None: BGJOBS_TIMEZONE, default UTC).
    timezone: str | None = None
    #: Jobs of the type one IO process runs at once (None: one per process, unless async).
    concurrency: int | None = None

    @property
    def io_concurrency(self) -> int | None:
        """How many of its jobs share an IO process (None: a process per job, as by default)."""
        if self.concurrency is None and inspect.iscoroutinefunction(self.handler):
            return DEFAULT_CONCURRENCY
        return self.concurrency

    def retryable(self, exc: BaseException) -> bool:
        """Whether a failed attempt with ``exc`` may be retried."""
        return not isinstance(exc, (NonRetryable, *self.non_retryable))

    def delay_before_retry(self, attempt: int) -> float:
        """Seconds before retrying after failed attempt number ``attempt`` (1, 2, ...)."""
        return retry_delay(self.retry_delay, attempt)

    def validate(self, params: Any) -> dict[str, Any]:
        """Checked params with defaults filled in; InvalidParams says what is wrong."""
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise InvalidParams("params must be a JSON object")
        unknown = sorted(set(params) - set(self.params))
        if unknown and not self.open_params:
            raise InvalidParams(f"unknown param(s) for {self.name}: {', '.join(unknown)}")
        out = dict(params) if self.open_params else {}
        for name, spec in self.params.items():
            if name in params:
                out[name] = spec.check(name, params[name])
            elif spec.required:
                raise InvalidParams(f"{name} is required")
            else:
                out[name] = spec.default
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "type": self.name,
            "description": self.description,
            "exclusive": self.exclusive,
            "max_running": self.max_running,
            "starts_per_second": self.starts_per_second,
            "cron": self.cron,
            "params": {
                n: {"type": _type_name(p.type), "default": p.default, "required": p.required,
                    "min": p.min, "max": p.max}
                for n, p in self.params.items()
            },
        }


def retry_delay(base: float, attempt: int) -> float:
    """The one backoff rule: ``base`` doubled per attempt, plus up to 25% jitter."""
    return base * 2 ** (max(1, attempt) - 1) * random.uniform(1.0, 1.25)


_TASKS: dict[str, Task] = {}
_IMPORTED: set[str] = set()


def task(
    name: str,
    *,
    params: dict[str, Param] | None = None,
    exclusive: bool = False,
    max_attempts: int = 3,
    open_params: bool = False,
    retry_delay: float = DEFAULT_RETRY_DELAY,
    non_retryable: tuple[type[BaseException], ...] = (),
    max_running: int | None = None,
    starts_per_second: float | None = None,
    cron: str | None = None,
    timezone: str | None = None,
    concurrency: int | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``handler(ctx)`` as job type ``name``; its return value becomes the result.

    ``max_running`` and ``starts_per_second`` limit the type across all workers; ``cron``
    enqueues one job of it at each tick; ``concurrency`` (or an ``async def`` handler) runs up
    to that many of its jobs at once in one IO process (see docs/tasks.md).
    """
    if not name or len(name) > 50:
        raise BadDeclaration("a task name is 1 to 50 characters (background_jobs.job_type)")
    if max_running is not None and (type(max_running) is not int or max_running < 1):
        raise BadDeclaration(f"max_running must be a whole number of at least 1, "
                             f"got {max_running!r}")
    if starts_per_second is not None and (
            isinstance(starts_per_second, bool) or not isinstance(starts_per_second, int | float)
            or not 0 < starts_per_second < float("inf")):
        raise BadDeclaration(f"starts_per_second must be a number above 0, "
                             f"got {starts_per_second!r}")
    if concurrency is not None and (type(concurrency) is not int
                                    or not 1 <= concurrency <= MAX_CONCURRENCY):
        raise BadDeclaration(f"task {name!r}: concurrency (its jobs one process runs at once) "
                             f"must be a whole number from 1 to {MAX_CONCURRENCY}, "
                             f"got {concurrency!r}")
    if cron is not None:
        from bgjobs.tasks.schedules import check_cron  # only when used

        try:
            check_cron(cron, timezone or "UTC")
        except InvalidSchedule as exc:
            raise BadDeclaration(f"task {name!r}: {exc}") from None
    elif timezone is not None:
        raise BadDeclaration("timezone= goes with cron=")

    def register(handler: Callable[..., Any]) -> Callable[..., Any]:
        existing = _TASKS.get(name)
        if existing is not None and existing.handler is not handler:
            raise BadDeclaration(f"task {name!r} is registered twice: in "
                                 f"{existing.handler.__module__} and {handler.__module__}")
        doc = (handler.__doc__ or "").strip().splitlines()
        _TASKS[name] = Task(name, handler, dict(params or {}), exclusive, max_attempts,
                            doc[0] if doc else "", open_params, retry_delay,
                            tuple(non_retryable), max_running,
                            float(starts_per_second) if starts_per_second else None, cron,
                            timezone, concurrency)
        return handler

    return register


def load_tasks(modules: Iterable[str] = ()) -> dict[str, Task]:
    """Import the built-in tasks and ``modules`` (BGJOBS_TASK_MODULES); every registered task.

    Processes call it once at start, so a host module that fails to import fails the start,
    with a ConfigError. ``modules`` resolve from the working directory, as under ``python -m``,
    in every process: the CLI, the workers, the API under gunicorn, a Flask app.
    """
    modules = tuple(modules)
    if modules and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for module in ("bgjobs.tasks.builtin", *modules):
        if module not in _IMPORTED:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise ConfigError(f"BGJOBS_TASK_MODULES: cannot import {module!r}: "
                                  f"{first_line(exc)} (run bgjobs from your app's folder, or "
                                  "set PYTHONPATH)") from exc
            except BadDeclaration as exc:
                raise ConfigError(f"BGJOBS_TASK_MODULES: {module!r}: {exc}") from exc
            _IMPORTED.add(module)
    return dict(_TASKS)


def get(name: str) -> Task:
    """The task registered as ``name`` (the built-in types are always known)."""
    if name not in _TASKS:
        load_tasks()
    task = _TASKS.get(name)
    if task is None:
        raise UnknownTask(f"unknown job type {name!r}; known: {', '.join(sorted(_TASKS))} "
                          "(a host's types must be imported first: see BGJOBS_TASK_MODULES)")
    return task


def _type_name(t: type) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            list: "a list", dict: "an object"}.get(t, t.__name__)


def type_rows(tasks: Iterable[Task] | None = None) -> list[JobTypeRow]:
    """What bgjobs_job_types records of each task (default: every registered one)."""
    return [JobTypeRow(t.name, t.exclusive, t.max_attempts, t.max_running, t.starts_per_second)
            for t in sorted(_TASKS.values() if tasks is None else tasks, key=lambda t: t.name)]


def record_types(store: Store) -> bool:
    """Tell the database about the registered types, so that plain-SQL inserts of them get
    their max_attempts and exclusivity; a failure is logged (the API and workers still start).
    """
    try:
        store.sync_job_types(type_rows())
    except (DatabaseUnavailable, psycopg.Error) as exc:
        log.warning("could not record the job types in bgjobs_job_types (%s): plain-SQL "
                    "inserts get what is recorded there; `bgjobs migrate` records them too",
                    first_line(exc))
        return False
    return True
