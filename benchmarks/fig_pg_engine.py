"""The engine on PostgreSQL against a raw ceiling: submit + claim + complete of no-op tasks.

**Engine.** 64 submitters (each its own client id) call `TaskRuntime.submit`
back to back while the engine's 8 workers claim and complete the no-op tasks;
the figure is tasks/s from the first submit until the last run's end is
committed (counted as the journal returns it, as the peers' harnesses count
their jobs; the journal's counts are checked afterwards, off the clock).

**Raw ceiling.** The same SQL statements from a plain psycopg loop with no
engine: the same pool size, 64 submitter coroutines calling ``submit_task``,
and a dispatcher that claims up to its free workers' worth with ``claim``
(the engine's batching: claims are counted in both runs and reported), each
claimed task finished by the journal's ``finish`` statement (``finish_task``,
which also records the change), submits and finishes grouped as the journal
groups them (its `GroupCommit`: writes that arrive during a commit share the
next transaction, one statement), and a worker freed while its task's end
commits, as the engine frees it. No asyncio task per run beyond what that needs, no feed
follower, no heartbeat, no engine book-keeping.

Both run on fresh databases of one server, alternately, ``trials`` times; the
ratio is the median of each trial's engine ÷ raw. Run::

    .venv/bin/python -m benchmarks.fig_pg_engine [--quick] [--url URL]
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import time
from collections.abc import Generator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from mcp_tasks import OwnerId, Requester, Settings, TaskRuntime
from mcp_tasks._model import Task, TaskStatus, new_task_id
from mcp_tasks.journal import Claimed, Journal, Lease, open_journal
from mcp_tasks.journal._records import NewTask
from mcp_tasks.journal._sql import queries
from mcp_tasks.journal.postgres._group_commit import GroupCommit
from mcp_tasks.journal.postgres._journal import (
    DEFAULT_POOL_SIZE,
    finish_group,
    submit_group,
)
from mcp_tasks.journal.postgres._schema import PACKAGE
from mcp_tasks.journal.sqlite import _rows

from .fig_engine import bench_specs
from .pg_cluster import running_cluster, with_database

SUBMITTERS = 64
WORKERS = 8
#: Bound on waiting for a run to drain.
DRAIN_TIMEOUT = 300.0

_SQL = queries(PACKAGE)


@dataclass(frozen=True)
class Sizes:
    """How much work each trial does."""

    per_submitter: int
    trials: int


FULL = Sizes(per_submitter=40, trials=3)
QUICK = Sizes(per_submitter=3, trials=1)


@dataclass
class ClaimCounter:
    """Counts claim calls and the tasks they returned."""

    calls: int = 0
    tasks: int = 0

    @property
    def mean_batch(self) -> float:
        return self.tasks / self.calls if self.calls else float("nan")


class CountingJournal:
    """A journal that counts its non-empty claims and its committed run ends
    (everything else passes through)."""

    def __init__(self, inner: Journal, counter: ClaimCounter, total: int) -> None:
        self._inner = inner
        self._counter = counter
        self._total = total
        self._finished = 0
        #: Set once ``total`` runs ended: their ends are committed.
        self.all_finished = anyio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def claim(
        self, holder: str, lease_expires_at: float, limit: int, at: float
    ) -> list[Claimed]:
        claimed = await self._inner.claim(holder, lease_expires_at, limit, at)
        if claimed:
            self._counter.calls += 1
            self._counter.tasks += len(claimed)
        return claimed

    async def finish(self, lease: Lease, *args: Any, **kwargs: Any) -> Task | None:
        ended = await self._inner.finish(lease, *args, **kwargs)
        if ended is not None:
            self._finished += 1
            if self._finished == self._total:
                self.all_finished.set()
        return ended


def _settings() -> Settings:
    return Settings(
        workers=WORKERS,
        client_concurrency=WORKERS,
        client_backlog=10_000_000,
        shutdown_grace_seconds=0.2,
        sweep_interval_seconds=3600,
    )


@dataclass(frozen=True)
class RunFigures:
    """One run: tasks/s, mean claim batch, and this process's CPU ms per task."""

    rate: float
    batch: float
    cpu_ms: float


