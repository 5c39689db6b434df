"""Memory at rest: the server's RSS with a huge queue, and with many waiting tasks.

**Queued.** ``memory_queued`` tasks of client ``a`` (each would hold a worker
for an hour) are written into a fresh journal (`_prefill`); the server starts
on it, recovers them (4 run at A's cap, the rest stay queued), answers a
``tasks/get`` of the newest one, settles for half a second, and its VmRSS is read
from /proc. The same server on an empty journal gives the baseline.

**Waiting for input.** Over HTTP on 2026-07-28, 8 clients (declaring
elicitation) submit ``memory_waiting`` tasks of ``ask_once``, which asks one
question: each task runs, records its question and ends its run, waiting
``input_required``. The figure checks with ``tasks/get`` that every task is
``input_required``, counts the tasks that hold a worker (status ``working``
with a lease, read from the journal), times a fresh no-op task from submit to
completed while they all wait, and reads VmRSS.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio

from mcp_tasks.client import TaskClient

from ._harness import (
    BASE_LIMITS,
    MODERN,
    Metric,
    OurServer,
    PollPolicy,
    Report,
    Sizes,
    http_clients,
    poll_until_terminal,
    rss_kb,
    submit_task,
    token_for,
)
from ._prefill import count_rows, prefill

FIGURE = "memory at rest"
SETTLE_SECONDS = 0.5
LANES = 4
CLIENTS = 8
ELICITATION: dict[str, Any] = {"elicitation": {}}


async def _rss_after_start(server: OurServer, probe_id: str | None) -> dict[str, Any]:
    with server.http_process() as process:
        started = time.perf_counter()
        async with TaskClient.http(
            process.url, token=token_for("a"), wire=MODERN
        ) as client:
            status = None
            if probe_id is not None:
                status = (await client.get_task(probe_id)).get("status")
            ready = time.perf_counter() - started
            await anyio.sleep(SETTLE_SECONDS)
            return {"rss_mb": rss_kb(process.pid) / 1024, "status": status,
                    "ready_seconds": ready}  # fmt: skip


async def queued(report: Report, sizes: Sizes, work: Path) -> None:
    limits = {**BASE_LIMITS, "workers": 8, "client_concurrency": 4}
    empty = OurServer(work / "memory-empty", limits=limits, clients=["a"]).write()
    full = OurServer(work / "memory-queued", limits=limits, clients=["a"]).write()
    ids = prefill(
        full.db, sizes.memory_queued, owner="a", tool="hold",
        arguments={"seconds": 3600},
    )  # fmt: skip
    baseline: list[float] = []
    loaded: list[float] = []
    runs: list[dict[str, Any]] = []
    for _ in range(sizes.restart_trials):
        baseline.append((await _rss_after_start(empty, None))["rss_mb"])
        run = await _rss_after_start(full, ids[-1])
        if run["status"] != "working":
            raise RuntimeError(f"a prefilled task is {run['status']}, not queued")
        runs.append(run)
        loaded.append(run["rss_mb"])
    report.details["memory_queued"] = {"baseline_mb": baseline, "runs": runs}
    report.add(
        Metric(FIGURE, f"RSS with {sizes.memory_queued:,} queued tasks", "MB",
               loaded, "<=", 200,
               f"idle server {min(baseline):.0f}-{max(baseline):.0f} MB")
    )  # fmt: skip
    per_task = [
        (lo - base) * 1024 * 1024 / sizes.memory_queued
        for lo, base in zip(loaded, baseline, strict=True)
    ]
    report.add(Metric(FIGURE, "RSS per queued task", "bytes", per_task))


async def waiting(report: Report, sizes: Sizes, work: Path) -> None:
    clients_ids = [f"c{i}" for i in range(CLIENTS)] + ["fresh"]
    server = OurServer(
        work / "memory-waiting", limits=BASE_LIMITS, clients=clients_ids
    ).write()
    total = sizes.memory_waiting
    details: dict[str, Any] = {}
    with server.http_process() as process:
        async with http_clients(
            process.url, CLIENTS, wire=MODERN,
            tokens=[token_for(c) for c in clients_ids[:CLIENTS]],
            capabilities=ELICITATION,
        ) as clients:  # fmt: skip
            started = time.perf_counter()
            owned = await _submit_all(clients, total)
            details["submit_seconds"] = time.perf_counter() - started
            started = time.perf_counter()
            statuses = await _all_input_required(owned, CLIENTS * LANES)
            details["settle_seconds"] = time.perf_counter() - started
            details["statuses"] = statuses
            rss_mb = rss_kb(process.pid) / 1024
            busy = count_rows(
                server.db, "status = 'working' AND lease_holder IS NOT NULL"
            )
            waiting_rows = count_rows(server.db, "status = 'input_required'")
            async with TaskClient.http(
                process.url, token=token_for("fresh"), wire=MODERN
            ) as fresh:
                quick: list[float] = []
                for _ in range(max(3, sizes.restart_trials)):
                    begun = time.perf_counter()
                    created = await submit_task(fresh, "noop")
                    await poll_until_terminal(
                        fresh, created["taskId"], PollPolicy(0.001, 0.01, 30.0)
                    )
                    quick.append((time.perf_counter() - begun) * 1e3)
    details.update({"rss_mb": rss_mb, "busy_workers": busy,
                    "input_required_rows": waiting_rows, "fresh_task_ms": quick})  # fmt: skip
    report.details["memory_waiting"] = details
    if statuses.get("input_required", 0) != total:
        raise RuntimeError(f"not every task is input_required: {statuses}")
    report.add(
        Metric(FIGURE, f"RSS with {total:,} input_required tasks", "MB", [rss_mb],
               "<=", 200, f"all {total:,} input_required by tasks/get")
    )  # fmt: skip
    report.add(
        Metric(FIGURE, f"busy workers with {total:,} input_required tasks",
               "workers", [float(busy)], "<=", 0)
    )  # fmt: skip
    report.add(
        Metric(FIGURE, "fresh no-op task meanwhile, submit to completed", "ms", quick)
    )


Owned = list[tuple[TaskClient, str]]


async def _submit_all(clients: list[TaskClient], total: int) -> Owned:
    """Submit ``total`` ask_once tasks; each comes back with the client that owns it."""
    owned: Owned = []
    remaining = total

    async def lane(client: TaskClient) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            created = await submit_task(client, "ask_once")
            owned.append((client, created["taskId"]))

    with anyio.fail_after(max(120.0, total * 0.1)):
        async with anyio.create_task_group() as tg:
            for client in clients:
                for _ in range(LANES):
                    tg.start_soon(lane, client)
    return owned


async def _sweep(owned: Owned, lanes: int) -> tuple[dict[str, int], Owned]:
    """One ``tasks/get`` of each task (by its owner): status counts, and the rest."""
    statuses: dict[str, int] = {}
    still: Owned = []
    cursor = 0

    async def lane() -> None:
        nonlocal cursor
        while cursor < len(owned):
            client, task_id = owned[cursor]
            cursor += 1
            status = (await client.get_task(task_id))["status"]
            statuses[status] = statuses.get(status, 0) + 1
            if status != "input_required":
                still.append((client, task_id))

    async with anyio.create_task_group() as tg:
        for _ in range(lanes):
            tg.start_soon(lane)
    return statuses, still


async def _all_input_required(owned: Owned, lanes: int) -> dict[str, int]:
    """``tasks/get`` every task until each is ``input_required`` (bounded)."""
    pending = list(owned)
    statuses: dict[str, int] = {}
    with anyio.fail_after(max(120.0, len(owned) * 0.1)):
        for _round in range(100):
            statuses, pending = await _sweep(pending, lanes)
            if not pending:
                return {"input_required": len(owned)}
            await anyio.sleep(0.2)  # let the workers reach the question
    return statuses


async def run(report: Report, sizes: Sizes, work: Path) -> None:
    await queued(report, sizes, work)
    await waiting(report, sizes, work)
