"""Recovery: restart after ``kill -9`` with many unfinished tasks.

``recovery_tasks`` tasks of client ``a`` (each holds a worker for an hour) are
written into a fresh journal (`_prefill`). The server starts on it, recovers
them (4 start running at A's cap, the rest stay queued) and answers a
``tasks/get``; then it is killed with SIGKILL while those 4 hold leases. Each
trial then starts the server again and measures the time from ``exec`` until
the first ``tasks/get`` (2026-07-28, a fresh connection) answers, and kills it
with SIGKILL again. The baseline is the same procedure with one task: the
interpreter, imports and listening socket, without the recovery scan.
"""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path
from typing import Any

import anyio

from mcp_tasks.client import TaskClient

from ._harness import (
    BASE_LIMITS,
    LOOPBACK,
    MODERN,
    Metric,
    OurServer,
    Report,
    Sizes,
    token_for,
)
from ._prefill import count_rows, prefill

FIGURE = "recovery"
#: Bound on one restart.
RESTART_TIMEOUT = 60.0


def _listening(port: int) -> bool:
    try:
        socket.create_connection((LOOPBACK, port), timeout=0.5).close()
    except OSError:
        return False
    return True


async def _first_answer(url: str, port: int, task_id: str) -> str:
    """Retry (bounded) until a tasks/get on a fresh connection answers."""
    with anyio.fail_after(RESTART_TIMEOUT):
        while True:
            if _listening(port):
                with contextlib.suppress(Exception):
                    async with TaskClient.http(
                        url, token=token_for("a"), wire=MODERN
                    ) as client:
                        task = await client.get_task(task_id)
                        return str(task.get("status"))
            await anyio.sleep(0.005)  # retry pause of a bounded readiness poll


async def restart_times(
    server: OurServer, task_id: str, trials: int
) -> tuple[list[float], list[dict[str, Any]]]:
    """Seconds from exec to the first answer, per restart after a kill -9."""
    times: list[float] = []
    notes: list[dict[str, Any]] = []
    process = server.http_process()
    process.launch()
    await _first_answer(process.url, process.port, task_id)  # first start
    await anyio.sleep(0.5)  # let the recovered tasks take their leases
    leased = count_rows(server.db, "lease_holder IS NOT NULL")
    process.kill9()
    for _ in range(trials):
        process = server.http_process()
        process.launch()
        try:
            status = await _first_answer(process.url, process.port, task_id)
            times.append(time.perf_counter() - process.started_at)
            notes.append({"status": status, "leased_at_kill": leased})
            await anyio.sleep(0.5)
            leased = count_rows(server.db, "lease_holder IS NOT NULL")
        finally:
            process.kill9()
    return times, notes


async def run(report: Report, sizes: Sizes, work: Path) -> None:
    limits = {**BASE_LIMITS, "workers": 8, "client_concurrency": 4}
    big = OurServer(work / "recovery-big", limits=limits, clients=["a"]).write()
    small = OurServer(work / "recovery-small", limits=limits, clients=["a"]).write()
    big_ids = prefill(
        big.db, sizes.recovery_tasks, owner="a", tool="hold",
        arguments={"seconds": 3600},
    )  # fmt: skip
    small_ids = prefill(
        small.db, 1, owner="a", tool="hold", arguments={"seconds": 3600}
    )
    big_times, big_notes = await restart_times(big, big_ids[-1], sizes.restart_trials)
    small_times, _ = await restart_times(small, small_ids[-1], sizes.restart_trials)
    unfinished = count_rows(big.db, "phase != 'done'")
    report.details["recovery"] = {
        "restarts": big_notes,
        "unfinished_after": unfinished,
        "baseline_seconds": small_times,
    }
    report.add(
        Metric(FIGURE, f"kill -9 → first tasks/get, {sizes.recovery_tasks:,} "
               "unfinished tasks", "s", big_times, "<=", 2.0,
               f"{unfinished:,} still unfinished after the restarts")
    )  # fmt: skip
    report.add(
        Metric(FIGURE, "kill -9 → first tasks/get, 1 task (start-up floor)", "s",
               small_times)
    )  # fmt: skip
