"""PostgreSQL rows and bytes per task, and what purging 100,000 finished tasks leaves.

A fresh database gets the journal's schema (its own migrations), then
``tasks`` no-op tasks go through their whole life with the journal's own
statements (``submit_task``, ``claim``, ``finish_task``; 64 client ids; in
batches of 2,000 per transaction, pipelined, so that filling takes a minute
rather than the engine's ten), each finished with a retention that has already
ended. Reported:

1. rows and bytes (heap, indexes, TOAST) per task in each table, after
   ``VACUUM ANALYZE``;
2. ``Journal.purge_expired`` (the sweep's own call) deleting them all: its time,
   and the dead tuples and file sizes it leaves;
3. a plain ``VACUUM`` afterwards: its time and the sizes (plain VACUUM makes the
   space reusable without returning it to the OS);
4. the same number of tasks again: how much the files grow when the freed
   space is reused.

Autovacuum stays on (PostgreSQL's defaults); its counters are reported.

Run::

    .venv/bin/python -m benchmarks.fig_pg_storage [--quick] [--url URL] [--tasks N]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import anyio
import psycopg
from psycopg import sql

from mcp_tasks._model import TaskStatus
from mcp_tasks.journal import open_journal
from mcp_tasks.journal._sql import queries
from mcp_tasks.journal.postgres._schema import PACKAGE
from mcp_tasks.journal.sqlite import _rows

from .fig_pg_engine import _new_task, fresh_database  # pyright: ignore[reportPrivateUsage]
from .pg_cluster import running_cluster

_SQL = queries(PACKAGE)
BATCH = 2_000
OWNERS = 64
HOLDER = "storage/1/x"
OUTCOME = '{"result":{"content":[{"type":"text","text":"ok"}]}}'

SIZES = """
SELECT c.relname, c.reltuples::bigint, pg_relation_size(c.oid),
       pg_indexes_size(c.oid),
       coalesce(pg_total_relation_size(c.reltoastrelid), 0),
       coalesce(s.n_live_tup, 0), coalesce(s.n_dead_tup, 0),
       coalesce(s.autovacuum_count, 0)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE c.relkind = 'r' AND n.nspname = 'public'
ORDER BY c.relname
"""


async def fill(url: str, count: int) -> float:
    """``count`` tasks submitted, claimed and finished; seconds taken."""
    start = time.perf_counter()
    async with await psycopg.AsyncConnection.connect(url) as conn:
        done = 0
        while done < count:
            size = min(BATCH, count - done)
            # A retention of one second: the purge below finds them all expired.
            tasks = [
                replace(_new_task(i % OWNERS), ttl_seconds=1.0) for i in range(size)
            ]
            async with conn.transaction(), conn.cursor() as cur:
                await cur.executemany(
                    _SQL["submit_task"],
                    [(*_rows.new_task_row(t), 10**9, 10**9) for t in tasks],
                )
            claimed: list[tuple[Any, ...]] = []
            while len(claimed) < size:
                now = time.time()
                async with conn.transaction():
                    cursor = await conn.execute(
                        _SQL["claim"], (HOLDER, now + 600, size - len(claimed), now)
                    )
                    claimed += await cursor.fetchall()
            now = time.time()
            async with conn.transaction(), conn.cursor() as cur:
                await cur.executemany(
                    _SQL["finish"],
                    [(TaskStatus.COMPLETED.value, None, now, OUTCOME, None, now,
                      row[0], HOLDER, row[5], "completed") for row in claimed],
                )  # fmt: skip
            done += size
    return time.perf_counter() - start


def sizes(url: str) -> dict[str, tuple[int, ...]]:
    """Per table: rows (exact), heap, index and TOAST bytes, live, dead, autovacuums."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(SIZES).fetchall()
        out: dict[str, tuple[int, ...]] = {}
        for name, _est, heap, index, toast, live, dead, autovac in rows:
            exact = conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name))
            ).fetchone()
            out[name] = (
                exact[0] if exact else 0,
                heap,
                index,
                toast,
                live,
                dead,
                autovac,
            )
    return out


