"""Contract: the change feed, seen from every process, and shared budgets."""

from __future__ import annotations

import anyio
import pytest

from mcp_tasks._budgets import BudgetLimits
from mcp_tasks._exceptions import JournalError
from mcp_tasks._model import InputRequest, TaskStatus
from mcp_tasks.journal import ChangeKind, Journal, Report

from .support import ACTOR, ALICE, T0, complete, new_task, submit_and_claim


async def test_the_feed_starts_empty_and_grows_in_order(journal: Journal) -> None:
    start = await journal.feed_head()
    empty = await journal.changes(start, 10)
    assert empty.changes == []
    new = new_task()
    await journal.submit(new)
    page = await journal.changes(empty.cursor, 10)
    (submitted,) = page.changes
    assert (submitted.task_id, submitted.owner_id) == (new.task_id, ALICE)
    assert (submitted.kind, submitted.status) == (ChangeKind.STATUS, TaskStatus.WORKING)
    assert submitted.reason == "submitted"
    assert submitted.at == T0
    assert (await journal.changes(page.cursor, 10)).changes == []
    # The head is past everything committed: a follower starting there sees
    # only what comes next.
    head = await journal.feed_head()
    assert (await journal.changes(head, 10)).changes == []
    second = new_task()
    await journal.submit(second)
    assert [c.task_id for c in (await journal.changes(head, 10)).changes] == [
        second.task_id
    ]


async def test_pages_cover_the_feed_exactly_once(journal: Journal) -> None:
    start = await journal.feed_head()
    submitted = [new_task() for _ in range(7)]
    for new in submitted:
        await journal.submit(new)
    seen: list[str] = []
    cursor = start
    for _ in range(10):
        page = await journal.changes(cursor, 3)
        assert len(page.changes) <= 3
        seen += [c.task_id for c in page.changes]
        cursor = page.cursor
        if not page.changes:
            break
    assert seen == [new.task_id for new in submitted]


async def test_a_cursor_the_journal_never_gave_is_refused(journal: Journal) -> None:
    for bogus in ["", "-1", "not a cursor", "\u0661"]:
        with pytest.raises(JournalError):
            await journal.changes(bogus, 10)


async def test_each_operation_appears_in_the_feed_with_its_kind(
    journal: Journal,
) -> None:
    start = await journal.feed_head()
    claimed = await submit_and_claim(journal)
    await journal.report(claimed.lease, T0 + 1, [Report("half", 5, 10)])
    await journal.log(claimed.lease, "info", "hello", T0 + 2)
    question = InputRequest("q", "roots/list", {}, expires_at=T0 + 60)
    await journal.ask(claimed.lease, [question], "roots?", T0 + 3)
    await journal.answer(claimed.task_id, {"q": {"roots": []}}, T0 + 4, by=ACTOR)
    (again,) = await journal.claim("h/1/x", T0 + 40, 1, T0 + 5)
    await journal.park(again.lease, T0 + 9, "later", "retry", T0 + 6, retry=True)
    await journal.wake_due(T0 + 9)
    (third,) = await journal.claim("h/1/x", T0 + 40, 1, T0 + 9)
    await complete(journal, third, at=T0 + 10)
    changes = (await journal.changes(start, 100)).changes
    assert [(c.kind, c.status, c.reason) for c in changes] == [
        (ChangeKind.STATUS, TaskStatus.WORKING, "submitted"),
        (ChangeKind.PHASE, TaskStatus.WORKING, "claimed"),
        (ChangeKind.PROGRESS, TaskStatus.WORKING, "progress"),
        (ChangeKind.LOG, TaskStatus.WORKING, "log"),
        (ChangeKind.STATUS, TaskStatus.INPUT_REQUIRED, "input requested"),
        (ChangeKind.ANSWER, TaskStatus.INPUT_REQUIRED, "input received"),
        (ChangeKind.STATUS, TaskStatus.WORKING, "input received"),
        (ChangeKind.PHASE, TaskStatus.WORKING, "claimed"),
        (ChangeKind.PHASE, TaskStatus.WORKING, "retry"),
        (ChangeKind.PHASE, TaskStatus.WORKING, "wait over"),
        (ChangeKind.PHASE, TaskStatus.WORKING, "claimed"),
        (ChangeKind.STATUS, TaskStatus.COMPLETED, "test"),
    ]
    data = {c.reason: c.data for c in changes}
    assert data["progress"] == {"progress": 5, "total": 10}
    assert data["log"] == {"level": "info", "message": "hello"}
    assert data["input requested"] == {"keys": ["q"], "deadline": T0 + 60}
    assert data["retry"] == {"not_before": T0 + 9}
    assert changes[2].status_message == "half"
    assert (await journal.changes(start, 3)).changes == changes[:3]


