"""mcp-tasks: durable MCP tasks on a SQLite journal, for both task wire generations.

Write tools with `tool` and `TaskContext`; serve them with ``mcp-tasks serve``
or embed `TaskRuntime` and `McpTasksServer` in your own program.
"""

from __future__ import annotations

from mcp_tasks._config import ClientLimits, Settings
from mcp_tasks._exceptions import (
    CapacityError,
    ConfigurationError,
    InvalidArgumentsError,
    InvalidCursorError,
    InvalidTransitionError,
    JournalError,
    JournalSchemaError,
    ListenError,
    McpTasksError,
    RateLimitedError,
    TaskNotFoundError,
    TaskSupportError,
    TaskTerminalError,
    UnknownToolError,
)
from mcp_tasks._model import Outcome, OwnerId, Task, TaskId, TaskStatus
from mcp_tasks._questions import (
    Answer,
    InputNotSupportedError,
    InvalidAnswerError,
    Question,
)
from mcp_tasks._toolapi import (
    ProtocolError,
    Recovery,
    RetryLater,
    TaskContext,
    TaskSupport,
    ThreadTaskContext,
    ToolError,
    ToolResult,
    ToolSpec,
    tool,
)
from mcp_tasks._toolloader import load_tools, tools_from
from mcp_tasks.engine import AnswerReceipt, Requester, TaskRuntime

__all__ = [
    "Answer",
    "AnswerReceipt",
    "CapacityError",
    "ClientLimits",
    "ConfigurationError",
    "InputNotSupportedError",
    "InvalidAnswerError",
    "InvalidArgumentsError",
    "InvalidCursorError",
    "InvalidTransitionError",
    "JournalError",
    "JournalSchemaError",
    "ListenError",
    "McpTasksError",
    "Outcome",
    "OwnerId",
    "ProtocolError",
    "Question",
    "RateLimitedError",
    "Recovery",
    "Requester",
    "RetryLater",
    "Settings",
    "Task",
    "TaskContext",
    "TaskId",
    "TaskNotFoundError",
    "TaskRuntime",
    "TaskStatus",
    "TaskSupport",
    "TaskSupportError",
    "TaskTerminalError",
    "ThreadTaskContext",
    "ToolError",
    "ToolResult",
    "ToolSpec",
    "UnknownToolError",
    "load_tools",
    "tool",
    "tools_from",
]
