"""Operations pieces that need no database: settings, task declarations, side-loop errors."""

from __future__ import annotations

import sys
import uuid

import pytest

from bgjobs.core import config
from bgjobs.tasks import registry
from bgjobs.worker.duties.retention import retention


@pytest.mark.parametrize(("name", "value", "message"), [
    ("BGJOBS_TIMEZONE", "Mars/Olympus", "IANA time zone"),
    ("BGJOBS_KEEP_COMPLETE_DAYS", "a week", "number of days"),
    ("BGJOBS_KEEP_ERROR_DAYS", "0", "above 0"),
    ("BGJOBS_KEEP_CANCELLED_DAYS", "-1", "above 0"),
])
def test_bad_operations_settings_are_refused(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(config.ConfigError, match=message):
        config.load()


def test_operations_settings_and_defaults(monkeypatch):
    for name in ("BGJOBS_TIMEZONE", "BGJOBS_KEEP_COMPLETE_DAYS", "BGJOBS_KEEP_ERROR_DAYS",
                 "BGJOBS_KEEP_CANCELLED_DAYS"):
        monkeypatch.delenv(name, raising=False)
    keep = retention(config.load())
    assert (keep.complete.days, keep.error.days, keep.cancelled.days) == (7, 30, 7)
    assert config.load().timezone == "UTC"
    monkeypatch.setenv("BGJOBS_TIMEZONE", "Europe/Paris")
    monkeypatch.setenv("BGJOBS_KEEP_ERROR_DAYS", "0.5")
    assert config.load().timezone == "Europe/Paris"
    assert retention(config.load()).error.total_seconds() == 43200


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_running": 0}, "max_running"),
    ({"max_running": 1.5}, "max_running"),
    ({"starts_per_second": 0}, "starts_per_second"),
    ({"starts_per_second": True}, "starts_per_second"),
    ({"starts_per_second": float("inf")}, "starts_per_second"),
    ({"timezone": "UTC"}, "goes with cron"),
    ({"cron": "every day"}, "5 fields"),
])
def test_bad_task_declarations_fail_at_import(kwargs, message):
    with pytest.raises(ValueError, match=message):
        registry.task("declared_badly", **kwargs)
    assert "declared_badly" not in registry._TASKS


def test_task_modules_resolve_from_the_working_directory(monkeypatch, tmp_path):
    name = f"hostjobs_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text("LOADED = True\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    registry.load_tasks([name])
    assert sys.modules[name].LOADED and sys.path[0] == str(tmp_path)
    monkeypatch.delitem(sys.modules, name)


def test_a_task_module_that_cannot_be_imported_is_a_one_line_config_error(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(config.ConfigError) as refused:
        registry.load_tasks(["no_such_host_module"])
    assert str(refused.value) == (
        "BGJOBS_TASK_MODULES: cannot import 'no_such_host_module': No module named "
        "'no_such_host_module' (run bgjobs from your app's folder, or set PYTHONPATH)")


def test_the_purge_interval_is_a_setting(monkeypatch):
    monkeypatch.delenv("BGJOBS_PURGE_INTERVAL", raising=False)
    assert config.load().purge_interval == 60.0
    monkeypatch.setenv("BGJOBS_PURGE_INTERVAL", "0.5")
    assert config.load().purge_interval == 0.5
    monkeypatch.setenv("BGJOBS_PURGE_INTERVAL", "0")
    with pytest.raises(config.ConfigError, match="BGJOBS_PURGE_INTERVAL must be at least 0.1"):
        config.load()
