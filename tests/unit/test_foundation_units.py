"""Pieces of the foundation that need no database."""

from __future__ import annotations

import logging
import stat
import uuid

import pytest

from bgjobs.core import config, embedded, queries
from bgjobs.core.migrate import discover
from bgjobs.server import auth
from bgjobs.tasks.registry import InvalidParams, Param, Task


def test_query_blocks_parse_with_their_names():
    parsed = queries.parse("-- name: a\n-- purpose\nSELECT 1\n\n-- name: b\nSELECT 2 -- trailing\n")
    assert parsed == {"a": "SELECT 1", "b": "SELECT 2 -- trailing"}
    with pytest.raises(ValueError, match="twice"):
        queries.parse("-- name: a\nSELECT 1\n-- name: a\nSELECT 2\n")


def test_every_named_query_is_loaded_and_non_empty():
    loaded = queries.load()
    assert {"claim_jobs", "complete_jobs", "fail_jobs", "heartbeat_jobs"} <= set(loaded)
    assert all(sql.strip() for sql in loaded.values())


def test_queries_are_ascii_bytes_read_once():
    # Sent as bytes, whatever the connection's client encoding: only ASCII means the same
    # text in every encoding Postgres speaks to clients; and the same object on every call.
    loaded = queries.load()
    assert all(text.isascii() for text in loaded.values())
    assert queries.q("claim_jobs") == loaded["claim_jobs"].encode()
    assert queries.q("claim_jobs") is queries.q("claim_jobs")


def test_migrations_are_numbered_in_order():
    versions = [m.version for m in discover()]
    assert versions == sorted(versions) and versions[0] == 1


def test_param_validation_messages():
    t = Task("t", lambda ctx: None, {
        "n": Param(int, default=3, min=1, max=10),
        "x": Param(float, default=0.5),
        "mode": Param(str, default="a", choices=("a", "b")),
    })
    assert t.validate({}) == {"n": 3, "x": 0.5, "mode": "a"}
    assert t.validate({"x": 2}) == {"n": 3, "x": 2.0, "mode": "a"}
    for bad, message in [({"n": 0}, "at least 1"), ({"n": 11}, "at most 10"),
                         ({"n": "3"}, "an integer"), ({"n": True}, "an integer"),
                         ({"mode": "c"}, "one of"), ({"zzz": 1}, "unknown param"),
                         ([1], "JSON object")]:
        with pytest.raises(InvalidParams, match=message):
            t.validate(bad)


def test_session_cookie_round_trip_and_tampering():
    session_id = uuid.uuid4()
    value = auth.make_session("secret", session_id)
    assert auth.read_session("secret", value) == session_id
    assert auth.read_session("other-secret", value) is None
    assert auth.read_session("secret", value[:-2] + "xx") is None
    assert auth.read_session("secret", "garbage") is None


@pytest.mark.parametrize(("header", "token"), [
    ("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", None), ("Bearer", None),
    (None, None), ("", None),
])
def test_bearer_token_parsing(header, token):
    assert auth.bearer_token(header) == token


