"""Keeping one process's engine alive: its loops, and a graceful way out.

`serve` starts following the change feed, recovers tasks whose runs are gone
(a process of this machine that died, or a lease that ran out), and runs the
dispatcher, the timers, the heartbeat, the progress writer and the sweeper
until its block exits. On the way out it drains: nothing new is claimed,
running tasks get ``shutdown_grace_seconds`` to finish or reach a step
boundary, and the rest are stopped and handed back by their tool's recovery
policy, so another process (or the next start) picks them up at once.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
from anyio.abc import TaskGroup

from mcp_tasks._exceptions import JournalError
from mcp_tasks.engine import _leases
from mcp_tasks.engine._dispatch import Dispatcher
from mcp_tasks.engine._engine import Engine
from mcp_tasks.engine._feed import Feed
from mcp_tasks.engine._holder import holding
from mcp_tasks.engine._runner import Runner
from mcp_tasks.engine._runs import Run, Runs, StopReason
from mcp_tasks.engine._timers import Timers
from mcp_tasks.journal import Change, ChangeKind, Claimed

logger = logging.getLogger("mcp_tasks.engine")

#: How long a failed service loop waits before it starts again.
RESTART_SECONDS = 1.0


@dataclass(eq=False)
class Parts:
    """The engine's moving parts in one process."""

    engine: Engine
    feed: Feed
    runs: Runs
    dispatcher: Dispatcher
    runner: Runner
    timers: Timers


class _StopCancelled:
    """Feed listener: a task this process runs was cancelled (or ended) elsewhere."""

    def __init__(self, runs: Runs) -> None:
        self._runs = runs

    def task_changed(self, change: Change) -> None:
        if change.kind is not ChangeKind.STATUS or not change.status.is_terminal:
            return
        run = self._runs.get(change.task_id)
        if run is not None and not run.stopped:
            run.stop(StopReason.CANCELLED)


@asynccontextmanager
async def serve(parts: Parts) -> AsyncGenerator[None]:
    """Run every loop of the engine until the block exits, then drain."""
    with holding(parts.engine.holder):
        async with _serving(parts):
            yield


@asynccontextmanager
async def _serving(parts: Parts) -> AsyncGenerator[None]:
    engine, feed = parts.engine, parts.feed
    settings = engine.settings
    feed.subscribe(parts.dispatcher)
    feed.subscribe(parts.timers)
    feed.subscribe(_StopCancelled(parts.runs))
    engine.journal.on_commit(feed.nudge)
    await engine.journal.sync_limits(
        settings.client_concurrency,
        settings.client_backlog,
        {k: (v.concurrency, v.backlog) for k, v in settings.client_overrides.items()},
    )
    recovered = await _leases.recover_gone(engine, parts.runs)
    if recovered:
        logger.info("recovered %d tasks whose runs were gone", recovered)
    async with anyio.create_task_group() as service:
        await service.start(feed.run)
        async with anyio.create_task_group() as work:

            def start(claimed: Claimed) -> None:
                run = Run(claimed, engine.now())
                run.tool_returned = parts.dispatcher.tool_returned
                work.start_soon(_run_and_release, parts, run)

            service.start_soon(
                _supervised, "dispatch", lambda: parts.dispatcher.run(start)
            )
            service.start_soon(_supervised, "timers", parts.timers.run)
            service.start_soon(_supervised, "progress writer", engine.reporter.run)
            service.start_soon(_every, settings.lease_seconds / 3, "heartbeat",
                               lambda: _leases.heartbeat(engine, parts.runs))  # fmt: skip
            service.start_soon(_every, settings.sweep_interval_seconds, "sweep",
                               engine.purge)  # fmt: skip
            try:
                yield
            finally:
                with anyio.CancelScope(shield=True):
                    await drain(parts, work)
        service.cancel_scope.cancel()


async def _run_and_release(parts: Parts, run: Run) -> None:
    try:
        await parts.runner.run(run)
    finally:
        parts.dispatcher.release(run)


async def drain(parts: Parts, work: TaskGroup) -> None:
    """Shut down gracefully: claim nothing, give runs time, hand the rest back."""
    engine, runs = parts.engine, parts.runs
    engine.draining = True
    parts.dispatcher.stop()
    if len(runs):
        grace = engine.settings.shutdown_grace_seconds
        logger.info(
            "shutting down: waiting up to %.1f s for %d running tasks (%s)",
            grace,
            len(runs),
            ", ".join(sorted(run.task_id for run in runs.all())[:10]),
        )
        with anyio.move_on_after(grace):
            await runs.wait_idle()
    left = runs.all()
    if left:
        logger.info("shutting down: stopping %d tasks and handing them back", len(left))
    for run in left:
        run.stop(StopReason.SHUTDOWN)
    # The runs hand their tasks back as they end (shielded writes).
    with anyio.move_on_after(max(5.0, engine.settings.shutdown_grace_seconds)):
        await runs.wait_idle()
    work.cancel_scope.cancel()


async def _supervised(what: str, loop: Callable[[], Awaitable[object]]) -> None:
    """Run a service loop; if it fails, log it and start it again.

    One bad moment (the journal briefly unwritable, a bug in a rare path) must
    not take the whole engine down with it.
    """
    while True:
        try:
            await loop()
            return
        except Exception:
            logger.exception("%s loop failed; restarting it", what)
            await anyio.sleep(RESTART_SECONDS)


async def _every(
    seconds: float, what: str, job: Callable[[], Awaitable[object]]
) -> None:
    failing = False
    while True:
        await anyio.sleep(seconds)
        try:
            await job()
        except JournalError as exc:
            if not failing:
                logger.error("%s failed: %s", what, exc)
            failing = True
            continue
        except Exception:
            logger.exception("%s failed", what)
            continue
        failing = False
