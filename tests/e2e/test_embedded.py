"""The embedded cluster: durable by default (clusters made by older versions become so), fast
only for a start that asks, its data folder (the secret key) out of the cluster user's reach, and
a cluster made by another major version run by that major's binaries or left alone with one line.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import psycopg
import pytest

from bgjobs.core import embedded
from bgjobs.core.config import Config
from tests.procs import BGJOBS, wait_until

#: Debian's Postgres 15 (installed by .ci/run): a major that no bgjobs[embedded] wheel ships.
DEBIAN_15 = Path("/usr/lib/postgresql/15/bin")

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
    fast = embedded.Cluster(path, private_cluster.pg_bin, durable=False)
    assert fast.ensure_running()
    assert settings(fast) == FAST
    fast.stop()
    assert embedded.Cluster(path, private_cluster.pg_bin).ensure_running()
    assert settings(private_cluster) == DURABLE

    # A cluster an older bgjobs made, still running with its settings off: the next start of
    # anything (make run, bgjobs db start) turns them on, without a restart.
    private_cluster.stop()
    with open(conf, "a") as f:
        f.write(embedded._OLD_FAST_SETTINGS)
    private_cluster._run(["pg_ctl", "-D", str(private_cluster.pgdata), "-l",
                          str(private_cluster.logfile), "-w", "start"])
    assert settings(private_cluster) == FAST
    assert embedded.Cluster(path, private_cluster.pg_bin).ensure_running() is False  # running
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


def bgjobs_here(data_dir: Path, *args: str, pythonpath: Path | None = None,
                ) -> subprocess.CompletedProcess[str]:
    """`bgjobs ARGS` on the embedded cluster in ``data_dir``, with the default binaries."""
    env = {**os.environ, "BGJOBS_DATA_DIR": str(data_dir)}
    for name in ("DATABASE_URL", "BGJOBS_PG_BIN", "PYTHONPATH"):
        env.pop(name, None)
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([BGJOBS, *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not (DEBIAN_15 / "pg_ctl").exists(), reason="needs Debian's postgresql-15")
def test_a_cluster_made_by_another_major_keeps_its_binaries_or_gets_one_line(
        tmp_path: Path) -> None:
    """As a cluster pgserver's Postgres 16 made in .bgjobs/ meets bgjobs[embedded]'s 18."""
    data = Path(tempfile.mkdtemp(prefix="bgjobs-test-pg-"))  # not under pytest's temp root
    try:
        old = embedded.Cluster(data, DEBIAN_15)
        old.ensure_running()
        old.stop()
        conf = (old.pgdata / "postgresql.conf").read_text()

        # Its major's binaries gone: one line naming the way forward; nothing touched.
        for args in (["migrate"], ["db", "start"]):
            done = bgjobs_here(data, *args)
            assert done.returncode == 1, done.stderr
            [line] = done.stderr.strip().splitlines()
            assert line.startswith(f"bgjobs: the embedded cluster in {old.pgdata} was made by "
                                   "Postgres 15 and the Postgres here is 18"), line
            assert "pg_upgrade" in line and "BGJOBS_PG_BIN" in line
        assert not old.is_running() and (old.pgdata / "postgresql.conf").read_text() == conf

        # Installed beside the default (as pgserver stays in a venv bgjobs was upgraded in),
        # the wheel of its major runs it; a new cluster still gets the default.
        wheel = tmp_path / "site" / "pgserver" / "pginstall"
        wheel.mkdir(parents=True)
        (wheel.parent / "__init__.py").touch()
        (wheel / "bin").symlink_to(DEBIAN_15)
        done = bgjobs_here(data, "migrate", pythonpath=tmp_path / "site")
        assert done.returncode == 0, done.stderr
        assert "starting embedded Postgres 15" in done.stderr and "applied" in done.stdout
        with psycopg.connect(old.url()) as conn:
            assert conn.info.server_version // 10000 == 15
        assert bgjobs_here(data, "db", "stop", pythonpath=tmp_path / "site").returncode == 0

        # Starting afresh needs none of its binaries, unless that Postgres may be running.
        (old.pgdata / "postmaster.pid").write_text("1\n")
        done = bgjobs_here(data, "db", "reset")
        assert done.returncode == 1 and "has a postmaster.pid" in done.stderr, done.stderr
        (old.pgdata / "postmaster.pid").unlink()
        done = bgjobs_here(data, "db", "reset")
        assert done.returncode == 0 and not old.pgdata.exists(), done.stderr
    finally:
        if embedded.Cluster(data, DEBIAN_15).is_running():
            embedded.Cluster(data, DEBIAN_15).stop("immediate")
        shutil.rmtree(data, ignore_errors=True)


def test_a_bin_folder_without_postgres_gets_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "BGJOBS_DATA_DIR": str(tmp_path / "data"),
           "BGJOBS_PG_BIN": str(tmp_path)}
    env.pop("DATABASE_URL", None)
    done = subprocess.run([BGJOBS, "db", "start"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"bgjobs: BGJOBS_PG_BIN is {tmp_path}, which has no pg_ctl: set it to a Postgres bin "
        "folder, or unset it for bgjobs[embedded]'s"]
    assert not (tmp_path / "data").exists()
