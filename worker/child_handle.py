"""The supervisor's handle on one child process: start it, talk to it, kill it.

The child's own side is worker/child_main.py.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import subprocess
import sys
from multiprocessing.connection import Connection
from uuid import UUID

from bgjobs.worker import protocol

log = logging.getLogger(__name__)


class ChildProcess:
    """A ``python -m bgjobs.worker.child_main`` process and the jobs handed to it, in order.

    With ``io`` (type -> concurrency), a ``bgjobs.worker.io_child`` process instead, which runs
    up to that many jobs of each of those types at once.
    """

    def __init__(self, slot: int, log_level: str, io: dict[str, int] | None = None,
                 block_threshold: float = 0.1) -> None:
        self.slot = slot
        self.io = io or {}
        module, extra = (("io_child", [str(block_threshold)]) if io else ("child_main", []))
        ours, theirs = socket.socketpair()
        try:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", f"bgjobs.worker.{module}", str(theirs.fileno()),
                 str(os.getpid()), log_level, *extra],
                pass_fds=(theirs.fileno(),),
            )
        finally:
            theirs.close()
        self.conn = Connection(ours.detach())
        self.pid = self.popen.pid
        #: job ids handed over and not yet reported back, oldest (the running one) first;
        #: with their types in an IO process (all running)
        self.jobs: dict[UUID, str | None] = {}
        #: in an IO process, how many jobs of each type it runs
        self.running: collections.Counter[str] = collections.Counter()
        self.ready = False

    def fileno(self) -> int:
        return self.conn.fileno()

    def send(self, msg: protocol.ToChild) -> bool:
        """False if the child is gone (its death is handled when its socket reports EOF)."""
        try:
            self.conn.send(msg)
        except OSError:
            return False
        return True

    def receive(self) -> list[protocol.FromChild]:
        """Every message waiting; EOFError once the child has exited."""
        out = []
        while self.conn.poll():
            out.append(self.conn.recv())
        return out

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.close()

    def close(self, timeout: float = 5.0) -> None:
        """Close our end (a live child exits on EOF) and reap the process."""
        if not self.conn.closed:
            self.conn.close()
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("worker process %s did not exit; killing it", self.pid)
            self.popen.kill()
            self.popen.wait()
