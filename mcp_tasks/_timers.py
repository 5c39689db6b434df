"""A heap of wake-up times for parked tasks and expiring questions."""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import final

import anyio

from mcp_tasks._model import OwnerId, TaskId


@dataclass(frozen=True, slots=True, order=True)
class Timer:
    """Something to do for a task at ``when`` (seconds since the epoch)."""

    when: float
    seq: int
    kind: str = field(compare=False)  # "wake" or "question"
    task_id: TaskId = field(compare=False)
    owner_id: OwnerId = field(compare=False)
    key: str = field(compare=False, default="")


@final
class Timers:
    """Timers fired in time order by `run`; `fire_due` fires them on demand."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._heap: list[Timer] = []
        self._seq = itertools.count()
        self._changed = anyio.Event()

    def add(
        self, when: float, kind: str, task_id: TaskId, owner_id: OwnerId, key: str = ""
    ) -> None:
        """Schedule a timer."""
        heapq.heappush(
            self._heap, Timer(when, next(self._seq), kind, task_id, owner_id, key)
        )
        self._changed.set()

    def __len__(self) -> int:
        return len(self._heap)

    async def fire_due(self, fire: Callable[[Timer], Awaitable[None]]) -> int:
        """Fire every timer that is due now; return how many fired."""
        fired = 0
        now = self._clock()
        while self._heap and self._heap[0].when <= now:
            await fire(heapq.heappop(self._heap))
            fired += 1
        return fired

    async def run(self, fire: Callable[[Timer], Awaitable[None]]) -> None:
        """Fire timers as they come due, forever."""
        while True:
            self._changed = anyio.Event()
            await self.fire_due(fire)
            delay = self._heap[0].when - self._clock() if self._heap else math.inf
            with anyio.move_on_after(max(0.0, delay)):
                await self._changed.wait()
