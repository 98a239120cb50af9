"""Real processes for tests: start, wait until ready, stop; free ports."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
BGJOBS = str(Path(sys.executable).parent / "bgjobs")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Proc:
    """A child process whose output goes to a log file the test can read on failure."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path,
                 cwd: Path = ROOT) -> None:
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(argv, env=env, cwd=cwd, stdout=self._log,
                                      stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.popen.pid, sig)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then SIGKILL the whole group if it does not exit in time."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)  # orphans of a crashed parent
        self._log.close()
        return self.popen.returncode


def wait_until(predicate: Callable[[], object], timeout: float, what: str,
               proc: Proc | None = None) -> object:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except Exception:  # noqa: BLE001 - not ready yet
            value = None
        if value:
            return value
        if proc is not None and not proc.alive():
            raise AssertionError(f"{what}: process exited early:\n{proc.output()[-3000:]}")
        if time.monotonic() > deadline:
            tail = proc.output()[-3000:] if proc else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tail}")
        time.sleep(0.05)


def wait_http(url: str, proc: Proc | None = None, timeout: float = 30.0) -> None:
    """Wait until ``url`` answers at all (any status)."""
    wait_until(lambda: httpx.get(url, timeout=2) is not None, timeout, f"GET {url}", proc)


#: The head line of a log record (core/config.py's LOG_FORMAT): logger name, message.
_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ \[\d+\] [A-Z]+ (\S+): (.*)$")
#: The one record a traceback belongs in: a job's handler raised, and its attempt failed.
_JOB_FAILED = re.compile(r"^job \S+ \(.*\) failed after ")


def unexpected_tracebacks(log: str) -> list[str]:
    """Each traceback in a bgjobs process's log that is not a failed job's own (a bug: in a
    duty, a write, the loop, or uncaught), with the line of the record it belongs to."""
    found: list[str] = []
    head: str | None = "(before any log record)"  # None: in a failed job's record
    lines = log.splitlines()
    for i, line in enumerate(lines):
        record = _RECORD.match(line)
        if record:
            job_failed = record[1] == "bgjobs.worker.outbox" and _JOB_FAILED.match(record[2])
            head = None if job_failed else line
        elif line.startswith("Traceback (most recent call last):") and head is not None:
            found.append("\n".join([head, *lines[i:i + 40]]))
    return found


def assert_no_tracebacks(*procs: Proc) -> None:
    """Fail on a traceback in a stopped worker's log but a failed job's (see above): a duty's
    or the loop's bug is logged and survived by design, so only its log shows it."""
    bugs = [f"{proc.log_path.name}:\n{trace}" for proc in procs
            for trace in unexpected_tracebacks(proc.log_path.read_text())]
    assert not bugs, "traceback in a worker's log:\n" + "\n\n".join(bugs)


def _parents() -> dict[int, list[int]]:
    """Live processes by parent pid, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # The command name may contain spaces; fields after the closing parenthesis are fixed.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def children_of(pid: int) -> set[int]:
    """The live processes whose parent is ``pid``."""
    return set(_parents().get(pid, []))


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid``."""
    children = _parents()
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found
