"""Direct answers: a task's hot requests over HTTP without the SDK's dispatch.

A task costs its client a create, a few ``tasks/get`` polls and (2025-11-25)
a ``tasks/result``. Through mcp 2.3 each crossed the session's memory
streams, dispatcher and message router, a fresh request context and session
object, our middleware chain and the result pipeline (2025-11-25), or a
fresh runner, connection and task group per request (2026-07-28). That
machinery cost more server CPU than the work (spec-notes C67).

`DirectAnswers` answers these in the request's own ASGI task, after
everything that decides whether the request may be served at all has run as
before: body limit, bearer auth, Host and Origin, session lookup and its
owner, idle timeout, Accept and Content-Type, the protocol-version header
(`_response_mode` calls `legacy` there), and on 2026-07-28 the SDK's own
header and envelope ladder (`_direct_modern` calls `modern`):

- ``tasks/get`` on both wires;
- ``tasks/result`` on 2025-11-25 for a task that has already ended (an
  unfinished task's blocks and may carry questions on its stream);
- a ``tools/call`` that creates a task (2025-11-25: ``params.task``;
  2026-07-28: the extension declared and a tool that supports tasks), for
  tools without a preflight (whose questions need the call's stream).

It does what our middleware does for these (the request-rate admission, the
non-finite-number guard, the task wire's checks, error mapping and bounding)
and shapes results as the SDK's pipeline would (``resultType``, the
``serverInfo`` stamp on 2026-07-28). Anything it is not sure of returns None
and goes the SDK's way unchanged: other methods, params that do not
validate, a session not yet initialised, a synchronous call, everything
while tracing is on (the SDK's span per request is then wanted). The
end-to-end tests (``tests/e2e/test_direct_answers.py``) compare answers with
the SDK path's, byte for byte, on a server with ``[http] direct_answers =
false``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, cast

import mcp_types as types
from mcp.server.connection import Connection
from mcp.server.lowlevel import Server
from mcp_types import (
    PROTOCOL_VERSION_META_KEY,
    SERVER_INFO_META_KEY,
    JSONRPCError,
    JSONRPCRequest,
    JSONRPCResponse,
)
from mcp_types import methods as spec_methods
from pydantic import ValidationError
from starlette.requests import Request

from mcp_tasks._exceptions import InvalidArgumentsError, McpTasksError
from mcp_tasks._toolapi import ToolSpec
from mcp_tasks.binding._common import (
    LEGACY_VERSION,
    MODERN_VERSION,
    PushChannels,
    Requesters,
    argument_error_result,
    check_arguments_size,
    rpc_error,
)
from mcp_tasks.binding._extension import ExtensionTasks
from mcp_tasks.binding._guard import error_of, reject_non_finite
from mcp_tasks.binding._legacy import LegacyTasks, result_json
from mcp_tasks.binding._legacy import task_json as legacy_task_json
from mcp_tasks.binding._mrtr import capabilities_json
from mcp_tasks.engine import Requester, TaskRuntime, tracing_on

Answer = JSONRPCResponse | JSONRPCError
"""A direct answer: the JSON-RPC response or error to send."""

_LEGACY_READS: Final[dict[str, type[types.RequestParams]]] = {
    "tasks/get": types.GetTaskRequestParams,
    "tasks/result": types.GetTaskPayloadRequestParams,
}
TOOLS_CALL: Final = "tools/call"
TASKS_GET: Final = "tasks/get"


class DirectAnswers:
    """Answers a task's hot requests without the SDK's dispatch (module docstring).

    ``legacy`` and ``extension`` are the two wires' bindings, whose task
    creation and ``DetailedTask`` it shares. ``on_answer`` is told the method
    of every request answered here (``mcp_tasks_http_direct_answers_total``).
    """

    def __init__(
        self,
        runtime: TaskRuntime,
        requesters: Requesters,
        pushes: PushChannels,
        legacy: LegacyTasks,
        extension: ExtensionTasks,
        server: Server[Any],
        on_answer: Callable[[str], None] | None = None,
    ) -> None:
        self._runtime = runtime
        self._requesters = requesters
        self._pushes = pushes
        self._legacy = legacy
        self._extension = extension
        # The SDK copies its stamp for every result (a handler could change
        # it); these answers are serialised at once and never changed.
        self._server_info = server.server_info_stamp
        self._on_answer = on_answer

    def task_tool(self, name: object) -> ToolSpec | None:
        """The tool ``name`` if a task of it can be created here (no preflight)."""
        spec = self._runtime.tools.get(name) if isinstance(name, str) else None
        if spec is None or spec.task_support == "forbidden" or spec.preflight:
            return None
        return spec

    # ------------------------------------------------------------ 2025-11-25

    async def legacy(
        self, message: JSONRPCRequest, session_id: str | None, request: Request
    ) -> Answer | None:
        """The answer to ``message`` on 2025-11-25 session ``session_id``, or None.

        Called by the session's transport (`_response_mode`) once the SDK's
        own checks of the POST have passed.
        """
        method, params = message.method, message.params
        if session_id is None or tracing_on() or _has_modern_envelope(params):
            return None
        if method != TOOLS_CALL and method not in _LEGACY_READS:
            return None
        registered = self._pushes.session(session_id)
        if registered is None:
            return None  # not initialised yet (or not ours): the SDK decides
        connection = registered[1]
        if connection.protocol_version != LEGACY_VERSION:
            return None
        requester = self._requesters.of_http(session_id, request)
        if method == TOOLS_CALL:
            answer = await self._legacy_call(message, requester, connection)
        else:
            answer = await self._legacy_read(message, requester)
        if answer is not None and self._on_answer is not None:
            self._on_answer(method)
        return answer

    async def _legacy_call(
        self, message: JSONRPCRequest, requester: Requester, connection: Connection
    ) -> Answer | None:
        params = message.params
        if not isinstance(params, dict) or params.get("task") is None:
            return None  # a synchronous call: its progress and questions stream
        if self.task_tool(params.get("name")) is None:
            return None

        async def create() -> dict[str, Any]:
            return await self._legacy.create_task(requester, connection, params)

        return await self._answer(message, requester, create)

    async def _legacy_read(
        self, message: JSONRPCRequest, requester: Requester
    ) -> Answer | None:
        task_id = _task_id(message.params, _LEGACY_READS[message.method])
        if task_id is None:
            return None
        if message.method == TASKS_GET:

            async def get() -> dict[str, Any]:
                return legacy_task_json(await self._runtime.get(requester, task_id))

            return await self._answer(message, requester, get)
        # tasks/result: read first, since only a finished task's result is
        # answered here. An unknown task goes the SDK's way too (it answers
        # the error), so a request is admitted against the client's rate
        # once, on one path.
        try:
            task = await self._runtime.get(requester, task_id, outcome=True)
        except McpTasksError:
            return None
        if not task.is_terminal:
            return None

        async def finished() -> dict[str, Any]:
            return result_json(task)

        return await self._answer(message, requester, finished)

    # ------------------------------------------------------------ 2026-07-28

    async def modern_get(
        self, message: JSONRPCRequest, requester: Requester, task_id: str
    ) -> Answer:
        """Answer a 2026-07-28 ``tasks/get`` the SDK's checks have let through."""

        async def get() -> dict[str, Any]:
            return self._stamped(await self._extension.render(requester, task_id))

        return await self._modern(message, requester, get)

    async def modern_call(
        self,
        message: JSONRPCRequest,
        requester: Requester,
        spec: ToolSpec,
        capabilities: types.ClientCapabilities,
    ) -> Answer:
        """Create the task of a 2026-07-28 ``tools/call`` the SDK's checks let through."""
        params = message.params or {}
        arguments: Mapping[str, Any] = params.get("arguments") or {}
        request_meta = {"clientCapabilities": capabilities_json(capabilities)}

        async def create() -> dict[str, Any]:
            check_arguments_size(arguments, self._runtime.settings.max_argument_bytes)
            try:
                created = await self._extension.create_task(
                    requester, spec, arguments, request_meta
                )
            except InvalidArgumentsError as exc:
                # As `_call_tool` answers it, shaped by the SDK's result pipeline.
                dumped = argument_error_result(exc).model_dump(
                    by_alias=True, mode="json", exclude_none=True
                )
                created = spec_methods.serialize_server_result(
                    TOOLS_CALL, MODERN_VERSION, dumped
                )
            return self._stamped(created)

        return await self._modern(message, requester, create)

    async def _modern(
        self,
        message: JSONRPCRequest,
        requester: Requester,
        work: Callable[[], Awaitable[dict[str, Any]]],
    ) -> Answer:
        answer = await self._answer(message, requester, work)
        if self._on_answer is not None:
            self._on_answer(message.method)
        return answer

    def _stamped(self, result: dict[str, Any]) -> dict[str, Any]:
        """What the SDK's result pipeline adds to every 2026-07-28 result."""
        if result.get("resultType") is None:
            result["resultType"] = "complete"
        meta: object = result.get("_meta")
        if meta is None:
            result["_meta"] = {SERVER_INFO_META_KEY: self._server_info}
        elif isinstance(meta, dict):
            stamped = cast("dict[str, Any]", meta)
            if stamped.get(SERVER_INFO_META_KEY) is None:
                result["_meta"] = {**stamped, SERVER_INFO_META_KEY: self._server_info}
        return result

    # ---------------------------------------------------------------- shared

    async def _answer(
        self,
        message: JSONRPCRequest,
        requester: Requester,
        work: Callable[[], Awaitable[dict[str, Any]]],
    ) -> Answer:
        """Admit, work and answer, with the errors our middleware would give."""
        params = message.params
        try:
            reject_non_finite(params)
            try:
                await self._runtime.admit_request(requester)
                result = await work()
            except McpTasksError as exc:
                raise rpc_error(exc) from None
        except Exception as exc:
            error = error_of(exc, message.method, params).error
            return JSONRPCError(jsonrpc="2.0", id=message.id, error=error)
        return JSONRPCResponse(jsonrpc="2.0", id=message.id, result=result)


def _task_id(
    params: Mapping[str, Any] | None, params_type: type[types.RequestParams]
) -> str | None:
    """The task id of ``params`` if they validate as ``params_type`` (the SDK's check)."""
    if not isinstance(params, dict) or not isinstance(params.get("taskId"), str):
        return None
    try:
        params_type.model_validate(params, by_name=False)
    except ValidationError:
        return None
    return params["taskId"]


def modern_task_id(params: Mapping[str, Any] | None) -> str | None:
    """The task id of a 2026-07-28 ``tasks/get``'s params, if they validate."""
    return _task_id(params, types.GetTaskRequestParams)


def _has_modern_envelope(params: Mapping[str, Any] | None) -> bool:
    # The SDK refuses a 2026-07-28 envelope on a handshake-era session.
    meta = (params or {}).get("_meta")
    return isinstance(meta, dict) and PROTOCOL_VERSION_META_KEY in meta


__all__ = ["Answer", "DirectAnswers", "modern_task_id"]
