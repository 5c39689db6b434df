"""Per-request response mode for handshake-era POSTs over Streamable HTTP.

mcp 2.3 answers every 2025-11-25 (and earlier) request POST either as a
server-sent-event stream or, with its global ``json_response`` switch, as one
JSON body. A stream costs about half the server's CPU of a ``tasks/get``
(sse-starlette's sender task and pings, uvicorn's chunked send chain, two
memory streams) and, because clients close a finished stream before its last
chunk, a new TCP connection per request. The global switch is no answer: it
drops the progress and log notifications of synchronous calls and cannot carry
a question asked on a call's own stream (the call hangs).

So the answer is chosen per request, as mcp 2.3 already does on 2026-07-28
(``_streamable_http_modern``): the request is dispatched, and the first
message the server sends on the request's own channel decides.

- The response itself comes first: one ``application/json`` body with a
  ``Content-Length`` (the connection stays open for the next request).
- A notification or a server-to-client request comes first (progress, a log
  line, a question): the answer becomes the SDK's own SSE stream, starting
  with that message, exactly as before.
- Nothing within `STREAM_AFTER_SECONDS` (a long synchronous call, a blocking
  ``tasks/result``): the SSE stream starts anyway, empty, so its keep-alive
  pings hold the connection open behind proxies with idle-read timeouts, as
  mcp 2.3's modern path does after the same 15 s.

Everything that is not a well-formed request (errors, notifications, client
responses, ``initialize``) and every transport with an event store
(resumable streams need the priming event first) is left to the SDK.

This is the one module that relies on mcp 2.3's transport internals: the
per-request channel (``_request_streams``), how a request is framed and
dispatched (``_create_session_message``, ``_read_stream_writer``) and the
SSE sender (``_run_sse_writer``, ``_sse_stream_writers``). `install` checks
they are there, so an SDK that moved them fails at start-up, not per request,
and the end-to-end tests (``tests/e2e/test_response_mode.py``) fail if the
behaviour changes under them. The SDK minor is pinned (``mcp>=2.3,<2.4``).
spec-notes.md C59 writes the change up as a proposal for the SDK.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, ClassVar, Final

import anyio
import pydantic_core
from anyio.streams.memory import MemoryObjectReceiveStream
from mcp.server.streamable_http import (
    MCP_SESSION_ID_HEADER,
    REQUEST_STREAM_BUFFER_SIZE,
    EventMessage,
    SSEEvent,
    StreamableHTTPServerTransport,
    check_accept_headers,
)
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp_types import (
    DEFAULT_NEGOTIATED_VERSION,
    INTERNAL_ERROR,
    JSONRPCError,
    JSONRPCRequest,
    JSONRPCResponse,
    jsonrpc_message_adapter,
)
from pydantic import ValidationError
from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

if TYPE_CHECKING:
    from mcp_tasks.binding._direct import DirectAnswers

logger = logging.getLogger("mcp_tasks.http")

#: How long a request may stay silent before its answer becomes a stream anyway
#: (sse-starlette's ping interval, and mcp 2.3's window on 2026-07-28).
STREAM_AFTER_SECONDS: Final = 15.0

#: What the transport must have for `PerRequestTransport` to work on it.
_SDK_TRANSPORT_NEEDS: Final = (
    "_handle_post_request",
    "_create_session_message",
    "_create_json_response",
    "_create_error_response",
    "_create_event_data",
    "_run_sse_writer",
    "_clean_up_memory_streams",
    "_validate_request_headers",
    "_check_content_type",
)
_SDK_MANAGER_NEEDS: Final = ("_admit_session",)


class SdkChangedError(RuntimeError):
    """mcp's Streamable HTTP transport no longer has what this module relies on."""


