"""`Worker`: runs the tasks the dispatcher starts, one run at a time each.

A run claims its task (taking a lease), waits for declared budgets, runs the
tool body through `_execution.execute` in its own cancel scope, and records
how it ended: completed, failed, retried later, or suspended (the body
recorded why and will run again). Nothing from one run may reach the shared
task group. The worker also counts its active runs, so shutdown can drain
them gracefully.
"""

from __future__ import annotations

import logging
import random
from typing import Final, cast, final

import anyio
from anyio.abc import TaskGroup

from mcp_tasks._context import RunContext, TaskSuspended
from mcp_tasks._dispatch import Dispatcher, Running, budget_message
from mcp_tasks._execution import INTERNAL_ERROR, Retry, execute
from mcp_tasks._model import Outcome, OwnerId, TaskId, TaskStatus
from mcp_tasks._toolapi import ToolSpec
from mcp_tasks.journal import RunRecord

logger = logging.getLogger("mcp_tasks.runtime")

#: A worker's lease; renewed every third of it while the task runs.
LEASE_SECONDS: Final = 30.0


def backoff_seconds(spec: ToolSpec, retries: int) -> float:
    """Exponential backoff with full jitter in its upper half, capped."""
    ceiling = min(spec.retry_max_seconds, spec.retry_base_seconds * 2.0**retries)
    return ceiling * random.uniform(0.5, 1.0)


