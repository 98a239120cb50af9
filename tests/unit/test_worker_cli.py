"""`bgjobs worker` arguments (in-process, no database)."""

from __future__ import annotations

import argparse

import pytest

from bgjobs.worker.main import duration, parser


@pytest.mark.parametrize("text,seconds", [("30", 30.0), ("2s", 2.0), ("500ms", 0.5),
                                          ("1.5s", 1.5), ("2m", 120.0)])
def test_durations(text, seconds):
    assert duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "-1s", "5h"])
def test_bad_durations(text):
    with pytest.raises(argparse.ArgumentTypeError):
        duration(text)


def test_defaults_and_flags():
    ns = parser().parse_args([])
    assert ns.lease == 30.0 and ns.poll_interval == 5.0 and ns.cancel_grace == 10.0
    assert ns.shutdown_grace == 30.0 and ns.concurrency >= 1
    ns = parser().parse_args(["--concurrency", "4", "--types", "noop,demo", "--lease", "2s",
                              "--log-level", "warning"])
    assert (ns.concurrency, ns.types, ns.lease, ns.log_level) == (4, "noop,demo", 2.0,
                                                                  "WARNING")


@pytest.mark.parametrize("argv", [["--concurrency", "0"], ["--log-level", "loud"],
                                  ["--lease", "forever"]])
def test_bad_flags_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        parser().parse_args(argv)
    assert exc.value.code == 2
