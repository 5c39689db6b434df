"""The 2026-07-28 entry of direct answers: the SDK's checks, then `DirectAnswers`.

mcp 2.3 serves a 2026-07-28 POST in ``_streamable_http_modern``: Host and
Origin, Accept, the body, duplicated routing headers, the envelope ladder,
``Mcp-Param-*`` headers, then a fresh runner per request. `ModernEntry`
sits where the session manager starts on a request (inside its body-size
limit, after auth), runs the same checks with the SDK's own functions, then
the extension's (its declaration, ``Mcp-Name``), and hands what passes to
`DirectAnswers`. Whatever one of them would refuse, and every other request,
reaches the SDK exactly as it came, body included: the SDK answers it.

`install` is the one place that reaches into the session manager for this
(pinned to mcp 2.3.x; ``tests/e2e/test_direct_answers.py`` fails if the SDK
stops calling it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final, cast

import mcp_types as types
from mcp.server.streamable_http import check_accept_headers
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import (
    RequestBodyLimitMiddleware,
    TransportSecurityMiddleware,
    TransportSecuritySettings,
)
from mcp.shared.inbound import (
    ERROR_CODE_HTTP_STATUS,
    MCP_PARAM_HEADER_PREFIX,
    MCP_PROTOCOL_VERSION_HEADER,
    InboundModernRoute,
    classify_inbound_request,
    find_duplicated_routing_header,
    validate_mcp_param_headers,
)
from mcp_types import JSONRPCError, JSONRPCRequest
from mcp_types import methods as spec_methods
from pydantic import ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_tasks.binding._common import MODERN_VERSION, Requesters
from mcp_tasks.binding._direct import (
    TASKS_GET,
    TOOLS_CALL,
    Answer,
    DirectAnswers,
    modern_task_id,
)
from mcp_tasks.binding._extension import declares, decode_name_header
from mcp_tasks.binding._response_mode import SdkChangedError
from mcp_tasks.engine import tracing_on

_PROTOCOL_VERSION_HEADER: Final = MCP_PROTOCOL_VERSION_HEADER.lower().encode()
_MODERN: Final = MODERN_VERSION.encode()
_PARAM_HEADER: Final = MCP_PARAM_HEADER_PREFIX.lower()
_DIRECT_METHODS: Final = frozenset({TASKS_GET, TOOLS_CALL})


class ModernEntry:
    """ASGI: 2026-07-28 POSTs `DirectAnswers` can answer; the rest to ``app``."""

    def __init__(
        self,
        app: ASGIApp,
        direct: DirectAnswers,
        requesters: Requesters,
        security: TransportSecuritySettings | None,
    ) -> None:
        self.app = app
        self.direct = direct
        self.requesters = requesters
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
        answer = None if tracing_on() else await self._answer(request, body)
        if answer is None:
            await self.app(scope, _replay(body, receive), send)
            return
        status = 200
        if isinstance(answer, JSONRPCError):
            status = ERROR_CODE_HTTP_STATUS.get(answer.error.code, 200)
        # As the SDK writes a 2026-07-28 answer (its dump leaves a result's
        # own values as they are, so a success needs no model dump).
        if isinstance(answer, JSONRPCError):
            dumped = answer.model_dump(mode="json", by_alias=True, exclude_none=True)
        else:
            dumped = {"jsonrpc": "2.0", "id": answer.id, "result": answer.result}
        content = json.dumps(dumped, separators=(",", ":")).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(content)).encode()),
        ]
        await send(
            {"type": "http.response.start", "status": status, "headers": headers}
        )
        await send({"type": "http.response.body", "body": content})

    async def _answer(self, request: Request, body: bytes) -> Answer | None:
        checked = _checked(request, body)
        if checked is None:
            return None
        message, verdict = checked
        capabilities = _capabilities(verdict.client_capabilities)
        if capabilities is None:
            return None
        declared = declares(capabilities)
        params = message.params or {}
        if message.method == TASKS_GET:
            task_id = modern_task_id(message.params)
            sent = request.headers.get("mcp-name")
            if not declared or task_id is None or sent is None:
                return None
            if decode_name_header(sent) != task_id:
                return None  # the extension answers the header mismatch
            requester = self.requesters.of_http(None, request)
            return await self.direct.modern_get(message, requester, task_id)
        spec = self.direct.task_tool(params.get("name"))
        if spec is None or not declared:
            return None  # a synchronous call (or a refusal): the SDK's
        arguments: object = params.get("arguments") or {}
        if _param_headers_refused(request, spec.shared_input_schema, arguments):
            return None
        requester = self.requesters.of_http(None, request)
        return await self.direct.modern_call(message, requester, spec, capabilities)


def install(
    manager: StreamableHTTPSessionManager,
    direct: DirectAnswers,
    requesters: Requesters,
) -> None:
    """Put `ModernEntry` in front of ``manager``'s request handling.

    mcp 2.3's session manager handles every request through its ``asgi_app``,
    the body-size limit around its own dispatch; `ModernEntry` goes between
    the two.

    Raises:
        SdkChangedError: ``asgi_app`` is no longer that middleware.
    """
    limit = cast("object", manager.asgi_app)
    if not isinstance(limit, RequestBodyLimitMiddleware):
        raise SdkChangedError(
            "mcp's session manager changed: asgi_app is not RequestBodyLimitMiddleware "
            "(mcp_tasks.binding._direct_modern relies on it)"
        )
    limit.app = ModernEntry(limit.app, direct, requesters, manager.security_settings)


def _checked(
    request: Request, body: bytes
) -> tuple[JSONRPCRequest, InboundModernRoute] | None:
    """The POST's request and envelope, if the SDK's checks pass and it may be ours.

    The SDK's checks in its order: Accept, the body, routing headers, the
    envelope ladder, the method's params (as its runner validates them).
    """
    has_json, has_sse = check_accept_headers(request)
    parsed = _parsed(body) if has_json and has_sse else None
    if parsed is None:
        return None
    decoded, message = parsed
    if find_duplicated_routing_header(request.headers.items()) is not None:
        return None
    verdict = classify_inbound_request(decoded, headers=dict(request.headers))
    if (
        not isinstance(verdict, InboundModernRoute)
        or verdict.protocol_version != MODERN_VERSION
    ):
        return None
    if message.method in spec_methods.SPEC_CLIENT_METHODS:
        try:
            spec_methods.validate_client_request(
                message.method, MODERN_VERSION, message.params
            )
        except (ValidationError, KeyError):
            return None
    return message, verdict


def _parsed(body: bytes) -> tuple[dict[str, Any], JSONRPCRequest] | None:
    """The body as JSON and as a request, if it is one of the methods answered here."""
    try:
        parsed: object = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(parsed, dict):
        return None
    decoded = cast("dict[str, Any]", parsed)
    if decoded.get("method") not in _DIRECT_METHODS:
        return None
    try:
        return decoded, JSONRPCRequest.model_validate(decoded)
    except ValidationError:
        return None


def _capabilities(raw: object) -> types.ClientCapabilities | None:
    # As the SDK reads the envelope: a mis-shaped value counts as absent
    # (then nothing is declared, and the SDK's path answers).
    try:
        return types.ClientCapabilities.model_validate(raw)
    except ValidationError:
        return None


def _param_headers_refused(
    request: Request, schema: Mapping[str, Any], arguments: object
) -> bool:
    """Whether the SDK would refuse the call's ``Mcp-Param-*`` headers."""
    if not isinstance(arguments, dict):
        return True
    values = cast("dict[str, Any]", arguments)
    if not values and not any(h.startswith(_PARAM_HEADER) for h in request.headers):
        return False
    return validate_mcp_param_headers(schema, values, request.headers) is not None


def _modern(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == _PROTOCOL_VERSION_HEADER:
            return value == _MODERN
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
