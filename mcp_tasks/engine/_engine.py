"""`Engine`: the one place that writes to the journal.

Every change the engine makes goes through here, so each is written the same
way and logged once, by the process that made it: one INFO line per task
transition (task id, tool, owner, status, attempt, duration). Writes a run
makes carry its lease; when the journal refuses one (the lease was taken over,
or the task was cancelled), the run is stopped with `LeaseLost`.

The engine never sees SQL and never assumes it is the only process: it keeps
no state but its holder name and the reports not yet written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, final

import anyio

from mcp_tasks._budgets import BudgetLimits
from mcp_tasks._config import Settings
from mcp_tasks._exceptions import ErrorCode
from mcp_tasks._logs import current_trace_id
from mcp_tasks._model import InputRequest, Outcome, OwnerId, Task, TaskId, TaskStatus
from mcp_tasks._questions import TIMEOUT_RESPONSE
from mcp_tasks._toolapi import ToolSpec
from mcp_tasks.engine._holder import new_holder
from mcp_tasks.engine._observer import EngineObserver
from mcp_tasks.engine._reports import Reporter
from mcp_tasks.engine._runs import Run, StopReason
from mcp_tasks.journal import Claimed, HeldLease, Journal, NewTask, Recovery

logger = logging.getLogger("mcp_tasks.engine")

Clock = Callable[[], float]

#: How long progress and log entries stay in the change feed.
FEED_RETENTION_SECONDS: Final = 3600.0
#: How long a tool's ``on_recover`` hook may take before recovery goes on.
RECOVER_HOOK_SECONDS = 10.0


class LeaseLost(BaseException):
    """Ends a run whose lease is no longer current; its writes are refused.

    A `BaseException` so that a tool's ``except Exception`` cannot swallow it.
    """

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        super().__init__(
            f"task {task_id}: lease lost; the run's late writes are refused"
        )


def _transition_line(
    task: Task | None,
    task_id: str,
    status: str,
    *,
    tool: str = "",
    owner: str = "",
    attempt: int | None = None,
    seconds: float | None = None,
    why: str = "",
) -> None:
    if task is not None:
        tool, owner = task.tool_name, task.owner_id
    extra = {
        "task_id": task_id,
        "tool": tool,
        "owner": owner,
        "status": status,
        "attempt": attempt,
        "duration_seconds": None if seconds is None else round(seconds, 3),
    }
    parts = [f"task {task_id} {tool} owner={owner}: {status}"]
    if attempt is not None:
        parts.append(f"attempt={attempt}")
    if seconds is not None:
        parts.append(f"duration={seconds:.3f}s")
    trace_id = current_trace_id()
    if trace_id:
        # Only when tracing gave one: log lines join the trace in a backend.
        extra["trace_id"] = trace_id
        parts.append(f"trace_id={trace_id}")
    if why:
        parts.append(f"({why})")
    logger.info(" ".join(parts), extra=extra)


@final
class Engine:
    """Writes every change of every task this process makes, and logs it."""

    def __init__(
        self,
        journal: Journal,
        settings: Settings,
        tools: Mapping[str, ToolSpec],
        clock: Clock,
    ) -> None:
        self.journal = journal
        self.settings = settings
        self.tools = tools
        self.clock = clock
        #: Names this process's leases in the journal (see `_holder`).
        self.holder = new_holder()
        self.reporter = Reporter(journal, settings.progress_interval_seconds, clock)
        self.draining = False
        #: Told of runs started and tasks ended here (metrics); see `_observer`.
        self.observers: list[EngineObserver] = []

    def now(self) -> float:
        """The engine's clock (seconds since the epoch)."""
        return self.clock()

    # ---------------------------------------------------------------- submit

    async def submit(self, new: NewTask) -> Task:
        """Durably accept a task; raises `CapacityError` if the backlog is full."""
        task = await self.journal.submit(new)
        if new.listed:
            _transition_line(task, task.task_id, "accepted")
        return task

    async def claim(self, limit: int) -> list[Claimed]:
        """Claim up to ``limit`` queued tasks for this process, fairly."""
        now = self.clock()
        claimed = await self.journal.claim(
            self.holder, now + self.settings.lease_seconds, limit, now
        )
        if self.observers:
            for one in claimed:
                waited = None
                if one.attempt == 1 and one.created_at is not None:
                    waited = max(0.0, now - one.created_at)
                for observer in self.observers:
                    observer.run_started(one.tool_name, waited)
        return claimed

    # ------------------------------------------------------ a run's writes

    async def finish(
        self,
        run: Run,
        status: TaskStatus,
        reason: str,
        *,
        message: str | None = None,
        outcome: Outcome | None = None,
    ) -> Task | None:
        """End the run's task ``completed`` or ``failed``; None if its lease is gone."""
        await self.reporter.flush(run)
        self.reporter.forget(run.task_id)
        task = await self.journal.finish(
            run.lease, status, reason, self.clock(), message=message, outcome=outcome
        )
        if task is None:
            logger.warning(
                "task %s: outcome of attempt %d refused (the lease is no longer "
                "this run's: cancelled or taken over)",
                run.task_id,
                run.lease.attempt,
            )
            await self.stopped(run)
            return None
        shown = "failed (tool error)" if task.tool_error is not None else status.value
        run.trace.ended(status.value, message)
        run.trace.event(f"task {shown}", reason=reason)
        ran = self.clock() - run.started_at
        _transition_line(
            task, task.task_id, shown, attempt=run.lease.attempt,
            seconds=ran, why=reason,
        )  # fmt: skip
        # A tool error result is stored `completed` (2025-11-25 shows it
        # `failed`); observers hear it apart from both.
        ended = "tool_error" if task.tool_error is not None else status.value
        for observer in self.observers:
            observer.task_ended(task.owner_id, task.tool_name, ended, ran)
        return task

    async def park(
        self, run: Run, until: float, message: str, *, retry: bool = False
    ) -> None:
        """Set the run's task aside until ``until`` (a retry, or waiting for budget)."""
        reason = "retry scheduled" if retry else "waiting for budget"
        await self.reporter.flush(run)
        self.reporter.forget(run.task_id)
        if not await self.journal.park(
            run.lease, until, message, reason, self.clock(), retry=retry
        ):
            raise LeaseLost(run.task_id)
        run.trace.event(reason, message=message, until=until)
        _transition_line(
            None, run.task_id, "working (parked)", tool=run.claimed.tool_name,
            owner=run.owner_id, attempt=run.lease.attempt, why=message,
        )  # fmt: skip

    async def ask(
        self, run: Run, requests: Sequence[InputRequest], message: str
    ) -> None:
        """Store questions and move the run's task to ``input_required``."""
        await self.reporter.flush(run)
        self.reporter.forget(run.task_id)
        task = await self.journal.ask(run.lease, requests, message, self.clock())
        if task is None:
            raise LeaseLost(run.task_id)
        run.trace.ended("input_required")
        run.trace.event("input requested", questions=", ".join(r.key for r in requests))
        _transition_line(
            task, task.task_id, "input_required", attempt=run.lease.attempt,
            why=f"{len(requests)} question(s)",
        )  # fmt: skip

    async def record_step(self, run: Run, key: str, result: Any) -> None:
        """Durably record a step's result under the run's lease."""
        if not await self.journal.record_step(run.lease, key, result, self.clock()):
            raise LeaseLost(run.task_id)
        run.trace.event("step recorded", step=key)

    def report(
        self,
        run: Run,
        *,
        message: str | None = None,
        progress: float | None = None,
        total: float | None = None,
    ) -> None:
        """Note the run's latest status message or progress (written coalesced)."""
        self.reporter.report(run, message=message, progress=progress, total=total)

    async def log(self, run: Run, level: str, message: str) -> None:
        """Put a log line of the run in the change feed."""
        if not await self.journal.log(run.lease, level, message, self.clock()):
            raise LeaseLost(run.task_id)

    async def stopped(self, run: Run) -> None:
        """A run that was told to stop has: free its task's slot if it was cancelled."""
        self.reporter.forget(run.task_id)
        run.trace.event("run stopped", reason=stop_reason_of(run))
        await self.journal.stopped(run.lease, self.clock())

    async def hand_back(self, run: Run, why: str) -> None:
        """Give an interrupted run's task back, by its tool's recovery policy."""
        self.reporter.forget(run.task_id)
        run.trace.event("handed back", reason=why)
        spec = self.tools.get(run.claimed.tool_name)
        held = HeldLease(run.lease, run.owner_id, run.claimed.tool_name, self.clock())
        await self.recover(held, spec, why)

    async def release_unstarted(self, claimed: Claimed) -> None:
        """Give back a task claimed but never started (shutdown came first)."""
        await self.journal.release(
            claimed.lease,
            "Queued, waiting for a free worker",
            "not started",
            self.clock(),
        )

    # --------------------------------------------------------- other writes

    async def cancel(self, task_id: TaskId, reason: str, by: str) -> Task | None:
        """Record the task ``cancelled`` by ``by``; None if it had already ended."""
        task = await self.journal.cancel(
            task_id, "The task was cancelled by request.", reason, self.clock(), by=by
        )
        if task is not None:
            _transition_line(task, task_id, "cancelled", why=f"{reason}, by {by}")
            for observer in self.observers:
                observer.task_ended(task.owner_id, task.tool_name, "cancelled", None)
        return task

    async def retry(
        self, task_id: TaskId, reason: str, by: str, *, forget_steps: bool
    ) -> Task | None:
        """Queue a failed task again as a new attempt; None if it was not failed."""
        task = await self.journal.retry(
            task_id,
            "Queued again after it failed (a new attempt)",
            reason,
            self.clock(),
            forget_steps=forget_steps,
            by=by,
        )
        if task is not None:
            _transition_line(
                task, task_id, "working (retried)", why=f"{reason}, by {by}"
            )
        return task

    async def answer(
        self, task_id: TaskId, answers: Mapping[str, dict[str, Any]], by: str
    ) -> tuple[list[str], Task | None]:
        """Record answers given by ``by``; return the keys accepted and the task if it resumed."""
        accepted, resumed = await self.journal.answer(
            task_id, answers, self.clock(), by=by
        )
        if resumed is not None:
            _transition_line(
                resumed, task_id, "working (input received)", why=f"by {by}"
            )
        return accepted, resumed

    async def fire_due(self) -> int:
        """Queue tasks whose wait ended; time out overdue questions. How many moved."""
        now = self.clock()
        woken = await self.journal.wake_due(now)
        resumed = await self.journal.expire_questions(now, TIMEOUT_RESPONSE)
        for task_id in resumed:
            _transition_line(None, task_id, "working (question timed out)")
        return woken + len(resumed)

    async def recover(self, held: HeldLease, spec: ToolSpec | None, why: str) -> bool:
        """Run again, restart or fail a task whose run is gone, by its tool's policy."""
        policy = Recovery(spec.recovery) if spec is not None else Recovery.RESUME
        tool = held.tool_name
        if spec is not None and spec.on_recover is not None:
            # Before the policy applies: a restart forgets the recorded steps
            # the hook needs (what the lost run started: a process group).
            await self._call_recovery_hook(held, spec)
        if policy is Recovery.FAIL:
            message = (
                f"The task's run was interrupted ({why}), and tool {tool!r} "
                "does not resume interrupted work"
            )
        else:
            message = f"Resuming after its run was interrupted ({why})"
        recovered = await self.journal.recover(held, policy, message, why, self.clock())
        if recovered:
            shown = f"recovered ({policy.value})"
            _transition_line(
                None, held.lease.task_id, shown, tool=tool, owner=held.owner_id,
                attempt=held.lease.attempt, why=why,
            )  # fmt: skip
        return recovered

    async def _call_recovery_hook(self, held: HeldLease, spec: ToolSpec) -> None:
        """Let the tool clean up after a lost run; never keep its task from recovery."""
        hook = spec.on_recover
        assert hook is not None
        task_id = held.lease.task_id
        try:
            with anyio.move_on_after(RECOVER_HOOK_SECONDS) as scope:
                await hook(task_id, await self.journal.steps(task_id))
            if scope.cancelled_caught:
                logger.warning(
                    "task %s: recovery hook of %r timed out", task_id, spec.name
                )
        except Exception:
            logger.exception("task %s: recovery hook of %r failed", task_id, spec.name)

    async def purge(self) -> list[TaskId]:
        """Delete finished tasks whose retention ended."""
        now = self.clock()
        purged = await self.journal.purge_expired(now, now - FEED_RETENTION_SECONDS)
        if purged:
            logger.info("purged %d expired tasks", len(purged))
        return purged

    # -------------------------------------------------------------- budgets

    async def take_budget(self, name: str, requests: float, tokens: float) -> float:
        """Take from a shared budget now (0) or return the seconds until it has room."""
        limits = self.settings.budget(name)
        return await self.journal.take_budget(
            name, limits, requests, tokens, self.clock()
        )

    async def take_requests(
        self, name: str, limits: BudgetLimits, amount: float
    ) -> float:
        """Take ``amount`` from a client's request bucket now (0) or return the wait."""
        return await self.journal.take_budget(name, limits, amount, 0.0, self.clock())

    async def budget_wait(self, name: str, requests: float) -> float:
        """Seconds until the budget could give ``requests`` (0: now); takes nothing."""
        limits = self.settings.budget(name)
        return await self.journal.budget_wait(name, limits, requests, 0, self.clock())


def failure(message: str) -> Outcome:
    """A JSON-RPC internal-error outcome carrying ``message``."""
    return Outcome(error={"code": int(ErrorCode.INTERNAL_ERROR), "message": message})


def stop_reason_of(run: Run) -> str:
    """Why a stopped run stopped, for log lines."""
    return run.stop_reason or StopReason.CANCELLED


__all__ = ["Clock", "Engine", "LeaseLost", "OwnerId", "failure", "stop_reason_of"]
