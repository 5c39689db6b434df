"""Contract: what operators and metrics read and do (listing, retry, commit stats)."""

from __future__ import annotations

from mcp_tasks._model import Outcome, TaskId, TaskStatus
from mcp_tasks.journal import ChangeKind, Journal, by_operator

from .support import (
    ALICE,
    BOB,
    HOLDER,
    LEASE,
    OTHER_HOLDER,
    T0,
    complete,
    new_task,
    submit_and_claim,
)

#: Who retries in these tests.
OPERATOR = by_operator("ops")


async def fail(journal: Journal, at: float = T0 + 1) -> TaskId:
    """Submit, claim and fail one task; its id."""
    claimed = await submit_and_claim(journal, at=at)
    await journal.record_step(claimed.lease, "step:a-1", {"done": 1}, at)
    failed = await journal.finish(
        claimed.lease,
        TaskStatus.FAILED,
        "tool raised",
        at + 1,
        message="boom",
        outcome=Outcome(error={"code": -32603, "message": "boom"}),
    )
    assert failed is not None
    return claimed.task_id


async def test_list_tasks_shows_every_clients_tasks_newest_first(
    journal: Journal,
) -> None:
    first = new_task(ALICE)
    second = new_task(BOB, listed=False)
    third = new_task(ALICE)
    for new in (first, second, third):
        await journal.submit(new)
    rows = await journal.list_tasks()
    assert [r.task.task_id for r in rows] == [
        third.task_id,
        second.task_id,
        first.task_id,
    ]
    assert [r.phase for r in rows] == ["queued"] * 3
    assert rows[0].seq > rows[1].seq > rows[2].seq
    assert rows[1].task.listed is False


async def test_list_tasks_filters_by_client_and_status_and_pages(
    journal: Journal,
) -> None:
    done = await submit_and_claim(journal, new_task(ALICE))
    await complete(journal, done)
    queued = [new_task(ALICE, created_at=T0 + n) for n in range(3)]
    for new in queued:
        await journal.submit(new)
    await journal.submit(new_task(BOB))
    alice_working = await journal.list_tasks(
        owner_id=ALICE, statuses=[TaskStatus.WORKING]
    )
    assert [r.task.task_id for r in alice_working] == [
        n.task_id for n in reversed(queued)
    ]
    both = await journal.list_tasks(
        owner_id=ALICE, statuses=[TaskStatus.WORKING, TaskStatus.COMPLETED]
    )
    assert len(both) == 4
    assert both[-1].phase == "done"
    page = await journal.list_tasks(owner_id=ALICE, limit=2)
    rest = await journal.list_tasks(owner_id=ALICE, before_seq=page[-1].seq)
    assert [r.task.task_id for r in page + rest] == [r.task.task_id for r in both]
    assert await journal.list_tasks(statuses=[TaskStatus.CANCELLED]) == []


async def test_list_tasks_names_the_running_attempt_and_its_holder(
    journal: Journal, other: Journal
) -> None:
    claimed = await submit_and_claim(journal)
    (row,) = await other.list_tasks()
    assert (row.phase, row.attempts, row.holder) == ("running", 1, HOLDER)
    await complete(journal, claimed)
    (row,) = await other.list_tasks()
    assert (row.phase, row.holder, row.task.status) == (
        "done",
        None,
        TaskStatus.COMPLETED,
    )


async def test_retry_queues_a_failed_task_as_a_new_attempt(
    journal: Journal, other: Journal
) -> None:
    task_id = await fail(journal)
    retried = await other.retry(
        task_id, "Retried by an operator", "operator", T0 + 5, by=OPERATOR
    )
    assert retried is not None
    assert retried.status is TaskStatus.WORKING
    assert retried.status_message == "Retried by an operator"
    got = await journal.get(task_id, outcome=True)
    assert got is not None
    assert (got.status, got.outcome, got.tool_error) == (TaskStatus.WORKING, None, None)
    assert got.queued_ahead == 0
    (load,) = await journal.load(ALICE)
    assert (load.queued, load.unfinished) == (1, 1)
    # Steps are kept: the new attempt replays them.
    assert await journal.steps(task_id) == {"step:a-1": {"done": 1}}
    (again,) = await journal.claim(OTHER_HOLDER, T0 + 5 + LEASE, 1, T0 + 5)
    assert (again.task_id, again.attempt) == (task_id, 2)
    last = (await journal.events(task_id))[-2]  # before the claim
    assert (last.kind, last.status, last.reason) == (
        ChangeKind.STATUS,
        TaskStatus.WORKING,
        "operator",
    )


async def test_retry_can_forget_recorded_steps(journal: Journal) -> None:
    task_id = await fail(journal)
    assert await journal.retry(
        task_id, "again", "operator", T0 + 5, forget_steps=True, by=OPERATOR
    )
    assert await journal.steps(task_id) == {}


async def test_retry_refuses_tasks_that_did_not_fail(journal: Journal) -> None:
    done = await submit_and_claim(journal)
    await complete(journal, done)
    queued = new_task()
    await journal.submit(queued)
    assert (
        await journal.retry(done.task_id, "again", "operator", T0 + 5, by=OPERATOR)
        is None
    )
    assert (
        await journal.retry(queued.task_id, "again", "operator", T0 + 5, by=OPERATOR)
        is None
    )
    assert (
        await journal.retry(queued.task_id, "x", "operator", T0 + 5, by=OPERATOR)
        is None
    )
    unknown = new_task().task_id
    assert (
        await journal.retry(unknown, "again", "operator", T0 + 5, by=OPERATOR) is None
    )
    got = await journal.get(done.task_id)
    assert got is not None
    assert got.status is TaskStatus.COMPLETED


async def test_of_two_processes_retrying_one_task_exactly_one_succeeds(
    journal: Journal, other: Journal
) -> None:
    task_id = await fail(journal)
    results = [
        await journal.retry(task_id, "a", "operator", T0 + 5, by=OPERATOR),
        await other.retry(task_id, "b", "operator", T0 + 5, by=OPERATOR),
    ]
    assert sum(r is not None for r in results) == 1
    (load,) = await journal.load(ALICE)
    assert load.queued == 1


async def test_the_oldest_queued_time_is_the_first_queued_tasks_creation(
    journal: Journal,
) -> None:
    tasks = [new_task(ALICE, created_at=T0 + n) for n in range(3)]
    for new in tasks:
        await journal.submit(new)
    (claimed,) = await journal.claim(HOLDER, T0 + LEASE, 1, T0 + 10)
    (load,) = await journal.load(ALICE)
    assert load.oldest_queued_at == T0 + 1
    await journal.cancel(tasks[1].task_id, "stop", "test", T0 + 11, by=OPERATOR)
    (load,) = await journal.load(ALICE)
    assert load.oldest_queued_at == T0 + 2
    assert claimed.created_at == T0


async def test_commit_observers_hear_each_commit_of_their_process(
    journal: Journal, other: Journal
) -> None:
    heard: list[tuple[float, int]] = []
    heard_other: list[tuple[float, int]] = []
    journal.observe_commits(lambda seconds, writes: heard.append((seconds, writes)))
    other.observe_commits(lambda seconds, writes: heard_other.append((seconds, writes)))
    await journal.submit(new_task())
    assert len(heard) >= 1
    assert all(seconds >= 0 and writes >= 1 for seconds, writes in heard)
    assert sum(writes for _, writes in heard) >= 1
    assert heard_other == []
