"""What both wire bindings share: errors, owners, time formats and pushes.

The JSON-RPC error codes of every engine error live in `rpc_error`, the one
mapping table. `Requesters` decides who is asking. `PushChannels` remembers
live connections per owner so the engine's events reach connected clients.
"""

from __future__ import annotations

import json
import logging
import math
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import Any, Final

import anyio
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.connection import Connection
from mcp.server.context import ServerRequestContext
from mcp.shared.dispatcher import Outbound
from mcp.shared.exceptions import MCPError

from mcp_tasks._config import ClientLimits
from mcp_tasks._exceptions import (
    ECHO_LIMIT,
    CapacityError,
    InvalidArgumentsError,
    InvalidCursorError,
    JournalError,
    McpTasksError,
    RateLimitedError,
    TaskNotFoundError,
    TaskSupportError,
    TaskTerminalError,
    UnknownToolError,
    clip,
)
from mcp_tasks._model import OwnerId
from mcp_tasks._questions import InputNotSupportedError, InvalidAnswerError
from mcp_tasks.binding._streams import StandaloneStreams
from mcp_tasks.engine import Requester

logger = logging.getLogger("mcp_tasks.binding")

LEGACY_VERSION: Final = "2025-11-25"
MODERN_VERSION: Final = "2026-07-28"
RELATED_TASK_META: Final = "io.modelcontextprotocol/related-task"

# JSON-RPC error codes (JSON-RPC 2.0 and the MCP specs).
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
#: Backlog full: a server-defined code (JSON-RPC reserves -32000..-32099 for these).
CAPACITY_EXCEEDED: Final = -32000
#: Too many task requests: server-defined, with ``data.retryAfterMs``.
RATE_LIMITED: Final = -32029
HEADER_MISMATCH: Final = -32020
MISSING_REQUIRED_CLIENT_CAPABILITY: Final = -32021


class ReplayedError(MCPError):
    """A task's own stored JSON-RPC error, answered again exactly as recorded.

    ``tasks/result`` must return the same error the call produced (TASKS-2025
    l.862), so the guard (`_guard.bounded`) leaves these whole; their size was
    bounded by the arguments that produced them.
    """


def echo(value: str) -> str:
    """A client's value for error ``data``: whole if short, else cut with ``…``."""
    return value if len(value) <= ECHO_LIMIT else f"{value[:ECHO_LIMIT]}…"


def _not_found(exc: TaskNotFoundError) -> MCPError:
    return MCPError(
        INVALID_PARAMS,
        f"Failed to retrieve task: {exc} (field: taskId)",
        {"field": "taskId", "taskId": echo(exc.task_id)},
    )


def _terminal(exc: TaskTerminalError) -> MCPError:
    return MCPError(
        INVALID_PARAMS,
        f"Cannot cancel task: already in terminal status {exc.status!r}",
        {"field": "taskId", "taskId": echo(exc.task_id), "status": exc.status},
    )


def _bad_answer(exc: InvalidAnswerError) -> MCPError:
    field = f"inputResponses.{exc.key}"
    return MCPError(
        INVALID_PARAMS,
        f"{exc} (field: {field})",
        {"field": field, "problem": exc.problem},
    )


def _missing_capability(exc: InputNotSupportedError) -> MCPError:
    return MCPError(
        MISSING_REQUIRED_CLIENT_CAPABILITY,
        f"Missing required client capability: {exc.capability}",
        {"requiredCapabilities": exc.required},
    )


#: A journal failure is logged once a minute however many requests meet it.
JOURNAL_FAILURE_LOG_SECONDS: Final = 60.0
_last_journal_failure: dict[str, float] = {}


def _journal(exc: JournalError) -> MCPError:
    text = str(exc)
    now = time.monotonic()
    last = _last_journal_failure.get(text)
    if last is None or now - last >= JOURNAL_FAILURE_LOG_SECONDS:
        _last_journal_failure.clear()  # one failure at a time is what matters
        _last_journal_failure[text] = now
        logger.error("journal failure: %s", text)
    return MCPError(INTERNAL_ERROR, "Internal error: the task journal is unavailable")


