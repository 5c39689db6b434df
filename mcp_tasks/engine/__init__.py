"""The engine: durable tasks over a journal, the same in every process.

Bindings use `TaskRuntime` (and `Requester`, `AnswerReceipt`) and follow the
change feed with a `ChangeListener`. Nothing here imports ``mcp`` or sees SQL,
and nothing assumes this process is the only one on its journal.
"""

from __future__ import annotations

from mcp_tasks.engine._events import Change, ChangeKind, ChangeListener
from mcp_tasks.engine._preflight import PreflightResult, run_preflight
from mcp_tasks.engine._runtime import (
    AnswerReceipt,
    Requester,
    RuntimeStatistics,
    TaskRuntime,
    queue_message,
)
from mcp_tasks.engine._tracing import tracing_on

__all__ = [
    "AnswerReceipt",
    "Change",
    "ChangeKind",
    "ChangeListener",
    "PreflightResult",
    "Requester",
    "RuntimeStatistics",
    "TaskRuntime",
    "queue_message",
    "run_preflight",
    "tracing_on",
]
