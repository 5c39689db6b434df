"""The journal contract, run against every journal factory, plus SQLite specifics.

`TestJournalContract` only uses the `Journal` protocol, so a second backend
joins by adding a parameter to the `open_journal` fixture. `TestSqliteJournal`
covers what only the SQLite journal has: group commit, schema versions, the
file itself.
"""

from __future__ import annotations

import itertools
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mcp_tasks.journal
from mcp_tasks._exceptions import JournalError, JournalSchemaError
from mcp_tasks._model import Outcome, OwnerId, Task, TaskId, TaskStatus
from mcp_tasks.journal import (
    TERMINAL_GRACE_SECONDS,
    Journal,
    NewTask,
    SqliteJournal,
    TaskEvent,
    Transition,
)

JournalOpener = Callable[[Path], AbstractAsyncContextManager[Journal]]

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
ALICE = OwnerId("alice")
BOB = OwnerId("bob")
TERMINAL = [TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED]
MIGRATIONS_DIR = Path(mcp_tasks.journal.__file__).parent / "sql" / "migrations"

_ids = itertools.count()


def new_task(
    owner: OwnerId = ALICE,
    *,
    created_at: float = T0,
    ttl_seconds: float | None = 3600.0,
    arguments: dict[str, Any] | None = None,
    request_meta: dict[str, Any] | None = None,
    listed: bool = True,
    status_message: str | None = None,
) -> NewTask:
    return NewTask(
        task_id=TaskId(f"task-{next(_ids)}"),
        owner_id=owner,
        tool_name="echo",
        arguments={"n": 1} if arguments is None else arguments,
        created_at=created_at,
        ttl_seconds=ttl_seconds,
        poll_interval_seconds=1.0,
        status_message=status_message,
        listed=listed,
        request_meta={} if request_meta is None else request_meta,
    )


def move(
    task_id: TaskId,
    status: TaskStatus,
    at: float,
    *,
    reason: str = "test",
    outcome: Outcome | None = None,
    message: str | None = None,
    phase: str | None = None,
) -> Transition:
    return Transition(
        task_id,
        status,
        reason,
        at,
        status_message=message,
        outcome=outcome,
        phase=phase,
    )


def _open_sqlite(path: Path) -> AbstractAsyncContextManager[Journal]:
    return SqliteJournal.open(path)


@pytest.fixture(params=[pytest.param(_open_sqlite, id="sqlite")])
def open_journal(request: pytest.FixtureRequest) -> JournalOpener:
    """Opens a journal of one backend at a path; the contract suite's parameter."""
    return cast("JournalOpener", request.param)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "journal.db"


@pytest.fixture
async def journal(open_journal: JournalOpener, db_path: Path) -> AsyncIterator[Journal]:
    async with open_journal(db_path) as opened:
        yield opened


# Arbitrary JSON values, as tool arguments and results carry them.
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)
JSON_OBJECTS = st.dictionaries(st.text(), JSON_VALUES, max_size=5)


