"""End-to-end throughput over HTTP, for mcp-tasks and its peers.

The workload: ``e2e_tasks`` no-op tasks from ``e2e_clients`` clients (each its
own HTTP connection and, on mcp-tasks, its own bearer token, so its own client
for fairness and caps), each client running ``e2e_lanes`` lane(s). A lane calls
the tool as a task, then polls ``tasks/get`` until the task is terminal (first
poll after 5 ms, doubling up to 100 ms: the same client policy for every
server, whatever ``pollInterval`` the server suggests), then starts the next
task. Throughput is tasks from first submit to last completion, per second.

The baseline is the same server's plain no-op ``tools/call`` throughput with
the same clients and lanes (``e2e_plain`` calls in all). The workload runs in
``e2e_chunks`` chunks, each a plain phase then a task phase; each chunk is a
trial. Server and client CPU seconds are read from /proc for each phase, to
show where the two cores went.

Systems:

- ``mcp-tasks`` on 2025-11-25 and on 2026-07-28 (journal ``synchronous=FULL``);
- ``mcp 1.30`` experimental in-memory task runtime (2025-11-25);
- ``FastMCP 4 + fastmcp-tasks``, memory backend (2026-07-28);
- ``FastMCP 4 + fastmcp-tasks``, Redis backend (2026-07-28), when a
  ``redis-server`` is available: a private instance on loopback with AOF
  ``appendfsync always`` (the durability mcp-tasks gives with ``FULL``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import AsyncGenerator, Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import anyio

from mcp_tasks.client import TaskClient, Wire

from ._harness import (
    BASE_LIMITS,
    HERE,
    LEGACY,
    LOOPBACK,
    MODERN,
    Metric,
    OurServer,
    PollPolicy,
    Report,
    ServerProcess,
    Sizes,
    cpu_seconds,
    free_port,
    http_clients,
    percentile,
    poll_until_terminal,
    self_cpu_seconds,
    submit_task,
    token_for,
)
from ._profile import Profiler

FIGURE_E2E = "end-to-end throughput"
FIGURE_PEERS = "versus peers"
POLICY = PollPolicy()


@dataclass(frozen=True, slots=True)
class Peers:
    """Where the peers' interpreters and Redis live (None: not available)."""

    mcp130_python: Path | None
    fastmcp_python: Path | None
    redis_server: Path | None


@dataclass(slots=True)
class Phase:
    """One measured phase: a count of operations and what it cost."""

    count: int
    seconds: float
    server_cpu: float
    client_cpu: float
    latencies: list[float] = field(default_factory=lambda: list[float]())
    polls: int = 0

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    def as_json(self) -> dict[str, float]:
        return {
            "count": self.count,
            "seconds": self.seconds,
            "per_second": self.rate,
            "server_cpu_ms_per_op": self.server_cpu / self.count * 1e3,
            "client_cpu_ms_per_op": self.client_cpu / self.count * 1e3,
            "server_cpu_share": self.server_cpu / self.seconds,
            "latency_p50_ms": percentile(self.latencies, 0.5) * 1e3,
            "latency_p99_ms": percentile(self.latencies, 0.99) * 1e3,
            "polls_per_task": self.polls / self.count if self.polls else 0.0,
        }


@dataclass(frozen=True, slots=True)
class System:
    """A server to drive: how to start it and how to talk to it."""

    name: str
    wire: Wire
    durable: bool
    start: Callable[[Path], contextlib.AbstractContextManager[list[ServerProcess]]]
    tokens: bool = False


# ------------------------------------------------------------------ drivers


async def _plain_call(client: TaskClient) -> None:
    result = await client.call_tool("noop", {})
    if result.get("isError") or "content" not in result:
        raise RuntimeError(f"plain call failed: {result}")


async def _task_call(client: TaskClient) -> int:
    created = await submit_task(client, "noop")
    task_id = created.get("taskId")
    if task_id is None:
        raise RuntimeError(f"the server answered without a task: {created}")
    task, polls = await poll_until_terminal(client, task_id, POLICY)
    if task.get("status") != "completed":
        raise RuntimeError(f"task {task_id} ended {task.get('status')}: {task}")
    return polls


