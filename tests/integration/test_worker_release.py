"""A run's worker is free once its tool returns, while its verdict commits.

Writing the verdict is journal work, not tool work: the next task's tool may
start meanwhile, but at most ``workers`` runs wait for their commit like this,
and the task counts as running (for its client's cap) until the commit.
A journal whose ``finish`` the test holds shows each step without sleeping.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcp_tasks import OwnerId, Requester, Settings, Task, TaskRuntime, TaskStatus
from mcp_tasks.journal import Claimed, Journal, Lease, open_journal

from ..quiesce import settle_tasks
from .gated_tools import Gates, make_tools

ALICE = Requester(OwnerId("alice"))
TIMEOUT = 10.0


class HeldFinishes:
    """A journal whose ``finish`` of a held task waits until the test lets it go."""

    def __init__(self, inner: Journal) -> None:
        self._inner = inner
        self.held: dict[str, anyio.Event] = {}
        self.waiting: set[str] = set()
        self.calls: dict[str, int] = {"claimable": 0, "claim": 0}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def claimable(self) -> bool:
        self.calls["claimable"] += 1
        return await self._inner.claimable()

    async def claim(self, *args: Any) -> list[Claimed]:
        self.calls["claim"] += 1
        return await self._inner.claim(*args)

    async def finish(self, lease: Lease, *args: Any, **kwargs: Any) -> Task | None:
        hold = self.held.get(lease.task_id)
        if hold is not None:
            self.waiting.add(lease.task_id)
            await hold.wait()
            self.waiting.discard(lease.task_id)
        return await self._inner.finish(lease, *args, **kwargs)


@asynccontextmanager
async def held_runtime(
    path: Path, gates: Gates, **settings: Any
) -> AsyncGenerator[tuple[TaskRuntime, HeldFinishes]]:
    async with open_journal(str(path)) as inner:
        journal = HeldFinishes(inner)
        runtime = TaskRuntime(
            journal,  # type: ignore[arg-type]  # a pass-through proxy
            Settings(**settings),
            make_tools(gates),
            cursor_secret=await inner.secret("cursor"),
        )
        try:
            async with runtime.running():
                try:
                    yield runtime, journal
                finally:  # a failed test must not leave a commit held
                    for hold in journal.held.values():
                        hold.set()
                    gates.open(*gates.started)
        finally:
            gates.release_threads()


async def submit(runtime: TaskRuntime, journal: HeldFinishes, key: str) -> Task:
    task = await runtime.submit(ALICE, "gate", {"key": key, "group": "all"})
    journal.held[task.task_id] = anyio.Event()
    return task


async def settle(runtime: TaskRuntime) -> None:
    with anyio.fail_after(TIMEOUT):
        for _ in range(4):
            await settle_tasks()
            await runtime.catch_up()
        await settle_tasks()


async def running(runtime: TaskRuntime) -> int:
    (load,) = await runtime.load(ALICE.owner_id)
    return load.running


async def test_the_next_tool_starts_while_a_verdict_commits_at_most_workers_wait(
    tmp_path: Path, gates: Gates
) -> None:
    async with held_runtime(
        tmp_path / "tasks.db", gates, workers=1, client_concurrency=4
    ) as (runtime, journal):
        a = await submit(runtime, journal, "a")
        b = await submit(runtime, journal, "b")
        c = await submit(runtime, journal, "c")
        gates.open("a")
        await settle(runtime)
        # a's tool returned; its verdict waits to commit, and b's tool runs
        # on the one worker meanwhile. a still counts as running.
        assert journal.waiting == {a.task_id}
        assert gates.started == ["a", "b"]
        assert await running(runtime) == 2
        assert runtime.statistics().running == 1  # workers held: never over the limit

        gates.open("b", "c")
        await settle(runtime)
        # b's tool returned too, but one run already waits for its commit
        # (as many as there are workers): b keeps its worker, c waits.
        assert journal.waiting == {a.task_id, b.task_id}
        assert gates.started == ["a", "b"]

        journal.held[a.task_id].set()
        await settle(runtime)
        assert gates.started == ["a", "b"]  # b still holds the worker

        journal.held[b.task_id].set()
        journal.held[c.task_id].set()
        with anyio.fail_after(TIMEOUT):
            for task in (a, b, c):
                done = await runtime.wait_terminal(ALICE, task.task_id)
                assert done.status is TaskStatus.COMPLETED
    assert gates.started == ["a", "b", "c"]
    assert gates.peak["all"] == 1  # never two tools at once on one worker


async def test_under_load_the_dispatcher_claims_without_asking_first(
    tmp_path: Path, gates: Gates
) -> None:
    # The cheap "anything claimable?" read spares an idle process a write;
    # after a claim that filled every free worker it would only say yes.
    async with held_runtime(
        tmp_path / "tasks.db", gates, workers=1, client_concurrency=4
    ) as (runtime, journal):
        await settle(runtime)
        journal.calls.update(claimable=0, claim=0)
        tasks = [
            await runtime.submit(ALICE, "gate", {"key": f"k{n}"}) for n in range(4)
        ]
        gates.open("k0", "k1", "k2")
        await gates.wait_started("k3")
        # Counted while work was queued (k3 still runs, so no claim came up
        # empty yet): one read before the first claim, then each claim,
        # filling the one worker, went straight to the next.
        seen = dict(journal.calls)
        gates.open("k3")
        with anyio.fail_after(TIMEOUT):
            for task in tasks:
                await runtime.wait_terminal(ALICE, task.task_id)
    assert seen == {"claimable": 1, "claim": 4}


@pytest.fixture
def gates() -> Gates:
    return Gates()
