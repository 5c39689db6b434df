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
    └── CapacityError             a client's backlog limit is reached

Bindings map these to JSON-RPC errors in exactly one table
(`mcp_tasks.binding._common`). This module imports nothing from the package.
"""

from __future__ import annotations

from typing import Any


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
        super().__init__(f"Task not found: {task_id!r}")


class TaskTerminalError(McpTasksError):
    """Raised when asked to cancel or answer a task that already finished."""

    def __init__(self, task_id: str, status: str) -> None:
        self.task_id = task_id
        self.status = status
        super().__init__(f"Task {task_id!r} is already in terminal status {status!r}")


class InvalidTransitionError(McpTasksError):
    """Raised by the pure model when a status change breaks the state machine."""

    def __init__(self, task_id: str, current: str, requested: str) -> None:
        self.task_id = task_id
        self.current = current
        self.requested = requested
        super().__init__(
            f"Task {task_id!r}: cannot move from {current!r} to {requested!r}"
        )


class UnknownToolError(McpTasksError):
    """Raised when a call names a tool the server does not serve."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"Unknown tool: {name!r}")


class InvalidArgumentsError(McpTasksError):
    """Raised when tool arguments fail validation against the tool's schema.

    ``errors`` holds one ``{"field": ..., "message": ...}`` entry per problem.
    """

    def __init__(self, tool: str, errors: list[dict[str, Any]]) -> None:
        self.tool = tool
        self.errors = errors
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        super().__init__(f"Invalid arguments for tool {tool!r}: {detail}")


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
        super().__init__(f"Invalid cursor: {cursor[:64]!r}")


class CapacityError(McpTasksError):
    """Raised at submit when a client's backlog of unfinished tasks is full.

    Nothing is stored for the refused call.
    """

    def __init__(self, owner_id: str, limit: int) -> None:
        self.owner_id = owner_id
        self.limit = limit
        super().__init__(
            f"Backlog limit reached: client {owner_id!r} already has {limit} "
            "unfinished tasks; retry after some finish"
        )