async def test_a_change_made_through_one_journal_is_in_the_others_feed(
    journal: Journal, other: Journal
) -> None:
    head = await other.feed_head()
    new = new_task()
    await journal.submit(new)
    page = await other.changes(head, 10)
    (seen,) = page.changes
    assert seen.task_id == new.task_id
    # Cursors are the database's, not the instance's: one from either
    # instance reads the same feed through the other.
    assert (await journal.changes(head, 10)).changes == page.changes
    assert (await journal.changes(page.cursor, 10)).changes == []


async def test_on_commit_hears_this_process_commit(journal: Journal) -> None:
    committed = anyio.Event()
    journal.on_commit(committed.set)
    await journal.submit(new_task())
    with anyio.fail_after(5):
        await committed.wait()


# ------------------------------------------------------------------- budgets

LIMITS = BudgetLimits(requests_per_minute=60, tokens_per_minute=600)


async def test_a_budget_starts_full_and_says_how_long_to_wait(journal: Journal) -> None:
    assert await journal.take_budget("api", LIMITS, 60, 0, T0) == 0
    assert await journal.budget_wait("api", LIMITS, 1, 0, T0) == pytest.approx(1.0)
    assert await journal.take_budget("api", LIMITS, 2, 0, T0) == pytest.approx(2.0)
    # Nothing was taken by the refused call or the read: one second refills one.
    assert await journal.take_budget("api", LIMITS, 1, 0, T0 + 1) == 0
    assert await journal.take_budget("api", LIMITS, 0, 600, T0 + 1) == 0
    assert await journal.take_budget("api", LIMITS, 0, 10, T0 + 1) == pytest.approx(1.0)


async def test_a_budget_is_shared_by_every_process(
    journal: Journal, other: Journal
) -> None:
    taken: list[float] = []

    async def take(target: Journal) -> None:
        taken.append(await target.take_budget("api", LIMITS, 1, 0, T0))

    async with anyio.create_task_group() as tg:
        for n in range(80):
            tg.start_soon(take, journal if n % 2 else other)
    assert sum(1 for wait in taken if wait == 0) == 60
    assert await other.budget_wait("api", LIMITS, 1, 0, T0) > 0


async def test_a_request_burst_caps_what_a_bucket_holds(
    journal: Journal, other: Journal
) -> None:
    # 10 requests a second, at most 3 at once: a fresh bucket holds 3, not 600.
    limits = BudgetLimits(requests_per_minute=600, requests_burst=3)
    assert await journal.take_budget("requests:a", limits, 2, 0, T0) == 0
    assert await other.take_budget("requests:a", limits, 1, 0, T0) == 0
    assert await other.take_budget("requests:a", limits, 1, 0, T0) == pytest.approx(0.1)
    # An idle minute refills it to its burst only.
    assert await journal.take_budget("requests:a", limits, 3, 0, T0 + 60) == 0
    assert await journal.budget_wait(
        "requests:a", limits, 1, 0, T0 + 60
    ) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="capacity"):
        await journal.take_budget("requests:a", limits, 4, 0, T0 + 120)


async def test_asking_more_than_a_budget_can_hold_is_an_error(journal: Journal) -> None:
    with pytest.raises(ValueError, match="capacity"):
        await journal.take_budget("api", LIMITS, 61, 0, T0)


async def test_budget_left_is_what_a_take_would_find_in_every_process(
    journal: Journal, other: Journal
) -> None:
    assert await other.budget_left("fresh", LIMITS, T0) == {
        "requests": 60.0,
        "tokens": 600.0,
    }
    assert await journal.take_budget("api", LIMITS, 45, 100, T0) == 0
    left = await other.budget_left("api", LIMITS, T0)
    assert left == {"requests": pytest.approx(15.0), "tokens": pytest.approx(500.0)}
    later = await other.budget_left("api", LIMITS, T0 + 10)  # 10 s of refill
    assert later == {"requests": pytest.approx(25.0), "tokens": pytest.approx(600.0)}
    only_requests = BudgetLimits(requests_per_minute=60)
    assert set(await journal.budget_left("api", only_requests, T0)) == {"requests"}
    # Reading takes nothing.
    assert await journal.budget_left("api", LIMITS, T0) == left
