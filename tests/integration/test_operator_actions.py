"""`TaskRuntime.retry` (operators) by tool policy, and what the engine tells observers.

A tool records a step, then fails until the test lets it succeed: a retry
replays the recorded step unless the tool restarts interrupted work, and is
refused for a tool that must not run interrupted work again.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcp_tasks import OwnerId, ProtocolError, Settings, TaskContext, TaskStatus, tool
from mcp_tasks._exceptions import InvalidTransitionError, RetryRefusedError
from mcp_tasks._toolapi import ToolSpec, spec_of
from mcp_tasks.engine import Requester, TaskRuntime

TIMEOUT = 5.0
ALICE = Requester(OwnerId("alice"))
OPERATOR = Requester(OwnerId("operator"), scoped=False)


class Flaky:
    """Tool bodies that count their step's runs and fail while ``failing``."""

    def __init__(self) -> None:
        self.failing = True
        self.step_runs = 0

    def tools(self) -> dict[str, ToolSpec]:
        specs: dict[str, ToolSpec] = {}
        for recovery in ("resume", "restart", "fail"):
            specs.update(self._flaky(recovery))

        @tool
        async def broken() -> str:
            """Raise: the task completes with a tool error result."""
            raise RuntimeError("broken")

        spec = spec_of(broken)
        assert spec is not None
        specs[spec.name] = spec
        return specs

    def _flaky(self, recovery: Any) -> dict[str, ToolSpec]:
        @tool(name=f"flaky_{recovery}", recovery=recovery)
        async def flaky(ctx: TaskContext) -> str:
            """Record a step, then fail while the test says so."""

            def count() -> int:
                self.step_runs += 1
                return self.step_runs

            await ctx.step("count", count)
            if self.failing:
                raise ProtocolError(-32001, "not yet")
            return "fine"

        spec = spec_of(flaky)
        assert spec is not None
        return {spec.name: spec}


class Observer:
    """Keeps what the engine reports."""

    def __init__(self) -> None:
        self.started: list[tuple[str, float | None]] = []
        self.ended: list[tuple[str, str, str, float | None]] = []

    def run_started(self, tool: str, queue_wait_seconds: float | None) -> None:
        self.started.append((tool, queue_wait_seconds))

    def task_ended(
        self, owner_id: str, tool: str, status: str, run_seconds: float | None
    ) -> None:
        self.ended.append((owner_id, tool, status, run_seconds))


@pytest.fixture
def flaky() -> Flaky:
    return Flaky()


@pytest.fixture
async def runtime(tmp_path: Path, flaky: Flaky) -> AsyncGenerator[TaskRuntime]:
    settings = Settings(synchronous="NORMAL", shutdown_grace_seconds=0.05)
    async with TaskRuntime.open(tmp_path / "t.db", settings, flaky.tools()) as rt:
        yield rt


async def failed_task(runtime: TaskRuntime, name: str) -> str:
    task = await runtime.submit(ALICE, name, {})
    with anyio.fail_after(TIMEOUT):
        done = await runtime.wait_terminal(ALICE, task.task_id)
    assert done.status is TaskStatus.FAILED
    return task.task_id


async def test_a_retried_task_replays_its_recorded_steps_and_can_succeed(
    runtime: TaskRuntime, flaky: Flaky
) -> None:
    task_id = await failed_task(runtime, "flaky_resume")
    flaky.failing = False
    retried = await runtime.retry(OPERATOR, task_id, reason="retried by operator")
    assert retried.status is TaskStatus.WORKING
    with anyio.fail_after(TIMEOUT):
        done = await runtime.wait_terminal(ALICE, task_id)
    assert done.status is TaskStatus.COMPLETED
    assert flaky.step_runs == 1  # replayed, not run again
    reasons = [e.reason for e in await runtime.journal.events(done.task_id)]
    assert "retried by operator" in reasons
    (row,) = await runtime.journal.list_tasks()
    assert row.attempts == 2


async def test_a_restarting_tools_retry_forgets_its_steps(
    runtime: TaskRuntime, flaky: Flaky
) -> None:
    task_id = await failed_task(runtime, "flaky_restart")
    flaky.failing = False
    await runtime.retry(OPERATOR, task_id)
    with anyio.fail_after(TIMEOUT):
        done = await runtime.wait_terminal(ALICE, task_id)
    assert done.status is TaskStatus.COMPLETED
    assert flaky.step_runs == 2


async def test_a_tool_that_never_reruns_interrupted_work_is_not_retried(
    runtime: TaskRuntime,
) -> None:
    task_id = await failed_task(runtime, "flaky_fail")
    with pytest.raises(RetryRefusedError, match='recovery="fail"'):
        await runtime.retry(OPERATOR, task_id)
    task = await runtime.get(OPERATOR, task_id)
    assert task.status is TaskStatus.FAILED


async def test_only_failed_tasks_are_retried(
    runtime: TaskRuntime, flaky: Flaky
) -> None:
    flaky.failing = False
    task = await runtime.submit(ALICE, "flaky_resume", {})
    with anyio.fail_after(TIMEOUT):
        await runtime.wait_terminal(ALICE, task.task_id)
    with pytest.raises(InvalidTransitionError, match="'completed'"):
        await runtime.retry(OPERATOR, task.task_id)


async def test_observers_hear_runs_started_and_tasks_ended(
    runtime: TaskRuntime, flaky: Flaky
) -> None:
    observer = Observer()
    runtime.observe(observer)
    task_id = await failed_task(runtime, "flaky_resume")
    flaky.failing = False
    await runtime.retry(OPERATOR, task_id)
    with anyio.fail_after(TIMEOUT):
        await runtime.wait_terminal(ALICE, task_id)
    (first, second) = observer.started
    assert first[0] == "flaky_resume"
    assert first[1] is not None  # the first attempt's wait
    assert first[1] >= 0
    assert second == ("flaky_resume", None)  # a later attempt has none
    statuses = [(owner, tool, status) for owner, tool, status, _ in observer.ended]
    assert statuses == [
        ("alice", "flaky_resume", "failed"),
        ("alice", "flaky_resume", "completed"),
    ]
    assert all(ran is not None and ran >= 0 for *_, ran in observer.ended)


async def test_observers_hear_a_tool_error_apart_from_completed_and_failed(
    runtime: TaskRuntime,
) -> None:
    observer = Observer()
    runtime.observe(observer)
    task = await runtime.submit(ALICE, "broken", {})
    with anyio.fail_after(TIMEOUT):
        done = await runtime.wait_terminal(ALICE, task.task_id)
    assert done.tool_error is not None
    ((owner, tool_name, status, _),) = observer.ended
    assert (owner, tool_name, status) == ("alice", "broken", "tool_error")
