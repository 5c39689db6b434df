"""Direct answers: task reads over HTTP without the SDK's per-request machinery.

A client polling a task sends ``tasks/get`` over and over; it is most of a
task's requests. Through mcp 2.3 each one crosses the session's memory
streams, its dispatcher and message router, a fresh request context and
session object, our middleware chain and the result pipeline (2025-11-25),
or a fresh runner, connection and task group per request (2026-07-28). That
machinery cost more server CPU than the read itself (spec-notes C67).

`DirectReads` answers the reads whose answer needs none of it, in the
request's own ASGI task, after everything that decides whether the request
may be served at all has run as before (body limit, bearer auth, Host and
Origin checks, session lookup and ownership, idle timeout, Accept and
Content-Type, the protocol-version header; on 2026-07-28 the SDK's own
header and envelope ladder):

- ``tasks/get`` on both wires;
- ``tasks/result`` on 2025-11-25 for a task that has already ended (an
  unfinished task's ``tasks/result`` blocks and may carry questions on its
  stream: the SDK's path serves it).

It does what our middleware does for these methods (`RequestLimiter`
admission, the non-finite-number guard, the extension's declaration and
``Mcp-Name`` checks, error mapping and bounding) and shapes the result as
the SDK's pipeline would (``resultType`` and the ``serverInfo`` stamp on
2026-07-28). Anything it is not sure of returns None and goes the SDK's way
unchanged: other methods, params that do not validate, a session not yet
initialised, a request the 2026-07-28 ladder would refuse, tracing on (the
SDK's span per request is then wanted). The end-to-end tests
(``tests/e2e/test_direct_reads.py``) compare every answer with the SDK
path's, byte for byte, on a server with ``[http] direct_reads = false``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, cast

import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.streamable_http import check_accept_headers
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import (
    RequestBodyLimitMiddleware,
    TransportSecurityMiddleware,
    TransportSecuritySettings,
)
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import (
    ERROR_CODE_HTTP_STATUS,
    MCP_PROTOCOL_VERSION_HEADER,
    InboundModernRoute,
    classify_inbound_request,
    find_duplicated_routing_header,
)
from mcp_types import (
    PROTOCOL_VERSION_META_KEY,
    SERVER_INFO_META_KEY,
    ErrorData,
    JSONRPCError,
    JSONRPCRequest,
    JSONRPCResponse,
)
from pydantic import ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_tasks._exceptions import McpTasksError
from mcp_tasks.binding._common import (
    INTERNAL_ERROR,
    LEGACY_VERSION,
    MODERN_VERSION,
    PushChannels,
    Requesters,
    rpc_error,
)
from mcp_tasks.binding._extension import EXTENSION_ID, decode_name_header
from mcp_tasks.binding._guard import bounded, reject_non_finite
from mcp_tasks.binding._legacy import result_json
from mcp_tasks.binding._legacy import task_json as legacy_task_json
from mcp_tasks.binding._response_mode import SdkChangedError
from mcp_tasks.engine import Requester, TaskRuntime, tracing_on

logger = logging.getLogger("mcp_tasks.binding.direct")

Answer = JSONRPCResponse | JSONRPCError
"""A direct answer: the JSON-RPC response or error to send."""

_LEGACY_PARAMS: Final[dict[str, type[types.RequestParams]]] = {
    "tasks/get": types.GetTaskRequestParams,
    "tasks/result": types.GetTaskPayloadRequestParams,
}
_MODERN_METHOD: Final = "tasks/get"
_PROTOCOL_VERSION_HEADER: Final = MCP_PROTOCOL_VERSION_HEADER.lower().encode()
_JSON_HEADERS: Final = [(b"content-type", b"application/json")]


class DirectReads:
    """Answers task reads of one server without the SDK's dispatch (module docstring).

    ``render`` is the extension's ``DetailedTask`` of a task, as its
    ``tasks/get`` handler answers it. ``on_answer`` is told the method of every request answered here (the
    ``mcp_tasks_http_direct_answers_total`` metric).
    """

    def __init__(
        self,
        runtime: TaskRuntime,
        requesters: Requesters,
        pushes: PushChannels,
        render: Callable[[Requester, str], Awaitable[dict[str, Any]]],
        server: Server[Any],
        on_answer: Callable[[str], None] | None = None,
    ) -> None:
        self._runtime = runtime
        self._requesters = requesters
        self._pushes = pushes
        #: The extension's ``DetailedTask`` of a task (`ExtensionTasks.render`).
        self._render = render
        # The SDK copies its stamp for every result (a handler could change
        # it); these answers are serialised at once and never changed.
        self._server_info = server.server_info_stamp
        self._on_answer = on_answer

    # ------------------------------------------------------------ 2025-11-25

    async def legacy(
        self, message: JSONRPCRequest, session_id: str | None, request: Request
    ) -> Answer | None:
        """The answer to ``message`` on 2025-11-25 session ``session_id``, or None.

        Called by the session's transport (`_response_mode`) once the SDK's
        own checks of the POST have passed.
        """
        params_type = _LEGACY_PARAMS.get(message.method)
        if params_type is None or session_id is None or tracing_on():
            return None
        registered = self._pushes.session(session_id)
        if registered is None:
            return None  # not initialised yet (or not ours): the SDK decides
        connection = registered[1]
        if connection.protocol_version != LEGACY_VERSION:
            return None
        params = message.params
        task_id = _task_id(params, params_type)
        if task_id is None or _has_modern_envelope(params):
            return None
        requester = self._requesters.of_http(session_id, request)
        if message.method == "tasks/get":
            answer = await self._answer(
                message, requester, params, lambda: self._legacy_get(requester, task_id)
            )
        else:
            answer = await self._terminal_result(message, requester, params, task_id)
        if answer is not None and self._on_answer is not None:
            self._on_answer(message.method)
        return answer

    async def _legacy_get(self, requester: Requester, task_id: str) -> dict[str, Any]:
        return legacy_task_json(await self._runtime.get(requester, task_id))

    async def _terminal_result(
        self,
        message: JSONRPCRequest,
        requester: Requester,
        params: Mapping[str, Any] | None,
        task_id: str,
    ) -> Answer | None:
        # Read first: only a finished task's result is answered here. An
        # unknown task goes the SDK's way too (it answers the error), so a
        # request is admitted against the client's rate once, on one path.
        try:
            task = await self._runtime.get(requester, task_id, outcome=True)
        except McpTasksError:
            return None
        if not task.is_terminal:
            return None

        async def finished() -> dict[str, Any]:
            return result_json(task)

        return await self._answer(message, requester, params, finished)

    # ------------------------------------------------------------ 2026-07-28

    async def modern(self, request: Request, body: bytes) -> tuple[int, bytes] | None:
        """The HTTP status and JSON body answering a 2026-07-28 POST, or None.

        Runs the SDK's checks of such a POST first, in its order; any that
        would refuse it, and anything not a plain ``tasks/get``, is None.
        """
        read = _modern_read(request, body)
        if read is None or tracing_on():
            return None
        message, task_id = read
        requester = self._requesters.of_http(None, request)
        answer = await self._answer(
            message,
            requester,
            message.params,
            lambda: self._modern_get(requester, task_id),
        )
        if self._on_answer is not None:
            self._on_answer(message.method)
        status = 200
        if isinstance(answer, JSONRPCError):
            status = ERROR_CODE_HTTP_STATUS.get(answer.error.code, 200)
        # As the SDK writes a 2026-07-28 answer.
        content = answer.model_dump(mode="json", by_alias=True, exclude_none=True)
        return status, json.dumps(content, separators=(",", ":")).encode()

    async def _modern_get(self, requester: Requester, task_id: str) -> dict[str, Any]:
        result = await self._render(requester, task_id)
        # What the SDK's result pipeline adds to every 2026-07-28 result.
        result.setdefault("resultType", "complete")
        result["_meta"] = {SERVER_INFO_META_KEY: self._server_info}
        return result

    # ---------------------------------------------------------------- shared

    async def _answer(
        self,
        message: JSONRPCRequest,
        requester: Requester,
        params: Mapping[str, Any] | None,
        read: Callable[[], Awaitable[dict[str, Any]]],
    ) -> Answer:
        """Admit, read and answer, with the errors our middleware would give."""
        try:
            reject_non_finite(params)
            try:
                await self._runtime.admit_request(requester)
                result = await read()
            except McpTasksError as exc:
                raise rpc_error(exc) from None
        except MCPError as exc:
            return _error(message, bounded(exc).error)
        except Exception as exc:
            # As the guard answers an unexpected failure: logged, never echoed.
            logger.error("%s failed", message.method, exc_info=exc)
            return _error(
                message, ErrorData(code=INTERNAL_ERROR, message="Internal error")
            )
        return JSONRPCResponse(jsonrpc="2.0", id=message.id, result=result)


def _error(message: JSONRPCRequest, error: ErrorData) -> JSONRPCError:
    return JSONRPCError(
        jsonrpc="2.0",
        id=message.id,
        error=ErrorData(code=error.code, message=error.message, data=error.data),
    )


class ModernReads:
    """ASGI: 2026-07-28 POSTs `DirectReads` can answer, the rest to ``app``.

    Sits where the SDK's session manager starts handling a request (inside
    its body-size limit, after auth), so what it does not answer reaches the
    SDK exactly as it came, body included.
    """

    def __init__(
        self,
        app: ASGIApp,
        direct: DirectReads,
        security: TransportSecuritySettings | None,
    ) -> None:
        self.app = app
        self.direct = direct
        self.security = TransportSecurityMiddleware(security)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not _modern(scope):
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        if await self.security.validate_request(request, is_post=True) is not None:
            await self.app(scope, receive, send)  # the SDK refuses it, and says why
            return
        body = await request.body()
        answer = await self.direct.modern(request, body)
        if answer is None:
            await self.app(scope, _replay(body, receive), send)
            return
        status, content = answer
        headers = [*_JSON_HEADERS, (b"content-length", str(len(content)).encode())]
        await send(
            {"type": "http.response.start", "status": status, "headers": headers}
        )
        await send({"type": "http.response.body", "body": content})


def install_modern(manager: StreamableHTTPSessionManager, direct: DirectReads) -> None:
    """Put `ModernReads` in front of ``manager``'s request handling.

    mcp 2.3's session manager handles every request through its ``asgi_app``,
    the body-size limit around its own dispatch; `ModernReads` goes between
    the two. This is the one place that reaches in there (pinned to mcp
    2.3.x; the direct-reads e2e tests fail if the SDK stops calling it).

    Raises:
        SdkChangedError: ``asgi_app`` is no longer that middleware.
    """
    limit = cast("object", manager.asgi_app)
    if not isinstance(limit, RequestBodyLimitMiddleware):
        raise SdkChangedError(
            "mcp's session manager changed: asgi_app is not RequestBodyLimitMiddleware "
            "(mcp_tasks.binding._direct relies on it)"
        )
    limit.app = ModernReads(limit.app, direct, manager.security_settings)


def _modern_read(request: Request, body: bytes) -> tuple[JSONRPCRequest, str] | None:
    """A 2026-07-28 POST's ``tasks/get`` and its task id, if the SDK would serve it.

    The SDK's checks in its order (Accept, the body, routing headers, the
    envelope ladder), then the extension's (its declaration, ``Mcp-Name``).
    None for anything that one of them would refuse: the SDK answers those.
    """
    has_json, has_sse = check_accept_headers(request)
    if not (has_json and has_sse):
        return None
    try:
        parsed: object = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(parsed, dict):
        return None
    decoded = cast("dict[str, Any]", parsed)
    if decoded.get("method") != _MODERN_METHOD:
        return None
    try:
        message = JSONRPCRequest.model_validate(decoded)
    except ValidationError:
        return None
    if find_duplicated_routing_header(request.headers.items()) is not None:
        return None
    verdict = classify_inbound_request(decoded, headers=dict(request.headers))
    if (
        not isinstance(verdict, InboundModernRoute)
        or verdict.protocol_version != MODERN_VERSION
        or not _declares_extension(verdict.client_capabilities)
    ):
        return None
    task_id = _task_id(message.params, types.GetTaskRequestParams)
    sent_name = request.headers.get("mcp-name")
    if task_id is None or sent_name is None or decode_name_header(sent_name) != task_id:
        return None
    return message, task_id


def _modern(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == _PROTOCOL_VERSION_HEADER:
            return value == MODERN_VERSION.encode()
    return False


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` with the already-read ``body`` delivered first, once."""
    pending = True

    async def replayed() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


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


def _has_modern_envelope(params: Mapping[str, Any] | None) -> bool:
    # The SDK refuses a 2026-07-28 envelope on a handshake-era session.
    meta = (params or {}).get("_meta")
    return isinstance(meta, dict) and PROTOCOL_VERSION_META_KEY in meta


def _declares_extension(raw: object) -> bool:
    # As the SDK reads the envelope (a mis-shaped value counts as absent),
    # then as `declares_extension` reads the result.
    try:
        capabilities = types.ClientCapabilities.model_validate(raw)
    except ValidationError:
        return False
    extensions = capabilities.extensions
    return extensions is not None and EXTENSION_ID in extensions
