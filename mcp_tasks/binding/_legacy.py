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
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, cast

import anyio
import mcp_types as types
from mcp.server.connection import Connection
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.shared.exceptions import MCPError

from mcp_tasks._exceptions import McpTasksError, TaskSupportError
from mcp_tasks._model import OwnerId, Task, TaskId, TaskStatus
from mcp_tasks._preflight import run_preflight
from mcp_tasks._runtime import LogEvent, ProgressEvent, Requester, TaskRuntime
from mcp_tasks._toolapi import ProtocolError, ToolError, ToolSpec
from mcp_tasks.binding._common import (
    LEGACY_VERSION,
    RELATED_TASK_META,
    PushChannels,
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

logger = logging.getLogger("mcp_tasks.binding.legacy")

CANCELLED_TEXT = "The task was cancelled before it produced a result."
#: How many preflight rounds one task-augmented call may take.
MAX_PREFLIGHT_ROUNDS = 10

Job = Callable[[], Coroutine[Any, Any, None]]


def wire_status(task: Task) -> str:
    """The status this generation shows: tool errors are ``failed`` here."""
    if (
        task.status is TaskStatus.COMPLETED
        and task.outcome
        and task.outcome.is_tool_error
    ):
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
    if message is None and data["status"] == "failed" and task.outcome is not None:
        message = _first_text(task.outcome.result) or "The tool reported an error."
    if message is not None:
        data["statusMessage"] = message
    return data


def _first_text(result: Mapping[str, Any] | None) -> str | None:
    for block in (result or {}).get("content", []):
        if isinstance(block, dict) and block.get("type") == "text":  # pyright: ignore[reportUnknownMemberType]
            return str(block.get("text"))  # pyright: ignore[reportUnknownMemberType, reportUnknownArgumentType]
    return None


def _ended(task: Task) -> str:
    """Why a question of ``task`` is withdrawn once the task is over."""
    if task.status is TaskStatus.CANCELLED:
        return "The task was cancelled."
    return f"The task has ended ({wire_status(task)})."


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
    if not isinstance(task_params, Mapping):
        raise invalid_params("task", "must be an object")
    ttl = task_params.get("ttl")  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or ttl < 0:
        raise invalid_params(
            "task.ttl", "must be a non-negative number of milliseconds"
        )
    return float(ttl) / 1000.0


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

    async def run(self) -> None:
        """Run push jobs (questions sent to live sessions) until cancelled."""
        async with anyio.create_task_group() as tg, self._jobs_in, self._jobs_out:
            async for job in self._jobs_out:
                tg.start_soon(job)

    # ----------------------------------------------------------- task creation

    async def middleware(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        """Answer task-augmented ``tools/call`` on 2025-11-25; pass the rest on."""
        params = ctx.params
        if (
            ctx.method == "tools/call"
            and ctx.protocol_version == LEGACY_VERSION
            and isinstance(params, Mapping)
            and params.get("task") is not None
            and ctx.session.client_params is not None
        ):
            return await self._create_task(ctx, params)
        return await call_next(ctx)

    async def _create_task(
        self, ctx: ServerRequestContext[Any, Any], params: Mapping[str, Any]
    ) -> dict[str, Any]:
        name = params.get("name")
        if not isinstance(name, str):
            raise invalid_params("name", "must be a string")
        raw_arguments: object = params.get("arguments") or {}
        if not isinstance(raw_arguments, Mapping):
            raise invalid_params("arguments", "must be an object")
        arguments = cast("Mapping[str, Any]", raw_arguments)
        check_arguments_size(arguments, self._runtime.settings.max_argument_bytes)
        ttl_seconds = _ttl_seconds(params["task"])
        capabilities = ctx.session.client_capabilities
        request_meta: dict[str, Any] = {
            "clientCapabilities": (
                capabilities.model_dump(by_alias=True, mode="json", exclude_none=True)
                if capabilities
                else {}
            )
        }
        meta: object = params.get("_meta")
        if isinstance(meta, Mapping):
            token = cast("Mapping[str, Any]", meta).get("progressToken")
            if token is not None:
                request_meta["progressToken"] = token
        try:
            spec = self._runtime.tool(name)
            if spec.task_support == "forbidden":
                raise TaskSupportError(name, required=False)
            if spec.preflight is not None:
                request_meta["preflight"] = await self._preflight(
                    ctx,
                    spec,
                    arguments,
                    request_meta["clientCapabilities"],
                )
            task = await self._runtime.submit(
                self._requesters.of(ctx),
                name,
                arguments,
                ttl_seconds=ttl_seconds,
                request_meta=request_meta,
            )
        except McpTasksError as exc:
            raise rpc_error(exc) from None
        self._origins[task.task_id] = connection_of(ctx)
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
            task = await self._runtime.get(requester, params.task_id)
        except McpTasksError as exc:
            raise rpc_error(exc) from None
        related = {RELATED_TASK_META: {"taskId": task.task_id}}
        outcome = task.outcome
        if outcome is not None and outcome.error is not None:
            error = outcome.error
            raise MCPError(int(error["code"]), str(error["message"]), error.get("data"))
        if outcome is None or outcome.result is None:
            result: dict[str, Any] = {
                "content": [{"type": "text", "text": CANCELLED_TEXT}],
                "isError": True,
            }
        else:
            result = dict(outcome.result)
        meta = result.get("_meta")
        result["_meta"] = {**(meta if isinstance(meta, dict) else {}), **related}
        return result

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

    # ----------------------------------------------------------- engine events

    def task_changed(self, task: Task, request_meta: Mapping[str, Any]) -> None:
        """Push ``notifications/tasks/status`` to the owner's 2025-11-25 connections.

        A task that starts waiting for input also has its questions pushed to
        them, because common clients only poll ``tasks/get`` and never open
        ``tasks/result`` before the task ends. A task that ends has its
        questions still out withdrawn, wherever they are.
        """
        if task.is_terminal:
            self.copies.task_ended(task.task_id, _ended(task))
        if not task.listed:
            return  # a synchronous call: its caller never learned of a task
        payload = task_json(task)
        for connection in self._pushes.connections(task.owner_id):
            if connection.protocol_version == LEGACY_VERSION:
                self._pushes.push(connection, "notifications/tasks/status", payload)
                if task.status is TaskStatus.INPUT_REQUIRED:
                    self._push_questions(connection, task.owner_id, task.task_id)

    def question_answered(self, task_id: TaskId, key: str) -> None:
        """Withdraw every copy of the question still out, on every session.

        The engine reports each recorded answer (from any stream or session,
        ``tasks/update`` on the other wire, or a timeout), so this is the one
        path that withdraws; the stream that got the answer has nothing left
        to withdraw.
        """
        self.copies.settled(task_id, key)

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

    def task_log(self, event: LogEvent) -> None:
        """Relay a background task's log messages to the session that created it."""
        connection = self._origins.get(event.task_id)
        if connection is None:
            return
        params = {"level": event.level, "data": event.message, "logger": "mcp-tasks"}
        self._pushes.push(connection, "notifications/message", params)

    def task_progress(self, event: ProgressEvent) -> None:
        """Relay progress through the token of the call that created the task."""
        token = event.request_meta.get("progressToken")
        connection = self._origins.get(event.task_id)
        if token is None or connection is None:
            return
        params: dict[str, Any] = {"progressToken": token, "progress": event.progress}
        if event.total is not None:
            params["total"] = event.total
        if event.message is not None:
            params["message"] = event.message
        self._pushes.push(connection, "notifications/progress", params)
