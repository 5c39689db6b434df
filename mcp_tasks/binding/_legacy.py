"""The 2025-11-25 core tasks wire (SEP-1686) over the engine.

The client opts in per call with ``params.task``; the server answers
``{"task": {...}}`` at once and the client polls ``tasks/get``, blocks on
``tasks/result``, lists with ``tasks/list`` and cancels with ``tasks/cancel``.

mcp 2.3 validates every 2025-11-25 ``tools/call`` handler result against
``CallToolResult``, so task creation happens in a server middleware that
answers before the handler chain (the runner trusts a short-circuited result).
Status changes are pushed as ``notifications/tasks/status`` to the owner's live
connections, and progress through the call's original ``progressToken``.

Wire mapping decisions (spec-notes.md has the full list):
- a tool result with ``isError: true`` is stored as ``completed`` and shown here
  as ``failed``, as this generation's spec requires;
- ``tasks/result`` of a task cancelled before producing anything returns a
  tool error result saying so.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import replace
from typing import Any, Final, cast

import anyio
import mcp_types as types
from mcp.server.connection import Connection
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.shared.exceptions import MCPError

from mcp_tasks._exceptions import McpTasksError, TaskSupportError
from mcp_tasks._model import OwnerId, Task, TaskId, TaskStatus
from mcp_tasks._toolapi import ProtocolError, ToolError, ToolSpec
from mcp_tasks.binding._common import (
    LEGACY_VERSION,
    RELATED_TASK_META,
    PushChannels,
    ReplayedError,
    Requesters,
    check_arguments_size,
    connection_of,
    invalid_params,
    iso,
    milliseconds,
    rpc_error,
)
from mcp_tasks.binding._copies import Copies
from mcp_tasks.binding._delivery import (
    ask_open_questions,
    request_channel,
    request_send,
    serve_until_terminal,
    standalone_channel,
)
from mcp_tasks.binding._mrtr import capabilities_json
from mcp_tasks.engine import Change, ChangeKind, Requester, TaskRuntime, run_preflight

logger = logging.getLogger("mcp_tasks.binding.legacy")

CANCELLED_TEXT = "The task was cancelled before it produced a result."
#: How many preflight rounds one task-augmented call may take.
MAX_PREFLIGHT_ROUNDS = 10
#: The largest ``task.ttl`` accepted (ms): 2^53 - 1, the largest integer every
#: JSON reader holds exactly (about 285,000 years; ``max_ttl_seconds`` caps it).
MAX_TTL_MS: Final = 2**53 - 1

Job = Callable[[], Coroutine[Any, Any, None]]

#: Where a session keeps the progress tokens of the tasks it created.
_PROGRESS_TOKENS = "mcp_tasks.progress_tokens"


Preflight = Callable[
    [ToolSpec, Mapping[str, Any], Mapping[str, Any]], Awaitable[dict[str, Any]]
]
"""Asks a tool's preflight questions: (tool, arguments, client capabilities) -> answers."""


def wire_status(task: Task) -> str:
    """The status this generation shows: tool errors are ``failed`` here."""
    if task.status is TaskStatus.COMPLETED and task.tool_error is not None:
        return TaskStatus.FAILED.value
    return task.status.value


def task_json(task: Task) -> dict[str, Any]:
    """A task in the 2025-11-25 ``Task`` shape."""
    data: dict[str, Any] = {
        "taskId": task.task_id,
        "status": wire_status(task),
        "createdAt": iso(task.created_at),
        "lastUpdatedAt": iso(task.last_updated_at),
        "ttl": milliseconds(task.ttl_seconds),
        "pollInterval": milliseconds(task.poll_interval_seconds),
    }
    message = task.status_message
    if message is None and task.tool_error is not None:
        message = task.tool_error
    if message is not None:
        data["statusMessage"] = message
    return data


def recorded_result(task: Task) -> Mapping[str, Any] | None:
    """The call's recorded result; None if it ended without one (cancelled first).

    Raises:
        ReplayedError: the call ended in a JSON-RPC error; it is answered again
            exactly as recorded.
    """
    outcome = task.outcome
    if outcome is not None and outcome.error is not None:
        error = outcome.error
        raise ReplayedError(
            int(error["code"]), str(error["message"]), error.get("data")
        )
    return None if outcome is None else outcome.result


def result_json(task: Task) -> dict[str, Any]:
    """The ``tasks/result`` answer of a finished ``task`` (read with its outcome).

    Raises:
        ReplayedError: as `recorded_result`.
    """
    recorded = recorded_result(task)
    if recorded is None:
        result: dict[str, Any] = {
            "content": [{"type": "text", "text": CANCELLED_TEXT}],
            "isError": True,
        }
    else:
        result = dict(recorded)
    meta = result.get("_meta")
    related = {RELATED_TASK_META: {"taskId": task.task_id}}
    result["_meta"] = {**(meta if isinstance(meta, dict) else {}), **related}
    return result


