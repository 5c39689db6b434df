"""pgqueuer peer for ``benchmarks.fig_pg_peers`` (runs in its own virtual environment).

64 producers (coroutines sharing one asyncpg pool) enqueue no-op jobs back to
back while one ``QueueManager`` runs them with ``max_concurrent_tasks`` =
CONCURRENCY (batch size half of it, the largest pgqueuer allows); the figure is
jobs/s from the first enqueue until the ``pgqueuer`` table is empty (a finished
job's row is deleted, and the deletes are buffered, so this is when every
job's end is durable). Prints one JSON line. Usage::

    python pg_pgqueuer.py URL PRODUCERS PER_PRODUCER CONCURRENCY POOL
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import asyncpg
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job
from pgqueuer.qm import QueueManager
from pgqueuer.queries import Queries


async def main(
    url: str, producers: int, per_producer: int, concurrency: int, pool: int
) -> None:
    total = producers * per_producer
    executed = 0
    all_executed = asyncio.Event()
    async with asyncpg.create_pool(url, min_size=pool, max_size=pool) as conns:
        queries = Queries.from_asyncpg_pool(conns)
        await queries.install()
        worker_conn = await asyncpg.connect(url)
        manager = QueueManager(Queries(AsyncpgDriver(worker_conn)))

        @manager.entrypoint("noop")
        async def noop(job: Job) -> None:
            nonlocal executed
            executed += 1
            if executed == total:
                all_executed.set()

        worker = asyncio.create_task(
            manager.run(
                batch_size=max(1, concurrency // 2), max_concurrent_tasks=concurrency
            )
        )
        await asyncio.sleep(0.5)  # the manager is listening before the clock starts

        async def producer() -> None:
            for _ in range(per_producer):
                await queries.enqueue("noop", None)

        start = time.perf_counter()
        cpu = time.process_time()
        await asyncio.gather(*(producer() for _ in range(producers)))
        await all_executed.wait()
        executed_at = time.perf_counter()
        while await conns.fetchval("SELECT count(*) FROM pgqueuer"):  # noqa: ASYNC110
            # a bounded poll of the table: the deletes are buffered in pgqueuer
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu
        manager.shutdown.set()
        await worker
        await worker_conn.close()
    print(
        json.dumps(
            {
                "rate": total / elapsed,
                "executed_rate": total / (executed_at - start),
                "cpu_ms": cpu * 1000 / total,
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], *(int(a) for a in sys.argv[2:6])))