async def drive(
    clients: list[TaskClient],
    total: int,
    lanes: int,
    *,
    tasks: bool,
    pids: list[int],
) -> Phase:
    """Run ``total`` operations over ``clients`` × ``lanes``; measure the phase."""
    remaining = total
    latencies: list[float] = []
    polls = 0

    async def lane(client: TaskClient) -> None:
        nonlocal remaining, polls
        while remaining > 0:
            remaining -= 1
            start = time.perf_counter()
            if tasks:
                count = await _task_call(client)
                polls += count  # after the await: no lost update across lanes
            else:
                await _plain_call(client)
            latencies.append(time.perf_counter() - start)

    server_before = sum(cpu_seconds(pid) for pid in pids)
    client_before = self_cpu_seconds()
    start = time.perf_counter()
    with anyio.fail_after(max(120.0, total * 0.2)):
        async with anyio.create_task_group() as tg:
            for client in clients:
                for _ in range(lanes):
                    tg.start_soon(lane, client)
    elapsed = time.perf_counter() - start
    return Phase(
        count=total,
        seconds=elapsed,
        server_cpu=sum(cpu_seconds(pid) for pid in pids) - server_before,
        client_cpu=self_cpu_seconds() - client_before,
        latencies=latencies,
        polls=polls,
    )


@contextlib.asynccontextmanager
async def _clients(
    system: System, url: str, count: int, *, declare: bool
) -> AsyncGenerator[list[TaskClient]]:
    tokens = [token_for(f"c{i}") for i in range(count)] if system.tokens else None
    async with http_clients(
        url, count, wire=system.wire, tokens=tokens, declare_tasks_extension=declare
    ) as clients:
        yield clients


async def measure_system(
    system: System, sizes: Sizes, work: Path, profiler: Profiler
) -> dict[str, Any]:
    """The workload on one server, in ``e2e_chunks`` interleaved chunks.

    Each chunk is a plain phase (``e2e_plain / e2e_chunks`` calls) followed by
    a task phase (``e2e_tasks / e2e_chunks`` tasks), so noise from the machine
    hits both alike; each chunk is one trial. Totals cover all chunks.
    """
    chunks: list[dict[str, Any]] = []
    plain_phases: list[Phase] = []
    task_phases: list[Phase] = []
    with system.start(work) as processes:
        pids = [p.pid for p in processes]
        url = processes[0].url
        clients_n, lanes = sizes.e2e_clients, sizes.e2e_lanes
        # Plain clients: on 2026-07-28 a client that declares the extension
        # would get a task, so the baseline clients declare nothing.
        async with (
            _clients(system, url, clients_n, declare=False) as plain_clients,
            _clients(system, url, clients_n, declare=True) as task_clients,
        ):
            warm = clients_n * lanes * 4
            await drive(plain_clients, warm, lanes, tasks=False, pids=pids)
            await drive(task_clients, warm, lanes, tasks=True, pids=pids)
            for index in range(sizes.e2e_chunks):
                plain = await drive(
                    plain_clients,
                    sizes.e2e_plain // sizes.e2e_chunks,
                    lanes,
                    tasks=False,
                    pids=pids,
                )
                label = f"e2e-{system.name}"
                with (
                    profiler.record(processes[0].pid, label) if index == 0 else _no_op()
                ):
                    task = await drive(
                        task_clients,
                        sizes.e2e_tasks // sizes.e2e_chunks,
                        lanes,
                        tasks=True,
                        pids=pids,
                    )
                plain_phases.append(plain)
                task_phases.append(task)
                chunks.append({"plain": plain.as_json(), "tasks": task.as_json()})
    total = {"plain": _total(plain_phases), "tasks": _total(task_phases)}
    print(
        f"    {system.name}: plain {total['plain']['per_second']:.0f}/s, "
        f"tasks {total['tasks']['per_second']:.0f}/s "
        f"({total['tasks']['count']} tasks)",
        flush=True,
    )
    return {"chunks": chunks, "total": total}


@contextlib.contextmanager
def _no_op() -> Generator[None]:
    yield


def _total(phases: list[Phase]) -> dict[str, float]:
    merged = Phase(
        count=sum(p.count for p in phases),
        seconds=sum(p.seconds for p in phases),
        server_cpu=sum(p.server_cpu for p in phases),
        client_cpu=sum(p.client_cpu for p in phases),
        latencies=[v for p in phases for v in p.latencies],
        polls=sum(p.polls for p in phases),
    )
    return merged.as_json()


