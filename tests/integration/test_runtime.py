"""`TaskRuntime` on a real SQLite journal: lifecycle, cancel, caps, fairness,
backlog, listing, retention, restart recovery and listeners.

Tool bodies wait on events the test opens (`gated_tools.Gates`), so nothing
sleeps to synchronise. `settle` lets the dispatcher and the journal writer
drain; every wait that could hang is bounded by ``anyio.fail_after``.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, closing
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcp_tasks import (
    CapacityError,
    ClientLimits,
    InvalidCursorError,
    OwnerId,
    Settings,
    Task,
    TaskId,
    TaskNotFoundError,
    TaskStatus,
    TaskTerminalError,
)
from mcp_tasks.engine import Change, ChangeKind, Requester, TaskRuntime
from mcp_tasks.journal.sqlite import SqliteJournal

from ..quiesce import settle_tasks
from .gated_tools import QUESTION_TIMEOUT_SECONDS, Gates, make_tools

#: A bound on waits, generous: `settle` waits for every task to block, which a
#: loaded 2-core machine running the suite beside other sessions delays.
TIMEOUT = 15.0
ALICE = Requester(OwnerId("alice"))
BOB = Requester(OwnerId("bob"))
T0 = 1_700_000_000.0

#: Tests leave gated bodies running at exit; shutdown waits this long for them.
GRACE = 0.05

OpenRuntime = Callable[..., AbstractAsyncContextManager[TaskRuntime]]


def make_settings(**changes: Any) -> Settings:
    """Test settings: cheap commits and a short shutdown grace, plus ``changes``."""
    base: dict[str, Any] = {"synchronous": "NORMAL", "shutdown_grace_seconds": GRACE}
    return Settings(**(base | changes))


class FakeClock:
    """A settable clock for TTL tests: ``clock.now += 61``."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Recorder:
    """A change listener that keeps everything it hears, by kind."""

    def __init__(self) -> None:
        self.changes: list[tuple[TaskId, TaskStatus, str]] = []
        self.progress: list[Change] = []
        self.logs: list[Change] = []
        self.answered: list[tuple[TaskId, str]] = []
        #: Every change's kind in feed order ("end" for a terminal status).
        self.kinds: list[ChangeKind | str] = []
        self.heard = anyio.Event()

    def task_changed(self, change: Change) -> None:
        if change.kind is ChangeKind.STATUS:
            self.changes.append((change.task_id, change.status, change.reason))
        elif change.kind is ChangeKind.PROGRESS:
            self.progress.append(change)
        elif change.kind is ChangeKind.LOG:
            self.logs.append(change)
        elif change.kind is ChangeKind.ANSWER and change.data is not None:
            self.answered.append((change.task_id, str(change.data["key"])))
        ended = change.kind is ChangeKind.STATUS and change.status.is_terminal
        self.kinds.append("end" if ended else change.kind)
        self.heard.set()
        self.heard = anyio.Event()

    async def wait(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition`` holds for what was heard."""
        with anyio.fail_after(TIMEOUT):
            while not condition():
                await self.heard.wait()

    def question_answered(self, task_id: TaskId, key: str) -> None:
        self.answered.append((task_id, key))


@pytest.fixture
def gates() -> Gates:
    return Gates()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "tasks.db"


@pytest.fixture
def open_runtime(db_path: Path, gates: Gates) -> OpenRuntime:
    """Open a runtime on the test's database file with the gated tools."""
    tools = make_tools(gates)

    @asynccontextmanager
    async def open_(
        settings: Settings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> AsyncGenerator[TaskRuntime]:
        settings = settings or make_settings()
        async with TaskRuntime.open(db_path, settings, tools, clock=clock) as runtime:
            try:
                yield runtime
            finally:
                gates.release_threads()  # never leave a worker thread blocked

    return open_


async def settle(runtime: TaskRuntime) -> None:
    """Let the engine claim what it may and the journal commit what it has.

    Rounds of: everything blocked, a write through the (FIFO) writer so every
    write queued before it has committed, and the change feed read to its end
    so every listener (the dispatcher among them) has heard every change.
    """
    with anyio.fail_after(TIMEOUT):
        for _ in range(6):
            await settle_tasks()
            await runtime.journal.secret("settle")
            await runtime.catch_up()
        await settle_tasks()


async def counts(runtime: TaskRuntime, owner: Requester = ALICE) -> tuple[int, int]:
    """``(queued, running)`` of ``owner``'s tasks, as the journal counts them."""
    loads = await runtime.load(owner.owner_id)
    return (loads[0].queued, loads[0].running) if loads else (0, 0)


async def unfinished(runtime: TaskRuntime) -> int:
    """Every unfinished task in the journal."""
    return sum(load.unfinished for load in await runtime.load())


async def finish(runtime: TaskRuntime, requester: Requester, task_id: str) -> Task:
    with anyio.fail_after(TIMEOUT):
        return await runtime.wait_terminal(requester, task_id)


async def submit_gate(
    runtime: TaskRuntime,
    key: str,
    requester: Requester = ALICE,
    group: str = "",
    **kwargs: Any,
) -> Task:
    return await runtime.submit(
        requester, "gate", {"key": key, "group": group}, **kwargs
    )


def text_of(task: Task) -> str:
    assert task.outcome is not None
    assert task.outcome.result is not None
    return str(task.outcome.result["content"][0]["text"])


# ------------------------------------------------------------------ lifecycle


async def test_submitted_task_completes_with_the_tools_result(
    open_runtime: OpenRuntime, gates: Gates
) -> None:
    async with open_runtime() as runtime:
        task = await submit_gate(runtime, "k")
        assert task.status is TaskStatus.WORKING
        assert task.owner_id == "alice"
        assert task.tool_name == "gate"
        await gates.wait_started("k")
        assert (await runtime.get(ALICE, task.task_id)).status is TaskStatus.WORKING

        gates.open("k")
        done = await finish(runtime, ALICE, task.task_id)

        assert done.status is TaskStatus.COMPLETED
        assert done.outcome is not None
        assert done.outcome.error is None
        assert done.outcome.result == {
            "content": [{"type": "text", "text": "done k"}],
            "isError": False,
        }
        assert await runtime.get(ALICE, task.task_id, outcome=True) == done
        assert gates.finished == ["k"]


async def test_structured_return_value_becomes_structured_content(
    open_runtime: OpenRuntime,
) -> None:
    async with open_runtime() as runtime:
        task = await runtime.submit(ALICE, "structured", {"count": 3})
        done = await finish(runtime, ALICE, task.task_id)
        assert done.status is TaskStatus.COMPLETED
        assert done.outcome is not None
        assert done.outcome.result is not None
        assert done.outcome.result["structuredContent"] == {"count": 3}


async def test_tool_error_completes_with_an_is_error_result(
    open_runtime: OpenRuntime,
) -> None:
    async with open_runtime() as runtime:
        task = await runtime.submit(ALICE, "raises", {"kind": "tool"})
        done = await finish(runtime, ALICE, task.task_id)
        assert done.status is TaskStatus.COMPLETED
        assert done.outcome is not None
        assert done.outcome.is_tool_error
        assert text_of(done) == "the input was wrong"


async def test_protocol_error_fails_the_task_with_that_error(
    open_runtime: OpenRuntime,
) -> None:
    async with open_runtime() as runtime:
        task = await runtime.submit(ALICE, "raises", {"kind": "protocol"})
        done = await finish(runtime, ALICE, task.task_id)
        assert done.status is TaskStatus.FAILED
        assert done.outcome is not None
        assert done.outcome.result is None
        assert done.outcome.error == {
            "code": -32001,
            "message": "no such resource",
            "data": {"id": 7},
        }
        assert done.status_message == "no such resource"


async def test_unexpected_exception_completes_with_an_is_error_result(
    open_runtime: OpenRuntime,
) -> None:
    async with open_runtime() as runtime:
        task = await runtime.submit(ALICE, "raises", {"kind": "crash"})
        done = await finish(runtime, ALICE, task.task_id)
        assert done.status is TaskStatus.COMPLETED
        assert done.outcome is not None
        assert done.outcome.is_tool_error
        assert "RuntimeError: boom" in text_of(done)


async def test_sync_tool_runs_in_a_thread_while_the_loop_keeps_serving(
    open_runtime: OpenRuntime, gates: Gates
) -> None:
    async with open_runtime() as runtime:
        blocked = await runtime.submit(ALICE, "blocking", {"key": "t"})
        await gates.wait_started("t")  # the thread is now blocked on its gate

        # The loop is free: another task starts, runs and finishes meanwhile.
        other = await submit_gate(runtime, "a", BOB)
        await gates.wait_started("a")
        gates.open("a")
        assert (await finish(runtime, BOB, other.task_id)).status is (
            TaskStatus.COMPLETED
        )
        still = await runtime.get(ALICE, blocked.task_id)
        assert still.status is TaskStatus.WORKING

        gates.open("t")  # sets the threading.Event from the loop
        done = await finish(runtime, ALICE, blocked.task_id)

    assert text_of(done) == "thread done t"
    assert gates.thread_names["t"] != threading.main_thread().name
    assert gates.started == ["t", "a"]
    assert gates.finished == ["a", "t"]


async def test_wait_change_returns_on_the_next_status(
    open_runtime: OpenRuntime, gates: Gates
) -> None:
    async with open_runtime() as runtime:
        task = await submit_gate(runtime, "k")
        await gates.wait_started("k")
        seen = await runtime.get(ALICE, task.task_id)
        changed: list[Task] = []

        async def watch() -> None:
            changed.append(await runtime.wait_change(ALICE, task.task_id, seen))

        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as group:
                group.start_soon(watch)
                await settle(runtime)
                assert changed == []  # still working: nothing to report yet
                gates.open("k")

        assert [t.status for t in changed] == [TaskStatus.COMPLETED]
        again = await runtime.wait_change(ALICE, task.task_id, changed[0])
        assert again.status is TaskStatus.COMPLETED  # terminal: returns at once


# --------------------------------------------------------------------- cancel


async def test_cancel_running_task_records_cancelled_and_stops_the_body(
    open_runtime: OpenRuntime, gates: Gates
) -> None:
    async with open_runtime() as runtime:
        task = await submit_gate(runtime, "k")
        await gates.wait_started("k")

        cancelled = await runtime.cancel(ALICE, task.task_id)

        assert cancelled.status is TaskStatus.CANCELLED
        stored = await runtime.journal.get(task.task_id)
        assert stored is not None
        assert stored.status is TaskStatus.CANCELLED
        await gates.wait_ended("k")
        assert gates.cancelled == ["k"]
        assert gates.finished == []

        gates.open("k")
        await settle(runtime)
        final = await runtime.get(ALICE, task.task_id)
        assert final.status is TaskStatus.CANCELLED
        assert final.outcome is None
        events = await runtime.journal.events(task.task_id)
        assert [e.status for e in events if e.kind is ChangeKind.STATUS] == [
            TaskStatus.WORKING,
            TaskStatus.CANCELLED,
        ]


async def test_a_body_that_swallows_cancellation_cannot_complete_the_task(
    open_runtime: OpenRuntime, gates: Gates
) -> None:
    async with open_runtime() as runtime:
        task = await runtime.submit(ALICE, "stubborn", {"key": "s"})
        await gates.wait_started("s")

        await runtime.cancel(ALICE, task.task_id)
        await gates.wait_ended("s")  # the body returned "finished after all"
        await settle(runtime)

        final = await runtime.get(ALICE, task.task_id)
        assert final.status is TaskStatus.CANCELLED
        assert final.outcome is None
        events = await runtime.journal.events(task.task_id)
        assert events[-1].status is TaskStatus.CANCELLED
        assert TaskStatus.COMPLETED not in {e.status for e in events}


async def test_cancelled_sync_task_discards_the_threads_late_return(
    open_runtime: OpenRuntime, gates: Gates
) -> None:
    async with open_runtime() as runtime:
        task = await runtime.submit(ALICE, "blocking", {"key": "t"})
        await gates.wait_started("t")

        await runtime.cancel(ALICE, task.task_id)
        gates.open("t")
        await gates.wait_ended("t")  # the thread returned its value
        await settle(runtime)

        final = await runtime.get(ALICE, task.task_id)
        assert final.status is TaskStatus.CANCELLED
        assert final.outcome is None


async def test_cancel_queued_task_means_it_never_starts(
    open_runtime: OpenRuntime, gates: Gates
) -> None:
    async with open_runtime(make_settings(workers=1)) as runtime:
        first = await submit_gate(runtime, "first")
        queued = await submit_gate(runtime, "queued")
        await gates.wait_started("first")

        cancelled = await runtime.cancel(ALICE, queued.task_id)
        assert cancelled.status is TaskStatus.CANCELLED

        gates.open("first", "queued")
        await finish(runtime, ALICE, first.task_id)
        await settle(runtime)
        assert gates.started == ["first"]
        assert (await runtime.get(ALICE, queued.task_id)).status is (
            TaskStatus.CANCELLED
        )
        assert await counts(runtime) == (0, 0)


async def test_cancel_of_a_terminal_task_raises_and_changes_nothing(
    open_runtime: OpenRuntime,
) -> None:
    async with open_runtime() as runtime:
        task = await runtime.submit(ALICE, "structured", {"count": 1})
        done = await finish(runtime, ALICE, task.task_id)

        with pytest.raises(TaskTerminalError) as raised:
            await runtime.cancel(ALICE, task.task_id)

        assert raised.value.status == "completed"
        assert await runtime.get(ALICE, task.task_id, outcome=True) == done


async def test_unknown_or_foreign_task_is_not_found(
    open_runtime: OpenRuntime, gates: Gates
) -> None:
    async with open_runtime() as runtime:
        task = await submit_gate(runtime, "k")
        with pytest.raises(TaskNotFoundError):
            await runtime.cancel(ALICE, "no-such-task")
        with pytest.raises(TaskNotFoundError):
            await runtime.get(ALICE, "no-such-task")
        with pytest.raises(TaskNotFoundError):
            await runtime.cancel(BOB, task.task_id)
        with pytest.raises(TaskNotFoundError):
            await runtime.get(BOB, task.task_id)
        with pytest.raises(TaskNotFoundError):
            await runtime.wait_terminal(BOB, task.task_id)

        await gates.wait_started("k")
        assert (await runtime.get(ALICE, task.task_id)).status is TaskStatus.WORKING
        assert gates.cancelled == []


async def test_unscoped_requester_reads_and_cancels_by_id_but_cannot_list(
    open_runtime: OpenRuntime, gates: Gates
) -> None:
    anonymous = Requester(OwnerId("anonymous"), scoped=False)
    async with open_runtime() as runtime:
        task = await submit_gate(runtime, "k")
        await gates.wait_started("k")

        seen = await runtime.get(anonymous, task.task_id)
        assert seen.task_id == task.task_id
        cancelled = await runtime.cancel(anonymous, task.task_id)
        assert cancelled.status is TaskStatus.CANCELLED
        with pytest.raises(PermissionError):
            await runtime.list(anonymous)
        with pytest.raises(TaskNotFoundError):
            await runtime.get(anonymous, "no-such-task")
        await gates.wait_ended("k")
        assert gates.cancelled == ["k"]


# ----------------------------------------------------------------------- caps


async def test_client_concurrency_one_runs_one_task_of_an_owner_at_a_time(
    open_runtime: OpenRuntime, gates: Gates
) -> None:
    settings = make_settings(workers=4, client_concurrency=1)
    async with open_runtime(settings) as runtime:
        tasks = [await submit_gate(runtime, f"a{i}", group="alice") for i in range(3)]
        await gates.wait_started("a0")
        await settle(runtime)
        assert gates.started == ["a0"]

        gates.open("a0")
        await gates.wait_started("a1")
        await settle(runtime)
        assert gates.started == ["a0", "a1"]

        gates.open("a1", "a2")
        for task in tasks:
            await finish(runtime, ALICE, task.task_id)

    assert gates.started == ["a0", "a1", "a2"]
    assert gates.peak["alice"] == 1


async def test_per_client_override_raises_one_clients_cap(
    open_runtime: OpenRuntime, gates: Gates
) -> None:
    settings = make_settings(
        workers=4, client_concurrency=1, client_overrides={"bob": ClientLimits(2, 100)}
    )
    async with open_runtime(settings) as runtime:
        bobs = [await submit_gate(runtime, f"b{i}", BOB, "bob") for i in range(3)]
        alices = [await submit_gate(runtime, f"a{i}", group="alice") for i in range(2)]
        await gates.wait_started("b1")
        await gates.wait_started("a0")
        await settle(runtime)
        assert sorted(gates.started) == ["a0", "b0", "b1"]
        assert runtime.statistics().running == 3

        gates.open("b0", "b1", "b2", "a0", "a1")
        for task in bobs:
            await finish(runtime, BOB, task.task_id)
        for task in alices:
            await finish(runtime, ALICE, task.task_id)

    assert gates.peak == {"bob": 2, "alice": 1}


async def test_global_worker_limit_is_honoured(
    open_runtime: OpenRuntime, gates: Gates
) -> None:
    settings = make_settings(workers=2, client_concurrency=4)
    owners = [Requester(OwnerId(f"owner{i}")) for i in range(3)]
    async with open_runtime(settings) as runtime:
        submitted: list[tuple[Requester, Task]] = []
        for owner in owners:
            for i in range(2):
                key = f"{owner.owner_id}-{i}"
                submitted.append((owner, await submit_gate(runtime, key, owner, "all")))
        await settle(runtime)
        assert len(gates.started) == 2
        stats = runtime.statistics()
        assert (stats.running, stats.workers) == (2, 2)
        loads = await runtime.load()
        assert sum(load.queued for load in loads) == 4

        gates.open(*(f"{owner.owner_id}-{i}" for owner in owners for i in range(2)))
        for owner, task in submitted:
            await finish(runtime, owner, task.task_id)

    assert len(gates.started) == 6
    assert gates.peak["all"] == 2


async def test_cancelled_sync_task_keeps_its_worker_until_the_thread_ends(
    open_runtime: OpenRuntime, gates: Gates
) -> None:
    # A cancelled threaded body cannot be interrupted and keeps running. If its
    # worker is handed to the next task at once, every cancel adds one more
    # blocked thread beyond `workers`.
    settings = make_settings(workers=1, client_concurrency=1)
    async with open_runtime(settings) as runtime:
        first = await runtime.submit(ALICE, "blocking", {"key": "t1"})
        await gates.wait_started("t1")
        await runtime.cancel(ALICE, first.task_id)
        second = await runtime.submit(ALICE, "blocking", {"key": "t2"})
        await settle(runtime)
        overlap = "t2" in gates.started  # t1's thread has not returned yet

        gates.open("t1", "t2")
        await finish(runtime, ALICE, second.task_id)
        await gates.wait_ended("t1")

    assert not overlap
    assert gates.peak["thread"] == 1


async def test_a_cancelled_task_holds_its_clients_slot_until_its_body_stops(
    open_runtime: OpenRuntime, gates: Gates
) -> None:
    # Plenty of workers, one slot for the client: the cancelled threaded body
    # (which cannot be interrupted) and the client's next task never overlap,
    # though the first shows cancelled at once.
    settings = make_settings(workers=4, client_concurrency=1)
    async with open_runtime(settings) as runtime:
        first = await runtime.submit(ALICE, "blocking", {"key": "t1"})
        await gates.wait_started("t1")
        cancelled = await runtime.cancel(ALICE, first.task_id)
        assert cancelled.status is TaskStatus.CANCELLED
        second = await runtime.submit(ALICE, "blocking", {"key": "t2"})
        await settle(runtime)
        assert gates.started == ["t1"]
        assert await counts(runtime) == (1, 1)  # t2 queued; t1 still stopping

        gates.open("t1", "t2")
        await finish(runtime, ALICE, second.task_id)

    assert gates.peak["thread"] == 1
    assert gates.started == ["t1", "t2"]


# ------------------------------------------------------------------- fairness


async def test_newcomer_runs_next_after_a_busy_clients_current_task(
    open_runtime: OpenRuntime, gates: Gates
) -> None:
    settings = make_settings(workers=1, client_concurrency=1)
    async with open_runtime(settings) as runtime:
        for i in range(200):
            await submit_gate(runtime, f"a{i}")
        await gates.wait_started("a0")
        await submit_gate(runtime, "b0", BOB)
        await settle(runtime)
        assert gates.started == ["a0"]

        gates.open("a0")
        await settle(runtime)
        order = list(gates.started)

    # Alice already had her turn (a0); Bob, waiting since, must go before a1.
    assert order == ["a0", "b0"]


async def test_queued_tasks_report_working_with_their_queue_position(
    open_runtime: OpenRuntime, gates: Gates
) -> None:
    settings = make_settings(workers=1, client_concurrency=1)
    async with open_runtime(settings) as runtime:
        tasks = [await submit_gate(runtime, f"a{i}") for i in range(4)]
        await gates.wait_started("a0")

        running = await runtime.get(ALICE, tasks[0].task_id)
        third = await runtime.get(ALICE, tasks[3].task_id)
        listed, _ = await runtime.list(ALICE)

    assert running.status is TaskStatus.WORKING
    assert running.status_message is None or "Queued" not in running.status_message
    assert third.status is TaskStatus.WORKING
    assert third.status_message is not None
    assert third.status_message == (
        "Queued: 2 tasks ahead of it in this client's queue; this client is at "
        "its limit of 1 running task"
    )
    assert [t.status_message for t in listed[1:]] == [
        "Queued: next in this client's queue; this client is at its limit of "
        "1 running task",
        "Queued: 1 task ahead of it in this client's queue; this client is at its "
        "limit of 1 running task",
        "Queued: 2 tasks ahead of it in this client's queue; this client is at its "
        "limit of 1 running task",
    ]
    assert third.queued_ahead == 2


async def test_queued_tasks_say_they_wait_for_a_worker_when_that_holds_them(
    open_runtime: OpenRuntime, gates: Gates
) -> None:
    settings = make_settings(workers=2, client_concurrency=4)
    async with open_runtime(settings) as runtime:
        for key in ("a0", "a1"):
            await submit_gate(runtime, key)
            await gates.wait_started(key)
        queued = await submit_gate(runtime, "b0", BOB)
        await settle(runtime)
        again = await runtime.get(BOB, queued.task_id)
    # The submit answer makes no claim (the task may start at once); a poll
    # says what holds it, from the journal.
    assert queued.status_message is None
    assert again.status_message == (
        "Queued: next in this client's queue, waiting for a free worker"
    )


async def test_a_task_that_starts_at_once_is_not_reported_queued(
    open_runtime: OpenRuntime, gates: Gates
) -> None:
    # The dispatcher may take a task off the queue before its submit returns:
    # that answer must not claim a place in the queue ("position 0 of 0").
    async with open_runtime(make_settings(workers=4)) as runtime:
        tasks = [await submit_gate(runtime, f"s{i}") for i in range(3)]
        for i in range(3):
            await gates.wait_started(f"s{i}")
    for task in tasks:
        assert "Queued" not in (task.status_message or ""), task.status_message


# -------------------------------------------------------------------- backlog


async def test_a_submit_whose_caller_is_cancelled_mid_commit_still_runs(
    open_runtime: OpenRuntime, gates: Gates
) -> None:
    # The submit's wait is not shielded (it is the hot path), so the queueing
    # that follows the commit must happen without its caller.
    writer_busy = threading.Event()
    release_writer = threading.Event()

    def hold_the_writer(db: sqlite3.Connection) -> None:
        writer_busy.set()
        release_writer.wait(TIMEOUT)

    async with open_runtime(make_settings(client_backlog=1)) as runtime:
        assert isinstance(runtime.journal, SqliteJournal)
        writer = runtime.journal.writer
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer.write, hold_the_writer)
            await anyio.to_thread.run_sync(writer_busy.wait, TIMEOUT)
            with anyio.CancelScope() as caller:
                tg.start_soon(cancel_when_blocked, caller)
                await submit_gate(runtime, "orphan")
            assert caller.cancelled_caught  # the caller never saw a handle
            release_writer.set()
        await gates.wait_started("orphan")
        (only,) = await runtime.journal.list_owned(ALICE.owner_id, 0, 10)
        gates.open("orphan")
        assert (await finish(runtime, ALICE, only[1].task_id)).status is (
            TaskStatus.COMPLETED
        )
        assert await unfinished(runtime) == 0
        await submit_gate(runtime, "next")  # the backlog slot of 1 came back


async def cancel_when_blocked(scope: anyio.CancelScope) -> None:
    await settle_tasks()
    scope.cancel()


async def test_backlog_refuses_the_fourth_submit_and_stores_nothing(
    open_runtime: OpenRuntime, gates: Gates
) -> None:
    settings = make_settings(client_backlog=3)
    async with open_runtime(settings) as runtime:
        tasks = [await submit_gate(runtime, f"a{i}") for i in range(3)]

        with pytest.raises(CapacityError) as raised:
            await submit_gate(runtime, "refused")

        assert raised.value.limit == 3
        assert len(await runtime.journal.list_owned(ALICE.owner_id, 0, 100)) == 3
        assert await unfinished(runtime) == 3
        other = await submit_gate(runtime, "bob", BOB)  # the cap is per client

        gates.open("a0")
        await finish(runtime, ALICE, tasks[0].task_id)
        accepted = await submit_gate(runtime, "a3")
        assert accepted.status is TaskStatus.WORKING
        assert len(await runtime.journal.list_owned(ALICE.owner_id, 0, 100)) == 4

        gates.open("a1", "a2", "a3", "bob")
        for task in [*tasks, accepted]:
            await finish(runtime, ALICE, task.task_id)
        await finish(runtime, BOB, other.task_id)
    assert "refused" not in gates.started


async def test_concurrent_submits_cannot_over_admit(
    open_runtime: OpenRuntime,
) -> None:
    settings = make_settings(client_backlog=3)
    accepted: list[Task] = []
    refused: list[CapacityError] = []

    async def one(runtime: TaskRuntime, i: int) -> None:
        try:
            accepted.append(await submit_gate(runtime, f"c{i}"))
        except CapacityError as exc:
            refused.append(exc)

    async with open_runtime(settings) as runtime:
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as group:
                for i in range(10):
                    group.start_soon(one, runtime, i)

        assert (len(accepted), len(refused)) == (3, 7)
        assert len(await runtime.journal.list_owned(ALICE.owner_id, 0, 100)) == 3
        assert await unfinished(runtime) == 3


# ----------------------------------------------------------- slot accounting


async def test_slots_and_backlog_never_leak(
    open_runtime: OpenRuntime, gates: Gates
) -> None:
    settings = make_settings(workers=2, client_concurrency=2, client_backlog=8)
    async with open_runtime(settings) as runtime:
        raising = [
            await runtime.submit(ALICE, "raises", {"kind": kind})
            for kind in ("tool", "protocol", "crash")
        ]
        for task in raising:
            await finish(runtime, ALICE, task.task_id)

        running = await submit_gate(runtime, "running")
        stubborn = await runtime.submit(ALICE, "stubborn", {"key": "stubborn"})
        queued = await submit_gate(runtime, "queued")
        await gates.wait_started("running")
        await gates.wait_started("stubborn")
        await runtime.cancel(ALICE, queued.task_id)
        await runtime.cancel(ALICE, running.task_id)
        await runtime.cancel(ALICE, stubborn.task_id)
        await gates.wait_ended("running")
        await gates.wait_ended("stubborn")
        threaded = await runtime.submit(ALICE, "blocking", {"key": "thread"})
        await gates.wait_started("thread")
        await runtime.cancel(ALICE, threaded.task_id)
        gates.open("thread")
        await gates.wait_ended("thread")
        await settle(runtime)

        assert runtime.statistics().running == 0
        assert await unfinished(runtime) == 0
        assert "queued" not in gates.started

        # The full backlog and both workers are available again.
        fresh = [await submit_gate(runtime, f"f{i}", group="fresh") for i in range(8)]
        gates.open(*(f"f{i}" for i in range(8)))
        for task in fresh:
            done = await finish(runtime, ALICE, task.task_id)
            assert done.status is TaskStatus.COMPLETED
        await settle(runtime)
        assert await unfinished(runtime) == 0
        assert runtime.statistics().running == 0


# ----------------------------------------------------------------------- call


async def test_call_returns_the_terminal_task_and_is_not_listed(
    open_runtime: OpenRuntime, gates: Gates
) -> None:
    async with open_runtime() as runtime:
        gates.open("k")
        with anyio.fail_after(TIMEOUT):
            done = await runtime.call(ALICE, "gate", {"key": "k"})

        assert done.status is TaskStatus.COMPLETED
        assert text_of(done) == "done k"
        listed, cursor = await runtime.list(ALICE)
        assert (listed, cursor) == ([], None)
        assert (await runtime.get(ALICE, done.task_id)).status is TaskStatus.COMPLETED
        assert await unfinished(runtime) == 0


async def test_cancelling_the_caller_of_call_cancels_the_task(
    open_runtime: OpenRuntime, gates: Gates
) -> None:
    async with open_runtime() as runtime:
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as group:
                group.start_soon(runtime.call, ALICE, "gate", {"key": "k"})
                await gates.wait_started("k")
                group.cancel_scope.cancel()

        await gates.wait_ended("k")
        assert gates.cancelled == ["k"]
        task = await runtime.get(ALICE, gates.task_ids["k"])
        assert task.status is TaskStatus.CANCELLED
        await settle(runtime)  # the stopped run has given its slot back
        assert await unfinished(runtime) == 0


# ----------------------------------------------------------------------- list


async def test_list_pages_in_submission_order_per_owner(
    open_runtime: OpenRuntime,
) -> None:
    async with open_runtime() as runtime:
        mine: list[str] = []
        for i in range(5):
            mine.append(
                (await runtime.submit(ALICE, "structured", {"count": i})).task_id
            )
            await runtime.submit(BOB, "structured", {"count": i})

        pages: list[list[str]] = []
        cursor: str | None = None
        while True:
            page, cursor = await runtime.list(ALICE, cursor, limit=2)
            pages.append([t.task_id for t in page])
            if cursor is None:
                break

        assert pages == [mine[0:2], mine[2:4], mine[4:5]]
        bobs, _ = await runtime.list(BOB)
        assert len(bobs) == 5
        assert not {t.task_id for t in bobs} & set(mine)


def _tampered(cursor: str) -> str:
    flipped = "A" if cursor[3] != "A" else "B"
    return cursor[:3] + flipped + cursor[4:]


def _truncated(cursor: str) -> str:
    return cursor[:-2]


def _garbage(cursor: str) -> str:
    return "garbage!"


def _bad_padding(cursor: str) -> str:
    return "a"


def _empty(cursor: str) -> str:
    return ""


def _non_ascii(cursor: str) -> str:
    return "é" * len(cursor)


@pytest.mark.parametrize(
    "make_cursor",
    [_tampered, _truncated, _garbage, _bad_padding, _empty, _non_ascii],
)
async def test_bad_cursors_are_refused(
    open_runtime: OpenRuntime, make_cursor: Callable[[str], str]
) -> None:
    async with open_runtime() as runtime:
        for i in range(3):
            await runtime.submit(ALICE, "structured", {"count": i})
        _, cursor = await runtime.list(ALICE, limit=1)
        assert cursor is not None

        with pytest.raises(InvalidCursorError):
            await runtime.list(ALICE, make_cursor(cursor), limit=1)


async def test_another_owners_cursor_is_refused(open_runtime: OpenRuntime) -> None:
    async with open_runtime() as runtime:
        for i in range(3):
            await runtime.submit(ALICE, "structured", {"count": i})
            await runtime.submit(BOB, "structured", {"count": i})
        _, cursor = await runtime.list(ALICE, limit=1)
        assert cursor is not None

        with pytest.raises(InvalidCursorError):
            await runtime.list(BOB, cursor, limit=1)


async def test_cursor_survives_a_restart(open_runtime: OpenRuntime) -> None:
    async with open_runtime() as runtime:
        for i in range(3):
            await runtime.submit(ALICE, "structured", {"count": i})
        first, cursor = await runtime.list(ALICE, limit=1)
    async with open_runtime() as runtime:
        rest, _ = await runtime.list(ALICE, cursor, limit=10)
    assert len(first) == 1
    assert len(rest) == 2


# ------------------------------------------------------------------------ TTL


async def test_sweep_purges_only_terminal_tasks_past_ttl_and_grace(
    open_runtime: OpenRuntime, gates: Gates
) -> None:
    clock = FakeClock()
    settings = make_settings(default_ttl_seconds=10, max_ttl_seconds=1000)
    async with open_runtime(settings, clock) as runtime:
        short = await runtime.submit(ALICE, "structured", {"count": 1})
        long = await runtime.submit(ALICE, "structured", {"count": 2}, ttl_seconds=500)
        running = await submit_gate(runtime, "r")
        await finish(runtime, ALICE, short.task_id)
        await finish(runtime, ALICE, long.task_id)
        await gates.wait_started("r")
        assert short.ttl_seconds == 10

        clock.now = T0 + 59  # past the TTL of 10 s, inside the 60 s grace
        assert await runtime.sweep() == []
        clock.now = T0 + 61
        assert await runtime.sweep() == [short.task_id]
        with pytest.raises(TaskNotFoundError):
            await runtime.get(ALICE, short.task_id)
        assert await runtime.journal.events(short.task_id) == []

        clock.now = T0 + 499
        assert await runtime.sweep() == []
        clock.now = T0 + 1000  # the running task's TTL is long gone
        assert await runtime.sweep() == [long.task_id]
        still = await runtime.get(ALICE, running.task_id)
        assert still.status is TaskStatus.WORKING

        gates.open("r")  # finishes at T0 + 1000: kept for the grace period
        await finish(runtime, ALICE, running.task_id)
        assert await runtime.sweep() == []
        clock.now = T0 + 1059
        assert await runtime.sweep() == []
        clock.now = T0 + 1061
        assert await runtime.sweep() == [running.task_id]


async def test_requested_ttl_is_capped_and_reported(
    open_runtime: OpenRuntime, gates: Gates
) -> None:
    settings = make_settings(default_ttl_seconds=30, max_ttl_seconds=100)
    async with open_runtime(settings) as runtime:
        capped = await submit_gate(runtime, "k", ttl_seconds=1e9)
        default = await runtime.submit(ALICE, "structured", {"count": 1})
        within = await runtime.submit(ALICE, "structured", {"count": 1}, ttl_seconds=50)
        await gates.wait_started("k")

        assert capped.ttl_seconds == 100
        assert (await runtime.get(ALICE, capped.task_id)).ttl_seconds == 100
        assert default.ttl_seconds == 30
        assert within.ttl_seconds == 50


# -------------------------------------------------------------------- restart


def _rows(db_path: Path) -> dict[str, tuple[str, int, str | None]]:
    """``task_id -> (phase, attempts, status_message)``, read with plain sqlite3."""
    with closing(sqlite3.connect(db_path)) as db:
        rows = db.execute(
            "SELECT task_id, phase, attempts, status_message FROM tasks"
        ).fetchall()
    return {
        task_id: (phase, attempts, message)
        for task_id, phase, attempts, message in rows
    }


async def test_restart_resumes_every_unfinished_task(
    open_runtime: OpenRuntime, gates: Gates, db_path: Path
) -> None:
    settings = make_settings(workers=1, client_concurrency=1)
    async with open_runtime(settings) as runtime:
        interrupted = await submit_gate(runtime, "r")
        queued = [
            await submit_gate(runtime, "q1"),
            await submit_gate(runtime, "q2"),
            await submit_gate(runtime, "q3", BOB),
        ]
        await gates.wait_started("r")
        plain = await runtime.submit(ALICE, "structured", {"count": 1})

    # The running body was stopped once the grace ran out and its task handed
    # back to the queue, saying so, for another process or the next start.
    assert gates.started == ["r"]
    assert gates.cancelled == ["r"]
    phase, attempts, message = _rows(db_path)[interrupted.task_id]
    assert (phase, attempts) == ("queued", 1)
    assert message == ("Resuming after its run was interrupted (server shutting down)")

    gates.reset_started("r")
    # Bob was never served, so his task runs first (one worker); let it through.
    gates.open("q3")
    async with open_runtime(settings) as runtime:
        await gates.wait_started("r")
        resumed = await runtime.get(ALICE, interrupted.task_id)
        assert resumed.status is TaskStatus.WORKING

        gates.open("r", "q1", "q2")
        results = [await finish(runtime, ALICE, interrupted.task_id)]
        results += [await finish(runtime, ALICE, t.task_id) for t in queued[:2]]
        results.append(await finish(runtime, BOB, queued[2].task_id))
        results.append(await finish(runtime, ALICE, plain.task_id))
        await settle(runtime)
        left = await unfinished(runtime)
        running = runtime.statistics().running

    assert [text_of(r) for r in results] == [
        "done r",
        "done q1",
        "done q2",
        "done q3",
        '{"count":1}',
    ]
    assert [r.status for r in results] == [TaskStatus.COMPLETED] * 5
    assert (left, running) == (0, 0)
    assert {attempts for _, attempts, _ in _rows(db_path).values()} == {1, 2}
    assert _rows(db_path)[interrupted.task_id][1] == 2


async def test_queued_tasks_are_not_claimed_during_shutdown(
    open_runtime: OpenRuntime, gates: Gates, db_path: Path
) -> None:
    settings = make_settings(workers=1, client_concurrency=4)
    async with open_runtime(settings) as runtime:
        await submit_gate(runtime, "r")
        queued = [await submit_gate(runtime, f"q{i}") for i in range(5)]
        await gates.wait_started("r")
        await settle(runtime)

    # Shutdown must not start queued work: no body runs, no claim is journaled.
    rows = _rows(db_path)
    assert gates.started == ["r"]
    assert [rows[t.task_id][:2] for t in queued] == [("queued", 0)] * 5


async def test_shutdown_lets_a_running_task_finish_within_the_grace(
    open_runtime: OpenRuntime, gates: Gates, db_path: Path
) -> None:
    settings = make_settings(workers=1, shutdown_grace_seconds=TIMEOUT)

    async def open_gate_once_draining(runtime: TaskRuntime) -> None:
        with anyio.fail_after(TIMEOUT):
            while not runtime.draining:
                await settle_tasks()
        gates.open("r")

    submitted: list[Task] = []
    async with anyio.create_task_group() as group:
        async with open_runtime(settings) as runtime:
            submitted.append(await submit_gate(runtime, "r"))
            submitted.append(await submit_gate(runtime, "q"))
            await gates.wait_started("r")
            group.start_soon(open_gate_once_draining, runtime)

    running, queued = submitted
    rows = _rows(db_path)
    assert gates.finished == ["r"]
    assert gates.started == ["r"]
    assert rows[running.task_id][0] == "done"
    assert rows[queued.task_id][:2] == ("queued", 0)

    gates.open("q")
    async with open_runtime(settings) as runtime:
        done = await finish(runtime, ALICE, running.task_id)
        later = await finish(runtime, ALICE, queued.task_id)
    assert text_of(done) == "done r"
    assert text_of(later) == "done q"


async def test_a_tool_that_cannot_resume_fails_after_a_restart(
    open_runtime: OpenRuntime, gates: Gates
) -> None:
    async with open_runtime() as runtime:
        task = await runtime.submit(ALICE, "fragile", {"key": "f"})
        await gates.wait_started("f")

    gates.reset_started("f")
    async with open_runtime() as runtime:
        failed = await finish(runtime, ALICE, task.task_id)
        await settle(runtime)
        left = await unfinished(runtime)

    assert failed.status is TaskStatus.FAILED
    assert failed.status_message == (
        "The task's run was interrupted (server shutting down), and tool "
        "'fragile' does not resume interrupted work"
    )
    assert gates.started == ["f"]  # not run a second time
    assert left == 0


async def test_restart_recovers_a_task_left_running_by_a_crash(
    open_runtime: OpenRuntime, gates: Gates, db_path: Path
) -> None:
    async with open_runtime() as runtime:
        task = await submit_gate(runtime, "r")
    # Simulate a crash mid-run: the row says a (dead) worker holds the task.
    # (`with db` commits; `closing` closes, which Python 3.13 warns about otherwise.)
    with closing(sqlite3.connect(db_path)) as db, db:
        db.execute(
            "UPDATE tasks SET phase = 'running', lease_holder = 'dead', "
            "lease_expires_at = 1, attempts = 1 WHERE task_id = ?",
            (task.task_id,),
        )

    gates.reset_started("r")
    async with open_runtime() as runtime:
        await gates.wait_started("r")
        events = await runtime.journal.events(task.task_id)
        assert events[-2].reason == "the lease of dead ran out"
        gates.open("r")
        done = await finish(runtime, ALICE, task.task_id)
    assert done.status is TaskStatus.COMPLETED


# ------------------------------------------------------------------ listeners


async def test_listener_hears_transitions_and_progress(
    open_runtime: OpenRuntime, gates: Gates
) -> None:
    recorder = Recorder()
    meta = {"progressToken": "p1"}
    async with open_runtime() as runtime:
        unsubscribe = runtime.subscribe(recorder)

        task = await runtime.submit(ALICE, "progress", {"key": "p"}, request_meta=meta)
        await gates.wait_started("p")
        await recorder.wait(lambda: bool(recorder.progress))
        shown = await runtime.get(ALICE, task.task_id)
        assert (shown.status_message, shown.progress, shown.progress_total) == (
            "half way", 1, 2,
        )  # fmt: skip
        first = recorder.progress[0]
        assert (first.task_id, first.data, first.status_message) == (
            task.task_id, {"progress": 1, "total": 2}, "half way",
        )  # fmt: skip

        gates.open("p")
        await finish(runtime, ALICE, task.task_id)
        assert [e.data for e in recorder.progress] == [
            {"progress": 1, "total": 2},
            {"progress": 2, "total": 2},
        ]

        doomed = await submit_gate(runtime, "c")
        await gates.wait_started("c")
        await runtime.cancel(ALICE, doomed.task_id)

        threaded = await runtime.submit(ALICE, "blocking_progress", {"key": "t"})
        await gates.wait_started("t")
        await recorder.wait(
            lambda: recorder.progress[-1].status_message == "thread half way"
        )
        gates.open("t")
        await finish(runtime, ALICE, threaded.task_id)

        unsubscribe()
        quiet = await runtime.submit(ALICE, "structured", {"count": 0})
        await finish(runtime, ALICE, quiet.task_id)

    ended = [c for c in recorder.changes if c[1].is_terminal]
    assert ended == [
        (task.task_id, TaskStatus.COMPLETED, "tool returned"),
        (doomed.task_id, TaskStatus.CANCELLED, "cancelled by request"),
        (threaded.task_id, TaskStatus.COMPLETED, "tool returned"),
    ]
    assert quiet.task_id not in {c[0] for c in recorder.changes}


async def test_listener_hears_each_question_answered_or_timed_out(
    open_runtime: OpenRuntime,
) -> None:
    # Bindings withdraw the other copies of a question when they hear it was
    # answered, wherever the answer came from: one event per recorded answer.
    clock = FakeClock()
    recorder = Recorder()
    can_ask: dict[str, Any] = {"clientCapabilities": {"elicitation": {"form": {}}}}
    yes = {"action": "accept", "content": {"yes": True}}
    async with open_runtime(make_settings(), clock) as runtime:
        runtime.subscribe(recorder)
        task = await runtime.submit(ALICE, "questions", {}, request_meta=can_ask)
        with anyio.fail_after(TIMEOUT):
            waiting = await runtime.wait_settled(ALICE, task.task_id)
        assert waiting.status is TaskStatus.INPUT_REQUIRED
        assert recorder.answered == []

        receipt = await runtime.answer(
            ALICE, task.task_id, {"first": yes, "unknown": yes}
        )
        assert receipt.accepted == ["first"]
        await recorder.wait(lambda: recorder.answered == [(task.task_id, "first")])
        await runtime.answer(ALICE, task.task_id, {"first": yes})  # ignored: no event
        await settle(runtime)
        assert recorder.answered == [(task.task_id, "first")]

        clock.now = T0 + QUESTION_TIMEOUT_SECONDS + 1
        assert await runtime.fire_due_timers() == 1
        done = await finish(runtime, ALICE, task.task_id)
        await recorder.wait(lambda: len(recorder.answered) == 2)
    assert recorder.answered == [(task.task_id, "first"), (task.task_id, "second")]
    assert text_of(done) == "accept timeout"


async def test_listener_hears_log_lines_in_order_before_the_end(
    open_runtime: OpenRuntime,
) -> None:
    recorder = Recorder()
    async with open_runtime() as runtime:
        runtime.subscribe(recorder)
        task = await runtime.submit(ALICE, "chatty", {"lines": 3})
        await finish(runtime, ALICE, task.task_id)
        await settle(runtime)
    assert [c.data for c in recorder.logs] == [
        {"level": "info", "message": f"line {n}"} for n in range(3)
    ]
    assert all(c.task_id == task.task_id for c in recorder.logs)
    kinds = [kind for kind in recorder.kinds if kind in (ChangeKind.LOG, "end")]
    assert kinds == [ChangeKind.LOG] * 3 + ["end"]  # every line before the end


async def test_waiting_for_a_task_leaves_no_state_behind(
    open_runtime: OpenRuntime,
) -> None:
    # Every call() and every tasks/result waits with wait_terminal; the wake-up
    # event it registers must not outlive the wait.
    async with open_runtime() as runtime:
        task = await runtime.submit(ALICE, "structured", {"count": 0})
        await finish(runtime, ALICE, task.task_id)
        await runtime.wait_terminal(ALICE, task.task_id)
        await runtime.call(ALICE, "structured", {"count": 1})
        leftover = dict(runtime._parts.feed._waiters)
    assert leftover == {}


async def test_waiting_on_unknown_ids_leaves_no_state_behind(
    open_runtime: OpenRuntime,
) -> None:
    # A client may ask for results of ids it does not own or that never
    # existed (tasks/result); each refused wait must not grow the runtime.
    async with open_runtime() as runtime:
        task = await runtime.submit(BOB, "structured", {"count": 0})
        for i in range(50):
            with pytest.raises(TaskNotFoundError):
                await runtime.wait_terminal(ALICE, f"no-such-task-{i}")
        with pytest.raises(TaskNotFoundError):
            await runtime.wait_change(ALICE, task.task_id, task)
        await finish(runtime, BOB, task.task_id)
        leftover = {
            k: v for k, v in runtime._parts.feed._waiters.items() if k != task.task_id
        }
    assert leftover == {}


async def test_failing_listener_does_not_break_the_runtime(
    open_runtime: OpenRuntime,
) -> None:
    class Broken:
        def task_changed(self, change: Change) -> None:
            raise RuntimeError("listener bug")

        def question_answered(self, task_id: TaskId, key: str) -> None:
            raise RuntimeError("listener bug")

    async with open_runtime() as runtime:
        runtime.subscribe(Broken())
        task = await runtime.submit(ALICE, "structured", {"count": 0})
        done = await finish(runtime, ALICE, task.task_id)
    assert done.status is TaskStatus.COMPLETED
