"""Job types and helpers for the API tests.

Importing this module (or naming it in BGJOBS_TASK_MODULES for a gunicorn under test)
registers ``api_exclusive``, an exclusive test type.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient

from bgjobs.tasks.registry import Param, task

EXCLUSIVE = "api_exclusive"
METRICS_TOKEN = "metrics-test-token"
METRICS_AUTH = {"Authorization": f"Bearer {METRICS_TOKEN}"}


@task(EXCLUSIVE, params={"n": Param(int, default=1, min=1, max=100)}, exclusive=True)
def api_exclusive(ctx: Any) -> Any:
    """An exclusive job type for the API tests."""
    return {"n": ctx.params["n"]}


def snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the tables a request could change, in a stable order."""
    with psycopg.connect(url) as conn:
        return {
            table: conn.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall()
            for table, order in [("background_jobs", "id"), ("bgjobs_users", "id"),
                                 ("bgjobs_api_tokens", "id")]
        }


@dataclass
class ApiUser:
    id: int
    name: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class Api:
    """A Flask test client on a fresh app, with two users who own nothing yet."""

    app: Flask
    client: FlaskClient
    alice: ApiUser
    bob: ApiUser
    url: str


@pytest.fixture(name="api")
def api_fixture(store: Any, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    from bgjobs.server.api import create_app

    monkeypatch.setenv("BGJOBS_SECRET_KEY", "api-test-secret")
    monkeypatch.setenv("BGJOBS_METRICS_TOKEN", METRICS_TOKEN)
    monkeypatch.delenv("BGJOBS_COOKIE_SECURE", raising=False)
    users = []
    for name in ("alice", "bob"):
        user, token = store.create_user(name)
        users.append(ApiUser(user.id, user.name, token))
    app = create_app(store=store)
    app.testing = False  # errors go through the JSON handlers, as in production
    with app.test_client() as client:
        yield Api(app, client, users[0], users[1], db_url)