class TestJournalContract:
    """What every journal must do, through the `Journal` protocol only."""

    # ------------------------------------------------------ submit and get

    async def test_get_returns_every_field_submit_stored(
        self, journal: Journal
    ) -> None:
        new = new_task(created_at=T0 + 0.5, ttl_seconds=90.0, status_message="Queued")
        submitted = await journal.submit(new)
        created = datetime(2023, 11, 14, 22, 13, 20, 500_000, tzinfo=UTC)
        expected = Task(
            task_id=new.task_id,
            owner_id=ALICE,
            tool_name="echo",
            status=TaskStatus.WORKING,
            status_message="Queued",
            created_at=created,
            last_updated_at=created,
            ttl_seconds=90.0,
            poll_interval_seconds=1.0,
            outcome=None,
        )
        assert submitted == expected
        assert await journal.get(new.task_id) == expected

    async def test_times_come_back_as_aware_utc_datetimes(
        self, journal: Journal
    ) -> None:
        new = new_task()
        await journal.submit(new)
        got = await journal.get(new.task_id)
        assert got is not None
        for moment in (got.created_at, got.last_updated_at):
            assert moment.tzinfo is not None
            assert moment.utcoffset() == timedelta(0)
            assert moment.timestamp() == T0

    async def test_unlimited_retention_round_trips_as_none(
        self, journal: Journal
    ) -> None:
        new = new_task(ttl_seconds=None)
        await journal.submit(new)
        got = await journal.get(new.task_id)
        assert got is not None
        assert got.ttl_seconds is None

    async def test_get_of_an_unknown_task_is_none(self, journal: Journal) -> None:
        assert await journal.get(TaskId("no-such-task")) is None

    # ---------------------------------------------------- compare-and-set

    async def test_completing_a_working_task_stores_the_outcome(
        self, journal: Journal
    ) -> None:
        new = new_task()
        await journal.submit(new)
        result = {"content": [{"type": "text", "text": "done"}], "isError": False}
        done = await journal.transition(
            move(
                new.task_id,
                TaskStatus.COMPLETED,
                T0 + 5,
                outcome=Outcome(result=result),
                message="Done",
            )
        )
        assert done is not None
        assert done.status is TaskStatus.COMPLETED
        assert done.status_message == "Done"
        assert done.outcome == Outcome(result=result)
        assert done.last_updated_at == datetime.fromtimestamp(T0 + 5, UTC)
        assert done.created_at == datetime.fromtimestamp(T0, UTC)
        assert await journal.get(new.task_id) == done

    async def test_failing_a_task_stores_the_error(self, journal: Journal) -> None:
        new = new_task()
        await journal.submit(new)
        error = {"code": -32603, "message": "boom"}
        failed = await journal.transition(
            move(new.task_id, TaskStatus.FAILED, T0 + 1, outcome=Outcome(error=error))
        )
        assert failed is not None
        assert failed.outcome == Outcome(error=error)
        assert await journal.get(new.task_id) == failed

    async def test_a_completion_after_cancellation_is_refused_and_changes_nothing(
        self, journal: Journal
    ) -> None:
        new = new_task()
        await journal.submit(new)
        cancelled = await journal.transition(
            move(new.task_id, TaskStatus.CANCELLED, T0 + 1, message="Cancelled")
        )
        assert cancelled is not None
        events = await journal.events(new.task_id)
        late = await journal.transition(
            move(
                new.task_id,
                TaskStatus.COMPLETED,
                T0 + 2,
                outcome=Outcome(result={"content": []}),
            )
        )
        assert late is None
        assert await journal.get(new.task_id) == cancelled
        assert await journal.events(new.task_id) == events

    @pytest.mark.parametrize("terminal", TERMINAL)
    @pytest.mark.parametrize("target", list(TaskStatus))
    async def test_a_terminal_task_absorbs_every_transition(
        self, journal: Journal, terminal: TaskStatus, target: TaskStatus
    ) -> None:
        new = new_task()
        await journal.submit(new)
        outcome = Outcome(error={"code": 1, "message": "x"})
        finished = await journal.transition(
            move(new.task_id, terminal, T0 + 1, outcome=outcome)
        )
        assert finished is not None
        assert finished.status is terminal
        events = await journal.events(new.task_id)
        refused = await journal.transition(
            move(
                new.task_id, target, T0 + 2, outcome=Outcome(result={}), phase="queued"
            )
        )
        assert refused is None
        assert await journal.get(new.task_id) == finished
        assert await journal.events(new.task_id) == events

    async def test_an_input_required_task_can_resume_working(
        self, journal: Journal
    ) -> None:
        new = new_task()
        await journal.submit(new)
        asked = await journal.transition(
            move(new.task_id, TaskStatus.INPUT_REQUIRED, T0 + 1, message="Need input")
        )
        assert asked is not None
        assert asked.status is TaskStatus.INPUT_REQUIRED
        assert asked.status_message == "Need input"
        resumed = await journal.transition(
            move(new.task_id, TaskStatus.WORKING, T0 + 2, message="Resumed")
        )
        assert resumed is not None
        assert resumed.status is TaskStatus.WORKING
        assert resumed.status_message == "Resumed"
        assert resumed.last_updated_at == datetime.fromtimestamp(T0 + 2, UTC)
        assert await journal.get(new.task_id) == resumed

    async def test_an_input_required_task_can_finish(self, journal: Journal) -> None:
        new = new_task()
        await journal.submit(new)
        await journal.transition(move(new.task_id, TaskStatus.INPUT_REQUIRED, T0 + 1))
        done = await journal.transition(move(new.task_id, TaskStatus.CANCELLED, T0 + 2))
        assert done is not None
        assert done.status is TaskStatus.CANCELLED

    async def test_working_to_working_is_not_a_transition(
        self, journal: Journal
    ) -> None:
        new = new_task()
        before = await journal.submit(new)
        assert (
            await journal.transition(move(new.task_id, TaskStatus.WORKING, T0 + 1))
            is None
        )
        assert await journal.get(new.task_id) == before

    async def test_a_transition_of_an_unknown_task_is_none(
        self, journal: Journal
    ) -> None:
        change = move(TaskId("no-such-task"), TaskStatus.CANCELLED, T0)
        assert await journal.transition(change) is None
        assert await journal.events(TaskId("no-such-task")) == []

    # ------------------------------------------------------------ events

    async def test_submit_journals_one_submitted_event(self, journal: Journal) -> None:
        new = new_task(status_message="Queued")
        await journal.submit(new)
        assert await journal.events(new.task_id) == [
            TaskEvent(TaskStatus.WORKING, "Queued", "submitted", T0)
        ]

    async def test_each_applied_transition_appends_one_event_and_a_lost_one_none(
        self, journal: Journal
    ) -> None:
        new = new_task()
        await journal.submit(new)
        steps = [
            move(
                new.task_id,
                TaskStatus.INPUT_REQUIRED,
                T0 + 1,
                reason="ask",
                message="Q",
            ),
            move(new.task_id, TaskStatus.WORKING, T0 + 2, reason="answered"),
            move(new.task_id, TaskStatus.WORKING, T0 + 3, reason="lost: same status"),
            move(new.task_id, TaskStatus.CANCELLED, T0 + 4, reason="user", message="X"),
            move(new.task_id, TaskStatus.COMPLETED, T0 + 5, reason="lost: too late"),
        ]
        for step in steps:
            await journal.transition(step)
        assert await journal.events(new.task_id) == [
            TaskEvent(TaskStatus.WORKING, None, "submitted", T0),
            TaskEvent(TaskStatus.INPUT_REQUIRED, "Q", "ask", T0 + 1),
            TaskEvent(TaskStatus.WORKING, None, "answered", T0 + 2),
            TaskEvent(TaskStatus.CANCELLED, "X", "user", T0 + 4),
        ]

    async def test_events_are_kept_per_task(self, journal: Journal) -> None:
        first, second = new_task(), new_task()
        await journal.submit(first)
        await journal.submit(second)
        await journal.transition(move(first.task_id, TaskStatus.FAILED, T0 + 1))
        assert [e.reason for e in await journal.events(second.task_id)] == ["submitted"]

    # ------------------------------------------------------ claim, requeue

    async def test_claim_takes_a_queued_working_task_exactly_once(
        self, journal: Journal
    ) -> None:
        new = new_task(arguments={"x": [1, 2]}, request_meta={"progressToken": 7})
        await journal.submit(new)
        record = await journal.claim(new.task_id, "worker-1", T0 + 30)
        assert record is not None
        assert (record.task_id, record.owner_id, record.tool_name) == (
            new.task_id,
            ALICE,
            "echo",
        )
        assert record.arguments == {"x": [1, 2]}
        assert record.request_meta == {"progressToken": 7}
        assert record.attempts == 1
        assert await journal.claim(new.task_id, "worker-2", T0 + 30) is None

    async def test_a_cancelled_task_cannot_be_claimed(self, journal: Journal) -> None:
        new = new_task()
        await journal.submit(new)
        await journal.transition(move(new.task_id, TaskStatus.CANCELLED, T0 + 1))
        assert await journal.claim(new.task_id, "worker-1", T0 + 30) is None

    async def test_a_parked_input_required_task_cannot_be_claimed(
        self, journal: Journal
    ) -> None:
        new = new_task()
        await journal.submit(new)
        await journal.transition(
            move(new.task_id, TaskStatus.INPUT_REQUIRED, T0 + 1, phase="parked")
        )
        assert await journal.claim(new.task_id, "worker-1", T0 + 30) is None

    async def test_an_unknown_task_cannot_be_claimed(self, journal: Journal) -> None:
        assert await journal.claim(TaskId("no-such-task"), "worker-1", T0) is None

    async def test_requeue_makes_a_claimed_task_claimable_again(
        self, journal: Journal
    ) -> None:
        new = new_task()
        await journal.submit(new)
        assert await journal.claim(new.task_id, "worker-1", T0 + 30) is not None
        await journal.requeue(new.task_id, "Retrying", T0 + 10)
        requeued = await journal.get(new.task_id)
        assert requeued is not None
        assert requeued.status is TaskStatus.WORKING
        assert requeued.status_message == "Retrying"
        assert requeued.last_updated_at == datetime.fromtimestamp(T0 + 10, UTC)
        record = await journal.claim(new.task_id, "worker-2", T0 + 60)
        assert record is not None
        assert record.attempts == 2

    async def test_requeue_leaves_a_finished_task_alone(self, journal: Journal) -> None:
        new = new_task()
        await journal.submit(new)
        done = await journal.transition(move(new.task_id, TaskStatus.COMPLETED, T0 + 1))
        await journal.requeue(new.task_id, "Retrying", T0 + 2)
        assert await journal.get(new.task_id) == done
        assert await journal.claim(new.task_id, "worker-1", T0 + 30) is None

    async def test_set_status_message_changes_only_unfinished_tasks(
        self, journal: Journal
    ) -> None:
        running, finished = new_task(), new_task()
        await journal.submit(running)
        await journal.submit(finished)
        done = await journal.transition(
            move(finished.task_id, TaskStatus.FAILED, T0 + 1)
        )
        await journal.set_status_message(running.task_id, "Half way", T0 + 2)
        await journal.set_status_message(finished.task_id, "Half way", T0 + 2)
        got = await journal.get(running.task_id)
        assert got is not None
        assert got.status_message == "Half way"
        assert got.last_updated_at == datetime.fromtimestamp(T0 + 2, UTC)
        assert await journal.get(finished.task_id) == done

    # ------------------------------------------------------------ unfinished

    async def test_unfinished_lists_non_terminal_tasks_in_submission_order(
        self, journal: Journal
    ) -> None:
        tasks = [new_task(ALICE), new_task(BOB), new_task(ALICE), new_task(BOB)]
        for new in tasks:
            await journal.submit(new)
        queued, running, asking, done = (t.task_id for t in tasks)
        await journal.claim(running, "worker-1", T0 + 30)
        await journal.transition(
            move(asking, TaskStatus.INPUT_REQUIRED, T0 + 1, phase="parked")
        )
        await journal.transition(move(done, TaskStatus.COMPLETED, T0 + 1))
        found = [
            (u.task_id, u.owner_id, u.phase, u.status, u.not_before, u.lease_expires_at)
            for u in await journal.unfinished()
        ]
        assert found == [
            (queued, ALICE, "queued", TaskStatus.WORKING, None, None),
            (running, BOB, "running", TaskStatus.WORKING, None, T0 + 30),
            (asking, ALICE, "parked", TaskStatus.INPUT_REQUIRED, None, None),
        ]

    # ------------------------------------------------------- listing, seq

    async def test_list_owned_pages_through_one_owners_tasks_only(
        self, journal: Journal
    ) -> None:
        alice: list[TaskId] = []
        for n in range(5):
            mine = new_task(ALICE)
            await journal.submit(mine)
            alice.append(mine.task_id)
            if n % 2 == 0:
                await journal.submit(new_task(BOB))
        await journal.submit(new_task(ALICE, listed=False))
        pages: list[list[TaskId]] = []
        after = 0
        while page := await journal.list_owned(ALICE, after, 2):
            assert all(task.owner_id == ALICE for _, task in page)
            pages.append([task.task_id for _, task in page])
            seqs = [seq for seq, _ in page]
            assert seqs == sorted(seqs)
            assert seqs[0] > after
            after = seqs[-1]
        assert pages == [alice[0:2], alice[2:4], alice[4:5]]
        bob = await journal.list_owned(BOB, 0, 100)
        assert len(bob) == 3
        assert all(task.owner_id == BOB for _, task in bob)

    async def test_list_owned_returns_the_current_task_state(
        self, journal: Journal
    ) -> None:
        new = new_task()
        await journal.submit(new)
        done = await journal.transition(move(new.task_id, TaskStatus.CANCELLED, T0 + 1))
        assert [task for _, task in await journal.list_owned(ALICE, 0, 10)] == [done]

    async def test_seq_of_is_scoped_to_the_owner(self, journal: Journal) -> None:
        mine = new_task(ALICE)
        await journal.submit(mine)
        seq = await journal.seq_of(ALICE, mine.task_id)
        assert seq is not None
        assert [s for s, _ in await journal.list_owned(ALICE, 0, 10)] == [seq]
        assert await journal.seq_of(BOB, mine.task_id) is None
        assert await journal.seq_of(ALICE, TaskId("no-such-task")) is None

    # --------------------------------------------------------- retention

    async def test_purge_deletes_only_finished_tasks_past_their_expiry(
        self, journal: Journal
    ) -> None:
        expired = new_task(ttl_seconds=10.0)
        running = new_task(ttl_seconds=10.0)
        queued = new_task(ttl_seconds=10.0)
        forever = new_task(ttl_seconds=None)
        fresh = new_task(ttl_seconds=100_000.0)
        for new in (expired, running, queued, forever, fresh):
            await journal.submit(new)
        await journal.claim(running.task_id, "worker-1", T0 + 30)
        for new in (expired, forever, fresh):
            await journal.transition(move(new.task_id, TaskStatus.COMPLETED, T0 + 1))
        # `expired` finished at T0+1: kept for the grace, until T0+1+grace.
        gone_at = T0 + 1 + TERMINAL_GRACE_SECONDS
        assert await journal.purge_expired(gone_at - 0.5) == []
        assert await journal.purge_expired(T0 + 10_000) == [expired.task_id]
        assert await journal.get(expired.task_id) is None
        assert await journal.events(expired.task_id) == []
        for kept in (running, queued, forever, fresh):
            assert await journal.get(kept.task_id) is not None
            assert await journal.events(kept.task_id) != []
        assert await journal.purge_expired(T0 + 10_000) == []

    async def test_a_running_task_is_never_purged_even_past_its_ttl(
        self, journal: Journal
    ) -> None:
        new = new_task(ttl_seconds=1.0)
        await journal.submit(new)
        await journal.claim(new.task_id, "worker-1", T0 + 30)
        assert await journal.purge_expired(T0 + 1e9) == []
        assert await journal.get(new.task_id) is not None

    async def test_a_task_whose_ttl_ran_out_while_running_stays_for_the_grace(
        self, journal: Journal
    ) -> None:
        new = new_task(ttl_seconds=10.0)
        await journal.submit(new)
        finished_at = T0 + 100
        done = await journal.transition(
            move(new.task_id, TaskStatus.COMPLETED, finished_at)
        )
        assert done is not None
        assert done.ttl_seconds == 100 + TERMINAL_GRACE_SECONDS
        got = await journal.get(new.task_id)
        assert got is not None
        assert got.ttl_seconds == 100 + TERMINAL_GRACE_SECONDS
        assert (
            await journal.purge_expired(finished_at + TERMINAL_GRACE_SECONDS - 1) == []
        )
        assert await journal.get(new.task_id) is not None
        purged = await journal.purge_expired(finished_at + TERMINAL_GRACE_SECONDS)
        assert purged == [new.task_id]

    async def test_a_task_finishing_well_within_its_ttl_keeps_its_ttl(
        self, journal: Journal
    ) -> None:
        new = new_task(ttl_seconds=3600.0)
        await journal.submit(new)
        done = await journal.transition(move(new.task_id, TaskStatus.FAILED, T0 + 1))
        assert done is not None
        assert done.ttl_seconds == 3600.0
        assert await journal.purge_expired(T0 + 3599) == []
        assert await journal.purge_expired(T0 + 3600) == [new.task_id]

    # ------------------------------------------------------- durability

    async def test_a_secret_is_stable_across_reopening(
        self, open_journal: JournalOpener, db_path: Path
    ) -> None:
        async with open_journal(db_path) as first:
            secret = await first.secret("cursor")
            assert len(secret) >= 16
            assert await first.secret("cursor") == secret
            other = await first.secret("other")
            assert other != secret
        async with open_journal(db_path) as second:
            assert await second.secret("cursor") == secret
            assert await second.secret("other") == other

    async def test_a_secret_differs_between_databases(
        self, open_journal: JournalOpener, tmp_path: Path
    ) -> None:
        async with open_journal(tmp_path / "one.db") as one:
            first = await one.secret("cursor")
        async with open_journal(tmp_path / "two.db") as two:
            assert await two.secret("cursor") != first

    async def test_tasks_and_events_survive_closing_and_reopening(
        self, open_journal: JournalOpener, db_path: Path
    ) -> None:
        new, other = new_task(), new_task(BOB)
        async with open_journal(db_path) as first:
            await first.submit(new)
            await first.submit(other)
            done = await first.transition(
                move(
                    new.task_id,
                    TaskStatus.COMPLETED,
                    T0 + 1,
                    outcome=Outcome(result={"content": []}),
                )
            )
            events = await first.events(new.task_id)
            await first.claim(other.task_id, "worker-1", T0 + 30)
        async with open_journal(db_path) as second:
            assert await second.get(new.task_id) == done
            assert await second.events(new.task_id) == events
            assert [u.task_id for u in await second.unfinished()] == [other.task_id]

    # --------------------------------------------------------- properties

    @settings(
        deadline=None,
        max_examples=25,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(arguments=JSON_OBJECTS, meta=JSON_OBJECTS, result=JSON_OBJECTS)
    async def test_arbitrary_json_arguments_and_results_round_trip(
        self,
        journal: Journal,
        arguments: dict[str, Any],
        meta: dict[str, Any],
        result: dict[str, Any],
    ) -> None:
        new = new_task(arguments=arguments, request_meta=meta)
        await journal.submit(new)
        record = await journal.claim(new.task_id, "worker-1", T0 + 30)
        assert record is not None
        assert record.arguments == arguments
        assert record.request_meta == meta
        done = await journal.transition(
            move(new.task_id, TaskStatus.COMPLETED, T0 + 1, outcome=Outcome(result))
        )
        assert done is not None
        assert done.outcome == Outcome(result=result)
        got = await journal.get(new.task_id)
        assert got is not None
        assert got.outcome == Outcome(result=result)

    @settings(
        deadline=None,
        max_examples=25,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(error=JSON_OBJECTS, message=st.text() | st.none())
    async def test_arbitrary_json_errors_and_messages_round_trip(
        self, journal: Journal, error: dict[str, Any], message: str | None
    ) -> None:
        new = new_task(status_message=message)
        await journal.submit(new)
        failed = await journal.transition(
            move(
                new.task_id,
                TaskStatus.FAILED,
                T0 + 1,
                outcome=Outcome(error=error),
                message=message,
            )
        )
        assert failed is not None
        got = await journal.get(new.task_id)
        assert got is not None
        assert got == failed
        assert got.outcome == Outcome(error=error)
        assert got.status_message == message


# ---------------------------------------------------------------- SQLite


@pytest.fixture
async def sqlite_journal(db_path: Path) -> AsyncIterator[SqliteJournal]:
    async with SqliteJournal.open(db_path) as opened:
        yield opened


def user_version(path: Path) -> int:
    with closing(sqlite3.connect(path)) as db:
        ((version,),) = db.execute("PRAGMA user_version").fetchall()
    return int(version)


def set_user_version(path: Path, version: int) -> None:
    with closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA user_version={version}")


class TestSqliteJournal:
    """What only the SQLite journal has: group commit, schema, the file."""

    async def test_concurrent_submits_share_commits(
        self, sqlite_journal: SqliteJournal
    ) -> None:
        writer = sqlite_journal.writer
        batches, writes = writer.batches, writer.writes
        tasks = [new_task(OwnerId(f"client-{n % 7}")) for n in range(200)]
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for new in tasks:
                    tg.start_soon(sqlite_journal.submit, new)
        assert writer.writes - writes == 200
        assert writer.batches - batches <= 20
        assert writer.batches < writer.writes
        for new in tasks:
            assert await sqlite_journal.get(new.task_id) is not None

    async def test_a_failing_write_fails_alone_in_its_batch(
        self, sqlite_journal: SqliteJournal
    ) -> None:
        writer = sqlite_journal.writer
        batches = writer.batches
        before = [new_task() for _ in range(20)]
        after = [new_task() for _ in range(20)]
        failures: list[BaseException] = []

        def bad(db: sqlite3.Connection) -> None:
            db.execute("INSERT INTO meta (key, value) VALUES ('probe', 'x')")
            db.execute("INSERT INTO no_such_table VALUES (1)")

        async def run_bad() -> None:
            try:
                await writer.write(bad)
            except JournalError as exc:
                failures.append(exc)

        # Everything is queued before the writer wakes (asyncio runs the started
        # tasks in order first), so all 41 writes land in one batch.
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for new in before:
                    tg.start_soon(sqlite_journal.submit, new)
                tg.start_soon(run_bad)
                for new in after:
                    tg.start_soon(sqlite_journal.submit, new)
        assert writer.batches - batches == 1
        assert len(failures) == 1
        assert isinstance(failures[0].__cause__, sqlite3.OperationalError)
        for new in before + after:
            assert await sqlite_journal.get(new.task_id) is not None

        def probe(db: sqlite3.Connection) -> list[Any]:
            return db.execute("SELECT value FROM meta WHERE key = 'probe'").fetchall()

        rows: list[Any] = await writer.write(probe)
        assert rows == []  # the failed write's own changes were rolled back

    async def test_a_duplicate_task_id_fails_alone(
        self, sqlite_journal: SqliteJournal
    ) -> None:
        first, neighbour = new_task(), new_task(BOB)
        await sqlite_journal.submit(first)
        duplicate = NewTask(first.task_id, BOB, "other", {}, T0 + 5, None, 1.0)
        outcomes: dict[str, BaseException | None] = {}

        async def submit(name: str, new: NewTask) -> None:
            try:
                await sqlite_journal.submit(new)
            except JournalError as exc:
                outcomes[name] = exc
            else:
                outcomes[name] = None

        async with anyio.create_task_group() as tg:
            tg.start_soon(submit, "duplicate", duplicate)
            tg.start_soon(submit, "neighbour", neighbour)
        assert isinstance(outcomes["duplicate"], JournalError)
        assert outcomes["neighbour"] is None
        got = await sqlite_journal.get(first.task_id)
        assert got is not None
        assert got.owner_id == ALICE
        assert await sqlite_journal.get(neighbour.task_id) is not None

    async def test_settled_hears_each_insert_outcome_even_without_its_caller(
        self, sqlite_journal: SqliteJournal
    ) -> None:
        first = new_task()
        await sqlite_journal.submit(first)
        duplicate = NewTask(first.task_id, BOB, "other", {}, T0 + 5, None, 1.0)
        fresh = new_task(BOB)
        heard: dict[str, BaseException | None] = {}
        writer_busy, release_writer = threading.Event(), threading.Event()

        def hear(name: str) -> Callable[[BaseException | None], None]:
            def settled(error: BaseException | None) -> None:
                heard[name] = error

            return settled

        def hold_the_writer(db: sqlite3.Connection) -> None:
            writer_busy.set()
            release_writer.wait(10)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(sqlite_journal.writer.write, hold_the_writer)
                await anyio.to_thread.run_sync(writer_busy.wait, 10)
                async with anyio.create_task_group() as callers:
                    callers.start_soon(
                        sqlite_journal.submit, duplicate, hear("duplicate")
                    )
                    callers.start_soon(sqlite_journal.submit, fresh, hear("fresh"))
                    await anyio.wait_all_tasks_blocked()
                    callers.cancel_scope.cancel()  # both leave before their commit
                assert heard == {}
                release_writer.set()
            # Writes are FIFO: once this one returns, the batch before it settled.
            await sqlite_journal.writer.write(lambda db: None)
        assert set(heard) == {"duplicate", "fresh"}
        assert isinstance(heard["duplicate"], JournalError)
        assert heard["fresh"] is None
        assert await sqlite_journal.get(fresh.task_id) is not None

    async def test_an_insert_into_a_closed_journal_is_refused_and_settled(
        self, db_path: Path
    ) -> None:
        async with SqliteJournal.open(db_path) as opened:
            pass
        heard: list[BaseException | None] = []
        with pytest.raises(JournalError, match="closed"):
            await opened.submit(new_task(), heard.append)
        assert len(heard) == 1
        assert isinstance(heard[0], JournalError)

    async def test_a_python_error_in_a_write_reaches_its_caller_unchanged(
        self, sqlite_journal: SqliteJournal
    ) -> None:
        def broken(db: sqlite3.Connection) -> None:
            raise LookupError("not a database problem")

        with pytest.raises(LookupError, match="not a database problem"):
            await sqlite_journal.writer.write(broken)

    async def test_writes_after_closing_are_refused(self, db_path: Path) -> None:
        async with SqliteJournal.open(db_path) as opened:
            pass
        with pytest.raises(JournalError, match="closed"):
            await opened.submit(new_task())

    async def test_reads_after_closing_are_refused_with_a_journal_error(
        self, db_path: Path
    ) -> None:
        async with SqliteJournal.open(db_path) as opened:
            pass
        with pytest.raises(JournalError):
            await opened.get(TaskId("any"))

    @pytest.mark.parametrize(("setting", "code"), [("FULL", 2), ("NORMAL", 1)])
    async def test_the_synchronous_setting_is_applied_to_the_writer(
        self, db_path: Path, setting: str, code: int
    ) -> None:
        def read(db: sqlite3.Connection) -> list[Any]:
            return db.execute("PRAGMA synchronous").fetchall()

        async with SqliteJournal.open(db_path, synchronous=setting) as opened:
            rows: list[Any] = await opened.writer.write(read)
        assert rows == [(code,)]

    async def test_the_database_is_in_wal_mode(self, db_path: Path) -> None:
        async with SqliteJournal.open(db_path):
            pass
        with closing(sqlite3.connect(db_path)) as db:
            assert db.execute("PRAGMA journal_mode").fetchall() == [("wal",)]

    async def test_an_unknown_synchronous_setting_is_refused(
        self, db_path: Path
    ) -> None:
        with pytest.raises(ValueError, match="synchronous"):
            async with SqliteJournal.open(db_path, synchronous="OFF"):
                pass
        assert not await anyio.Path(db_path).exists()

    async def test_a_fresh_database_is_at_the_latest_schema_version(
        self, db_path: Path
    ) -> None:
        async with SqliteJournal.open(db_path):
            pass
        migrations = sorted(MIGRATIONS_DIR.glob("*.sql"))
        assert migrations
        assert user_version(db_path) == len(migrations)

    async def test_reopening_a_current_database_changes_no_version(
        self, db_path: Path
    ) -> None:
        async with SqliteJournal.open(db_path) as opened:
            await opened.submit(new_task())
        version = user_version(db_path)
        async with SqliteJournal.open(db_path):
            pass
        assert user_version(db_path) == version

    async def test_a_database_from_a_newer_version_is_refused_untouched(
        self, db_path: Path
    ) -> None:
        async with SqliteJournal.open(db_path) as opened:
            await opened.submit(new_task())
        set_user_version(db_path, 99)
        before = await anyio.Path(db_path).read_bytes()
        with pytest.raises(JournalSchemaError) as caught:
            async with SqliteJournal.open(db_path):
                pass
        assert (caught.value.found, caught.value.supported) == (
            99,
            len(list(MIGRATIONS_DIR.glob("*.sql"))),
        )
        assert user_version(db_path) == 99
        assert await anyio.Path(db_path).read_bytes() == before

    async def test_a_foreign_database_with_a_higher_version_is_left_untouched(
        self, db_path: Path
    ) -> None:
        # Another program's database (rollback journal, not WAL) opened by
        # mistake: refusing it must not convert it to WAL or write anything.
        with closing(sqlite3.connect(db_path)) as db:
            db.execute("CREATE TABLE notes (body TEXT)")
            db.execute("INSERT INTO notes VALUES ('keep me')")
            db.execute("PRAGMA user_version=99")
            db.commit()
        before = await anyio.Path(db_path).read_bytes()
        with pytest.raises(JournalSchemaError):
            async with SqliteJournal.open(db_path):
                pass
        assert user_version(db_path) == 99
        assert await anyio.Path(db_path).read_bytes() == before

    async def test_a_file_of_garbage_is_a_journal_error(self, db_path: Path) -> None:
        garbage = b"this is not a database\x00\xff" * 200
        await anyio.Path(db_path).write_bytes(garbage)
        with pytest.raises(JournalError) as caught:
            async with SqliteJournal.open(db_path):
                pass
        assert not isinstance(caught.value, JournalSchemaError)
        assert await anyio.Path(db_path).read_bytes() == garbage

    async def test_a_path_in_a_missing_directory_is_a_journal_error(
        self, tmp_path: Path
    ) -> None:
        with pytest.raises(JournalError):
            async with SqliteJournal.open(tmp_path / "absent" / "journal.db"):
                pass

    async def test_a_database_open_in_another_journal_is_refused(
        self, sqlite_journal: SqliteJournal, db_path: Path
    ) -> None:
        with pytest.raises(JournalError, match="in use"):
            async with SqliteJournal.open(db_path):
                pass
        assert await sqlite_journal.get(TaskId("still-works")) is None
