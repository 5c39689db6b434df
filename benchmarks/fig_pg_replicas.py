"""Replicas on one PostgreSQL: end-to-end tasks/s over HTTP, and fairness across them.

**Throughput (report).** For N in 1, 2, 3: N ``mcp-tasks serve --http``
replicas on one fresh PostgreSQL database (default limits: 8 workers each, 4
running per client across all replicas), 8 bearer-token clients on 2026-07-28,
client *i* connected to replica *i mod N*, each running the e2e lane of
`benchmarks.fig_e2e` (submit a no-op task, poll ``tasks/get`` from 5 ms,
doubling, until terminal, repeat); a warm-up, then ``trials`` chunks. Where the
time goes: CPU ms per task of the replicas (together), of the client (this
process) and of the PostgreSQL server (postmaster and backends, from /proc), and
the task's end-to-end p50.

**Fairness across replicas (target ≤ 1.5).** Three replicas: client A fills its
queue with ``backlog`` hour-long tasks through replica 0 (4 run, at its cap,
wherever they were claimed); client B's time to start (from sending its
task-augmented call to its tool body running) is sampled through replica 2 on
2025-11-25. Each trial pairs an idle chunk with the loaded chunk right after
it (A's backlog is cancelled between trials); per trial, median loaded ÷
median idle.

Run::

    .venv/bin/python -m benchmarks.fig_pg_replicas [--quick] [--url URL]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio

from mcp_tasks.client import TaskClient

from ._harness import (
    BASE_LIMITS,
    LEGACY,
    MODERN,
    OurServer,
    ServerProcess,
    http_clients,
    percentile,
    token_for,
)
from ._pg_cpu import PgCpu
from .fig_e2e import Phase, drive
from .fig_fairness import fill_queue, samples
from .fig_pg_engine import fresh_database
from .pg_cluster import running_cluster

CLIENTS = 8


@dataclass(frozen=True)
class Sizes:
    """How much work each part does."""

    counts: tuple[int, ...]
    tasks_per_trial: int
    trials: int
    backlog: int
    fairness_samples: int


FULL = Sizes(
    (1, 2, 3), tasks_per_trial=600, trials=3, backlog=5_000, fairness_samples=20
)
QUICK = Sizes((1, 2), tasks_per_trial=40, trials=1, backlog=40, fairness_samples=3)


@contextlib.contextmanager
def replicas(server: OurServer, count: int) -> Generator[list[ServerProcess]]:
    """``count`` ``serve --http`` processes on the server's journal."""
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(
                server.http_process(f"replica #{i}", log_name=f"replica-{i}.log")
            )
            for i in range(count)
        ]


@dataclass(frozen=True)
class Trial:
    """One chunk: the e2e phase and the PostgreSQL server's CPU during it."""

    phase: Phase
    pg_cpu: float


async def throughput(
    server_url: str, work: Path, count: int, sizes: Sizes
) -> list[Trial]:
    """The e2e lane over ``count`` replicas on a fresh database."""
    trials: list[Trial] = []
    with fresh_database(server_url) as url:
        pg = PgCpu(url)
        server = OurServer(
            work / f"replicas-{count}", limits=BASE_LIMITS,
            clients=[f"c{i}" for i in range(CLIENTS)], db_url=url,
        ).write()  # fmt: skip
        with replicas(server, count) as processes:
            pids = [p.pid for p in processes]
            async with contextlib.AsyncExitStack() as stack:
                clients: list[TaskClient] = []
                for i in range(CLIENTS):
                    (client,) = await stack.enter_async_context(
                        http_clients(
                            processes[i % count].url,
                            1,
                            wire=MODERN,
                            tokens=[token_for(f"c{i}")],
                        )
                    )
                    clients.append(client)
                await drive(clients, CLIENTS * 4, 1, tasks=True, pids=pids)  # warm-up
                for _ in range(sizes.trials):
                    before = pg.seconds()
                    phase = await drive(
                        clients, sizes.tasks_per_trial, 1, tasks=True, pids=pids
                    )
                    trials.append(Trial(phase, pg.seconds() - before))
    rates = ", ".join(f"{t.phase.rate:.0f}" for t in trials)
    print(f"  {count} replica(s): {rates} tasks/s", file=sys.stderr, flush=True)
    return trials


@dataclass(frozen=True)
class Fairness:
    """Per trial: B loaded ÷ idle while A holds its backlog, and right after the burst."""

    holding: list[float]
    after_burst: list[float]