#: The one table from engine errors to the JSON-RPC errors clients see.
_ERRORS: list[tuple[type[McpTasksError], Callable[[Any], MCPError]]] = [
    (TaskNotFoundError, _not_found),
    (TaskTerminalError, _terminal),
    (
        InvalidCursorError,
        lambda e: MCPError(INVALID_PARAMS, f"{e} (field: cursor)", {"field": "cursor"}),
    ),
    (
        UnknownToolError,
        lambda e: MCPError(INVALID_PARAMS, f"{e} (field: name)", {"field": "name"}),
    ),
    (
        InvalidArgumentsError,
        lambda e: MCPError(
            INVALID_PARAMS, str(e), {"field": "arguments", "errors": e.errors}
        ),
    ),
    (
        TaskSupportError,
        lambda e: MCPError(METHOD_NOT_FOUND, str(e), {"field": "task", "tool": e.tool}),
    ),
    (InvalidAnswerError, _bad_answer),
    (InputNotSupportedError, _missing_capability),
    (
        CapacityError,
        lambda e: MCPError(
            CAPACITY_EXCEEDED, str(e), {"limit": e.limit, "retryable": True}
        ),
    ),
    (
        RateLimitedError,
        lambda e: MCPError(
            RATE_LIMITED,
            str(e),
            {
                "retryAfterMs": milliseconds(e.retry_after_seconds),
                "limit": e.per_second,
                "retryable": True,
            },
        ),
    ),
    (JournalError, _journal),
]


def rpc_error(exc: McpTasksError) -> MCPError:
    """The JSON-RPC error a client sees for an engine error (see `_ERRORS`)."""
    for kind, build in _ERRORS:
        if isinstance(exc, kind):
            return build(exc)
    return MCPError(INTERNAL_ERROR, f"Internal error: {type(exc).__name__}")


def invalid_params(field: str, message: str) -> MCPError:
    """A -32602 error naming the offending field (both clipped: they may echo input)."""
    field, message = clip(field, 2 * ECHO_LIMIT), clip(message)
    return MCPError(
        INVALID_PARAMS, f"Invalid params: {field}: {message}", {"field": field}
    )


def iso(moment: datetime) -> str:
    """ISO 8601 with millisecond precision and a ``Z`` suffix."""
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def milliseconds(seconds: float | None) -> int | None:
    """Seconds as whole milliseconds (at least 1 for positive values)."""
    if seconds is None:
        return None
    return max(1, math.ceil(seconds * 1000))


def argument_error_result(exc: InvalidArgumentsError) -> types.CallToolResult:
    """Arguments a tool's schema refused, as a tool execution error.

    Input validation errors are tool execution errors (2025-11-25
    server/tools, SEP-1303): the model reads which field was wrong and can
    correct itself. Raised by submit, so nothing was stored.
    """
    return types.CallToolResult(
        content=[types.TextContent(text=str(exc))], is_error=True
    )


def check_arguments_size(arguments: object, limit: int) -> None:
    """Refuse arguments whose JSON encoding is larger than ``limit`` bytes."""
    size = len(json.dumps(arguments, separators=(",", ":")).encode())
    if size > limit:
        raise invalid_params(
            "arguments", f"{size} bytes exceeds the limit of {limit} bytes"
        )


class Transport(Enum):
    """How clients reach this server; decides who a requestor is."""

    STDIO = "stdio"
    HTTP = "http"


LOCAL_OWNER: Final = OwnerId("local")