# ------------------------------------------------------------------ systems


def _ours(wire: Wire) -> System:
    @contextlib.contextmanager
    def start(work: Path) -> Generator[list[ServerProcess]]:
        server = OurServer(
            work / f"e2e-mcp-tasks-{wire}",
            limits=BASE_LIMITS,
            clients=[f"c{i}" for i in range(64)],
        ).write()
        with server.http_process() as process:
            yield [process]

    return System(f"mcp-tasks {wire}", wire, True, start, tokens=True)


def _mcp130(python: Path) -> System:
    @contextlib.contextmanager
    def start(work: Path) -> Generator[list[ServerProcess]]:
        root = work / "e2e-mcp130"
        root.mkdir(parents=True, exist_ok=True)
        port = free_port()
        argv = [
            str(python),
            str(HERE / "peers" / "mcp130_server.py"),
            "--http",
            f"{LOOPBACK}:{port}",
        ]
        with ServerProcess(
            argv, root / "server.log", port, cwd=root, label="mcp 1.30 peer"
        ) as process:
            yield [process]

    return System("mcp 1.30 in-memory", LEGACY, False, start)


def _fastmcp(python: Path, redis: Path | None) -> System:
    backend = "redis" if redis is not None else "memory"

    @contextlib.contextmanager
    def start(work: Path) -> Generator[list[ServerProcess]]:
        root = work / f"e2e-fastmcp-{backend}"
        root.mkdir(parents=True, exist_ok=True)
        # FastMCP reads FASTMCP_* settings from a .env in its working directory.
        env = {"FASTMCP_ENV_FILE": str(root / "absent.env")}
        with contextlib.ExitStack() as stack:
            processes: list[ServerProcess] = []
            url = "memory://"
            if redis is not None:
                redis_process = stack.enter_context(_redis(redis, root))
                processes.append(redis_process)
                url = f"redis://{LOOPBACK}:{redis_process.port}/0"
            port = free_port()
            argv = [
                str(python),
                str(HERE / "peers" / "fastmcp_server.py"),
                "--http",
                f"{LOOPBACK}:{port}",
                "--backend",
                url,
            ]
            server = stack.enter_context(
                ServerProcess(
                    argv,
                    root / "server.log",
                    port,
                    cwd=root,
                    env=env,
                    label=f"FastMCP peer ({backend})",
                )
            )
            yield [server, *processes]

    durable = redis is not None
    return System(f"FastMCP 4 + fastmcp-tasks, {backend}", MODERN, durable, start)


@contextlib.contextmanager
def _redis(redis: Path, root: Path) -> Generator[ServerProcess]:
    """A private Redis on loopback with AOF fsync on every write; removed after."""
    data = root / "redis-data"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    port = free_port()
    argv = [
        str(redis),
        "--bind",
        LOOPBACK,
        "--port",
        str(port),
        "--protected-mode",
        "yes",
        "--dir",
        str(data),
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--daemonize",
        "no",
    ]
    with ServerProcess(argv, root / "redis.log", port, cwd=data, label="redis") as p:
        yield p


def systems(peers: Peers) -> list[System]:
    """Every system this machine can run, mcp-tasks first."""
    found = [_ours(LEGACY), _ours(MODERN)]
    if peers.mcp130_python is not None:
        found.append(_mcp130(peers.mcp130_python))
    if peers.fastmcp_python is not None:
        found.append(_fastmcp(peers.fastmcp_python, None))
        if peers.redis_server is not None:
            found.append(_fastmcp(peers.fastmcp_python, peers.redis_server))
    return found


# -------------------------------------------------------------------- figure

#: Tasks/s at least this share of the same server's plain calls/s, by wire
#: (issue 15 raised 2025-11-25 from 0.8).
E2E_TARGETS: dict[str, float] = {"2025-11-25": 0.9, "2026-07-28": 0.8}
#: Our tasks/s at least this many times a peer's on the same wire (issue 15):
#: mcp 1.30's in-memory runtime on 2025-11-25, FastMCP + fastmcp-tasks (memory
#: and Redis) on 2026-07-28.
PEER_TARGETS: dict[str, float] = {"2025-11-25": 2.0, "2026-07-28": 2.5}


