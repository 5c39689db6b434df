"""Contract: questions (ask, answer, deadlines) and timers (park, wake, next due)."""

from __future__ import annotations

from typing import Any

import anyio

from mcp_tasks._model import InputRequest, TaskId, TaskStatus
from mcp_tasks.journal import ChangeKind, Journal

from .support import ACTOR, ALICE, BOB, HOLDER, LEASE, T0, new_task, submit_and_claim

TIMEOUT = {"action": "timeout"}


def question(key: str, expires_at: float | None = None) -> InputRequest:
    params: dict[str, Any] = {"mode": "form", "message": f"{key}?"}
    params["requestedSchema"] = {}
    return InputRequest(key, "elicitation/create", params, expires_at=expires_at)


async def test_ask_stores_the_questions_and_waits_for_input(journal: Journal) -> None:
    claimed = await submit_and_claim(journal)
    asked = await journal.ask(
        claimed.lease, [question("a"), question("b", T0 + 60)], "a?", T0 + 1
    )
    assert asked is not None
    assert asked.status is TaskStatus.INPUT_REQUIRED
    assert asked.status_message == "a?"
    stored = await journal.input_requests(claimed.task_id)
    assert [(r.key, r.method, r.is_open, r.expires_at) for r in stored] == [
        ("a", "elicitation/create", True, None),
        ("b", "elicitation/create", True, T0 + 60),
    ]
    assert stored[0].params == {"mode": "form", "message": "a?", "requestedSchema": {}}
    assert not await journal.claimable()
    assert await journal.held_leases() == []  # a waiting task holds no lease
    assert await journal.awaiting_input(ALICE, 10) == [claimed.task_id]
    assert await journal.awaiting_input(BOB, 10) == []
    (load,) = await journal.load(ALICE)
    assert (load.running, load.waiting) == (0, 1)


async def test_answers_are_recorded_once_and_the_last_one_resumes(
    journal: Journal,
) -> None:
    claimed = await submit_and_claim(journal)
    await journal.ask(claimed.lease, [question("a"), question("b")], "?", T0 + 1)
    one = {"action": "accept", "content": {"x": 1}}
    accepted, resumed = await journal.answer(
        claimed.task_id, {"a": one, "zzz": one}, T0 + 2, by=ACTOR
    )
    assert (accepted, resumed) == (["a"], None)
    accepted, resumed = await journal.answer(
        claimed.task_id, {"a": {"action": "decline"}}, T0 + 3, by=ACTOR
    )
    assert (accepted, resumed) == ([], None)  # answered already: the first answer stays
    accepted, resumed = await journal.answer(
        claimed.task_id, {"b": one}, T0 + 4, by=ACTOR
    )
    assert accepted == ["b"]
    assert resumed is not None
    assert resumed.status is TaskStatus.WORKING
    assert resumed.status_message == "Input received; resuming"
    stored = {r.key: r.response for r in await journal.input_requests(claimed.task_id)}
    assert stored == {"a": one, "b": one}
    (again,) = await journal.claim(HOLDER, T0 + 40, 1, T0 + 5)
    assert again.task_id == claimed.task_id
    assert again.attempt == 2
    kinds = [(e.kind, e.data) for e in await journal.events(claimed.task_id)]
    assert (ChangeKind.ANSWER, {"key": "a", "by": ACTOR}) in kinds
    assert (ChangeKind.ANSWER, {"key": "b", "by": ACTOR}) in kinds


async def test_answers_for_an_unknown_or_finished_task_record_nothing(
    journal: Journal,
) -> None:
    assert await journal.answer(TaskId("nope"), {"a": {}}, T0, by=ACTOR) == ([], None)
    claimed = await submit_and_claim(journal)
    await journal.ask(claimed.lease, [question("a")], "?", T0 + 1)
    await journal.cancel(claimed.task_id, "stop", "test", T0 + 2, by=ACTOR)
    _accepted, resumed = await journal.answer(
        claimed.task_id, {"a": TIMEOUT}, T0 + 3, by=ACTOR
    )
    assert resumed is None
    got = await journal.get(claimed.task_id)
    assert got is not None
    assert got.status is TaskStatus.CANCELLED


async def test_overdue_questions_time_out_and_resume_their_task(
    journal: Journal,
) -> None:
    first = await submit_and_claim(journal, new_task(ALICE))
    await journal.ask(
        first.lease, [question("a", T0 + 10), question("b", T0 + 20)], "?", T0
    )
    second = await submit_and_claim(journal, new_task(BOB))
    await journal.ask(second.lease, [question("c", T0 + 10)], "?", T0)
    assert await journal.next_due() == T0 + 10
    assert await journal.expire_questions(T0 + 9, TIMEOUT) == []
    assert await journal.expire_questions(T0 + 10, TIMEOUT) == [second.task_id]
    assert await journal.next_due() == T0 + 20
    assert await journal.expire_questions(T0 + 25, TIMEOUT) == [first.task_id]
    answers = {r.key: r.response for r in await journal.input_requests(first.task_id)}
    assert answers == {"a": TIMEOUT, "b": TIMEOUT}
    assert await journal.next_due() is None


async def test_next_due_is_the_earliest_wake_or_deadline(journal: Journal) -> None:
    assert await journal.next_due() is None
    parked = await submit_and_claim(journal, new_task(ALICE))
    await journal.park(parked.lease, T0 + 30, "later", "retry", T0)
    assert await journal.next_due() == T0 + 30
    asking = await submit_and_claim(journal, new_task(BOB))
    await journal.ask(asking.lease, [question("q", T0 + 15)], "?", T0)
    assert await journal.next_due() == T0 + 15


async def test_wake_due_moves_each_due_task_once_across_processes(
    journal: Journal, other: Journal
) -> None:
    for n in range(6):
        claimed = await submit_and_claim(journal, new_task(ALICE, concurrency=10))
        await journal.park(claimed.lease, T0 + n, "later", "retry", T0)
    woken: list[int] = []

    async def wake(target: Journal) -> None:
        woken.append(await target.wake_due(T0 + 3))

    async with anyio.create_task_group() as tg:
        tg.start_soon(wake, journal)
        tg.start_soon(wake, other)
    assert sum(woken) == 4  # parked until T0..T0+3
    assert len(await journal.claim(HOLDER, T0 + LEASE, 10, T0 + 3)) == 4
    assert await journal.next_due() == T0 + 4
