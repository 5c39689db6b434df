"""Assembles the MCP server: tools, both task wires, and the transports.

One lowlevel mcp 2.3 `Server` serves the 2025-11-25 handshake and the
2026-07-28 modern wire. Method names both generations share (``tasks/get``,
``tasks/cancel``) are registered once and routed by the request's protocol
version to the binding of that generation.
"""

from __future__ import annotations

import logging
import socket
import warnings
from collections.abc import Mapping
from typing import Any, cast

import anyio
import mcp_types as types
from mcp.server.caching import CacheHint
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.models import InitializationOptions
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError

from mcp_tasks._exceptions import (
    InvalidArgumentsError,
    McpTasksError,
    RateLimitedError,
    TaskSupportError,
)
from mcp_tasks._model import Task, new_task_id
from mcp_tasks._toolapi import ToolSpec
from mcp_tasks.binding._auth import HttpAuth, tier_limits
from mcp_tasks.binding._common import (
    LEGACY_VERSION,
    METHOD_NOT_FOUND,
    MODERN_VERSION,
    PushChannels,
    Requesters,
    Transport,
    argument_error_result,
    check_arguments_size,
    connection_of,
    rpc_error,
)
from mcp_tasks.binding._dashboard import install_dashboard
from mcp_tasks.binding._delivery import request_channel, serve_until_terminal
from mcp_tasks.binding._direct import DirectAnswers
from mcp_tasks.binding._direct_modern import install as install_modern_entry
from mcp_tasks.binding._extension import (
    ExtensionTasks,
    declares_extension,
    missing_extension_error,
)
from mcp_tasks.binding._guard import guard
from mcp_tasks.binding._http import (
    EmbeddedUvicorn,
    accept_failures_reported,
    announce,
    bound_port,
    connection_guard,
    listen,
    transport_security,
    url,
    uvicorn_config,
)
from mcp_tasks.binding._legacy import (
    CANCELLED_TEXT,
    LegacyTasks,
    recorded_result,
    tasks_capability,
)
from mcp_tasks.binding._listen import TaskNotifications
from mcp_tasks.binding._mrtr import client_capabilities
from mcp_tasks.binding._ops import OpsRoutes, standard_routes
from mcp_tasks.binding._response_mode import install as answer_per_request
from mcp_tasks.binding._streams import StandaloneStreams
from mcp_tasks.engine import Change, ChangeKind, Requester, TaskRuntime
from mcp_tasks.ops import Metrics

logger = logging.getLogger("mcp_tasks.server")

SERVER_NAME = "mcp-tasks"
_LOG_LEVELS = (
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
)
#: How long a finished synchronous call waits for its progress and logs to go out.
FORWARD_DRAIN_SECONDS = 5.0
#: The requests each client makes at its ``requests_per_second`` (both wires).
RATE_LIMITED_METHODS = frozenset(
    {
        "tools/call",
        "tasks/get",
        "tasks/result",
        "tasks/list",
        "tasks/update",
        "tasks/cancel",
    }
)
#: The tool set is fixed while the server runs, so listings may be cached.
_LIST_CACHE = CacheHint(ttl_ms=60_000, scope="public")


