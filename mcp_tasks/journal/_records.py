"""Plain records passed across the journal seam (no I/O, no SQL)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mcp_tasks._model import Outcome, OwnerId, TaskId, TaskStatus


@dataclass(frozen=True, slots=True)
class NewTask:
    """A task to insert at submit: everything the journal stores up front."""

    task_id: TaskId
    owner_id: OwnerId
    tool_name: str
    arguments: dict[str, Any]
    created_at: float
    ttl_seconds: float | None
    poll_interval_seconds: float
    status_message: str | None = None
    listed: bool = True
    request_meta: dict[str, Any] = field(default_factory=lambda: dict[str, Any]())


@dataclass(frozen=True, slots=True)
class Transition:
    """A compare-and-set status change.

    Applied only if the task's current status may move to ``status``; otherwise
    the journal reports that another writer won. ``phase`` is the dispatch phase
    to record with it (``done`` is implied for terminal statuses).
    """

    task_id: TaskId
    status: TaskStatus
    reason: str
    at: float
    status_message: str | None = None
    outcome: Outcome | None = None
    phase: str | None = None
    not_before: float | None = None


@dataclass(frozen=True, slots=True)
class RunRecord:
    """What a worker needs to run a claimed task."""

    task_id: TaskId
    owner_id: OwnerId
    tool_name: str
    arguments: dict[str, Any]
    request_meta: dict[str, Any]
    attempts: int
    retries: int = 0


@dataclass(frozen=True, slots=True)
class UnfinishedTask:
    """A non-terminal task as found at start-up, for rebuilding the queues."""

    task_id: TaskId
    owner_id: OwnerId
    phase: str
    status: TaskStatus
    not_before: float | None
    lease_expires_at: float | None
    tool_name: str = ""


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """One entry of a task's append-only transition journal."""

    status: TaskStatus
    status_message: str | None
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class InputRequest:
    """A question a task put to its requestor, and the answer once given.

    ``method`` and ``params`` are the server-to-client request (for example
    ``elicitation/create``); ``key`` is unique over the task's lifetime.
    """

    key: str
    method: str
    params: dict[str, Any]
    response: dict[str, Any] | None = None
    expires_at: float | None = None

    @property
    def is_open(self) -> bool:
        """Whether the question still waits for an answer."""
        return self.response is None
