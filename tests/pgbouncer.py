"""A real PgBouncer (Debian's ``pgbouncer``, installed by .ci/run) in front of the tests'
Postgres, for any test that runs bgjobs through a connection pooler.

``pgbouncer(server_url, "transaction")`` starts one on a free port with PgBouncer's default
settings but for the pool mode (and what a test machine needs: trust authentication, no unix
socket, not root), and stops it after. ``Pooler.url(db_url)`` is ``db_url`` through it. The
conftest's ``transaction_pooler`` and ``session_pooler`` fixtures share one of each per session.
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.procs import Proc, free_port, wait_until

#: The user PgBouncer switches to when started as root (it refuses to run as root).
UNPRIVILEGED_USER = "nobody"


def installed() -> str | None:
    """pgbouncer's path, or None."""
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(p, os.X_OK)), None)


def binary() -> str:
    """pgbouncer's path; skips the test (fails it in CI) when it is not installed."""
    found = installed()
    if found:
        return found
    message = "pgbouncer is not installed (apt-get install pgbouncer; .ci/run does it in CI)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class Pooler:
    port: int
    mode: str
    proc: Proc
    config: str

    def url(self, db_url: str) -> str:
        """``db_url`` (the tests' server) through this PgBouncer."""
        return make_conninfo(db_url, host="127.0.0.1", port=str(self.port))

    def log(self) -> str:
        return self.proc.output()


def config(server_url: str, port: int, mode: str, folder: Path,
           settings: dict[str, str] | None = None) -> str:
    """The pgbouncer.ini: PgBouncer's defaults but the pool mode (docs/operations.md shows the
    same settings); every database of the server, as the user the client names."""
    server = conninfo_to_dict(server_url)
    target = f"host={server.get('host') or '127.0.0.1'} port={server.get('port') or 5432}"
    if server.get("password"):
        target += f" password={server['password']}"
    lines = [
        "[databases]",
        f"* = {target}",
        "",
        "[pgbouncer]",
        "listen_addr = 127.0.0.1",
        f"listen_port = {port}",
        "unix_socket_dir =",
        "auth_type = trust",
        f"auth_file = {folder / 'userlist.txt'}",
        f"pool_mode = {mode}",
        "idle_transaction_timeout = 10",  # docs/operations.md: a frozen client's locks
        "server_login_retry = 1",  # docs/operations.md: back within a second of a restart
    ]
    lines += [f"{name} = {value}" for name, value in (settings or {}).items()]
    if os.geteuid() == 0:
        lines.append(f"user = {UNPRIVILEGED_USER}")
    return "\n".join(lines) + "\n"


@contextmanager
def pgbouncer(server_url: str, mode: str = "transaction", target_url: str | None = None,
              settings: dict[str, str] | None = None) -> Iterator[Pooler]:
    """A PgBouncer in ``mode`` in front of ``server_url``'s server (or ``target_url``'s, which
    may be a server that is not there), stopped and removed afterwards; ``settings`` are added
    to its defaults."""
    exe = binary()
    # Not under pytest's temp root (0700): PgBouncer runs as another user when we are root.
    folder = Path(tempfile.mkdtemp(prefix="bgjobs-test-pgbouncer-"))
    folder.chmod(0o755)
    port = free_port()
    user = conninfo_to_dict(server_url).get("user") or pwd.getpwuid(os.geteuid()).pw_name
    (folder / "userlist.txt").write_text(f'"{user}" ""\n')
    ini = config(target_url or server_url, port, mode, folder, settings)
    (folder / "pgbouncer.ini").write_text(ini)
    for path in folder.iterdir():
        path.chmod(0o644)
    proc = Proc([exe, str(folder / "pgbouncer.ini")], env=dict(os.environ),
                log_path=folder / "pgbouncer.log")
    pooler = Pooler(port, mode, proc, ini)
    try:
        wait_until(lambda: "process up" in proc.output(), 20, "pgbouncer up", proc)
        if target_url is None:
            with psycopg.connect(pooler.url(server_url), connect_timeout=5) as conn:
                conn.execute("SELECT 1")
        yield pooler
    finally:
        proc.stop()
        shutil.rmtree(folder, ignore_errors=True)
