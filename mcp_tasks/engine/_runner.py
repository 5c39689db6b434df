"""`Runner`: runs one claimed task under its lease and records how it ended.

A run waits for the budgets its tool declares, replays what earlier runs
recorded, runs the tool body in its own cancel scope through `execute`, and
records the verdict: completed, failed, retried later, or suspended (the body
already recorded why and will run again). Every write is fenced by the run's
lease, so a run whose task was cancelled or taken over records nothing.

An outcome that cannot be written (the disk is full) is retried until the
journal accepts it, with the run kept alive (its lease renewed) meanwhile; at
shutdown such a run is handed back instead. Nothing from one run reaches the
shared task group.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Final, cast, final

import anyio

from mcp_tasks._exceptions import JournalError
from mcp_tasks._model import Outcome, TaskStatus
from mcp_tasks._toolapi import ToolResult, ToolSpec
from mcp_tasks.engine._context import RunContext, TaskSuspended, budget_message
from mcp_tasks.engine._engine import Engine, LeaseLost, failure
from mcp_tasks.engine._execution import Retry, execute
from mcp_tasks.engine._runs import Run, Runs, StopReason
from mcp_tasks.engine._tracing import RunTrace

logger = logging.getLogger("mcp_tasks.engine")

#: Backoff between attempts to write an outcome the journal refused.
OUTCOME_RETRY_SECONDS: Final = (0.1, 0.5, 1.0, 2.0, 5.0)


def backoff_seconds(spec: ToolSpec, retries: int) -> float:
    """Exponential backoff with full jitter in its upper half, capped."""
    ceiling = min(spec.retry_max_seconds, spec.retry_base_seconds * 2.0**retries)
    return ceiling * random.uniform(0.5, 1.0)


def result_too_large(outcome: Outcome, limit: int) -> Outcome | None:
    """A tool-error outcome if ``outcome``'s result is over ``limit`` bytes."""
    if outcome.result is None:
        return None
    size = len(json.dumps(outcome.result, separators=(",", ":")).encode())
    if size <= limit:
        return None
    text = (
        f"The tool's result is {size} bytes, over this server's limit of {limit} "
        "bytes (limits.max_result_bytes); it was not stored"
    )
    return Outcome(result=ToolResult.text(text, is_error=True).to_json())


