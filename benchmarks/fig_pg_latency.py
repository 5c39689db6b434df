"""Durable submit overhead on PostgreSQL: task call p50 ÷ the same server's plain no-op call.

`benchmarks.fig_latency` against one ``mcp-tasks serve --http`` whose journal
is a fresh database on a PostgreSQL server (``fsync=on``,
``synchronous_commit=on``): one client, one request at a time, rounds of a
protocol no-op, a plain no-op ``tools/call``, the same call as a task (its
handle comes back after the task's row is committed) and a ``tasks/get``,
interleaved; ``trials`` trials of ``latency_calls`` rounds after
``latency_warmup`` rounds, on both wires. Each trial's ratio is of its p50s.

Run::

    .venv/bin/python -m benchmarks.fig_pg_latency [--quick] [--url URL]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import anyio

from mcp_tasks.client import TaskClient

from ._harness import BASE_LIMITS, FULL, LEGACY, MODERN, QUICK, OurServer, Sizes
from .fig_latency import _measure  # pyright: ignore[reportPrivateUsage]
from .fig_pg_engine import fresh_database
from .pg_cluster import running_cluster

TARGET = 1.15


async def measure(server: str, sizes: Sizes) -> str:
    """Both wires over HTTP against a server on a fresh database; a Markdown table."""
    lines = [
        f"{sizes.trials} trial(s) x {sizes.latency_calls} rounds after "
        f"{sizes.latency_warmup} warm-up rounds, HTTP",
        "",
        "| wire | task p50 ÷ plain p50 per trial | median (target ≤ 1.15) "
        "| p99 ratio per trial | plain p50 ms | task p50 ms | tasks/get p50 ms "
        "| protocol no-op p50 ms | task p50 ÷ protocol no-op p50 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    with fresh_database(server) as url, tempfile.TemporaryDirectory() as work:
        ours = OurServer(Path(work), limits=BASE_LIMITS, db_url=url).write()
        with ours.http_process() as process:
            for wire in (LEGACY, MODERN):
                async with TaskClient.http(process.url, wire=wire) as client:
                    trials = await _measure(client, sizes)

                def cells(
                    key: str, fmt: str, ts: list[dict[str, float]] = trials
                ) -> str:
                    return ", ".join(format(t[key], fmt) for t in ts)

                median = statistics.median(t["submit_p50"] for t in trials)
                lines.append(
                    f"| {wire} | {cells('submit_p50', '.2f')} | {median:.2f} "
                    f"| {cells('submit_p99', '.2f')} | {cells('plain_p50_ms', '.2f')} "
                    f"| {cells('task_p50_ms', '.2f')} | {cells('get_p50_ms', '.2f')} "
                    f"| {cells('ping_p50_ms', '.2f')} | {cells('task_over_ping_p50', '.2f')} |"
                )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure against a throwaway cluster (or ``--url``); print a table."""
    parser = argparse.ArgumentParser(
        prog="benchmarks.fig_pg_latency", description=__doc__
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes")
    parser.add_argument(
        "--url", help="an existing server (default: a throwaway cluster)"
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.url:
        print(anyio.run(measure, args.url, sizes))
        return 0
    with running_cluster() as cluster:
        print(anyio.run(measure, cluster.url(), sizes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
