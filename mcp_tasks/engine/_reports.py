"""Status messages and progress of running tasks, written to the journal sparingly.

A tool may report progress thousands of times a second. The journal gets at
most one write per task per ``interval`` (and never two in flight for one
task); each write carries the reports made since the last one, in order, up to
`MAX_REPORTS_PER_WRITE` of the newest (a flood loses its middle, never its
end). The writes of different tasks share commits through the journal's group
commit. Before a run's status changes, its pending reports are written first,
so a client never sees progress after the task ended.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, final

import anyio

from mcp_tasks._exceptions import JournalError
from mcp_tasks._model import TaskId
from mcp_tasks.engine._runs import Run, StopReason
from mcp_tasks.journal import Journal, Report

logger = logging.getLogger("mcp_tasks.engine")

#: The most reports one write keeps (the newest); older ones of a burst are dropped.
MAX_REPORTS_PER_WRITE: Final = 8


@dataclass(slots=True)
class _Pending:
    run: Run
    reports: deque[Report] = field(
        default_factory=lambda: deque[Report](maxlen=MAX_REPORTS_PER_WRITE)
    )


@final
class Reporter:
    """Coalesces the reports of running tasks into few journal writes."""

    def __init__(
        self, journal: Journal, interval: float, clock: Callable[[], float]
    ) -> None:
        self._journal = journal
        self._interval = interval
        self._clock = clock
        self._pending: dict[TaskId, _Pending] = {}
        #: Tasks whose reports are being written, and the event set when they are.
        self._in_flight: dict[TaskId, anyio.Event] = {}
        self._wake = anyio.Event()

    def report(
        self,
        run: Run,
        *,
        message: str | None = None,
        progress: float | None = None,
        total: float | None = None,
    ) -> None:
        """Note a status message and/or progress of a run."""
        pending = self._pending.get(run.task_id)
        if pending is None or pending.run is not run:
            pending = self._pending[run.task_id] = _Pending(run)
        pending.reports.append(Report(message, progress, total))
        self._wake.set()

    def forget(self, task_id: TaskId) -> None:
        """The run ended: drop what it did not write yet (its outcome supersedes it)."""
        self._pending.pop(task_id, None)

    async def flush(self, run: Run) -> None:
        """Write the run's pending reports now (before its status changes)."""
        while (writing := self._in_flight.get(run.task_id)) is not None:
            await writing.wait()
        pending = self._pending.get(run.task_id)
        if pending is not None and pending.run is run:
            del self._pending[run.task_id]
            await self._write(pending)

    async def run(self) -> None:
        """Write due reports as they come, forever."""
        async with anyio.create_task_group() as writes:
            while True:
                self._wake = anyio.Event()
                now = anyio.current_time()
                wait = self._interval
                for task_id, pending in list(self._pending.items()):
                    if task_id in self._in_flight:
                        continue
                    due = pending.run.reported_at + self._interval
                    if due <= now:
                        del self._pending[task_id]
                        self._in_flight[task_id] = anyio.Event()
                        writes.start_soon(self._write, pending)
                    else:
                        wait = min(wait, due - now)
                if self._pending:
                    with anyio.move_on_after(wait):
                        await self._wake.wait()
                else:
                    await self._wake.wait()

    async def _write(self, pending: _Pending) -> None:
        run = pending.run
        writing = self._in_flight.setdefault(run.task_id, anyio.Event())
        try:
            written = await self._journal.report(
                run.lease, self._clock(), list(pending.reports)
            )
            if not written:
                run.stop(StopReason.LEASE_LOST)
        except JournalError as exc:
            logger.warning("progress of task %s not recorded: %s", run.task_id, exc)
        finally:
            run.reported_at = anyio.current_time()
            del self._in_flight[run.task_id]
            writing.set()
            self._wake.set()
