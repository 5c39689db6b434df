"""Group commit: writes of one kind that arrive together share one transaction.

Submitting a task and ending a run are the journal's most frequent writes,
and on PostgreSQL each write costs a round trip and a commit (a WAL flush).
Under load many arrive within a commit's time of each other, so a
`GroupCommit` gathers them: one task, the flusher, commits whatever has
arrived since its last commit as one transaction (one statement for the
group), and each caller gets its own rows back. An idle journal sends a lone
write at once, as before, so grouping adds no latency; it only stops writes
from queueing for pool connections and committing one by one.

Each write in a group stays what it was alone: a finish keeps its own fence
(``finish_task`` checks the lease row by row), so grouping never lets a stale
holder end a task, and a submit its own backlog check. Within a group the
writes run ordered by owner (`RunGroup` sorts them): each locks its client's
counters row, so two processes' groups take those locks in the same order and
cannot deadlock each other. If a group's transaction fails, each of its
writes is tried again on its own, so one bad row cannot fail the others.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import psycopg

from mcp_tasks._exceptions import JournalError

logger = logging.getLogger("mcp_tasks.journal")

#: The most writes one transaction carries (bounds its locks and its time).
MAX_GROUP: Final = 64

Row = tuple[Any, ...]
#: Runs a group's calls in one transaction, in lock order (by owner: the
#: statement sorts them); each call's rows, in the order given.
RunGroup = Callable[[Sequence[Sequence[Any]]], Awaitable[list[list[Row]]]]
#: Runs one write as its own transaction (deadlock retries included).
RunOne = Callable[[Sequence[Any]], Awaitable[list[Row]]]
#: Told after each group commits: (seconds from the oldest arrival, size).
Committed = Callable[[float, int], None]


@dataclass
class _Waiting:
    """One write waiting for its group's commit."""

    params: Sequence[Any]
    arrived: float = field(default_factory=time.perf_counter)
    done: anyio.Event = field(default_factory=anyio.Event)
    rows: list[Row] | None = None
    error: BaseException | None = None


class GroupCommit:
    """Gathers concurrent writes and commits each gathering as one transaction.

    `run` is the flusher (started in the journal's task group); `call`
    queues one write and waits for its rows.
    """

    def __init__(self, run_group: RunGroup, run_one: RunOne, committed: Committed):
        self._run_group = run_group
        self._run_one = run_one
        self._committed = committed
        self._waiting: list[_Waiting] = []
        self._wake = anyio.Event()
        self._closed = False

    async def call(self, params: Sequence[Any]) -> list[Row]:
        """Queue one write; its rows once its group committed.

        Raises:
            JournalError: the write failed (or the journal closed first).
        """
        if self._closed:
            raise JournalError("journal write failed: the journal is closed")
        waiting = _Waiting(params)
        self._waiting.append(waiting)
        self._wake.set()
        await waiting.done.wait()
        if waiting.error is not None:
            raise waiting.error
        assert waiting.rows is not None
        return waiting.rows

    async def run(self) -> None:
        """The flusher: commit whatever has arrived, until cancelled.

        On the way out, writes still queued are failed, never left waiting.
        """
        try:
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                while self._waiting:
                    group = self._waiting[:MAX_GROUP]
                    del self._waiting[:MAX_GROUP]
                    await self._flush(group)
        finally:
            self._closed = True
            closed = JournalError("journal write failed: the journal is closed")
            for waiting in self._waiting:
                if not waiting.done.is_set():
                    waiting.error = closed
                    waiting.done.set()
            self._waiting.clear()

    async def _flush(self, group: list[_Waiting]) -> None:
        oldest = min(w.arrived for w in group)
        try:
            if len(group) == 1:
                results = [await self._run_one(group[0].params)]
            else:
                results = await self._run_group([w.params for w in group])
        except (psycopg.Error, JournalError) as exc:
            if len(group) == 1:
                self._fail(group, exc)
                return
            logger.debug(
                "a group of %d writes failed (%s); one by one", len(group), exc
            )
            await self._one_by_one(group)
            return
        except BaseException as exc:
            # Cancelled mid-commit (shutdown): whether it committed is unknown,
            # as for any write cut off; the callers must not wait forever.
            self._fail(group, JournalError(f"journal write interrupted: {exc!r}"))
            raise
        self._committed(time.perf_counter() - oldest, len(group))
        for waiting, rows in zip(group, results, strict=True):
            waiting.rows = rows
            waiting.done.set()

    async def _one_by_one(self, group: list[_Waiting]) -> None:
        for index, waiting in enumerate(group):
            try:
                waiting.rows = await self._run_one(waiting.params)
            except (psycopg.Error, JournalError) as exc:
                waiting.error = exc
            except BaseException as exc:
                self._fail(
                    group[index:], JournalError(f"journal write interrupted: {exc!r}")
                )
                raise
            else:
                self._committed(time.perf_counter() - waiting.arrived, 1)
            waiting.done.set()

    @staticmethod
    def _fail(group: Sequence[_Waiting], error: BaseException) -> None:
        for waiting in group:
            if not waiting.done.is_set():
                waiting.error = error
                waiting.done.set()
