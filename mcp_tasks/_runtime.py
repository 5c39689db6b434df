"""`TaskRuntime`: the engine. Owns the journal, the scheduler and running work.

Wire-neutral: bindings call `submit`, `get`, `wait_terminal`, `list`,
`cancel`, `answer` with a `Requester`, and subscribe to events. The runtime
never imports ``mcp``.

Lifecycle of a task (statuses as the wire shows them, phases in brackets)::

    submit ─► working [queued] ─► working [running] ─► completed | failed
                 ▲                  │    │    │
                 │   retry/budget   │    │    └─► input_required [parked]
                 └── [parked] ◄─────┘    │              │ answered
                 └───────────────────────┼──────────────┘
                                         └─► cancelled (from any non-terminal)

The journal row is the truth; the scheduler, timers and leases in memory are
rebuilt from it at start-up. Work runs in one task group that lives as long as
the runtime, independent of any client connection. A run that must wait
records why and ends (`TaskSuspended`); the task runs again from the top when
it may continue, replaying what the journal recorded (see `_context`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import random
import secrets
import struct
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final, Protocol, cast, final

import anyio
from anyio.abc import TaskGroup

from mcp_tasks._budgets import Budget
from mcp_tasks._config import Settings
from mcp_tasks._context import RunContext, TaskSuspended
from mcp_tasks._exceptions import (
    CapacityError,
    InvalidCursorError,
    TaskNotFoundError,
    TaskTerminalError,
    UnknownToolError,
)
from mcp_tasks._execution import INTERNAL_ERROR, Retry, execute
from mcp_tasks._model import Outcome, OwnerId, Task, TaskId, TaskStatus
from mcp_tasks._questions import TIMEOUT_RESPONSE, InvalidAnswerError, check_response
from mcp_tasks._scheduler import FairScheduler, SchedulerStatistics
from mcp_tasks._timers import Timer, Timers
from mcp_tasks._toolapi import ToolSpec
from mcp_tasks.journal import (
    InputRequest,
    Journal,
    NewTask,
    RunRecord,
    SqliteJournal,
    Transition,
    UnfinishedTask,
)

logger = logging.getLogger("mcp_tasks.runtime")

#: How long a synchronous (non-task) call's journal row is kept after it ends.
SYNC_CALL_RETENTION_SECONDS: Final = 60.0
#: A worker's lease; renewed every third of it while the task runs.
LEASE_SECONDS: Final = 30.0
DEFAULT_PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 500

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Requester:
    """Who is asking, as the binding established it.

    ``owner_id`` is the principal tasks are bound to and the fairness key.
    When ``scoped`` is False (HTTP without auth) task ids act as bearer
    capabilities: any requestor holding an id may read, answer or cancel that
    task, and listing is refused.
    """

    owner_id: OwnerId
    scoped: bool = True


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """A progress report from a running tool."""

    task_id: TaskId
    owner_id: OwnerId
    progress: float
    total: float | None
    message: str | None
    request_meta: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class LogEvent:
    """A log message from a running tool."""

    task_id: TaskId
    owner_id: OwnerId
    level: str
    message: str
    request_meta: Mapping[str, Any]


class RuntimeListener(Protocol):
    """Receives runtime events. Must not block: it is called on the engine's path."""

    def task_changed(self, task: Task, request_meta: Mapping[str, Any]) -> None:
        """A task moved to a new status (already committed)."""

    def task_progress(self, event: ProgressEvent) -> None:
        """A running task reported progress."""

    def task_log(self, event: LogEvent) -> None:
        """A running task logged a message."""


@dataclass(frozen=True, slots=True)
class AnswerReceipt:
    """What `TaskRuntime.answer` did with each answer."""

    accepted: list[str]
    ignored: list[str]
    resumed: bool


@dataclass(frozen=True, slots=True)
class RuntimeStatistics:
    """A snapshot for monitoring and benchmarks."""

    scheduler: SchedulerStatistics
    unfinished: int
    running: int
    timers: int
    journal_batches: int
    journal_writes: int


