"""A procrastinate worker for the io section (bench/io_jobs.py): async jobs that await 100 ms.

``python -m bench.procrastinate_io_worker URL CONCURRENCY`` runs one worker process (psycopg
connector, LISTEN/NOTIFY) with the tasks ``io_sleep`` and ``io_http`` (a GET to
bench/io_http.py's server, with its client); ``--schema URL`` applies its schema.
"""

from __future__ import annotations

import asyncio
import sys


def make_app(url: str):  # type: ignore[no-untyped-def]
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    @app.task(name="io_sleep")
    async def io_sleep() -> None:
        await asyncio.sleep(0.1)

    @app.task(name="io_http")
    async def io_http() -> None:
        from bench.io_http import call

        await call()

    return app


async def main(url: str, concurrency: int) -> None:
    app = make_app(url)
    async with app.open_async():
        await app.run_worker_async(concurrency=concurrency, install_signal_handlers=True)


def apply_schema(url: str) -> None:
    app = make_app(url)
    with app.open():
        app.schema_manager.apply_schema()


if __name__ == "__main__":
    if sys.argv[1] == "--schema":
        apply_schema(sys.argv[2])
    else:
        asyncio.run(main(sys.argv[1], int(sys.argv[2])))
