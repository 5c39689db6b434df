"""Several processes on one journal: end-to-end throughput and fairness.

For each count N in ``process_counts``, N ``mcp-tasks serve --http`` processes
share one SQLite journal (default limits: 8 workers each, 4 running tasks per
client across all of them). Reported, no target: on a 2-core machine more
processes add no cores, so the curve shows what sharing the journal costs.

- **Throughput**: ``e2e_clients`` bearer-token clients on 2026-07-28, client
  *i* connected to process *i mod N*, each running the e2e lane (submit a
  no-op task, poll ``tasks/get`` until terminal, repeat) for
  ``processes_tasks`` tasks in all, in ``trials`` chunks. Any process may run
  any task: the submit goes to the client's process, the claim to whichever
  process's worker asks the journal first.
- **Fairness across processes**: client A fills its queue through process 0
  with ``processes_backlog`` hour-long tasks (4 run, at its cap, wherever they
  were claimed); client B's time to start is sampled through process N-1,
  idle and loaded, as in the single-process fairness figure (2025-11-25,
  whose blocking ``tasks/result`` returns when the run on any process ends).
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Generator
from pathlib import Path
from typing import Any

from mcp_tasks.client import TaskClient

from ._harness import (
    BASE_LIMITS,
    LEGACY,
    MODERN,
    Metric,
    OurServer,
    Report,
    ServerProcess,
    Sizes,
    http_clients,
    token_for,
)
from .fig_e2e import drive
from .fig_fairness import fill_queue, samples

FIGURE = "processes on one journal"


@contextlib.contextmanager
def _processes(server: OurServer, count: int) -> Generator[list[ServerProcess]]:
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(
                server.http_process(f"mcp-tasks #{i}", log_name=f"server-{i}.log")
            )
            for i in range(count)
        ]


async def _throughput(sizes: Sizes, work: Path, count: int) -> list[float]:
    clients_n = sizes.e2e_clients
    server = OurServer(
        work / f"processes-{count}",
        limits=BASE_LIMITS,
        clients=[f"c{i}" for i in range(clients_n)],
    ).write()
    rates: list[float] = []
    with _processes(server, count) as processes:
        pids = [p.pid for p in processes]
        async with contextlib.AsyncExitStack() as stack:
            clients: list[TaskClient] = []
            for i in range(clients_n):
                (client,) = await stack.enter_async_context(
                    http_clients(
                        processes[i % count].url,
                        1,
                        wire=MODERN,
                        tokens=[token_for(f"c{i}")],
                    )
                )
                clients.append(client)
            lanes = sizes.e2e_lanes
            await drive(clients, clients_n * lanes * 4, lanes, tasks=True, pids=pids)
            for _ in range(sizes.trials):
                phase = await drive(
                    clients,
                    sizes.processes_tasks // sizes.trials,
                    lanes,
                    tasks=True,
                    pids=pids,
                )
                rates.append(phase.rate)
    print(
        f"    {count} process(es): {statistics.median(rates):.0f} tasks/s", flush=True
    )
    return rates


async def _fairness(sizes: Sizes, work: Path, count: int) -> list[float]:
    server = OurServer(
        work / f"processes-fairness-{count}",
        limits={**BASE_LIMITS, "workers": 8, "client_concurrency": 4},
        clients=["a", "b"],
    ).write()
    per_trial = sizes.fairness_samples
    total = per_trial * sizes.trials
    with _processes(server, count) as processes:
        async with (
            http_clients(processes[0].url, 1, wire=MODERN, tokens=[token_for("a")]) as (
                a,
            ),
            http_clients(
                processes[-1].url, 1, wire=LEGACY, tokens=[token_for("b")]
            ) as (b,),
        ):
            await samples(b, 5)  # warm-up
            idle = await samples(b, total)
            await fill_queue(a, sizes.processes_backlog)
            loaded = await samples(b, total)
    return [
        statistics.median(loaded[t * per_trial : (t + 1) * per_trial])
        / statistics.median(idle[t * per_trial : (t + 1) * per_trial])
        for t in range(sizes.trials)
    ]


async def run(report: Report, sizes: Sizes, work: Path) -> None:
    """Throughput and fairness for each process count."""
    details: dict[str, Any] = {}
    baseline: list[float] | None = None
    for count in sizes.process_counts:
        rates = await _throughput(sizes, work, count)
        details[f"{count}"] = {"tasks_per_second": rates}
        report.add(
            Metric(
                FIGURE,
                f"{count} process(es): end-to-end tasks/s, 2026-07-28",
                "tasks/s",
                rates,
                note=f"{sizes.e2e_clients} clients spread over the processes",
            )
        )
        if baseline is None:
            baseline = rates
        else:
            report.add(
                Metric(
                    FIGURE,
                    f"{count} processes ÷ 1 process, tasks/s",
                    "x",
                    [r / b for r, b in zip(rates, baseline, strict=True)],
                    note="2 cores: more processes add no CPU",
                )
            )
        fairness = await _fairness(sizes, work, count)
        details[f"{count}"]["fairness"] = fairness
        report.add(
            Metric(
                FIGURE,
                f"{count} process(es): B time to start, loaded ÷ idle",
                "x",
                fairness,
                note=(
                    f"A queued {sizes.processes_backlog} through process 0 (cap 4 "
                    "across all); B sampled through the last process"
                ),
            )
        )
    report.details["processes"] = details
