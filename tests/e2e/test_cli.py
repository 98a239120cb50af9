"""The bgjobs command: each command's happy path and its bad-input path."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest

from bgjobs.core import embedded, migrate
from bgjobs.core.errors import NotFound
from tests.conftest import add_host_user, add_job, url_env
from tests.integration.test_migrations import NO_USERS, REFUSALS
from tests.procs import BGJOBS, free_port

UNREACHABLE = "postgresql://postgres@127.0.0.1:1/nowhere"


def bgjobs(url: str, *args: str, stdin: str | None = None, env: dict[str, str] | None = None,
           cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BGJOBS, *args], env={**url_env(url), **(env or {})}, cwd=cwd,
                          capture_output=True, text=True, input=stdin, timeout=60)


def embedded_bgjobs(cluster: embedded.Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    """`bgjobs ARGS` with DATABASE_URL unset and the data folder of ``cluster``."""
    env = {**os.environ, "BGJOBS_DATA_DIR": str(cluster.data_dir)}
    env.pop("DATABASE_URL", None)
    return subprocess.run([BGJOBS, *args], env=env, capture_output=True, text=True, timeout=120)


def assert_one_line_error(done: subprocess.CompletedProcess[str], text: str) -> None:
    assert done.returncode != 0
    assert text in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.parametrize("args", [[], ["user"], ["enqueue"], ["jobs"], ["cancel"], ["psql"],
                                  ["migrate"], ["grant"], ["run"], ["api"], ["events"], ["db"],
                                  ["schedules"]])
def test_every_command_has_help(db_url, args):
    done = bgjobs(db_url, *args, "--help")
    assert done.returncode == 0 and "usage: bgjobs" in done.stdout


def test_help_says_what_migrate_and_worker_do_for_the_user(db_url):
    top = bgjobs(db_url, "--help").stdout
    assert "sql/migrations" not in top and "create or upgrade bgjobs's tables" in top
    worker = " ".join(bgjobs(db_url, "worker", "--help").stdout.split())
    assert "BGJOBS_TASK_MODULES" in worker and "imported from the working directory" in worker


def test_migrate_says_when_it_started_the_embedded_cluster(private_cluster):
    private_cluster.stop()
    first = embedded_bgjobs(private_cluster, "migrate")
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("database is up to date"), first.stdout
    assert (f"bgjobs: DATABASE_URL is unset: started the embedded Postgres in "
            f"{private_cluster.pgdata}; it keeps running (stop it with `bgjobs db stop`)"
            in first.stderr), first.stderr
    assert private_cluster.is_running()
    again = embedded_bgjobs(private_cluster, "migrate")
    assert again.returncode == 0 and "started the embedded" not in again.stderr, again.stderr


def test_db_stop_says_whether_it_stopped_a_cluster(private_cluster):
    first = embedded_bgjobs(private_cluster, "db", "stop")
    assert first.returncode == 0 and first.stdout.startswith("stopped the embedded Postgres")
    assert not private_cluster.is_running()
    again = embedded_bgjobs(private_cluster, "db", "stop")
    assert again.returncode == 0 and "was not running" in again.stdout


def test_migrate_is_idempotent(db_url):
    done = bgjobs(db_url, "migrate")
    assert done.returncode == 0 and "up to date" in done.stdout



def test_migrate_says_which_users_table_jobs_belong_to_on_every_run(new_database, host_db_url):
    url = new_database()
    first, again = bgjobs(url, "migrate"), bgjobs(url, "migrate")
    assert first.returncode == 0 and first.stdout.startswith("applied baseline/")
    assert first.stdout.splitlines()[1:] == [NO_USERS] and "warning" not in first.stderr
    assert again.stdout.splitlines() == ["database is up to date", NO_USERS]
    host = bgjobs(host_db_url, "migrate")
    assert host.returncode == 0, host.stderr
    assert host.stdout.splitlines() == ["database is up to date", "jobs belong to users(id)"]
    assert host.stderr == ""


def test_migrate_refuses_a_users_table_set_to_a_table_the_database_lacks(new_database):
    url = new_database()
    done = bgjobs(url, "migrate", env={"BGJOBS_USERS_TABLE": "acounts"})
    assert_one_line_error(done, 'bgjobs: BGJOBS_USERS_TABLE is "acounts", but this database '
                                "has no such table")
    assert done.stdout == ""
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_class WHERE relnamespace = "
                            "'public'::regnamespace").fetchone() == (0,)
    made = bgjobs(url, "migrate", env={"BGJOBS_USERS_TABLE": ""})  # empty: the default
    assert made.returncode == 0 and made.stdout.splitlines()[-1] == NO_USERS


def test_migrate_warns_when_the_apps_users_table_appears_after_it_ran(new_database):
    url = new_database()
    assert bgjobs(url, "migrate").returncode == 0  # a deploy script, before the app's tables
    add_host_schema = "CREATE TABLE users (id SERIAL PRIMARY KEY, email TEXT)"
    with psycopg.connect(url) as conn:
        conn.execute(add_host_schema)
    for env in ({}, {"BGJOBS_USERS_TABLE": "users"}):
        done = bgjobs(url, "migrate", env=env)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == ["database is up to date",
                                            "jobs belong to bgjobs_users(id)"]
        assert done.stderr.startswith('bgjobs: warning: jobs belong to bgjobs_users(id), but '
                                      'this database now has your users table "users"')
        assert "docs/dba.md" in done.stderr and len(done.stderr.splitlines()) == 1


def test_user_create_prints_a_token_once(db_url, store):
    done = bgjobs(db_url, "user", "create", "dora")
    assert done.returncode == 0
    token = done.stdout.strip().splitlines()[-1]
    assert store.user_for_token(token).name == "dora"
    assert_one_line_error(bgjobs(db_url, "user", "create", "dora"), "already exists")
    assert_one_line_error(bgjobs(db_url, "user", "create", "bad name"), "bad user name")
    revoke = bgjobs(db_url, "user", "revoke", "dora")
    assert revoke.returncode == 0 and store.user_for_token(token) is None


def test_enqueue_and_list(db_url, store):
    store.create_user("erin")
    done = bgjobs(db_url, "enqueue", "noop", "--params", '{"echo": 7}', "--user", "erin")
    assert done.returncode == 0, done.stderr
    job = store.get_job(uuid.UUID(done.stdout.strip()))
    assert job.params == {"echo": 7} and job.user_id is not None and job.status == "pending"
    listing = bgjobs(db_url, "jobs", "--status", "pending")
    assert listing.returncode == 0 and str(job.id) in listing.stdout
    as_json = bgjobs(db_url, "jobs", "--json", "--type", "noop")
    assert [json.loads(line)["id"] for line in as_json.stdout.splitlines()] == [str(job.id)]
    assert bgjobs(db_url, "jobs", "--type", "demo").stdout.count("\n") == 1  # header only


@pytest.mark.parametrize(("args", "message"), [
    (["enqueue", "noop", "--params", "{not json"], "not valid JSON"),
    (["enqueue", "no_such_type"], "unknown job type"),
    (["enqueue", "noop", "--params", '{"bogus": 1}'], "unknown param"),
    (["enqueue", "noop", "--params", "[1, 2]"], "JSON object"),
    (["enqueue", "noop", "--user", "nobody"], "no user"),
    (["jobs", "--user", "nobody"], "no user"),
    (["cancel", "not-a-uuid"], "job ids are UUIDs"),
    (["cancel", str(uuid.UUID(int=1))], "no job"),
])
def test_bad_input_is_one_line_and_changes_nothing(db_url, store, args, message):
    assert_one_line_error(bgjobs(db_url, *args), message)
    assert store.list_jobs() == []


def test_jobs_rejects_an_unknown_status(db_url):
    done = bgjobs(db_url, "jobs", "--status", "done")
    assert done.returncode == 2 and "invalid choice" in done.stderr


def test_cancel_and_requeue(db_url, store):
    job = add_job(store, "noop")
    done = bgjobs(db_url, "cancel", str(job.id))
    assert done.returncode == 0 and store.get_job(job.id).status == "cancelled"
    assert_one_line_error(bgjobs(db_url, "cancel", str(job.id)), "already finished")
    assert bgjobs(db_url, "requeue", str(job.id)).returncode == 0
    assert store.get_job(job.id).status == "pending"


def test_psql_opens_the_database_in_use(db_url, store):
    add_job(store, "noop")
    done = bgjobs(db_url, "psql", stdin="SELECT 'n=' || count(*) FROM background_jobs;\n")
    assert done.returncode == 0 and "n=1" in done.stdout


@pytest.mark.parametrize("args", [["jobs"], ["enqueue", "noop"], ["cancel", str(uuid.UUID(int=2))],
                                  ["migrate"], ["user", "create", "x"]])
def test_unreachable_database_is_one_line(args):
    assert_one_line_error(bgjobs(UNREACHABLE, *args), "Postgres")


@pytest.mark.parametrize("args", [["migrate"], ["jobs"], ["enqueue", "noop"], ["worker"],
                                  ["user", "create", "x"], ["events"], ["api"], ["run"]])
def test_a_database_url_that_is_no_postgres_url_is_one_line(args):
    # SQLAlchemy's spelling, the likeliest mistake; events used to start and retry it forever.
    done = bgjobs("postgresql+psycopg://postgres@127.0.0.1:5432/postgres", *args)
    assert_one_line_error(done, "DATABASE_URL is not a Postgres connection URL")
    assert "drop the +psycopg" in done.stderr


@pytest.mark.parametrize("args", [["enqueue", "noop"], ["worker"], ["api"], ["run"],
                                  ["schedules", "run", "x"]])
def test_task_modules_that_cannot_be_imported_are_one_line(db_url, args):
    env = {**url_env(db_url), "BGJOBS_TASK_MODULES": "no_such_host_module"}
    done = subprocess.run([BGJOBS, *args], env=env, capture_output=True, text=True, timeout=60)
    assert_one_line_error(done, "BGJOBS_TASK_MODULES: cannot import 'no_such_host_module'")


def test_enqueue_finds_task_modules_in_the_working_directory(db_url, store, tmp_path):
    # As `bgjobs worker` does: run from the app's folder, no PYTHONPATH.
    (tmp_path / "appjobs.py").write_text(
        "import bgjobs\n\n@bgjobs.task('from_app_folder')\ndef run(ctx):\n    return None\n")
    env = {**url_env(db_url), "BGJOBS_TASK_MODULES": "appjobs"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run([BGJOBS, "enqueue", "from_app_folder"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert store.get_job(uuid.UUID(done.stdout.strip())).job_type == "from_app_folder"


def test_two_tasks_of_one_name_stop_the_start_with_one_line(db_url, store, tmp_path):
    # A built-in's name is taken like any other: no host task replaces one.
    (tmp_path / "appjobs.py").write_text(
        "import bgjobs\n\n@bgjobs.task('report', params={'account': bgjobs.Param(int)})\n"
        "def run(ctx):\n    return None\n")
    enqueue = ("enqueue", "report", "--params", '{"account": 7}')
    done = bgjobs(db_url, *enqueue, env={"BGJOBS_TASK_MODULES": "appjobs"}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert store.get_job(uuid.UUID(done.stdout.strip())).params == {"account": 7}
    (tmp_path / "twice.py").write_text(
        "import bgjobs\n\n@bgjobs.task('report')\ndef again(ctx):\n    return None\n")
    (tmp_path / "mynoop.py").write_text(
        "import bgjobs\n\n@bgjobs.task('noop')\ndef again(ctx):\n    return None\n")
    for modules, where in (("appjobs,twice", "'twice': task 'report' is registered twice: in "
                            "appjobs and twice"),
                           ("mynoop", "'mynoop': task 'noop' is registered twice: in "
                            "bgjobs.tasks.builtin.noop and mynoop")):
        for args in (enqueue, ("worker",)):
            done = bgjobs(db_url, *args, env={"BGJOBS_TASK_MODULES": modules}, cwd=tmp_path)
            assert done.returncode != 0 and "Traceback" not in done.stderr
            assert done.stderr.splitlines()[-1].endswith(
                ": BGJOBS_TASK_MODULES: " + where), done.stderr


@pytest.mark.parametrize("setting", ["BGJOBS_API_BIND", "BGJOBS_EVENTS_BIND", "BGJOBS_PROXY_BIND"])
def test_run_says_an_address_is_in_use_before_starting_anything(db_url, setting):
    binds = {name: f"127.0.0.1:{free_port()}"
             for name in ("BGJOBS_API_BIND", "BGJOBS_EVENTS_BIND", "BGJOBS_PROXY_BIND")}
    host, port = binds[setting].split(":")
    with socket.create_server((host, int(port))):  # e.g. a bgjobs run already running
        done = subprocess.run([BGJOBS, "run"], env={**url_env(db_url), **binds},
                              capture_output=True, text=True, timeout=60)
    assert_one_line_error(done, f"bgjobs run: {binds[setting]} is in use (is bgjobs already "
                                f"running?); set {setting} to another host:port")
    assert done.stdout == ""


def test_two_concurrent_migrate_commands_both_succeed(new_database):
    url = new_database()
    procs = [subprocess.Popen([BGJOBS, "migrate"], env=url_env(url), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert sorted(out.strip().split()[0] for out, _ in outputs) == ["applied", "database"]
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM bgjobs_migrations").fetchone()[0] == len(
            migrate.discover())


@pytest.mark.parametrize(("schema", "message"), REFUSALS)
def test_migrate_refuses_a_database_it_cannot_fit_in_one_line(new_database, schema, message):
    url = new_database()
    with psycopg.connect(url) as conn:
        conn.execute(schema)
    done = bgjobs(url, "migrate")
    assert_one_line_error(done, "bgjobs: ")
    assert re.search(message, done.stderr), done.stderr
    assert done.stdout == ""


def test_user_create_in_an_apps_database_names_one_of_its_users(host_db_url, host_store):
    store = host_store
    ada = add_host_user(host_db_url, "ada@example.com")
    assert_one_line_error(bgjobs(host_db_url, "user", "create", "ada"),
                          "`bgjobs user create ada --id N`")
    assert_one_line_error(bgjobs(host_db_url, "user", "create", "ada", "--id", str(ada + 1)),
                          f"no user with id {ada + 1}")
    done = bgjobs(host_db_url, "user", "create", "ada", "--id", str(ada))
    assert done.returncode == 0, done.stderr
    user = store.user_for_token(done.stdout.strip().splitlines()[-1])
    assert (user.id, user.name) == (ada, "ada")
    assert_one_line_error(bgjobs(host_db_url, "user", "create", "other", "--id", str(ada)),
                          f"user id {ada} already has a bgjobs user")


def test_enqueue_and_jobs_take_the_id_of_one_of_the_apps_users(host_db_url, host_store):
    ada = add_host_user(host_db_url, "ada.cli@example.com")
    done = bgjobs(host_db_url, "enqueue", "noop", "--user-id", str(ada))
    assert done.returncode == 0, done.stderr
    job = host_store.get_job(uuid.UUID(done.stdout.strip()))
    assert job.user_id == ada
    listed = bgjobs(host_db_url, "jobs", "--user-id", str(ada), "--json")
    assert [json.loads(line)["id"] for line in listed.stdout.splitlines()] == [str(job.id)]
    before = host_store.list_jobs(limit=1000)
    assert_one_line_error(bgjobs(host_db_url, "enqueue", "noop", "--user-id", "987654"),
                          'no such user: Key (user_id)=(987654) is not present in table "users"')
    both = bgjobs(host_db_url, "enqueue", "noop", "--user", "ada", "--user-id", str(ada))
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    assert host_store.list_jobs(limit=1000) == before


def test_user_create_refuses_an_id_when_bgjobs_numbers_its_own_users(db_url, store):
    assert_one_line_error(bgjobs(db_url, "user", "create", "dora", "--id", "7"),
                          "--id links to a row of your app's users table")
    assert store.host_users_table() is None
    with pytest.raises(NotFound):
        store.get_user("dora")


@pytest.mark.parametrize("args", [["jobs"], ["enqueue", "noop"], ["cancel", str(uuid.UUID(int=2))],
                                  ["user", "create", "x"]])
def test_a_database_never_migrated_is_one_line_that_says_to_migrate(new_database, args):
    done = bgjobs(new_database(), *args)
    assert_one_line_error(done, "run `bgjobs migrate`")
