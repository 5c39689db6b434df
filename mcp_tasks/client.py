"""A small MCP client that speaks both task wire generations, for tests and examples.

mcp 2.x has no client for the 2025-11-25 task wire, and its ``ClientSession``
validates every ``tools/call`` result against ``CallToolResult``, which rejects
a ``CreateTaskResult``. :class:`TaskClient` therefore keeps the SDK's
*transports* (``stdio_client``, ``streamable_http_client``) and puts a small
JSON-RPC peer of its own on top: it correlates responses by request id, records
server notifications, answers server-to-client requests, and hands back raw
result dicts.

Two wire generations are supported (their sources: spec-notes.md, "Sources"):

``"2025-11-25"``
    ``initialize`` handshake, then ``notifications/initialized``. Task
    augmentation is the client's choice (``params.task``); results come from
    ``tasks/result``; input requests arrive as server-to-client requests.
``"2026-07-28"``
    No handshake. ``server/discover`` first, and every request carries the
    per-request envelope in ``params._meta`` (protocol version, client
    capabilities including the ``io.modelcontextprotocol/tasks`` extension,
    client info). Over HTTP each request also carries the ``MCP-Protocol-Version``,
    ``Mcp-Method`` and, where the method names a target, ``Mcp-Name`` headers.

Errors::

    RpcError                 a JSON-RPC error response (code, message, data)
    └── ConnectionClosedError  the connection ended before the response arrived
    ProtocolError            the server's handshake answer is unusable

Example::

    async with TaskClient.stdio([sys.executable, "server.py"]) as client:
        created = await client.call_tool("slow", {"seconds": 5}, task={"ttl": 60000})
        task = client.created_task(created)
        ...
"""

from __future__ import annotations

import copy
import logging
import sys
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Mapping,
    Sequence,
)
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from importlib import metadata
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    Final,
    Literal,
    Protocol,
    Self,
    TextIO,
    TypeAlias,
    cast,
)

import anyio
import httpx2
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.lowlevel import Server
from mcp.shared.inbound import (
    MCP_METHOD_HEADER,
    MCP_NAME_HEADER,
    MCP_PROTOCOL_VERSION_HEADER,
    encode_header_value,
)
from mcp.shared.memory import create_client_server_memory_streams
from mcp.shared.message import ClientMessageMetadata, SessionMessage
from mcp_types import (
    CLIENT_CAPABILITIES_META_KEY,
    CLIENT_INFO_META_KEY,
    CONNECTION_CLOSED,
    INTERNAL_ERROR,
    METHOD_NOT_FOUND,
    PROTOCOL_VERSION_META_KEY,
    SERVER_INFO_META_KEY,
    ErrorData,
    JSONRPCError,
    JSONRPCMessage,
    JSONRPCNotification,
    JSONRPCRequest,
    JSONRPCResponse,
)

from mcp_tasks._http11 import Http11Transport

if TYPE_CHECKING:
    from collections.abc import Iterator

    from anyio.abc import TaskGroup

__all__ = [
    "LEGACY_WIRE",
    "MODERN_WIRE",
    "TASKS_EXTENSION",
    "TERMINAL_STATUSES",
    "ConnectionClosedError",
    "JSONObject",
    "ProtocolError",
    "RpcError",
    "ServerRequestHandler",
    "SessionGoneError",
    "TaskClient",
    "Wire",
]

logger = logging.getLogger(__name__)

#: The session header (httpx matches header names case-insensitively).
MCP_SESSION_ID_HEADER = "mcp-session-id"

JSONObject: TypeAlias = dict[str, Any]
"""A decoded JSON object, as results, params and notifications are handed out."""

Wire: TypeAlias = Literal["2025-11-25", "2026-07-28"]
"""The task wire generation a :class:`TaskClient` speaks."""

ServerRequestHandler: TypeAlias = Callable[[str, JSONObject], Awaitable[JSONObject]]
"""Answers a server-to-client request: ``(method, params) -> result``.

Raise :class:`RpcError` to send a JSON-RPC error back instead. Any other
exception is answered with ``-32603`` and recorded in
:attr:`TaskClient.handler_errors`.
"""

LEGACY_WIRE: Final = "2025-11-25"
"""The core tasks of the 2025-11-25 revision (SEP-1686)."""

MODERN_WIRE: Final = "2026-07-28"
"""The 2026-07-28 revision with the ``io.modelcontextprotocol/tasks`` extension."""

TASKS_EXTENSION: Final = "io.modelcontextprotocol/tasks"
"""Identifier of the 2026 tasks extension (SEP-2663)."""

TERMINAL_STATUSES: Final = frozenset({"completed", "failed", "cancelled"})
"""Task statuses that never change again (both wires)."""

