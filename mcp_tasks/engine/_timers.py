"""Timers as journal queries: retry times, budget waits and question deadlines.

Nothing waits in one process's memory. A parked task carries the time it may
run again, and an open question its deadline, in the journal; every process
asks the journal for the earliest of them, sleeps until then (or until the
feed shows a new one), and then moves what is due with one compare-and-set
write. Several processes doing this at once is harmless: a due task moves once.
"""

from __future__ import annotations

import logging
from typing import Final, final

import anyio

from mcp_tasks._exceptions import JournalError
from mcp_tasks.engine._engine import Engine
from mcp_tasks.journal import Change, ChangeKind

logger = logging.getLogger("mcp_tasks.engine")

#: The longest a timer loop sleeps without looking at the journal again (a
#: backstop for a wake-up hint that never came).
MAX_SLEEP_SECONDS: Final = 5.0


@final
class Timers:
    """Fires due timers of every task in the journal."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._changed = anyio.Event()

    def task_changed(self, change: Change) -> None:
        """Feed listener: a task was parked or asked a question with a deadline."""
        data = change.data or {}
        if change.kind in (ChangeKind.PHASE, ChangeKind.STATUS) and (
            "not_before" in data or "deadline" in data
        ):
            self._changed.set()

    async def fire_due(self) -> int:
        """Move every task whose time has come; return how many moved."""
        engine = self._engine
        due = await engine.journal.next_due()
        if due is None or due > engine.now():
            return 0
        return await engine.fire_due()

    async def run(self) -> None:
        """Fire timers as they come due, forever."""
        engine = self._engine
        while True:
            self._changed = anyio.Event()
            try:
                await self.fire_due()
                due = await engine.journal.next_due()
            except JournalError as exc:
                logger.error("timers: %s", exc)
                due = None
            delay = MAX_SLEEP_SECONDS
            if due is not None:
                delay = min(delay, max(0.0, due - engine.now()))
            with anyio.move_on_after(delay):
                await self._changed.wait()