async def run(
    report: Report, sizes: Sizes, work: Path, peers: Peers, profiler: Profiler
) -> None:
    """Drive every system; record our ratios and the comparisons with peers."""
    results: dict[str, dict[str, Any]] = {}
    found = systems(peers)
    missing = _missing(peers)
    for system in found:
        try:
            results[system.name] = await measure_system(system, sizes, work, profiler)
        except Exception as exc:  # a peer that breaks is reported, not fatal
            if system.name.startswith("mcp-tasks"):
                raise
            print(f"    {system.name}: FAILED: {_leaf(exc)!r}", flush=True)
            missing.append(f"{system.name}: failed: {_leaf(exc)!r}")
    report.details["e2e"] = {"results": results, "unavailable": missing}
    for system in found:
        if not system.name.startswith("mcp-tasks") or system.name not in results:
            continue
        chunks = results[system.name]["chunks"]
        total = results[system.name]["total"]
        report.add(
            Metric(
                FIGURE_E2E,
                f"{system.name}: tasks/s ÷ plain calls/s",
                "x",
                [c["tasks"]["per_second"] / c["plain"]["per_second"] for c in chunks],
                ">=",
                E2E_TARGETS[system.wire],
                note=_note(total),
            )
        )
        report.add(
            Metric(
                FIGURE_E2E,
                f"{system.name}: tasks/s",
                "tasks/s",
                [c["tasks"]["per_second"] for c in chunks],
                note=f"all {total['tasks']['count']}: "
                f"{total['tasks']['per_second']:.0f} tasks/s",
            )
        )
    for system in found:
        if system.name.startswith("mcp-tasks") or system.name not in results:
            continue
        ours = results[f"mcp-tasks {system.wire}"]
        theirs = results[system.name]
        pairs = zip(ours["chunks"], theirs["chunks"], strict=True)
        peer_total = theirs["total"]["tasks"]["per_second"]
        report.add(
            Metric(
                FIGURE_PEERS,
                f"mcp-tasks {system.wire} ÷ {system.name}",
                "x",
                [o["tasks"]["per_second"] / t["tasks"]["per_second"] for o, t in pairs],
                ">=",
                PEER_TARGETS[system.wire],
                note=f"peer {peer_total:.0f} tasks/s over all "
                f"{theirs['total']['tasks']['count']}; "
                + ("durable peer" if system.durable else "in-memory peer"),
            )
        )
    for line in missing:
        print(f"    unavailable: {line}", flush=True)


def _leaf(error: BaseException) -> BaseException:
    """The first non-group exception inside ``error``."""
    while isinstance(error, BaseExceptionGroup):
        group = cast("BaseExceptionGroup[BaseException]", error)
        error = group.exceptions[0]
    return error


def _note(total: dict[str, dict[str, float]]) -> str:
    tasks, plain = total["tasks"], total["plain"]
    return (
        f"all chunks: {tasks['per_second']:.0f} tasks/s vs {plain['per_second']:.0f} "
        f"calls/s; {tasks['polls_per_task']:.2f} polls/task; server CPU "
        f"{tasks['server_cpu_ms_per_op']:.1f} ms/task vs "
        f"{plain['server_cpu_ms_per_op']:.1f} ms/call"
    )


def _missing(peers: Peers) -> list[str]:
    missing: list[str] = []
    if peers.mcp130_python is None:
        missing.append("mcp 1.30 peer: no interpreter (benchmarks/run installs it)")
    if peers.fastmcp_python is None:
        missing.append("FastMCP peer: no interpreter (benchmarks/run installs it)")
    elif peers.redis_server is None:
        missing.append("FastMCP + Redis: no redis-server on this machine")
    return missing


def peers_from_env() -> Peers:
    """Peers as ``benchmarks/run`` announces them in the environment."""

    def path(name: str) -> Path | None:
        value = os.environ.get(name)
        return Path(value) if value and Path(value).exists() else None

    return Peers(
        path("BENCH_MCP130_PYTHON"),
        path("BENCH_FASTMCP_PYTHON"),
        path("BENCH_REDIS_SERVER"),
    )