_NEGOTIATION_METHODS: Final = frozenset({"initialize", "server/discover"})
# Which param a method's Mcp-Name header mirrors (2026-07-28, HTTP only).
_NAME_PARAMS: Final[Mapping[str, str]] = {
    "tools/call": "name",
    "prompts/get": "name",
    "resources/read": "uri",
    "tasks/get": "taskId",
    "tasks/update": "taskId",
    "tasks/cancel": "taskId",
}
# The SDK's default HTTP timeouts: 30 s, but 300 s to read a held-open SSE stream.
_HTTP_TIMEOUT: Final = httpx2.Timeout(30.0, read=300.0)
# How long closing a finished POST stream may read on to its end, so the
# connection can be kept (the server ends it right after the response).
_DRAIN_WAIT: Final = 0.05
# At most this much of a stream is read on when it is closed early.
_DRAIN_BYTES: Final = 64 * 1024
# Upper bound on waiting for the standalone GET stream after the handshake.
_GET_STREAM_WAIT: Final = 5.0
# Upper bound on sending the courtesy notifications/cancelled for an abandoned request.
_CANCEL_NOTICE_WAIT: Final = 1.0
# Poll interval when the server suggests none (seconds).
_DEFAULT_POLL_INTERVAL: Final = 0.05


def _default_client_info() -> JSONObject:
    try:
        version = metadata.version("mcp-tasks")
    except (
        metadata.PackageNotFoundError
    ):  # pragma: no cover - running from a bare checkout
        version = "0"
    return {"name": "mcp-tasks-client", "version": version}


class RpcError(Exception):
    """A JSON-RPC error response to one of the client's requests.

    Attributes:
        code: The JSON-RPC error code, e.g. ``-32602``.
        message: The error's message.
        data: The error's optional ``data`` member (``None`` when absent).
        method: The method of the request that failed, when known.
    """

    def __init__(
        self, code: int, message: str, data: object = None, *, method: str | None = None
    ):
        super().__init__(code, message, data)
        self.code = code
        self.message = message
        self.data = data
        self.method = method

    def __str__(self) -> str:
        where = f"{self.method}: " if self.method else ""
        return f"{where}[{self.code}] {self.message}"


class ConnectionClosedError(RpcError):
    """The connection ended (or the client closed) before a response arrived.

    Its code is the SDK's ``CONNECTION_CLOSED`` (``-32000``), the same code the
    SDK's HTTP transport uses for a response stream that ended early.
    """

    def __init__(
        self, message: str = "Connection closed", *, method: str | None = None
    ):
        super().__init__(CONNECTION_CLOSED, message, method=method)


class SessionGoneError(ConnectionClosedError):
    """The HTTP server no longer knows this client's session (it answered ``404``).

    A restarted server, or a replica that is gone, has no record of the
    session; the spec has the client start a new one with ``initialize``. It
    is a `ConnectionClosedError`, so code that reconnects on a lost
    connection reconnects on this too, but it keeps the server's own code and
    message (``-32600 Session not found``).
    """

    def __init__(
        self, code: int, message: str, data: object = None, *, method: str | None = None
    ) -> None:
        RpcError.__init__(self, code, message, data, method=method)


#: How the SDK's HTTP transport words the errors it makes up for a response
#: stream that broke (its ``_resolve_abandoned_request``; pinned to mcp 2.3.x).
_TRANSPORT_ERRORS = ("SSE stream ended without a response", "SSE stream failed")


def _lost_in_transport(error: ErrorData) -> bool:
    """Whether ``error`` was made up by the transport, not sent by the server.

    The code alone cannot tell: ``-32000`` is also a server-defined code (a
    full backlog, for one). The transport's errors carry no data.
    """
    return (
        error.code == CONNECTION_CLOSED
        and error.data is None
        and error.message.startswith(_TRANSPORT_ERRORS)
    )


class ProtocolError(Exception):
    """The server's answer to the handshake (or discovery) cannot be used."""


class _MessageReceiver(Protocol):
    async def receive(self) -> SessionMessage | Exception: ...


class _MessageSender(Protocol):
    async def send(self, item: SessionMessage, /) -> None: ...


class _Pending:
    """One outstanding request: set exactly once, by a response or by closure."""

    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.result: JSONObject | None = None
        self.error: RpcError | None = None


class _HttpObserver:
    """Watches the HTTP exchange: session id, whether the GET stream is up, and
    whether the server has forgotten the session."""

    def __init__(self) -> None:
        self.session_id: str | None = None
        self.get_answered = anyio.Event()
        #: Set once a request carrying the session id was answered ``404``:
        #: every later request of this session fails the same way.
        self.session_gone = False

    def saw(self, request: httpx2.Request, response: httpx2.Response) -> None:
        """Called by the transport for every response, before the SDK reads it."""
        if response.status_code == 404 and MCP_SESSION_ID_HEADER in request.headers:
            self.session_gone = True

    async def on_response(self, response: httpx2.Response) -> None:
        session_id = response.headers.get(MCP_SESSION_ID_HEADER)
        if session_id:
            self.session_id = session_id
        if response.request.method == "GET":
            self.get_answered.set()