@dataclass(eq=False)
class _Running:
    """Book-keeping for a task that holds a worker."""

    owner_id: OwnerId
    scope: anyio.CancelScope
    request_meta: Mapping[str, Any]
    cancel_requested: bool = False
    status_message: str | None = None


def _wall_clock() -> float:
    return time.time()


def backoff_seconds(spec: ToolSpec, retries: int) -> float:
    """Exponential backoff with full jitter in its upper half, capped."""
    ceiling = min(spec.retry_max_seconds, spec.retry_base_seconds * 2.0**retries)
    return ceiling * random.uniform(0.5, 1.0)


@final
class TaskRuntime:
    """The durable task engine. Open one with `TaskRuntime.open`."""

    def __init__(
        self,
        journal: Journal,
        settings: Settings,
        tools: Mapping[str, ToolSpec],
        *,
        clock: Clock = _wall_clock,
        cursor_secret: bytes = b"",
    ) -> None:
        self.journal = journal
        self.settings = settings
        self.tools = dict(tools)
        self._clock = clock
        self._cursor_secret = cursor_secret
        self._state_key = hmac.new(
            cursor_secret, b"request-state", hashlib.sha256
        ).digest()
        self._scheduler = FairScheduler(
            settings.workers, lambda owner: settings.limits_for(owner).concurrency
        )
        self._unfinished: dict[OwnerId, int] = {}
        self._running: dict[TaskId, _Running] = {}
        self._changed: dict[TaskId, set[anyio.Event]] = {}
        self._wake_dispatcher = anyio.Event()
        self._idle = anyio.Event()
        self._active_runs = 0
        self._listeners: list[RuntimeListener] = []
        self._holder = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._thread_limiter = anyio.CapacityLimiter(settings.workers)
        self._timers = Timers(clock)
        self._budgets = {
            name: Budget(name, limits) for name, limits in settings.budgets.items()
        }
        self._draining = False

    # ----------------------------------------------------------------- opening

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        db_path: Path | str,
        settings: Settings,
        tools: Mapping[str, ToolSpec],
        *,
        clock: Clock = _wall_clock,
    ) -> AsyncGenerator[TaskRuntime]:
        """Open the journal at ``db_path``, recover unfinished tasks, start workers.

        Leaving the block shuts down gracefully: no new work starts, running
        tasks get ``shutdown_grace_seconds`` to finish, and the rest are
        recorded as interrupted for the next start to recover.
        """
        async with SqliteJournal.open(
            db_path, synchronous=settings.synchronous
        ) as journal:
            secret = await journal.secret("cursor")
            runtime = cls(journal, settings, tools, clock=clock, cursor_secret=secret)
            async with runtime.running():
                yield runtime

    @asynccontextmanager
    async def running(self) -> AsyncGenerator[None]:
        """Run the dispatcher, timers, heartbeat and sweeper until the block exits."""
        await self.recover()
        async with anyio.create_task_group() as service:
            async with anyio.create_task_group() as work:
                service.start_soon(self._dispatch_loop, work)
                service.start_soon(self._timers.run, self._fire)
                service.start_soon(self._heartbeat_loop)
                service.start_soon(self._sweep_loop)
                try:
                    yield
                finally:
                    with anyio.CancelScope(shield=True):
                        await self._shutdown(work)
            service.cancel_scope.cancel()

    @property
    def draining(self) -> bool:
        """Whether the runtime is shutting down (no new work or steps start)."""
        return self._draining

    def now(self) -> float:
        """The runtime's clock (seconds since the epoch)."""
        return self._clock()

    # --------------------------------------------------------------- recovery

    async def recover(self) -> None:
        """Rebuild queues, timers and backlog counts from the journal.

        A task that was running when the process died is recovered by its
        tool's policy: ``resume`` and ``restart`` run it again (``restart``
        first forgets its recorded steps); ``fail`` ends it ``failed``.
        The journal's file lock guarantees this process is the only one, so
        every ``running`` row found here lost its worker. (With a shared
        database, only rows whose lease expired would qualify.)
        """
        now = self._clock()
        for task in await self.journal.unfinished():
            self._unfinished[task.owner_id] = self._unfinished.get(task.owner_id, 0) + 1
            if task.status is not TaskStatus.WORKING:
                continue  # input_required: waits for an answer, holds nothing
            if task.phase == "running":
                await self._recover_orphan(task, now)
            elif task.phase == "parked":
                self._timers.add(
                    task.not_before or now, "wake", task.task_id, task.owner_id
                )
            else:
                self._scheduler.push(task.owner_id, task.task_id)
        for task_id, key, expires_at in await self.journal.open_input_deadlines():
            self._timers.add(expires_at, "question", task_id, OwnerId(""), key)

    async def _recover_orphan(self, task: UnfinishedTask, now: float) -> None:
        spec = self.tools.get(task.tool_name)
        policy = spec.recovery if spec is not None else "resume"
        if policy == "fail":
            message = (
                "The server restarted while this task was running, and tool "
                f"{task.tool_name!r} does not resume interrupted work"
            )
            await self._finish(
                task.task_id,
                task.owner_id,
                TaskStatus.FAILED,
                "server restarted",
                message=message,
                outcome=Outcome(error={"code": INTERNAL_ERROR, "message": message}),
            )
            return
        if policy == "restart":
            await self.journal.forget_steps(task.task_id)
        await self.journal.requeue(
            task.task_id,
            "Resuming after a server restart",
            now,
            reason="server restarted",
        )
        self._scheduler.push(task.owner_id, task.task_id)

    async def _shutdown(self, work: TaskGroup) -> None:
        # Start nothing new; let running tasks finish or reach a step boundary
        # within the grace period; then stop the rest. What is still running is
        # left as it is in the journal (phase running) and marked, so the next
        # start recovers it by the tool's policy.
        self._draining = True
        self._wake_dispatcher.set()
        if self._active_runs:
            with anyio.move_on_after(self.settings.shutdown_grace_seconds):
                await self._idle.wait()
        interrupted = list(self._running)
        work.cancel_scope.cancel()
        now = self._clock()
        for task_id in interrupted:
            await self.journal.set_status_message(
                task_id,
                "Interrupted by server shutdown; will recover at restart",
                now,
                reason="interrupted by shutdown",
            )

    # --------------------------------------------------------------- listeners

    def subscribe(self, listener: RuntimeListener) -> Callable[[], None]:
        """Register ``listener`` for events; returns a function that unregisters it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _publish(self, task: Task, request_meta: Mapping[str, Any]) -> None:
        self._wake_waiters(task.task_id)
        for listener in list(self._listeners):
            try:
                listener.task_changed(task, request_meta)
            except Exception:
                logger.exception("listener failed on task %s", task.task_id)

    def _wake_waiters(self, task_id: TaskId) -> None:
        for waiter in self._changed.pop(task_id, set()):
            waiter.set()

    def report_progress(
        self, ctx: RunContext, progress: float, total: float | None, message: str | None
    ) -> None:
        """Hand a tool's progress report to every listener."""
        event = ProgressEvent(
            ctx.task_id, ctx.owner_id, progress, total, message, ctx.request_meta
        )
        for listener in list(self._listeners):
            try:
                listener.task_progress(event)
            except Exception:
                logger.exception("listener failed on progress of %s", ctx.task_id)

    def report_log(self, ctx: RunContext, level: str, message: str) -> None:
        """Hand a tool's log message to every listener."""
        event = LogEvent(ctx.task_id, ctx.owner_id, level, message, ctx.request_meta)
        for listener in list(self._listeners):
            try:
                listener.task_log(event)
            except Exception:
                logger.exception("listener failed on log of %s", ctx.task_id)

    def note_status(self, task_id: TaskId, message: str) -> None:
        """Record a running task's latest status message (shown by `get`)."""
        running = self._running.get(task_id)
        if running is not None:
            running.status_message = message
            self._wake_waiters(task_id)

    # ------------------------------------------------------------------ submit

    def tool(self, name: str) -> ToolSpec:
        """The served tool called ``name``; raise `UnknownToolError`."""
        spec = self.tools.get(name)
        if spec is None:
            raise UnknownToolError(name)
        return spec

    async def submit(
        self,
        requester: Requester,
        tool_name: str,
        arguments: Mapping[str, Any] | None,
        *,
        ttl_seconds: float | None = None,
        request_meta: Mapping[str, Any] | None = None,
        listed: bool = True,
    ) -> Task:
        """Durably accept a call as a task and queue it; return the new task.

        Returns only after the task is committed, so a `get` right after
        succeeds.

        Raises:
            UnknownToolError: no such tool.
            InvalidArgumentsError: the arguments do not match the tool's schema.
            CapacityError: the client's backlog is full; nothing was stored.
        """
        spec = self.tool(tool_name)
        spec.validate(arguments)
        owner = requester.owner_id
        limit = self.settings.limits_for(owner).backlog
        if self._unfinished.get(owner, 0) >= limit:
            raise CapacityError(owner, limit)
        # Reserve the backlog slot before the await so concurrent submits
        # cannot over-admit.
        self._unfinished[owner] = self._unfinished.get(owner, 0) + 1
        new = NewTask(
            task_id=TaskId(secrets.token_urlsafe(24)),
            owner_id=owner,
            tool_name=tool_name,
            arguments=dict(arguments or {}),
            created_at=self._clock(),
            ttl_seconds=(
                self.settings.effective_ttl(ttl_seconds)
                if listed
                else SYNC_CALL_RETENTION_SECONDS
            ),
            poll_interval_seconds=self.settings.poll_interval_seconds,
            listed=listed,
            request_meta=dict(request_meta or {}),
        )
        try:
            task = await self.journal.submit(new)
        except BaseException:
            self._release_backlog(owner)
            raise
        self._scheduler.push(owner, task.task_id)
        self._wake_dispatcher.set()
        return self._with_live_status(task)

    async def call(
        self,
        requester: Requester,
        tool_name: str,
        arguments: Mapping[str, Any] | None,
        *,
        request_meta: Mapping[str, Any] | None = None,
    ) -> Task:
        """Run a call through the engine and wait for it to end (no questions).

        The call is journaled (unlisted, kept briefly) and scheduled fairly like
        any task. If the caller goes away, the work is cancelled. Bindings that
        can deliver questions use `submit` plus `wait_settled` instead.
        """
        task = await self.submit(
            requester, tool_name, arguments, request_meta=request_meta, listed=False
        )
        async with self.cancel_on_exit(requester, task.task_id):
            return await self.wait_terminal(requester, task.task_id)

    @asynccontextmanager
    async def cancel_on_exit(
        self, requester: Requester, task_id: str
    ) -> AsyncGenerator[None]:
        """Cancel the task if the block is left by cancellation or an error."""
        try:
            yield
        except BaseException:
            with anyio.CancelScope(shield=True):
                try:
                    await self.cancel(requester, task_id)
                except (TaskTerminalError, TaskNotFoundError):
                    pass
            raise

    # ------------------------------------------------------------------- reads

    async def get(self, requester: Requester, task_id: str) -> Task:
        """The task as its requestor may see it; raise `TaskNotFoundError`."""
        task = await self.journal.get(TaskId(task_id))
        if task is None or (requester.scoped and task.owner_id != requester.owner_id):
            raise TaskNotFoundError(task_id)
        return self._with_live_status(task)

    def _with_live_status(self, task: Task) -> Task:
        if task.status is not TaskStatus.WORKING:
            return task
        running = self._running.get(task.task_id)
        if running is not None:
            if running.status_message is not None:
                return replace(task, status_message=running.status_message)
            return task
        position = self._scheduler.position(task.owner_id, task.task_id)
        if position is None:
            return task
        stats = self._scheduler.statistics()
        message = (
            f"Queued: position {position} of {self._scheduler.queued(task.owner_id)} "
            f"in this client's queue; {stats.running} of {stats.worker_limit} "
            "workers busy"
        )
        return replace(task, status_message=message)

    async def wait_terminal(self, requester: Requester, task_id: str) -> Task:
        """Block until the task is terminal; return it."""
        return await self.wait_for(requester, task_id, lambda t: t.is_terminal)

    async def wait_settled(self, requester: Requester, task_id: str) -> Task:
        """Block until the task is terminal or waits for input; return it."""
        return await self.wait_for(
            requester,
            task_id,
            lambda t: t.is_terminal or t.status is TaskStatus.INPUT_REQUIRED,
        )

    async def wait_change(self, requester: Requester, task_id: str, seen: Task) -> Task:
        """Block until the task moved since ``seen`` (any transition); return it."""
        return await self.wait_for(
            requester,
            task_id,
            lambda t: (
                t.is_terminal
                or t.status is not seen.status
                or t.last_updated_at != seen.last_updated_at
            ),
        )

    async def wait_for(
        self, requester: Requester, task_id: str, done: Callable[[Task], bool]
    ) -> Task:
        """Block until ``done(task)`` holds for the task as `get` shows it; return it.

        Re-checked on every transition and every status message change.
        """
        # Each waiter has its own event, registered before the read so a change
        # in between is not missed, and always removed again: waiting leaves no
        # state behind, whatever the outcome (even for ids that do not exist).
        key = TaskId(task_id)
        while True:
            changed = anyio.Event()
            waiters = self._changed.setdefault(key, set())
            waiters.add(changed)
            try:
                task = await self.get(requester, task_id)
                if done(task):
                    return task
                await changed.wait()
            finally:
                waiters.discard(changed)
                if not waiters and self._changed.get(key) is waiters:
                    del self._changed[key]

    async def awaiting_input(self, owner: OwnerId, limit: int = 100) -> list[TaskId]:
        """The owner's tasks waiting for answers (to re-offer on a reconnect)."""
        return await self.journal.awaiting_input(owner, limit)

    async def input_requests(
        self, requester: Requester, task_id: str
    ) -> list[InputRequest]:
        """The task's open questions, oldest first."""
        await self.get(requester, task_id)
        return [
            r for r in await self.journal.input_requests(TaskId(task_id)) if r.is_open
        ]

    async def list(
        self,
        requester: Requester,
        cursor: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
    ) -> tuple[list[Task], str | None]:
        """One page of the requestor's tasks, oldest first, and the next cursor."""
        if not requester.scoped:
            raise PermissionError("listing needs an identified requestor")
        limit = max(1, min(limit, MAX_PAGE_SIZE))
        after = 0 if cursor is None else self._decode_cursor(requester.owner_id, cursor)
        rows = await self.journal.list_owned(requester.owner_id, after, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        tasks = [self._with_live_status(task) for _, task in rows]
        next_cursor = (
            self._encode_cursor(requester.owner_id, rows[-1][0]) if more else None
        )
        return tasks, next_cursor

    def seal(
        self, owner: OwnerId, payload: Mapping[str, Any], ttl_seconds: float
    ) -> str:
        """An opaque, integrity-protected token carrying ``payload`` for ``owner``.

        Used for 2026-07-28 ``requestState``: bound to the requestor, expiring,
        and refused by `unseal` if altered in any way.
        """
        body = json.dumps(
            {
                "o": owner,
                "e": self._clock() + ttl_seconds,
                "n": secrets.token_hex(4),
                "p": payload,
            },
            separators=(",", ":"),
        ).encode()
        mac = hmac.new(self._state_key, body, hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(mac + body).decode().rstrip("=")

    def unseal(self, owner: OwnerId, token: str) -> dict[str, Any] | None:
        """The payload of a `seal` token, or None if forged, altered, expired or not ``owner``'s."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except ValueError:
            return None
        mac, body = raw[:16], raw[16:]
        expected = hmac.new(self._state_key, body, hashlib.sha256).digest()[:16]
        if len(mac) != 16 or not hmac.compare_digest(mac, expected):
            return None
        data = json.loads(body)
        if data.get("o") != owner or float(data.get("e", 0)) < self._clock():
            return None
        payload = data.get("p")
        return cast("dict[str, Any]", payload) if isinstance(payload, dict) else None

    def _cursor_mac(self, owner: OwnerId, packed: bytes) -> bytes:
        message = owner.encode() + b"\0" + packed
        return hmac.new(self._cursor_secret, message, hashlib.sha256).digest()[:12]

    def _encode_cursor(self, owner: OwnerId, seq: int) -> str:
        packed = struct.pack(">Q", seq)
        token = packed + self._cursor_mac(owner, packed)
        return base64.urlsafe_b64encode(token).decode().rstrip("=")

    def _decode_cursor(self, owner: OwnerId, cursor: str) -> int:
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        except ValueError:
            raise InvalidCursorError(cursor) from None
        packed, mac = raw[:8], raw[8:]
        if len(raw) != 20 or not hmac.compare_digest(
            mac, self._cursor_mac(owner, packed)
        ):
            raise InvalidCursorError(cursor)
        (seq,) = struct.unpack(">Q", packed)
        return int(seq)

    # ------------------------------------------------------- cancel and answer

    async def cancel(self, requester: Requester, task_id: str) -> Task:
        """Cancel a task: recorded ``cancelled`` before this returns, work stopped.

        Raises:
            TaskNotFoundError: unknown, purged or not the requestor's.
            TaskTerminalError: the task had already finished.
        """
        task = await self.get(requester, task_id)
        if task.is_terminal:
            raise TaskTerminalError(task_id, task.status.value)
        cancelled = await self._finish(
            task.task_id,
            task.owner_id,
            TaskStatus.CANCELLED,
            "cancelled by request",
            message="The task was cancelled by request.",
        )
        if cancelled is None:
            # Lost the race: the task finished on its own just now.
            current = await self.get(requester, task_id)
            raise TaskTerminalError(task_id, current.status.value)
        if self._scheduler.remove(task.owner_id, task.task_id):
            self._wake_dispatcher.set()
        running = self._running.get(task.task_id)
        if running is not None:
            running.cancel_requested = True
            running.scope.cancel()
        return cancelled

    async def answer(
        self, requester: Requester, task_id: str, responses: Mapping[str, Any]
    ) -> AnswerReceipt:
        """Record answers to the task's open questions.

        Keys that are not open (never asked, already answered) are ignored. An
        answer that does not fit its question raises `InvalidAnswerError` and
        nothing is recorded. When the last open question is answered, the task
        goes back to ``working`` and is queued to continue.

        Raises:
            TaskNotFoundError: unknown, purged or not the requestor's.
            TaskTerminalError: the task already finished.
            InvalidAnswerError: an answer does not match its question.
        """
        task = await self.get(requester, task_id)
        if task.is_terminal:
            raise TaskTerminalError(task_id, task.status.value)
        open_requests = {
            r.key: r
            for r in await self.journal.input_requests(task.task_id)
            if r.is_open
        }
        valid: dict[str, dict[str, Any]] = {}
        ignored: list[str] = []
        for key, response in responses.items():
            request = open_requests.get(key)
            if request is None:
                ignored.append(key)
                continue
            problem = check_response(request.method, request.params, response)
            if problem is not None:
                raise InvalidAnswerError(task_id, key, problem)
            valid[key] = dict(response)
        if not valid:
            return AnswerReceipt([], ignored, resumed=False)
        return await self._record_answers(task, valid, ignored)

    async def _record_answers(
        self, task: Task, answers: dict[str, dict[str, Any]], ignored: list[str]
    ) -> AnswerReceipt:
        accepted, resumed = await self.journal.answer(
            task.task_id, answers, self._clock()
        )
        ignored = ignored + [key for key in answers if key not in accepted]
        if resumed is not None:
            self._scheduler.push(resumed.owner_id, resumed.task_id)
            self._wake_dispatcher.set()
            self._publish(resumed, await self.journal.request_meta(resumed.task_id))
        return AnswerReceipt(accepted, ignored, resumed=resumed is not None)

    async def _finish(
        self,
        task_id: TaskId,
        owner: OwnerId,
        status: TaskStatus,
        reason: str,
        *,
        message: str | None = None,
        outcome: Outcome | None = None,
    ) -> Task | None:
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
        self._release_backlog(owner)
        running = self._running.get(task_id)
        if running is not None:
            request_meta = running.request_meta
        else:  # not running (queued, parked, waiting): a cold path, read it back
            request_meta = await self.journal.request_meta(task_id)
        self._publish(task, request_meta)
        return task

    def _release_backlog(self, owner: OwnerId) -> None:
        remaining = self._unfinished.get(owner, 0) - 1
        if remaining > 0:
            self._unfinished[owner] = remaining
        else:
            self._unfinished.pop(owner, None)

    # ------------------------------------------------------------- execution

    async def _dispatch_loop(self, work: TaskGroup) -> None:
        while not self._draining:
            self._wake_dispatcher = anyio.Event()
            while not self._draining and (picked := self._scheduler.next()) is not None:
                work.start_soon(self._run, *picked)
            await self._wake_dispatcher.wait()

    async def _run(self, owner: OwnerId, task_id: TaskId) -> None:
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
            self._scheduler.release(owner)
            self._wake_dispatcher.set()
            self._active_runs -= 1
            if self._active_runs == 0:
                self._idle.set()

    async def _fail_quietly(self, owner: OwnerId, task_id: TaskId) -> None:
        message = "Internal error while running the task; see the server log"
        try:
            await self._finish(
                task_id, owner, TaskStatus.FAILED, "engine error",
                message=message, outcome=Outcome(error={"code": INTERNAL_ERROR, "message": message}),
            )  # fmt: skip
        except Exception:
            logger.exception("could not record the failure of task %s", task_id)

    async def _claim_and_execute(self, owner: OwnerId, task_id: TaskId) -> None:
        record = await self.journal.claim(
            task_id, self._holder, self._clock() + LEASE_SECONDS
        )
        if record is None:
            return  # cancelled (or finished) while it waited in the queue
        spec = self.tools.get(record.tool_name)
        if spec is None:
            message = f"Tool {record.tool_name!r} is no longer served"
            error = {"code": -32602, "message": f"Unknown tool: {record.tool_name!r}"}
            await self._finish(
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
        now = self._clock()
        waits = [
            (name, self._budget(name).available_in(now, requests))
            for name, requests in spec.budgets.items()
        ]
        name, wait = max(waits, key=lambda w: w[1], default=("", 0.0))
        if wait <= 0:
            return False
        await self._park(
            record.task_id, record.owner_id, now + wait, _budget_message(name, wait)
        )
        return True

    async def _execute(self, spec: ToolSpec, record: RunRecord) -> None:
        task_id, owner = record.task_id, record.owner_id
        ctx = RunContext(
            self,
            task_id,
            owner,
            self.settings.tool_config.get(spec.name, {}),
            record.request_meta,
            attempt=record.attempts,
        )
        if record.attempts > 1 or record.retries > 0:
            # A re-run: replay what earlier runs recorded. A first run has nothing.
            ctx.recorded_steps = await self.journal.steps(task_id)
            ctx.recorded_questions = {
                r.key: r for r in await self.journal.input_requests(task_id)
            }
        running = _Running(owner, anyio.CancelScope(), record.request_meta)
        self._running[task_id] = running
        try:
            verdict: Outcome | Retry | None = None
            with running.scope:
                try:
                    verdict = await execute(
                        spec, ctx, record.arguments, self._thread_limiter
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
            del self._running[task_id]

    async def _complete(
        self, task_id: TaskId, owner: OwnerId, outcome: Outcome
    ) -> None:
        status, message = TaskStatus.COMPLETED, None
        if outcome.error is not None:
            status, message = TaskStatus.FAILED, str(outcome.error.get("message"))
        await self._finish(
            task_id, owner, status, "tool returned", message=message, outcome=outcome
        )

    async def _retry(self, spec: ToolSpec, record: RunRecord, retry: Retry) -> None:
        attempt = record.retries + 1
        if attempt >= spec.max_attempts:
            message = f"Gave up after {attempt} attempts: {retry.reason}"
            error = {"code": INTERNAL_ERROR, "message": message}
            await self._finish(
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
        await self._park(
            record.task_id, record.owner_id, self._clock() + delay, message, retry=True
        )

    async def _park(
        self,
        task_id: TaskId,
        owner: OwnerId,
        until: float,
        message: str,
        *,
        retry: bool = False,
    ) -> None:
        reason = "retry scheduled" if retry else "waiting for budget"
        if await self.journal.park(
            task_id, until, message, reason, self._clock(), retry=retry
        ):
            self._timers.add(until, "wake", task_id, owner)

    async def _fire(self, timer: Timer) -> None:
        try:
            if timer.kind == "wake":
                if await self.journal.requeue(
                    timer.task_id, None, self._clock(), reason="wait over"
                ):
                    self._scheduler.push(timer.owner_id, timer.task_id)
                    self._wake_dispatcher.set()
            else:
                task = await self.journal.get(timer.task_id)
                if task is not None and not task.is_terminal:
                    await self._record_answers(
                        task, {timer.key: dict(TIMEOUT_RESPONSE)}, []
                    )
        except Exception:
            logger.exception("timer for task %s failed", timer.task_id)

    async def fire_due_timers(self) -> int:
        """Fire due timers now (the timer loop does this by itself; for tests)."""
        return await self._timers.fire_due(self._fire)

    # ------------------------------------------- the engine side of RunContext

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
                self._timers.add(
                    request.expires_at,
                    "question",
                    ctx.task_id,
                    ctx.owner_id,
                    request.key,
                )
        self._publish(task, ctx.request_meta)

    def take_budget(self, budget: str, requests: float, tokens: float) -> float:
        """Take from a budget now, or return the seconds until it has room."""
        return self._budget(budget).try_take(self._clock(), requests, tokens)

    async def wait_for_budget(
        self, ctx: RunContext, budget: str, seconds: float
    ) -> None:
        """Park the task until the budget has room (called by `RunContext.acquire`)."""
        await self._park(
            ctx.task_id,
            ctx.owner_id,
            self._clock() + seconds,
            _budget_message(budget, seconds),
        )

    def _budget(self, name: str) -> Budget:
        budget = self._budgets.get(name)
        if budget is None:
            raise KeyError(f"no budget named {name!r} in the config ([budgets.{name}])")
        return budget

    # ----------------------------------------------------------- housekeeping

    async def _heartbeat_loop(self) -> None:
        while True:
            await anyio.sleep(LEASE_SECONDS / 3)
            try:
                await self.heartbeat()
            except Exception:
                logger.exception("heartbeat failed")

    async def heartbeat(self) -> None:
        """Renew this process's leases, then recover tasks whose lease ran out.

        Live work always has its lease renewed here first, so an expired lease
        means the worker is gone (a crashed process sharing the database, or a
        run lost to a bug); such a task is recovered by its tool's policy
        rather than left ``working`` forever.
        """
        now = self._clock()
        if self._running:
            await self.journal.renew_leases(self._holder, now + LEASE_SECONDS)
        for task in await self.journal.expired_leases(now):
            if task.task_id not in self._running:
                logger.warning("task %s lost its worker; recovering it", task.task_id)
                await self._recover_orphan(task, now)
                self._wake_dispatcher.set()

    async def _sweep_loop(self) -> None:
        while True:
            await anyio.sleep(self.settings.sweep_interval_seconds)
            try:
                await self.sweep()
            except Exception:
                logger.exception("sweep failed")

    async def sweep(self) -> list[TaskId]:
        """Purge terminal tasks whose retention has ended; return their ids."""
        purged = await self.journal.purge_expired(self._clock())
        if purged:
            logger.info("purged %d expired tasks", len(purged))
        return purged

    def statistics(self) -> RuntimeStatistics:
        """Occupancy of the scheduler, timers and the journal writer."""
        writer = getattr(self.journal, "writer", None)
        return RuntimeStatistics(
            scheduler=self._scheduler.statistics(),
            unfinished=sum(self._unfinished.values()),
            running=len(self._running),
            timers=len(self._timers),
            journal_batches=getattr(writer, "batches", 0),
            journal_writes=getattr(writer, "writes", 0),
        )


def _is_task_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is one task's failure (not cancellation or an exit)."""
    if isinstance(exc, BaseExceptionGroup):
        group = cast("BaseExceptionGroup[BaseException]", exc)
        return group.subgroup(anyio.get_cancelled_exc_class()) is None
    return isinstance(exc, Exception)


def _budget_message(name: str, seconds: float) -> str:
    return f"Waiting {seconds:.1f} s for room in budget {name!r}"
