"""Contract: recovering tasks whose runs are gone, and purging finished ones."""

from __future__ import annotations

import anyio

from mcp_tasks._model import Outcome, TaskStatus
from mcp_tasks.journal import (
    TERMINAL_GRACE_SECONDS,
    ChangeKind,
    Journal,
    Recovery,
    Report,
)

from .support import (
    BOB,
    HOLDER,
    LEASE,
    OTHER_HOLDER,
    T0,
    complete,
    new_task,
    submit_and_claim,
)


async def test_held_leases_lists_running_tasks_and_filters_expired(
    journal: Journal,
) -> None:
    early = await submit_and_claim(journal, at=T0)
    late = await submit_and_claim(journal, at=T0 + 20)
    held = await journal.held_leases()
    assert [h.lease for h in held] == [early.lease, late.lease]
    assert [h.expires_at for h in held] == [T0 + LEASE, T0 + 20 + LEASE]
    expired = await journal.held_leases(expired_before=T0 + LEASE + 1)
    assert [h.lease for h in expired] == [early.lease]


async def test_resume_requeues_and_keeps_recorded_steps(journal: Journal) -> None:
    claimed = await submit_and_claim(journal)
    await journal.record_step(claimed.lease, "step:a-1", 1, T0)
    (held,) = await journal.held_leases()
    assert await journal.recover(held, Recovery.RESUME, "Resuming", "restart", T0 + 40)
    got = await journal.get(claimed.task_id)
    assert got is not None
    assert got.status_message == "Resuming"
    assert got.queued_ahead == 0
    assert await journal.steps(claimed.task_id) == {"step:a-1": 1}
    (again,) = await journal.claim(OTHER_HOLDER, T0 + 80, 1, T0 + 40)
    assert again.attempt == 2


async def test_restart_forgets_recorded_steps(journal: Journal) -> None:
    claimed = await submit_and_claim(journal)
    await journal.record_step(claimed.lease, "step:a-1", 1, T0)
    (held,) = await journal.held_leases()
    assert await journal.recover(
        held, Recovery.RESTART, "Restarting", "restart", T0 + 40
    )
    assert await journal.steps(claimed.task_id) == {}
    assert await journal.claimable()


async def test_fail_ends_the_task_with_an_internal_error(journal: Journal) -> None:
    claimed = await submit_and_claim(journal)
    (held,) = await journal.held_leases()
    assert await journal.recover(
        held, Recovery.FAIL, "It was interrupted", "restart", T0 + 40
    )
    got = await journal.get(claimed.task_id, outcome=True)
    assert got is not None
    assert got.status is TaskStatus.FAILED
    assert got.status_message == "It was interrupted"
    assert got.outcome == Outcome(
        error={"code": -32603, "message": "It was interrupted"}
    )


async def test_recovery_of_a_lease_that_moved_on_does_nothing(journal: Journal) -> None:
    claimed = await submit_and_claim(journal)
    (held,) = await journal.held_leases()
    await complete(journal, claimed)
    assert not await journal.recover(held, Recovery.RESUME, "no", "restart", T0 + 40)
    got = await journal.get(claimed.task_id)
    assert got is not None
    assert got.status is TaskStatus.COMPLETED


async def test_of_two_processes_recovering_one_task_exactly_one_succeeds(
    journal: Journal, other: Journal
) -> None:
    claimed = await submit_and_claim(journal)
    (held,) = await journal.held_leases()
    outcomes: list[bool] = []

    async def recover(target: Journal) -> None:
        outcomes.append(
            await target.recover(held, Recovery.RESUME, "r", "gone", T0 + 40)
        )

    async with anyio.create_task_group() as tg:
        tg.start_soon(recover, journal)
        tg.start_soon(recover, other)
    assert sorted(outcomes) == [False, True]
    events = [e for e in await journal.events(claimed.task_id) if e.reason == "gone"]
    assert len(events) == 1
    assert events[0].kind is ChangeKind.PHASE


# ----------------------------------------------------------------- retention


async def test_purge_deletes_only_finished_tasks_past_their_expiry(
    journal: Journal,
) -> None:
    short = await submit_and_claim(journal, new_task(ttl_seconds=10.0))
    await journal.record_step(short.lease, "step:a-1", 1, T0)
    await complete(journal, short, at=T0 + 1)
    unlimited = await submit_and_claim(journal, new_task(BOB, ttl_seconds=None))
    await complete(journal, unlimited, at=T0 + 1)
    waiting = new_task(ttl_seconds=10.0)
    await journal.submit(waiting)
    keep_until = T0 + 1 + TERMINAL_GRACE_SECONDS
    assert await journal.purge_expired(keep_until - 1, 0) == []
    assert await journal.purge_expired(keep_until, 0) == [short.task_id]
    assert await journal.get(short.task_id) is None
    assert await journal.events(short.task_id) == []
    assert await journal.steps(short.task_id) == {}
    assert await journal.get(unlimited.task_id) is not None
    assert await journal.get(waiting.task_id) is not None  # unfinished: never purged


async def test_a_task_whose_ttl_ran_out_while_running_stays_for_the_grace(
    journal: Journal,
) -> None:
    claimed = await submit_and_claim(journal, new_task(ttl_seconds=5.0))
    done = await complete(journal, claimed, at=T0 + 100)
    assert done is not None
    assert done.ttl_seconds == 100 + TERMINAL_GRACE_SECONDS  # the reported ttl grows
    assert await journal.purge_expired(T0 + 100 + TERMINAL_GRACE_SECONDS - 1, 0) == []
    assert await journal.purge_expired(T0 + 100 + TERMINAL_GRACE_SECONDS, 0) == [
        claimed.task_id
    ]


async def test_a_task_finishing_well_within_its_ttl_keeps_its_ttl(
    journal: Journal,
) -> None:
    claimed = await submit_and_claim(journal, new_task(ttl_seconds=3600.0))
    done = await complete(journal, claimed, at=T0 + 1)
    assert done is not None
    assert done.ttl_seconds == 3600.0


async def test_purge_drops_old_progress_and_log_changes_but_not_history(
    journal: Journal,
) -> None:
    claimed = await submit_and_claim(journal, new_task(ttl_seconds=None))
    await journal.report(claimed.lease, T0 + 1, [Report("old")])
    await journal.log(claimed.lease, "info", "old", T0 + 1)
    await journal.report(claimed.lease, T0 + 100, [Report("new")])
    await journal.purge_expired(T0 + 100, feed_before=T0 + 50)
    kinds = [(e.kind, e.at) for e in await journal.events(claimed.task_id)]
    assert kinds == [
        (ChangeKind.STATUS, T0),
        (ChangeKind.PHASE, T0),
        (ChangeKind.PROGRESS, T0 + 100),
    ]
    await journal.claim(HOLDER, T0 + LEASE, 1, T0)  # nothing else changed
