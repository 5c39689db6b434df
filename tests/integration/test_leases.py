"""Leases: a running task whose worker is gone is recovered, never left working."""

from __future__ import annotations

import time
from collections.abc import Mapping
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
    _lifecycle,
    tool,
    tools_from,
)
from mcp_tasks.journal import NewTask


@tool(recovery="resume")
async def quick(text: str) -> str:
    """Return the text."""
    return text


@tool(recovery="fail")
async def fragile(text: str) -> str:
    """Return the text; cannot resume interrupted work."""
    return text


async def orphan(runtime: TaskRuntime, tool_name: str) -> TaskId:
    """A task claimed by a worker that no longer exists, with its lease run out."""
    task_id = TaskId(f"orphan-{tool_name}")
    now = time.time()
    await runtime.journal.submit(
        NewTask(task_id, OwnerId("local"), tool_name, {"text": "hi"}, now, 60.0, 1.0)
    )
    assert await runtime.journal.claim(task_id, "a-dead-process", now - 1) is not None
    return task_id


async def test_heartbeat_recovers_a_task_whose_lease_ran_out(tmp_path: Path) -> None:
    requester = Requester(OwnerId("local"))
    async with TaskRuntime.open(tmp_path / "t.db", Settings(), tools_from(quick)) as rt:
        task_id = await orphan(rt, "quick")
        assert (await rt.get(requester, task_id)).status.value == "working"
        await rt.heartbeat()
        with anyio.fail_after(5):
            done = await rt.wait_terminal(requester, task_id)
        events = [e.reason for e in await rt.journal.events(task_id)]
    assert done.outcome is not None
    assert done.outcome.result is not None
    assert done.outcome.result["content"][0]["text"] == "hi"
    assert "server restarted" in events  # the recovery is journaled


async def test_heartbeat_fails_an_orphan_whose_tool_cannot_resume(
    tmp_path: Path,
) -> None:
    requester = Requester(OwnerId("local"))
    async with TaskRuntime.open(
        tmp_path / "t.db", Settings(), tools_from(fragile)
    ) as rt:
        task_id = await orphan(rt, "fragile")
        await rt.heartbeat()
        task = await rt.get(requester, task_id)
    assert task.status.value == "failed"
    assert task.status_message is not None
    assert "restarted" in task.status_message


async def test_heartbeat_leaves_live_work_alone(tmp_path: Path) -> None:
    started, release = anyio.Event(), anyio.Event()

    @tool
    async def held() -> str:
        """Wait until released."""
        started.set()
        await release.wait()
        return "released"

    requester = Requester(OwnerId("local"))
    async with TaskRuntime.open(tmp_path / "t.db", Settings(), tools_from(held)) as rt:
        task = await rt.submit(requester, "held", {})
        with anyio.fail_after(5):
            await started.wait()
        await rt.heartbeat()  # renews the live lease; nothing to recover
        assert (await rt.journal.events(task.task_id))[-1].reason == "submitted"
        release.set()
        with anyio.fail_after(5):
            done = await rt.wait_terminal(requester, task.task_id)
    assert done.status.value == "completed"


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


@tool(recovery="fail", on_recover=broken_hook)
async def broken_cleanup(text: str) -> str:
    """Return the text; cleaning up a lost run fails."""
    return text


@tool(recovery="fail", on_recover=hanging_hook)
async def hanging_cleanup(text: str) -> str:
    """Return the text; cleaning up a lost run never ends."""
    return text


HOOKED = tools_from(cleaned_up, resumed_and_cleaned_up, broken_cleanup, hanging_cleanup)


async def lost_run(runtime: TaskRuntime, tool_name: str) -> TaskId:
    """An `orphan` whose run recorded a step before its worker was lost."""
    task_id = await orphan(runtime, tool_name)
    await runtime.journal.record_step(task_id, "step:pid-1", {"pid": 42}, time.time())
    return task_id


async def test_restart_runs_the_recovery_hook_with_the_lost_runs_steps(
    tmp_path: Path,
) -> None:
    heard.clear()
    requester = Requester(OwnerId("local"))
    async with TaskRuntime.open(tmp_path / "t.db", Settings(), HOOKED) as rt:
        task_id = await lost_run(rt, "cleaned_up")
        assert heard == []
    async with TaskRuntime.open(tmp_path / "t.db", Settings(), HOOKED) as rt:
        task = await rt.get(requester, task_id)
    assert heard == [(task_id, {"step:pid-1": {"pid": 42}})]
    assert task.status.value == "failed"


async def test_heartbeat_runs_the_recovery_hook_before_resuming(
    tmp_path: Path,
) -> None:
    heard.clear()
    requester = Requester(OwnerId("local"))
    async with TaskRuntime.open(tmp_path / "t.db", Settings(), HOOKED) as rt:
        task_id = await lost_run(rt, "resumed_and_cleaned_up")
        await rt.heartbeat()
        assert heard == [(task_id, {"step:pid-1": {"pid": 42}})]
        with anyio.fail_after(5):
            done = await rt.wait_terminal(requester, task_id)
    assert done.status.value == "completed"


async def test_a_failing_or_hanging_recovery_hook_does_not_stop_recovery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_lifecycle, "RECOVER_HOOK_SECONDS", 0.01)
    heard.clear()
    requester = Requester(OwnerId("local"))
    async with TaskRuntime.open(tmp_path / "t.db", Settings(), HOOKED) as rt:
        broken = await lost_run(rt, "broken_cleanup")
        hanging = await lost_run(rt, "hanging_cleanup")
        await rt.heartbeat()
        tasks = [await rt.get(requester, task_id) for task_id in (broken, hanging)]
    assert sorted(task_id for task_id, _ in heard) == sorted([broken, hanging])
    assert [task.status.value for task in tasks] == ["failed", "failed"]
