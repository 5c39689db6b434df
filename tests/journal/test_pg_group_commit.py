"""Group commit of submits and run ends on PostgreSQL (`GroupCommit`).

With fakes: writes that arrive while one commits share the next transaction,
each caller gets its own rows, a failing group is retried one by one, and
nobody waits forever when the journal closes. On a real server: one
transaction carries the group, every finish keeps its own fence and every
submit its own backlog check, a bad submit fails alone, and the group runs in
owner order, the lock order that keeps two replicas' groups from deadlocking.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import anyio
import psycopg
import pytest

from mcp_tasks._exceptions import CapacityError, JournalError
from mcp_tasks._model import Outcome, OwnerId, Task, TaskStatus
from mcp_tasks.journal import Claimed, Lease
from mcp_tasks.journal._records import NewTask
from mcp_tasks.journal.postgres import PostgresJournal
from mcp_tasks.journal.postgres._group_commit import GroupCommit, Row

from .contract.support import LEASE, T0, new_task
from .test_postgres import _sql

Call = Sequence[Any]


class FakeDatabase:
    """Records transactions; a finish's rows are its params echoed back."""

    def __init__(self) -> None:
        self.groups: list[list[str]] = []
        self.singles: list[Call] = []
        self.commits: list[int] = []
        self.hold_first = anyio.Event()
        self.first_started = anyio.Event()
        self.failing_group = False
        self.bad: set[str] = set()

    async def run_one(self, params: Call) -> list[Row]:
        self.singles.append(params)
        if len(self.singles) == 1:
            self.first_started.set()
            await self.hold_first.wait()
        if params[0] in self.bad:
            raise psycopg.errors.CheckViolation(f"bad row {params[0]}")
        return [tuple(params)]

    async def run_group(self, calls: Sequence[Call]) -> list[list[Row]]:
        self.groups.append([str(params[0]) for params in calls])
        if self.failing_group:
            raise psycopg.errors.DeadlockDetected("deadlock detected")
        return [[tuple(params)] for params in calls]

    def committed(self, seconds: float, writes: int) -> None:
        assert seconds >= 0
        self.commits.append(writes)


