"""`TaskRuntime`: the engine. Owns the journal, the scheduler and running work.

Wire-neutral: bindings call `submit`, `get`, `wait_terminal`, `list`, `cancel`
with a `Requester`, and subscribe to status and progress events. The runtime
never imports ``mcp``.

Lifecycle of a task::

    submit ──► queued (status working) ──► running ──► completed | failed
                  │                           │
                  └──── cancel ───────────────┴──► cancelled

The journal row is the truth; the in-memory scheduler is rebuilt from it at
start-up. Work runs in one task group that lives as long as the runtime,
independent of any client connection.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import struct
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol, final

import anyio
from anyio.abc import TaskGroup

from mcp_tasks._config import Settings
from mcp_tasks._exceptions import (
    CapacityError,
    InvalidCursorError,
    TaskNotFoundError,
    TaskTerminalError,
    UnknownToolError,
)
from mcp_tasks._execution import execute
from mcp_tasks._model import Outcome, OwnerId, Task, TaskId, TaskStatus
from mcp_tasks._scheduler import FairScheduler, SchedulerStatistics
from mcp_tasks._toolapi import ToolSpec
from mcp_tasks.journal import Journal, NewTask, SqliteJournal, Transition

logger = logging.getLogger("mcp_tasks.runtime")

#: How long a synchronous (non-task) call's journal row is kept after it ends.
SYNC_CALL_RETENTION_SECONDS: Final = 60.0
#: A worker's lease; renewed while the task runs (crash recovery uses it).
LEASE_SECONDS: Final = 60.0
DEFAULT_PAGE_SIZE: Final = 50

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Requester:
    """Who is asking, as the binding established it.

    ``owner_id`` is the principal tasks are bound to and the fairness key.
    When ``scoped`` is False (HTTP without auth) task ids act as bearer
    capabilities: any requestor holding an id may read or cancel that task,
    and listing is refused.
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


class RuntimeListener(Protocol):
    """Receives runtime events. Must not block: it is called on the engine's path."""

    def task_changed(self, task: Task, request_meta: Mapping[str, Any]) -> None:
        """A task moved to a new status (already committed)."""

    def task_progress(self, event: ProgressEvent) -> None:
        """A running task reported progress."""


@dataclass(frozen=True, slots=True)
class RuntimeStatistics:
    """A snapshot for monitoring and benchmarks."""

    scheduler: SchedulerStatistics
    unfinished: int
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


@dataclass(eq=False)
class _TaskContext:
    """The `TaskContext` handed to async tool bodies (and wrapped for threads)."""

    runtime: TaskRuntime
    task_id: TaskId
    owner_id: OwnerId
    config: Mapping[str, Any]
    request_meta: Mapping[str, Any] = field(default_factory=lambda: dict[str, Any]())

    async def report_progress(
        self, progress: float, total: float | None = None, message: str | None = None
    ) -> None:
        if message is not None:
            self.runtime.note_status(self.task_id, message)
        self.runtime.publish_progress(
            ProgressEvent(
                self.task_id, self.owner_id, progress, total, message, self.request_meta
            )
        )

    async def set_status(self, message: str) -> None:
        self.runtime.note_status(self.task_id, message)


def _fixed_clock() -> float:
    return time.time()


