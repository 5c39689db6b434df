"""Following the journal's change feed: how every process learns of every change.

`Feed.run` keeps the journal's cursor past the last change it saw and reads
what came after: at once when this process committed something (the journal tells
it), otherwise every ``poll_seconds``, which is how changes made by other
processes arrive. Each change is handed to every listener and wakes whoever
waits on its task (`Feed.wait_until`), so a ``tasks/result`` held open here
returns when a run on another process finishes.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final, final

import anyio
from anyio.abc import TaskStatus

from mcp_tasks._exceptions import JournalError
from mcp_tasks._model import Task, TaskId
from mcp_tasks.engine._events import ChangeListener
from mcp_tasks.journal import Change, ChangeKind, Journal

logger = logging.getLogger("mcp_tasks.engine")

#: Changes read per journal call while catching up.
READ_BATCH: Final = 1000


@final
class Feed:
    """The change feed of one journal, as this process follows it."""

    def __init__(self, journal: Journal, poll_seconds: float) -> None:
        self._journal = journal
        self._poll_seconds = poll_seconds
        self._cursor = ""
        self._nudged = anyio.Event()
        self._listeners: list[ChangeListener] = []
        #: Per task, one event for each `wait_until` waiting on it.
        self._waiters: dict[TaskId, set[anyio.Event]] = {}
        self._failing = False

    def subscribe(self, listener: ChangeListener) -> Callable[[], None]:
        """Register ``listener``; returns a function that unregisters it (once)."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def nudge(self) -> None:
        """Read the feed now (this process just committed something)."""
        self._nudged.set()

    async def run(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Deliver changes as they appear, forever. Starts at the current head."""
        self._cursor = await self._journal.feed_head()
        task_status.started()
        while True:
            with anyio.move_on_after(self._poll_seconds):
                await self._nudged.wait()
            self._nudged = anyio.Event()
            await self.catch_up()

    async def catch_up(self) -> int:
        """Deliver every change committed so far; return how many."""
        delivered = 0
        while True:
            try:
                page = await self._journal.changes(self._cursor, READ_BATCH)
            except JournalError as exc:
                if not self._failing:
                    logger.error("cannot read the change feed: %s", exc)
                self._failing = True
                return delivered
            if self._failing:
                logger.info("reading the change feed again")
                self._failing = False
            self._cursor = page.cursor
            for change in page.changes:
                self._deliver(change)
            delivered += len(page.changes)
            if len(page.changes) < READ_BATCH:
                return delivered

    def _deliver(self, change: Change) -> None:
        if change.kind is not ChangeKind.LOG:
            for waiter in self._waiters.pop(change.task_id, set()):
                waiter.set()
        for listener in list(self._listeners):
            try:
                listener.task_changed(change)
            except Exception:
                logger.exception("a change listener failed on task %s", change.task_id)

    async def wait_until(
        self,
        task_id: TaskId,
        read: Callable[[], Awaitable[Task]],
        done: Callable[[Task], bool],
    ) -> Task:
        """Re-``read`` the task after each of its changes until ``done`` holds."""
        # Each waiter has its own event, registered before the read so a change
        # in between is not missed, and always removed again: waiting leaves no
        # state behind, whatever the outcome (even for ids that do not exist).
        while True:
            changed = anyio.Event()
            waiters = self._waiters.setdefault(task_id, set())
            waiters.add(changed)
            try:
                task = await read()
                if done(task):
                    return task
                await changed.wait()
            finally:
                waiters.discard(changed)
                if not waiters and self._waiters.get(task_id) is waiters:
                    del self._waiters[task_id]

    @property
    def waiting(self) -> int:
        """How many tasks someone waits on (for statistics and tests)."""
        return len(self._waiters)
