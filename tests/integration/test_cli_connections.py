"""`bgjobs` commands run in one process (a host app calling cli.main, the tests) leave no
connection behind: each command's pool is closed when it returns."""

from __future__ import annotations

import psycopg
import pytest

from bgjobs import cli


def _bgjobs_connections(conn: psycopg.Connection) -> int:
    return conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name = 'bgjobs' AND pid <> pg_backend_pid()").fetchone()[0]


def test_commands_close_their_pools_when_they_return(db_url: str, conn: psycopg.Connection,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DATABASE_URL", db_url)
    before = _bgjobs_connections(conn)
    for _ in range(5):
        assert cli.main(["schedules", "--json"]) == 0
    capsys.readouterr()
    assert _bgjobs_connections(conn) == before  # held until exit, it was one more per command
