"""The engine against procrastinate and pgqueuer on the same PostgreSQL.

Enqueue + execute of no-op jobs: 64 producers submit back to back while 8
workers run the jobs; jobs/s from the first submit until every job's end is
durable in the database. Each system runs on its own fresh database of one
server, the three alternating (the order rotates every trial), ``trials`` times;
each trial's ratio is ours ÷ theirs, and the figure is the median of those.

- **mcp-tasks**: `benchmarks.fig_pg_engine.engine_run`, in this process: 64
  client ids (one per producer), so the fair pick across clients and the
  per-client caps in the claim are at work (cap 8, the worker count), 8
  workers, pool 8.
- **procrastinate** and **pgqueuer** run `benchmarks/peers/pg_*.py` in their own
  virtual environments under ``benchmarks/.venvs/`` (created on first use with
  the pins below): the same 64 producers in one process, a pool of 8, one
  worker with concurrency 8. Neither has per-client fairness.

Run::

    .venv/bin/python -m benchmarks.fig_pg_peers [--quick] [--url URL]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
import psycopg

from .fig_pg_engine import SUBMITTERS, WORKERS, engine_run, fresh_database
from .pg_cluster import running_cluster

HERE = Path(__file__).resolve().parent
VENVS = HERE / ".venvs"
#: Each peer: its venv name, its pins, its harness script.
PEERS: dict[str, tuple[str, ...]] = {
    "procrastinate": ("procrastinate==3.10.0",),
    "pgqueuer": ("pgqueuer==1.6.0", "asyncpg==0.32.0"),
}
POOL = 8
PEER_TIMEOUT = 600.0


@dataclass(frozen=True)
class Sizes:
    """How much work each trial does."""

    per_producer: int
    trials: int


FULL = Sizes(per_producer=40, trials=3)
QUICK = Sizes(per_producer=2, trials=1)


def peer_python(name: str) -> Path | None:
    """The peer's interpreter, installing its pins into a venv on first use."""
    override = os.environ.get(f"BENCH_{name.upper()}_PYTHON")
    if override:
        return Path(override)
    pins = PEERS[name]
    folder = VENVS / name
    python = folder / "bin" / "python"
    marker = folder / (".pins-" + "-".join(pins).replace("=", "").replace("/", ""))
    if not marker.exists():
        print(f"installing {' '.join(pins)} into {folder}", file=sys.stderr)
        try:
            subprocess.run(
                [sys.executable, "-m", "venv", "--clear", str(folder)], check=True
            )
            subprocess.run(
                [str(python), "-m", "pip", "install", "--quiet",
                 "--disable-pip-version-check", *pins],
                check=True,
            )  # fmt: skip
        except subprocess.CalledProcessError as exc:
            print(f"could not install {name}: {exc}; skipped", file=sys.stderr)
            return None
        marker.touch()
    return python


def peer_run(python: Path, name: str, url: str, per_producer: int) -> dict[str, float]:
    """One run of a peer's harness on ``url``; its JSON figures."""
    script = HERE / "peers" / f"pg_{name}.py"
    done = subprocess.run(
        [str(python), str(script), url, str(SUBMITTERS), str(per_producer),
         str(WORKERS), str(POOL)],
        capture_output=True, text=True, timeout=PEER_TIMEOUT, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed: {done.stderr[-2000:]}")
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def counters(url: str) -> tuple[int, int]:
    """Commits in the database at ``url`` and WAL bytes of the whole server so far.

    Read from a new connection after the run's connections closed (a backend
    flushes its statistics when it exits; half a second lets them land).
    """
    time.sleep(0.5)
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT (SELECT xact_commit FROM pg_stat_database"
            " WHERE datname = current_database()),"
            " (SELECT wal_bytes FROM pg_stat_wal)"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def measure(server: str, sizes: Sizes) -> str:
    """Ours and each peer, rotating order, fresh databases; a Markdown table."""
    pythons = {name: peer_python(name) for name in PEERS}
    systems = ["mcp-tasks", *(n for n, p in pythons.items() if p is not None)]
    rates: dict[str, list[float]] = {name: [] for name in systems}
    cpu: dict[str, list[float]] = {name: [] for name in systems}
    commits: dict[str, list[float]] = {name: [] for name in systems}
    wal: dict[str, list[float]] = {name: [] for name in systems}
    total = SUBMITTERS * sizes.per_producer
    for trial in range(sizes.trials):
        order = systems[trial % len(systems) :] + systems[: trial % len(systems)]
        print(f"trial {trial + 1}/{sizes.trials}: {', '.join(order)}", file=sys.stderr)
        for name in order:
            with fresh_database(server) as url:
                before = counters(url)
                if name == "mcp-tasks":
                    run = await engine_run(url, sizes.per_producer)
                    rates[name].append(run.rate)
                    cpu[name].append(run.cpu_ms)
                else:
                    python = pythons[name]
                    assert python is not None
                    figures = await anyio.to_thread.run_sync(
                        peer_run, python, name, url, sizes.per_producer
                    )
                    rates[name].append(figures["rate"])
                    cpu[name].append(figures["cpu_ms"])
                after = counters(url)
                commits[name].append((after[0] - before[0]) / total)
                wal[name].append((after[1] - before[1]) / total)
    lines = [
        f"{SUBMITTERS} producers x {sizes.per_producer} no-op jobs, "
        f"{WORKERS} workers, pool {POOL}, {sizes.trials} trial(s)",
        "",
        "| system | jobs/s per trial | median | client CPU ms/job (median) "
        "| commits/job | WAL bytes/job "
        "| mcp-tasks ÷ it per trial | median ratio (target ≥ 1.0) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ours = rates["mcp-tasks"]
    for name in systems:
        per_trial = ", ".join(f"{r:,.0f}" for r in rates[name])
        ratios = [o / r for o, r in zip(ours, rates[name], strict=True)]
        ratio_cells = (
            "—", "—"
        ) if name == "mcp-tasks" else (
            ", ".join(f"{x:.2f}" for x in ratios), f"{statistics.median(ratios):.2f}"
        )  # fmt: skip
        lines.append(
            f"| {name} | {per_trial} | {statistics.median(rates[name]):,.0f} "
            f"| {statistics.median(cpu[name]):.2f} "
            f"| {statistics.median(commits[name]):.2f} "
            f"| {statistics.median(wal[name]):,.0f} "
            f"| {ratio_cells[0]} | {ratio_cells[1]} |"
        )
    missing = [n for n, p in pythons.items() if p is None]
    if missing:
        lines += ["", f"unavailable (could not install): {', '.join(missing)}"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure against a throwaway cluster (or ``--url``); print a table."""
    parser = argparse.ArgumentParser(
        prog="benchmarks.fig_pg_peers", description=__doc__
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one trial")
    parser.add_argument("--trials", type=int, help="override the number of trials")
    parser.add_argument(
        "--url", help="an existing server (default: a throwaway cluster)"
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.trials:
        sizes = Sizes(sizes.per_producer, args.trials)
    if args.url:
        print(anyio.run(measure, args.url, sizes))
        return 0
    with running_cluster() as cluster:
        print(anyio.run(measure, cluster.url(), sizes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