@final
class TaskRuntime:
    """The durable task engine. Open one with `TaskRuntime.open`."""

    def __init__(
        self,
        journal: Journal,
        settings: Settings,
        tools: Mapping[str, ToolSpec],
        *,
        clock: Clock = _fixed_clock,
        cursor_secret: bytes = b"",
    ) -> None:
        self.journal = journal
        self.settings = settings
        self.tools = dict(tools)
        self._clock = clock
        self._cursor_secret = cursor_secret
        self._scheduler = FairScheduler(
            settings.workers, lambda owner: settings.limits_for(owner).concurrency
        )
        self._unfinished: dict[OwnerId, int] = {}
        self._running: dict[TaskId, _Running] = {}
        self._changed: dict[TaskId, anyio.Event] = {}
        self._wake_dispatcher = anyio.Event()
        self._listeners: list[RuntimeListener] = []
        self._holder = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._work: TaskGroup | None = None
        self._thread_limiter = anyio.CapacityLimiter(settings.workers)

    # ----------------------------------------------------------------- opening

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        db_path: Path | str,
        settings: Settings,
        tools: Mapping[str, ToolSpec],
        *,
        clock: Clock = _fixed_clock,
    ) -> AsyncGenerator[TaskRuntime]:
        """Open the journal at ``db_path``, recover unfinished tasks, start workers."""
        async with SqliteJournal.open(
            db_path, synchronous=settings.synchronous
        ) as journal:
            secret = await journal.secret("cursor")
            runtime = cls(journal, settings, tools, clock=clock, cursor_secret=secret)
            async with runtime.running():
                yield runtime

    @asynccontextmanager
    async def running(self) -> AsyncGenerator[None]:
        """Run the dispatcher and sweeper until the block exits, then shut down."""
        await self._recover()
        async with anyio.create_task_group() as service:
            async with anyio.create_task_group() as work:
                self._work = work
                service.start_soon(self._dispatch_loop, work)
                service.start_soon(self._sweep_loop)
                try:
                    yield
                finally:
                    with anyio.CancelScope(shield=True):
                        await self._shutdown(work)
            service.cancel_scope.cancel()

    async def _recover(self) -> None:
        # Every unfinished task goes back to the queue in submission order. A task
        # that was running when the process stopped starts again from the top.
        now = self._clock()
        for task in await self.journal.unfinished():
            self._unfinished[task.owner_id] = self._unfinished.get(task.owner_id, 0) + 1
            if task.status is TaskStatus.WORKING:
                if task.phase != "queued":
                    await self.journal.requeue(
                        task.task_id, "Resuming after a server restart", now
                    )
                self._scheduler.push(task.owner_id, task.task_id)

    async def _shutdown(self, work: TaskGroup) -> None:
        # Stop running bodies, then put their tasks back in the queue so that the
        # next start picks them up: nothing accepted is left hanging.
        interrupted = list(self._running)
        work.cancel_scope.cancel()
        now = self._clock()
        for task_id in interrupted:
            await self.journal.requeue(
                task_id, "Interrupted by server shutdown; will resume at restart", now
            )

    # --------------------------------------------------------------- listeners

    def subscribe(self, listener: RuntimeListener) -> Callable[[], None]:
        """Register ``listener`` for events; returns a function that unregisters it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _publish(self, task: Task, request_meta: Mapping[str, Any]) -> None:
        event = self._changed.pop(task.task_id, None)
        if event is not None:
            event.set()
        for listener in list(self._listeners):
            try:
                listener.task_changed(task, request_meta)
            except Exception:
                logger.exception("listener failed on task %s", task.task_id)

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
        """Run a call through the engine and wait for it: the non-task path.

        The call is journaled (unlisted, kept briefly) and scheduled fairly like
        any task. If the caller goes away, the work is cancelled.
        """
        task = await self.submit(
            requester, tool_name, arguments, request_meta=request_meta, listed=False
        )
        try:
            return await self.wait_terminal(requester, task.task_id)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                try:
                    await self.cancel(requester, task.task_id)
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
        from dataclasses import replace

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
        while True:
            changed = self._changed.setdefault(TaskId(task_id), anyio.Event())
            task = await self.get(requester, task_id)
            if task.is_terminal:
                return task
            await changed.wait()

    async def wait_change(self, requester: Requester, task_id: str, seen: Task) -> Task:
        """Block until the task differs from ``seen`` in status; return it."""
        while True:
            changed = self._changed.setdefault(TaskId(task_id), anyio.Event())
            task = await self.get(requester, task_id)
            if task.status is not seen.status or task.is_terminal:
                return task
            await changed.wait()

    async def list(
        self,
        requester: Requester,
        cursor: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
    ) -> tuple[list[Task], str | None]:
        """One page of the requestor's tasks, oldest first, and the next cursor."""
        if not requester.scoped:
            raise PermissionError("listing needs an identified requestor")
        after = 0 if cursor is None else self._decode_cursor(requester.owner_id, cursor)
        rows = await self.journal.list_owned(requester.owner_id, after, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        tasks = [self._with_live_status(task) for _, task in rows]
        next_cursor = (
            self._encode_cursor(requester.owner_id, rows[-1][0]) if more else None
        )
        return tasks, next_cursor

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

    # ------------------------------------------------------------------ cancel

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
        self._publish(task, running.request_meta if running else {})
        return task

    def _release_backlog(self, owner: OwnerId) -> None:
        remaining = self._unfinished.get(owner, 0) - 1
        if remaining > 0:
            self._unfinished[owner] = remaining
        else:
            self._unfinished.pop(owner, None)

    # --------------------------------------------------------------- execution

    async def _dispatch_loop(self, work: TaskGroup) -> None:
        while True:
            self._wake_dispatcher = anyio.Event()
            while (picked := self._scheduler.next()) is not None:
                work.start_soon(self._run, *picked)
            await self._wake_dispatcher.wait()

    async def _run(self, owner: OwnerId, task_id: TaskId) -> None:
        try:
            lease_until = self._clock() + LEASE_SECONDS
            record = await self.journal.claim(task_id, self._holder, lease_until)
            if record is None:
                return  # cancelled (or finished) while it waited in the queue
            spec = self.tools.get(record.tool_name)
            if spec is None:
                await self._finish(
                    task_id,
                    owner,
                    TaskStatus.FAILED,
                    "tool not served",
                    message=f"Tool {record.tool_name!r} is no longer served",
                    outcome=Outcome(
                        error={
                            "code": -32602,
                            "message": f"Unknown tool: {record.tool_name!r}",
                        }
                    ),
                )
                return
            await self._execute(
                spec, owner, task_id, record.arguments, record.request_meta
            )
        finally:
            self._scheduler.release(owner)
            self._wake_dispatcher.set()

    async def _execute(
        self,
        spec: ToolSpec,
        owner: OwnerId,
        task_id: TaskId,
        arguments: dict[str, Any],
        request_meta: Mapping[str, Any],
    ) -> None:
        config = self.settings.tool_config.get(spec.name, {})
        ctx = _TaskContext(self, task_id, owner, config, request_meta)
        running = _Running(owner, anyio.CancelScope(), request_meta)
        self._running[task_id] = running
        try:
            outcome: Outcome | None = None
            with running.scope:
                outcome = await execute(spec, ctx, arguments, self._thread_limiter)
            if outcome is None or running.cancel_requested:
                return  # `cancel` already recorded the task as cancelled
            status = TaskStatus.COMPLETED
            message = None
            if outcome.error is not None:
                status, message = TaskStatus.FAILED, str(outcome.error.get("message"))
            with anyio.CancelScope(shield=True):
                await self._finish(
                    task_id,
                    owner,
                    status,
                    "tool returned",
                    message=message,
                    outcome=outcome,
                )
        finally:
            del self._running[task_id]

    def note_status(self, task_id: TaskId, message: str) -> None:
        """Record a running task's latest status message (shown by `get`)."""
        running = self._running.get(task_id)
        if running is not None:
            running.status_message = message

    def publish_progress(self, event: ProgressEvent) -> None:
        """Hand a progress report to every listener."""
        for listener in list(self._listeners):
            try:
                listener.task_progress(event)
            except Exception:
                logger.exception("listener failed on progress of %s", event.task_id)

    async def _sweep_loop(self) -> None:
        while True:
            await anyio.sleep(self.settings.sweep_interval_seconds)
            await self.sweep()

    async def sweep(self) -> list[TaskId]:
        """Purge terminal tasks whose retention has ended; return their ids."""
        purged = await self.journal.purge_expired(self._clock())
        if purged:
            logger.info("purged %d expired tasks", len(purged))
        return purged

    def statistics(self) -> RuntimeStatistics:
        """Occupancy of the scheduler and the journal writer."""
        writer = getattr(self.journal, "writer", None)
        return RuntimeStatistics(
            scheduler=self._scheduler.statistics(),
            unfinished=sum(self._unfinished.values()),
            journal_batches=getattr(writer, "batches", 0),
            journal_writes=getattr(writer, "writes", 0),
        )
