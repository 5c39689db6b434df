"""The storage seam: the `Journal` contract and its SQLite implementation."""

from __future__ import annotations

from mcp_tasks.journal._base import Journal
from mcp_tasks.journal._records import (
    InputRequest,
    NewTask,
    RunRecord,
    TaskEvent,
    Transition,
    UnfinishedTask,
)
from mcp_tasks.journal._sqlite import TERMINAL_GRACE_SECONDS, SqliteJournal

__all__ = [
    "TERMINAL_GRACE_SECONDS",
    "InputRequest",
    "Journal",
    "NewTask",
    "RunRecord",
    "SqliteJournal",
    "TaskEvent",
    "Transition",
    "UnfinishedTask",
]