def _ended(status: TaskStatus) -> str:
    """Why a question of a task is withdrawn once the task is over."""
    if status is TaskStatus.CANCELLED:
        return "The task was cancelled."
    return f"The task has ended ({status.value})."


def tasks_capability(identified: bool) -> types.ServerTasksCapability:
    """The ``capabilities.tasks`` this server advertises on 2025-11-25.

    ``list`` only where requestors are identified: listing must never show one
    client's tasks to another.
    """
    return types.ServerTasksCapability(
        list=types.TasksListCapability() if identified else None,
        cancel=types.TasksCancelCapability(),
        requests=types.ServerTasksRequestsCapability(
            tools=types.TasksToolsCapability(call=types.TasksCallCapability())
        ),
    )


def _ttl_seconds(task_params: object) -> float | None:
    """The retention a task-augmented call asks for, in seconds (``None``: default).

    Anything but a finite number of milliseconds in ``[0, MAX_TTL_MS]`` is
    refused before anything is stored: NaN would store a task that is never
    purged, Infinity one whose ttl cannot be shown again.
    """
    if not isinstance(task_params, Mapping):
        raise invalid_params("task", "must be an object")
    ttl: object = cast("Mapping[str, object]", task_params).get("ttl")
    if ttl is None:
        return None
    # NaN fails both comparisons; Infinity and 1e400 (which arrives as it) the second.
    if (
        isinstance(ttl, bool)
        or not isinstance(ttl, int | float)
        or not 0 <= ttl <= MAX_TTL_MS
    ):
        raise invalid_params(
            "task.ttl",
            f"must be a finite number of milliseconds from 0 to {MAX_TTL_MS}",
        )
    return ttl / 1000.0