async def engine_run(url: str, per_submitter: int) -> RunFigures:
    """The engine on a fresh database at ``url``."""
    counter = ClaimCounter()
    total = SUBMITTERS * per_submitter
    async with open_journal(url) as inner:
        journal = CountingJournal(inner, counter, total)
        runtime = TaskRuntime(
            journal,  # type: ignore[arg-type]  # a pass-through proxy
            _settings(),
            bench_specs(),
            cursor_secret=await inner.secret("cursor"),
        )
        async with runtime.running():

            async def submitter(index: int) -> None:
                requester = Requester(OwnerId(f"submitter-{index}"))
                for _ in range(per_submitter):
                    await runtime.submit(requester, "noop", {})

            start = time.perf_counter()
            cpu = time.process_time()
            async with anyio.create_task_group() as tg:
                for index in range(SUBMITTERS):
                    tg.start_soon(submitter, index)
            # As the peers' harnesses do: wait for the last run's end (here
            # its commit), then check the journal agrees, outside the clock.
            with anyio.fail_after(DRAIN_TIMEOUT):
                await journal.all_finished.wait()
            elapsed = time.perf_counter() - start
            cpu = time.process_time() - cpu
            unfinished = [load for load in await runtime.load() if load.unfinished]
            if unfinished:
                raise RuntimeError(f"runs ended but tasks are unfinished: {unfinished}")
    return RunFigures(total / elapsed, counter.mean_batch, cpu * 1000 / total)


def _new_task(index: int) -> NewTask:
    return NewTask(
        task_id=new_task_id(),
        owner_id=OwnerId(f"submitter-{index}"),
        tool_name="noop",
        arguments={},
        created_at=time.time(),
        ttl_seconds=86_400.0,
        poll_interval_seconds=1.0,
        concurrency=WORKERS,
        backlog=10_000_000,
    )


def _ignore(seconds: float, writes: int) -> None:
    """No commit observers in the raw loop."""


class RawLoop:
    """The journal's statements from a plain psycopg loop (see the module docstring)."""

    HOLDER = "raw/1/x"
    OUTCOME = '{"result":{"content":[{"type":"text","text":"ok"}]}}'

    def __init__(self, pool: AsyncConnectionPool[Any], total: int) -> None:
        self.pool = pool
        self.total = total
        self.free = anyio.Semaphore(WORKERS)
        #: Runs whose worker was freed while their end commits.
        self.recording = 0
        self.done = 0
        self.finished = anyio.Event()
        self.counter = ClaimCounter()
        # The journal's batching of submits and run ends (its group commit),
        # over plain statements: the same transactions the journal sends.
        self.submits = GroupCommit(self.submit_group, self.submit_one, _ignore)
        self.finishes = GroupCommit(self.finish_group, self.finish_one, _ignore)

    async def submit_one(self, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(_SQL["submit_task"], params)
            return await cursor.fetchall()

    async def submit_group(
        self, calls: Sequence[Sequence[Any]]
    ) -> list[list[tuple[Any, ...]]]:
        async with self.pool.connection() as conn:
            return await submit_group(conn, calls)

    async def finish_one(self, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(_SQL["finish"], params)
            return await cursor.fetchall()

    async def finish_group(
        self, calls: Sequence[Sequence[Any]]
    ) -> list[list[tuple[Any, ...]]]:
        async with self.pool.connection() as conn:
            return await finish_group(conn, calls)

    async def submitter(self, index: int, count: int) -> None:
        for _ in range(count):
            task = _new_task(index)
            params = (*_rows.new_task_row(task), task.concurrency, task.backlog)
            await self.submits.call(params)

    async def finish(self, tid: str, attempt: int) -> None:
        now = time.time()
        # As the engine does: the worker is free while the end commits, for
        # at most WORKERS runs at a time (`Dispatcher.tool_returned`).
        early = self.recording < WORKERS
        if early:
            self.recording += 1
            self.free.release()
        await self.finishes.call(
            (TaskStatus.COMPLETED.value, None, now, self.OUTCOME, None, now + 60,
             tid, self.HOLDER, attempt, "completed"),
        )  # fmt: skip
        if early:
            self.recording -= 1
        else:
            self.free.release()
        self.done += 1
        if self.done == self.total:
            self.finished.set()

    async def take_slots(self) -> int:
        """Wait for one free worker, then take every other free one (the batch)."""
        await self.free.acquire()
        slots = 1
        while self.free.value and slots < WORKERS:
            self.free.acquire_nowait()
            slots += 1
        return slots

    async def dispatcher(self) -> None:
        async with anyio.create_task_group() as runs:
            while self.done < self.total:
                slots = await self.take_slots()
                now = time.time()
                async with self.pool.connection() as conn:
                    cursor = await conn.execute(
                        _SQL["claim"], (self.HOLDER, now + 30, slots, now)
                    )
                    rows = await cursor.fetchall()
                for _ in range(slots - len(rows)):
                    self.free.release()
                if not rows:
                    await anyio.sleep(0.001)  # nothing queued yet
                    continue
                self.counter.calls += 1
                self.counter.tasks += len(rows)
                for tid, *_, attempt, _retries, _created in rows:
                    runs.start_soon(self.finish, tid, attempt)
            runs.cancel_scope.cancel()


async def raw_run(url: str, per_submitter: int) -> RunFigures:
    """The journal's statements from a plain loop on a fresh database at ``url``."""
    async with open_journal(url):
        pass  # the schema, by the journal's own migrations
    async with AsyncConnectionPool[psycopg.AsyncConnection[tuple[Any, ...]]](
        url, min_size=DEFAULT_POOL_SIZE, max_size=DEFAULT_POOL_SIZE,
        kwargs={"autocommit": True}, open=False,
    ) as pool:  # fmt: skip
        await pool.wait()
        loop = RawLoop(pool, SUBMITTERS * per_submitter)
        start = time.perf_counter()
        cpu = time.process_time()
        async with anyio.create_task_group() as tg:
            tg.start_soon(loop.submits.run)
            tg.start_soon(loop.finishes.run)
            tg.start_soon(loop.dispatcher)
            for index in range(SUBMITTERS):
                tg.start_soon(loop.submitter, index, per_submitter)
            with anyio.fail_after(DRAIN_TIMEOUT):
                await loop.finished.wait()
            tg.cancel_scope.cancel()  # the flushers
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu
    return RunFigures(
        loop.total / elapsed, loop.counter.mean_batch, cpu * 1000 / loop.total
    )


@contextmanager
def fresh_database(server: str) -> Generator[str]:
    """A new empty database on ``server``, dropped afterwards."""
    name = f"bench_{secrets.token_hex(6)}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_database(server, name)
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(name)
                )
            )