@final
class Worker:
    """Runs started tasks and records their outcome; drains them at shutdown."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher
        self._idle = anyio.Event()
        self._active_runs = 0

    async def run(self, owner: OwnerId, task_id: TaskId) -> None:
        """Run one task the dispatcher started, then release its worker slot."""
        if self._active_runs == 0:
            self._idle = anyio.Event()
        self._active_runs += 1
        try:
            await self._claim_and_execute(owner, task_id)
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException as exc:
            if not _is_task_failure(exc):
                raise  # cancellation or the process going away: not this task's fault
            # Nothing from one task may reach the shared task group: record the
            # failure on the task (if the journal still works) and carry on.
            logger.exception("running task %s failed inside the engine", task_id)
            with anyio.CancelScope(shield=True):
                await self._fail_quietly(owner, task_id)
        finally:
            self._dispatcher.release(owner)
            self._active_runs -= 1
            if self._active_runs == 0:
                self._idle.set()

    async def drain(self, work: TaskGroup) -> None:
        """Shut down gracefully: start nothing new, give running tasks time, stop the rest."""
        # Start nothing new; let running tasks finish or reach a step boundary
        # within the grace period; then stop the rest. What is still running is
        # left as it is in the journal (phase running) and marked, so the next
        # start recovers it by the tool's policy.
        dispatcher = self._dispatcher
        dispatcher.start_draining()
        if self._active_runs:
            with anyio.move_on_after(dispatcher.settings.shutdown_grace_seconds):
                await self._idle.wait()
        interrupted = list(dispatcher.running)
        work.cancel_scope.cancel()
        now = dispatcher.now()
        for task_id in interrupted:
            await dispatcher.journal.set_status_message(
                task_id,
                "Interrupted by server shutdown; will recover at restart",
                now,
                reason="interrupted by shutdown",
            )

    async def _fail_quietly(self, owner: OwnerId, task_id: TaskId) -> None:
        message = "Internal error while running the task; see the server log"
        try:
            await self._dispatcher.finish(
                task_id, owner, TaskStatus.FAILED, "engine error",
                message=message, outcome=Outcome(error={"code": INTERNAL_ERROR, "message": message}),
            )  # fmt: skip
        except Exception:
            logger.exception("could not record the failure of task %s", task_id)

    async def _claim_and_execute(self, owner: OwnerId, task_id: TaskId) -> None:
        dispatcher = self._dispatcher
        record = await dispatcher.journal.claim(
            task_id, dispatcher.holder, dispatcher.now() + LEASE_SECONDS
        )
        if record is None:
            return  # cancelled (or finished) while it waited in the queue
        spec = dispatcher.tools.get(record.tool_name)
        if spec is None:
            message = f"Tool {record.tool_name!r} is no longer served"
            error = {"code": -32602, "message": f"Unknown tool: {record.tool_name!r}"}
            await dispatcher.finish(
                task_id, owner, TaskStatus.FAILED, "tool not served",
                message=message, outcome=Outcome(error=error),
            )  # fmt: skip
            return
        if await self._park_for_budgets(spec, record):
            return
        await self._execute(spec, record)

    async def _park_for_budgets(self, spec: ToolSpec, record: RunRecord) -> bool:
        # Proactive: a tool that declares the budgets it spends does not start
        # until they have room, instead of starting and meeting a 429.
        dispatcher = self._dispatcher
        now = dispatcher.now()
        waits = [
            (name, dispatcher.budget(name).available_in(now, requests))
            for name, requests in spec.budgets.items()
        ]
        name, wait = max(waits, key=lambda w: w[1], default=("", 0.0))
        if wait <= 0:
            return False
        await dispatcher.park(
            record.task_id, record.owner_id, now + wait, budget_message(name, wait)
        )
        return True

    async def _execute(self, spec: ToolSpec, record: RunRecord) -> None:
        dispatcher = self._dispatcher
        task_id, owner = record.task_id, record.owner_id
        ctx = RunContext(
            dispatcher,
            task_id,
            owner,
            dispatcher.settings.tool_config.get(spec.name, {}),
            record.request_meta,
            attempt=record.attempts,
        )
        if record.attempts > 1 or record.retries > 0:
            # A re-run: replay what earlier runs recorded. A first run has nothing.
            ctx.recorded_steps = await dispatcher.journal.steps(task_id)
            ctx.recorded_questions = {
                r.key: r for r in await dispatcher.journal.input_requests(task_id)
            }
        running = Running(owner, anyio.CancelScope(), record.request_meta)
        dispatcher.running[task_id] = running
        try:
            verdict: Outcome | Retry | None = None
            with running.scope:
                try:
                    verdict = await execute(
                        spec, ctx, record.arguments, dispatcher.thread_limiter
                    )
                except TaskSuspended:
                    return
            if verdict is None or running.cancel_requested:
                return  # `cancel` already recorded the task as cancelled
            with anyio.CancelScope(shield=True):
                if isinstance(verdict, Retry):
                    await self._retry(spec, record, verdict)
                else:
                    await self._complete(task_id, owner, verdict)
        finally:
            del dispatcher.running[task_id]

    async def _complete(
        self, task_id: TaskId, owner: OwnerId, outcome: Outcome
    ) -> None:
        status, message = TaskStatus.COMPLETED, None
        if outcome.error is not None:
            status, message = TaskStatus.FAILED, str(outcome.error.get("message"))
        await self._dispatcher.finish(
            task_id, owner, status, "tool returned", message=message, outcome=outcome
        )

    async def _retry(self, spec: ToolSpec, record: RunRecord, retry: Retry) -> None:
        attempt = record.retries + 1
        if attempt >= spec.max_attempts:
            message = f"Gave up after {attempt} attempts: {retry.reason}"
            error = {"code": INTERNAL_ERROR, "message": message}
            await self._dispatcher.finish(
                record.task_id, record.owner_id, TaskStatus.FAILED, "retries exhausted",
                message=message, outcome=Outcome(error=error),
            )  # fmt: skip
            return
        delay = retry.after_seconds
        if delay is None:
            delay = backoff_seconds(spec, record.retries)
        message = (
            f"Retrying in {delay:.1f} s (attempt {attempt + 1} of {spec.max_attempts}): "
            f"{retry.reason}"
        )
        await self._dispatcher.park(
            record.task_id,
            record.owner_id,
            self._dispatcher.now() + delay,
            message,
            retry=True,
        )


def _is_task_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is one task's failure (not cancellation or an exit)."""
    if isinstance(exc, BaseExceptionGroup):
        group = cast("BaseExceptionGroup[BaseException]", exc)
        return group.subgroup(anyio.get_cancelled_exc_class()) is None
    return isinstance(exc, Exception)