@pytest.mark.parametrize(("name", "value", "message"), [
    ("BGJOBS_API_WORKERS", "many", "BGJOBS_API_WORKERS must be a whole number"),
    ("BGJOBS_API_THREADS", "0", "BGJOBS_API_THREADS must be at least 1"),
    ("BGJOBS_LOG_LEVEL", "loud", "BGJOBS_LOG_LEVEL must be one of"),
])
def test_config_rejects_settings_it_cannot_use(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(config.ConfigError, match=message):
        config.load()


@pytest.mark.parametrize(("value", "message"), [
    ("postgresql+psycopg://ann:s3cret@127.0.0.1:5432/db", r"drop the \+psycopg"),
    ("notaurl", 'after "notaurl"'),
    ("mysql://ann@127.0.0.1/db", "mysql://"),
    ("postgresql://ann@127.0.0.1/db?bogus=1", "bogus"),
])
def test_config_refuses_a_database_url_libpq_cannot_read(monkeypatch, value, message):
    monkeypatch.setenv("DATABASE_URL", value)
    with pytest.raises(config.ConfigError, match=message) as refused:
        config.load()
    text = str(refused.value)
    assert text.startswith("DATABASE_URL is not a Postgres connection URL (postgresql://")
    assert "s3cret" not in text and "\n" not in text


@pytest.mark.parametrize("value", [
    "postgresql://ann:pw@127.0.0.1:5432/db", "postgres://ann@db.example/app",
    "host=/tmp dbname=app",
    # A primary and its standby (docs/operations.md, "Failover"), in both forms.
    "postgresql://ann@db1:5432,db2:5433/app?target_session_attrs=read-write",
    "host=db1,db2 port=5432,5433 dbname=app user=ann target_session_attrs=read-write",
])
def test_config_accepts_libpq_urls_and_key_value_strings(monkeypatch, value):
    monkeypatch.setenv("DATABASE_URL", value)
    assert config.load().database_url == value


def test_config_reads_lists_flags_and_paths(monkeypatch, tmp_path):
    monkeypatch.setenv("BGJOBS_TASK_MODULES", " myapp.jobs, ,other.jobs ")
    monkeypatch.setenv("BGJOBS_COOKIE_SECURE", "yes")
    monkeypatch.setenv("BGJOBS_PG_BIN", str(tmp_path))
    monkeypatch.setenv("BGJOBS_LOG_LEVEL", "debug")
    cfg = config.load()
    assert cfg.task_modules == ("myapp.jobs", "other.jobs")
    assert cfg.cookie_secure and cfg.pg_bin == tmp_path and cfg.log_level == "DEBUG"


def test_dev_secret_key_is_generated_once(tmp_path, monkeypatch):
    monkeypatch.delenv("BGJOBS_SECRET_KEY", raising=False)
    monkeypatch.setenv("BGJOBS_DATA_DIR", str(tmp_path))
    first = config.load().secret_key()
    assert len(first) > 40 and config.load().secret_key() == first
    monkeypatch.setenv("BGJOBS_SECRET_KEY", "from-env")
    assert config.load().secret_key() == "from-env"


def test_the_breaker_answers_at_once_while_open_and_its_probe_closes_it(monkeypatch):
    import threading

    import psycopg

    from bgjobs.core import db
    from bgjobs.core.errors import DatabaseUnavailable

    monkeypatch.setattr(db, "PROBE_INTERVAL", 0.01)
    attempts: list[int] = []
    back = threading.Event()

    def probe() -> None:
        attempts.append(1)
        if len(attempts) < 3:
            raise psycopg.OperationalError("connection refused")
        back.set()

    breaker = db.Breaker("postgresql://nowhere/x", "test", probe=probe)
    breaker.check()  # closed: nothing known to be wrong
    breaker.failed("cannot connect to Postgres")
    with pytest.raises(DatabaseUnavailable, match="unreachable for 0s"):
        breaker.check()
    assert back.wait(30), "the probe never reached Postgres"
    for _ in range(3000):  # the probe closes it right after connecting
        if not breaker.is_open:
            break
        threading.Event().wait(0.01)
    breaker.check()
    assert len(attempts) == 3  # it kept trying, on its own, until Postgres answered


def test_the_proxy_config_is_filled_in_and_a_missing_nginx_is_one_line(monkeypatch, capsys,
                                                                        tmp_path):
    from bgjobs import cli, proxy

    cfg = config.Config(api_bind="10.0.0.5:9000", events_bind="10.0.0.5:9001",
                        proxy_bind="0.0.0.0:80", max_body_bytes=1000)
    site = proxy.site_config(cfg)
    assert "{{" not in site
    for line in ("server 10.0.0.5:9000;", "server 10.0.0.5:9001;", "listen 0.0.0.0:80;",
                 "client_max_body_size 1000;", "proxy_buffering off;"):
        assert line in site, line

    monkeypatch.setattr(proxy.shutil, "which", lambda name: None)
    monkeypatch.setattr(proxy.os, "access", lambda path, mode: False)
    monkeypatch.setenv("BGJOBS_DATA_DIR", str(tmp_path))
    assert cli.main(["proxy"]) == 1
    assert capsys.readouterr().err.startswith("bgjobs: nginx is not installed")
    assert not (tmp_path / "proxy").exists()  # nothing written


def test_folders_above_the_cluster_get_o_x_only_where_missing_and_each_is_logged(tmp_path,
                                                                                  caplog):
    closed, opened = tmp_path / "closed", tmp_path / "closed" / "opened"
    opened.mkdir(parents=True)
    closed.chmod(0o700)
    opened.chmod(0o755)
    with caplog.at_level(logging.INFO, logger="bgjobs.core.embedded"):
        embedded.allow_traverse(opened / "pgdata")
    assert stat.S_IMODE(closed.stat().st_mode) == 0o701  # passed through, still not listed
    assert stat.S_IMODE(opened.stat().st_mode) == 0o755
    changed = {r.getMessage().split(",")[0] for r in caplog.records}
    assert f"added o+x to {closed}" in changed and f"added o+x to {opened}" not in changed