async def measure(server: str, sizes: Sizes) -> str:
    """Engine and raw runs, alternately, on fresh databases; a Markdown table."""
    runs: list[tuple[RunFigures, RunFigures]] = []
    for trial in range(sizes.trials):
        print(f"trial {trial + 1}/{sizes.trials}", file=sys.stderr)
        with fresh_database(server) as url:
            engine = await engine_run(url, sizes.per_submitter)
        with fresh_database(server) as url:
            raw = await raw_run(url, sizes.per_submitter)
        runs.append((engine, raw))
    ratio = statistics.median(e.rate / r.rate for e, r in runs)
    lines = [
        f"{SUBMITTERS} submitters x {sizes.per_submitter} no-op tasks, "
        f"{WORKERS} workers, pool {DEFAULT_POOL_SIZE}",
        "",
        "| trial | engine tasks/s | raw tasks/s | engine ÷ raw "
        "| claim batch (engine / raw) | client CPU ms/task (engine / raw) |",
        "|---|---|---|---|---|---|",
    ]
    for n, (e, r) in enumerate(runs, 1):
        lines.append(
            f"| {n} | {e.rate:,.0f} | {r.rate:,.0f} | {e.rate / r.rate:.2f} "
            f"| {e.batch:.2f} / {r.batch:.2f} | {e.cpu_ms:.2f} / {r.cpu_ms:.2f} |"
        )
    lines += ["", f"median engine ÷ raw: {ratio:.2f} (target ≥ 0.5)"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure against a throwaway cluster (or ``--url``); print a table."""
    parser = argparse.ArgumentParser(
        prog="benchmarks.fig_pg_engine", description=__doc__
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one trial")
    parser.add_argument(
        "--url", help="an existing server (default: a throwaway cluster)"
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.url:
        print(anyio.run(measure, args.url, sizes))
        return 0
    with running_cluster() as cluster:
        print(anyio.run(measure, cluster.url(), sizes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
