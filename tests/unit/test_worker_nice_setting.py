"""BGJOBS_WORKER_NICE: how much nicer than their supervisor job processes run (0-19)."""

from __future__ import annotations

import pytest

from bgjobs.core import config


def test_worker_nice_defaults_to_ten(monkeypatch):
    monkeypatch.delenv("BGJOBS_WORKER_NICE", raising=False)
    assert config.load().worker_nice == 10
    monkeypatch.setenv("BGJOBS_WORKER_NICE", "0")
    assert config.load().worker_nice == 0


@pytest.mark.parametrize("raw", ["-1", "20", "x"])
def test_worker_nice_is_checked(monkeypatch, raw):
    monkeypatch.setenv("BGJOBS_WORKER_NICE", raw)
    with pytest.raises(config.ConfigError, match="BGJOBS_WORKER_NICE"):
        config.load()