class LegacyTasks:
    """Serves the 2025-11-25 task methods and pushes its notifications."""

    def __init__(
        self, runtime: TaskRuntime, requesters: Requesters, pushes: PushChannels
    ) -> None:
        self._runtime = runtime
        self._requesters = requesters
        self._pushes = pushes
        # The connection that created each task: its progressToken lives there.
        self._origins: weakref.WeakValueDictionary[TaskId, Connection] = (
            weakref.WeakValueDictionary()
        )
        #: The questions out to sessions: one copy per session, withdrawn once
        #: settled. Shared with synchronous calls (`_server`).
        self.copies = Copies()
        send, receive = anyio.create_memory_object_stream[Job](math.inf)
        self._jobs_in = send
        self._jobs_out = receive
        self._statuses: deque[Change] = deque()
        self._status_ready = anyio.Event()

    async def run(self) -> None:
        """Run push jobs (questions, status notifications) until cancelled."""
        async with anyio.create_task_group() as tg, self._jobs_in, self._jobs_out:
            tg.start_soon(self._push_statuses)
            async for job in self._jobs_out:
                tg.start_soon(job)

    # ----------------------------------------------------------- task creation

    async def middleware(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        """Answer task-augmented ``tools/call`` on 2025-11-25; pass the rest on.

        On every other version ``task`` is not an opt-in but an unknown field,
        and is dropped before the SDK validates the params against a model that
        still types it (SEP-2663: "servers MUST ignore it"; TASKS-2025 l.392).
        """
        params = ctx.params
        if ctx.method != "tools/call" or not isinstance(params, Mapping):
            return await call_next(ctx)
        if ctx.protocol_version != LEGACY_VERSION:
            if "task" in params:
                params = {k: v for k, v in params.items() if k != "task"}
                return await call_next(replace(ctx, params=params))
            return await call_next(ctx)
        if params.get("task") is not None and ctx.session.client_params is not None:
            return await self._create_task(ctx, params)
        return await call_next(ctx)

    async def _create_task(
        self, ctx: ServerRequestContext[Any, Any], params: Mapping[str, Any]
    ) -> dict[str, Any]:
        async def preflight(
            spec: ToolSpec,
            arguments: Mapping[str, Any],
            capabilities: Mapping[str, Any],
        ) -> dict[str, Any]:
            return await self._preflight(ctx, spec, arguments, capabilities)

        return await self.create_task(
            self._requesters.of(ctx), connection_of(ctx), params, preflight
        )

    async def create_task(
        self,
        requester: Requester,
        connection: Connection,
        params: Mapping[str, Any],
        preflight: Preflight | None = None,
    ) -> dict[str, Any]:
        """Answer a task-augmented ``tools/call`` on ``connection``: the created task.

        ``preflight`` asks a tool's preflight questions on the call's own
        stream; without it, a tool with a preflight is a bug of the caller.
        """
        # This path answers before the SDK validates params (as it does for a
        # plain call), so validate with the same model here: both paths accept
        # the same params (``arguments: []`` is -32602, not ``{}``). ``task`` is
        # checked on its own: this wire's ttl is any number, the model's an int.
        typed = types.CallToolRequestParams.model_validate(
            {key: value for key, value in params.items() if key != "task"},
            by_name=False,
        )
        name = typed.name
        arguments: Mapping[str, Any] = typed.arguments or {}
        check_arguments_size(arguments, self._runtime.settings.max_argument_bytes)
        ttl_seconds = _ttl_seconds(params["task"])
        request_meta: dict[str, Any] = {
            "clientCapabilities": capabilities_json(connection.client_capabilities)
        }
        token = (typed.meta or {}).get("progress_token")
        if token is not None:
            request_meta["progressToken"] = token
        try:
            spec = self._runtime.tool(name)
            if spec.task_support == "forbidden":
                raise TaskSupportError(name, required=False)
            if spec.preflight is not None:
                if preflight is None:
                    raise RuntimeError(f"{name}: a preflight needs the call's stream")
                request_meta["preflight"] = await preflight(
                    spec, arguments, request_meta["clientCapabilities"]
                )
            task = await self._runtime.submit(
                requester,
                name,
                arguments,
                ttl_seconds=ttl_seconds,
                request_meta=request_meta,
            )
        except McpTasksError as exc:
            raise rpc_error(exc) from None
        self._origins[task.task_id] = connection
        token = request_meta.get("progressToken")
        if token is not None:
            connection.state.setdefault(_PROGRESS_TOKENS, {})[task.task_id] = token
        return {"task": task_json(task)}

    async def _preflight(
        self,
        ctx: ServerRequestContext[Any, Any],
        spec: ToolSpec,
        arguments: Mapping[str, Any],
        capabilities: Mapping[str, Any],
    ) -> dict[str, Any]:
        # Before the task exists, questions go out on this call's own stream,
        # and each round runs the preflight again with every answer so far. A
        # preflight that declines the call refuses the task: nothing is stored.
        send = request_send(ctx)
        answers: dict[str, Any] = {}
        try:
            for _ in range(MAX_PREFLIGHT_ROUNDS):
                result = await run_preflight(spec, arguments, answers, capabilities)
                if result.questions is None:
                    return result.gathered or {}
                for key, question in result.questions.items():
                    answers[key] = await send(question.method, dict(question.params))
        except ToolError as exc:
            raise MCPError(
                -32602, f"Tool {spec.name!r} refused the call: {exc}"
            ) from None
        except ProtocolError as exc:
            raise MCPError(exc.code, exc.message, exc.data) from None
        raise MCPError(
            -32603,
            f"Tool {spec.name!r}: preflight asked more than {MAX_PREFLIGHT_ROUNDS} rounds",
        )

    # ----------------------------------------------------------- task methods

    async def get(
        self, ctx: ServerRequestContext[Any, Any], task_id: str
    ) -> dict[str, Any]:
        """``tasks/get``: the flat task."""
        try:
            return task_json(await self._runtime.get(self._requesters.of(ctx), task_id))
        except McpTasksError as exc:
            raise rpc_error(exc) from None

    async def result(
        self,
        ctx: ServerRequestContext[Any, Any],
        params: types.GetTaskPayloadRequestParams,
    ) -> dict[str, Any]:
        """``tasks/result``: block until terminal, then the call's own answer."""
        requester = self._requesters.of(ctx)
        try:
            # Questions of the task go out on this request's stream meanwhile:
            # the spec's side channel for input during a 2025-11-25 task.
            await serve_until_terminal(
                self._runtime,
                self.copies,
                requester,
                params.task_id,
                request_channel(ctx, "tasks/result stream"),
                related_task=True,
            )
            task = await self._runtime.get(requester, params.task_id, outcome=True)
        except McpTasksError as exc:
            raise rpc_error(exc) from None
        return result_json(task)

    async def list(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams
    ) -> dict[str, Any]:
        """``tasks/list``: the requestor's own tasks, paginated."""
        if not self._requesters.identified:
            raise MCPError(
                -32601, "Method not found: tasks/list needs identified clients"
            )
        try:
            tasks, cursor = await self._runtime.list(
                self._requesters.of(ctx), params.cursor
            )
        except McpTasksError as exc:
            raise rpc_error(exc) from None
        page: dict[str, Any] = {"tasks": [task_json(t) for t in tasks]}
        if cursor is not None:
            page["nextCursor"] = cursor
        return page

    async def cancel(
        self, ctx: ServerRequestContext[Any, Any], task_id: str
    ) -> dict[str, Any]:
        """``tasks/cancel``: ``cancelled`` before this answers; -32602 if finished."""
        try:
            return task_json(
                await self._runtime.cancel(self._requesters.of(ctx), task_id)
            )
        except McpTasksError as exc:
            raise rpc_error(exc) from None

    # ------------------------------------------------------------ the feed

    def task_changed(self, change: Change) -> None:
        """Relay a change of a task to this process's 2025-11-25 sessions.

        Status changes become ``notifications/tasks/status`` to the owner's live
        sessions here, wherever the change was made; a task that starts waiting
        for input also has its questions pushed to them, because common clients
        only poll ``tasks/get`` and never open ``tasks/result`` before the task
        ends. An answered question, or a task that ends, has every copy still
        out withdrawn from this process's sessions. Progress and log lines of a
        task go to the session that created it, if it is connected here.
        """
        if change.kind is ChangeKind.STATUS:
            if change.status.is_terminal:
                self.copies.task_ended(change.task_id, _ended(change.status))
            if any(
                c.protocol_version == LEGACY_VERSION
                for c in self._pushes.connections(change.owner_id)
            ):
                self._statuses.append(change)
                self._status_ready.set()
        elif change.kind is ChangeKind.ANSWER:
            key = (change.data or {}).get("key")
            if isinstance(key, str):
                self.copies.settled(change.task_id, key)
        elif change.kind is ChangeKind.PROGRESS:
            self._relay_progress(change)
        elif change.kind is ChangeKind.LOG:
            self._relay_log(change)

    async def _push_statuses(self) -> None:
        # One at a time and in feed order, so a session's last notification
        # for a task is never an older state than an earlier one.
        while True:
            await self._status_ready.wait()
            self._status_ready = anyio.Event()
            while self._statuses:
                change = self._statuses.popleft()
                try:
                    await self._push_status(change)
                except Exception:
                    logger.exception("status push of %s failed", change.task_id)

    async def _push_status(self, change: Change) -> None:
        try:
            task = await self._runtime.get(Requester(change.owner_id), change.task_id)
        except McpTasksError:
            return  # purged meanwhile
        if not task.listed:
            return  # a synchronous call: its caller never learned of a task
        payload = task_json(task)
        for connection in self._pushes.connections(task.owner_id):
            if connection.protocol_version == LEGACY_VERSION:
                self._pushes.push(connection, "notifications/tasks/status", payload)
                if task.status is TaskStatus.INPUT_REQUIRED:
                    self._push_questions(connection, task.owner_id, task.task_id)

    def connection_opened(self, owner: OwnerId, connection: Connection) -> None:
        """A new session of ``owner``: offer it every question still waiting."""
        if connection.protocol_version != LEGACY_VERSION:
            return

        async def offer() -> None:
            for task_id in await self._runtime.awaiting_input(owner):
                self._push_questions(connection, owner, task_id)

        self._queue(offer)

    def standalone_opened(self, session_id: str) -> None:
        """An HTTP session opened its GET stream: offer it the waiting questions.

        Called as the SDK starts the stream's response; the SDK registers the
        stream in the same scheduling round, before the queued offer (which
        reads the journal first) can send anything on it.
        """
        found = self._pushes.session(session_id)
        if found is not None:
            self.connection_opened(*found)

    def standalone_closed(self, session_id: str) -> None:
        """An HTTP session's GET stream closed: what it carried may be lost."""
        found = self._pushes.session(session_id)
        if found is not None:
            self.copies.detach(found[1])

    def _push_questions(
        self, connection: Connection, owner: OwnerId, task_id: TaskId
    ) -> None:
        async def push() -> None:
            if not self._pushes.can_ask(connection):
                return  # no GET stream: offered again when one opens
            await ask_open_questions(
                self._runtime,
                self.copies,
                Requester(owner),
                task_id,
                standalone_channel(connection),
                related_task=True,
                check_capabilities=True,
            )

        self._queue(push)

    def _queue(self, job: Job) -> None:
        try:
            self._jobs_in.send_nowait(job)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass  # the server is shutting down

    def _relay_log(self, change: Change) -> None:
        """Relay a background task's log line to the session that created it."""
        connection = self._origins.get(change.task_id)
        data = change.data or {}
        if connection is None or "message" not in data:
            return
        params = {
            "level": data.get("level", "info"),
            "data": data["message"],
            "logger": "mcp-tasks",
        }
        self._pushes.push(connection, "notifications/message", params)

    def _relay_progress(self, change: Change) -> None:
        """Relay progress through the token of the call that created the task."""
        connection = self._origins.get(change.task_id)
        if connection is None:
            return
        token = connection.state.get(_PROGRESS_TOKENS, {}).get(change.task_id)
        data = change.data or {}
        if token is None or "progress" not in data:
            return
        params: dict[str, Any] = {"progressToken": token, "progress": data["progress"]}
        if data.get("total") is not None:
            params["total"] = data["total"]
        if change.status_message is not None:
            params["message"] = change.status_message
        self._pushes.push(connection, "notifications/progress", params)
