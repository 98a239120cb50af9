"""A migration that adds a column to background_jobs must not break the reads of connections
that prepared `SELECT * FROM background_jobs` before it ("cached plan must not change result
type", forever, on that connection): bgjobs's cursors prepare them again (core/replan.py)."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest

from bgjobs.core.db import connect
from bgjobs.core.queries import q
from bgjobs.server.events_db import make_pool as events_pool
from tests.conftest import add_job, store_on

PREPARED_AFTER = 6  # psycopg prepares a statement on its 5th run


def add_column(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE background_jobs ADD COLUMN note_{uuid.uuid4().hex[:8]} text")


@pytest.fixture
def fresh(new_database) -> str:
    """A database of this test's own: its columns change."""
    from bgjobs.core import migrate

    url = new_database()
    with psycopg.connect(url) as conn:
        migrate.apply(conn)
    return url


def test_a_pooled_connection_reads_on_after_a_column_is_added(fresh):
    with store_on(fresh) as store:
        job = add_job(store)
        with store.pool.connection() as conn:
            for _ in range(PREPARED_AFTER):
                conn.execute(q("get_job"), {"id": job.id, "user_id": None})
            add_column(fresh)
            row = conn.execute(q("get_job"), {"id": job.id, "user_id": None}).fetchone()
            assert row[0] == job.id
            add_column(fresh)  # and again, on the same connection
            for _ in range(PREPARED_AFTER):
                conn.execute(q("get_job"), {"id": job.id, "user_id": None})
            add_column(fresh)
            assert conn.execute(q("get_job"), {"id": job.id, "user_id": None}).fetchone()
        # The code still running knows no such column: its rows leave it out.
        assert store.get_job(job.id).id == job.id
        assert [j.id for j in store.list_jobs()] == [job.id]


def test_inside_a_transaction_the_error_stands_and_the_next_transaction_works(fresh):
    with connect(fresh, autocommit=True, prepare_threshold=5) as conn:
        conn.execute("INSERT INTO background_jobs (job_type) VALUES ('noop')")
        for _ in range(PREPARED_AFTER):
            conn.execute("SELECT * FROM background_jobs")
        add_column(fresh)
        with pytest.raises(psycopg.errors.FeatureNotSupported), conn.transaction():
            conn.execute("SELECT * FROM background_jobs")
        with conn.transaction():
            assert conn.execute("SELECT * FROM background_jobs").fetchall()


def test_the_events_services_pool_reads_on_after_a_column_is_added(fresh):
    async def main() -> None:
        pool = events_pool(fresh, max_size=1)
        await pool.open(wait=True)
        try:
            async with pool.connection() as conn:
                await conn.execute("INSERT INTO background_jobs (job_type) VALUES ('noop')")
                for _ in range(PREPARED_AFTER):
                    await conn.execute("SELECT * FROM background_jobs")
                add_column(fresh)
                cur = await conn.execute("SELECT * FROM background_jobs")
                assert await cur.fetchall()
        finally:
            await pool.close()

    asyncio.run(main())
