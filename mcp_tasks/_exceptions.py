"""The exception tree of mcp-tasks.

Every public error derives from `McpTasksError`::

    McpTasksError
    ├── ConfigurationError        a config or token file value is wrong
    ├── ListenError               the HTTP server cannot listen where it was told
    ├── JournalError              storage failed (driver error on __cause__)
    │   └── JournalSchemaError    the database schema is not one this code runs
    ├── TaskNotFoundError         no such task for this requestor (or purged)
    ├── TaskTerminalError         the task already finished; it cannot change
    ├── InvalidTransitionError    a status change the state machine forbids
    ├── UnknownToolError          no tool of that name is served
    ├── InvalidArgumentsError     tool arguments failed validation
    ├── TaskSupportError          the tool cannot run in the requested mode
    ├── InvalidCursorError        a tasks/list cursor this server did not issue
    ├── RetryRefusedError         an operator's retry of a task its tool forbids
    ├── CapacityError             a client's backlog limit is reached
    └── RateLimitedError          a client sends task requests faster than allowed

Bindings map these to JSON-RPC errors in exactly one table
(`mcp_tasks.binding._common`). `ErrorCode` is the one list of JSON-RPC codes:
the engine stores some of them in outcomes, and the bindings answer with them.
This module imports nothing from the package.

Messages never carry a client's value whole: `excerpt` and `clip` bound what
an error echoes (a 10 MB task id must not come back in its error, twice).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, Final

#: How many characters of a client's value an error message may echo.
ECHO_LIMIT: Final = 64
#: How long a composed message (e.g. a validator's) may grow before clipping.
MESSAGE_LIMIT: Final = 256
#: How many validation problems one error lists.
MAX_REPORTED_ERRORS: Final = 10


def excerpt(value: str, limit: int = ECHO_LIMIT) -> str:
    """``value`` quoted for a message: whole if short, else its first ``limit`` characters.

    >>> excerpt("abc")
    "'abc'"
    >>> excerpt("x" * 100, 4)
    "'xxxx'… (100 characters)"
    """
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}… ({len(value)} characters)"


def clip(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """Free text (which may embed a client's value somewhere) cut to at most ``limit``.

    The head and the tail are kept, since validators put the offending value
    first and what is wrong with it last (``'xxx…' is not of type 'integer'``).
    """
    if len(text) <= limit:
        return text
    marker = f"… ({len(text)} characters) …"
    keep = max(limit - len(marker), 2) // 2
    return f"{text[:keep]}{marker}{text[-keep:]}"


class ErrorCode(IntEnum):
    """Every JSON-RPC error code mcp-tasks stores or sends."""

    INVALID_REQUEST = -32600  #: JSON-RPC: not a valid request
    METHOD_NOT_FOUND = -32601  #: JSON-RPC: no such method (or not on this wire)
    INVALID_PARAMS = -32602  #: JSON-RPC: a parameter is wrong; the message names it
    INTERNAL_ERROR = -32603  #: JSON-RPC: the server failed (details in its log)
    CAPACITY_EXCEEDED = -32000  #: server-defined: a client's backlog is full
    #: server-defined: a client's task requests come faster than its limit
    RATE_LIMITED = -32029
    #: MCP 2026-07-28: a routing header disagrees with the body
    HEADER_MISMATCH = -32020
    MISSING_REQUIRED_CLIENT_CAPABILITY = -32021  #: MCP: the client lacks a capability


class McpTasksError(Exception):
    """Root of every error raised by mcp-tasks."""


class ConfigurationError(McpTasksError):
    """Raised at start-up when a configuration value is missing or invalid.

    ``key`` names the setting (dotted path) and ``problem`` says what is wrong.
    """

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"configuration {key!r}: {problem}")


class ListenError(McpTasksError):
    """Raised at start-up when the HTTP server cannot listen on ``host:port``.

    ``reason`` is the system's explanation (address in use, permission denied,
    unknown host).
    """

    def __init__(self, host: str, port: int, reason: str) -> None:
        self.host = host
        self.port = port
        self.reason = reason
        super().__init__(f"cannot listen on {host}:{port}: {reason}")


class JournalError(McpTasksError):
    """Raised by the journal when the database cannot be read or written."""


class JournalSchemaError(JournalError):
    """Raised when opening a database whose schema version this code cannot run.

    The database is left untouched.
    """

    def __init__(self, path: str, found: int, supported: int) -> None:
        self.path = path
        self.found = found
        self.supported = supported
        super().__init__(
            f"{path}: schema version {found} is newer than this mcp-tasks "
            f"supports ({supported}); upgrade mcp-tasks or use another database"
        )


class TaskNotFoundError(McpTasksError):
    """Raised when a task does not exist, was purged, or belongs to someone else.

    The three cases are deliberately indistinguishable to the requestor.
    """

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        super().__init__(f"Task not found: {excerpt(task_id)}")


class TaskTerminalError(McpTasksError):
    """Raised when asked to cancel or answer a task that already finished."""

    def __init__(self, task_id: str, status: str) -> None:
        self.task_id = task_id
        self.status = status
        super().__init__(
            f"Task {excerpt(task_id)} is already in terminal status {status!r}"
        )


class InvalidTransitionError(McpTasksError):
    """Raised by the pure model when a status change breaks the state machine."""

    def __init__(self, task_id: str, current: str, requested: str) -> None:
        self.task_id = task_id
        self.current = current
        self.requested = requested
        super().__init__(
            f"Task {excerpt(task_id)}: cannot move from {current!r} to {requested!r}"
        )


class RetryRefusedError(McpTasksError):
    """Raised by `TaskRuntime.retry` (operators) when a failed task may not run again.

    Its tool is not served by this process, or says interrupted work must not
    run again (``recovery="fail"``: it may have side effects done halfway).
    """

    def __init__(self, task_id: str, why: str) -> None:
        self.task_id = task_id
        self.why = why
        super().__init__(f"Task {excerpt(task_id)} cannot be retried: {why}")


class UnknownToolError(McpTasksError):
    """Raised when a call names a tool the server does not serve."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"Unknown tool: {excerpt(name)}")