@final
class Runner:
    """Runs claimed tasks; one `run` call per claim."""

    def __init__(
        self,
        engine: Engine,
        runs: Runs,
        thread_limiter: anyio.CapacityLimiter,
    ) -> None:
        self._engine = engine
        self._runs = runs
        self._threads = thread_limiter

    async def run(self, run: Run) -> None:
        """Run one claimed task to its verdict; never raises but cancellation."""
        self._runs.add(run)
        run.trace = RunTrace.start(run.claimed, self._engine.holder)
        try:
            with run.trace.current():
                await self._run(run)
        except LeaseLost:
            run.trace.event("lease lost")
            logger.warning(
                "task %s: attempt %d stopped, its lease is no longer current "
                "(cancelled or taken over); its late writes were refused",
                run.task_id,
                run.lease.attempt,
            )
            with anyio.CancelScope(shield=True):
                await self._engine.stopped(run)
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException as exc:
            if not _is_task_failure(exc):
                raise  # the process going away: not this task's fault
            # Nothing from one task may reach the shared task group: record the
            # failure on the task (if the journal still works) and carry on.
            logger.exception("running task %s failed inside the engine", run.task_id)
            with anyio.CancelScope(shield=True):
                await self._fail_quietly(run)
        finally:
            self._engine.reporter.forget(run.task_id)
            self._runs.remove(run)
            run.trace.close()

    async def _run(self, run: Run) -> None:
        engine = self._engine
        spec = engine.tools.get(run.claimed.tool_name)
        if spec is None:
            tool = run.claimed.tool_name
            error = {"code": -32602, "message": f"Unknown tool: {tool!r}"}
            await engine.finish(
                run, TaskStatus.FAILED, "tool not served",
                message=f"Tool {tool!r} is not served here", outcome=Outcome(error=error),
            )  # fmt: skip
            return
        if await self._park_for_budgets(spec, run):
            return
        ctx = await self._context(spec, run)
        verdict: Outcome | Retry | None = None
        with run.scope:
            try:
                verdict = await execute(spec, ctx, run.claimed.arguments, self._threads)
            except TaskSuspended as suspended:
                if suspended.hand_back:
                    with anyio.CancelScope(shield=True):
                        await engine.hand_back(run, "server shutting down")
                return
        if run.stopped or verdict is None:
            await self._after_stop(run)
            return
        run.tool_returned(run)
        with anyio.CancelScope(shield=True):
            if isinstance(verdict, Retry):
                await self._retry(spec, run, verdict)
            else:
                await self._record(run, verdict)

    async def _context(self, spec: ToolSpec, run: Run) -> RunContext:
        engine = self._engine
        claimed = run.claimed
        ctx = RunContext(
            engine,
            run,
            engine.settings.tool_config.get(spec.name, {}),
            claimed.request_meta,
        )
        if claimed.attempt > 1 or claimed.retries > 0:
            # A re-run: replay what earlier runs recorded. A first run has nothing.
            journal = engine.journal
            ctx.recorded_steps = await journal.steps(run.task_id)
            ctx.recorded_questions = {
                r.key: r for r in await journal.input_requests(run.task_id)
            }
        return ctx

    async def _park_for_budgets(self, spec: ToolSpec, run: Run) -> bool:
        # Proactive: a tool that declares the budgets it spends does not start
        # until they have room, instead of starting and meeting a 429.
        engine = self._engine
        waits = [
            (name, await engine.budget_wait(name, requests))
            for name, requests in spec.budgets.items()
        ]
        name, wait = max(waits, key=lambda w: w[1], default=("", 0.0))
        if wait <= 0:
            return False
        await engine.park(run, engine.now() + wait, budget_message(name, wait))
        return True

    async def _after_stop(self, run: Run) -> None:
        # Shutdown: give the task back for another process (or the next start)
        # to run, by its tool's policy. Cancelled: the journal says so already,
        # and the task's slot is freed now that its body has stopped. Lease
        # lost: someone else has the task (then `stopped` changes nothing).
        with anyio.CancelScope(shield=True):
            if run.stop_reason == StopReason.SHUTDOWN:
                await self._engine.hand_back(run, "server shutting down")
            else:
                await self._engine.stopped(run)

    async def _record(self, run: Run, outcome: Outcome) -> None:
        limit = self._engine.settings.max_result_bytes
        outcome = result_too_large(outcome, limit) or outcome
        status, message = TaskStatus.COMPLETED, None
        if outcome.error is not None:
            status, message = TaskStatus.FAILED, str(outcome.error.get("message"))
        await self._until_written(
            run,
            lambda: self._engine.finish(
                run, status, "tool returned", message=message, outcome=outcome
            ),
        )

    async def _until_written(
        self, run: Run, write: Callable[[], Awaitable[object]]
    ) -> None:
        """Retry ``write`` until the journal takes it (the run stays alive meanwhile)."""
        attempt = 0
        while True:
            try:
                await write()
                return
            except JournalError as exc:
                if self._engine.draining or run.stopped:
                    logger.error(
                        "task %s: outcome not recorded (%s); the task is handed "
                        "back to be run again",
                        run.task_id,
                        exc,
                    )
                    return
                delay = OUTCOME_RETRY_SECONDS[
                    min(attempt, len(OUTCOME_RETRY_SECONDS) - 1)
                ]
                logger.error(
                    "task %s: cannot record its outcome (%s); retrying in %.1f s",
                    run.task_id,
                    exc,
                    delay,
                )
                attempt += 1
                await anyio.sleep(delay)

    async def _retry(self, spec: ToolSpec, run: Run, retry: Retry) -> None:
        engine = self._engine
        attempt = run.claimed.retries + 1
        if attempt >= spec.max_attempts:
            message = f"Gave up after {attempt} attempts: {retry.reason}"
            await engine.finish(
                run, TaskStatus.FAILED, "retries exhausted",
                message=message, outcome=failure(message),
            )  # fmt: skip
            return
        delay = retry.after_seconds
        if delay is None:
            delay = backoff_seconds(spec, run.claimed.retries)
        message = (
            f"Retrying in {delay:.1f} s (attempt {attempt + 1} of {spec.max_attempts}): "
            f"{retry.reason}"
        )
        await engine.park(run, engine.now() + delay, message, retry=True)

    async def _fail_quietly(self, run: Run) -> None:
        message = "Internal error while running the task; see the server log"
        try:
            await self._engine.finish(
                run, TaskStatus.FAILED, "engine error",
                message=message, outcome=failure(message),
            )  # fmt: skip
        except Exception:
            logger.exception("could not record the failure of task %s", run.task_id)


def _is_task_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is one task's failure (not cancellation or an exit)."""
    if isinstance(exc, BaseExceptionGroup):
        group = cast("BaseExceptionGroup[BaseException]", exc)
        return group.subgroup(anyio.get_cancelled_exc_class()) is None
    return isinstance(exc, Exception)
