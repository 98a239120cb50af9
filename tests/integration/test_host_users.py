"""bgjobs's users in an app's database are rows of the app's users table (same ids)."""

from __future__ import annotations

import pytest

from bgjobs.cli import _demo_token
from bgjobs.core import config
from bgjobs.core.errors import Conflict, InvalidInput, NotFound
from bgjobs.core.store import Store
from tests.conftest import add_host_user


def test_a_bgjobs_user_is_made_for_one_of_the_apps_users(host_db_url: str,
                                                         host_store: Store) -> None:
    assert host_store.host_users_table() == "users"
    ada = add_host_user(host_db_url, "ada@example.com")
    user, token = host_store.create_user("ada", user_id=ada)
    assert user.id == ada and host_store.user_for_token(token).id == ada
    with pytest.raises(Conflict, match=f"user id {ada} already has a bgjobs user"):
        host_store.create_user("ada2", user_id=ada)
    with pytest.raises(NotFound, match=f"no user with id {ada + 1}"):
        host_store.create_user("bob", user_id=ada + 1)
    with pytest.raises(InvalidInput, match="give the id of the app's user"):
        host_store.create_user("carol")


def test_bgjobs_run_makes_no_demo_user_in_an_apps_database(host_db_url: str,
                                                          host_store: Store, tmp_path) -> None:
    cfg = config.Config(database_url=host_db_url, data_dir=tmp_path)
    assert _demo_token(cfg, host_db_url) is None
    with pytest.raises(NotFound):
        host_store.get_user("demo")
