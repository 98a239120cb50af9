"""What enqueue returns is the stored row, though it reads back only the id (core/store_jobs.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg

import bgjobs
from tests.api_task_fixtures import EXCLUSIVE


def test_enqueue_returns_exactly_the_row_it_stored(store):
    user, _ = store.create_user("rows")
    later = datetime.now(UTC) + timedelta(hours=1)
    made = [
        bgjobs.enqueue("noop", {"echo": [1, 2.5, "x", None, {"b": 1, "a": 2}]}, store=store),
        bgjobs.enqueue("noop", user_id=user.id, priority=-5, run_after=later,
                       idempotency_key="k-1", store=store),
        bgjobs.enqueue(EXCLUSIVE, user_id=user.id, store=store),  # exclusive: a key
    ]
    for job in made:
        assert job == store.get_job(job.id)


def test_enqueue_many_returns_the_stored_rows_in_the_order_given(store):
    user, _ = store.create_user("rows_many")
    params = [{"echo": n} for n in range(300)] + [{"echo": {"nested": ["ok", 1.5]}}]
    made = bgjobs.enqueue_many("noop", params, user_id=user.id, store=store)
    assert [j.params["echo"] for j in made] == [p["echo"] for p in params]
    stored = {j.id: j for j in store.get_jobs(j.id for j in made)}
    assert [stored[j.id] for j in made] == made


def test_enqueue_many_inside_the_callers_transaction(store, db_url):
    with psycopg.connect(db_url) as app:
        made = bgjobs.enqueue_many("noop", [{}, {}], conn=app, store=store)
        app.commit()
    assert {j.id for j in store.list_jobs()} == {j.id for j in made}