class InvalidArgumentsError(McpTasksError):
    """Raised when tool arguments fail validation against the tool's schema.

    ``errors`` holds one ``{"field": ..., "message": ...}`` entry per problem,
    at most `MAX_REPORTED_ERRORS` of them, each clipped: a field path may hold
    a client's key, and a validator's message the client's value.
    """

    def __init__(self, tool: str, errors: list[dict[str, Any]]) -> None:
        self.tool = tool
        self.errors = [
            {"field": clip(str(e["field"])), "message": clip(str(e["message"]))}
            for e in errors[:MAX_REPORTED_ERRORS]
        ]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in self.errors)
        if len(errors) > MAX_REPORTED_ERRORS:
            detail += f"; and {len(errors) - MAX_REPORTED_ERRORS} more"
        super().__init__(f"Invalid arguments for tool {excerpt(tool)}: {detail}")


class TaskSupportError(McpTasksError):
    """Raised when a tool is called in a mode its task support forbids.

    ``required`` is True when the tool must run as a task and was called without
    one; False when the tool cannot run as a task and was asked to.
    """

    def __init__(self, tool: str, *, required: bool) -> None:
        self.tool = tool
        self.required = required
        if required:
            message = f"Tool {tool!r} requires task-augmented invocation"
        else:
            message = f"Tool {tool!r} does not support task-augmented invocation"
        super().__init__(message)


class InvalidCursorError(McpTasksError):
    """Raised when a list cursor is malformed, tampered with or from another client."""

    def __init__(self, cursor: str) -> None:
        self.cursor = cursor
        super().__init__(f"Invalid cursor: {excerpt(cursor)}")


class CapacityError(McpTasksError):
    """Raised at submit when a client's backlog of unfinished tasks is full.

    Nothing is stored for the refused call.
    """

    def __init__(self, owner_id: str, limit: int) -> None:
        self.owner_id = owner_id
        self.limit = limit
        super().__init__(
            f"Backlog limit reached: client {excerpt(owner_id)} already has {limit} "
            "unfinished tasks; retry after some finish"
        )


class RateLimitedError(McpTasksError):
    """Raised when a client makes task requests faster than its limit allows.

    ``retry_after_seconds`` is when the next request would be admitted.
    Nothing was done for the refused request.
    """

    def __init__(
        self, owner_id: str, per_second: float, retry_after_seconds: float
    ) -> None:
        self.owner_id = owner_id
        self.per_second = per_second
        self.retry_after_seconds = retry_after_seconds
        super().__init__(
            f"Too many requests: client {excerpt(owner_id)} may make {per_second:g} "
            f"task requests per second; retry in {retry_after_seconds:.2f} s"
        )