class _TasksServer(Server[Any]):
    """A lowlevel `Server` whose 2025-11-25 handshake advertises ``tasks``.

    The HTTP session manager builds initialization options itself, so the
    capability is injected here rather than passed to `Server.run`.
    """

    legacy_tasks_capability: types.ServerTasksCapability | None = None

    def create_initialization_options(
        self,
        notification_options: Any = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        options = super().create_initialization_options(
            notification_options, experimental_capabilities, extensions
        )
        options.capabilities.tasks = self.legacy_tasks_capability
        return options

    def get_capabilities(
        self,
        notification_options: Any = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
        *,
        protocol_version: str | None = None,
    ) -> types.ServerCapabilities:
        # mcp 2.3 derives listChanged on 2026-07-28 from serving
        # subscriptions/listen. We serve it for task notifications, but our
        # tool, prompt and resource lists never change: say so.
        capabilities = super().get_capabilities(
            notification_options,
            experimental_capabilities,
            extensions,
            protocol_version=protocol_version,
        )
        for listing in (capabilities.tools, capabilities.prompts):
            if listing is not None:
                listing.list_changed = False
        if capabilities.resources is not None:
            capabilities.resources.list_changed = False
            capabilities.resources.subscribe = False
        return capabilities


def tool_json(spec: ToolSpec, version: str) -> types.Tool:
    """The ``tools/list`` entry of a tool; ``execution`` only on 2025-11-25."""
    execution = None
    if version == LEGACY_VERSION:
        execution = types.ToolExecution(task_support=spec.task_support)
    return types.Tool(
        name=spec.name,
        title=spec.title,
        description=spec.description,
        input_schema=spec.input_schema,
        execution=execution,
    )


class _SyncForward:
    """Forwards progress and logs of one synchronous call to that call's stream.

    They arrive through the change feed, whichever process runs the call, and
    in the order they were written, before the change that ends the call.
    """

    def __init__(self) -> None:
        self.task_ids: set[str] = set()
        self.drained = anyio.Event()
        send, receive = anyio.create_memory_object_stream[Change](1000)
        self.send = send
        self.receive = receive

    def watch(self, task_id: str) -> None:
        """Forward the changes of ``task_id`` (the task running this call)."""
        self.task_ids.add(task_id)

    def task_changed(self, change: Change) -> None:
        if change.kind not in (ChangeKind.PROGRESS, ChangeKind.LOG):
            return
        if change.task_id in self.task_ids:
            try:
                self.send.send_nowait(change)
            except (anyio.WouldBlock, anyio.ClosedResourceError):
                pass  # progress and logs are advisory; never block the engine on them


class McpTasksServer:
    """The mcp-tasks MCP server over one `TaskRuntime`."""

    def __init__(self, runtime: TaskRuntime, transport: Transport) -> None:
        self.runtime = runtime
        self.requesters = Requesters(
            transport,
            runtime.settings.auth_enabled,
            runtime.settings.http.trusted_proxies,
            tier_limits(runtime.settings),
        )
        # Over HTTP a session may have no GET stream to push on (`_streams`).
        self.streams = StandaloneStreams() if transport is Transport.HTTP else None
        self.pushes = PushChannels(self.streams)
        self.legacy = LegacyTasks(runtime, self.requesters, self.pushes)
        if self.streams is not None:
            self.streams.notify(
                self.legacy.standalone_opened, self.legacy.standalone_closed
            )
        self.extension = ExtensionTasks(runtime, self.requesters)
        self.notifications = TaskNotifications(
            self.requesters,
            self.extension.render,
            declares_extension,
            missing_extension_error,
        )
        runtime.subscribe(self.legacy)
        runtime.subscribe(self.notifications)
        self.server = self._build()
        #: Operator endpoints on the HTTP listener: metrics, health and the
        #: dashboard (`_dashboard`).
        self.ops: OpsRoutes | None = None
        #: A task's hot requests answered without the SDK's dispatch (`_direct`).
        self.direct: DirectAnswers | None = None
        if transport is Transport.HTTP:
            metrics = Metrics(runtime)
            self.ops = standard_routes(runtime, metrics)
            install_dashboard(self.ops, runtime)
            if runtime.settings.http.direct_answers:
                self.direct = DirectAnswers(
                    runtime,
                    self.requesters,
                    self.pushes,
                    self.legacy,
                    self.extension,
                    self.server,
                    on_answer=metrics.direct_answered,
                )

    def _build(self) -> _TasksServer:
        server = _TasksServer(
            SERVER_NAME,
            version=_version(),
            instructions="Tools here may run as durable tasks: poll tasks/get for status.",
            on_list_tools=self._list_tools,
            on_list_prompts=self._list_prompts,
            on_list_resources=self._list_resources,
            on_list_resource_templates=self._list_resource_templates,
            cache_hints={
                "tools/list": _LIST_CACHE,
                "prompts/list": _LIST_CACHE,
                "resources/list": _LIST_CACHE,
                "resources/templates/list": _LIST_CACHE,
            },
        )
        server.legacy_tasks_capability = tasks_capability(self.requesters.identified)
        server.extensions[self.extension.identifier] = {}
        # Outermost of ours: every request, both wires, passes the guard.
        server.middleware.append(guard)
        server.middleware.append(self._limit_requests)
        server.middleware.append(self._register_connection)
        server.middleware.append(self.legacy.middleware)
        server.middleware.append(self.extension.middleware)
        # Registered directly: a 2026-07-28 call may answer with the extension's
        # task result, which the typed on_call_tool signature does not admit.
        server.add_request_handler(
            "tools/call", types.CallToolRequestParams, self._call_tool
        )
        server.add_request_handler(
            "tasks/get", types.GetTaskRequestParams, self._tasks_get
        )
        server.add_request_handler(
            "tasks/cancel", types.CancelTaskRequestParams, self._tasks_cancel
        )
        server.add_request_handler(
            "tasks/result", types.GetTaskPayloadRequestParams, self._tasks_result
        )
        server.add_request_handler(
            "tasks/list", types.PaginatedRequestParams, self._tasks_list
        )
        server.add_request_handler(
            "subscriptions/listen",
            types.SubscriptionsListenRequestParams,
            self.notifications.listen,
        )
        # 2025-11-25 clients set a level; the 2026-07-28 wire has no such method
        # (the SDK's per-version gate answers -32601 there by itself).
        server.add_request_handler(
            "logging/setLevel", types.SetLevelRequestParams, self._set_log_level
        )
        self.extension.install(server)
        return server

    # ------------------------------------------------------------- middleware

    async def _limit_requests(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        # Task operations and calls, at each client's rate (across processes);
        # the handshake, listings and pings are not limited, and neither is
        # stdio's one local client (there is no other tenant to protect).
        if (
            ctx.request_id is not None
            and ctx.method in RATE_LIMITED_METHODS
            and self.requesters.transport is not Transport.STDIO
        ):
            try:
                await self.runtime.admit_request(self.requesters.of(ctx))
            except RateLimitedError as exc:
                raise rpc_error(exc) from None
        return await call_next(ctx)

    async def _register_connection(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        result = await call_next(ctx)
        # Once its handshake is done, a handshake-era connection is a push
        # channel of its owner (from notifications/initialized on, and on every
        # request), so questions and status reach whichever session the owner
        # uses now, even one that only listens.
        if (
            ctx.protocol_version != MODERN_VERSION
            and ctx.session.client_params is not None
        ):
            requester = self.requesters.of(ctx)
            connection = connection_of(ctx)
            if self.pushes.register(requester.owner_id, connection):
                self.legacy.connection_opened(requester.owner_id, connection)
        return result

    # ------------------------------------------------------------------ tools

    async def _list_tools(
        self,
        ctx: ServerRequestContext[Any, Any],
        params: types.PaginatedRequestParams | None,
    ) -> types.ListToolsResult:
        tools = [
            tool_json(spec, ctx.protocol_version)
            for spec in self.runtime.tools.values()
        ]
        return types.ListToolsResult(tools=tools)

    async def _list_prompts(
        self,
        ctx: ServerRequestContext[Any, Any],
        params: types.PaginatedRequestParams | None,
    ) -> types.ListPromptsResult:
        # No prompts: answered (empty) so clients and caches need no special case.
        return types.ListPromptsResult(prompts=[])

    async def _list_resources(
        self,
        ctx: ServerRequestContext[Any, Any],
        params: types.PaginatedRequestParams | None,
    ) -> types.ListResourcesResult:
        return types.ListResourcesResult(resources=[])

    async def _list_resource_templates(
        self,
        ctx: ServerRequestContext[Any, Any],
        params: types.PaginatedRequestParams | None,
    ) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(resource_templates=[])

    async def _set_log_level(
        self, ctx: ServerRequestContext[Any, Any], params: types.SetLevelRequestParams
    ) -> types.EmptyResult:
        connection_of(ctx).state["logLevel"] = params.level
        return types.EmptyResult()

    async def _call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult | dict[str, Any]:
        arguments = params.arguments or {}
        check_arguments_size(arguments, self.runtime.settings.max_argument_bytes)
        try:
            spec = self.runtime.tool(params.name)
            if ctx.protocol_version == MODERN_VERSION:
                return await self.extension.call_tool(ctx, params, spec, self.call_now)
            if (
                ctx.protocol_version == LEGACY_VERSION
                and spec.task_support == "required"
            ):
                raise TaskSupportError(spec.name, required=True)
            return await self.call_now(ctx, self.requesters.of(ctx), spec, arguments)
        except InvalidArgumentsError as exc:
            return argument_error_result(exc)
        except McpTasksError as exc:
            raise rpc_error(exc) from None

    async def call_now(
        self,
        ctx: ServerRequestContext[Any, Any],
        requester: Requester,
        spec: ToolSpec,
        arguments: Mapping[str, Any],
    ) -> types.CallToolResult | dict[str, Any]:
        """Run a call through the engine and answer with its result (non-task path).

        Questions the tool asks go to the client on this call: as
        server-to-client requests on handshake versions, as multi-round-trip
        ``input_required`` results on 2026-07-28.
        """
        forward = _SyncForward()
        request_meta: dict[str, Any] = {"clientCapabilities": client_capabilities(ctx)}
        unsubscribe = self.runtime.subscribe(forward)
        round_result: str | dict[str, Any] = ""
        failure: Exception | None = None
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._forward_events, ctx, forward)
                try:
                    if ctx.protocol_version == MODERN_VERSION:
                        round_result = await self.extension.mrtr.call(
                            ctx, requester, spec, arguments, request_meta, forward.watch
                        )
                    else:
                        round_result = await self._call_with_requests(
                            ctx, requester, spec, arguments, request_meta, forward
                        )
                except Exception as exc:
                    # Raised outside the task group, so the SDK sees the error
                    # itself and not an ExceptionGroup (which it maps to -32603).
                    failure = exc
                # What the call reported goes out before its result.
                unsubscribe()
                forward.send.close()
                with anyio.move_on_after(FORWARD_DRAIN_SECONDS):
                    await forward.drained.wait()
                tg.cancel_scope.cancel()
        finally:
            unsubscribe()
            forward.send.close()
        if failure is not None:
            raise failure
        if isinstance(round_result, dict):
            return round_result  # input_required: the client answers and calls again
        task = await self.runtime.get(requester, round_result, outcome=True)
        return _call_result(task)

    async def _call_with_requests(
        self,
        ctx: ServerRequestContext[Any, Any],
        requester: Requester,
        spec: ToolSpec,
        arguments: Mapping[str, Any],
        request_meta: dict[str, Any],
        forward: _SyncForward,
    ) -> str:
        task_id = new_task_id()
        forward.watch(task_id)
        task = await self.runtime.submit(
            requester,
            spec.name,
            arguments,
            request_meta=request_meta,
            listed=False,
            task_id=task_id,
        )
        async with self.runtime.cancel_on_exit(requester, task.task_id):
            await serve_until_terminal(
                self.runtime,
                self.legacy.copies,
                requester,
                task.task_id,
                request_channel(ctx, "tools/call stream"),
                related_task=False,
            )
        return task.task_id

    @staticmethod
    async def _forward_events(
        ctx: ServerRequestContext[Any, Any], forward: _SyncForward
    ) -> None:
        try:
            async with forward.receive:
                async for change in forward.receive:
                    try:
                        await _forward(ctx, change)
                    except Exception:  # the caller may be gone; these are advisory
                        logger.debug("forwarding to the caller failed", exc_info=True)
        finally:
            forward.drained.set()

    # ------------------------------------------------------------------ tasks

    async def _tasks_get(
        self, ctx: ServerRequestContext[Any, Any], params: types.GetTaskRequestParams
    ) -> dict[str, Any]:
        if ctx.protocol_version == MODERN_VERSION:
            return await self.extension.get(ctx, params.task_id)
        self._require_legacy(ctx)
        return await self.legacy.get(ctx, params.task_id)

    async def _tasks_cancel(
        self, ctx: ServerRequestContext[Any, Any], params: types.CancelTaskRequestParams
    ) -> dict[str, Any]:
        if ctx.protocol_version == MODERN_VERSION:
            return await self.extension.cancel(ctx, params.task_id)
        self._require_legacy(ctx)
        return await self.legacy.cancel(ctx, params.task_id)

    async def _tasks_result(
        self,
        ctx: ServerRequestContext[Any, Any],
        params: types.GetTaskPayloadRequestParams,
    ) -> dict[str, Any]:
        self._require_legacy(ctx)
        return await self.legacy.result(ctx, params)

    async def _tasks_list(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams
    ) -> dict[str, Any]:
        self._require_legacy(ctx)
        return await self.legacy.list(ctx, params)

    @staticmethod
    def _require_legacy(ctx: ServerRequestContext[Any, Any]) -> None:
        # Only 2025-11-25 defines these methods on the handshake wire; earlier
        # revisions have no tasks, and 2026-07-28 removed tasks/result and tasks/list.
        if ctx.protocol_version != LEGACY_VERSION:
            raise MCPError(
                METHOD_NOT_FOUND,
                f"Method not found: {ctx.method} is not part of protocol "
                f"{ctx.protocol_version}",
            )

    # ------------------------------------------------------------- transports

    async def serve_stdio(self) -> None:
        """Serve one client over stdin/stdout until it disconnects."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.pushes.run)
            tg.start_soon(self.legacy.run)
            async with stdio_server() as (read, write):
                await self.server.run(
                    read, write, self.server.create_initialization_options()
                )
            tg.cancel_scope.cancel()

    async def serve_http(
        self,
        host: str,
        port: int,
        *,
        ready: anyio.Event | None = None,
        sockets: list[socket.socket] | None = None,
        auth: HttpAuth | None = None,
    ) -> None:
        """Serve Streamable HTTP at ``http://host:port/mcp`` until cancelled.

        ``sockets`` are listening sockets from `listen` (bound beforehand, so
        the caller knows the port and an address in use fails early);
        without them the server binds ``host:port`` itself. ``auth`` is built
        from the settings when not given (the CLI builds it before the
        journal opens, so a bad ``[auth]`` is a start-up error).

        Raises:
            ListenError: ``host:port`` cannot be bound.
            ConfigurationError: ``[auth]`` names an unreadable file, or the
                ``oauth`` extra is missing.
        """
        sockets = sockets if sockets is not None else listen(host, port)
        settings = self.runtime.settings
        auth = auth if auth is not None else HttpAuth.from_settings(settings)
        security = transport_security(host, settings.http)
        app = self.server.streamable_http_app(
            transport_security=security,
            auth=None
            if auth is None
            else auth.sdk_settings(url(host, bound_port(sockets))),
            token_verifier=None if auth is None else auth.verifier,
        )
        # 2025-11-25 POSTs: JSON unless something must go out before the answer;
        # a task's hot requests on both wires without the SDK's dispatch.
        answer_per_request(self.server.session_manager, self.direct)
        if self.direct is not None:
            install_modern_entry(
                self.server.session_manager, self.direct, self.requesters
            )
        if self.streams is not None:
            app = self.streams.wrap(app)
        if auth is not None:
            app = auth.wrap(app)
        if self.ops is not None:
            self.ops.check_open_endpoints()
            self.ops.security = security
            if auth is not None and auth.oauth is not None:
                self.ops.token_check = auth.operator_check
            app = self.ops.wrap(app)
        guard = connection_guard(settings.http)
        http_server = EmbeddedUvicorn(
            uvicorn_config(app, settings.http, guard), on_started=announce(host, ready)
        )
        stopped = anyio.Event()

        async def serve() -> None:
            # Shielded: on shutdown uvicorn is asked to exit (it stops accepting,
            # closes connections and runs the app's lifespan shutdown), not torn
            # down mid-flight by a cancellation.
            with anyio.CancelScope(shield=True), accept_failures_reported(guard):
                try:
                    await http_server.serve(sockets)
                finally:
                    stopped.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(self.pushes.run)
            tg.start_soon(self.legacy.run)
            tg.start_soon(serve)
            try:
                await stopped.wait()
            finally:
                with anyio.CancelScope(shield=True):
                    await _end_sessions(self.server)
                http_server.should_exit = True
                with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                    await stopped.wait()
                tg.cancel_scope.cancel()


async def _forward(ctx: ServerRequestContext[Any, Any], change: Change) -> None:
    """Send a progress report or log line of the call on the call's stream."""
    data = change.data or {}
    if change.kind is ChangeKind.PROGRESS:
        if "progress" in data:
            await ctx.session.report_progress(
                float(data["progress"]), data.get("total"), change.status_message
            )
        return
    await _forward_log(ctx, str(data.get("level")), str(data.get("message")))


async def _forward_log(
    ctx: ServerRequestContext[Any, Any], level: str, message: str
) -> None:
    """Send a tool's log message on the call's stream, if the client wants it.

    2025-11-25: at or above the level the client set with ``logging/setLevel``.
    2026-07-28: only when this request's ``_meta`` opted in (the SDK's gate).
    """
    if level not in _LOG_LEVELS:
        return
    wanted = connection_of(ctx).state.get("logLevel")
    if wanted in _LOG_LEVELS and _LOG_LEVELS.index(level) < _LOG_LEVELS.index(wanted):
        return
    with warnings.catch_warnings():
        # Logging is deprecated from 2026-07-28 on, but 2025-11-25 clients use it.
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        await ctx.session.send_log_message(  # pyright: ignore[reportDeprecated]
            level,  # pyright: ignore[reportArgumentType]
            message,
            "mcp-tasks",
            related_request_id=ctx.request_id,
        )


def _call_result(task: Task) -> types.CallToolResult:
    recorded = recorded_result(task)
    if recorded is None:
        return types.CallToolResult(
            content=[types.TextContent(text=CANCELLED_TEXT)], is_error=True
        )
    return types.CallToolResult.model_validate(recorded, by_name=False)


async def _end_sessions(server: Server[Any]) -> None:
    """End every open Streamable HTTP session, so shutdown need not wait on them.

    A session's GET stream stays open as long as its client is connected;
    uvicorn would wait for it and then cancel it with an error in the log.
    mcp 2.3 has no public "end all sessions", so the manager's session table
    is read here, in this one place (pinned to mcp 2.3.x; the SIGTERM e2e test
    fails if this stops working). Clients see their session end and reconnect.
    """
    instances = getattr(server.session_manager, "_server_instances", {})
    for transport in list(cast("dict[str, Any]", instances).values()):
        try:
            await transport.terminate()
        except Exception:
            logger.debug("ending a session at shutdown failed", exc_info=True)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mcp-tasks")
    except PackageNotFoundError:
        return "0+unknown"


__all__ = ["McpTasksServer"]
