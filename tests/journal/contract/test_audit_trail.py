"""Contract: a task's history says who cancelled or answered it, and when the server did."""

from __future__ import annotations

from typing import Any

from mcp_tasks._model import InputRequest, Outcome, TaskStatus
from mcp_tasks.journal import (
    BY_SERVER,
    ChangeKind,
    Journal,
    Recovery,
    TaskEvent,
    by_client,
    by_operator,
)

from .support import ALICE, T0, submit_and_claim

ANSWER: dict[str, Any] = {"action": "accept", "content": {}}


def asked(key: str, expires_at: float | None = None) -> InputRequest:
    params: dict[str, Any] = {"mode": "form", "message": f"{key}?"}
    params["requestedSchema"] = {}
    return InputRequest(key, "elicitation/create", params, expires_at=expires_at)


def who(events: list[TaskEvent], kind: ChangeKind) -> list[str | None]:
    return [event.by for event in events if event.kind is kind]


async def test_a_cancel_records_who_cancelled(journal: Journal) -> None:
    claimed = await submit_and_claim(journal)
    operator = by_operator("root@ops-1")
    await journal.cancel(claimed.task_id, "stop", "by request", T0 + 1, by=operator)
    events = await journal.events(claimed.task_id)
    cancelled = [e for e in events if e.status is TaskStatus.CANCELLED]
    assert [e.by for e in cancelled] == [operator]
    # Changes nobody made on purpose name no one.
    assert events[0].by is None


async def test_answers_record_who_answered_and_who_resumed_the_task(
    journal: Journal,
) -> None:
    claimed = await submit_and_claim(journal)
    await journal.ask(claimed.lease, [asked("a"), asked("b")], "?", T0 + 1)
    alice = by_client(ALICE)
    await journal.answer(claimed.task_id, {"a": ANSWER}, T0 + 2, by=alice)
    operator = by_operator("ops")
    await journal.answer(claimed.task_id, {"b": ANSWER}, T0 + 3, by=operator)
    events = await journal.events(claimed.task_id)
    assert who(events, ChangeKind.ANSWER) == [alice, operator]
    resumed = [e for e in events if e.reason == "input received"]
    assert [(e.kind, e.by) for e in resumed][-1] == (ChangeKind.STATUS, operator)


async def test_a_question_that_times_out_is_answered_by_the_server(
    journal: Journal,
) -> None:
    claimed = await submit_and_claim(journal)
    await journal.ask(claimed.lease, [asked("a", expires_at=T0 + 5)], "?", T0 + 1)
    assert await journal.expire_questions(T0 + 6, {"action": "timeout"}) == [
        claimed.task_id
    ]
    events = await journal.events(claimed.task_id)
    assert who(events, ChangeKind.ANSWER) == [BY_SERVER]
    assert events[-1].by == BY_SERVER  # and resumed it


async def test_a_recovery_is_the_servers(journal: Journal) -> None:
    claimed = await submit_and_claim(journal)
    (held,) = await journal.held_leases()
    assert await journal.recover(held, Recovery.FAIL, "gone", "lease expired", T0 + 60)
    events = await journal.events(claimed.task_id)
    assert events[-1].status is TaskStatus.FAILED
    assert events[-1].by == BY_SERVER


async def test_a_retry_records_who_retried(journal: Journal) -> None:
    claimed = await submit_and_claim(journal)
    failed = Outcome(error={"code": -32603, "message": "boom"})
    await journal.finish(
        claimed.lease, TaskStatus.FAILED, "failed", T0 + 1, outcome=failed
    )
    operator = by_operator("root@ops-1")
    assert await journal.retry(claimed.task_id, "again", "retry", T0 + 2, by=operator)
    events = await journal.events(claimed.task_id)
    assert events[-1].by == operator
