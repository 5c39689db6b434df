"""The cost of one ``/metrics`` scrape with many tasks queued (issue 13).

Prefills a journal with queued tasks (``benchmarks._prefill``: the rows a
server would write), spread over a few clients, then renders the metrics a
server exposes (`mcp_tasks.ops.Metrics.exposition`: the journal read and the
text rendering) many times and prints the median and worst. For comparison it
also times the per-client oldest-queued read as it was before (``min`` over
every queued task of the client) and as it is (the client's first queued task
by index), and what metrics add to each task a server runs: the observer calls
of one task's start and end and of one journal commit.

    .venv/bin/python -m benchmarks.metrics_scrape                # 100,000 queued
    .venv/bin/python -m benchmarks.metrics_scrape --queued 1000  # a smoke run
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import anyio

from mcp_tasks import Settings
from mcp_tasks.engine import TaskRuntime
from mcp_tasks.journal import open_journal
from mcp_tasks.ops import Metrics

from ._prefill import prefill

CLIENTS = 4
#: The oldest-queued read before issue 13: a scan of the client's queue.
OLD_OLDEST = """
SELECT c.owner_id, (SELECT min(q.created_at) FROM tasks q
                    WHERE q.owner_id = c.owner_id AND q.phase = 'queued')
FROM clients c WHERE c.queued + c.running + c.parked + c.waiting > 0
"""
NEW_OLDEST = """
SELECT c.owner_id, (SELECT q.created_at FROM tasks q
                    WHERE q.owner_id = c.owner_id AND q.phase = 'queued'
                    ORDER BY q.seq LIMIT 1)
FROM clients c WHERE c.queued + c.running + c.parked + c.waiting > 0
"""


def _timed_sql(db: Path, sql: str, rounds: int) -> list[float]:
    conn = sqlite3.connect(db)
    try:
        times: list[float] = []
        for _ in range(rounds):
            started = time.perf_counter()
            conn.execute(sql).fetchall()
            times.append(time.perf_counter() - started)
        return times
    finally:
        conn.close()


async def _timed_scrapes(db: Path, rounds: int) -> tuple[list[float], int, float]:
    async with open_journal(db, synchronous="NORMAL") as journal:
        runtime = TaskRuntime(journal, Settings(), {})
        metrics = Metrics(runtime)
        per_task = _per_task_cost(metrics)
        body = await metrics.exposition()
        times: list[float] = []
        for _ in range(rounds):
            started = time.perf_counter()
            body = await metrics.exposition()
            times.append(time.perf_counter() - started)
        return times, len(body), per_task


def _per_task_cost(metrics: Metrics, rounds: int = 20_000) -> float:
    """Seconds of metrics work per task: one start, one end, one commit."""
    started = time.perf_counter()
    for index in range(rounds):
        client = f"client-{index % CLIENTS}"
        metrics.run_started("noop", 0.01)
        metrics.task_ended(client, "noop", "completed", 0.002)
        metrics.commit(0.001, 4)
    return (time.perf_counter() - started) / rounds


def _line(label: str, times: list[float]) -> str:
    median = statistics.median(times) * 1e3
    return f"{label:<44} median {median:8.3f} ms   max {max(times) * 1e3:8.3f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(prog="benchmarks.metrics_scrape")
    parser.add_argument("--queued", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mcp-tasks-scrape-") as folder:
        db = Path(folder) / "tasks.db"
        started = time.perf_counter()
        for index in range(CLIENTS):
            prefill(
                db,
                args.queued // CLIENTS,
                owner=f"client-{index}",
                tool="noop",
                arguments={},
            )
        print(
            f"prefilled {args.queued} queued tasks over {CLIENTS} clients "
            f"in {time.perf_counter() - started:.1f} s"
        )
        scrapes, size, per_task = anyio.run(_timed_scrapes, db, args.rounds)
        print(_line(f"GET /metrics body ({size} bytes)", scrapes))
        print(
            f"{'metrics work per task (start, end, commit)':<44} {per_task * 1e6:8.2f} µs"
        )
        print(
            _line(
                "oldest queued per client, before (min scan)",
                _timed_sql(db, OLD_OLDEST, 20),
            )
        )
        print(
            _line(
                "oldest queued per client, now (by index)",
                _timed_sql(db, NEW_OLDEST, args.rounds),
            )
        )


if __name__ == "__main__":
    main()
