"""The ``bgjobs`` command: run the services, migrate, manage users and jobs from a shell."""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg

from bgjobs import proxy
from bgjobs.core import channels, embedded, migrate
from bgjobs.core import config as config_mod
from bgjobs.core.config import Config, ConfigError
from bgjobs.core.db import connect, database_url, direct_url, make_pool
from bgjobs.core.errors import BgjobsError, Conflict, first_line
from bgjobs.core.jobs import parse_job_id
from bgjobs.core.pool_holder import PoolHolder
from bgjobs.core.store import Store
from bgjobs.tasks import enqueue, registry, schedules

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1


class CliError(BgjobsError):
    """A one-line message for the user; the command exits non-zero."""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    # `bgjobs worker ...` hands its arguments to the worker's own parser (and --help).
    if args and args[0] == "worker":
        from bgjobs.worker.main import main as worker_main

        return worker_main(args[1:])
    parser = _parser()
    ns = parser.parse_args(args)
    if not getattr(ns, "func", None):
        parser.print_help()
        return 2
    try:
        cfg = config_mod.load()
        config_mod.setup_logging(cfg.log_level)
        return ns.func(ns, cfg) or 0
    except BgjobsError as exc:  # every error bgjobs raises on purpose: one line, no traceback
        print(f"bgjobs: {first_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        while _command_pools:  # a command's pools end with it, as its connections should
            _command_pools.pop().close()


#: The pools a command opened through _store, closed when it returns (main's finally): held
#: until the interpreter's exit instead, a process that runs many commands (the tests, a host
#: app calling cli.main) would keep a connection per command.
_command_pools: list[PoolHolder] = []


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bgjobs",
        description="Postgres-native background jobs with live progress. DATABASE_URL picks "
                    "the database; unset, bgjobs runs its own embedded Postgres.",
    )
    sub = p.add_subparsers(title="commands", metavar="COMMAND")

    def cmd(name: str, func: Any, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(func=func)
        return sp

    cmd("run", cmd_run, "run everything: database, migrations, API, events, workers (Ctrl-C stops)")
    cmd("api", cmd_api, "run the HTTP API under gunicorn (BGJOBS_API_BIND, default 127.0.0.1:8000)")
    cmd("events", cmd_events,
        "run the SSE events service under gunicorn (BGJOBS_EVENTS_BIND, default 127.0.0.1:8001)")
    sub.add_parser("worker", help="run worker processes for the built-in job types and those of "
                                  "BGJOBS_TASK_MODULES (see `bgjobs worker --help`)")
    prox = cmd("proxy", cmd_proxy,
               "run nginx in front of the API and the events service (BGJOBS_PROXY_BIND, "
               f"default {proxy.DEFAULT_BIND})")
    prox.add_argument("--print", action="store_true", dest="print_config",
                      help="print the nginx site config (for a production nginx) and exit")
    cmd("migrate", cmd_migrate,
        "create or upgrade bgjobs's tables in the database in use and record its job types "
        "(safe to repeat)")
    grant = cmd("grant", cmd_grant,
                "grant ROLE what the API, events and workers need and nothing else (run as the "
                "owner of bgjobs's tables; `bgjobs migrate` grants it again after upgrades)")
    grant.add_argument("role", help="an existing role, e.g. bgjobs_app")
    grant.add_argument("--print", action="store_true", dest="print_only",
                       help="print the GRANT statements without running them")

    user = cmd("user", None, "manage users and their API tokens")
    usub = user.add_subparsers(title="user commands", metavar="ACTION")
    uc = usub.add_parser("create", help="create a user and print a new API token (shown once)")
    uc.add_argument("name")
    uc.add_argument("--id", type=int, dest="user_id", metavar="N",
                    help="in your app's database (bgjobs installed beside a users table): the "
                         "id of your app's user this bgjobs user is; required there")
    uc.add_argument("--admin", action="store_true",
                    help="an admin: sees and steers every user's jobs in the operator view")
    uc.set_defaults(func=cmd_user_create)
    ua = usub.add_parser("admin", help="make a user an admin (or not, with --remove)")
    ua.add_argument("name")
    ua.add_argument("--remove", action="store_true", help="no longer an admin")
    ua.set_defaults(func=cmd_user_admin)
    ut = usub.add_parser("token", help="print a new API token for an existing user (shown once)")
    ut.add_argument("name")
    ut.set_defaults(func=cmd_user_token)
    ur = usub.add_parser("revoke", help="revoke every API token (and session) of a user")
    ur.add_argument("name")
    ur.set_defaults(func=cmd_user_revoke)

    enq = cmd("enqueue", cmd_enqueue, "enqueue a job of TYPE")
    enq.add_argument("type", help="job type, e.g. demo, noop, or one of your app's")
    enq.add_argument("--params", default="{}", help="the job's params as a JSON object")
    _owner_options(enq, "owner's user name (default: no owner)",
                   "owner's id in your app's users table (default: no owner)")
    enq.add_argument("--priority", type=int, default=0, help="lower runs first (default 0)")
    enq.add_argument("--run-after", metavar="TIME",
                     help="not before this ISO 8601 time with a timezone, e.g. "
                          "2030-01-01T09:00:00Z (park: 9999-12-30T00:00:00Z)")

    jobs = cmd("jobs", cmd_jobs, "list jobs, newest first")
    jobs.add_argument("--status", choices=["pending", "running", "complete", "error", "cancelled"])
    jobs.add_argument("--type", dest="job_type")
    _owner_options(jobs, "only this user's jobs", "only the jobs of this id of your app's users")
    jobs.add_argument("--limit", type=int, default=50)
    jobs.add_argument("--json", action="store_true", help="one JSON object per line")

    cancel = cmd("cancel", cmd_cancel, "cancel a pending or running job")
    cancel.add_argument("id")
    requeue = cmd("requeue", cmd_requeue, "run a job again from the start")
    requeue.add_argument("id")

    sched = cmd("schedules", cmd_schedules, "list the periodic jobs with their next run")
    sched.add_argument("--json", action="store_true", help="one JSON object per line")
    ssub = sched.add_subparsers(title="schedule commands", metavar="ACTION")
    run_now = ssub.add_parser("run", help="enqueue a schedule's job now (its ticks are kept)")
    run_now.add_argument("name")
    run_now.set_defaults(func=cmd_schedule_run)

    cmd("psql", cmd_psql, "open psql on the database in use (embedded or DATABASE_URL)")

    db = cmd("db", None, "the embedded Postgres (only when DATABASE_URL is unset)")
    dsub = db.add_subparsers(title="db commands", metavar="ACTION")
    for action, func, text in [
        ("start", cmd_db_start, "start the embedded cluster (creating it if needed)"),
        ("stop", cmd_db_stop, "stop the embedded cluster"),
        ("url", cmd_db_url, "print the database URL in use"),
        ("reset", cmd_db_reset, "stop and delete the embedded cluster and all its data"),
    ]:
        dsub.add_parser(action, help=text, description=text).set_defaults(func=func)
    return p


# Services --------------------------------------------------------------------------------------


def _gunicorn(service: str, cfg: Config) -> int:
    env = {**os.environ, "BGJOBS_SERVICE": service,
           "DATABASE_URL": database_url(cfg, start=False)}
    argv = [sys.executable, "-m", "gunicorn", "-c", "python:bgjobs.server.gunicorn_conf"]
    os.execve(sys.executable, argv, env)
    return 0  # pragma: no cover


def cmd_api(ns: argparse.Namespace, cfg: Config) -> int:
    registry.load_tasks(cfg.task_modules)  # a bad module: one line here, not a failed boot
    return _gunicorn("api", cfg)


def cmd_events(ns: argparse.Namespace, cfg: Config) -> int:
    return _gunicorn("events", cfg)


def cmd_proxy(ns: argparse.Namespace, cfg: Config) -> int:
    if ns.print_config:
        print(proxy.site_config(cfg), end="")
        return 0
    try:
        binary, args = proxy.prepare(cfg)
    except proxy.ProxyError as exc:
        raise CliError(str(exc)) from None
    print(f"bgjobs proxy: nginx on {cfg.proxy_bind or proxy.DEFAULT_BIND} -> API {cfg.api_bind}, "
          f"events {cfg.events_bind}", file=sys.stderr, flush=True)
    os.execv(binary, [binary, *args])
    return 0  # pragma: no cover


def cmd_migrate(ns: argparse.Namespace, cfg: Config) -> int:
    url = _start_embedded(cfg) if cfg.embedded else direct_url(cfg)
    applied, binding = _migrate(url, cfg)
    print(f"applied {', '.join(applied)}" if applied else "database is up to date")
    print(binding)
    return 0


def cmd_grant(ns: argparse.Namespace, cfg: Config) -> int:
    """`bgjobs grant ROLE`: bgjobs_grant_runtime() (013_runtime_roles.sql), printing its GRANTs."""
    with connect(database_url(cfg, start=False), autocommit=True) as conn:
        if conn.execute("SELECT to_regprocedure('bgjobs_grant_runtime(text, boolean)')"
                        ).fetchone() == (None,):
            raise CliError("this database has no bgjobs_grant_runtime(): run `bgjobs migrate` "
                           "first")
        try:
            statements = [r[0] for r in conn.execute(
                "SELECT * FROM bgjobs_grant_runtime(%s, %s)", (ns.role, not ns.print_only))]
        except psycopg.Error as exc:
            raise CliError(f"cannot grant {ns.role}: {first_line(exc)}") from None
    print("\n".join(statements))
    if not ns.print_only:
        print(f"bgjobs: granted {ns.role} what the services need ({len(statements)} grants); "
              "`bgjobs migrate` grants it again after every upgrade", file=sys.stderr)
    return 0


def _start_embedded(cfg: Config) -> str:
    """The embedded cluster's URL, started if need be, and left running (it is bgjobs's database
    from now on): saying so, since the user asked for a migration, not a server."""
    cluster = _cluster(cfg)
    if cluster.ensure_running():
        print(f"bgjobs: DATABASE_URL is unset: started the embedded Postgres in {cluster.pgdata}; "
              "it keeps running (stop it with `bgjobs db stop`)", file=sys.stderr)
    return cluster.url()


def _migrate(url: str, cfg: Config) -> tuple[list[str], str]:
    """Apply the migrations, then record the job types this installation knows.

    Returns the migrations applied and the line saying which table jobs belong to; warns on
    stderr when that is not the app's table it could be (`bgjobs migrate` and `bgjobs run`).
    ``url`` must give a session (BGJOBS_DIRECT_URL): migrations hold a session-level lock.
    """
    channels.require_session(url, "bgjobs migrate (its lock)")
    with connect(url) as conn:
        applied = migrate.apply(conn, users_table=cfg.users_table,
                                users_table_set=cfg.users_table_set,
                                locks=migrate.LockPolicy(cfg.migrate_lock_timeout,
                                                         cfg.migrate_lock_tries))
        binding, warning = migrate.users_binding(conn, cfg.users_table,
                                                 users_table_set=cfg.users_table_set)
    if warning:
        print(f"bgjobs: warning: {warning}", file=sys.stderr)
    try:
        registry.load_tasks(cfg.task_modules)
    except ConfigError as exc:
        # The API and the workers record their types when they start, so this is no failure.
        print(f"bgjobs: warning: {exc}; recording the built-in job types only", file=sys.stderr)
    with PoolHolder(lambda: make_pool(url, min_size=1, max_size=1, open_wait=True)) as store:
        store.sync_job_types(registry.type_rows())
    return applied, binding


def _store(cfg: Config) -> Store:
    url = database_url(cfg, start=False)
    with connect(url):
        pass  # fail fast, with one line, when the database is unreachable
    holder = PoolHolder(lambda: make_pool(url, min_size=1, max_size=2, open_wait=True))
    _command_pools.append(holder)
    return holder.store()


def cmd_user_create(ns: argparse.Namespace, cfg: Config) -> int:
    store = _store(cfg)
    host = store.host_users_table()
    if host and ns.user_id is None:
        raise CliError(f"bgjobs's users are rows of your app's table {host} in this database: "
                       f"give the app user's id, `bgjobs user create {ns.name} --id N`")
    if not host and ns.user_id is not None:
        raise CliError("--id links to a row of your app's users table, and bgjobs was not "
                       "installed beside one in this database (it numbers its own users)")
    user, token = store.create_user(ns.name, user_id=ns.user_id, is_admin=ns.admin)
    kind = "admin" if user.is_admin else "user"
    print(f"created {kind} {user.name} (id {user.id}); API token (shown once, keep it safe):")
    print(token)
    return 0


def cmd_user_admin(ns: argparse.Namespace, cfg: Config) -> int:
    user = _store(cfg).set_admin(ns.name, not ns.remove)
    print(f"{user.name} is {'now an admin' if user.is_admin else 'no longer an admin'}")
    return 0


def cmd_user_token(ns: argparse.Namespace, cfg: Config) -> int:
    user, token = _store(cfg).create_token(ns.name)
    print(f"new API token for {user.name} (shown once):")
    print(token)
    return 0


def cmd_user_revoke(ns: argparse.Namespace, cfg: Config) -> int:
    count = _store(cfg).revoke_tokens(ns.name)
    print(f"revoked {count} token(s) of {ns.name}")
    return 0


def _owner_options(parser: argparse.ArgumentParser, by_name: str, by_id: str) -> None:
    """--user NAME (a bgjobs user) or --user-id N (any id jobs may reference: your app's)."""
    owner = parser.add_mutually_exclusive_group()
    owner.add_argument("--user", help=by_name)
    owner.add_argument("--user-id", type=int, metavar="N", help=by_id)


def _owner_id(ns: argparse.Namespace, store: Store) -> int | None:
    return store.get_user(ns.user).id if ns.user else ns.user_id


def cmd_enqueue(ns: argparse.Namespace, cfg: Config) -> int:
    try:
        params = json.loads(ns.params)
    except json.JSONDecodeError as exc:
        raise CliError(f"--params is not valid JSON: {exc}") from None
    run_after = None
    if ns.run_after is not None:
        try:
            run_after = datetime.fromisoformat(ns.run_after)
        except ValueError:
            raise CliError(f"--run-after is not an ISO 8601 time: {ns.run_after!r}") from None
    registry.load_tasks(cfg.task_modules)
    registry.get(ns.type)  # an unknown type fails before the database is asked anything
    store = _store(cfg)
    user_id = _owner_id(ns, store)
    try:
        job = enqueue.enqueue(ns.type, params, user_id=user_id, priority=ns.priority,
                              run_after=run_after, store=store)
    except Conflict as exc:
        raise CliError(f"{exc} (job {exc.job_id})") from None
    print(job.id)
    return 0


def cmd_jobs(ns: argparse.Namespace, cfg: Config) -> int:
    store = _store(cfg)
    user_id = _owner_id(ns, store)
    jobs = store.list_jobs(user_id=user_id, status=ns.status, job_type=ns.job_type,
                           limit=ns.limit)
    if ns.json:
        for job in jobs:
            print(json.dumps(job.to_json()))
        return 0
    print(f"{'ID':36}  {'TYPE':12}  {'STATUS':9}  {'PROGRESS':>9}  {'ATT':>3}  CREATED")
    for job in jobs:
        prog = job.progress if isinstance(job.progress, dict) else {}  # a DBA may write any JSON
        done = (f"{prog.get('current')}/{prog.get('total')}"
                if prog.get("total") is not None else "-")
        created = job.created_at.strftime("%Y-%m-%d %H:%M:%S") if job.created_at else "-"
        note = (f"  (unreadable: {', '.join(n for n, _ in job.unreadable)}; see docs/dba.md)"
                if job.unreadable else "")
        print(f"{job.id!s:36}  {job.job_type:12.12}  {job.status:9}  {done:>9}  "
              f"{job.attempts:>3}  {created}{note}")
    return 0


def cmd_cancel(ns: argparse.Namespace, cfg: Config) -> int:
    job = _store(cfg).cancel(parse_job_id(ns.id))
    print(f"cancelled {job.id}")
    return 0


def cmd_requeue(ns: argparse.Namespace, cfg: Config) -> int:
    job = _store(cfg).requeue(parse_job_id(ns.id))
    print(f"requeued {job.id}")
    return 0


def cmd_schedules(ns: argparse.Namespace, cfg: Config) -> int:
    rows = [schedules.describe(s) for s in _store(cfg).schedules()]
    if ns.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    print(f"{'NAME':24}  {'TYPE':14}  {'CRON':16}  {'TIMEZONE':16}  {'NEXT RUN (UTC)':20}  "
          "SOURCE")
    for row in rows:
        when = ("disabled" if not row["enabled"] else row["problem"] and "invalid"
                or row["next_run"][:19].replace("T", " "))
        print(f"{row['name']:24.24}  {row['type']:14.14}  {row['cron']:16.16}  "
              f"{row['timezone']:16.16}  {when:20}  {row['source']}")
    if not rows:
        print("(no schedules: declare @task(..., cron=...) or insert into bgjobs_schedules)")
    return 0


def cmd_schedule_run(ns: argparse.Namespace, cfg: Config) -> int:
    registry.load_tasks(cfg.task_modules)
    job = enqueue.run_schedule_now(_store(cfg), ns.name)
    print(job.id)
    return 0


def cmd_psql(ns: argparse.Namespace, cfg: Config) -> int:
    url = database_url(cfg, start=False)
    psql = shutil.which("psql") or str(embedded.bin_dir(cfg.pg_bin) / "psql")
    os.execvp(psql, [psql, url])
    return 0  # pragma: no cover


def _cluster(cfg: Config) -> embedded.Cluster:
    if not cfg.embedded:
        raise CliError("DATABASE_URL is set: the embedded cluster is not in use")
    return embedded.Cluster(cfg.data_dir, cfg.pg_bin, cfg.pg_durable)


def cmd_db_start(ns: argparse.Namespace, cfg: Config) -> int:
    cluster = _cluster(cfg)
    cluster.ensure_running()
    print(cluster.url())
    return 0


def cmd_db_stop(ns: argparse.Namespace, cfg: Config) -> int:
    cluster = _cluster(cfg)
    if cluster.stop():
        print(f"stopped the embedded Postgres in {cluster.pgdata}")
    else:
        print(f"the embedded Postgres in {cluster.pgdata} was not running")
    return 0


def cmd_db_url(ns: argparse.Namespace, cfg: Config) -> int:
    print(database_url(cfg, start=False))
    return 0


def cmd_db_reset(ns: argparse.Namespace, cfg: Config) -> int:
    cluster = _cluster(cfg)
    try:
        cluster.stop()
    except embedded.EmbeddedError:
        # Made by another major whose binaries are gone: none of ours can be running it.
        if (cluster.pgdata / "postmaster.pid").exists():
            raise CliError(f"{cluster.pgdata} has a postmaster.pid: stop that Postgres first, "
                           "with its own pg_ctl") from None
    shutil.rmtree(cluster.pgdata, ignore_errors=True)
    (cluster.data_dir / "pg.port").unlink(missing_ok=True)
    print(f"deleted the embedded cluster in {cluster.pgdata}")
    return 0


# Everything at once -----------------------------------------------------------------------------


def cmd_run(ns: argparse.Namespace, cfg: Config) -> int:
    """Start the database (if embedded), migrate, then API, events and workers (and nginx in
    front with BGJOBS_PROXY_BIND); stop all on ^C."""
    registry.load_tasks(cfg.task_modules)  # a bad module: one line before anything starts
    taken = _taken_address(cfg)
    if taken:
        print(f"bgjobs run: {taken}", file=sys.stderr)
        return 1
    services = [("api", ["api"]), ("events", ["events"]), ("worker", ["worker"])]
    if cfg.proxy_bind:
        proxy.nginx_binary()  # missing: say so before starting anything
        services.append(("proxy", ["proxy"]))
    cluster = embedded.Cluster(cfg.data_dir, cfg.pg_bin, cfg.pg_durable) if cfg.embedded else None
    started = cluster.ensure_running() if cluster else False
    url = database_url(cfg, start=False)
    _migrate(cfg.direct_url or url, cfg)
    token = _demo_token(cfg, url)
    env = {**os.environ, "DATABASE_URL": url, "BGJOBS_DATA_DIR": str(cfg.data_dir)}
    if cfg.proxy_bind:
        env.setdefault("BGJOBS_EVENTS_URL", "/")  # the page streams from its own origin
    procs = {
        name: subprocess.Popen([sys.executable, "-m", "bgjobs", *argv], env=env,
                               process_group=0, preexec_fn=_stop_with_parent)
        for name, argv in services
    }
    if cfg.proxy_bind:
        front = (f"  Dashboard: http://{cfg.proxy_bind}/ (nginx in front of the API on "
                 f"{cfg.api_bind} and the events service on {cfg.events_bind})\n")
    else:
        front = (f"  Dashboard: http://{cfg.api_bind}/   Events: http://{cfg.events_bind}/events/jobs\n"
                 "  No proxy: gunicorn serves clients directly, which is fine on 127.0.0.1 for\n"
                 "  development; anything others can reach needs nginx in front (a few slow\n"
                 "  clients stall the API without it): BGJOBS_PROXY_BIND=127.0.0.1:8080 make run,\n"
                 "  and docs/operations.md.\n")
    sign_in = (f"Sign in with the demo user's token: {token}" if token else
               "Sign in with a token: `bgjobs user create NAME --id N` (N: your app's user)")
    print(f"\n  bgjobs is running.\n{front}  {sign_in}\n"
          f"  Database: {_redact(url)}\n"
          "  Ctrl-C stops everything.\n", flush=True)
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    status = 0
    try:
        while not stopping:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    print(f"bgjobs: {name} exited with {proc.returncode}; stopping",
                          file=sys.stderr)
                    stopping, status = True, 1
            time.sleep(0.2)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 40
        for proc in procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
        if cluster and started:
            cluster.stop()
    return status


def _taken_address(cfg: Config) -> str | None:
    """Why one of the addresses `bgjobs run` listens on cannot be had, or None: said before
    anything starts, instead of gunicorn's retries and the stack stopping."""
    for setting, bind in [("BGJOBS_API_BIND", cfg.api_bind),
                          ("BGJOBS_EVENTS_BIND", cfg.events_bind),
                          ("BGJOBS_PROXY_BIND", cfg.proxy_bind)]:
        host, _, port = (bind or "").rpartition(":")
        if not host or not port.isdigit():
            continue  # unset, or a unix socket: the service itself says what is wrong
        host = host.strip("[]")
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn and nginx
            try:
                sock.bind((host, int(port)))
            except OSError as exc:
                why = ("is in use (is bgjobs already running?)" if exc.errno == errno.EADDRINUSE
                       else f"cannot be listened on ({exc.strerror or exc})")
                return f"{bind} {why}; set {setting} to another host:port"
    return None


def _stop_with_parent() -> None:
    """In a service started by `bgjobs run`, before exec: SIGTERM when `bgjobs run` dies.

    Each service has its own process group, so a terminal's Ctrl-C reaches `bgjobs run` alone,
    which stops each service once with SIGTERM (a gunicorn worker that gets the terminal's
    SIGINT and its master's SIGQUIT at once can hang); this keeps them from outliving it.
    """
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _demo_token(cfg: Config, url: str) -> str | None:
    """The demo user's token: created on first run, kept in the data folder (development only).

    None in an app's database, where a bgjobs user must be one of the app's users.
    """
    path = cfg.data_dir / "demo_token"
    with PoolHolder(lambda: make_pool(url, min_size=1, max_size=1, open_wait=True)) as store:
        if store.host_users_table():
            return None
        if path.exists():
            token = path.read_text().strip()
            if store.user_for_token(token):
                return token
        try:
            _, token = store.create_user("demo")
        except Conflict:
            _, token = store.create_token("demo")
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(token)
        path.chmod(0o600)
        return token


def _redact(url: str) -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        parts = conninfo_to_dict(url)
    except Exception:  # noqa: BLE001 - only for display
        return "(set)"
    if "password" in parts:
        parts["password"] = "***"
    return make_conninfo("", **parts)


