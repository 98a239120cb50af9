"""bgjobs_job_types: the database knows each job type's exclusivity and max_attempts, so an
INSERT that did not come through bgjobs's enqueue path (psql, another service) gets them too."""

from __future__ import annotations

import psycopg
import pytest

from bgjobs import cli
from bgjobs.core.store import Store
from bgjobs.core.store_ops import JobTypeRow
from bgjobs.tasks import enqueue, registry
from bgjobs.tasks.registry import Param, task
from tests.api_task_fixtures import EXCLUSIVE

PATIENT = "patient_job"


@task(PATIENT, params={"n": Param(int, default=1)}, max_attempts=7)
def patient(ctx: object) -> None:
    """A non-exclusive type with its own max_attempts."""


def _insert(conn: psycopg.Connection, job_type: str, user_id: int | None, **columns: object):
    names = ["job_type", "user_id", *columns]
    row = conn.execute(f"INSERT INTO background_jobs ({', '.join(names)}) VALUES "
                       f"({', '.join(['%s'] * len(names))}) "
                       "RETURNING max_attempts, exclusive_key",
                       [job_type, user_id, *columns.values()]).fetchone()
    return row


def test_plain_sql_inserts_get_the_types_exclusivity_and_max_attempts(store: Store,
                                                                       conn) -> None:
    assert registry.record_types(store)
    user, _ = store.create_user("dba")
    assert _insert(conn, EXCLUSIVE, user.id) == (3, EXCLUSIVE)
    with pytest.raises(psycopg.errors.UniqueViolation, match="exclusive"):
        _insert(conn, EXCLUSIVE, user.id)
    assert _insert(conn, EXCLUSIVE, None) == (3, EXCLUSIVE)  # nobody's: one at a time too
    with pytest.raises(psycopg.errors.UniqueViolation):
        _insert(conn, EXCLUSIVE, None)
    # Once the active one is finished, the next may start.
    conn.execute("UPDATE background_jobs SET status = 'cancelled' WHERE user_id = %s", [user.id])
    assert _insert(conn, EXCLUSIVE, user.id) == (3, EXCLUSIVE)

    assert _insert(conn, PATIENT, user.id) == (7, None)
    assert _insert(conn, PATIENT, user.id) == (7, None)  # not exclusive
    assert _insert(conn, PATIENT, user.id, max_attempts=2) == (2, None)  # as given
    assert _insert(conn, "never_registered", None) == (3, None)
    # The enqueue path sets both itself, and agrees.
    with pytest.raises(Exception, match="already pending or running"):
        enqueue.enqueue(EXCLUSIVE, {}, user_id=user.id, store=store)
    assert enqueue.enqueue(PATIENT, {}, user_id=user.id, store=store).max_attempts == 7


def test_a_type_that_changed_is_recorded_again(store: Store, conn) -> None:
    store.sync_job_types([JobTypeRow("changing", True, 5)])
    store.sync_job_types([JobTypeRow("changing", False, 2)])
    assert conn.execute("SELECT exclusive, max_attempts FROM bgjobs_job_types "
                        "WHERE job_type = 'changing'").fetchone() == (False, 2)


def test_migrate_records_the_types(db_url: str, conn, monkeypatch, capsys) -> None:
    conn.execute("DELETE FROM bgjobs_job_types")
    monkeypatch.setenv("DATABASE_URL", db_url)
    assert cli.main(["migrate"]) == 0
    assert "up to date" in capsys.readouterr().out
    recorded = dict(conn.execute("SELECT job_type, exclusive FROM bgjobs_job_types"))
    assert recorded[EXCLUSIVE] is True and recorded["noop"] is False


def test_migrate_without_the_host_modules_records_the_built_in_types(
        db_url: str, conn, monkeypatch, capsys) -> None:
    conn.execute("DELETE FROM bgjobs_job_types")
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("BGJOBS_TASK_MODULES", "no_such_host_module")
    assert cli.main(["migrate"]) == 0  # the API and workers record theirs when they start
    assert "no_such_host_module" in capsys.readouterr().err
    assert conn.execute("SELECT exclusive FROM bgjobs_job_types WHERE job_type = 'demo'"
                        ).fetchone() == (False,)


def test_types_are_not_recorded_when_the_database_is_down() -> None:
    from bgjobs.core.db import make_pool
    from tests.procs import free_port

    pool = make_pool(f"postgresql://postgres@127.0.0.1:{free_port()}/nothing", max_size=1)
    try:
        assert registry.record_types(Store(pool)) is False  # logged, and nothing raised
    finally:
        pool.close()


def test_008_applies_after_009_on_a_database_that_had_009_first(new_database, tmp_path) -> None:
    import shutil

    from bgjobs.core import migrate

    url = new_database()
    folder = tmp_path / "migrations"
    shutil.copytree(str(migrate.migrations_dir()), folder)
    # A database migrated before 008 existed (nor the migrations after 011, which came later).
    held_back = {f: f.read_text() for f in folder.glob("*.sql")
                 if f.name.startswith("008_") or int(f.name[:3]) > 11}
    for f in held_back:
        f.unlink()
    with psycopg.connect(url) as conn:
        assert "009_operations.sql" in migrate.apply(conn, folder)
    for f, text in held_back.items():
        f.write_text(text)
    with psycopg.connect(url) as conn:
        assert migrate.apply(conn, folder) == sorted(f.name for f in held_back)
        conn.execute("INSERT INTO bgjobs_job_types (job_type, exclusive, max_running) "
                     "VALUES ('late', true, 2)")
        conn.execute("INSERT INTO background_jobs (job_type) VALUES ('late')")
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("INSERT INTO background_jobs (job_type) VALUES ('late')")
