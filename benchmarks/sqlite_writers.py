"""Several processes writing one SQLite journal: with and without the turnstile.

Each of N processes opens the journal and submits tasks one at a time (every
submit its own commit, the most contended case) for a few seconds. Modes
alternate trial by trial: *with* the writer turnstile (the default, spec-notes
C40) and *without* it (SQLite's own sleep-and-retry on a busy lock). Printed:
total commits/s per mode and N (median over trials), and the range of the
slowest process's count, which shows starvation.

    .venv/bin/python -m benchmarks.sqlite_writers            # 2 and 4 processes, 6 trials
    .venv/bin/python -m benchmarks.sqlite_writers --quick    # CI smoke run
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

from mcp_tasks._model import OwnerId, TaskId
from mcp_tasks.journal import NewTask
from mcp_tasks.journal.sqlite import SqliteJournal, _journal

_ids = itertools.count()


def _new_task() -> NewTask:
    return NewTask(
        task_id=TaskId(f"bench-{os.getpid()}-{next(_ids)}"),
        owner_id=OwnerId(f"client-{os.getpid()}"),
        tool_name="noop",
        arguments={},
        created_at=time.time(),
        ttl_seconds=3600.0,
        poll_interval_seconds=1.0,
        concurrency=4,
        backlog=1_000_000,
        status_message=None,
        listed=True,
        request_meta={},
    )


async def _write(path: Path, seconds: float) -> int:
    async with SqliteJournal.open(path) as journal:
        count = 0
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            await journal.submit(_new_task())
            count += 1
        return count


def _worker(path: Path, seconds: float, turnstile: bool) -> None:
    if not turnstile:
        # Measure SQLite's own busy handling: the journal opens without one.
        _journal._turnstile_for = lambda path: None  # pyright: ignore[reportPrivateUsage]
    print(anyio.run(_write, path, seconds))


def _trial(folder: Path, processes: int, seconds: float, turnstile: bool) -> list[int]:
    path = folder / f"writers-{processes}-{turnstile}-{time.monotonic_ns()}.db"
    anyio.run(_write, path, 0.0)  # create and migrate once, outside the timing
    argv = [sys.executable, "-m", "benchmarks.sqlite_writers", "--worker", str(path)]
    argv += ["--seconds", str(seconds)] + ([] if turnstile else ["--no-turnstile"])
    children = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    counts: list[int] = []
    for child in children:
        out, _ = child.communicate(timeout=seconds + 60)
        if child.returncode != 0:
            raise SystemExit(f"a writer failed with exit code {child.returncode}")
        counts.append(int(out.strip()))
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--no-turnstile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        _worker(args.worker, args.seconds, not args.no_turnstile)
        return
    trials, seconds = (1, 0.5) if args.quick else (6, args.seconds)
    print("| processes | mode | commits/s (median) | slowest process, range |")
    print("|---|---|---:|---|")
    with tempfile.TemporaryDirectory(prefix="mcp-tasks-writers-") as folder:
        for processes in (2, 4):
            results: dict[bool, list[list[int]]] = {True: [], False: []}
            for _ in range(trials):
                for turnstile in (False, True):
                    counts = _trial(Path(folder), processes, seconds, turnstile)
                    results[turnstile].append(counts)
            for turnstile in (False, True):
                totals = [sum(c) / seconds for c in results[turnstile]]
                slowest = [min(c) for c in results[turnstile]]
                mode = "turnstile" if turnstile else "SQLite busy retry"
                print(
                    f"| {processes} | {mode} | {statistics.median(totals):,.0f} | "
                    f"{min(slowest):,}–{max(slowest):,} |"
                )


if __name__ == "__main__":
    main()