class _DrainedStream(httpx2.AsyncByteStream):
    """A POST's event stream that reads on to its end when closed early.

    The SDK's HTTP client closes an SSE answer as soon as the JSON-RPC response
    is in it, before the server's last chunk; httpx then cannot reuse the
    connection and every such request costs a new TCP connection. The server
    ends the stream right after the response, so reading on briefly (bounded
    in time and bytes) lets the connection go back to the pool.
    """

    def __init__(self, inner: httpx2.AsyncByteStream) -> None:
        self._inner = inner
        self._chunks: AsyncIterator[bytes] | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self._chunks = aiter(self._inner)
        async for chunk in self._chunks:
            yield chunk

    async def aclose(self) -> None:
        if self._chunks is not None:
            read = 0
            with anyio.move_on_after(_DRAIN_WAIT):
                try:
                    async for chunk in self._chunks:
                        read += len(chunk)
                        if read > _DRAIN_BYTES:
                            break
                except httpx2.HTTPError:
                    pass  # the connection is closed below either way
        await self._inner.aclose()


class _KeepAliveTransport(httpx2.AsyncBaseTransport):
    """The client's HTTP transport: ``Http11Transport`` (kept-alive HTTP/1.1 for
    ``http://``, httpx's own transport for the rest), keeping connections
    across early-closed POST streams.

    With ``standalone_stream=False`` it also refuses GETs itself (``405``),
    so no standalone stream is opened.
    """

    def __init__(
        self, observer: _HttpObserver, *, standalone_stream: bool = True
    ) -> None:
        self._inner = Http11Transport()
        self._observer = observer
        self._standalone_stream = standalone_stream

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.method == "GET" and not self._standalone_stream:
            return httpx2.Response(405, request=request)
        if request.method == "DELETE" and self._observer.session_gone:
            # Nothing to terminate: the server said the session is gone.
            return httpx2.Response(204, request=request)
        response = await self._inner.handle_async_request(request)
        self._observer.saw(request, response)
        content_type = response.headers.get("content-type", "")
        if request.method == "POST" and content_type.startswith("text/event-stream"):
            stream = cast("httpx2.AsyncByteStream", response.stream)
            response.stream = _DrainedStream(stream)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class TaskClient:
    """A raw JSON-RPC MCP client for one server connection, on either task wire.

    Open one with :meth:`stdio` or :meth:`http`; both are async context managers
    that connect, run the handshake (``initialize`` on 2025-11-25,
    ``server/discover`` on 2026-07-28) and close everything on exit, including
    the server subprocess for :meth:`stdio`.

    Results are returned as the raw ``result`` dicts; JSON-RPC errors raise
    :class:`RpcError`. Concurrent requests from several tasks are fine.

    Attributes:
        wire: The wire generation spoken, ``"2025-11-25"`` or ``"2026-07-28"``.
        server_capabilities: The server's capabilities, from ``initialize``
            (2025-11-25) or ``server/discover`` (2026-07-28).
        server_info: The server's ``Implementation`` (``serverInfo`` of
            ``initialize``, or the ``serverInfo`` ``_meta`` stamp of
            ``server/discover``), when it sent one.
        connect_result: The whole ``initialize`` or ``server/discover`` result.
        notifications: Every server notification received, in arrival order, as
            ``{"method": ..., "params": {...}}`` (``params`` is ``{}`` when absent).
        server_requests: Every server-to-client request received, in order, as
            ``{"id": ..., "method": ..., "params": {...}}``.
        handler_errors: Exceptions other than :class:`RpcError` raised by the
            ``on_request`` handler (each was answered with ``-32603``).
        transport_errors: Undecodable messages the transport reported.
    """

    def __init__(
        self,
        write_stream: _MessageSender,
        *,
        wire: Wire,
        capabilities: Mapping[str, Any] | None,
        declare_tasks_extension: bool,
        on_request: ServerRequestHandler | None,
        client_info: Mapping[str, Any] | None,
        http: _HttpObserver | None,
    ) -> None:
        """Wire an already-open transport; use :meth:`stdio` or :meth:`http` instead."""
        if wire not in (LEGACY_WIRE, MODERN_WIRE):
            raise ValueError(f"unknown wire {wire!r}")
        self.wire: Wire = wire
        self.server_capabilities: JSONObject = {}
        self.server_info: JSONObject | None = None
        self.connect_result: JSONObject = {}
        self.notifications: list[JSONObject] = []
        self.server_requests: list[JSONObject] = []
        self.handler_errors: list[Exception] = []
        self.transport_errors: list[Exception] = []
        self._write = write_stream
        self._capabilities: JSONObject = copy.deepcopy(dict(capabilities or {}))
        self._declare_tasks_extension = declare_tasks_extension
        self._on_request = on_request
        self._client_info: JSONObject = (
            copy.deepcopy(dict(client_info))
            if client_info is not None
            else _default_client_info()
        )
        self._http = http
        self._next_id = 1
        self._pending: dict[int | str, _Pending] = {}
        self._inbound: dict[int | str, anyio.CancelScope] = {}
        self._taken: set[int] = set()
        self._arrival = anyio.Event()
        self._handshake_done = False
        self._closed = False
        self._task_group: TaskGroup | None = None
        self._host_error: BaseException | None = None

    # ------------------------------------------------------------------ opening

    @classmethod
    @asynccontextmanager
    async def stdio(
        cls,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        wire: Wire = LEGACY_WIRE,
        capabilities: Mapping[str, Any] | None = None,
        declare_tasks_extension: bool = True,
        on_request: ServerRequestHandler | None = None,
        client_info: Mapping[str, Any] | None = None,
        errlog: TextIO | None = None,
    ) -> AsyncGenerator[Self]:
        """Spawn ``command`` as a stdio MCP server and connect to it.

        Args:
            command: The executable and its arguments, e.g.
                ``[sys.executable, "server.py"]``.
            env: Extra environment variables. As with the SDK's
                ``stdio_client``, they are merged over a small safe default
                environment (``HOME``, ``PATH``, ``USER``, ...), not over
                ``os.environ``.
            cwd: Working directory of the server process.
            wire: The wire generation to speak.
            capabilities: Client capabilities, e.g.
                ``{"elicitation": {"form": {}}}``. Sent in ``initialize`` on
                2025-11-25 and in every request's ``_meta`` on 2026-07-28.
            declare_tasks_extension: On 2026-07-28, add
                ``extensions["io.modelcontextprotocol/tasks"] = {}`` to the
                capabilities. Ignored on 2025-11-25.
            on_request: Answers server-to-client requests. Without one, ``ping``
                is answered with ``{}`` and everything else with ``-32601``.
            client_info: The client ``Implementation``; defaults to
                ``{"name": "mcp-tasks-client", "version": <package version>}``.
            errlog: Where the server's stderr goes; defaults to ``sys.stderr``.

        On exit the server's stdin is closed and the process (tree) is
        terminated if it does not exit within the SDK's grace period.
        """
        if not command:
            raise ValueError("command must name an executable")
        server = StdioServerParameters(
            command=command[0],
            args=list(command[1:]),
            env=dict(env) if env is not None else None,
            cwd=cwd,
        )
        transport = stdio_client(server, errlog=errlog or sys.stderr)
        async with cls._open(
            transport,
            wire=wire,
            capabilities=capabilities,
            declare_tasks_extension=declare_tasks_extension,
            on_request=on_request,
            client_info=client_info,
            http=None,
        ) as client:
            yield client

    @classmethod
    @asynccontextmanager
    async def http(
        cls,
        url: str,
        *,
        token: str | None = None,
        wire: Wire = LEGACY_WIRE,
        capabilities: Mapping[str, Any] | None = None,
        declare_tasks_extension: bool = True,
        on_request: ServerRequestHandler | None = None,
        headers: Mapping[str, str] | None = None,
        client_info: Mapping[str, Any] | None = None,
        standalone_stream: bool = True,
    ) -> AsyncGenerator[Self]:
        """Connect to a Streamable HTTP MCP endpoint such as ``http://127.0.0.1:8000/mcp``.

        Args:
            url: The MCP endpoint.
            token: If given, every HTTP request carries
                ``Authorization: Bearer <token>``.
            headers: Extra headers for every HTTP request.
            standalone_stream: Whether to open the standalone GET stream. With
                ``False`` the client answers its own GETs with ``405`` and never
                opens it, like clients that only read POST response streams:
                the server can then reach it only on those.
            wire, capabilities, declare_tasks_extension, on_request, client_info:
                As for :meth:`stdio`.

        On 2025-11-25 the session id from ``initialize`` is kept
        (:attr:`session_id`) and the SDK transport opens the standalone GET
        stream after ``notifications/initialized``; the client waits (up to a
        few seconds) until the server has answered that GET before returning,
        so messages the server sends on it afterwards are not dropped. Server
        messages are received from both the POST response streams and the GET
        stream. On exit the session is terminated with ``DELETE``.
        """
        default_headers = dict(headers or {})
        if token is not None:
            default_headers["Authorization"] = f"Bearer {token}"
        observer = _HttpObserver()
        http_client = httpx2.AsyncClient(
            headers=default_headers,
            timeout=_HTTP_TIMEOUT,
            event_hooks={"response": [observer.on_response]},
            transport=_KeepAliveTransport(
                observer, standalone_stream=standalone_stream
            ),
        )
        async with http_client:
            transport = streamable_http_client(url, http_client=http_client)
            async with cls._open(
                transport,
                wire=wire,
                capabilities=capabilities,
                declare_tasks_extension=declare_tasks_extension,
                on_request=on_request,
                client_info=client_info,
                http=observer,
            ) as client:
                yield client

    @classmethod
    @asynccontextmanager
    async def in_process(
        cls,
        server: Server[Any],
        *,
        wire: Wire = LEGACY_WIRE,
        capabilities: Mapping[str, Any] | None = None,
        declare_tasks_extension: bool = True,
        on_request: ServerRequestHandler | None = None,
        client_info: Mapping[str, Any] | None = None,
    ) -> AsyncGenerator[Self]:
        """Serve a lowlevel mcp ``Server`` in this process and connect to it.

        The server runs over in-memory streams (both eras, as over stdio) for
        as long as the block lasts. Arguments as for :meth:`stdio`.
        """

        @asynccontextmanager
        async def transport() -> AsyncGenerator[
            tuple[_MessageReceiver, _MessageSender]
        ]:
            async with (
                create_client_server_memory_streams() as (
                    client_streams,
                    server_streams,
                ),
                anyio.create_task_group() as tg,
            ):
                options = server.create_initialization_options()
                tg.start_soon(server.run, server_streams[0], server_streams[1], options)
                yield client_streams
                tg.cancel_scope.cancel()

        async with cls._open(
            transport(),
            wire=wire,
            capabilities=capabilities,
            declare_tasks_extension=declare_tasks_extension,
            on_request=on_request,
            client_info=client_info,
            http=None,
        ) as client:
            yield client

    @classmethod
    @asynccontextmanager
    async def _open(
        cls,
        transport: AbstractAsyncContextManager[tuple[_MessageReceiver, _MessageSender]],
        *,
        wire: Wire,
        capabilities: Mapping[str, Any] | None,
        declare_tasks_extension: bool,
        on_request: ServerRequestHandler | None,
        client_info: Mapping[str, Any] | None,
        http: _HttpObserver | None,
    ) -> AsyncGenerator[Self]:
        """Connect over an SDK transport; unwrap task-group wrapping of errors.

        The SDK transports and :meth:`_running` hold task groups open around
        the ``async with`` body, so an exception from the handshake or from the
        caller's body would surface as a (nested) ``ExceptionGroup``. When that
        one exception is all the group holds, it is re-raised bare, so
        ``pytest.raises(RpcError)`` around the whole block works.
        """
        client: Self | None = None
        try:
            async with transport as (read_stream, write_stream):
                client = cls(
                    write_stream,
                    wire=wire,
                    capabilities=capabilities,
                    declare_tasks_extension=declare_tasks_extension,
                    on_request=on_request,
                    client_info=client_info,
                    http=http,
                )
                async with client._running(read_stream):
                    yield client
        except BaseExceptionGroup as group:
            error = client._host_error if client is not None else None
            if error is not None and all(leaf is error for leaf in _leaves(group)):
                raise error from None
            raise

    @asynccontextmanager
    async def _running(self, read_stream: _MessageReceiver) -> AsyncGenerator[None]:
        """Run the reader and connect; on exit stop it all and fail what is pending."""
        try:
            async with anyio.create_task_group() as task_group:
                self._task_group = task_group
                task_group.start_soon(self._read_loop, read_stream)
                try:
                    await self._connect()
                    yield
                except BaseException as exc:
                    self._host_error = exc
                    raise
                finally:
                    self._close("client closed")
                    task_group.cancel_scope.cancel()
        finally:
            self._task_group = None
            self._close("client closed")

    async def _connect(self) -> None:
        if self.wire == LEGACY_WIRE:
            await self._initialize()
        else:
            await self._discover()

    async def _initialize(self) -> None:
        result = await self.request(
            "initialize",
            {
                "protocolVersion": LEGACY_WIRE,
                "capabilities": copy.deepcopy(self._capabilities),
                "clientInfo": copy.deepcopy(self._client_info),
            },
        )
        version = result.get("protocolVersion")
        if version != LEGACY_WIRE:
            raise ProtocolError(
                f"server negotiated protocol version {version!r}, not {LEGACY_WIRE}"
            )
        self.connect_result = result
        self.server_capabilities = _object(result.get("capabilities"))
        self.server_info = _as_object(result.get("serverInfo"))
        self._handshake_done = True
        await self.notify("notifications/initialized")
        if self._http is not None and self._http.session_id is not None:
            # The transport opens the GET stream on notifications/initialized; a
            # server drops standalone messages while no GET stream is connected.
            with anyio.move_on_after(_GET_STREAM_WAIT):
                await self._http.get_answered.wait()

    async def _discover(self) -> None:
        result = await self.request("server/discover")
        versions = result.get("supportedVersions")
        if not isinstance(versions, list) or MODERN_WIRE not in versions:
            raise ProtocolError(
                f"server/discover offers {versions!r}, not {MODERN_WIRE}"
            )
        self.connect_result = result
        self.server_capabilities = _object(result.get("capabilities"))
        meta = _object(result.get("_meta"))
        self.server_info = _as_object(meta.get(SERVER_INFO_META_KEY))
        self._handshake_done = True

    # --------------------------------------------------------------- properties

    @property
    def session_id(self) -> str | None:
        """The ``Mcp-Session-Id`` the HTTP server assigned, if any (never on stdio)."""
        return self._http.session_id if self._http is not None else None

    @property
    def client_capabilities(self) -> JSONObject:
        """The capabilities this client declares on its wire (a copy).

        On 2026-07-28 with ``declare_tasks_extension`` this includes
        ``extensions["io.modelcontextprotocol/tasks"]``.
        """
        capabilities = copy.deepcopy(self._capabilities)
        if self.wire == MODERN_WIRE and self._declare_tasks_extension:
            extensions = _object(capabilities.get("extensions"))
            extensions.setdefault(TASKS_EXTENSION, {})
            capabilities["extensions"] = extensions
        return capabilities

    @property
    def closed(self) -> bool:
        """Whether the connection has ended (server gone or client closed)."""
        return self._closed

    # ------------------------------------------------------------ raw messaging

    async def request(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        headers: Mapping[str, str | None] | None = None,
    ) -> JSONObject:
        """Send a request and return its raw ``result`` dict.

        On 2026-07-28 the per-request envelope is added to ``params._meta``
        unless the caller already set that key; a reserved key the caller set
        to ``None`` is left out, so a test can send, say, a request without
        client capabilities. ``params`` is never mutated.

        Args:
            method: The JSON-RPC method.
            params: The request params.
            headers: HTTP only: headers for this one POST, applied last, so they
                override the computed ``MCP-Protocol-Version``/``Mcp-Method``/
                ``Mcp-Name`` (a ``None`` value drops a header). Names are
                case-insensitive. The transport always re-adds the session's
                cached ``MCP-Protocol-Version`` if this drops it. Ignored on stdio.

        Raises:
            RpcError: The server answered with a JSON-RPC error.
            ConnectionClosedError: The connection ended first.

        If the caller is cancelled while waiting, a ``notifications/cancelled``
        is sent for the request (except for ``initialize``/``server/discover``);
        on 2026-07-28 over HTTP the SDK transport turns that into aborting the
        request's POST.
        """
        if self._closed:
            raise ConnectionClosedError(method=method)
        request_id = self._next_id
        self._next_id += 1
        body = self._stamp(params)
        pending = _Pending()
        self._pending[request_id] = pending
        if body is None:
            message = JSONRPCRequest(jsonrpc="2.0", id=request_id, method=method)
        else:
            message = JSONRPCRequest(
                jsonrpc="2.0", id=request_id, method=method, params=body
            )
        try:
            await self._send(
                message, self._headers(method, body, headers), method=method
            )
            await pending.done.wait()
        except anyio.get_cancelled_exc_class():
            if not pending.done.is_set() and method not in _NEGOTIATION_METHODS:
                await self._send_cancel_notice(request_id)
            raise
        finally:
            self._pending.pop(request_id, None)
        if pending.error is not None:
            pending.error.method = pending.error.method or method
            raise pending.error
        assert pending.result is not None
        return pending.result

    async def notify(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        headers: Mapping[str, str | None] | None = None,
    ) -> None:
        """Send a notification (stamped and headered like :meth:`request`)."""
        if self._closed:
            raise ConnectionClosedError(method=method)
        body = self._stamp(params)
        if body is None:
            message = JSONRPCNotification(jsonrpc="2.0", method=method)
        else:
            message = JSONRPCNotification(jsonrpc="2.0", method=method, params=body)
        await self._send(message, self._headers(method, body, headers), method=method)

    async def next_notification(self, method: str | None = None) -> JSONObject:
        """Return the oldest notification (of ``method``) not yet returned here.

        Notifications that arrived before the call count, so triggering a
        notification and then waiting for it cannot race. Each notification is
        handed out at most once by this method; :attr:`notifications` keeps
        them all. Waits on an event (no polling); wrap it in
        ``anyio.fail_after``.

        Raises:
            ConnectionClosedError: The connection ended and no match is left.
        """
        while True:
            for index, notification in enumerate(self.notifications):
                if index not in self._taken and (
                    method is None or notification["method"] == method
                ):
                    self._taken.add(index)
                    return notification
            if self._closed:
                raise ConnectionClosedError(
                    f"connection closed while waiting for {method or 'a notification'}"
                )
            arrival = self._arrival
            await arrival.wait()

    # ------------------------------------------------------------------ helpers

    async def list_tools(self, cursor: str | None = None) -> JSONObject:
        """``tools/list``."""
        return await self.request(
            "tools/list", {"cursor": cursor} if cursor is not None else None
        )

    async def call_tool(
        self,
        name: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        task: Mapping[str, Any] | None = None,
        progress_token: str | int | None = None,
        meta: Mapping[str, Any] | None = None,
        headers: Mapping[str, str | None] | None = None,
    ) -> JSONObject:
        """``tools/call``; returns a raw ``CallToolResult`` or ``CreateTaskResult``.

        Args:
            name: The tool.
            arguments: Its arguments (``{}`` when omitted).
            task: Sent as ``params.task``, e.g. ``{"ttl": 60000}``: the
                2025-11-25 opt-in to a task. Sent as given on 2026-07-28 too,
                where servers must ignore it.
            progress_token: Sent as ``params._meta.progressToken``.
            meta: Extra ``params._meta`` entries (they win over the envelope).
            headers: As for :meth:`request`.
        """
        params: JSONObject = {"name": name, "arguments": dict(arguments or {})}
        if task is not None:
            params["task"] = dict(task)
        request_meta: JSONObject = dict(meta or {})
        if progress_token is not None:
            request_meta.setdefault("progressToken", progress_token)
        if request_meta:
            params["_meta"] = request_meta
        return await self.request("tools/call", params, headers=headers)

    def created_task(self, result: Mapping[str, Any]) -> JSONObject | None:
        """The task a ``tools/call`` result created on this wire, else ``None``.

        2025-11-25: the nested ``result["task"]``. 2026-07-28: the flat result
        itself when ``resultType`` is ``"task"``.
        """
        if self.wire == LEGACY_WIRE:
            return _as_object(result.get("task"))
        return dict(result) if result.get("resultType") == "task" else None

    async def get_task(
        self, task_id: str, *, headers: Mapping[str, str | None] | None = None
    ) -> JSONObject:
        """``tasks/get`` (both wires)."""
        return await self.request("tasks/get", {"taskId": task_id}, headers=headers)

    async def task_result(self, task_id: str) -> JSONObject:
        """``tasks/result``: blocks until the task is terminal (2025-11-25 only).

        While it is open the server may send input requests (e.g.
        ``elicitation/create``), which ``on_request`` answers.
        """
        self._require_wire(LEGACY_WIRE, "tasks/result")
        return await self.request("tasks/result", {"taskId": task_id})

    async def list_tasks(self, cursor: str | None = None) -> JSONObject:
        """``tasks/list`` (2025-11-25 only; the 2026 extension removed it)."""
        self._require_wire(LEGACY_WIRE, "tasks/list")
        return await self.request(
            "tasks/list", {"cursor": cursor} if cursor is not None else None
        )

    async def cancel_task(
        self, task_id: str, *, headers: Mapping[str, str | None] | None = None
    ) -> JSONObject:
        """``tasks/cancel``: the cancelled Task (2025-11-25), an ack (2026-07-28)."""
        return await self.request("tasks/cancel", {"taskId": task_id}, headers=headers)

    async def update_task(
        self,
        task_id: str,
        input_responses: Mapping[str, Any],
        *,
        headers: Mapping[str, str | None] | None = None,
    ) -> JSONObject:
        """``tasks/update``: answer ``inputRequests`` by key (2026-07-28 only)."""
        self._require_wire(MODERN_WIRE, "tasks/update")
        params = {"taskId": task_id, "inputResponses": dict(input_responses)}
        return await self.request("tasks/update", params, headers=headers)

    async def poll_task(
        self,
        task_id: str,
        *,
        until: Collection[str] = TERMINAL_STATUSES,
        interval: float | None = None,
    ) -> JSONObject:
        """Poll ``tasks/get`` until the status is in ``until``; return that result.

        This is the one helper that sleeps: between polls it waits ``interval``
        seconds, or, when ``None``, the server's suggested ``pollInterval``
        (2025-11-25) / ``pollIntervalMs`` (2026-07-28), or 50 ms without one.
        Bound it with ``anyio.fail_after``.
        """
        while True:
            task = await self.get_task(task_id)
            if task.get("status") in until:
                return task
            await anyio.sleep(
                interval if interval is not None else self._suggested_interval(task)
            )

    # ---------------------------------------------------------------- internals

    def _require_wire(self, wire: Wire, method: str) -> None:
        if self.wire != wire:
            raise ValueError(
                f"{method} is not defined on {self.wire}; "
                "send it with request() to test that"
            )

    def _suggested_interval(self, task: Mapping[str, Any]) -> float:
        key = "pollInterval" if self.wire == LEGACY_WIRE else "pollIntervalMs"
        value = task.get(key)
        if (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and value >= 0
        ):
            return float(value) / 1000.0
        return _DEFAULT_POLL_INTERVAL

    def _stamp(self, params: Mapping[str, Any] | None) -> JSONObject | None:
        """Copy ``params``; on 2026-07-28 add the per-request ``_meta`` envelope."""
        body: JSONObject | None = (
            copy.deepcopy(dict(params)) if params is not None else None
        )
        if self.wire != MODERN_WIRE:
            return body
        if body is None:
            body = {}
        meta = body.get("_meta")
        if not isinstance(meta, dict):
            meta = {}
        envelope: JSONObject = {
            PROTOCOL_VERSION_META_KEY: MODERN_WIRE,
            CLIENT_CAPABILITIES_META_KEY: self.client_capabilities,
            CLIENT_INFO_META_KEY: copy.deepcopy(self._client_info),
        }
        stamped: JSONObject = {**envelope, **meta}
        body["_meta"] = {
            key: value
            for key, value in stamped.items()
            if not (key in envelope and value is None)
        }
        return body

    def _headers(
        self,
        method: str,
        body: Mapping[str, Any] | None,
        overrides: Mapping[str, str | None] | None,
    ) -> dict[str, str] | None:
        """Per-POST HTTP headers (lower-case names, as the SDK transport's own)."""
        if self._http is None:
            return None
        headers: dict[str, str] = {}
        if self.wire == MODERN_WIRE:
            headers[MCP_PROTOCOL_VERSION_HEADER] = MODERN_WIRE
            headers[MCP_METHOD_HEADER] = method
            name_param = _NAME_PARAMS.get(method)
            name = (
                body.get(name_param)
                if body is not None and name_param is not None
                else None
            )
            if isinstance(name, str):
                headers[MCP_NAME_HEADER] = encode_header_value(name)
        elif self._handshake_done:
            headers[MCP_PROTOCOL_VERSION_HEADER] = LEGACY_WIRE
        for key, value in (overrides or {}).items():
            if value is None:
                headers.pop(key.lower(), None)
            else:
                headers[key.lower()] = value
        return headers or None

    async def _send(
        self, message: JSONRPCMessage, headers: dict[str, str] | None, *, method: str
    ) -> None:
        metadata = ClientMessageMetadata(headers=headers) if headers else None
        try:
            await self._write.send(SessionMessage(message, metadata=metadata))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError) as exc:
            self._close("transport closed")
            raise ConnectionClosedError("transport closed", method=method) from exc

    async def _send_cancel_notice(self, request_id: int) -> None:
        """Best-effort ``notifications/cancelled`` for an abandoned request."""
        if self._closed:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(_CANCEL_NOTICE_WAIT):
            try:
                await self.notify(
                    "notifications/cancelled",
                    {"requestId": request_id, "reason": "abandoned"},
                )
            except ConnectionClosedError:
                pass

    async def _read_loop(self, read_stream: _MessageReceiver) -> None:
        try:
            while True:
                item = await read_stream.receive()
                if isinstance(item, Exception):
                    logger.warning(
                        "transport reported an undecodable message: %r", item
                    )
                    self.transport_errors.append(item)
                    continue
                self._dispatch(item.message)
        except (
            anyio.EndOfStream,
            anyio.ClosedResourceError,
            anyio.BrokenResourceError,
        ):
            pass
        finally:
            self._close("connection closed by the server")

    def _dispatch(self, message: JSONRPCMessage) -> None:
        if isinstance(message, JSONRPCResponse):
            pending = self._pending.get(message.id)
            if pending is None or pending.done.is_set():
                logger.debug("dropping a response to unknown request id %r", message.id)
                return
            pending.result = message.result
            pending.done.set()
        elif isinstance(message, JSONRPCError):
            pending = self._pending.get(message.id) if message.id is not None else None
            if pending is None or pending.done.is_set():
                logger.debug(
                    "dropping an error for unknown request id %r: %s",
                    message.id,
                    message.error,
                )
                return
            error = message.error
            if _lost_in_transport(error):
                pending.error = ConnectionClosedError(error.message)
            elif self._http is not None and self._http.session_gone:
                pending.error = SessionGoneError(error.code, error.message, error.data)
            else:
                pending.error = RpcError(error.code, error.message, error.data)
            pending.done.set()
        elif isinstance(message, JSONRPCNotification):
            params = message.params or {}
            self.notifications.append({"method": message.method, "params": params})
            request_id = params.get("requestId")
            if message.method == "notifications/cancelled" and isinstance(
                request_id, int | str
            ):
                scope = self._inbound.get(request_id)
                if scope is not None:
                    scope.cancel()
            arrival, self._arrival = self._arrival, anyio.Event()
            arrival.set()
        else:
            self.server_requests.append(
                {
                    "id": message.id,
                    "method": message.method,
                    "params": message.params or {},
                }
            )
            assert self._task_group is not None
            self._task_group.start_soon(self._answer, message)

    async def _answer(self, request: JSONRPCRequest) -> None:
        """Answer one server-to-client request through ``on_request``.

        A ``notifications/cancelled`` from the server for this request cancels
        the handler, and then no reply is sent.
        """
        reply: JSONRPCMessage | None = None
        with anyio.CancelScope() as scope:
            self._inbound[request.id] = scope
            try:
                reply = await self._reply_to(request)
            finally:
                self._inbound.pop(request.id, None)
        if reply is None:
            logger.debug("server cancelled its %s request", request.method)
            return
        try:
            await self._send(reply, None, method=request.method)
        except ConnectionClosedError:
            logger.debug("connection closed before answering %s", request.method)

    async def _reply_to(self, request: JSONRPCRequest) -> JSONRPCMessage:
        try:
            result = await self._handle_server_request(
                request.method, request.params or {}
            )
        except RpcError as exc:
            error = _error_data(exc.code, exc.message, exc.data)
            return JSONRPCError(jsonrpc="2.0", id=request.id, error=error)
        except Exception as exc:
            logger.exception("on_request handler failed for %s", request.method)
            self.handler_errors.append(exc)
            error = _error_data(INTERNAL_ERROR, str(exc), None)
            return JSONRPCError(jsonrpc="2.0", id=request.id, error=error)
        return JSONRPCResponse(jsonrpc="2.0", id=request.id, result=result)

    async def _handle_server_request(
        self, method: str, params: JSONObject
    ) -> JSONObject:
        if self._on_request is not None:
            return await self._on_request(method, params)
        if method == "ping":
            return {}
        raise RpcError(METHOD_NOT_FOUND, "Method not found", method)

    def _close(self, reason: str) -> None:
        """Mark the connection closed; fail pending requests, wake waiters."""
        if self._closed:
            return
        self._closed = True
        for pending in self._pending.values():
            if not pending.done.is_set():
                pending.error = ConnectionClosedError(reason)
                pending.done.set()
        self._arrival.set()


def _as_object(value: object) -> JSONObject | None:
    """``value`` if it is a JSON object, else ``None``."""
    return cast("JSONObject", value) if isinstance(value, dict) else None


def _object(value: object) -> JSONObject:
    """``value`` if it is a JSON object, else a new empty one."""
    found = _as_object(value)
    return found if found is not None else {}


def _leaves(error: BaseException) -> Iterator[BaseException]:
    """The non-group exceptions inside ``error`` (``error`` itself if not a group)."""
    if isinstance(error, BaseExceptionGroup):
        group = cast("BaseExceptionGroup[BaseException]", error)
        for inner in group.exceptions:
            yield from _leaves(inner)
    else:
        yield error


def _error_data(code: int, message: str, data: object) -> ErrorData:
    if data is None:
        return ErrorData(code=code, message=message)
    return ErrorData(code=code, message=message, data=data)
