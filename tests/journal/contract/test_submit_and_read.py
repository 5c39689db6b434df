"""Contract: submitting tasks and reading them back, backlog bounds, limits, loads."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcp_tasks._exceptions import CapacityError
from mcp_tasks._model import OwnerId, TaskId, TaskStatus
from mcp_tasks.journal import ChangeKind, Journal

from ..conftest import Backend
from .support import ACTOR, ALICE, BOB, HOLDER, LEASE, T0, complete, new_task

# Arbitrary JSON values, as tool arguments and results carry them.
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)
JSON_OBJECTS = st.dictionaries(st.text(), JSON_VALUES, max_size=5)


async def test_the_journal_names_its_location_and_is_ready(journal: Journal) -> None:
    assert journal.location
    await journal.check()


async def test_get_returns_every_field_submit_stored(journal: Journal) -> None:
    new = new_task(status_message="queued up", ttl_seconds=120.0, listed=False)
    submitted = await journal.submit(new)
    got = await journal.get(new.task_id)
    assert got is not None
    assert got.task_id == new.task_id
    assert got.owner_id == ALICE
    assert got.tool_name == "echo"
    assert got.status is TaskStatus.WORKING
    assert got.status_message == "queued up"
    assert got.created_at == got.last_updated_at == datetime.fromtimestamp(T0, UTC)
    assert got.ttl_seconds == 120.0
    assert got.poll_interval_seconds == 1.0
    assert got.listed is False
    assert got.outcome is None
    assert got.tool_error is None
    assert got.queued_ahead == 0
    assert submitted.task_id == got.task_id
    assert submitted.status is got.status


async def test_times_come_back_as_aware_utc_datetimes(journal: Journal) -> None:
    new = new_task(created_at=T0 + 0.25)
    await journal.submit(new)
    got = await journal.get(new.task_id)
    assert got is not None
    assert got.created_at.tzinfo is not None
    assert got.created_at.timestamp() == pytest.approx(T0 + 0.25)


async def test_unlimited_retention_round_trips_as_none(journal: Journal) -> None:
    new = new_task(ttl_seconds=None)
    await journal.submit(new)
    got = await journal.get(new.task_id)
    assert got is not None
    assert got.ttl_seconds is None


async def test_get_of_an_unknown_task_is_none(journal: Journal) -> None:
    assert await journal.get(TaskId("no-such-task")) is None
    assert await journal.request_meta(TaskId("no-such-task")) == {}


async def test_a_queued_task_knows_how_many_of_its_clients_tasks_are_ahead(
    journal: Journal,
) -> None:
    first, second, third = new_task(), new_task(), new_task()
    others = new_task(BOB)
    for new in (first, others, second, third):
        await journal.submit(new)
    aheads: list[int | None] = []
    for new in (first, second, third, others):
        got = await journal.get(new.task_id)
        assert got is not None
        aheads.append(got.queued_ahead)
    assert aheads == [0, 1, 2, 0]
    await journal.claim(HOLDER, T0 + LEASE, 1, T0)  # alice's first
    got = await journal.get(first.task_id)
    assert got is not None
    assert got.queued_ahead is None
    got = await journal.get(third.task_id)
    assert got is not None
    assert got.queued_ahead == 1


async def test_list_owned_pages_through_one_owners_listed_tasks_in_order(
    journal: Journal,
) -> None:
    mine = [new_task() for _ in range(5)]
    await journal.submit(new_task(BOB))
    await journal.submit(new_task(listed=False))
    for new in mine:
        await journal.submit(new)
    first = await journal.list_owned(ALICE, 0, 3)
    assert [t.task_id for _, t in first] == [n.task_id for n in mine[:3]]
    rest = await journal.list_owned(ALICE, first[-1][0], 10)
    assert [t.task_id for _, t in rest] == [n.task_id for n in mine[3:]]
    assert await journal.list_owned(ALICE, rest[-1][0], 10) == []


async def test_list_owned_shows_the_current_state(journal: Journal) -> None:
    new = new_task()
    await journal.submit(new)
    await journal.cancel(new.task_id, "stop", "test", T0 + 1, by=ACTOR)
    ((_, listed),) = await journal.list_owned(ALICE, 0, 10)
    assert listed.status is TaskStatus.CANCELLED


async def test_submit_journals_one_status_change(journal: Journal) -> None:
    new = new_task(status_message="hello")
    await journal.submit(new)
    (event,) = await journal.events(new.task_id)
    assert event.kind is ChangeKind.STATUS
    assert event.status is TaskStatus.WORKING
    assert event.status_message == "hello"
    assert event.reason == "submitted"
    assert event.at == T0


@settings(
    deadline=None,
    max_examples=25,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(arguments=JSON_OBJECTS, meta=JSON_OBJECTS)
async def test_arbitrary_json_arguments_and_meta_round_trip(
    journal: Journal, arguments: dict[str, Any], meta: dict[str, Any]
) -> None:
    new = new_task(arguments=arguments, request_meta=meta)
    await journal.submit(new)
    assert await journal.request_meta(new.task_id) == meta
    claimed = await journal.claim(HOLDER, T0 + LEASE, 1, T0)
    assert [(c.arguments, c.request_meta) for c in claimed] == [(arguments, meta)]
    await complete(journal, claimed[0])  # the same journal serves every example


# ------------------------------------------------------------------- backlog


async def test_a_submit_over_the_backlog_is_refused_and_stores_nothing(
    journal: Journal,
) -> None:
    for _ in range(3):
        await journal.submit(new_task(backlog=3))
    refused = new_task(backlog=3)
    with pytest.raises(CapacityError) as caught:
        await journal.submit(refused)
    assert caught.value.owner_id == ALICE
    assert caught.value.limit == 3
    assert await journal.get(refused.task_id) is None
    await journal.submit(new_task(BOB, backlog=3))  # another client is not affected


async def test_finished_tasks_leave_the_backlog(journal: Journal) -> None:
    first = new_task(backlog=1)
    await journal.submit(first)
    with pytest.raises(CapacityError):
        await journal.submit(new_task(backlog=1))
    await journal.cancel(first.task_id, "stop", "test", T0 + 1, by=ACTOR)
    await journal.submit(new_task(backlog=1))


async def test_settled_hears_each_submit_outcome(journal: Journal) -> None:
    heard: list[BaseException | None] = []
    await journal.submit(new_task(backlog=1), heard.append)
    with pytest.raises(CapacityError):
        await journal.submit(new_task(backlog=1), heard.append)
    assert heard[0] is None
    assert isinstance(heard[1], CapacityError)


async def test_concurrent_submits_on_two_journals_cannot_over_admit(
    journal: Journal, other: Journal
) -> None:
    accepted: list[TaskId] = []
    refused = 0

    async def submit(target: Journal) -> None:
        nonlocal refused
        new = new_task(backlog=5)
        try:
            await target.submit(new)
        except CapacityError:
            refused += 1
        else:
            accepted.append(new.task_id)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for n in range(40):
                tg.start_soon(submit, journal if n % 2 else other)
    assert len(accepted) == 5
    assert refused == 35
    (load,) = await journal.load(ALICE)
    assert load.queued == 5


# --------------------------------------------------------- limits and load


async def test_load_counts_each_clients_tasks_by_bucket(journal: Journal) -> None:
    queued = [new_task(created_at=T0 + n) for n in range(3)]
    for new in queued:
        await journal.submit(new)
    await journal.submit(new_task(BOB, created_at=T0 + 5))
    (claimed,) = await journal.claim(HOLDER, T0 + LEASE, 1, T0)  # alice's oldest
    assert claimed.task_id == queued[0].task_id
    loads = {load.owner_id: load for load in await journal.load()}
    alice = loads[ALICE]
    assert (alice.queued, alice.running, alice.parked, alice.waiting) == (2, 1, 0, 0)
    assert alice.unfinished == 3
    assert alice.oldest_queued_at == T0 + 1
    assert (alice.concurrency, alice.backlog) == (4, 10_000)
    assert loads[BOB].queued == 1
    assert [load.owner_id for load in await journal.load(BOB)] == [BOB]


async def test_load_lists_only_clients_with_unfinished_work(journal: Journal) -> None:
    new = new_task()
    await journal.submit(new)
    await journal.cancel(new.task_id, "stop", "test", T0 + 1, by=ACTOR)
    assert await journal.load() == []
    (alice,) = await journal.load(ALICE)
    assert alice.unfinished == 0


async def test_sync_limits_sets_every_clients_limits(journal: Journal) -> None:
    await journal.submit(new_task(ALICE, concurrency=1, backlog=10))
    await journal.submit(new_task(BOB, concurrency=1, backlog=10))
    await journal.sync_limits(7, 70, {"bob": (2, 20)})
    loads = {load.owner_id: load for load in await journal.load()}
    assert (loads[ALICE].concurrency, loads[ALICE].backlog) == (7, 70)
    assert (loads[BOB].concurrency, loads[BOB].backlog) == (2, 20)


# ------------------------------------------------------------- persistence


async def test_tasks_survive_closing_and_reopening(
    backend: Backend, database: str
) -> None:
    new, other = new_task(), new_task(BOB)
    async with backend.open(database) as first:
        await first.submit(new)
        await first.submit(other)
        events = await first.events(new.task_id)
        secret = await first.secret("cursor")
    async with backend.open(database) as second:
        got = await second.get(new.task_id)
        assert got is not None
        assert got.status is TaskStatus.WORKING
        assert await second.events(new.task_id) == events
        assert await second.secret("cursor") == secret
        assert len(await second.claim(HOLDER, T0 + LEASE, 5, T0)) == 2


async def test_a_secret_is_stable_and_differs_between_databases(
    backend: Backend, journal: Journal
) -> None:
    secret = await journal.secret("cursor")
    assert len(secret) == 32
    assert await journal.secret("cursor") == secret
    assert await journal.secret("other") != secret
    async with backend.open(backend.new_database()) as elsewhere:
        assert await elsewhere.secret("cursor") != secret


async def test_a_secret_created_by_one_process_is_seen_by_another(
    journal: Journal, other: Journal
) -> None:
    assert await other.secret("cursor") == await journal.secret("cursor")


async def test_submits_through_one_journal_are_read_by_another(
    journal: Journal, other: Journal
) -> None:
    new = new_task(OwnerId("zed"))
    await journal.submit(new)
    got = await other.get(new.task_id)
    assert got is not None
    assert got.owner_id == "zed"
