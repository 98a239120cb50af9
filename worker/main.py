"""``bgjobs worker`` / ``python -m bgjobs.worker``: run one supervisor and its worker processes."""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import re
import signal
import sys
from collections.abc import Sequence

from bgjobs.core import channels
from bgjobs.core import config as config_mod
from bgjobs.core.db import database_url, direct_url
from bgjobs.core.errors import DatabaseUnavailable, NoSession
from bgjobs.tasks import registry
from bgjobs.worker.duties.retention import retention
from bgjobs.worker.supervisor import Settings, Supervisor

log = logging.getLogger(__name__)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$")


def duration(text: str) -> float:
    """Seconds from '30', '30s', '500ms' or '2m'."""
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 30s, 500ms, 2m)")
    value, unit = float(match[1]), match[2] or "s"
    return value * {"ms": 0.001, "s": 1.0, "m": 60.0}[unit]


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def whole_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def parser(default_log_level: str = "INFO") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bgjobs worker",
        description="Run a worker supervisor and its processes: one LISTEN connection for the "
                    "machine, N processes each running one job at a time, and IO processes "
                    "running many jobs of the concurrent types at once. SIGTERM or Ctrl-C "
                    "stops gracefully; a second signal stops at once. DATABASE_URL picks the "
                    "database (unset: the embedded cluster, which must be running). Runs the "
                    "built-in job types and those registered by BGJOBS_TASK_MODULES "
                    "(comma-separated modules, imported from the working directory: run it "
                    "from your app's folder, or set PYTHONPATH).",
    )
    p.add_argument("--concurrency", type=positive_int, default=os.cpu_count() or 1,
                   help="worker processes, each running one job at a time (the types that "
                        "are not concurrent; default: CPUs, %(default)s)")
    p.add_argument("--types", default="",
                   help="comma-separated job types to run (default: every registered type)")
    p.add_argument("--lease", type=duration, default=30.0,
                   help="a running job whose heartbeat is older than this is taken back by the "
                        "reaper; heartbeats go out every lease/3 (default 30s)")
    p.add_argument("--poll-interval", type=duration, default=5.0,
                   help="fallback poll when no notification arrives (default 5s)")
    p.add_argument("--cancel-grace", type=duration, default=10.0,
                   help="how long a cancelled handler may keep running before its process is "
                        "killed and replaced (default 10s)")
    p.add_argument("--shutdown-grace", type=duration, default=30.0,
                   help="on SIGTERM/SIGINT, how long running jobs may take to finish before "
                        "they are handed back to pending (default 30s)")
    p.add_argument("--max-batch", type=positive_int, default=100,
                   help="most jobs handed to one process at once when jobs are very short "
                        "(default 100)")
    p.add_argument("--io-processes", type=whole_number, default=None,
                   help="processes for the concurrent job types (async def handlers, or "
                        "declared with concurrency=), each running many of their jobs at once "
                        "(default: 1 if this worker runs such types, else none; 0: run them a "
                        "process per job like the others)")
    p.add_argument("--block-threshold", type=duration, default=0.1,
                   help="log a job whose handler holds an IO process's event loop this long "
                        "without awaiting (default 100ms)")
    p.add_argument("--log-level", type=str.upper, default=default_log_level,
                   choices=config_mod.LOG_LEVELS,
                   help="default BGJOBS_LOG_LEVEL, else INFO (now %(default)s)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        cfg = config_mod.load()
    except config_mod.ConfigError as exc:
        print(f"bgjobs worker: {exc}", file=sys.stderr)
        return 2
    args = parser(cfg.log_level).parse_args(list(sys.argv[1:] if argv is None else argv))
    config_mod.setup_logging(args.log_level, force=True)
    # `kill -USR1 PID` prints every thread's stack to the log: a stuck worker explains itself.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        known = registry.load_tasks(cfg.task_modules)
    except config_mod.ConfigError as exc:
        print(f"bgjobs worker: {exc}", file=sys.stderr)
        return 2
    types = tuple(t.strip() for t in args.types.split(",") if t.strip())
    unknown = sorted(set(types) - set(known))
    if unknown:
        print(f"bgjobs worker: unknown job type(s): {', '.join(unknown)}; known: "
              f"{', '.join(sorted(known))}", file=sys.stderr)
        return 2
    try:
        url, listen_url = database_url(cfg), direct_url(cfg)
    except DatabaseUnavailable as exc:
        print(f"bgjobs worker: {exc}", file=sys.stderr)
        return 1
    try:
        # A LISTEN that would never be heard stops the worker here, in one line: polling
        # alone would run jobs seconds late and hide the mistake. Postgres down is no
        # mistake: the supervisor waits for it (and checks again when it LISTENs).
        channels.require_session(listen_url, "the worker's LISTEN")
    except NoSession as exc:
        print(f"bgjobs worker: {exc}", file=sys.stderr)
        return 1
    except DatabaseUnavailable:
        pass
    settings = Settings(
        concurrency=args.concurrency, types=types or None, lease=max(1, round(args.lease)),
        poll_interval=args.poll_interval, cancel_grace=args.cancel_grace,
        shutdown_grace=args.shutdown_grace, max_batch=args.max_batch,
        log_level=args.log_level, timezone=cfg.timezone, keep=retention(cfg),
        purge_interval=cfg.purge_interval, io_processes=args.io_processes,
        block_threshold=max(0.005, args.block_threshold),
    )
    return Supervisor(url, settings, listen_url).run()
