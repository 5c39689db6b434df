"""Fairness: a newcomer's time to start while another client holds a huge queue.

One ``mcp-tasks serve --http`` with two bearer-token clients, ``a`` and ``b``,
and the default limits (8 workers, 4 running tasks per client). Client B's
*time to start* is the wall-clock time from just before B sends a task-augmented
``tools/call`` of ``stamp`` to the moment the tool body starts (the tool
returns ``time.time()``; client and server share the clock). B then reads the
result with the blocking ``tasks/result``.

First B samples an idle server. Then A submits ``fairness_backlog`` tasks that
each hold a worker for an hour: 4 run (A's cap) and the rest wait in A's
queue. B samples again. Each trial's ratio is the median loaded time to start
over the median idle one (B's samples are split evenly into trials).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import anyio

from mcp_tasks.client import TaskClient

from ._harness import (
    BASE_LIMITS,
    LEGACY,
    Metric,
    OurServer,
    Report,
    Sizes,
    submit_task,
    token_for,
)

FIGURE = "fairness"
#: Submitters A uses to fill its queue.
FILL_LANES = 8


async def time_to_start(client: TaskClient) -> float:
    """Seconds from sending the call until the ``stamp`` tool body started."""
    sent = time.time()
    created = await submit_task(client, "stamp")
    task_id = created["taskId"]
    with anyio.fail_after(60):
        result = await client.task_result(task_id)
    text = result["content"][0]["text"]
    return float(text) - sent


async def fill_queue(client: TaskClient, count: int) -> list[str]:
    """Submit ``count`` hour-long ``hold`` tasks as fast as 8 lanes can."""
    ids: list[str] = []
    remaining = count

    async def lane() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            created = await submit_task(client, "hold", {"seconds": 3600})
            ids.append(created["taskId"])

    with anyio.fail_after(max(120.0, count * 0.1)):
        async with anyio.create_task_group() as tg:
            for _ in range(FILL_LANES):
                tg.start_soon(lane)
    return ids


async def samples(client: TaskClient, count: int) -> list[float]:
    """``count`` times to start, one after another."""
    return [await time_to_start(client) for _ in range(count)]


async def run(report: Report, sizes: Sizes, work: Path) -> None:
    server = OurServer(
        work / "fairness",
        limits={**BASE_LIMITS, "workers": 8, "client_concurrency": 4},
        clients=["a", "b"],
    ).write()
    per_trial = sizes.fairness_samples
    total = per_trial * sizes.trials
    details: dict[str, Any] = {}
    with server.http_process() as process:
        async with (
            TaskClient.http(process.url, token=token_for("a"), wire=LEGACY) as a,
            TaskClient.http(process.url, token=token_for("b"), wire=LEGACY) as b,
        ):
            await samples(b, 5)  # warm-up
            idle = await samples(b, total)
            started = time.perf_counter()
            ids = await fill_queue(a, sizes.fairness_backlog)
            details["fill_seconds"] = time.perf_counter() - started
            last = await a.get_task(ids[-1])
            details["a_last_task"] = last
            loaded = await samples(b, total)
            details["a_status_after"] = (await a.get_task(ids[-1])).get("statusMessage")
    ratios: list[float] = []
    for trial in range(sizes.trials):
        chunk = slice(trial * per_trial, (trial + 1) * per_trial)
        ratios.append(statistics.median(loaded[chunk]) / statistics.median(idle[chunk]))
    details["idle_ms"] = [v * 1e3 for v in idle]
    details["loaded_ms"] = [v * 1e3 for v in loaded]
    report.details["fairness"] = details
    note = (
        f"A queued {sizes.fairness_backlog} (at its cap of 4); idle median "
        f"{statistics.median(idle) * 1e3:.1f} ms, loaded median "
        f"{statistics.median(loaded) * 1e3:.1f} ms"
    )
    report.add(
        Metric(FIGURE, "B time to start, loaded ÷ idle", "x", ratios, "<=", 1.5, note)
    )
    report.add(
        Metric(
            FIGURE,
            "B time to start while A is queued",
            "ms",
            [
                statistics.median(loaded[t * per_trial : (t + 1) * per_trial]) * 1e3
                for t in range(sizes.trials)
            ],
        )
    )
