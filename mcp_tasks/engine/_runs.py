"""The runs this process is executing: one `Run` per claimed task.

What a process keeps in memory about its own work, and nothing more: which
tasks it runs under which lease, and a cancel scope to stop each. The journal
stays the truth (a run's lease is in the task's row); this table is how the
heartbeat knows which leases are alive, how a cancel or a lost lease stops the
right body, and how shutdown knows what to hand back.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import final

import anyio

from mcp_tasks._model import OwnerId, TaskId
from mcp_tasks.engine._tracing import RunTrace
from mcp_tasks.journal import Claimed, Lease


class StopReason:
    """Why a run was stopped from outside its body."""

    CANCELLED = "cancelled"  #: the task was cancelled (the journal says so already)
    LEASE_LOST = "lease lost"  #: another process took the task over, or it ended
    SHUTDOWN = "shutdown"  #: this process is shutting down


@dataclass(eq=False)
class Run:
    """One task this process runs, under one lease."""

    claimed: Claimed
    started_at: float
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    stop_reason: str | None = None
    #: When its last report was written (monotonic), for `Reporter`'s pacing.
    reported_at: float = -math.inf
    #: Its span, when tracing is on (see `_tracing`).
    trace: RunTrace = RunTrace.OFF
    #: Whether its worker was freed before the run ended (`Dispatcher.tool_returned`).
    worker_freed: bool = False
    #: Told once the tool has returned and only writing its verdict is left.
    tool_returned: Callable[[Run], None] = field(default=lambda run: None)

    @property
    def lease(self) -> Lease:
        """The lease this run holds."""
        return self.claimed.lease

    @property
    def task_id(self) -> TaskId:
        """The task being run."""
        return self.claimed.task_id

    @property
    def owner_id(self) -> OwnerId:
        """The task's owner."""
        return self.claimed.owner_id

    @property
    def stopped(self) -> bool:
        """Whether the run was told to stop; its late results are discarded."""
        return self.stop_reason is not None

    def stop(self, reason: str) -> None:
        """Stop the body (the first reason given wins)."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self.scope.cancel()


@final
class Runs:
    """The runs of this process, by task id."""

    def __init__(self) -> None:
        self._runs: dict[TaskId, Run] = {}
        self._idle = anyio.Event()
        self._idle.set()

    def add(self, run: Run) -> None:
        """Register a run that is about to start."""
        self._runs[run.task_id] = run
        self._idle = anyio.Event() if self._idle.is_set() else self._idle

    def remove(self, run: Run) -> None:
        """Forget a run that ended."""
        if self._runs.get(run.task_id) is run:
            del self._runs[run.task_id]
        if not self._runs:
            self._idle.set()

    def get(self, task_id: TaskId) -> Run | None:
        """The run of ``task_id`` in this process, if any."""
        return self._runs.get(task_id)

    def holding(self, lease: Lease) -> Run | None:
        """The run holding exactly ``lease``, if it is one of ours."""
        run = self._runs.get(lease.task_id)
        return run if run is not None and run.lease == lease else None

    def all(self) -> list[Run]:
        """Every current run."""
        return list(self._runs.values())

    def __len__(self) -> int:
        return len(self._runs)

    async def wait_idle(self) -> None:
        """Wait until no run is left."""
        await self._idle.wait()
