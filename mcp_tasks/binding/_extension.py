"""The 2026-07-28 tasks extension ``io.modelcontextprotocol/tasks`` (SEP-2663).

The server decides per call whether to answer with a task, but only for a
request whose own ``_meta`` client capabilities declare the extension. The
create result is flat with ``resultType: "task"``; ``tasks/get`` inlines the
result, the error or the outstanding input requests; ``tasks/update`` carries
answers; ``tasks/cancel`` is an acknowledgement. ``tasks/result`` and
``tasks/list`` do not exist here (the server answers -32601).

Wire mapping decisions (spec-notes.md has the full list):
- a tool result with ``isError: true`` makes the task ``completed`` (as this
  generation's spec requires), with the error result inlined;
- cancelling a finished task is acknowledged like any other cancel.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import mcp_types as types
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError
from pydantic import Field

from mcp_tasks._exceptions import McpTasksError, TaskTerminalError, excerpt
from mcp_tasks._model import InputRequest, Task, TaskStatus
from mcp_tasks._toolapi import ProtocolError, ToolError, ToolSpec
from mcp_tasks.binding._common import (
    HEADER_MISMATCH,
    MISSING_REQUIRED_CLIENT_CAPABILITY,
    MODERN_VERSION,
    Requesters,
    iso,
    milliseconds,
    rpc_error,
)
from mcp_tasks.binding._mrtr import AskClient, Mrtr, client_capabilities
from mcp_tasks.engine import Requester, TaskRuntime

EXTENSION_ID: Final = "io.modelcontextprotocol/tasks"
_TASK_METHODS: Final = frozenset({"tasks/get", "tasks/update", "tasks/cancel"})

CallNow = Callable[
    [ServerRequestContext[Any, Any], Requester, ToolSpec, Mapping[str, Any]],
    Awaitable[types.CallToolResult | dict[str, Any]],
]


class UpdateTaskRequestParams(types.RequestParams):
    """Params of ``tasks/update``."""

    task_id: str = Field(alias="taskId")
    input_responses: dict[str, Any] = Field(alias="inputResponses")


def missing_extension_error() -> MCPError:
    """-32021 naming the extension the client must declare."""
    return MCPError(
        MISSING_REQUIRED_CLIENT_CAPABILITY,
        f"Missing required client capability: extension {EXTENSION_ID!r}",
        {"requiredCapabilities": {"extensions": {EXTENSION_ID: {}}}},
    )


def declares_extension(ctx: ServerRequestContext[Any, Any]) -> bool:
    """Whether this request's own ``_meta`` client capabilities declare the extension."""
    return declares(ctx.session.client_capabilities)


def declares(capabilities: types.ClientCapabilities | None) -> bool:
    """Whether ``capabilities`` declare the extension."""
    extensions = capabilities.extensions if capabilities is not None else None
    return bool(extensions is not None and EXTENSION_ID in extensions)


def task_json(task: Task) -> dict[str, Any]:
    """A task in the extension's flat ``Task`` shape (no status-specific fields)."""
    data: dict[str, Any] = {
        "taskId": task.task_id,
        "status": task.status.value,
        "createdAt": iso(task.created_at),
        "lastUpdatedAt": iso(task.last_updated_at),
        "ttlMs": milliseconds(task.ttl_seconds),
        "pollIntervalMs": milliseconds(task.poll_interval_seconds),
    }
    if task.status_message is not None:
        data["statusMessage"] = task.status_message
    return data


def detailed_task_json(task: Task, open_requests: list[InputRequest]) -> dict[str, Any]:
    """A ``DetailedTask``: the task plus its result, error or input requests."""
    data = task_json(task)
    outcome = task.outcome
    if task.status is TaskStatus.COMPLETED:
        stored = outcome.result if outcome is not None else None
        result: Mapping[str, Any] = stored if stored is not None else {"content": []}
        # The stored result is wire-neutral. On this wire it is the call's
        # result, and every 2026-07-28 result carries ``resultType``: a
        # synchronous call gets "complete" from the SDK, so the same call
        # finished as a task shows the same (strict clients reject it absent).
        data["result"] = {**result, "resultType": "complete"}
    elif task.status is TaskStatus.FAILED:
        error = outcome.error if outcome is not None else None
        data["error"] = error or {"code": -32603, "message": "Task failed"}
    elif task.status is TaskStatus.INPUT_REQUIRED:
        data["inputRequests"] = {
            r.key: {"method": r.method, "params": r.params} for r in open_requests
        }
    return data


def decode_name_header(value: str) -> str:
    """A routing header's value: ``=?base64?...?=`` decoded, anything else as sent."""
    # Values that are not header-safe travel as =?base64?...?= (2026-07-28 HTTP).
    if value.startswith("=?base64?") and value.endswith("?="):
        try:
            return base64.b64decode(value[9:-2]).decode()
        except ValueError:
            return value
    return value


