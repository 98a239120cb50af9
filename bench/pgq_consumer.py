"""A pgqueuer consumer process for the peer comparison (bench/peers.py).

``python -m bench.pgq_consumer URL BATCH STAMPS`` runs one pgqueuer QueueManager (asyncpg,
pgqueuer's fastest driver) with two entrypoints: ``noop`` does nothing, ``stamp`` appends
``time.time()`` and its payload to the file STAMPS (pickup latency). Runs until killed.
"""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import timedelta


async def main(url: str, batch: int, stamps: str) -> None:
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries, QueueManager

    conn = await asyncpg.connect(url)
    qm = QueueManager(Queries(AsyncpgDriver(conn)))

    @qm.entrypoint("noop")
    async def noop(job: object) -> None:
        return None

    @qm.entrypoint("stamp")
    async def stamp(job: object) -> None:
        with open(stamps, "a") as out:
            out.write(f"{time.time()} {job.payload.decode()}\n")  # type: ignore[attr-defined]

    await qm.run(batch_size=batch, dequeue_timeout=timedelta(seconds=5))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
