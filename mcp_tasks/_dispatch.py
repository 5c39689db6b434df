"""`Dispatcher`: the runtime's live state, and every change made to it.

Owns what exists only in memory: the fair scheduler and its wake-up, the
per-client backlog counts, the tasks holding a worker, the timers and the
budgets. Every state change the engine makes goes through here, journal first
(queue, park, finish, record answers, fire a timer), and so do the calls a
running tool's `RunContext` makes: the dispatcher is the `_context.Engine`.

Running one task is `_worker`'s job; start-up recovery, leases and the
service loops are `_lifecycle`'s.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, final

import anyio

from mcp_tasks._budgets import Budget
from mcp_tasks._config import Settings
from mcp_tasks._context import RunContext
from mcp_tasks._events import Broadcaster, LogEvent, ProgressEvent
from mcp_tasks._exceptions import CapacityError
from mcp_tasks._model import Outcome, OwnerId, Task, TaskId, TaskStatus
from mcp_tasks._questions import TIMEOUT_RESPONSE
from mcp_tasks._scheduler import FairScheduler
from mcp_tasks._timers import Timer, Timers
from mcp_tasks._toolapi import ToolSpec
from mcp_tasks.journal import InputRequest, Journal, Transition

logger = logging.getLogger("mcp_tasks.runtime")

Clock = Callable[[], float]


@dataclass(eq=False)
class Running:
    """Book-keeping for a task that holds a worker."""

    owner_id: OwnerId
    scope: anyio.CancelScope
    request_meta: Mapping[str, Any]
    cancel_requested: bool = False
    status_message: str | None = None


@final
class Dispatcher:
    """The live state of the engine; the `Engine` every `RunContext` calls."""

    def __init__(
        self,
        journal: Journal,
        settings: Settings,
        tools: Mapping[str, ToolSpec],
        clock: Clock,
        events: Broadcaster,
    ) -> None:
        self.journal = journal
        self.settings = settings
        self.tools = tools
        self.events = events
        #: Names this process's leases in the journal.
        self.holder = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.scheduler = FairScheduler(
            settings.workers, lambda owner: settings.limits_for(owner).concurrency
        )
        self.running: dict[TaskId, Running] = {}
        self.timers = Timers(clock)
        self.thread_limiter = anyio.CapacityLimiter(settings.workers)
        self._clock = clock
        self._unfinished: dict[OwnerId, int] = {}
        self._wake = anyio.Event()
        self._budgets = {
            name: Budget(name, limits) for name, limits in settings.budgets.items()
        }
        self._draining = False

    @property
    def draining(self) -> bool:
        """Whether the runtime is shutting down (no new work or steps start)."""
        return self._draining

    def now(self) -> float:
        """The runtime's clock (seconds since the epoch)."""
        return self._clock()

    # ---------------------------------------------------------------- backlog

    def admit(self, owner: OwnerId) -> None:
        """Reserve a backlog slot for a new task of ``owner``; raise `CapacityError`."""
        limit = self.settings.limits_for(owner).backlog
        if self._unfinished.get(owner, 0) >= limit:
            raise CapacityError(owner, limit)
        self.hold_backlog(owner)

    def hold_backlog(self, owner: OwnerId) -> None:
        """Count one more unfinished task of ``owner`` (no limit: recovery)."""
        self._unfinished[owner] = self._unfinished.get(owner, 0) + 1

    def release_backlog(self, owner: OwnerId) -> None:
        """One task of ``owner`` finished (or was never stored)."""
        remaining = self._unfinished.get(owner, 0) - 1
        if remaining > 0:
            self._unfinished[owner] = remaining
        else:
            self._unfinished.pop(owner, None)

    @property
    def unfinished(self) -> int:
        """How many tasks are unfinished, over all clients."""
        return sum(self._unfinished.values())

    # --------------------------------------------------------------- dispatch

    async def dispatch(self, start: Callable[[OwnerId, TaskId], None]) -> None:
        """Hand queued tasks to ``start`` as the scheduler allows, until draining."""
        while not self._draining:
            self._wake = anyio.Event()
            while not self._draining and (picked := self.scheduler.next()) is not None:
                start(*picked)
            await self._wake.wait()

    def enqueue(self, owner: OwnerId, task_id: TaskId) -> None:
        """Queue a task to run (again) and wake the dispatch loop."""
        self.scheduler.push(owner, task_id)
        self._wake.set()

    def release(self, owner: OwnerId) -> None:
        """A task of ``owner`` stopped holding a worker."""
        self.scheduler.release(owner)
        self._wake.set()

    def wake(self) -> None:
        """Let the dispatch loop look at the scheduler again."""
        self._wake.set()

    def start_draining(self) -> None:
        """Start nothing new from now on (shutdown)."""
        self._draining = True
        self._wake.set()

    def live_status(self, task: Task) -> Task:
        """``task`` with the status message of its run, or its place in the queue."""
        if task.status is not TaskStatus.WORKING:
            return task
        running = self.running.get(task.task_id)
        if running is not None:
            if running.status_message is not None:
                return task.with_status_message(running.status_message)
            return task
        position = self.scheduler.position(task.owner_id, task.task_id)
        if position is None:
            return task
        return task.with_status_message(self._queue_message(task.owner_id, position))

    def newly_queued(self, task: Task) -> Task:
        """``task`` with its queue message, knowing it was just queued at the back.

        The submit path: no queue scan, so a burst of submits stays linear.
        """
        position = self.scheduler.queued(task.owner_id)
        if position == 0:
            # The dispatcher took it off the queue before the submit returned:
            # it is starting, not queued.
            return self.live_status(task)
        return task.with_status_message(self._queue_message(task.owner_id, position))

    def _queue_message(self, owner: OwnerId, position: int) -> str:
        # What holds the task, in the client's terms: its place in the
        # client's own queue, then its client's cap or the busy workers.
        ahead = position - 1
        where = (
            "next in this client's queue"
            if ahead == 0
            else f"{ahead} task{'s' * (ahead != 1)} ahead of it in this client's queue"
        )
        scheduler, cap = self.scheduler, self.settings.limits_for(owner).concurrency
        if scheduler.running(owner) >= cap:
            why = f"this client is at its limit of {cap} running task{'s' * (cap != 1)}"
        elif scheduler.running_total >= scheduler.worker_limit > 1:
            why = f"all {scheduler.worker_limit} workers are busy"
        elif scheduler.running_total >= scheduler.worker_limit:
            why = "the only worker is busy"
        else:
            why = "about to start"
        return f"Queued: {where}; {why}"

    # ------------------------------------------------------------ transitions

    async def finish(
        self,
        task_id: TaskId,
        owner: OwnerId,
        status: TaskStatus,
        reason: str,
        *,
        message: str | None = None,
        outcome: Outcome | None = None,
    ) -> Task | None:
        """Record a terminal status; None if the task had already ended."""
        change = Transition(
            task_id,
            status,
            reason,
            self._clock(),
            status_message=message,
            outcome=outcome,
        )
        task = await self.journal.transition(change)
        if task is None:
            return None
        self.release_backlog(owner)
        running = self.running.get(task_id)
        if running is not None:
            request_meta = running.request_meta
        else:  # not running (queued, parked, waiting): a cold path, read it back
            request_meta = await self.journal.request_meta(task_id)
        self.events.task_changed(task, request_meta)
        return task

    async def cancel(self, task_id: TaskId, owner: OwnerId) -> Task | None:
        """Record the task ``cancelled``, then stop its work; None if it had ended."""
        cancelled = await self.finish(
            task_id,
            owner,
            TaskStatus.CANCELLED,
            "cancelled by request",
            message="The task was cancelled by request.",
        )
        if cancelled is not None:
            self._stop(owner, task_id)
        return cancelled

    def _stop(self, owner: OwnerId, task_id: TaskId) -> None:
        # Drop the task from the queue, and stop its run if it has one.
        if self.scheduler.remove(owner, task_id):
            self._wake.set()
        running = self.running.get(task_id)
        if running is not None:
            running.cancel_requested = True
            running.scope.cancel()

    async def park(
        self,
        task_id: TaskId,
        owner: OwnerId,
        until: float,
        message: str,
        *,
        retry: bool = False,
    ) -> None:
        """Set the task aside until ``until`` (a retry, or waiting for budget)."""
        reason = "retry scheduled" if retry else "waiting for budget"
        if await self.journal.park(
            task_id, until, message, reason, self._clock(), retry=retry
        ):
            self.timers.add(until, "wake", task_id, owner)

    async def record_answers(
        self, task_id: TaskId, answers: dict[str, dict[str, Any]]
    ) -> tuple[list[str], bool]:
        """Record answers; return the keys accepted and whether the task resumed."""
        accepted, resumed = await self.journal.answer(task_id, answers, self._clock())
        if resumed is not None:
            self.enqueue(resumed.owner_id, resumed.task_id)
            self.events.task_changed(
                resumed, await self.journal.request_meta(resumed.task_id)
            )
        return accepted, resumed is not None

    # ----------------------------------------------------------------- timers

    async def run_timers(self) -> None:
        """Fire timers as they come due, forever."""
        await self.timers.run(self._fire)

    async def fire_due_timers(self) -> int:
        """Fire due timers now; return how many fired."""
        return await self.timers.fire_due(self._fire)

    async def _fire(self, timer: Timer) -> None:
        try:
            if timer.kind == "wake":
                if await self.journal.requeue(
                    timer.task_id, None, self._clock(), reason="wait over"
                ):
                    self.enqueue(timer.owner_id, timer.task_id)
            else:
                task = await self.journal.get(timer.task_id)
                if task is not None and not task.is_terminal:
                    await self.record_answers(
                        task.task_id, {timer.key: dict(TIMEOUT_RESPONSE)}
                    )
        except Exception:
            logger.exception("timer for task %s failed", timer.task_id)

    # ------------------------------------------- the engine side of RunContext

    def note_status(self, task_id: TaskId, message: str) -> None:
        """Record a running task's latest status message (shown by `get`)."""
        running = self.running.get(task_id)
        if running is not None:
            running.status_message = message
            self.events.wake_waiters(task_id)

    def report_progress(
        self, ctx: RunContext, progress: float, total: float | None, message: str | None
    ) -> None:
        """Hand a tool's progress report to every listener."""
        self.events.progress(
            ProgressEvent(
                ctx.task_id, ctx.owner_id, progress, total, message, ctx.request_meta
            )
        )

    def report_log(self, ctx: RunContext, level: str, message: str) -> None:
        """Hand a tool's log message to every listener."""
        self.events.log(
            LogEvent(ctx.task_id, ctx.owner_id, level, message, ctx.request_meta)
        )

    async def record_step(self, task_id: TaskId, key: str, result: Any) -> None:
        """Durably record a step's result (called by `RunContext.step`)."""
        await self.journal.record_step(task_id, key, result, self._clock())

    async def wait_for_input(
        self, ctx: RunContext, requests: list[InputRequest], message: str
    ) -> None:
        """Store questions and park the task ``input_required`` (called by `RunContext`)."""
        task = await self.journal.ask(ctx.task_id, requests, message, self._clock())
        if task is None:
            return  # cancelled meanwhile
        for request in requests:
            if request.expires_at is not None:
                self.timers.add(
                    request.expires_at,
                    "question",
                    ctx.task_id,
                    ctx.owner_id,
                    request.key,
                )
        self.events.task_changed(task, ctx.request_meta)

    def take_budget(self, budget: str, requests: float, tokens: float) -> float:
        """Take from a budget now, or return the seconds until it has room."""
        return self.budget(budget).try_take(self._clock(), requests, tokens)

    async def wait_for_budget(
        self, ctx: RunContext, budget: str, seconds: float
    ) -> None:
        """Park the task until the budget has room (called by `RunContext.acquire`)."""
        await self.park(
            ctx.task_id,
            ctx.owner_id,
            self._clock() + seconds,
            budget_message(budget, seconds),
        )

    def budget(self, name: str) -> Budget:
        """The budget called ``name``; raise `KeyError` if the config has none."""
        budget = self._budgets.get(name)
        if budget is None:
            raise KeyError(f"no budget named {name!r} in the config ([budgets.{name}])")
        return budget


def budget_message(name: str, seconds: float) -> str:
    """The status message of a task waiting for room in a budget."""
    return f"Waiting {seconds:.1f} s for room in budget {name!r}"
