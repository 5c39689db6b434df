"""What the runtime tells the outside: task changes, answers, progress and logs.

`Broadcaster` fans each event out to the subscribed `RuntimeListener` objects
(the bindings) and wakes whoever waits on the task (`TaskRuntime.wait_for`).
A failing listener is logged and skipped; it never breaks the engine.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, final

import anyio

from mcp_tasks._model import OwnerId, Task, TaskId

logger = logging.getLogger("mcp_tasks.runtime")


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """A progress report from a running tool."""

    task_id: TaskId
    owner_id: OwnerId
    progress: float
    total: float | None
    message: str | None
    request_meta: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class LogEvent:
    """A log message from a running tool."""

    task_id: TaskId
    owner_id: OwnerId
    level: str
    message: str
    request_meta: Mapping[str, Any]


class RuntimeListener(Protocol):
    """Receives runtime events. Must not block: it is called on the engine's path."""

    def task_changed(self, task: Task, request_meta: Mapping[str, Any]) -> None:
        """A task moved to a new status (already committed)."""

    def task_progress(self, event: ProgressEvent) -> None:
        """A running task reported progress."""

    def task_log(self, event: LogEvent) -> None:
        """A running task logged a message."""

    def question_answered(self, task_id: TaskId, key: str) -> None:
        """The question ``key`` of a task was answered (or timed out); committed."""


@final
class Broadcaster:
    """The runtime's listeners, and the wake-up events of tasks being waited on."""

    def __init__(self) -> None:
        self.listeners: list[RuntimeListener] = []
        #: Per task, one event for each `wait_until` waiting on it.
        self.waiters: dict[TaskId, set[anyio.Event]] = {}

    def subscribe(self, listener: RuntimeListener) -> Callable[[], None]:
        """Register ``listener``; returns a function that unregisters it."""
        self.listeners.append(listener)
        return lambda: self.listeners.remove(listener)

    def task_changed(self, task: Task, request_meta: Mapping[str, Any]) -> None:
        """Wake the task's waiters and tell every listener it moved."""
        self.wake_waiters(task.task_id)
        for listener in list(self.listeners):
            try:
                listener.task_changed(task, request_meta)
            except Exception:
                logger.exception("listener failed on task %s", task.task_id)

    def wake_waiters(self, task_id: TaskId) -> None:
        """Wake everyone waiting on ``task_id`` (each re-reads the task)."""
        for waiter in self.waiters.pop(task_id, set()):
            waiter.set()

    async def wait_until(
        self,
        task_id: TaskId,
        read: Callable[[], Awaitable[Task]],
        done: Callable[[Task], bool],
    ) -> Task:
        """Re-``read`` the task on every wake-up until ``done`` holds; return it."""
        # Each waiter has its own event, registered before the read so a change
        # in between is not missed, and always removed again: waiting leaves no
        # state behind, whatever the outcome (even for ids that do not exist).
        while True:
            changed = anyio.Event()
            waiters = self.waiters.setdefault(task_id, set())
            waiters.add(changed)
            try:
                task = await read()
                if done(task):
                    return task
                await changed.wait()
            finally:
                waiters.discard(changed)
                if not waiters and self.waiters.get(task_id) is waiters:
                    del self.waiters[task_id]

    def progress(self, event: ProgressEvent) -> None:
        """Hand a tool's progress report to every listener."""
        for listener in list(self.listeners):
            try:
                listener.task_progress(event)
            except Exception:
                logger.exception("listener failed on progress of %s", event.task_id)

    def question_answered(self, task_id: TaskId, key: str) -> None:
        """Tell every listener that question ``key`` of ``task_id`` is settled."""
        for listener in list(self.listeners):
            try:
                listener.question_answered(task_id, key)
            except Exception:
                logger.exception("listener failed on an answer to %s", task_id)

    def log(self, event: LogEvent) -> None:
        """Hand a tool's log message to every listener."""
        for listener in list(self.listeners):
            try:
                listener.task_log(event)
            except Exception:
                logger.exception("listener failed on log of %s", event.task_id)
