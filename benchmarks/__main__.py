"""Run the benchmark figures; print the table; write ``benchmarks/out/results.json``.

Use ``benchmarks/run`` (it installs the peers and exports where they live);
``python -m benchmarks`` works too and skips the peers it cannot find.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import anyio

from . import (
    fig_e2e,
    fig_engine,
    fig_fairness,
    fig_latency,
    fig_memory,
    fig_processes,
    fig_recovery,
)
from ._harness import FULL, HERE, QUICK, Report, Sizes, machine, revision, table
from ._profile import Profiler

FIGURES = (
    "latency",
    "engine",
    "e2e",
    "fairness",
    "memory",
    "recovery",
    "processes",
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="benchmarks", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes: a smoke run for CI"
    )
    parser.add_argument(
        "--only",
        default=",".join(FIGURES),
        help=f"comma-separated figures to run (default: all of {', '.join(FIGURES)})",
    )
    parser.add_argument(
        "--out", type=Path, default=HERE / "out", help="folder for results.json"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the work folder (journals, logs)"
    )
    return parser


def _clean(value: Any) -> Any:
    """JSON has no NaN: write null instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        items = cast("dict[object, Any]", value).items()
        return {str(k): _clean(v) for k, v in items}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in cast("list[Any]", value)]
    return value


#: Figures whose subject runs in this process: they keep asyncio's own loop,
#: as a library user's program would. The others drive servers from here, and
#: there this process is only the load: on uvloop (when installed) its clients
#: spend about a fifth less CPU per request, which on 2 cores shared with the
#: server is the difference between measuring the server and measuring them.
IN_PROCESS_FIGURES = frozenset({"engine"})


def _client_loop(name: str) -> str:
    if name in IN_PROCESS_FIGURES or importlib.util.find_spec("uvloop") is None:
        return "asyncio"
    return "uvloop"


class _HostProbe:
    """The host's pace now: two fixed pure-Python loops, in milliseconds.

    ``cpu`` adds up a range (it stays in the core's caches); ``memory`` reads
    a list at shuffled places, so it waits on the shared caches and memory
    that other jobs on the host compete for. The VM shares its host: in slow
    spells servers here spent up to 1.8 times the CPU per request of a quiet
    spell, and every figure measured then moved with it. Printed before each
    figure and kept in results.json, so a reader can tell a slow spell from a
    change in the code.
    """

    def __init__(self) -> None:
        self._values = list(range(2_000_000))
        order = list(range(len(self._values)))
        random.Random(0).shuffle(order)
        self._order = order[:200_000]

    def __call__(self) -> dict[str, float]:
        started = time.perf_counter()
        total = 0
        for value in range(2_000_000):
            total += value
        cpu = time.perf_counter() - started
        started = time.perf_counter()
        for index in self._order:
            total += self._values[index]
        memory = time.perf_counter() - started
        return {"cpu": round(cpu * 1e3, 1), "memory": round(memory * 1e3, 1)}


def _run_figures(args: argparse.Namespace, work: Path) -> Report:
    sizes: Sizes = QUICK if args.quick else FULL
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(only) - set(FIGURES))
    if unknown:
        raise SystemExit(f"unknown figure(s): {', '.join(unknown)}")
    pyspy = os.environ.get("BENCH_PYSPY")
    profiler = Profiler(Path(pyspy) if pyspy else None, args.out / "profiles")
    peers = fig_e2e.peers_from_env()
    report = Report()
    steps: dict[str, Callable[[], Awaitable[None]]] = {
        "latency": lambda: fig_latency.run(report, sizes, work),
        "engine": lambda: fig_engine.run(report, sizes, work, profiler),
        "e2e": lambda: fig_e2e.run(report, sizes, work, peers, profiler),
        "fairness": lambda: fig_fairness.run(report, sizes, work),
        "memory": lambda: fig_memory.run(report, sizes, work),
        "recovery": lambda: fig_recovery.run(report, sizes, work),
        "processes": lambda: fig_processes.run(report, sizes, work),
    }
    timings: dict[str, float] = {}
    loops: dict[str, str] = {}
    probe = _HostProbe()
    probes: dict[str, dict[str, float]] = {}
    for name in FIGURES:
        if name not in only:
            continue
        loops[name] = _client_loop(name)
        probes[name] = probe()
        print(
            f"== {name} (this process on {loops[name]}; host probe "
            f"{probes[name]['cpu']:.0f} ms cpu, {probes[name]['memory']:.0f} ms memory)",
            flush=True,
        )
        started = time.perf_counter()
        anyio.run(steps[name], backend_options={"use_uvloop": loops[name] == "uvloop"})
        timings[name] = time.perf_counter() - started
        print(f"   ({timings[name]:.1f} s)", flush=True)
    report.details["figure_seconds"] = timings
    report.details["benchmark_process_loop"] = loops
    probes["end"] = probe()
    report.details["host_probe_ms"] = probes
    print(
        f"host probe at the end: {probes['end']['cpu']:.0f} ms cpu, "
        f"{probes['end']['memory']:.0f} ms memory",
        flush=True,
    )
    if profiler.summaries:
        report.details["profiles"] = profiler.summaries
    return report


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)
    host = machine()
    clock = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="mcp-tasks-bench-"))
    try:
        report = _run_figures(args, work)
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    elapsed = time.perf_counter() - clock
    rendered = table(report.metrics, judge=not args.quick)
    print()
    print(rendered)
    print(f"\n{len(report.metrics)} rows in {elapsed:.0f} s")
    results = {
        "mode": "quick" if args.quick else "full",
        "command": " ".join(
            [os.environ.get("BENCH_COMMAND", "python -m benchmarks"), *sys.argv[1:]]
        ),
        "started": started.isoformat(timespec="seconds"),
        "elapsed_seconds": elapsed,
        "machine": host,
        "load_average_at_end": os.getloadavg(),
        "revision_at_end": revision(),
        "metrics": [m.as_json() for m in report.metrics],
        "table_markdown": rendered,
        "details": report.details,
    }
    target = args.out / "results.json"
    target.write_text(json.dumps(_clean(results), indent=2) + "\n")
    print(f"wrote {target}")
    if args.quick:
        print("quick run: sizes too small to judge targets (verdicts shown as smoke)")
        return 0
    missed = [m for m in report.metrics if m.verdict == "MISSED"]
    if missed:
        print(f"{len(missed)} target(s) missed (benchmarks report, they do not fail)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