class PerRequestTransport(StreamableHTTPServerTransport):
    """The SDK's handshake-era transport, answering each request POST in its mode.

    Adds no state of its own (`install` turns the SDK's transports into this
    class as the session manager admits them). What `DirectAnswers` can
    answer it answers, without a dispatch (`_direct`).
    """

    #: Set on the subclass `install` makes for one server.
    direct_answers: ClassVar[DirectAnswers | None] = None

    async def _handle_post_request(
        self, scope: Scope, request: Request, receive: Receive, send: Send
    ) -> None:
        message = await self._plain_request(request)
        if message is None:
            # Not ours to decide: the SDK answers it (and every error) itself.
            # The body is cached on `request`, so it is read once.
            await super()._handle_post_request(scope, request, receive, send)
            return
        writer = self._read_stream_writer
        if writer is None:  # pragma: no cover - connect() precedes any request
            raise SdkChangedError("the transport's read stream is not connected")
        if not await self._validate_request_headers(request, send):
            return
        if self.direct_answers is not None:
            answer = await self.direct_answers.legacy(
                message, self.mcp_session_id, request
            )
            if answer is not None:
                await self._create_json_response(answer)(scope, receive, send)
                return
        try:
            await self._answer(message, scope, request, receive, send)
        except Exception as error:
            # As the SDK does for a POST that fails in its hands.
            logger.exception("Error handling POST request")
            response = self._create_error_response(
                "Error handling POST request",
                HTTPStatus.INTERNAL_SERVER_ERROR,
                INTERNAL_ERROR,
            )
            await response(scope, receive, send)
            await writer.send(Exception(error))

    async def _plain_request(self, request: Request) -> JSONRPCRequest | None:
        """The POST's JSON-RPC request, if this module decides its answer."""
        if self.is_json_response_enabled or self._event_store is not None:
            return None
        has_json, has_sse = check_accept_headers(request)
        if not (has_json and has_sse) or not self._check_content_type(request):
            return None
        body = await request.body()
        try:
            message = jsonrpc_message_adapter.validate_python(
                pydantic_core.from_json(body), by_name=False
            )
        except (ValueError, ValidationError):
            return None
        if not isinstance(message, JSONRPCRequest) or message.method == "initialize":
            return None
        return message

    async def _answer(
        self,
        message: JSONRPCRequest,
        scope: Scope,
        request: Request,
        receive: Receive,
        send: Send,
    ) -> None:
        """Dispatch ``message`` and answer with JSON or a stream, as its first message says."""
        writer = self._read_stream_writer
        assert writer is not None
        request_id = str(message.id)
        version = request.headers.get(
            MCP_PROTOCOL_VERSION_HEADER, DEFAULT_NEGOTIATED_VERSION
        )
        channel = anyio.create_memory_object_stream[EventMessage](
            REQUEST_STREAM_BUFFER_SIZE
        )
        self._request_streams[request_id] = channel
        reader = channel[1]
        await writer.send(
            self._create_session_message(message, request, request_id, version)
        )
        first: EventMessage | None = None
        with anyio.move_on_after(STREAM_AFTER_SECONDS):
            try:
                first = await reader.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                # The session was terminated with this request in flight.
                await self._clean_up_memory_streams(request_id)
                response = self._create_error_response(
                    "Session terminated before the request completed",
                    HTTPStatus.INTERNAL_SERVER_ERROR,
                    INTERNAL_ERROR,
                )
                await response(scope, receive, send)
                return
        if first is not None and isinstance(
            first.message, JSONRPCResponse | JSONRPCError
        ):
            await self._clean_up_memory_streams(request_id)
            await self._create_json_response(first.message)(scope, receive, send)
            return
        await self._stream(request_id, reader, first, scope, receive, send)

    async def _stream(
        self,
        request_id: str,
        reader: MemoryObjectReceiveStream[EventMessage],
        first: EventMessage | None,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        """Answer as the SDK's SSE stream, ``first`` (already received) leading."""
        sse_writer, sse_reader = anyio.create_memory_object_stream[SSEEvent](0)
        self._sse_stream_writers[request_id] = sse_writer

        async def sender() -> None:
            if first is not None:
                try:
                    await sse_writer.send(self._create_event_data(first))
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    # The client went away before the first event.
                    sse_writer.close()
                    self._sse_stream_writers.pop(request_id, None)
                    await self._clean_up_memory_streams(request_id)
                    return
            await self._run_sse_writer(request_id, sse_writer, reader, None)

        headers = {
            "Cache-Control": "no-cache, no-transform",
            "Connection": "keep-alive",
            "Content-Type": "text/event-stream",
        }
        if self.mcp_session_id:
            headers[MCP_SESSION_ID_HEADER] = self.mcp_session_id
        response = EventSourceResponse(
            content=sse_reader, data_sender_callable=sender, headers=headers
        )
        try:
            await response(scope, receive, send)
        finally:
            await sse_writer.aclose()
            await sse_reader.aclose()
            # Whatever ended the response, nothing for this request is kept.
            self._sse_stream_writers.pop(request_id, None)
            await self._clean_up_memory_streams(request_id)


def install(
    manager: StreamableHTTPSessionManager, direct: DirectAnswers | None = None
) -> None:
    """Make every session ``manager`` admits from now on answer per request.

    With ``direct``, the requests it can answer skip the dispatch.

    Raises:
        SdkChangedError: mcp's transport or session manager lacks a method
            this module relies on (the SDK changed under the pin).
    """
    check_sdk()
    admit = manager._admit_session  # pyright: ignore[reportPrivateUsage]

    class ServerTransport(PerRequestTransport):
        direct_answers = direct

    def admit_per_request(*args: Any, **kwargs: Any) -> Any:
        transport = admit(*args, **kwargs)
        if type(transport) is StreamableHTTPServerTransport:
            # The subclass adds methods only, no state: the SDK built and
            # registered the object; it now answers through our POST handler.
            transport.__class__ = ServerTransport
        return transport

    manager._admit_session = admit_per_request  # pyright: ignore[reportPrivateUsage, reportAttributeAccessIssue]


def check_sdk() -> None:
    """Fail loudly if mcp moved what `PerRequestTransport` relies on.

    Raises:
        SdkChangedError: a method is missing.
    """
    missing = [
        name
        for name in _SDK_TRANSPORT_NEEDS
        if not callable(getattr(StreamableHTTPServerTransport, name, None))
    ] + [
        name
        for name in _SDK_MANAGER_NEEDS
        if not callable(getattr(StreamableHTTPSessionManager, name, None))
    ]
    if missing:
        raise SdkChangedError(
            "mcp's Streamable HTTP transport changed: "
            + ", ".join(missing)
            + " not found (mcp_tasks.binding._response_mode relies on them)"
        )
