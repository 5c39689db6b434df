"""Leases: runs are fenced, kept alive while they live, and recovered when gone.

Several `TaskRuntime` objects on one journal file stand for several
processes: each has its own journal connection, writer and holder name.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcp_tasks import (
    OwnerId,
    Requester,
    Settings,
    TaskId,
    TaskRuntime,
    TaskStatus,
    tool,
    tools_from,
)
from mcp_tasks._exceptions import JournalError
from mcp_tasks._model import Outcome
from mcp_tasks.engine import _engine as engine_module
from mcp_tasks.engine._holder import machine_id, new_holder
from mcp_tasks.journal import (
    ChangeKind,
    Journal,
    Lease,
    NewTask,
    Recovery,
    open_journal,
)

from ..quiesce import settle_tasks
from .gated_tools import Gates, make_tools

TIMEOUT = 10.0
LOCAL = Requester(OwnerId("local"))


@tool(recovery="resume")
async def quick(text: str) -> str:
    """Return the text."""
    return text


@tool(recovery="fail")
async def fragile(text: str) -> str:
    """Return the text; cannot resume interrupted work."""
    return text


def settings(**changes: Any) -> Settings:
    base: dict[str, Any] = {
        "synchronous": "NORMAL",
        "shutdown_grace_seconds": 0.05,
        "feed_poll_seconds": 0.02,
    }
    return Settings(**(base | changes))


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "tasks.db"


@pytest.fixture
def gates() -> Gates:
    return Gates()


OpenRuntime = Callable[..., AbstractAsyncContextManager[TaskRuntime]]


@pytest.fixture
def open_runtime(db_path: Path, gates: Gates) -> OpenRuntime:
    tools = make_tools(gates) | {"quick": _spec(quick), "fragile": _spec(fragile)}

    @asynccontextmanager
    async def open_(**changes: Any) -> AsyncGenerator[TaskRuntime]:
        async with TaskRuntime.open(db_path, settings(**changes), tools) as runtime:
            try:
                yield runtime
            finally:
                gates.release_threads()

    return open_


def _spec(fn: Callable[..., Any]) -> Any:
    from mcp_tasks._toolapi import spec_of

    return spec_of(fn)


async def orphan(
    db_path: Path, tool_name: str, holder: str, lease_expires_at: float
) -> TaskId:
    """A task claimed by ``holder`` (not a live engine), as a crash leaves it."""
    task_id = TaskId(f"orphan-{tool_name}-{holder.replace('/', '-')}")
    now = time.time()
    async with open_journal(db_path) as journal:
        await journal.submit(
            NewTask(
                task_id,
                OwnerId("local"),
                tool_name,
                {"text": "hi"},
                now,
                60.0,
                1.0,
                4,
                100,
            )
        )
        (claimed,) = await journal.claim(holder, lease_expires_at, 1, now)
        assert claimed.task_id == task_id
    return task_id


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


async def test_a_task_whose_lease_ran_out_is_recovered_and_resumed(
    open_runtime: OpenRuntime, db_path: Path
) -> None:
    task_id = await orphan(db_path, "quick", "elsewhere/1/x", time.time() - 1)
    async with open_runtime() as runtime:
        with anyio.fail_after(TIMEOUT):
            done = await runtime.wait_terminal(LOCAL, task_id)
        events = [e.reason for e in await runtime.journal.events(task_id)]
    assert done.outcome == Outcome(
        result={"content": [{"type": "text", "text": "hi"}], "isError": False}
    )
    assert "the lease of elsewhere/1/x ran out" in events


async def test_an_orphan_whose_tool_cannot_resume_fails(
    open_runtime: OpenRuntime, db_path: Path
) -> None:
    task_id = await orphan(db_path, "fragile", "elsewhere/1/x", time.time() - 1)
    async with open_runtime() as runtime:
        task = await runtime.get(LOCAL, task_id)
    assert task.status is TaskStatus.FAILED
    assert task.status_message == (
        "The task's run was interrupted (the lease of elsewhere/1/x ran out), and "
        "tool 'fragile' does not resume interrupted work"
    )


async def test_a_dead_process_of_this_machine_is_recovered_before_its_lease_ends(
    open_runtime: OpenRuntime, db_path: Path
) -> None:
    holder = f"{machine_id()}/{dead_pid()}/x"
    task_id = await orphan(db_path, "quick", holder, time.time() + 3600)
    async with open_runtime() as runtime:
        with anyio.fail_after(TIMEOUT):
            done = await runtime.wait_terminal(LOCAL, task_id)
        reasons = [e.reason for e in await runtime.journal.events(task_id)]
    assert done.status is TaskStatus.COMPLETED
    assert f"its process {holder} is gone" in reasons


async def test_a_live_lease_of_another_machine_is_left_alone(
    open_runtime: OpenRuntime, db_path: Path
) -> None:
    task_id = await orphan(db_path, "quick", "another-machine/1/x", time.time() + 3600)
    async with open_runtime() as runtime:
        await runtime.heartbeat()
        events = await runtime.journal.events(task_id)
    assert [e.reason for e in events] == ["submitted", "claimed"]


async def test_a_live_process_of_this_machine_is_left_alone(
    open_runtime: OpenRuntime, db_path: Path
) -> None:
    # A live process of this machine: it waits for input that never comes.
    command = [sys.executable, "-c", "import sys; sys.stdin.read()"]
    async with await anyio.open_process(command) as sleeper:
        holder = f"{machine_id()}/{sleeper.pid}/x"
        task_id = await orphan(db_path, "quick", holder, time.time() + 3600)
        async with open_runtime() as runtime:
            await runtime.heartbeat()
            events = await runtime.journal.events(task_id)
        sleeper.kill()
    assert [e.reason for e in events] == ["submitted", "claimed"]


async def test_heartbeat_renews_live_runs_and_leaves_them_alone(
    open_runtime: OpenRuntime, gates: Gates
) -> None:
    async with open_runtime() as runtime:
        task = await runtime.submit(LOCAL, "gate", {"key": "k"})
        await gates.wait_started("k")
        (before,) = await runtime.journal.held_leases()
        await runtime.heartbeat()
        (after,) = await runtime.journal.held_leases()
        assert after.lease == before.lease
        assert after.expires_at >= before.expires_at
        assert gates.cancelled == []
        gates.open("k")
        with anyio.fail_after(TIMEOUT):
            done = await runtime.wait_terminal(LOCAL, task.task_id)
    assert done.status is TaskStatus.COMPLETED


async def test_a_run_whose_lease_was_taken_over_stops_and_cannot_finish(
    open_runtime: OpenRuntime, gates: Gates
) -> None:
    # One worker, busy with the task: only "the other process" (the test,
    # through the journal) can claim the task once it is recovered.
    async with open_runtime(workers=1) as runtime:
        task = await runtime.submit(LOCAL, "stubborn", {"key": "s"})
        await gates.wait_started("s")
        # Another process takes the task over (as if this one had been paused
        # past its lease): its journal recovers the lease and claims the task.
        (held,) = await runtime.journal.held_leases()
        assert await runtime.journal.recover(
            held, Recovery.RESUME, "r", "taken over", time.time()
        )
        (taken,) = await runtime.journal.claim(
            "other/9/y", time.time() + 60, 1, time.time()
        )
        await runtime.heartbeat()  # the renewal is refused: the run is stopped
        with anyio.fail_after(TIMEOUT):
            await gates.wait_ended("s")  # swallowed the cancel, "finished after all"
        for _ in range(3):
            await settle_tasks()
            await runtime.catch_up()
        got = await runtime.get(LOCAL, task.task_id)
    assert gates.cancelled == ["s"]
    assert got.status is TaskStatus.WORKING  # its late result was refused
    assert taken.attempt == 2


async def test_a_cancel_through_another_process_stops_the_run(
    open_runtime: OpenRuntime, gates: Gates
) -> None:
    async with open_runtime() as first, open_runtime() as second:
        task = await first.submit(LOCAL, "gate", {"key": "k"})
        await gates.wait_started("k")
        # Either process may have claimed it: cancel through the other one.
        (held,) = await first.journal.held_leases()
        runner, other = (first, second)
        if held.lease.holder == second.holder:
            runner, other = (second, first)
        assert runner.statistics().running == 1
        assert other.statistics().running == 0
        cancelled = await other.cancel(LOCAL, task.task_id)
        assert cancelled.status is TaskStatus.CANCELLED
        with anyio.fail_after(TIMEOUT):
            await gates.wait_ended("k")  # the runner read the feed and stopped it
    assert gates.cancelled == ["k"]


async def test_a_shut_down_process_hands_its_runs_to_another(
    open_runtime: OpenRuntime, gates: Gates
) -> None:
    async with open_runtime(workers=1) as survivor:
        # The survivor's only worker is busy, so the leaving process runs it.
        await survivor.submit(LOCAL, "gate", {"key": "busy"})
        await gates.wait_started("busy")
        async with open_runtime(workers=1) as leaving:
            task = await leaving.submit(LOCAL, "gate", {"key": "k"})
            await gates.wait_started("k")
            first = await leaving.journal.held_leases()
            assert leaving.holder in [h.lease.holder for h in first]
            gates.reset_started("k")
        gates.open("busy")
        # Handed back at shutdown, the task starts again on the survivor at once.
        with anyio.fail_after(TIMEOUT):
            await gates.wait_started("k")
        (held,) = await survivor.journal.held_leases()
        assert held.lease.holder == survivor.holder
        assert held.lease.attempt == 2
        gates.open("k")
        with anyio.fail_after(TIMEOUT):
            done = await survivor.wait_terminal(LOCAL, task.task_id)
    assert done.status is TaskStatus.COMPLETED


class FlakyFinish:
    """A journal whose next ``finish`` calls fail, as when the disk is full."""

    def __init__(self, inner: Journal, failures: int) -> None:
        self._inner = inner
        self.failures = failures
        self.renewed: list[Lease] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def finish(self, lease: Lease, *args: Any, **kwargs: Any) -> Any:
        if self.failures:
            self.failures -= 1
            raise JournalError("database or disk is full")
        return await self._inner.finish(lease, *args, **kwargs)

    async def renew(self, leases: Any, expires_at: float) -> list[Lease]:
        self.renewed.extend(leases)
        return await self._inner.renew(leases, expires_at)


async def test_an_outcome_the_journal_refused_is_written_once_it_accepts(
    db_path: Path, gates: Gates
) -> None:
    async with open_journal(db_path) as inner:
        flaky = FlakyFinish(inner, failures=2)
        runtime = TaskRuntime(flaky, settings(), make_tools(gates))  # type: ignore[arg-type]
        async with runtime.running():
            task = await runtime.submit(LOCAL, "gate", {"key": "k"})
            await gates.wait_started("k")
            gates.open("k")
            await gates.wait_ended("k")
            # While its outcome waits to be written, the run is alive: its
            # lease is renewed, so no other process recovers the task.
            await runtime.heartbeat()
            assert [lease.task_id for lease in flaky.renewed] == [task.task_id]
            with anyio.fail_after(TIMEOUT):
                done = await runtime.wait_terminal(LOCAL, task.task_id)
    assert done.status is TaskStatus.COMPLETED
    assert flaky.failures == 0


async def test_progress_reaches_other_processes_and_survives_its_writer(
    open_runtime: OpenRuntime, gates: Gates
) -> None:
    async with open_runtime() as watcher:
        async with open_runtime() as runner:
            task = await runner.submit(LOCAL, "progress", {"key": "p"})
            with anyio.fail_after(TIMEOUT):
                seen = await watcher.wait_for(
                    LOCAL, task.task_id, lambda t: t.status_message == "half way"
                )
            assert (seen.progress, seen.progress_total) == (1, 2)
        # The runner is gone; what it reported is still in the journal.
        kept = await watcher.get(LOCAL, task.task_id)
        kinds = [e.kind for e in await watcher.journal.events(task.task_id)]
    assert kept.progress == 1
    assert ChangeKind.PROGRESS in kinds


def test_holder_names_carry_this_machine_and_pid() -> None:
    holder = new_holder()
    machine, pid, _ = holder.split("/")
    assert machine == (machine_id() or "unknown")
    assert int(pid) == os.getpid()


# ------------------------------------------------------------ recovery hooks

#: What each recovery hook heard: (task id, recorded steps).
heard: list[tuple[str, dict[str, Any]]] = []


async def note_lost_run(task_id: str, steps: Mapping[str, Any]) -> None:
    heard.append((task_id, dict(steps)))


async def broken_hook(task_id: str, steps: Mapping[str, Any]) -> None:
    heard.append((task_id, dict(steps)))
    raise RuntimeError("the cleanup failed")


async def hanging_hook(task_id: str, steps: Mapping[str, Any]) -> None:
    heard.append((task_id, dict(steps)))
    await anyio.sleep_forever()


@tool(recovery="fail", on_recover=note_lost_run)
async def cleaned_up(text: str) -> str:
    """Return the text; its lost runs are cleaned up."""
    return text


@tool(recovery="resume", on_recover=note_lost_run)
async def resumed_and_cleaned_up(text: str) -> str:
    """Return the text; resumed after its lost runs are cleaned up."""
    return text


@tool(recovery="restart", on_recover=note_lost_run)
async def restarted_and_cleaned_up(text: str) -> str:
    """Return the text; restarted (steps forgotten) after its lost runs are cleaned up."""
    return text


@tool(recovery="fail", on_recover=broken_hook)
async def broken_cleanup(text: str) -> str:
    """Return the text; cleaning up a lost run fails."""
    return text


@tool(recovery="fail", on_recover=hanging_hook)
async def hanging_cleanup(text: str) -> str:
    """Return the text; cleaning up a lost run never ends."""
    return text


HOOKED = tools_from(
    cleaned_up,
    resumed_and_cleaned_up,
    restarted_and_cleaned_up,
    broken_cleanup,
    hanging_cleanup,
)


async def lost_run(db_path: Path, tool_name: str) -> TaskId:
    """An `orphan` whose run recorded a step before its process was lost."""
    holder = "elsewhere/1/x"
    task_id = await orphan(db_path, tool_name, holder, time.time() - 1)
    async with open_journal(db_path) as journal:
        lease = Lease(task_id, holder, 1)
        assert await journal.record_step(lease, "step:pid-1", {"pid": 42}, time.time())
    return task_id


@pytest.mark.parametrize(
    ("tool_name", "status"),
    [
        ("cleaned_up", TaskStatus.FAILED),
        ("resumed_and_cleaned_up", TaskStatus.COMPLETED),
        ("restarted_and_cleaned_up", TaskStatus.COMPLETED),
    ],
)
async def test_recovery_runs_the_tools_hook_with_the_lost_runs_steps(
    db_path: Path, tool_name: str, status: TaskStatus
) -> None:
    heard.clear()
    task_id = await lost_run(db_path, tool_name)
    async with TaskRuntime.open(db_path, settings(), HOOKED) as runtime:
        with anyio.fail_after(TIMEOUT):
            done = await runtime.wait_terminal(LOCAL, task_id)
    # Called before the policy applies: a restart forgets steps only afterwards.
    assert heard == [(task_id, {"step:pid-1": {"pid": 42}})]
    assert done.status is status


async def test_a_failing_or_hanging_recovery_hook_does_not_stop_recovery(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "RECOVER_HOOK_SECONDS", 0.01)
    heard.clear()
    broken = await lost_run(db_path, "broken_cleanup")
    hanging = await lost_run(db_path, "hanging_cleanup")
    async with TaskRuntime.open(db_path, settings(), HOOKED) as runtime:
        tasks = [await runtime.get(LOCAL, task_id) for task_id in (broken, hanging)]
    assert sorted(task_id for task_id, _ in heard) == sorted([broken, hanging])
    assert [task.status for task in tasks] == [TaskStatus.FAILED] * 2
