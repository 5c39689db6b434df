"""Leases: a running task whose worker is gone is recovered, never left working."""

from __future__ import annotations

import time
from pathlib import Path

import anyio

from mcp_tasks import (
    OwnerId,
    Requester,
    Settings,
    TaskId,
    TaskRuntime,
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