@dataclass(frozen=True, slots=True)
class Requesters:
    """Establishes the `Requester` of each request.

    - stdio: one local client, which owns every task (``local``).
    - HTTP with bearer tokens: the token's client id; tasks are bound to it.
    - HTTP without tokens: task ids are bearer capabilities; fairness is
      keyed by MCP session (2025-11-25) or by client address (2026-07-28).
      The address is the peer's, unless the peer is one of
      ``trusted_proxies``: then it is the right-most address of
      ``X-Forwarded-For`` that is not a trusted proxy.
    """

    transport: Transport
    auth: bool
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()
    #: The caps an access token's claims give its client (`_auth.tier_limits`).
    limits_of: Callable[[AccessToken], ClientLimits | None] | None = None

    @property
    def identified(self) -> bool:
        """Whether requestors are identified (so listing tasks is safe)."""
        return self.transport is Transport.STDIO or self.auth

    def of(self, ctx: ServerRequestContext[Any, Any]) -> Requester:
        """The requestor of the request behind ``ctx``."""
        if self.transport is Transport.STDIO:
            return Requester(LOCAL_OWNER)
        return self.of_http(connection_of(ctx).session_id, ctx.request)

    def of_http(self, session_id: str | None, request: object) -> Requester:
        """The requestor of an HTTP request in session ``session_id`` (or none).

        ``request`` is the Starlette request (its client address and
        ``X-Forwarded-For`` matter without tokens and sessions). Also called
        outside the SDK's request context (`_direct`): the access token is
        read from the SDK's auth context, set by its middleware per request.
        """
        token = get_access_token()
        if token is not None:
            # The plain client id: per-client limits are configured by it.
            limits = None if self.limits_of is None else self.limits_of(token)
            return Requester(OwnerId(token.client_id), limits=limits)
        if self.auth:
            # The auth middleware admits no unauthenticated request; be safe anyway.
            raise MCPError(INVALID_REQUEST, "Authentication required")
        if session_id is not None:
            return Requester(OwnerId(f"session:{session_id}"), scoped=False)
        client = getattr(request, "client", None)
        headers = getattr(request, "headers", None)
        forwarded: list[str] = (
            headers.getlist("x-forwarded-for") if headers is not None else []
        )
        host = self.client_address(getattr(client, "host", None), forwarded)
        return Requester(OwnerId(f"anonymous:{host}"), scoped=False)

    def client_address(self, peer: str | None, forwarded_for: list[str]) -> str:
        """The client's address: ``peer``, or what trusted proxies say it is.

        Only a trusted peer's ``X-Forwarded-For`` is read (all of its values,
        in order). Each trusted proxy appends the address it received from,
        so walking from the right, the first address that is not a trusted
        proxy is the client; anything further left was written by the
        client and could be anything.
        """
        if peer is None:
            return "unknown"
        if not self.trusted_proxies or not self._trusted(peer):
            return peer
        hops = [
            self._host_of(hop) for value in forwarded_for for hop in value.split(",")
        ]
        for hop in reversed(hops):
            if not self._trusted(hop):
                # A hop that is no address tells nothing: the proxy it came
                # through is the best we know.
                return hop if self._is_address(hop) else peer
        return hops[0] if hops else peer

    def _trusted(self, address: str) -> bool:
        if not self._is_address(address):
            return False
        parsed = ip_address(address)
        return any(parsed in network for network in self.trusted_proxies)

    @staticmethod
    def _host_of(hop: str) -> str:
        # Some proxies add the port: "203.0.113.7:4711", "[2001:db8::1]:4711".
        hop = hop.strip()
        if hop.startswith("["):
            return hop[1:].partition("]")[0]
        if hop.count(":") == 1:
            return hop.partition(":")[0]
        return hop

    @staticmethod
    def _is_address(value: str) -> bool:
        try:
            ip_address(value)
        except ValueError:
            return False
        return True


def connection_of(ctx: ServerRequestContext[Any, Any]) -> Connection:
    """The connection a request arrived on.

    mcp 2.3 exposes it only through the per-request session; this is the one
    place that reaches for it (pinned to mcp 2.3.x; covered by the e2e tests).
    """
    connection: Connection = getattr(ctx.session, "_connection")  # noqa: B009
    return connection


