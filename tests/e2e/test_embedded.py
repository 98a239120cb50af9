"""The embedded cluster: durable by default (clusters made by older versions become so), fast
only for a start that asks, and its data folder (the secret key) out of the cluster user's reach.
"""

from __future__ import annotations

import os
import pwd
import stat
import subprocess

import psycopg
import pytest

from bgjobs.core import embedded
from bgjobs.core.config import Config
from tests.procs import wait_until

SETTINGS = ("fsync", "synchronous_commit", "full_page_writes")
DURABLE = dict.fromkeys(SETTINGS, "on")
FAST = dict.fromkeys(SETTINGS, "off")


def settings(cluster: embedded.Cluster) -> dict[str, str]:
    with psycopg.connect(cluster.url("postgres")) as conn:
        return {name: conn.execute(f"SHOW {name}").fetchone()[0] for name in SETTINGS}


def test_durable_by_default_fast_for_one_start_and_old_clusters_made_durable(
        private_cluster: embedded.Cluster) -> None:
    path, conf = private_cluster.data_dir, private_cluster.pgdata / "postgresql.conf"
    assert settings(private_cluster) == DURABLE

    # The tests' knob: this start only; nothing of it is written into the cluster.
    private_cluster.stop()
    fast = embedded.Cluster(path, durable=False)
    assert fast.ensure_running()
    assert settings(fast) == FAST
    fast.stop()
    assert embedded.Cluster(path).ensure_running()
    assert settings(private_cluster) == DURABLE

    # A cluster an older bgjobs made, still running with its settings off: the next start of
    # anything (make run, bgjobs db start) turns them on, without a restart.
    private_cluster.stop()
    with open(conf, "a") as f:
        f.write(embedded._OLD_FAST_SETTINGS)
    private_cluster._run(["pg_ctl", "-D", str(private_cluster.pgdata), "-l",
                          str(private_cluster.logfile), "-w", "start"])
    assert settings(private_cluster) == FAST
    assert embedded.Cluster(path).ensure_running() is False  # it was running
    wait_until(lambda: settings(private_cluster) == DURABLE, 30, "the reload")
    assert embedded._OLD_FAST_SETTINGS not in conf.read_text()


def test_the_data_folder_is_not_the_cluster_users(private_cluster: embedded.Cluster) -> None:
    if os.geteuid() != 0:
        message = "the cluster runs as another user only under root"
        if os.environ.get("CI") == "true":
            pytest.fail(message + ": CI runs as root")
        pytest.skip(message)
    path = private_cluster.data_dir
    secret = Config(data_dir=path).secret_key()
    owner = pwd.getpwnam(embedded.SYSTEM_USER)

    def as_cluster_user(*argv: str) -> int:
        return subprocess.run(argv, user=owner.pw_uid, group=owner.pw_gid, extra_groups=[],
                              capture_output=True).returncode

    def check() -> None:
        info = path.stat()
        assert info.st_uid == os.geteuid() and not stat.S_IMODE(info.st_mode) & 0o022
        assert as_cluster_user("touch", str(path / "planted")) != 0
        assert as_cluster_user("cat", str(path / "secret_key")) != 0
        assert as_cluster_user("mv", str(path / "secret_key"), str(path / "gone")) != 0
        assert (path / "secret_key").read_text().strip() == secret
        assert private_cluster.logfile.stat().st_uid == owner.pw_uid  # Postgres writes it
        assert settings(private_cluster) == DURABLE  # and the cluster works

    check()
    # A folder an older bgjobs gave to the cluster's user is taken back at the next start.
    private_cluster.stop()
    os.chown(path, owner.pw_uid, owner.pw_gid)
    path.chmod(0o775)
    private_cluster.ensure_running()
    check()
