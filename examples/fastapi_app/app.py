"""A FastAPI app with its own users and sign-in that runs bgjobs jobs and shows their progress
live, through bgjobs.asgi (job routes and event streams on the app's own origin). README.md."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sys
from pathlib import Path
from typing import Any

import jobs  # noqa: F401 - the app's job type: enqueue checks its params
import psycopg
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel
from starlette.middleware.sessions import SessionMiddleware

import bgjobs.aio
from bgjobs.asgi import BgJobs

HERE = Path(__file__).parent


def database_url() -> str:
    return os.environ["DATABASE_URL"]


async def current_user_id(request: Request) -> int | None:
    """Who is signed in: the app's own session (FastAPI's Depends and bgjobs use the same)."""
    return request.session.get("user_id")


bg = BgJobs(current_user_id=current_user_id)
app = FastAPI(lifespan=bg.lifespan)
app.add_middleware(SessionMiddleware, secret_key=os.environ.get("SECRET_KEY")
                   or secrets.token_hex(32), same_site="lax")
app.router.routes.extend(bg.routes)


class SignIn(BaseModel):
    email: str
    password: str


@app.post("/login")
async def login(form: SignIn, request: Request) -> dict[str, Any]:
    async with await psycopg.AsyncConnection.connect(database_url()) as conn:
        cur = await conn.execute("SELECT id, password_hash FROM users WHERE email = %s",
                                 (form.email,))
        row = await cur.fetchone()
    if row is None or not row[1] or not check_password(form.password, row[1]):
        raise HTTPException(401, "wrong email or password")
    request.session["user_id"] = row[0]
    return {"user_id": row[0]}


@app.post("/logout")
async def logout(request: Request) -> dict[str, Any]:
    request.session.clear()
    return {}


@app.post("/reports", status_code=202)
async def start_report(user_id: int | None = Depends(current_user_id)) -> dict[str, Any]:
    """The app's own route that starts a job (the page could POST /jobs just as well)."""
    if user_id is None:
        raise HTTPException(401, "sign in first")
    job = await bgjobs.aio.enqueue("fastapi_report", {"steps": 20, "delay": 0.1},
                                   user_id=user_id)
    return {"job_id": str(job.id), "events": f"/jobs/events/{job.id}"}


@app.get("/", response_class=HTMLResponse)
async def page() -> str:
    return (HERE / "page.html").read_text()


# Users -------------------------------------------------------------------------------------


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1)
    return f"{salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    salt, _, digest = stored.partition("$")
    mine = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=2**14, r=8, p=1)
    return hmac.compare_digest(mine.hex(), digest)


def setup(url: str, email: str, password: str) -> int:
    """The app's tables (schema.sql) and one user; run before `bgjobs migrate`."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute((HERE / "schema.sql").read_text())
        return conn.execute(
            "INSERT INTO users (email, password_hash) VALUES (%s, %s) ON CONFLICT (email) "
            "DO UPDATE SET password_hash = EXCLUDED.password_hash RETURNING id",
            (email, hash_password(password))).fetchone()[0]


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "setup":
        sys.exit("usage: python app.py setup EMAIL PASSWORD   (DATABASE_URL set)")
    print(f"user {setup(database_url(), sys.argv[2], sys.argv[3])} ready")
