"""Run the app and everything it needs, in one command: ``python run.py`` (see README.md).

DATABASE_URL picks the database; unset, bgjobs's embedded Postgres (under .bgjobs/ here) with a
database ``seed_app``. Then the app's own schema, ``bgjobs migrate``, a demo user, and three
processes: the app under gunicorn (gunicorn.conf.py: 4 workers x 4 threads), ``bgjobs worker``
and ``bgjobs events``. Ctrl-C (or SIGTERM) stops them all.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
from backend import database as app_db
from psycopg.conninfo import make_conninfo

HERE = Path(__file__).resolve().parent
BGJOBS = [sys.executable, "-m", "bgjobs"]
DEMO = ("demo@example.com", "demo")


def step(argv: list[str], env: dict[str, str]) -> str:
    """Run one set-up command; its last line of output. Exits (its error shown) if it fails."""
    done = subprocess.run(argv, env=env, cwd=HERE, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        sys.exit(f"run.py: `{' '.join(argv[2:])}` failed (see above)")
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


def database(env: dict[str, str]) -> tuple[str, bool]:
    """The database URL, and whether this run started the embedded cluster (to stop it after)."""
    if env.get("DATABASE_URL"):
        return env["DATABASE_URL"], False
    running = subprocess.run([*BGJOBS, "db", "url"], env=env, cwd=HERE,
                             capture_output=True).returncode == 0
    server = step([*BGJOBS, "db", "start"], env)
    with psycopg.connect(server, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = 'seed_app'").fetchone():
            conn.execute("CREATE DATABASE seed_app")
    return make_conninfo(server, dbname="seed_app"), not running


def main() -> int:
    env = dict(os.environ)
    url, started = database(env)
    env["DATABASE_URL"] = url
    env.setdefault("SEED_APP_BIND", "127.0.0.1:5000")
    env.setdefault("BGJOBS_EVENTS_BIND", "127.0.0.1:5001")
    # One key per run for all processes: sessions (every gunicorn worker) and stream tokens
    # (the app signs, the events service checks).
    env.setdefault("SECRET_KEY", secrets.token_urlsafe(32))
    env.setdefault("BGJOBS_SECRET_KEY", secrets.token_urlsafe(32))
    port = env["SEED_APP_BIND"].rpartition(":")[2]
    env.setdefault("BGJOBS_CORS_ORIGINS", ",".join(
        [f"http://{env['SEED_APP_BIND']}", f"http://localhost:{port}",
         f"http://127.0.0.1:{port}"]))
    env["BGJOBS_TASK_MODULES"] = "backend.jobs"

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute((HERE / "schema.sql").read_text())
    print(step([*BGJOBS, "migrate"], env))
    with psycopg.connect(url) as conn:
        app_db.create_user(conn, *DEMO)

    # Their own sessions: Ctrl-C reaches this script alone, which stops each of them once
    # (a gthread worker told to quit twice, by the terminal and by its master, can hang).
    procs = {
        name: subprocess.Popen(argv, env=env, cwd=HERE, start_new_session=True)
        for name, argv in [("app", [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"]),
                           ("worker", [*BGJOBS, "worker"]), ("events", [*BGJOBS, "events"])]
    }
    print(f"\n  The app: http://{env['SEED_APP_BIND']}/  (sign in as {DEMO[0]} / {DEMO[1]})\n"
          f"  Events: http://{env['BGJOBS_EVENTS_BIND']}/events/healthz\n"
          "  Ctrl-C stops everything.\n", flush=True)

    stopping = []
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    status = 0
    try:
        while not stopping:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    print(f"run.py: {name} exited with {proc.returncode}; stopping",
                          file=sys.stderr)
                    stopping.append(1)
                    status = 1
            time.sleep(0.2)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                proc.kill()
        if started:
            del env["DATABASE_URL"]
            step([*BGJOBS, "db", "stop"], env)
    return status


if __name__ == "__main__":
    sys.exit(main())