def vacuum(url: str, analyze: bool = False) -> float:
    """Plain ``VACUUM`` of the database; seconds."""
    start = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE" if analyze else "VACUUM")
    return time.perf_counter() - start


def _total(snapshot: dict[str, tuple[int, ...]]) -> int:
    return sum(v[1] + v[2] + v[3] for v in snapshot.values())


def _table(
    title: str, snapshot: dict[str, tuple[int, ...]], per: int | None
) -> list[str]:
    lines = [
        f"**{title}**",
        "",
        "| table | rows | heap bytes | index bytes | TOAST bytes | dead tuples "
        "| autovacuums |" + (" rows/task | bytes/task |" if per else ""),
        "|---|---|---|---|---|---|---|" + ("---|---|" if per else ""),
    ]
    for name, (rows, heap, index, toast, _live, dead, autovac) in snapshot.items():
        if not (rows or heap or index or dead):
            continue
        cells = f"| {name} | {rows:,} | {heap:,} | {index:,} | {toast:,} | {dead:,} | {autovac} |"
        if per:
            cells += f" {rows / per:.2f} | {(heap + index + toast) / per:,.0f} |"
        lines.append(cells)
    lines += ["", f"total on disk: {_total(snapshot) / 2**20:,.1f} MiB", ""]
    return lines


async def measure(server: str, count: int) -> str:
    """Fill, measure, purge, vacuum, refill; Markdown."""
    with fresh_database(server) as url:
        async with open_journal(url):
            pass  # the schema, by the journal's own migrations
        empty = _total(sizes(url))
        filled_in = await fill(url, count)
        vacuum(url, analyze=True)
        full = sizes(url)
        start = time.perf_counter()
        purged = 0
        async with open_journal(url) as journal:
            now = time.time() + 2  # every retention (1 s) has ended
            purged = len(await journal.purge_expired(now, now))
        purge_s = time.perf_counter() - start
        after_purge = sizes(url)
        vacuum_s = vacuum(url)
        after_vacuum = sizes(url)
        refill_s = await fill(url, count)
        vacuum(url, analyze=True)
        refilled = sizes(url)
    lines = [
        f"{count:,} no-op tasks (filled in {filled_in:.0f} s); empty schema "
        f"{empty / 2**20:.1f} MiB",
        "",
        *_table(f"after {count:,} finished tasks (VACUUM ANALYZE)", full, count),
        f"`purge_expired` deleted {purged:,} tasks in {purge_s:.1f} s",
        "",
        *_table("right after the purge", after_purge, None),
        f"plain VACUUM took {vacuum_s:.1f} s",
        "",
        *_table("after plain VACUUM", after_vacuum, None),
        f"{count:,} more tasks through their life (in {refill_s:.0f} s): the files grew "
        f"by {(_total(refilled) - _total(after_vacuum)) / 2**20:,.1f} MiB "
        f"(the first {count:,} took {(_total(full) - empty) / 2**20:,.1f} MiB)",
        "",
        *_table(f"after the second {count:,}", refilled, count),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure against a throwaway cluster (or ``--url``); print the tables."""
    parser = argparse.ArgumentParser(
        prog="benchmarks.fig_pg_storage", description=__doc__
    )
    parser.add_argument("--quick", action="store_true", help="2,000 tasks")
    parser.add_argument(
        "--url", help="an existing server (default: a throwaway cluster)"
    )
    parser.add_argument("--tasks", type=int, help="number of tasks (default 100,000)")
    args = parser.parse_args(argv)
    count = args.tasks or (2_000 if args.quick else 100_000)
    if args.url:
        print(anyio.run(measure, args.url, count))
        return 0
    with running_cluster() as cluster:
        print(anyio.run(measure, cluster.url(), count))
    return 0


if __name__ == "__main__":
    sys.exit(main())