class ExtensionTasks:
    """Serves the extension's task methods and its task-creating ``tools/call``."""

    identifier: Final = EXTENSION_ID

    def __init__(self, runtime: TaskRuntime, requesters: Requesters) -> None:
        self._runtime = runtime
        self._requesters = requesters
        self.mrtr = Mrtr(runtime)

    def install(self, server: Server[Any]) -> None:
        """Register the methods only this generation has."""
        server.add_request_handler(
            "tasks/update", UpdateTaskRequestParams, self._update
        )

    async def middleware(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        """Gate the task methods on the per-request declaration and routing headers."""
        if ctx.protocol_version == MODERN_VERSION and ctx.method in _TASK_METHODS:
            if not declares_extension(ctx):
                raise missing_extension_error()
            self._check_name_header(ctx)
        return await call_next(ctx)

    @staticmethod
    def _check_name_header(ctx: ServerRequestContext[Any, Any]) -> None:
        headers = getattr(ctx.request, "headers", None)
        if headers is None:
            return  # not HTTP: no routing headers to check
        sent = headers.get("mcp-name")
        params = ctx.params or {}
        task_id = params.get("taskId")
        if sent is None:
            raise MCPError(
                HEADER_MISMATCH,
                f"Header mismatch: Mcp-Name header is required for {ctx.method}",
            )
        if decode_name_header(sent) != task_id:
            raise MCPError(
                HEADER_MISMATCH,
                f"Header mismatch: Mcp-Name header value {excerpt(sent)} does not "
                f"match body value {excerpt(str(task_id))} (params.taskId)",
            )

    # ------------------------------------------------------------------ calls

    async def call_tool(
        self,
        ctx: ServerRequestContext[Any, Any],
        params: types.CallToolRequestParams,
        spec: ToolSpec,
        call_now: CallNow,
    ) -> types.CallToolResult | dict[str, Any]:
        """Answer a 2026-07-28 ``tools/call``: a task, or the result right away.

        The server decides: a tool that supports tasks becomes one whenever
        this request declares the extension. A tool with a preflight gathers
        its input first, over multi-round-trip requests, before the task exists.
        """
        requester = self._requesters.of(ctx)
        arguments = params.arguments or {}
        declared = declares_extension(ctx)
        if spec.task_support == "forbidden" or (
            not declared and spec.task_support == "optional"
        ):
            return await call_now(ctx, requester, spec, arguments)
        if not declared:
            raise missing_extension_error()
        request_meta: dict[str, Any] = {"clientCapabilities": client_capabilities(ctx)}
        if spec.preflight is not None:
            try:
                request_meta["preflight"] = await self.mrtr.preflight(
                    ctx, requester, spec, arguments
                )
            except AskClient as ask:
                return ask.result
            except ToolError as exc:  # the preflight declined: a tool error, no task
                return types.CallToolResult(
                    content=[types.TextContent(text=str(exc))], is_error=True
                )
            except ProtocolError as exc:
                raise MCPError(exc.code, exc.message, exc.data) from None
        return await self.create_task(requester, spec, arguments, request_meta)

    async def create_task(
        self,
        requester: Requester,
        spec: ToolSpec,
        arguments: Mapping[str, Any],
        request_meta: dict[str, Any],
    ) -> dict[str, Any]:
        """Submit the call's task; the create result (``resultType: "task"``)."""
        task = await self._runtime.submit(
            requester, spec.name, arguments, request_meta=request_meta
        )
        return {"resultType": "task", **task_json(task)}

    # ------------------------------------------------------------------ tasks

    async def get(
        self, ctx: ServerRequestContext[Any, Any], task_id: str
    ) -> dict[str, Any]:
        """``tasks/get``: the detailed task."""
        try:
            return await self.render(self._requesters.of(ctx), task_id)
        except McpTasksError as exc:
            raise rpc_error(exc) from None

    async def render(self, requester: Requester, task_id: str) -> dict[str, Any]:
        """The ``DetailedTask`` this requestor sees (``tasks/get`` and notifications)."""
        task = await self._runtime.get(requester, task_id, outcome=True)
        open_requests: list[InputRequest] = []
        if task.status is TaskStatus.INPUT_REQUIRED:
            open_requests = await self._runtime.input_requests(requester, task_id)
        return detailed_task_json(task, open_requests)

    async def cancel(
        self, ctx: ServerRequestContext[Any, Any], task_id: str
    ) -> dict[str, Any]:
        """``tasks/cancel``: an acknowledgement, also for a finished task."""
        try:
            await self._runtime.cancel(self._requesters.of(ctx), task_id)
        except TaskTerminalError:
            pass
        except McpTasksError as exc:
            raise rpc_error(exc) from None
        return {}

    async def _update(
        self, ctx: ServerRequestContext[Any, Any], params: UpdateTaskRequestParams
    ) -> dict[str, Any]:
        """``tasks/update``: record answers; unknown or answered keys are ignored.

        An answer that does not fit its question is refused with -32602 naming
        it, and nothing of this update is recorded; the question stays open.
        Answers for a task that already ended are acknowledged and dropped.
        """
        try:
            await self._runtime.answer(
                self._requesters.of(ctx), params.task_id, params.input_responses
            )
        except TaskTerminalError:
            pass
        except McpTasksError as exc:
            raise rpc_error(exc) from None
        return {}
