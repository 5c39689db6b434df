"""`TaskRuntime`: the engine's facade, the one object the bindings talk to.

Wire-neutral: bindings call `submit`, `get`, `wait_terminal`, `list`,
`cancel`, `answer` with a `Requester`, and follow the change feed. The runtime
never imports ``mcp`` and never assumes it is the only process on its journal.

Lifecycle of a task (statuses as the wire shows them, phases in brackets)::

    submit ─► working [queued] ─► working [running] ─► completed | failed
                 ▲                  │    │    │
                 │   retry/budget   │    │    └─► input_required [parked]
                 └── [parked] ◄─────┘    │              │ answered
                 └───────────────────────┼──────────────┘
                                         └─► cancelled (from any non-terminal)

The journal row is the truth, and the only state shared between processes.
Work runs in one task group that lives as long as the runtime, independent of
any client connection. A run that must wait records why and ends
(`TaskSuspended`); the task runs again from the top when it may continue, on
whichever process claims it, replaying what the journal recorded.

The work is split by role: `_engine` writes every change, `_dispatch` claims
work, `_runner` runs one task, `_leases` keeps leases and recovers lost runs,
`_timers` wakes due tasks, `_feed` follows the change feed, `_lifecycle`
starts and drains it all. This module checks who may do what and answers the
requests.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, final

import anyio

from mcp_tasks import _tokens
from mcp_tasks._config import ClientLimits, Settings
from mcp_tasks._exceptions import (
    InvalidTransitionError,
    RetryRefusedError,
    TaskNotFoundError,
    TaskTerminalError,
    UnknownToolError,
)
from mcp_tasks._model import (
    InputRequest,
    OwnerId,
    Task,
    TaskId,
    TaskStatus,
    new_task_id,
)
from mcp_tasks._questions import InvalidAnswerError, check_response
from mcp_tasks._toolapi import ToolSpec
from mcp_tasks._toolloader import check_tool_config
from mcp_tasks.engine import _leases, _lifecycle
from mcp_tasks.engine._dispatch import Dispatcher
from mcp_tasks.engine._engine import Clock, Engine
from mcp_tasks.engine._events import ChangeListener
from mcp_tasks.engine._feed import Feed
from mcp_tasks.engine._lifecycle import Parts
from mcp_tasks.engine._observer import EngineObserver
from mcp_tasks.engine._request_limits import RequestLimiter
from mcp_tasks.engine._runner import Runner
from mcp_tasks.engine._runs import Runs, StopReason
from mcp_tasks.engine._timers import Timers
from mcp_tasks.engine._tracing import TRACE_META_KEY, creating
from mcp_tasks.journal import (
    ClientLoad,
    Journal,
    NewTask,
    by_client,
    by_operator,
    open_journal,
    sealing_from,
)

#: How long a synchronous (non-task) call's journal row is kept after it ends.
SYNC_CALL_RETENTION_SECONDS: Final = 60.0
DEFAULT_PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 500


@dataclass(frozen=True, slots=True)
class Requester:
    """Who is asking, as the binding established it.

    ``owner_id`` is the principal tasks are bound to and the fairness key.
    When ``scoped`` is False (HTTP without auth) task ids act as bearer
    capabilities: any requestor holding an id may read, answer or cancel that
    task, and listing is refused. ``limits`` are the caps the binding found
    for this requestor (an OAuth token's tier); ``None``: the configured ones.
    """

    owner_id: OwnerId
    scoped: bool = True
    limits: ClientLimits | None = None
    #: Set for an operator acting on any client's task (the command line):
    #: their name, recorded as who cancelled or answered.
    operator: str | None = None

    @property
    def actor(self) -> str:
        """Who this requestor is in a task's history (the audit trail)."""
        if self.operator is not None:
            return by_operator(self.operator)
        return by_client(self.owner_id)


@dataclass(frozen=True, slots=True)
class AnswerReceipt:
    """What `TaskRuntime.answer` did with each answer."""

    accepted: list[str]
    ignored: list[str]
    resumed: bool


@dataclass(frozen=True, slots=True)
class RuntimeStatistics:
    """A snapshot of this process, for monitoring and benchmarks.

    ``running`` and ``workers`` are this process's (``running``: workers held
    by a run; a run whose tool returned frees its worker while its verdict
    commits); ``unfinished`` counts every unfinished task in the journal (all
    processes).
    """

    running: int
    workers: int
    unfinished: int
    journal_batches: int
    journal_writes: int


def queue_message(ahead: int, client_limit: int | None = None) -> str:
    """The status message of a task waiting in its client's queue.

    ``client_limit`` is the client's concurrency limit when the client is at it
    (every process counted): then that, not a busy server, holds the task.
    """
    if ahead == 0:
        where = "Queued: next in this client's queue"
    else:
        noun = "task" if ahead == 1 else "tasks"
        where = f"Queued: {ahead} {noun} ahead of it in this client's queue"
    if client_limit is not None:
        noun = "task" if client_limit == 1 else "tasks"
        return f"{where}; this client is at its limit of {client_limit} running {noun}"
    return f"{where}, waiting for a free worker"


def _with_queue_message(task: Task) -> Task:
    """A queued task with no message of its own says where it stands."""
    if task.queued_ahead is not None and task.status_message is None:
        return task.with_status_message(
            queue_message(task.queued_ahead, task.client_limit)
        )
    return task


def _wall_clock() -> float:
    return time.time()


@final
class TaskRuntime:
    """The durable task engine of one process. Open one with `TaskRuntime.open`."""

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
        self._state_key = _tokens.state_key(cursor_secret)
        engine = Engine(journal, settings, self.tools, clock)
        runs = Runs()
        self._parts = Parts(
            engine=engine,
            feed=Feed(journal, settings.feed_poll_seconds),
            runs=runs,
            dispatcher=Dispatcher(engine, settings.workers),
            runner=Runner(engine, runs, anyio.CapacityLimiter(settings.workers)),
            timers=Timers(engine),
        )
        self._requests = RequestLimiter(engine)

    # ----------------------------------------------------------------- opening

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        db: Path | str,
        settings: Settings,
        tools: Mapping[str, ToolSpec],
        *,
        clock: Clock = _wall_clock,
    ) -> AsyncGenerator[TaskRuntime]:
        """Open the journal at ``db`` (a path or URL) and run the engine on it.

        Leaving the block shuts down gracefully: nothing new is claimed,
        running tasks get ``shutdown_grace_seconds`` to finish, and the rest
        are handed back for another process or the next start.

        Raises:
            ConfigurationError: a ``[tools.NAME]`` table does not fit its tool.
            JournalError: the journal cannot be opened.
        """
        check_tool_config(tools, settings.tool_config)
        async with open_journal(
            db,
            synchronous=settings.synchronous,
            pool_size=settings.pool_size,
            listen_url=settings.listen_url,
            prepared_statements=settings.prepared_statements,
            sealing=sealing_from(settings.encryption_key_file),
        ) as journal:
            secret = await journal.secret("cursor")
            runtime = cls(journal, settings, tools, clock=clock, cursor_secret=secret)
            async with runtime.running():
                yield runtime

    @asynccontextmanager
    async def running(self) -> AsyncGenerator[None]:
        """Run the engine's loops until the block exits, then drain."""
        async with _lifecycle.serve(self._parts):
            yield

    @property
    def draining(self) -> bool:
        """Whether the runtime is shutting down (no new work or steps start)."""
        return self._parts.engine.draining

    @property
    def holder(self) -> str:
        """This process's name in the journal's leases."""
        return self._parts.engine.holder

    def now(self) -> float:
        """The runtime's clock (seconds since the epoch)."""
        return self._clock()

    # ------------------------------------------------------------ housekeeping

    async def heartbeat(self) -> None:
        """Renew this process's leases, then recover tasks whose runs are gone."""
        await _leases.heartbeat(self._parts.engine, self._parts.runs)

    async def sweep(self) -> list[TaskId]:
        """Purge terminal tasks whose retention has ended; return their ids."""
        return await self._parts.engine.purge()

    async def fire_due_timers(self) -> int:
        """Fire due timers now (the timer loop does this by itself; for tests)."""
        return await self._parts.timers.fire_due()

    async def catch_up(self) -> int:
        """Read the change feed now (it is read by itself; for tests)."""
        return await self._parts.feed.catch_up()

    async def check(self) -> None:
        """Raise `JournalError` unless the journal accepts writes (readiness)."""
        await self.journal.check()

    def statistics(self) -> RuntimeStatistics:
        """This process's workers and journal writer, and the journal's backlog."""
        parts = self._parts
        writer = getattr(self.journal, "writer", None)
        return RuntimeStatistics(
            running=parts.dispatcher.busy,
            workers=parts.dispatcher.workers,
            unfinished=0,
            journal_batches=getattr(writer, "batches", 0),
            journal_writes=getattr(writer, "writes", 0),
        )

    async def admit_request(self, requester: Requester) -> None:
        """Return once a task request of ``requester`` may go on, at its rate.

        A request over the client's rate waits for its turn (at most
        ``request_delay_seconds``), across every process on the journal.

        Raises:
            RateLimitedError: the client must wait longer; says how long.
        """
        await self._requests.admit(requester.owner_id)

    async def load(self, owner: OwnerId | None = None) -> list[ClientLoad]:
        """Each client's queued, running and waiting tasks, from the journal."""
        return await self.journal.load(owner)

    def observe(self, observer: EngineObserver) -> None:
        """Tell ``observer`` of the runs this process starts and the tasks it ends."""
        self._parts.engine.observers.append(observer)

    def subscribe(self, listener: ChangeListener) -> Callable[[], None]:
        """Follow the change feed; returns a function that unsubscribes."""
        return self._parts.feed.subscribe(listener)

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
        task_id: TaskId | None = None,
    ) -> Task:
        """Durably accept a call as a task and queue it; return the new task.

        Returns only after the task is committed, so a `get` right after
        succeeds, from any process. ``task_id`` may be chosen beforehand (with
        `new_task_id`) by a caller that must know it before the commit.

        Raises:
            UnknownToolError: no such tool.
            InvalidArgumentsError: the arguments do not match the tool's schema.
            CapacityError: the client's backlog is full; nothing was stored.
        """
        spec = self.tool(tool_name)
        spec.validate(arguments)
        owner = requester.owner_id
        limits = requester.limits or self.settings.limits_for(owner)
        task_id = task_id or new_task_id()
        meta = dict(request_meta or {})
        with creating(task_id, tool_name, owner) as trace_context:
            if trace_context is not None:
                meta[TRACE_META_KEY] = trace_context
            new = NewTask(
                task_id=task_id,
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
                concurrency=limits.concurrency,
                backlog=limits.backlog,
                listed=listed,
                request_meta=meta,
            )
            task = await self._parts.engine.submit(new)
        self._parts.dispatcher.wake()
        return task

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
            return await self.wait_terminal(requester, task.task_id, outcome=True)

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

    async def get(
        self, requester: Requester, task_id: str, *, outcome: bool = False
    ) -> Task:
        """The task as its requestor may see it; raise `TaskNotFoundError`.

        The outcome is loaded only with ``outcome=True`` (and only once the
        task has ended).
        """
        task = await self.journal.get(TaskId(task_id), outcome=outcome)
        if task is None or (requester.scoped and task.owner_id != requester.owner_id):
            raise TaskNotFoundError(task_id)
        return _with_queue_message(task)

    async def wait_terminal(
        self, requester: Requester, task_id: str, *, outcome: bool = True
    ) -> Task:
        """Block until the task is terminal; return it (with its outcome, by default)."""
        return await self.wait_for(
            requester, task_id, lambda t: t.is_terminal, outcome=outcome
        )

    async def wait_settled(self, requester: Requester, task_id: str) -> Task:
        """Block until the task is terminal or waits for input; return it."""
        return await self.wait_for(
            requester,
            task_id,
            lambda t: t.is_terminal or t.status is TaskStatus.INPUT_REQUIRED,
        )

    async def wait_change(self, requester: Requester, task_id: str, seen: Task) -> Task:
        """Block until the task moved since ``seen`` (any change); return it."""
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
        self,
        requester: Requester,
        task_id: str,
        done: Callable[[Task], bool],
        *,
        outcome: bool = False,
    ) -> Task:
        """Block until ``done(task)`` holds for the task as `get` shows it; return it.

        Re-checked after every change of the task, whichever process made it.
        """

        async def read() -> Task:
            task = await self.get(requester, task_id)
            if outcome and task.is_terminal:
                return await self.get(requester, task_id, outcome=True)
            return task

        return await self._parts.feed.wait_until(TaskId(task_id), read, done)

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
        after = (
            0
            if cursor is None
            else _tokens.decode_cursor(self._cursor_secret, requester.owner_id, cursor)
        )
        rows = await self.journal.list_owned(requester.owner_id, after, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        tasks = [_with_queue_message(task) for _, task in rows]
        next_cursor = (
            _tokens.encode_cursor(self._cursor_secret, requester.owner_id, rows[-1][0])
            if more
            else None
        )
        return tasks, next_cursor

    def seal(
        self, owner: OwnerId, payload: Mapping[str, Any], ttl_seconds: float
    ) -> str:
        """An opaque, integrity-protected token carrying ``payload`` for ``owner``.

        Used for 2026-07-28 ``requestState``: bound to the requestor, expiring,
        and refused by `unseal` if altered in any way.
        """
        expires_at = self._clock() + ttl_seconds
        return _tokens.seal(self._state_key, owner, payload, expires_at)

    def unseal(self, owner: OwnerId, token: str) -> dict[str, Any] | None:
        """The payload of a `seal` token, or None if forged, altered, expired or not ``owner``'s."""
        return _tokens.unseal(self._state_key, owner, token, self._clock())

    # ------------------------------------------------------- cancel and answer

    async def cancel(
        self,
        requester: Requester,
        task_id: str,
        *,
        reason: str = "cancelled by request",
    ) -> Task:
        """Cancel a task: recorded ``cancelled`` before this returns.

        Its run, on whichever process, is stopped as soon as that process reads
        the change (at once here; within its feed poll elsewhere, and at the
        latest at its next heartbeat). ``reason`` goes into the task's history
        (who cancelled it: ``cancelled by operator`` from the command line).

        Raises:
            TaskNotFoundError: unknown, purged or not the requestor's.
            TaskTerminalError: the task had already finished.
        """
        task = await self.get(requester, task_id)
        if task.is_terminal:
            raise TaskTerminalError(task_id, task.status.value)
        cancelled = await self._parts.engine.cancel(
            task.task_id, reason, requester.actor
        )
        if cancelled is None:
            # Lost the race: the task finished on its own just now.
            current = await self.get(requester, task_id)
            raise TaskTerminalError(task_id, current.status.value)
        run = self._parts.runs.get(task.task_id)
        if run is not None:
            run.stop(StopReason.CANCELLED)
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
        accepted, resumed = await self._parts.engine.answer(
            task.task_id, valid, requester.actor
        )
        ignored = ignored + [key for key in valid if key not in accepted]
        return AnswerReceipt(accepted, ignored, resumed=resumed is not None)

    async def retry(
        self, requester: Requester, task_id: str, *, reason: str = "retried by request"
    ) -> Task:
        """Queue a ``failed`` task again as a new attempt (operators).

        Its recorded steps are replayed, as when a run is resumed, unless its
        tool restarts interrupted work (``recovery="restart"``): then they are
        forgotten. ``reason`` goes into the task's history.

        Raises:
            TaskNotFoundError: unknown, purged or not the requestor's.
            InvalidTransitionError: the task is not ``failed``.
            RetryRefusedError: its tool is not served here, or has
                ``recovery="fail"`` (interrupted work must not run again).
        """
        task = await self.get(requester, task_id)
        if task.status is not TaskStatus.FAILED:
            raise InvalidTransitionError(task_id, task.status.value, "working")
        spec = self.tools.get(task.tool_name)
        if spec is None:
            raise RetryRefusedError(task_id, f"tool {task.tool_name!r} is not loaded")
        if spec.recovery == "fail":
            raise RetryRefusedError(
                task_id,
                f"tool {spec.name!r} does not run interrupted work again "
                '(recovery="fail")',
            )
        retried = await self._parts.engine.retry(
            task.task_id,
            reason,
            requester.actor,
            forget_steps=spec.recovery == "restart",
        )
        if retried is None:
            # Lost a race: another operator retried it first.
            current = await self.get(requester, task_id)
            raise InvalidTransitionError(task_id, current.status.value, "working")
        self._parts.dispatcher.wake()
        return retried
