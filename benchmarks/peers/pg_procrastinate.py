"""procrastinate peer for ``benchmarks.fig_pg_peers`` (runs in its own virtual environment).

64 producers (coroutines sharing one connection pool) defer no-op jobs back to
back while one worker with ``concurrency`` runs them; the figure is jobs/s from
the first defer until no job is left unfinished in ``procrastinate_jobs``.
Prints one JSON line. Usage::

    python pg_procrastinate.py URL PRODUCERS PER_PRODUCER CONCURRENCY POOL
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from procrastinate import App, PsycopgConnector

UNFINISHED = "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"


async def main(
    url: str, producers: int, per_producer: int, concurrency: int, pool: int
) -> None:
    total = producers * per_producer
    app = App(connector=PsycopgConnector(conninfo=url, min_size=pool, max_size=pool))
    executed = 0
    all_executed = asyncio.Event()

    @app.task(name="noop")
    async def noop() -> None:
        nonlocal executed
        executed += 1
        if executed == total:
            all_executed.set()

    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        worker = asyncio.create_task(
            app.run_worker_async(concurrency=concurrency, wait=True)
        )
        await asyncio.sleep(0.5)  # the worker is listening before the clock starts

        async def producer() -> None:
            for _ in range(per_producer):
                await noop.defer_async()

        start = time.perf_counter()
        cpu = time.process_time()
        await asyncio.gather(*(producer() for _ in range(producers)))
        await all_executed.wait()
        executed_at = time.perf_counter()
        while True:  # the worker records each job's end after the task returns
            rows = await app.connector.execute_query_all_async(UNFINISHED)
            if not next(iter(rows[0].values())):
                break
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu
        worker.cancel()
        try:
            await worker
        except (asyncio.CancelledError, Exception):
            pass
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
