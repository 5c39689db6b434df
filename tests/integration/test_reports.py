"""Progress and status reports: coalesced into few journal writes, the last never lost."""

from __future__ import annotations

from pathlib import Path

import anyio

from mcp_tasks import (
    OwnerId,
    Requester,
    Settings,
    TaskContext,
    TaskRuntime,
    tool,
    tools_from,
)
from mcp_tasks.engine._reports import MAX_REPORTS_PER_WRITE
from mcp_tasks.journal import ChangeKind

TIMEOUT = 10.0
ALICE = Requester(OwnerId("alice"))
release = anyio.Event()


@tool
async def chatter(ctx: TaskContext, reports: int) -> str:
    """Report progress ``reports`` times as fast as it can, then wait."""
    for n in range(1, reports + 1):
        await ctx.report_progress(n, reports, f"{n} of {reports}")
    await release.wait()
    return "done"


steps: dict[int, anyio.Event] = {}


@tool
async def paced(ctx: TaskContext, reports: int) -> str:
    """Report progress ``reports`` times, each after the test saw the last one."""
    for n in range(1, reports + 1):
        await ctx.set_status(f"step {n}")
        await ctx.report_progress(n, reports)
        await steps.setdefault(n, anyio.Event()).wait()
    return "done"


def settings() -> Settings:
    return Settings(synchronous="NORMAL", progress_interval_seconds=0.05)


async def test_a_flood_of_reports_becomes_few_writes_ending_with_the_last(
    tmp_path: Path,
) -> None:
    global release
    release = anyio.Event()
    tools = tools_from(chatter)
    async with TaskRuntime.open(tmp_path / "t.db", settings(), tools) as runtime:
        task = await runtime.submit(ALICE, "chatter", {"reports": 5000})
        with anyio.fail_after(TIMEOUT):
            latest = await runtime.wait_for(
                ALICE, task.task_id, lambda t: t.progress == 5000
            )
        assert latest.status_message == "5000 of 5000"
        release.set()
        with anyio.fail_after(TIMEOUT):
            await runtime.wait_terminal(ALICE, task.task_id)
        writes = [
            e for e in await runtime.journal.events(task.task_id)
            if e.kind is ChangeKind.PROGRESS
        ]  # fmt: skip
    # 5,000 reports, a few writes of at most MAX_REPORTS_PER_WRITE each.
    assert 1 <= len(writes) <= 2 * MAX_REPORTS_PER_WRITE
    assert writes[-1].data == {"progress": 5000, "total": 5000}


async def test_reports_slower_than_the_pacing_are_each_written(tmp_path: Path) -> None:
    tools = tools_from(paced)
    async with TaskRuntime.open(tmp_path / "t.db", settings(), tools) as runtime:
        task = await runtime.submit(ALICE, "paced", {"reports": 3})
        with anyio.fail_after(TIMEOUT):
            for n in (1, 2, 3):
                await runtime.wait_for(
                    ALICE, task.task_id, lambda t, n=n: t.progress == n
                )
                steps.setdefault(n, anyio.Event()).set()
            await runtime.wait_terminal(ALICE, task.task_id)
        writes = [
            (e.status_message, e.data)
            for e in await runtime.journal.events(task.task_id)
            if e.kind is ChangeKind.PROGRESS
        ]
    assert writes == [
        report
        for n in (1, 2, 3)
        for report in ((f"step {n}", None), (f"step {n}", {"progress": n, "total": 3}))
    ]