async def test_finishes_arriving_during_a_commit_share_the_next_transaction() -> None:
    db = FakeDatabase()
    group = GroupCommit(db.run_group, db.run_one, db.committed)
    got: dict[str, list[Row]] = {}

    async def finish(task_id: str) -> None:
        got[task_id] = await group.call((task_id, "payload"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(group.run)
        tg.start_soon(finish, "t0")
        await db.first_started.wait()  # t0 commits alone...
        for n in range(1, 6):  # ...while five more arrive
            tg.start_soon(finish, f"t{n}")
        await anyio.wait_all_tasks_blocked()
        db.hold_first.set()
        with anyio.fail_after(5):
            while len(got) < 6:
                await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    assert db.groups == [["t1", "t2", "t3", "t4", "t5"]]
    assert db.commits == [1, 5]
    assert got == {f"t{n}": [(f"t{n}", "payload")] for n in range(6)}


async def test_a_failed_group_is_retried_one_by_one_so_a_bad_finish_fails_alone() -> (
    None
):
    db = FakeDatabase()
    db.hold_first.set()
    db.failing_group = True
    db.bad = {"t2"}
    group = GroupCommit(db.run_group, db.run_one, db.committed)
    got: dict[str, list[Row] | BaseException] = {}

    async def finish(task_id: str) -> None:
        try:
            got[task_id] = await group.call((task_id,))
        except JournalError as exc:  # pragma: no cover - not raised here
            got[task_id] = exc
        except psycopg.Error as exc:
            got[task_id] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(group.run)
        for n in range(4):  # all queued before the flusher first runs
            tg.start_soon(finish, f"t{n}")
        with anyio.fail_after(5):
            while len(got) < 4:
                await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    assert db.groups == [["t0", "t1", "t2", "t3"]]
    assert [params[0] for params in db.singles] == ["t0", "t1", "t2", "t3"]
    assert isinstance(got["t2"], psycopg.errors.CheckViolation)
    assert {k: v for k, v in got.items() if k != "t2"} == {
        "t0": [("t0",)],
        "t1": [("t1",)],
        "t3": [("t3",)],
    }
    assert db.commits == [1, 1, 1]


async def test_finishes_still_waiting_when_the_journal_closes_fail_not_hang() -> None:
    db = FakeDatabase()
    group = GroupCommit(db.run_group, db.run_one, db.committed)
    errors: list[BaseException] = []

    async def finish(task_id: str) -> None:
        try:
            await group.call((task_id,))
        except JournalError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as outer:
        async with anyio.create_task_group() as flusher:
            flusher.start_soon(group.run)
            outer.start_soon(finish, "t0")
            await db.first_started.wait()  # t0 is being committed
            outer.start_soon(finish, "t1")
            outer.start_soon(finish, "t2")
            await anyio.wait_all_tasks_blocked()
            flusher.cancel_scope.cancel()  # the journal closes
    assert len(errors) == 3
    assert all("journal" in str(error) for error in errors)
    with pytest.raises(JournalError, match="closed"):
        await group.call(("t3",))


# ------------------------------------------------------------ a real server


async def test_one_transaction_carries_a_group_each_finish_fenced_in_lock_order(
    postgres_db_url: str,
) -> None:
    owners = [OwnerId(name) for name in ("zoe", "adam", "mia")]
    commits: list[int] = []
    async with PostgresJournal.open(postgres_db_url, pool_size=2) as journal:
        journal.observe_commits(lambda _seconds, writes: commits.append(writes))
        claimed: list[Claimed] = []
        for owner in owners:  # submitted and claimed zoe, adam, mia
            for _ in range(2):
                await journal.submit(new_task(owner))
        while len(claimed) < 6:
            claimed += await journal.claim("h/1", T0 + LEASE, 6, T0)
        stale = claimed[1]
        ended: dict[str, object] = {}

        async def finish(item: Claimed) -> None:
            lease = item.lease
            if item is stale:  # a run whose lease was taken over
                lease = Lease(lease.task_id, "h/old", lease.attempt)
            ended[item.task_id] = await journal.finish(
                lease,
                TaskStatus.COMPLETED,
                "grouped",
                T0 + 1,
                outcome=Outcome(result={"content": []}),
            )

        commits.clear()
        # The flusher runs after every finish below has queued: one group.
        async with anyio.create_task_group() as tg:
            for item in claimed:
                tg.start_soon(finish, item)
        assert commits == [6]
        assert ended[stale.task_id] is None
        assert all(
            isinstance(task, Task) and task.status is TaskStatus.COMPLETED
            for task_id, task in ended.items()
            if task_id != stale.task_id
        )
        loads = {load.owner_id: load for load in await journal.load()}
    assert sum(load.running for load in loads.values()) == 1  # the stale one
    positions = _sql(
        postgres_db_url,
        "SELECT owner_id FROM task_changes WHERE reason = 'grouped' ORDER BY position",
    )
    # Run by owner, whatever order they arrived in (lock order across replicas).
    ran = [str(row[0]) for row in positions]
    assert ran == sorted(ran)
    assert set(ran) == set(owners)


async def test_submits_arriving_together_share_one_transaction_in_lock_order(
    postgres_db_url: str,
) -> None:
    commits: list[int] = []
    tasks = [new_task(OwnerId(name)) for name in ("zoe", "adam", "mia") * 2]
    # A client with room for one: the second of its submits in the same
    # group is refused by its own backlog check, the others go ahead.
    full = [new_task(OwnerId("full"), backlog=1) for _ in range(2)]
    async with PostgresJournal.open(postgres_db_url, pool_size=2) as journal:
        journal.observe_commits(lambda _seconds, writes: commits.append(writes))
        refused: list[str] = []

        async def submit(task: NewTask) -> None:
            try:
                await journal.submit(task)
            except CapacityError:
                refused.append(task.task_id)

        # The flusher runs after every submit below has queued: one group.
        async with anyio.create_task_group() as tg:
            for task in [*tasks, *full]:
                tg.start_soon(submit, task)
        assert commits == [len(tasks) + len(full)]
        assert refused == [full[1].task_id]
        for task in [*tasks, full[0]]:
            stored = await journal.get(task.task_id)
            assert stored is not None
            assert stored.status is TaskStatus.WORKING
        assert await journal.get(full[1].task_id) is None
        loads = {load.owner_id: load.queued for load in await journal.load()}
    assert loads == {"adam": 2, "full": 1, "mia": 2, "zoe": 2}
    submitted = _sql(
        postgres_db_url,
        "SELECT owner_id FROM task_changes WHERE reason = 'submitted' ORDER BY position",
    )
    ran = [str(row[0]) for row in submitted]
    assert ran == sorted(ran)  # by owner, whatever order they arrived in


async def test_a_submit_that_fails_its_group_fails_alone(postgres_db_url: str) -> None:
    commits: list[int] = []
    first = new_task(OwnerId("adam"))
    again = dataclasses.replace(first, owner_id=OwnerId("zoe"))  # same task id
    others = [new_task(OwnerId("mia")) for _ in range(3)]
    async with PostgresJournal.open(postgres_db_url, pool_size=2) as journal:
        journal.observe_commits(lambda _seconds, writes: commits.append(writes))
        failed: list[BaseException] = []

        async def submit(task: NewTask) -> None:
            try:
                await journal.submit(task)
            except JournalError as exc:
                failed.append(exc)

        async with anyio.create_task_group() as tg:
            for task in [first, *others, again]:
                tg.start_soon(submit, task)
        # The group's statement failed on the duplicate id; then each submit
        # was tried alone: every other one stored, the duplicate refused.
        (error,) = failed
        assert "task_id" in str(error)
        assert commits == [1, 1, 1, 1]
        stored = await journal.get(first.task_id)
        assert stored is not None
        assert stored.owner_id == "adam"
        for task in others:
            assert await journal.get(task.task_id) is not None
        loads = {load.owner_id: load.queued for load in await journal.load()}
    assert loads == {"adam": 1, "mia": 3}
