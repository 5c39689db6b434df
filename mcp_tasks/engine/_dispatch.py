"""`Dispatcher`: claims work from the journal while this process has free workers.

The journal decides what runs next (fair across clients, within every
client's cap across all processes); the dispatcher only decides *when* to
ask: whenever a worker is free and something may have become claimable (a
change in the feed, a run that ended). It checks with a cheap read first, so
an idle process does not take the write lock to learn there is nothing to do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final, final

import anyio

from mcp_tasks._exceptions import JournalError
from mcp_tasks.engine._engine import Engine
from mcp_tasks.engine._runs import Run
from mcp_tasks.journal import Change, ChangeKind, Claimed

logger = logging.getLogger("mcp_tasks.engine")

#: How long to wait before claiming again after the journal failed.
RETRY_SECONDS: Final = 1.0


@final
class Dispatcher:
    """Claims queued tasks up to this process's worker limit and starts them."""

    def __init__(self, engine: Engine, workers: int) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._engine = engine
        self._workers = workers
        self._busy = 0
        #: Runs whose tool returned, their worker freed, while their verdict
        #: is written (see `tool_returned`).
        self._recording = 0
        #: Whether the last claim filled every free worker (more may wait).
        self._full_claim = False
        self._wake = anyio.Event()
        self._stopped = False
        self._failing = False

    @property
    def busy(self) -> int:
        """Workers running a task now."""
        return self._busy

    @property
    def workers(self) -> int:
        """This process's worker limit."""
        return self._workers

    def wake(self) -> None:
        """Look for work again (something may have become claimable)."""
        self._wake.set()

    def stop(self) -> None:
        """Claim nothing more (shutdown)."""
        self._stopped = True
        self._wake.set()

    def task_changed(self, change: Change) -> None:
        """Feed listener: a status or phase change may free a slot or add work."""
        if change.kind in (ChangeKind.STATUS, ChangeKind.PHASE):
            self._wake.set()

    def tool_returned(self, run: Run) -> None:
        """``run``'s tool returned: its worker is free while its verdict is written.

        Writing the verdict is a journal commit, not tool work, so the next
        task may start meanwhile (the commit of one batch overlaps the claim
        and run of the next). At most ``workers`` runs wait like this, so a
        slow journal cannot pile up runs without bound; past that, a run keeps
        its worker until its verdict is written. The task stays running in
        the journal until then, so every client's cap still counts it.
        """
        if run.worker_freed or self._recording >= self._workers:
            return
        run.worker_freed = True
        self._recording += 1
        self._busy -= 1
        self._wake.set()

    def release(self, run: Run) -> None:
        """``run`` ended: its worker (if it still held one) is free."""
        if run.worker_freed:
            self._recording -= 1
            return
        self._busy -= 1
        self._wake.set()

    async def run(self, start: Callable[[Claimed], None]) -> None:
        """Claim and ``start`` work whenever workers are free, until stopped."""
        while not self._stopped:
            self._wake = anyio.Event()
            free = self._workers - self._busy
            if free > 0:
                claimed = await self._claim_or_wait(free)
                if claimed is None:
                    continue  # the journal failed; waited a little
                if self._stopped:
                    await self._give_back(claimed)
                    return
                for task in claimed:
                    self._busy += 1
                    start(task)
                if claimed and len(claimed) == free:
                    continue  # there may be more, and workers are full anyway
            await self._wake.wait()

    async def _claim_or_wait(self, free: int) -> list[Claimed] | None:
        """What could be claimed; None (after a pause) if the journal failed."""
        try:
            claimed = await self._claim(free)
        except JournalError as exc:
            if not self._failing:
                logger.error("cannot claim work: %s", exc)
            self._failing = True
            with anyio.move_on_after(RETRY_SECONDS):
                await self._wake.wait()
            return None
        if self._failing:
            logger.info("claiming work again")
            self._failing = False
        return claimed

    async def _give_back(self, claimed: list[Claimed]) -> None:
        # Shutdown began while the claim was in flight: give the tasks
        # straight back rather than start them.
        for task in claimed:
            try:
                await self._engine.release_unstarted(task)
            except JournalError as exc:
                logger.error("cannot give back %s: %s", task.task_id, exc)

    async def _claim(self, free: int) -> list[Claimed]:
        # The cheap read first, unless the last claim found more than enough:
        # under load it would be a round trip that only says "yes".
        if not self._full_claim and not await self._engine.journal.claimable():
            return []
        claimed = await self._engine.claim(free)
        self._full_claim = len(claimed) == free
        return claimed
