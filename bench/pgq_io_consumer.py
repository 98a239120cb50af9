"""A pgqueuer consumer for the io section (bench/io_jobs.py): async jobs that await 100 ms.

``python -m bench.pgq_io_consumer URL BATCH MAX_CONCURRENT`` runs one QueueManager (asyncpg)
with the entrypoints ``io_sleep`` and ``io_http`` (a GET to bench/io_http.py's server, with its
client); runs until killed.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta


async def main(url: str, batch: int, max_concurrent: int) -> None:
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries, QueueManager

    from bench.io_http import call

    conn = await asyncpg.connect(url)
    qm = QueueManager(Queries(AsyncpgDriver(conn)))

    @qm.entrypoint("io_sleep")
    async def io_sleep(job: object) -> None:
        await asyncio.sleep(0.1)

    @qm.entrypoint("io_http")
    async def io_http(job: object) -> None:
        await call()

    await qm.run(batch_size=batch, max_concurrent_tasks=max_concurrent,
                 dequeue_timeout=timedelta(seconds=5))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
