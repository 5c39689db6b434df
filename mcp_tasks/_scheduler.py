"""Fair dispatch across clients, with a global limit and per-client caps.

Pure bookkeeping, no I/O and no clock: the runtime pushes ``(owner, task)``
references in, asks `FairScheduler.next` what to start, and reports `release`
when a task stops holding a worker. That keeps every fairness property
unit-testable with plain lists.

Policy: each client has a FIFO queue. Clients with queued work and a free slot
under their cap take turns in round-robin order, one task per turn. A client
that becomes ready (new work, or a slot freed under its cap) joins the end of
the rotation, so a newcomer waits at most one turn behind each other ready
client, however long their queues are. A client at its cap leaves the rotation
until one of its tasks releases its slot, so skipping it costs nothing.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import final

from mcp_tasks._model import OwnerId, TaskId


@dataclass(frozen=True, slots=True)
class SchedulerStatistics:
    """A snapshot of the scheduler's occupancy."""

    running: int
    queued: int
    worker_limit: int
    clients_waiting: int


@final
class FairScheduler:
    """Round-robin over per-client FIFO queues under global and per-client caps."""

    def __init__(self, worker_limit: int, cap_of: Callable[[OwnerId], int]) -> None:
        if worker_limit < 1:
            raise ValueError("worker_limit must be at least 1")
        self._worker_limit = worker_limit
        self._cap_of = cap_of
        self._queues: dict[OwnerId, deque[TaskId]] = {}
        self._running: dict[OwnerId, int] = {}
        self._running_total = 0
        self._queued_total = 0
        # Clients with queued work, in rotation order. OrderedDict gives O(1)
        # move-to-end and removal.
        self._rotation: OrderedDict[OwnerId, None] = OrderedDict()

    def push(self, owner: OwnerId, task: TaskId) -> None:
        """Queue ``task`` at the back of ``owner``'s queue."""
        queue = self._queues.setdefault(owner, deque())
        queue.append(task)
        self._queued_total += 1
        self._make_ready(owner)

    def _make_ready(self, owner: OwnerId) -> None:
        # Join the end of the rotation if there is work and a free slot.
        if owner in self._rotation or owner not in self._queues:
            return
        if self._running.get(owner, 0) < self._cap_of(owner):
            self._rotation[owner] = None

    def remove(self, owner: OwnerId, task: TaskId) -> bool:
        """Drop a queued task (cancelled before it started). False if not queued."""
        queue = self._queues.get(owner)
        if queue is None:
            return False
        try:
            queue.remove(task)
        except ValueError:
            return False
        self._queued_total -= 1
        if not queue:
            del self._queues[owner]
            self._rotation.pop(owner, None)
        return True

    def next(self) -> tuple[OwnerId, TaskId] | None:
        """The next task to start, marking it running; None if nothing may start."""
        while self._running_total < self._worker_limit and self._rotation:
            owner = next(iter(self._rotation))
            running = self._running.get(owner, 0)
            if running >= self._cap_of(owner):
                # At its cap (a cap lowered meanwhile): wait outside the rotation.
                del self._rotation[owner]
                continue
            queue = self._queues[owner]
            task = queue.popleft()
            self._queued_total -= 1
            self._running[owner] = running + 1
            self._running_total += 1
            del self._rotation[owner]
            if queue:
                self._make_ready(owner)  # back of the rotation, if still under its cap
            else:
                del self._queues[owner]
            return owner, task
        return None

    def release(self, owner: OwnerId) -> None:
        """A task of ``owner`` stopped holding a worker (finished, parked or failed)."""
        count = self._running.get(owner, 0)
        if count <= 0:
            raise RuntimeError(f"release without a running task for {owner!r}")
        if count == 1:
            del self._running[owner]
        else:
            self._running[owner] = count - 1
        self._running_total -= 1
        self._make_ready(owner)

    def queued(self, owner: OwnerId) -> int:
        """How many tasks ``owner`` has waiting for a worker."""
        queue = self._queues.get(owner)
        return len(queue) if queue is not None else 0

    def running(self, owner: OwnerId) -> int:
        """How many tasks of ``owner`` hold a worker."""
        return self._running.get(owner, 0)

    def position(self, owner: OwnerId, task: TaskId) -> int | None:
        """1-based place of ``task`` in its client's queue, or None if not queued."""
        queue = self._queues.get(owner)
        if queue is None:
            return None
        try:
            return queue.index(task) + 1
        except ValueError:
            return None

    @property
    def running_total(self) -> int:
        """How many tasks hold a worker, over all clients."""
        return self._running_total

    @property
    def worker_limit(self) -> int:
        """The global number of workers."""
        return self._worker_limit

    def statistics(self) -> SchedulerStatistics:
        """Current occupancy."""
        return SchedulerStatistics(
            running=self._running_total,
            queued=self._queued_total,
            worker_limit=self._worker_limit,
            clients_waiting=len(self._queues),
        )