async def fairness(
    server_url: str, work: Path, sizes: Sizes, count: int = 3
) -> Fairness:
    """B's time to start through the last replica, idle then loaded, per trial.

    Each trial pairs an idle chunk with a loaded one taken right after it: A
    fills its queue through the first replica, B samples, then A's backlog is
    cancelled so the next trial starts idle again. Pairing adjacent chunks
    keeps drift in the host's load (the machine is shared) out of the ratio,
    which a single idle chunk before all loaded ones let in.
    """
    n = sizes.fairness_samples
    ratios: list[float] = []
    burst_ratios: list[float] = []
    idle_all: list[float] = []
    loaded_all: list[float] = []
    with fresh_database(server_url) as url:
        server = OurServer(
            work / f"replicas-fairness-{count}",
            limits={**BASE_LIMITS, "workers": 8, "client_concurrency": 4},
            clients=["a", "b"], db_url=url,
        ).write()  # fmt: skip
        with replicas(server, count) as processes:
            async with (
                http_clients(processes[0].url, 1, wire=MODERN, tokens=[token_for("a")]) as (a,),
                http_clients(processes[-1].url, 1, wire=LEGACY, tokens=[token_for("b")]) as (b,),
            ):  # fmt: skip
                # Every replica's pooled connections prepare their statements
                # on first use: warm them all before measuring.
                await samples(b, 10 * count)
                for _ in range(sizes.trials):
                    idle = await samples(b, n)
                    backlog = await fill_queue(a, sizes.backlog)
                    # Every replica still reads the fill's change rows: the
                    # chunk right after the burst is reported on its own; A
                    # *holds* a backlog once they have.
                    burst = await samples(b, n)
                    loaded = await samples(b, n)
                    await cancel_all(a, backlog)
                    await samples(b, n)  # the same for the cancels (unmeasured)
                    ratios.append(statistics.median(loaded) / statistics.median(idle))
                    burst_ratios.append(
                        statistics.median(burst) / statistics.median(idle)
                    )
                    idle_all += idle
                    loaded_all += loaded
    print(
        f"  fairness, {count} replica(s): idle p50 "
        f"{statistics.median(idle_all) * 1e3:.1f} ms, loaded p50 "
        f"{statistics.median(loaded_all) * 1e3:.1f} ms",
        file=sys.stderr,
    )
    return Fairness(ratios, burst_ratios)


async def cancel_all(client: TaskClient, task_ids: Sequence[str]) -> None:
    """Cancel ``task_ids`` (A's backlog), a few lanes at a time."""
    pending = list(task_ids)

    async def lane() -> None:
        while pending:
            await client.cancel_task(pending.pop())

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(lane)


def _row(count: int, trials: list[Trial], base: float | None) -> str:
    rates = [t.phase.rate for t in trials]
    med = statistics.median(rates)

    def per_task(values: list[float]) -> str:
        return f"{statistics.median(values):.2f}"

    server = per_task([t.phase.server_cpu / t.phase.count * 1e3 for t in trials])
    client = per_task([t.phase.client_cpu / t.phase.count * 1e3 for t in trials])
    pg = per_task([t.pg_cpu / t.phase.count * 1e3 for t in trials])
    p50 = statistics.median(percentile(t.phase.latencies, 0.5) * 1e3 for t in trials)
    polls = statistics.median(t.phase.polls / t.phase.count for t in trials)
    scale = f"{med / base:.2f}" if base else "1.00"
    return (
        f"| {count} | {', '.join(f'{r:.0f}' for r in rates)} | {med:.0f} | {scale} "
        f"| {server} | {pg} | {client} | {p50:.1f} | {polls:.1f} |"
    )


async def measure(
    server_url: str,
    sizes: Sizes,
    parts: set[str],
    fairness_counts: Sequence[int] = (3,),
) -> str:
    """The curve and the fairness ratio; Markdown."""
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        if "throughput" in parts:
            lines += [
                f"{CLIENTS} clients, {sizes.tasks_per_trial} tasks per trial, "
                f"{sizes.trials} trial(s)",
                "",
                "| replicas | tasks/s per trial | median | ÷ 1 replica | replicas' CPU ms/task "
                "| PostgreSQL CPU ms/task | client CPU ms/task | task p50 ms | polls/task |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            base: float | None = None
            for count in sizes.counts:
                trials = await throughput(server_url, work, count, sizes)
                lines.append(_row(count, trials, base))
                if base is None:
                    base = statistics.median(t.phase.rate for t in trials)
        for count in fairness_counts:
            figures = await fairness(server_url, work, sizes, count)
            held, burst = figures.holding, figures.after_burst
            lines += [
                "",
                f"fairness, {count} replica(s), A holds {sizes.backlog} queued: "
                "B loaded ÷ idle "
                f"per trial {', '.join(f'{r:.2f}' for r in held)}, "
                f"median {statistics.median(held):.2f} (target ≤ 1.5); "
                "in the first chunk right after A's burst of submits: "
                f"{', '.join(f'{r:.2f}' for r in burst)}, "
                f"median {statistics.median(burst):.2f} (report)",
            ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure against a throwaway cluster (or ``--url``); print the tables."""
    parser = argparse.ArgumentParser(
        prog="benchmarks.fig_pg_replicas", description=__doc__
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes")
    parser.add_argument(
        "--url", help="an existing server (default: a throwaway cluster)"
    )
    parser.add_argument(
        "--only", choices=("throughput", "fairness"), help="one part only"
    )
    parser.add_argument(
        "--fairness-replicas", type=int, nargs="+",
        help="replica counts for the fairness part, in this order (default: 3)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    parts = {args.only} if args.only else {"throughput", "fairness"}
    counts: tuple[int, ...] = tuple(args.fairness_replicas or (3,))
    if "fairness" not in parts:
        counts = ()
    if args.url:
        print(anyio.run(measure, args.url, sizes, parts, counts))
        return 0
    with running_cluster() as cluster:
        print(anyio.run(measure, cluster.url(), sizes, parts, counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