def request_outbound(ctx: ServerRequestContext[Any, Any]) -> Outbound:
    """The SDK channel that sends on the stream of the request behind ``ctx``.

    Questions sent there go out under an id we choose (``CallOptions.request_id``,
    public), so they can be withdrawn by id; only the raw channel takes
    options, and mcp 2.3 keeps it private to the per-request session
    (`ServerSession.send_request` takes none). This is the one place that
    reaches for it (pinned to mcp 2.3.x). Should the SDK change under it, this
    raises and every question asked on ``tasks/result`` fails, which the e2e
    tests (tests/e2e/test_question_copies.py) catch, as they catch an SDK that
    stops honouring the chosen id.
    """
    outbound: object = getattr(ctx.session, "_request_outbound", None)
    if not isinstance(outbound, Outbound):
        raise RuntimeError(
            "mcp internals changed: ServerSession._request_outbound is gone"
        )
    return outbound


@dataclass(frozen=True, slots=True)
class _Push:
    connection: Connection
    method: str
    params: dict[str, Any]


class PushChannels:
    """Live connections by owner, and a sender that never blocks the engine.

    A connection registers when it makes a request and is forgotten when it
    closes. Engine events are queued here and sent by `run`, so a slow or
    vanished client cannot stall a worker. Over HTTP, ``streams`` says which
    sessions have their standalone (GET) stream open: a request sent to a
    session without one would be dropped by the transport.
    """

    def __init__(self, streams: StandaloneStreams | None = None) -> None:
        self._by_owner: dict[OwnerId, weakref.WeakSet[Connection]] = {}
        self._owners: weakref.WeakKeyDictionary[Connection, OwnerId] = (
            weakref.WeakKeyDictionary()
        )
        self._sessions: weakref.WeakValueDictionary[str, Connection] = (
            weakref.WeakValueDictionary()
        )
        self._streams = streams
        send, receive = anyio.create_memory_object_stream[_Push](10_000)
        self._send: MemoryObjectSendStream[_Push] = send
        self._receive: MemoryObjectReceiveStream[_Push] = receive

    def register(self, owner: OwnerId, connection: Connection) -> bool:
        """Remember ``connection`` as a live channel of ``owner``; True if new."""
        if not connection.has_standalone_channel:
            return False
        connections = self._by_owner.setdefault(owner, weakref.WeakSet())
        if connection in connections:
            return False
        connections.add(connection)
        self._owners[connection] = owner
        if connection.session_id is not None:
            self._sessions[connection.session_id] = connection

        def forget() -> None:
            connections.discard(connection)
            if not connections:
                self._by_owner.pop(owner, None)

        connection.exit_stack.callback(forget)
        return True

    def connections(self, owner: OwnerId) -> list[Connection]:
        """The live connections of ``owner``."""
        return list(self._by_owner.get(owner, ()))

    def session(self, session_id: str) -> tuple[OwnerId, Connection] | None:
        """The registered connection of HTTP session ``session_id``, and its owner."""
        connection = self._sessions.get(session_id)
        if connection is None:
            return None
        owner = self._owners.get(connection)
        return None if owner is None else (owner, connection)

    def can_ask(self, connection: Connection) -> bool:
        """Whether a request on ``connection``'s standalone stream can reach it now."""
        if self._streams is None:
            return True  # stdio, in process: the one pipe is always there
        session_id = connection.session_id
        return session_id is not None and self._streams.is_open(session_id)

    def push(
        self, connection: Connection, method: str, params: Mapping[str, Any]
    ) -> None:
        """Queue a notification; dropped (with a log line) if the queue is full."""
        try:
            self._send.send_nowait(_Push(connection, method, dict(params)))
        except anyio.WouldBlock:
            logger.warning("push queue full; dropped %s", method)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass  # the server is shutting down

    async def run(self) -> None:
        """Send queued notifications until cancelled."""
        async with self._send, self._receive:
            async for item in self._receive:
                try:
                    await item.connection.notify(item.method, item.params)
                except Exception as exc:  # a gone client must not stop the sender
                    logger.debug("push of %s failed: %r", item.method, exc)
