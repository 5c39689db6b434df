"""Keeping the engine alive: start-up recovery, the service loops, leases, the sweep.

`serve` rebuilds the in-memory state from the journal (`recover`), then runs
the dispatch loop, the timers, the lease heartbeat and the retention sweeper
until its block exits, and drains running work on the way out. A task whose
worker is gone, found at start-up or by an expired lease, is recovered by its
tool's policy (`recover_orphan`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio

from mcp_tasks._dispatch import Dispatcher
from mcp_tasks._execution import INTERNAL_ERROR
from mcp_tasks._model import Outcome, OwnerId, TaskId, TaskStatus
from mcp_tasks._worker import LEASE_SECONDS, Worker
from mcp_tasks.journal import UnfinishedTask

logger = logging.getLogger("mcp_tasks.runtime")

#: How long a tool's ``on_recover`` hook may take before recovery goes on.
RECOVER_HOOK_SECONDS = 10.0


@asynccontextmanager
async def serve(dispatcher: Dispatcher, worker: Worker) -> AsyncGenerator[None]:
    """Run the dispatcher, timers, heartbeat and sweeper until the block exits."""
    await recover(dispatcher)
    async with anyio.create_task_group() as service:
        async with anyio.create_task_group() as work:

            def start(owner: OwnerId, task_id: TaskId) -> None:
                work.start_soon(worker.run, owner, task_id)

            service.start_soon(dispatcher.dispatch, start)
            service.start_soon(dispatcher.run_timers)
            service.start_soon(_heartbeat_loop, dispatcher)
            service.start_soon(_sweep_loop, dispatcher)
            try:
                yield
            finally:
                with anyio.CancelScope(shield=True):
                    await worker.drain(work)
        service.cancel_scope.cancel()


async def recover(dispatcher: Dispatcher) -> None:
    """Rebuild queues, timers and backlog counts from the journal.

    A task that was running when the process died is recovered by its
    tool's policy: ``resume`` and ``restart`` run it again (``restart``
    first forgets its recorded steps); ``fail`` ends it ``failed``.
    The journal's file lock guarantees this process is the only one, so
    every ``running`` row found here lost its worker. (With a shared
    database, only rows whose lease expired would qualify.)
    """
    now = dispatcher.now()
    for task in await dispatcher.journal.unfinished():
        dispatcher.hold_backlog(task.owner_id)
        if task.status is not TaskStatus.WORKING:
            continue  # input_required: waits for an answer, holds nothing
        if task.phase == "running":
            await recover_orphan(dispatcher, task, now)
        elif task.phase == "parked":
            dispatcher.timers.add(
                task.not_before or now, "wake", task.task_id, task.owner_id
            )
        else:
            dispatcher.scheduler.push(task.owner_id, task.task_id)
    for task_id, key, expires_at in await dispatcher.journal.open_input_deadlines():
        dispatcher.timers.add(expires_at, "question", task_id, OwnerId(""), key)


async def recover_orphan(
    dispatcher: Dispatcher, task: UnfinishedTask, now: float
) -> None:
    """Run again, restart or fail a task whose worker is gone, by its tool's policy."""
    spec = dispatcher.tools.get(task.tool_name)
    if spec is not None and spec.on_recover is not None:
        await _run_recover_hook(dispatcher, spec.on_recover, task)
    policy = spec.recovery if spec is not None else "resume"
    if policy == "fail":
        message = (
            "The server restarted while this task was running, and tool "
            f"{task.tool_name!r} does not resume interrupted work"
        )
        await dispatcher.finish(
            task.task_id,
            task.owner_id,
            TaskStatus.FAILED,
            "server restarted",
            message=message,
            outcome=Outcome(error={"code": INTERNAL_ERROR, "message": message}),
        )
        return
    if policy == "restart":
        await dispatcher.journal.forget_steps(task.task_id)
    await dispatcher.journal.requeue(
        task.task_id,
        "Resuming after a server restart",
        now,
        reason="server restarted",
    )
    dispatcher.scheduler.push(task.owner_id, task.task_id)


async def _run_recover_hook(
    dispatcher: Dispatcher,
    hook: Callable[[str, Mapping[str, Any]], Awaitable[None]],
    task: UnfinishedTask,
) -> None:
    # The tool cleans up what the lost run left behind (run_command: its
    # process group) before the task is failed or run again. A hook that fails
    # or hangs must not keep the task from being recovered.
    try:
        with anyio.move_on_after(RECOVER_HOOK_SECONDS) as scope:
            await hook(task.task_id, await dispatcher.journal.steps(task.task_id))
        if scope.cancelled_caught:
            logger.warning("task %s: recovery hook timed out", task.task_id)
    except Exception:
        logger.exception("task %s: recovery hook failed", task.task_id)


async def heartbeat(dispatcher: Dispatcher) -> None:
    """Renew this process's leases, then recover tasks whose lease ran out.

    Live work always has its lease renewed here first, so an expired lease
    means the worker is gone (a crashed process sharing the database, or a
    run lost to a bug); such a task is recovered by its tool's policy
    rather than left ``working`` forever.
    """
    now = dispatcher.now()
    if dispatcher.running:
        await dispatcher.journal.renew_leases(dispatcher.holder, now + LEASE_SECONDS)
    for task in await dispatcher.journal.expired_leases(now):
        if task.task_id not in dispatcher.running:
            logger.warning("task %s lost its worker; recovering it", task.task_id)
            await recover_orphan(dispatcher, task, now)
            dispatcher.wake()


async def sweep(dispatcher: Dispatcher) -> list[TaskId]:
    """Purge terminal tasks whose retention has ended; return their ids."""
    purged = await dispatcher.journal.purge_expired(dispatcher.now())
    if purged:
        logger.info("purged %d expired tasks", len(purged))
    return purged


async def _heartbeat_loop(dispatcher: Dispatcher) -> None:
    while True:
        await anyio.sleep(LEASE_SECONDS / 3)
        try:
            await heartbeat(dispatcher)
        except Exception:
            logger.exception("heartbeat failed")


async def _sweep_loop(dispatcher: Dispatcher) -> None:
    while True:
        await anyio.sleep(dispatcher.settings.sweep_interval_seconds)
        try:
            await sweep(dispatcher)
        except Exception:
            logger.exception("sweep failed")
