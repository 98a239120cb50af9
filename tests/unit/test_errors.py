"""One exception root: every exception bgjobs defines derives from bgjobs.BgjobsError (keeping
the built-in bases callers catch), and the HTTP mapping needs no import of the tasks layer."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import bgjobs
from bgjobs.core import errors

PACKAGES = ["bgjobs", "bgjobs.core", "bgjobs.tasks", "bgjobs.tasks.builtin", "bgjobs.server",
            "bgjobs.worker", "bgjobs.worker.duties"]


def defined_exceptions() -> list[type[BaseException]]:
    found = []
    for name in PACKAGES:
        package = importlib.import_module(name)
        modules = [package] + [
            importlib.import_module(f"{name}.{info.name}")
            for info in pkgutil.iter_modules(package.__path__)
            if not info.ispkg and info.name != "__main__"]
        for module in modules:
            found += [obj for _, obj in inspect.getmembers(module, inspect.isclass)
                      if issubclass(obj, BaseException) and obj.__module__ == module.__name__]
    return found


def test_every_bgjobs_exception_derives_from_the_one_root():
    found = defined_exceptions()
    assert {"InvalidParams", "ConfigError", "MigrationError", "ApiError"} <= {
        e.__name__ for e in found}
    assert [e for e in found if not issubclass(e, bgjobs.BgjobsError)] == []


def test_the_built_in_bases_callers_rely_on_stay():
    for exc, base in [(errors.InvalidParams, ValueError), (errors.BadDeclaration, ValueError),
                      (errors.InvalidSchedule, ValueError), (errors.ConfigError, ValueError),
                      (errors.UnknownTask, LookupError), (errors.InvalidRequest,
                                                          errors.InvalidInput)]:
        assert issubclass(exc, base) and issubclass(exc, bgjobs.BgjobsError)


def test_the_old_homes_still_name_the_same_classes():
    from bgjobs.core import config
    from bgjobs.tasks import context, enqueue, registry, schedules

    assert registry.InvalidParams is bgjobs.InvalidParams is errors.InvalidParams
    assert (registry.NonRetryable, registry.UnknownTask, registry.BadDeclaration) == (
        errors.NonRetryable, errors.UnknownTask, errors.BadDeclaration)
    assert schedules.InvalidSchedule is errors.InvalidSchedule
    assert config.ConfigError is errors.ConfigError
    assert enqueue.InvalidRequest is errors.InvalidRequest
    assert context.JobCancelled is errors.JobCancelled


def test_the_http_mapping_imports_no_task_layer():
    source = Path(inspect.getfile(importlib.import_module("bgjobs.server.errors"))).read_text()
    modules = {node.module for node in ast.walk(ast.parse(source))
               if isinstance(node, ast.ImportFrom) and node.module}
    assert not [m for m in modules if m.startswith("bgjobs.tasks")], modules
