"""Durable submit overhead and poll cost, over stdio and Streamable HTTP.

One client, one request at a time, against a real ``mcp-tasks serve``. Each
round sends, back to back: a plain no-op ``tools/call``, the same call as a
task (the handle comes back after the row is committed with
``synchronous=FULL``) and a ``tasks/get`` of the previous round's task. The
three kinds are interleaved so drift and noise hit them alike. A trial is
``latency_calls`` rounds after ``latency_warmup`` rounds; the ratios are of
the trial's percentiles.

Server CPU per request (read from /proc over ``latency_calls`` sequential
requests of each kind, ``trials`` times) is set against the HTTP floor: a bare
uvicorn + Starlette endpoint (`benchmarks.http_floor`) answering the same
JSON-RPC ``tasks/get`` with a small JSON result, measured in the same
trials: every kind, the floor's included, takes turns in blocks, so the
host's noisy spells hit them alike. A task-augmented call's CPU (submit and
running the no-op) is set against a plain call's (also journaled).

Wires: on 2025-11-25 the task call carries ``params.task``; on 2026-07-28 the
plain call declares no client capabilities (so the server answers at once) and
the task call declares the tasks extension (so the server makes it a task).
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
from mcp_types import CLIENT_CAPABILITIES_META_KEY

from mcp_tasks.client import TaskClient

from ._harness import (
    BASE_LIMITS,
    LEGACY,
    LOOPBACK,
    MODERN,
    REPO,
    Metric,
    OurServer,
    Report,
    ServerProcess,
    Sizes,
    cpu_seconds,
    free_port,
    percentile,
    submit_task,
)

FIGURE_SUBMIT = "durable submit overhead"
FIGURE_POLL = "poll cost"
FIGURE_FLOOR = "HTTP floor"
#: Server CPU of a tasks/get at most this many times the bare endpoint's.
FLOOR_TARGET = 2.5
#: Requests per kind in a CPU trial, in rounds: /proc counts in 10 ms ticks.
CPU_REPEAT = 3
#: How many turns the kinds take in a trial's CPU measurement.
CPU_BLOCKS = 9
#: Unmeasured requests before each block, so every block starts warm.
CPU_BLOCK_WARMUP = 10
#: A server that spent less CPU than this in a window is quiet (see `_quiet`).
QUIET_WINDOW_SECONDS = 0.05
QUIET_CPU_SECONDS = 0.004


async def _plain(client: TaskClient) -> Any:
    if client.wire == MODERN:
        return await client.call_tool(
            "noop", {}, meta={CLIENT_CAPABILITIES_META_KEY: {}}
        )
    return await client.call_tool("noop", {})


def _floor_method(client: TaskClient) -> str:
    """The protocol no-op the SDK answers by itself: the transport floor."""
    return "ping" if client.wire == LEGACY else "server/discover"


async def _timed(fn: Callable[..., Awaitable[Any]], *args: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = await fn(*args)
    return time.perf_counter() - start, result


async def _rounds(client: TaskClient, rounds: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {"plain": [], "task": [], "get": [], "ping": []}
    previous: str | None = None
    for _ in range(rounds):
        elapsed, _result = await _timed(client.request, _floor_method(client))
        samples["ping"].append(elapsed)
        elapsed, _result = await _timed(_plain, client)
        samples["plain"].append(elapsed)
        elapsed, created = await _timed(submit_task, client, "noop")
        samples["task"].append(elapsed)
        task_id = created.get("taskId")
        if task_id is None:
            raise RuntimeError(f"the server did not create a task: {created}")
        if previous is not None:
            elapsed, _result = await _timed(client.get_task, previous)
            samples["get"].append(elapsed)
        previous = task_id
    return samples


def _ratios(samples: dict[str, list[float]]) -> dict[str, float]:
    plain50 = percentile(samples["plain"], 0.5)
    plain99 = percentile(samples["plain"], 0.99)
    return {
        "submit_p50": percentile(samples["task"], 0.5) / plain50,
        "submit_p99": percentile(samples["task"], 0.99) / plain99,
        "poll_p50": percentile(samples["get"], 0.5) / plain50,
        "plain_p50_ms": plain50 * 1e3,
        "plain_p99_ms": plain99 * 1e3,
        "task_p50_ms": percentile(samples["task"], 0.5) * 1e3,
        "task_p99_ms": percentile(samples["task"], 0.99) * 1e3,
        "get_p50_ms": percentile(samples["get"], 0.5) * 1e3,
        "get_p99_ms": percentile(samples["get"], 0.99) * 1e3,
        "ping_p50_ms": percentile(samples["ping"], 0.5) * 1e3,
        "task_over_ping_p50": percentile(samples["task"], 0.5)
        / percentile(samples["ping"], 0.5),
        "get_over_ping_p50": percentile(samples["get"], 0.5)
        / percentile(samples["ping"], 0.5),
    }


async def _measure(client: TaskClient, sizes: Sizes) -> list[dict[str, float]]:
    await _rounds(client, sizes.latency_warmup)
    return [
        _ratios(await _rounds(client, sizes.latency_calls)) for _ in range(sizes.trials)
    ]


async def run(report: Report, sizes: Sizes, work: Path) -> None:
    """Measure both figures on stdio and HTTP, on both wires.

    Over stdio each connection is its own server process (one per wire); over
    HTTP one server process serves both wires, one after the other.
    """
    details: dict[str, Any] = {}
    for wire in (LEGACY, MODERN):
        server = OurServer(work / f"latency-stdio-{wire}", limits=BASE_LIMITS).write()
        with (server.root / "client-stderr.log").open("w") as errlog:
            async with server.stdio_client(wire, errlog) as client:
                details[f"stdio {wire}"] = await _measure(client, sizes)
    server = OurServer(work / "latency-http", limits=BASE_LIMITS).write()
    cpu: dict[str, list[dict[str, float]]] = {}
    floor_port = free_port()
    floor = ServerProcess(
        [sys.executable, "-m", "benchmarks.http_floor", str(floor_port)],
        work / "latency-http" / "floor.log",
        floor_port,
        cwd=REPO,
        label="HTTP floor",
    )
    with server.http_process() as process, floor:
        for wire in (LEGACY, MODERN):
            async with TaskClient.http(process.url, wire=wire) as client:
                details[f"http {wire}"] = await _measure(client, sizes)
                cpu[wire] = [
                    await _cpu_costs(
                        client, process.pid, floor, CPU_REPEAT * sizes.latency_calls
                    )
                    for _ in range(sizes.trials)
                ]
    for label, trials in details.items():
        _record(report, label, trials)
    for wire, trials in cpu.items():
        _record_cpu(report, wire, trials)
    report.details["latency"] = {"trials": details, "server_cpu_ms": cpu}


def _ratio(over: float, under: float) -> float:
    # /proc counts CPU in 10 ms ticks: a quick run may see none at all.
    return over / under if under else float("nan")


def _record_cpu(report: Report, wire: str, trials: list[dict[str, float]]) -> None:
    def values(key: str) -> list[float]:
        return [t[key] for t in trials]

    def spread(key: str) -> str:
        return f"{min(values(key)):.2f}-{max(values(key)):.2f}"

    report.add(
        Metric(
            FIGURE_SUBMIT,
            f"http {wire} server CPU per request (context)",
            "ms",
            values("task"),
            note=", ".join(f"{k} {spread(k)}" for k in trials[0]),
        )
    )
    report.add(
        Metric(
            FIGURE_FLOOR,
            f"http {wire} tasks/get server CPU ÷ bare uvicorn + Starlette",
            "x",
            [_ratio(t["get"], t["floor"]) for t in trials],
            "<=",
            FLOOR_TARGET,
            note=f"get {spread('get')} ms, floor {spread('floor')} ms per request",
        )
    )
    report.add(
        Metric(
            FIGURE_FLOOR,
            f"http {wire} task-augmented call CPU ÷ plain call CPU",
            "x",
            [_ratio(t["task"], t["plain"]) for t in trials],
            "<=",
            1.0,
            note=f"task (submit + run) {spread('task')} ms, plain {spread('plain')} ms",
        )
    )


async def _cpu_costs(
    client: TaskClient, pid: int, floor: ServerProcess, count: int
) -> dict[str, float]:
    """Server CPU ms per request of each kind, ``count`` sequential requests each.

    The kinds take turns in `CPU_BLOCKS` blocks of ``count / CPU_BLOCKS``
    requests, the floor's among them, so a noisy spell of the shared host
    hits every kind alike rather than the one that happened to run then (in
    one block per kind, trials of the same code ranged 2.1-3.5 in floor
    ratio). The task kind includes running the task (claim, body,
    completion), which happens in the background right after its submit
    returns, so its blocks and the plain calls' end once the server is quiet
    again (`_quiet`): a fixed pause let a slow spell's commits spill into the
    next block, a ``tasks/get`` one, and charged them to it. Each block starts after a few unmeasured
    requests of its kind: the first requests after a switch run on cold
    caches, which blocks of 100 would otherwise charge mostly to whichever
    kind follows a pause. ``floor`` is the bare endpoint's CPU per
    ``tasks/get``-shaped request.
    """
    created = await submit_task(client, "noop")
    seen = created["taskId"]
    async with _floor_client(floor, client, seen) as floor_get:
        kinds: dict[str, Callable[[], Awaitable[Any]]] = {
            "no-op": lambda: client.request(_floor_method(client)),
            "plain": lambda: _plain(client),
            "task": lambda: submit_task(client, "noop"),
            "get": lambda: client.get_task(seen),
            "floor": floor_get,
        }
        measured = {kind: floor.pid if kind == "floor" else pid for kind in kinds}
        spent = dict.fromkeys(kinds, 0.0)
        per_block = max(1, count // CPU_BLOCKS)
        for _ in range(CPU_BLOCKS):
            for kind, fn in kinds.items():
                for _ in range(CPU_BLOCK_WARMUP):
                    await fn()
                await _quiet(pid)  # the warm-up's background work is done
                before = cpu_seconds(measured[kind])
                for _ in range(per_block):
                    await fn()
                if kind in ("plain", "task"):
                    await _quiet(pid)  # their background work, inside the block
                spent[kind] += cpu_seconds(measured[kind]) - before
    return {kind: cpu / (per_block * CPU_BLOCKS) * 1e3 for kind, cpu in spent.items()}


async def _quiet(pid: int) -> None:
    """Wait (up to 5 s) until the server spends idle CPU again, twice in a row.

    Idle, a server spends about 16 ms of CPU a second (the change feed's
    polls); `QUIET_CPU_SECONDS` over `QUIET_WINDOW_SECONDS` is well above that
    and well below a server still committing and running tasks.
    """
    quiet_windows = 0
    with anyio.move_on_after(5.0):
        while quiet_windows < 2:  # two in a row: not a pause for an fsync
            before = cpu_seconds(pid)
            await anyio.sleep(QUIET_WINDOW_SECONDS)
            quiet = cpu_seconds(pid) - before < QUIET_CPU_SECONDS
            quiet_windows = quiet_windows + 1 if quiet else 0


@asynccontextmanager
async def _floor_client(
    floor: ServerProcess, client: TaskClient, task_id: str
) -> AsyncGenerator[Callable[[], Awaitable[None]]]:
    """A sender of one request to the bare endpoint, on one kept-alive connection.

    The request is the ``tasks/get`` ``client`` sends on its wire, headers and
    body alike: on 2026-07-28 that is the per-request envelope in
    ``params._meta`` and the ``Mcp-Method``/``Mcp-Name`` headers, which the
    floor parses too ("the same JSON-RPC request"); on 2025-11-25 the session
    header.
    """
    params = client._stamp({"taskId": task_id})
    headers = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        **(client._headers("tasks/get", params, None) or {}),
    }
    if client.session_id is not None:
        headers["mcp-session-id"] = client.session_id
    url = f"http://{LOOPBACK}:{floor.port}/mcp"
    request_ids = itertools.count()
    async with httpx2.AsyncClient(timeout=30.0) as http:

        async def get() -> None:
            body = {
                "jsonrpc": "2.0",
                "id": next(request_ids),
                "method": "tasks/get",
                "params": params,
            }
            answer = await http.post(url, headers=headers, json=body)
            answer.raise_for_status()

        await get()  # the connection is open before anything is measured
        yield get


def _record(report: Report, label: str, trials: list[dict[str, float]]) -> None:
    def values(key: str) -> list[float]:
        return [t[key] for t in trials]

    note = (
        f"plain p50 {min(values('plain_p50_ms')):.2f}-{max(values('plain_p50_ms')):.2f} ms, "
        f"task p50 {min(values('task_p50_ms')):.2f}-{max(values('task_p50_ms')):.2f} ms"
    )
    report.add(
        Metric(
            FIGURE_SUBMIT,
            f"{label} p50 ratio",
            "x",
            values("submit_p50"),
            "<=",
            1.15,
            note,
        )
    )
    report.add(
        Metric(
            FIGURE_SUBMIT, f"{label} p99 ratio", "x", values("submit_p99"), "<=", 1.3
        )
    )
    report.add(
        Metric(
            FIGURE_POLL,
            f"{label} tasks/get p50 ratio",
            "x",
            values("poll_p50"),
            "<=",
            1.1,
            f"get p50 {min(values('get_p50_ms')):.2f}-{max(values('get_p50_ms')):.2f} ms",
        )
    )
    report.add(
        Metric(
            FIGURE_SUBMIT,
            f"{label} task p50 / protocol no-op p50 (context)",
            "x",
            values("task_over_ping_p50"),
            note=f"no-op (ping or server/discover) p50 {min(values('ping_p50_ms')):.2f}-{max(values('ping_p50_ms')):.2f} ms",
        )
    )
    report.add(
        Metric(
            FIGURE_POLL,
            f"{label} tasks/get p50 / protocol no-op p50 (context)",
            "x",
            values("get_over_ping_p50"),
        )
    )
    sys.stdout.flush()
