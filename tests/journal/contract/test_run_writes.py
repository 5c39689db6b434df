"""Contract: every write a run makes is fenced by its lease.

A write under the current lease applies; under any other (an older attempt, a
holder whose lease was taken over, a task cancelled meanwhile) it is refused
with a falsy return and changes nothing.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from mcp_tasks._model import InputRequest, Outcome, TaskStatus
from mcp_tasks.journal import ChangeKind, Claimed, Journal, Lease, Recovery, Report

from .support import (
    ACTOR,
    ALICE,
    HOLDER,
    LEASE,
    OTHER_HOLDER,
    T0,
    complete,
    new_task,
    submit_and_claim,
)

RESULT = {"content": [{"type": "text", "text": "done"}], "isError": False}


def stale(claimed: Claimed) -> list[Lease]:
    """Leases that are not the current one: another holder, another attempt."""
    lease = claimed.lease
    return [
        replace(lease, holder=OTHER_HOLDER),
        replace(lease, attempt=lease.attempt + 1),
        replace(lease, attempt=lease.attempt - 1),
    ]


async def test_finish_stores_the_outcome_under_the_current_lease(
    journal: Journal,
) -> None:
    claimed = await submit_and_claim(journal)
    done = await journal.finish(
        claimed.lease,
        TaskStatus.COMPLETED,
        "tool returned",
        T0 + 2,
        outcome=Outcome(RESULT),
    )
    assert done is not None
    assert done.status is TaskStatus.COMPLETED
    assert done.tool_error is None
    got = await journal.get(claimed.task_id, outcome=True)
    assert got is not None
    assert got.outcome == Outcome(result=RESULT)
    assert got.last_updated_at.timestamp() == T0 + 2
    plain = await journal.get(claimed.task_id)
    assert plain is not None
    assert plain.outcome is None
    assert not await journal.claimable()


async def test_a_tool_error_result_is_remembered_as_its_text(journal: Journal) -> None:
    claimed = await submit_and_claim(journal)
    result = {"content": [{"type": "text", "text": "bad input"}], "isError": True}
    done = await journal.finish(
        claimed.lease,
        TaskStatus.COMPLETED,
        "tool returned",
        T0 + 1,
        outcome=Outcome(result),
    )
    assert done is not None
    assert done.tool_error == "bad input"


async def test_finish_failed_stores_the_error_and_message(journal: Journal) -> None:
    claimed = await submit_and_claim(journal)
    error = {"code": -32603, "message": "boom", "data": {"x": [1, None]}}
    done = await journal.finish(
        claimed.lease, TaskStatus.FAILED, "tool returned", T0 + 1,
        message="boom", outcome=Outcome(error=error),
    )  # fmt: skip
    assert done is not None
    assert done.status_message == "boom"
    got = await journal.get(claimed.task_id, outcome=True)
    assert got is not None
    assert got.outcome == Outcome(error=error)


async def test_finish_refuses_to_cancel(journal: Journal) -> None:
    claimed = await submit_and_claim(journal)
    with pytest.raises(ValueError, match="finish"):
        await journal.finish(claimed.lease, TaskStatus.CANCELLED, "no", T0)


async def test_every_run_write_under_a_stale_lease_is_refused(journal: Journal) -> None:
    claimed = await submit_and_claim(journal)
    question = InputRequest("q", "elicitation/create", {"message": "?"})
    for lease in stale(claimed):
        assert await journal.finish(lease, TaskStatus.COMPLETED, "late", T0 + 1) is None
        assert not await journal.park(lease, T0 + 9, "later", "retry", T0 + 1)
        assert await journal.ask(lease, [question], "asking", T0 + 1) is None
        assert not await journal.record_step(lease, "step:a-1", 1, T0 + 1)
        assert not await journal.report(lease, T0 + 1, [Report("late", 1)])
        assert not await journal.log(lease, "info", "late", T0 + 1)
        assert not await journal.release(lease, "late", "late", T0 + 1)
        assert await journal.renew([lease], T0 + 100) == [lease]
    got = await journal.get(claimed.task_id)
    assert got is not None
    assert got.status is TaskStatus.WORKING
    assert got.status_message is None
    assert got.progress is None
    assert await journal.steps(claimed.task_id) == {}
    assert await journal.input_requests(claimed.task_id) == []
    assert [e.kind for e in await journal.events(claimed.task_id)] == [
        ChangeKind.STATUS,
        ChangeKind.PHASE,  # claimed
    ]
    assert await complete(journal, claimed) is not None  # the current lease still works


async def test_a_cancelled_task_refuses_its_runs_writes_but_keeps_its_slot(
    journal: Journal,
) -> None:
    claimed = await submit_and_claim(journal, new_task(concurrency=1))
    await journal.submit(new_task(concurrency=1))
    cancelled = await journal.cancel(
        claimed.task_id, "stop", "by request", T0 + 1, by=ACTOR
    )
    assert cancelled is not None
    assert cancelled.status is TaskStatus.CANCELLED  # what every client sees now
    assert await complete(journal, claimed) is None
    assert not await journal.record_step(claimed.lease, "step:a-1", 1, T0 + 2)
    assert not await journal.report(claimed.lease, T0 + 2, [Report("late")])
    assert (
        await journal.cancel(claimed.task_id, "again", "by request", T0 + 3, by=ACTOR)
        is None
    )
    # Until its run has stopped, the task holds the client's only slot: its
    # lease is still renewed (the run is told to stop), and nothing is claimed.
    assert await journal.renew([claimed.lease], T0 + 60) == [claimed.lease]
    (held,) = await journal.held_leases()
    assert held.expires_at == T0 + 60
    assert await journal.claim(HOLDER, T0 + LEASE, 5, T0 + 3) == []
    (load,) = await journal.load(ALICE)
    assert (load.running, load.queued) == (1, 1)
    assert await journal.stopped(claimed.lease, T0 + 4)
    assert not await journal.stopped(claimed.lease, T0 + 5)  # once
    assert await journal.held_leases() == []
    assert len(await journal.claim(HOLDER, T0 + LEASE, 5, T0 + 5)) == 1
    got = await journal.get(claimed.task_id)
    assert got is not None
    assert got.status is TaskStatus.CANCELLED


async def test_stopped_is_only_for_cancelled_runs(journal: Journal) -> None:
    claimed = await submit_and_claim(journal)
    assert not await journal.stopped(claimed.lease, T0 + 1)
    assert await complete(journal, claimed) is not None


async def test_the_run_of_a_cancelled_task_that_is_gone_just_stops(
    journal: Journal,
) -> None:
    claimed = await submit_and_claim(journal)
    await journal.cancel(claimed.task_id, "stop", "by request", T0 + 1, by=ACTOR)
    (held,) = await journal.held_leases(expired_before=T0 + LEASE + 1)
    assert await journal.recover(held, Recovery.RESUME, "r", "gone", T0 + 40)
    got = await journal.get(claimed.task_id)
    assert got is not None
    assert got.status is TaskStatus.CANCELLED  # not requeued
    assert await journal.held_leases() == []
    assert not await journal.claimable()


async def test_a_lease_taken_over_by_another_process_fences_the_old_run(
    journal: Journal, other: Journal
) -> None:
    claimed = await submit_and_claim(journal, at=T0)
    (held,) = await other.held_leases(expired_before=T0 + LEASE + 1)
    assert held.lease == claimed.lease
    assert await other.recover(
        held, Recovery.RESUME, "resuming", "lease ran out", T0 + 31
    )
    (taken,) = await other.claim(OTHER_HOLDER, T0 + 61, 1, T0 + 31)
    assert taken.task_id == claimed.task_id
    assert taken.attempt == claimed.attempt + 1
    # The first process wakes up (GC pause, SIGSTOP) and tries to go on.
    assert not await journal.record_step(claimed.lease, "step:a-1", "late", T0 + 32)
    assert await complete(journal, claimed) is None
    assert await journal.renew([claimed.lease], T0 + 90) == [claimed.lease]
    assert await complete(other, taken) is not None


async def test_park_sets_the_task_aside_until_its_time(journal: Journal) -> None:
    claimed = await submit_and_claim(journal)
    assert await journal.park(
        claimed.lease, T0 + 50, "Retrying in 50 s", "retry", T0 + 1, retry=True
    )
    got = await journal.get(claimed.task_id)
    assert got is not None
    assert got.status is TaskStatus.WORKING
    assert got.status_message == "Retrying in 50 s"
    assert not await journal.claimable()
    assert await journal.next_due() == T0 + 50
    assert await journal.wake_due(T0 + 49) == 0
    assert await journal.wake_due(T0 + 50) == 1
    (again,) = await journal.claim(HOLDER, T0 + 90, 1, T0 + 50)
    assert again.attempt == 2
    assert again.retries == 1


async def test_a_budget_wait_is_no_retry(journal: Journal) -> None:
    claimed = await submit_and_claim(journal)
    assert await journal.park(claimed.lease, T0 + 5, "waiting", "budget", T0 + 1)
    await journal.wake_due(T0 + 5)
    (again,) = await journal.claim(HOLDER, T0 + 35, 1, T0 + 5)
    assert again.retries == 0


async def test_steps_are_recorded_once_per_key(journal: Journal) -> None:
    claimed = await submit_and_claim(journal)
    assert await journal.record_step(claimed.lease, "step:a-1", {"v": 1}, T0 + 1)
    assert await journal.record_step(claimed.lease, "step:a-1", {"v": 2}, T0 + 2)
    assert await journal.record_step(claimed.lease, "step:b-1", [1, "x"], T0 + 3)
    assert await journal.steps(claimed.task_id) == {
        "step:a-1": {"v": 1},
        "step:b-1": [1, "x"],
    }


async def test_report_keeps_the_latest_message_and_progress(journal: Journal) -> None:
    claimed = await submit_and_claim(journal)
    assert await journal.report(
        claimed.lease, T0 + 1, [Report("0 of 10", 0, 10), Report("1 of 10", 1)]
    )
    assert await journal.report(claimed.lease, T0 + 2, [Report(progress=2)])
    got = await journal.get(claimed.task_id)
    assert got is not None
    assert (got.status_message, got.progress, got.progress_total) == ("1 of 10", 2, 10)
    reports = [
        e
        for e in await journal.events(claimed.task_id)
        if e.kind is ChangeKind.PROGRESS
    ]
    assert [(e.status_message, e.data) for e in reports] == [
        ("0 of 10", {"progress": 0, "total": 10}),
        ("1 of 10", {"progress": 1}),
        ("1 of 10", {"progress": 2}),
    ]


async def test_log_lines_go_to_the_change_feed(journal: Journal) -> None:
    claimed = await submit_and_claim(journal)
    assert await journal.log(claimed.lease, "warning", "careful", T0 + 1)
    (line,) = [
        e for e in await journal.events(claimed.task_id) if e.kind is ChangeKind.LOG
    ]
    assert line.data == {"level": "warning", "message": "careful"}


async def test_release_gives_the_task_back_to_the_queue(journal: Journal) -> None:
    claimed = await submit_and_claim(journal)
    assert await journal.release(claimed.lease, "Handed back", "shutdown", T0 + 1)
    got = await journal.get(claimed.task_id)
    assert got is not None
    assert got.status_message == "Handed back"
    assert got.queued_ahead == 0
    (again,) = await journal.claim(OTHER_HOLDER, T0 + 40, 1, T0 + 2)
    assert again.attempt == 2
    assert again.retries == 0


async def test_renew_extends_live_leases_and_names_the_runs_to_stop(
    journal: Journal,
) -> None:
    first = await submit_and_claim(journal)
    second = await submit_and_claim(journal)
    third = await submit_and_claim(journal)
    await journal.cancel(second.task_id, "stop", "test", T0 + 1, by=ACTOR)
    await complete(journal, third)
    lost = await journal.renew([first.lease, second.lease, third.lease], T0 + 500)
    assert lost == [second.lease, third.lease]
    held, _ = await journal.held_leases()  # the cancelled one stays until stopped
    assert held.lease == first.lease
    assert held.expires_at == T0 + 500
    assert held.owner_id == ALICE
    assert held.tool_name == "echo"
