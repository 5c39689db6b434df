"""What every figure shares: sizes, results, server processes, clients, statistics.

Servers always run as real subprocesses on loopback (127.0.0.1, a free port
picked by binding port 0). Every wait is bounded by a deadline, every loop by
a count; nothing here sleeps except the retry pauses of readiness polls and
the client's poll interval.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, TextIO

import anyio

from mcp_tasks.client import JSONObject, TaskClient, Wire

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BENCH_TOOLS = HERE / "bench_tools.py"
VENVS = HERE / ".venvs"
LOOPBACK = "127.0.0.1"

#: Bound on waiting for a server to listen (FastMCP takes several seconds).
START_TIMEOUT = 60.0
#: Bound on a server's exit after SIGTERM before it is killed.
EXIT_WAIT = 15.0

LEGACY: Wire = "2025-11-25"
MODERN: Wire = "2026-07-28"


# ---------------------------------------------------------------------- sizes


@dataclass(frozen=True, slots=True)
class Sizes:
    """How big each figure runs. `QUICK` is the CI smoke mode, `FULL` the real run."""

    trials: int
    restart_trials: int
    latency_warmup: int
    latency_calls: int
    engine_submitters: int
    engine_per_submitter: int
    e2e_tasks: int
    e2e_plain: int
    e2e_chunks: int
    e2e_clients: int
    e2e_lanes: int
    fairness_backlog: int
    fairness_samples: int
    memory_queued: int
    memory_waiting: int
    recovery_tasks: int
    step_count: int
    step_runs: int
    process_counts: tuple[int, ...]
    processes_tasks: int
    processes_backlog: int


QUICK = Sizes(
    trials=2,
    restart_trials=1,
    latency_warmup=5,
    latency_calls=20,
    engine_submitters=64,
    engine_per_submitter=5,
    e2e_tasks=120,
    e2e_plain=64,
    e2e_chunks=2,
    e2e_clients=8,
    e2e_lanes=1,
    fairness_backlog=60,
    fairness_samples=4,
    memory_queued=500,
    memory_waiting=40,
    recovery_tasks=200,
    step_count=100,
    step_runs=3,
    process_counts=(1, 2),
    processes_tasks=60,
    processes_backlog=40,
)

FULL = Sizes(
    trials=3,
    restart_trials=3,
    latency_warmup=50,
    latency_calls=300,
    engine_submitters=64,
    engine_per_submitter=150,
    e2e_tasks=10_000,
    e2e_plain=2_500,
    e2e_chunks=5,
    e2e_clients=8,
    e2e_lanes=1,
    fairness_backlog=5_000,
    fairness_samples=20,
    memory_queued=100_000,
    memory_waiting=10_000,
    recovery_tasks=10_000,
    step_count=100,
    step_runs=15,
    process_counts=(1, 2, 4),
    processes_tasks=4_500,
    processes_backlog=5_000,
)


# -------------------------------------------------------------------- results

Op = Literal["<=", ">="]


@dataclass(slots=True)
class Metric:
    """One row of the table: a value per trial, and the target if there is one."""

    figure: str
    name: str
    unit: str
    values: list[float]
    op: Op | None = None
    bound: float | None = None
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    @property
    def verdict(self) -> str:
        """``met``/``missed`` (judged on the median over trials) or ``report``."""
        if self.op is None or self.bound is None or not self.values:
            return "report"
        ok = self.median <= self.bound if self.op == "<=" else self.median >= self.bound
        return "met" if ok else "MISSED"

    @property
    def target(self) -> str:
        return "" if self.op is None else f"{self.op} {self.bound:g}"

    def as_json(self) -> dict[str, Any]:
        return {
            "figure": self.figure,
            "metric": self.name,
            "unit": self.unit,
            "values": self.values,
            "min": min(self.values) if self.values else None,
            "median": self.median if self.values else None,
            "max": max(self.values) if self.values else None,
            "target": self.target or None,
            "verdict": self.verdict,
            "note": self.note,
        }


@dataclass(slots=True)
class Report:
    """Everything one run measured."""

    metrics: list[Metric] = field(default_factory=lambda: list[Metric]())
    details: dict[str, Any] = field(default_factory=lambda: dict[str, Any]())

    def add(self, metric: Metric) -> Metric:
        self.metrics.append(metric)
        print(f"  {metric.figure} / {metric.name}: {_fmt_values(metric)}", flush=True)
        return metric


def _fmt(value: float) -> str:
    if value != value:  # NaN
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"


def _smoke(metric: Metric) -> str:
    return "report" if metric.verdict == "report" else "smoke"


def _fmt_values(metric: Metric) -> str:
    return ", ".join(_fmt(v) for v in metric.values) + f" {metric.unit}"


def table(metrics: Sequence[Metric], *, judge: bool = True) -> str:
    """The results as a Markdown table (min / median / max over trials).

    With ``judge`` False (the quick smoke run, whose sizes are too small to
    mean anything), a row with a target says ``smoke`` instead of a verdict.
    """
    header = "| figure | metric | unit | min | median | max | target | verdict | note |"
    lines = [header, "|---|---|---|---:|---:|---:|---|---|---|"]
    for m in metrics:
        lo, mid, hi = (
            (min(m.values), m.median, max(m.values))
            if m.values
            else (float("nan"),) * 3
        )
        lines.append(
            f"| {m.figure} | {m.name} | {m.unit} | {_fmt(lo)} | {_fmt(mid)} | "
            f"{_fmt(hi)} | {m.target} | {m.verdict if judge else _smoke(m)} | "
            f"{m.note} |"
        )
    return "\n".join(lines)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q * (len(ordered) - 1))))
    return ordered[rank]


# ------------------------------------------------------------------ processes


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def rss_kb(pid: int) -> int:
    """VmRSS of a process in KiB (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (all its threads).

    Read from the process's CPU-time clock (``clock_getcpuclockid``), which
    the kernel keeps in nanoseconds, dead threads included. ``/proc/PID/stat``
    counts in 10 ms ticks, too coarse for a few hundred requests of 0.1 ms
    each; it is the fallback where the clock cannot be read.
    """
    clock = _cpu_clock(pid)
    if clock is not None:
        try:
            return time.clock_gettime(clock)
        except OSError:
            pass  # the process is gone, or not ours to read
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    return None if name is None else ctypes.CDLL(name, use_errno=True)


def _cpu_clock(pid: int) -> int | None:
    """The CPU-time clock id of process ``pid``, or None where there is none."""
    libc = _libc()
    if libc is None:
        return None
    clock = ctypes.c_int()
    if libc.clock_getcpuclockid(pid, ctypes.byref(clock)) != 0:
        return None
    return clock.value


def self_cpu_seconds() -> float:
    """CPU time of this (client) process so far."""
    times = os.times()
    return times.user + times.system


class ServerProcess:
    """A server subprocess listening on a loopback HTTP port."""

    def __init__(
        self,
        argv: Sequence[str],
        log: Path,
        port: int,
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        label: str = "server",
    ) -> None:
        self.argv = list(argv)
        self.log = log
        self.port = port
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self.label = label
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self._log_file: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/mcp"

    @property
    def pid(self) -> int:
        assert self.process is not None, "not running"
        return self.process.pid

    def launch(self) -> None:
        """Start the process (without waiting for it to listen)."""
        assert self.process is None, "already running"
        self._log_file = self.log.open("ab")
        env = None
        if self.env is not None:
            env = {**os.environ, **self.env}
        self.started_at = time.perf_counter()
        self.process = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=self._log_file,
            cwd=self.cwd,
            env=env,
        )

    def wait_listening(self, timeout: float = START_TIMEOUT) -> None:
        """Return once the port accepts TCP connections (bounded)."""
        assert self.process is not None, "not launched"
        deadline = time.monotonic() + timeout
        while True:
            code = self.process.poll()
            if code is not None:
                raise RuntimeError(
                    f"{self.label} exited with {code} before listening:\n{self.log_tail()}"
                )
            try:
                socket.create_connection((LOOPBACK, self.port), timeout=1).close()
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{self.label} not listening on {self.port} after {timeout} s"
                    ) from None
                time.sleep(0.01)  # retry pause of a bounded readiness poll
            else:
                return

    def start(self) -> ServerProcess:
        self.launch()
        self.wait_listening()
        return self

    def kill9(self) -> None:
        """SIGKILL, as a crash would."""
        process, self.process = self.process, None
        if process is not None:
            process.send_signal(signal.SIGKILL)
            process.wait(EXIT_WAIT)
        self._close_log()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after `EXIT_WAIT`; safe to call twice."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(EXIT_WAIT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(EXIT_WAIT)
        self._close_log()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------- mcp-tasks setup


def _toml(value: object) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def token_for(client_id: str) -> str:
    """The benchmark bearer token of a client id (loopback only, not a secret)."""
    return f"bench-token-{client_id}-0123456789abcdef"


@dataclass(frozen=True, slots=True)
class OurServer:
    """Config, tokens and journal of one mcp-tasks instance under ``root``."""

    root: Path
    limits: Mapping[str, object] = field(default_factory=lambda: dict[str, object]())
    clients: Sequence[str] = ()
    db_name: str = "tasks.db"
    #: A ``postgresql://`` journal instead of the SQLite file under ``root``.
    db_url: str | None = None

    @property
    def db(self) -> Path:
        return self.root / self.db_name

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def tokens(self) -> Path | None:
        return self.root / "tokens.toml" if self.clients else None

    def write(self) -> OurServer:
        self.root.mkdir(parents=True, exist_ok=True)
        lines = ["[limits]"] + [f"{k} = {_toml(v)}" for k, v in self.limits.items()]
        self.config.write_text("\n".join(lines) + "\n")
        if self.tokens is not None:
            entries = [
                f"[[client]]\nid = {_toml(c)}\ntoken = {_toml(token_for(c))}\n"
                for c in self.clients
            ]
            self.tokens.write_text("\n".join(entries))
        return self

    def argv(self, http: bool) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "mcp_tasks",
            "serve",
            "--db",
            self.db_url or str(self.db),
            "--config",
            str(self.config),
            "--tools",
            str(BENCH_TOOLS),
            "--log-level",
            "WARNING",
        ]
        if http and self.tokens is not None:
            argv += ["--tokens", str(self.tokens)]
        return argv

    def http_process(
        self, label: str = "mcp-tasks", log_name: str = "server.log"
    ) -> ServerProcess:
        """One ``serve --http`` process; several can share the journal."""
        port = free_port()
        argv = [*self.argv(http=True), "--http", f"{LOOPBACK}:{port}"]
        return ServerProcess(
            argv, self.root / log_name, port, cwd=self.root, label=label
        )

    def stdio_client(
        self, wire: Wire, errlog: TextIO, **kwargs: Any
    ) -> contextlib.AbstractAsyncContextManager[TaskClient]:
        # The SDK starts stdio servers with a minimal environment; keep
        # PYTHONPATH so a server runs the same mcp_tasks as this process.
        env = (
            {"PYTHONPATH": os.environ["PYTHONPATH"]}
            if "PYTHONPATH" in os.environ
            else None
        )
        return TaskClient.stdio(
            self.argv(http=False),
            cwd=self.root,
            wire=wire,
            errlog=errlog,
            env=env,
            **kwargs,
        )


#: Limits every mcp-tasks instance of the benchmarks uses unless a figure says
#: otherwise: the defaults, with room for big backlogs and a short shutdown.
BASE_LIMITS: dict[str, object] = {
    "client_backlog": 1_000_000,
    "shutdown_grace_seconds": 1,
    "sweep_interval_seconds": 3600,
    # The figures measure throughput, which a per-client request rate would
    # cap; the limiter's own cost is `benchmarks.request_limits`.
    "requests_per_second": 0,
}


# ------------------------------------------------------------------- clients


@contextlib.asynccontextmanager
async def http_clients(
    url: str,
    count: int,
    *,
    wire: Wire,
    tokens: Sequence[str | None] | None = None,
    declare_tasks_extension: bool = True,
    capabilities: Mapping[str, Any] | None = None,
) -> AsyncGenerator[list[TaskClient]]:
    """``count`` connected HTTP clients (each its own session/connection)."""
    async with contextlib.AsyncExitStack() as stack:
        clients: list[TaskClient] = []
        for index in range(count):
            token = tokens[index] if tokens is not None else None
            client = await stack.enter_async_context(
                TaskClient.http(
                    url,
                    token=token,
                    wire=wire,
                    declare_tasks_extension=declare_tasks_extension,
                    capabilities=capabilities,
                )
            )
            clients.append(client)
        yield clients


async def submit_task(
    client: TaskClient, tool: str, arguments: Mapping[str, Any] | None = None
) -> JSONObject:
    """Call ``tool`` as a task on the client's wire; return the created task.

    2025-11-25: ``params.task`` opts in. 2026-07-28: the client declares the
    extension and the server decides; a server that answered at once gets a
    synthetic completed task (``taskId`` None).
    """
    task = {"ttl": 600_000} if client.wire == LEGACY else None
    result = await client.call_tool(tool, arguments or {}, task=task)
    created = client.created_task(result)
    if created is None:
        return {"taskId": None, "status": "completed", "result": result}
    return created


TERMINAL = frozenset({"completed", "failed", "cancelled"})


@dataclass(frozen=True, slots=True)
class PollPolicy:
    """How the benchmark client polls: first after ``first``, doubling to ``cap``."""

    first: float = 0.005
    cap: float = 0.1
    limit: float = 120.0

    def delays(self) -> Iterator[float]:
        delay, spent = self.first, 0.0
        while spent < self.limit:
            yield delay
            spent += delay
            delay = min(self.cap, delay * 2)


async def poll_until_terminal(
    client: TaskClient, task_id: str, policy: PollPolicy
) -> tuple[JSONObject, int]:
    """Poll ``tasks/get`` by ``policy`` until terminal; return it and the poll count."""
    polls = 0
    for delay in policy.delays():
        await anyio.sleep(delay)
        polls += 1
        task = await client.get_task(task_id)
        if task.get("status") in TERMINAL:
            return task, polls
    raise TimeoutError(f"task {task_id} not terminal after {policy.limit} s")


def revision() -> dict[str, Any]:
    """Which mcp_tasks was measured: the git commit, and whether it was modified."""
    import mcp_tasks

    found: dict[str, Any] = {
        "mcp_tasks": str(Path(mcp_tasks.__file__).parent),
        "commit": os.environ.get("BENCH_REVISION"),
    }
    if found["commit"] is None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            git = ["git", "-C", str(REPO)]
            found["commit"] = subprocess.run(
                [*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
            found["mcp_tasks_modified"] = bool(
                subprocess.run(
                    [*git, "status", "--porcelain", "mcp_tasks"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                ).stdout.strip()
            )
    return found


def machine() -> dict[str, Any]:
    """What the table was measured on."""
    import platform
    import sqlite3

    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    disk = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        disk = subprocess.run(
            ["df", "-hT", str(HERE)], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    return {
        "revision": revision(),
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "kernel": platform.release(),
        "disk": disk,
        "load_average_at_start": os.getloadavg(),
    }
